// libFuzzer target for the endpoints a write-back client changes the
// fileset with: `upload/<id>` (PUT and HEAD) and `reintegrate` (POST with
// KML records), dispatched by RequestRouter to a real FilesetServer as the
// transports do (check_head, then handle), on a fresh temporary fileset for
// every input so that a crash replays from its input alone.
//
// The input is a sequence of requests, read with FuzzedDataProvider: an
// upload of fuzzed bytes (under their own content id or another, at a
// fuzzed offset and size), a HEAD of an upload, a reintegrate whose body is
// raw fuzzed bytes, or one of records built from fuzzed fields (opcode,
// prevrec, sizes, content ids of earlier uploads) and paths from a pool
// that holds the dangerous ones: "..", absolute paths, the state directory,
// overlong names, and paths through symbolic links that lead out of the
// fileset.
//
// Checked beyond "no crash, no sanitizer report": every request is answered
// once, head first, with a status from 100 to 599; and nothing outside the
// fileset root changes, whatever the records say (a directory beside the
// root, reached by the links `out` and `up` inside it, keeps its one file).
#include <fuzzer/FuzzedDataProvider.h>
#include <sys/stat.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "chunker.h"
#include "fuzz_server.h"
#include "intersync/kml.h"
#include "intersync/log.h"
#include "request_router.h"

namespace {

constexpr const char* kToken = "write-back-token";
constexpr int kMaxRequests = 12;
constexpr int kMaxRecords = 12;
constexpr const char* kSecret = "outside the fileset\n";

const char* const kPaths[] = {
    "a.txt",
    "d",
    "d/x",
    "d/y.txt",
    "new",
    "new/z",
    "link",
    "out",
    "out/x",
    "out/secret.txt",
    "up",
    "up/outside/secret.txt",
    "../escape",
    "d/../../escape",
    "/abs",
    ".intermezzo/docs/kml",
    ".intermezzo",
    "",
    ".",
    "d/.",
    "x.conflict-host-20240101T000000Z.txt",
};

bool verbose() {
  static const bool v = std::getenv("INTERSYNC_FUZZ_VERBOSE") != nullptr;
  return v;
}

// A fileset for one input: root/ with a file, a directory, a link inside
// and two links out, and outside/ beside it with one file.
struct Fixture : ServerLoop {
  std::string dir, root, outside;
  std::unique_ptr<FilesetServer> docs;
  RequestRouter router;
  std::vector<std::string> uploaded;  // content ids (hex) uploaded so far

  Fixture() {
    init();
    std::string tmpl = (std::filesystem::temp_directory_path() / "fuzz_write_back.XXXXXX").string();
    if (!mkdtemp(tmpl.data())) fail("mkdtemp");
    dir = tmpl;
    root = dir + "/root";
    outside = dir + "/outside";
    for (const auto& d : {root, root + "/d", outside, dir + "/state"}) mkdir(d.c_str(), 0755);
    write_file(root + "/a.txt", "hello\n");
    write_file(root + "/d/x", "x\n");
    write_file(outside + "/secret.txt", kSecret);
    symlink("a.txt", (root + "/link").c_str());
    symlink(outside.c_str(), (root + "/out").c_str());
    symlink("..", (root + "/up").c_str());
    docs = start_fileset(*this, dir + "/state", "docs", root, kToken);
    router.add(docs.get());
    uv_run(&loop, UV_RUN_DEFAULT);  // the start-up rescan
  }

  ~Fixture() {
    router.remove(docs.get());
    docs->stop();
    docs.reset();
    uv_close(reinterpret_cast<uv_handle_t*>(&flushes.idle), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&guard), nullptr);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0, "handles left open");
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

  // What lies outside the root is as it was.
  void check_outside() const {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(outside)) {
      names.push_back(e.path().filename().string());
    }
    CHECK(names == std::vector<std::string>{"secret.txt"}, "a file appeared outside the root");
    struct stat st;
    CHECK(lstat((outside + "/secret.txt").c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
              (st.st_mode & 07777) == 0644 && st.st_size == 20,
          "the file outside the root changed");
    std::vector<std::string> beside;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
      beside.push_back(e.path().filename().string());
    }
    std::sort(beside.begin(), beside.end());
    CHECK((beside == std::vector<std::string>{"outside", "root", "state"}),
          "a file appeared beside the root");
  }
};

std::string random_id(FuzzedDataProvider& in, const Fixture& f) {
  if (!f.uploaded.empty() && in.ConsumeBool()) {
    return f.uploaded[in.ConsumeIntegralInRange<size_t>(0, f.uploaded.size() - 1)];
  }
  Hash h{};
  auto bytes = in.ConsumeBytes<uint8_t>(h.size());
  std::copy(bytes.begin(), bytes.end(), h.begin());
  return hash_hex(h);
}

std::string random_path(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange(0, 3)) {
    case 0:
      return in.ConsumeRandomLengthString(300);  // anything, overlong names too
    default:
      return kPaths[in.ConsumeIntegralInRange<size_t>(0, std::size(kPaths) - 1)];
  }
}

std::string records(FuzzedDataProvider& in, const Fixture& f) {
  static constexpr KmlOp kOps[] = {
      KmlOp::Noop,  KmlOp::Create,  KmlOp::Mkdir,   KmlOp::Unlink,  KmlOp::Rmdir,
      KmlOp::Close, KmlOp::Symlink, KmlOp::Rename,  KmlOp::Setattr, KmlOp::Link,
      KmlOp::Mknod, KmlOp::Content, KmlOp::Content, KmlOp::Create,
  };
  std::string body;
  int n = in.ConsumeIntegralInRange(1, kMaxRecords);
  for (int i = 0; i < n && in.remaining_bytes() > 0; ++i) {
    KmlRecord r;
    r.opcode = kOps[in.ConsumeIntegralInRange<size_t>(0, std::size(kOps) - 1)];
    r.recno = static_cast<uint32_t>(i + 1);
    r.prevrec = in.ConsumeIntegralInRange<uint32_t>(0, 64);
    r.path = random_path(in);
    r.mode = in.ConsumeBool() ? (S_IFREG | 0644) : in.ConsumeIntegral<uint32_t>();
    r.valid = in.ConsumeIntegral<uint32_t>();
    r.size = in.ConsumeIntegralInRange<uint64_t>(0, 1 << 20);
    r.nchunks = in.ConsumeIntegralInRange<uint32_t>(0, 4);
    r.v_obj_new.mtime_sec = in.ConsumeIntegral<uint32_t>();
    r.target = random_path(in);
    r.src = random_path(in);
    r.dir = random_path(in);
    r.name = in.ConsumeRandomLengthString(16);
    if (r.opcode == KmlOp::Content) {
      Hash h;
      if (!hash_from_hex(random_id(in, f), &h)) fail("a content id does not parse");
      std::copy(h.begin(), h.end(), r.hash.begin());
    }
    // The encoder refuses what the disk form cannot hold (a leading slash,
    // a NUL): such a record is sent as its raw fields cannot be, skipped.
    if (auto bytes = kml_encode(r)) body += *bytes;
  }
  return body;
}

void send(Fixture& f, HttpRequest request) {
  request.head.version_minor = 1;
  request.head.headers.set("Authorization", std::string("Bearer ") + kToken);
  request.head.content_length = request.body.size();
  request.peer = kFuzzPeer;
  if (verbose())
    std::fprintf(stderr, "request: %s %s\n", request.head.method.c_str(),
                 request.head.target.c_str());
  if (auto refusal = f.router.check_head(request.head, kFuzzPeer)) {
    CHECK(refusal->status == 404, std::to_string(refusal->status));
    return;
  }
  auto writer = std::make_shared<RecordingWriter>(f);
  f.router.handle(std::move(request), writer);
  pump(f, *writer);
  if (!writer->head()) return;  // aborted
  int status = writer->head()->status;
  CHECK(status >= 100 && status <= 599, std::to_string(status));
  if (verbose()) std::fprintf(stderr, "response: %d %s\n", status, writer->body().c_str());
}

void run(FuzzedDataProvider& in) {
  Fixture f;
  const std::string prefix = protocol::url("docs", "");
  for (int i = 0; i < kMaxRequests && in.remaining_bytes() > 0; ++i) {
    HttpRequest req;
    switch (in.ConsumeIntegralInRange(0, 4)) {
      case 0: {  // a piece of an upload
        req.body = in.ConsumeRandomLengthString(64 * 1024);
        std::string id =
            in.ConsumeBool() ? hash_hex(manifest_of(req.body).content_id) : random_id(in, f);
        uint64_t offset = in.ConsumeBool() ? 0 : in.ConsumeIntegralInRange<uint64_t>(0, 1 << 17);
        uint64_t size = req.body.size() + (in.ConsumeBool() ? 0 : in.ConsumeIntegral<uint16_t>());
        req.head.method = "PUT";
        req.head.target = prefix + "upload/" + id + "?offset=" + std::to_string(offset) +
                          "&size=" + std::to_string(size);
        f.uploaded.push_back(id);
        break;
      }
      case 1:
        req.head.method = "HEAD";
        req.head.target = prefix + "upload/" + random_id(in, f);
        break;
      case 2:
        req.head.method = "POST";
        req.head.target = prefix + "reintegrate";
        req.body = in.ConsumeRandomLengthString(16 * 1024);
        break;
      default:
        req.head.method = "POST";
        req.head.target = prefix + "reintegrate";
        req.body = records(in, f);
        break;
    }
    send(f, std::move(req));
    f.check_outside();
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  log_setup(LogSink::Stderr, verbose() ? LogLevel::Debug : LogLevel::Error);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  run(in);
  return 0;
}
