// libFuzzer target for the server's request path, from bytes on a
// connection to the response: HttpParser (requests), then what the
// transport-http plugin does with each message (RequestRouter::check_head
// before the body, RequestRouter::handle after it), with two real
// FilesetServers behind the router ("docs", which needs a bearer token, and
// "public", auth: none) serving a small tree in a temporary directory. Their
// backend is a no-op and the endpoints that write (upload, reintegrate)
// are not dispatched, so the tree and the journal do not change while
// fuzzing (fuzz_write_back drives those). Responses go to a ResponseWriter that records them; the
// uv loop runs after each request so that thread-pool work (contents, file streaming) completes,
// and a request still unanswered once nothing but timers is pending (a long-poll) sees its peer go
// away, as a closed connection would.
//
// Checked: the parser's limits hold; every response head is sent once,
// before any body byte; a response that ends carries as many body bytes as
// its Content-Length; and every response, serialized with http_serialize,
// parses back with HttpParser to the same status and body.
//
// Set INTERSYNC_FUZZ_VERBOSE=1 to print the fixture (content ids, journal
// head) and each response, e.g. when writing seeds.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "chunker.h"
#include "config.h"
#include "fileset_server.h"
#include "fuzz_server.h"
#include "intersync/backend.h"
#include "intersync/http_codec.h"
#include "intersync/log.h"
#include "protocol.h"
#include "request_router.h"

namespace {

constexpr const char* kToken = "secret-token";  // the "laptop" client of fileset "docs"
constexpr int kMaxRequests = 32;                // per input

HttpLimits limits() {
  HttpLimits l;
  l.max_body = 64 * 1024;  // small, so that inputs reach the 413 paths
  return l;
}

bool verbose() {
  static const bool v = std::getenv("INTERSYNC_FUZZ_VERBOSE") != nullptr;
  return v;
}

struct Fixture : ServerLoop {
  std::string dir;
  std::unique_ptr<FilesetServer> docs, pub;
  RequestRouter router;
};

Fixture* g_fixture = nullptr;

// A file of several content-defined chunks, the same in every run.
std::string big_content() {
  std::string s(300 * 1024, '\0');
  uint32_t x = 12345;
  for (char& c : s) {
    x = x * 1103515245u + 12345u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

void remove_fixture() {
  if (!g_fixture) return;
  std::error_code ec;
  std::filesystem::remove_all(g_fixture->dir, ec);
}

Fixture& fixture() {
  if (g_fixture) return *g_fixture;
  log_setup(LogSink::Stderr, verbose() ? LogLevel::Debug : LogLevel::Error);
  auto* f = new Fixture;  // lives until exit; its directory is removed then
  f->init();
  std::string tmpl = (std::filesystem::temp_directory_path() / "fuzz_http_request.XXXXXX").string();
  if (!mkdtemp(tmpl.data())) fail("mkdtemp");
  f->dir = tmpl;
  g_fixture = f;
  std::atexit(remove_fixture);

  std::string root = f->dir + "/root";
  for (const auto& d : {root, root + "/docs", root + "/docs/sub", f->dir + "/state"}) {
    mkdir(d.c_str(), 0755);
  }
  std::vector<std::pair<std::string, std::string>> files = {
      {"hello.txt", "hello, intersync\n"},
      {"docs/readme.md", "# docs\n\nA small file for the contents endpoint.\n"},
      {"docs/empty", ""},
      {"big.bin", big_content()},
      {".x.intersync-1.tmp", "a temporary file: never journaled\n"},
  };
  for (const auto& [name, data] : files) write_file(root + "/" + name, data);
  symlink("hello.txt", (root + "/link").c_str());

  f->docs = start_fileset(*f, f->dir + "/state", "docs", root, kToken);
  f->pub = start_fileset(*f, f->dir + "/state", "public", root, nullptr);
  f->router.add(f->docs.get());
  f->router.add(f->pub.get());
  uv_run(&f->loop, UV_RUN_DEFAULT);  // the start-up rescans journal the tree
  for (FilesetServer* s : {f->docs.get(), f->pub.get()}) {
    nlohmann::json st = s->status();
    if (st["head"].get<uint64_t>() == 0 || st["pending_changes"].get<uint64_t>() != 0) {
      fail("the start-up rescan did not finish", st.dump());
    }
    if (verbose()) std::fprintf(stderr, "fixture: %s\n", st.dump().c_str());
  }
  if (verbose()) {
    for (const auto& [name, data] : files) {
      Manifest m = manifest_of(data);
      std::fprintf(stderr, "fixture: %s content id %s (%zu chunks)\n", name.c_str(),
                   hash_hex(m.content_id).c_str(), m.chunks.size());
    }
  }
  return *f;
}

// Serializes a complete response and parses it back.
void check_response(const HttpResponseHead& head, const std::string& body, bool head_request) {
  CHECK(head.status >= 100 && head.status <= 599, std::to_string(head.status));
  std::string bytes = http_serialize(head);
  if (!head_request) bytes += body;
  if (verbose()) std::fprintf(stderr, "response:\n%s\n", http_serialize(head).c_str());

  int heads = 0, completes = 0;
  int status = 0;
  std::string parsed_body;
  HttpParser parser(HttpParser::Kind::Response,
                    {.on_response_head =
                         [&](HttpResponseHead& h) {
                           ++heads;
                           status = h.status;
                         },
                     .on_body = [&](std::string_view piece) { parsed_body.append(piece); },
                     .on_message_complete = [&] { ++completes; }});
  if (head_request) parser.expect_head_response();
  bool ok = parser.feed(bytes.data(), bytes.size()) && parser.finish();
  CHECK(ok, parser.error() ? parser.error()->reason : std::string());
  CHECK(heads == 1 && completes == 1, "the response does not parse back as one message");
  CHECK(status == head.status);
  CHECK(parsed_body == (head_request ? std::string() : body), "the body does not parse back");
}

// Endpoints that change the fileset (a client's write-back: `upload/<id>`
// with PUT, `reintegrate`) are not dispatched: the fixture must stay the
// same from one input to the next. Same split as RequestRouter::route.
bool changes_fileset(const HttpRequestHead& head) {
  auto target = parse_target(head.target);
  if (!target) return false;
  std::string_view path = target->path;
  if (path.substr(0, protocol::kUrlPrefix.size()) != protocol::kUrlPrefix) return false;
  path.remove_prefix(protocol::kUrlPrefix.size());
  size_t slash = path.find('/');
  if (slash == std::string_view::npos) return false;
  std::string_view endpoint = path.substr(slash + 1);
  if (endpoint.substr(0, 7) == "upload/") return head.method != "HEAD";
  return endpoint == "reintegrate";
}

// One connection: the transport-http server's handling of a byte stream,
// one request at a time.
void serve_connection(Fixture& f, std::string_view input) {
  const HttpLimits lim = limits();
  std::optional<HttpResponseHead> refusal;
  bool ready = false;
  HttpRequest request;
  HttpParser* parser_ptr = nullptr;
  HttpParser parser(HttpParser::Kind::Request,
                    {.on_request_head =
                         [&](HttpRequestHead& head) {
                           CHECK(!head.method.empty());
                           CHECK(head.target.size() <= lim.max_target);
                           CHECK(head.headers.all().size() <= lim.max_headers);
                           size_t header_bytes = 0;
                           for (const auto& [n, v] : head.headers.all())
                             header_bytes += n.size() + v.size();
                           CHECK(header_bytes <= lim.max_header_bytes);
                           refusal = f.router.check_head(head, kFuzzPeer);
                           if (refusal) {
                             parser_ptr->pause();
                             return;
                           }
                           request.head = std::move(head);
                         },
                     .on_body = [&](std::string_view piece) { request.body.append(piece); },
                     .on_message_complete =
                         [&] {
                           parser_ptr->pause();
                           ready = true;
                         }},
                    lim);
  parser_ptr = &parser;

  size_t offset = 0;
  for (int n = 0; n < kMaxRequests;) {
    size_t used = 0;
    bool ok = parser.feed(input.data() + offset, input.size() - offset, &used);
    CHECK(used <= input.size() - offset);
    offset += used;
    if (!ok) {
      const HttpParseError& e = *parser.error();
      // 500 means a callback threw: core code (check_head) raised an exception.
      CHECK(e.status != 500, e.reason);
      CHECK(e.status == 400 || e.status == 413 || e.status == 414 || e.status == 431 ||
                e.status == 505,
            std::to_string(e.status) + " " + e.reason);
      HttpResponseHead h;
      h.status = e.status;
      h.keep_alive = false;
      std::string body = e.reason + "\n";
      h.content_length = body.size();
      check_response(h, body, false);
      return;
    }
    if (refusal) {
      CHECK(refusal->status == 401 || refusal->status == 404, std::to_string(refusal->status));
      check_response(*refusal, "", false);
      return;
    }
    if (!ready) {
      if (used == 0 || offset == input.size()) break;
      continue;
    }
    ready = false;
    ++n;
    CHECK(request.body.size() <= lim.max_body);
    request.peer = kFuzzPeer;
    if (changes_fileset(request.head)) return;
    bool head_request = request.head.method == "HEAD";
    bool keep_alive = request.head.keep_alive;
    auto writer = std::make_shared<RecordingWriter>(f);
    f.router.handle(std::move(request), writer);
    request = HttpRequest();
    pump(f, *writer);
    if (!writer->complete()) return;  // aborted or peer gone: the connection is closed
    const HttpResponseHead& h = *writer->head();
    if (h.content_length && !head_request) {
      CHECK(writer->body().size() == *h.content_length, std::to_string(writer->body().size()) +
                                                            " body bytes, Content-Length " +
                                                            std::to_string(*h.content_length));
    }
    check_response(h, writer->body(), head_request);
    (void)f.router.peers("docs").dump();
    (void)f.router.peers("public").dump();
    if (!keep_alive || !h.keep_alive) return;
    parser.resume();
  }
  if (!parser.error()) (void)parser.finish();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fixture();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  serve_connection(fixture(), std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
