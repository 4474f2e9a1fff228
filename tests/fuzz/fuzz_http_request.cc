// libFuzzer target for the server's request path, from bytes on a
// connection to the response: HttpParser (requests), then what the
// transport-http plugin does with each message (RequestRouter::check_head
// before the body, RequestRouter::handle after it), with two real
// FilesetServers behind the router ("docs", which needs a bearer token, and
// "public", auth: none) serving a small tree in a temporary directory. Their
// backend is a no-op and the endpoints that write (upload, reintegrate)
// are not dispatched, so the tree and the journal do not change while
// fuzzing. Responses go to a ResponseWriter that records them; the uv loop
// runs after each request so that thread-pool work (contents, file
// streaming) completes, and a request still unanswered once nothing but
// timers is pending (a long-poll) sees its peer go away, as a closed
// connection would.
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
#include "intersync/backend.h"
#include "intersync/http_codec.h"
#include "intersync/log.h"
#include "protocol.h"
#include "request_router.h"

using namespace intersync;

namespace {

[[noreturn]] void fail(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "fuzz_http_request: invariant violated: %s%s%s\n", what,
               detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

#define CHECK(cond, ...)                                 \
  do {                                                   \
    if (!(cond)) fail(#cond __VA_OPT__(, ) __VA_ARGS__); \
  } while (0)

constexpr const char* kPeer = "192.0.2.7:40370";
constexpr const char* kToken = "secret-token";  // the "laptop" client of fileset "docs"
constexpr uint64_t kGuardMs = 5;                // idle this long: a long-poll's peer goes away
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

// The backend of the fixture's filesets: reports nothing.
class NullBackend : public Backend {
 public:
  Status configure(const ConfigNode&) override { return Status::Ok(); }
  Status start(uv_loop_t*, const std::string&, BackendHost*) override { return Status::Ok(); }
  void stop() override {}
};

// Runs the flush callbacks of RecordingWriter::write from the loop, as a
// transport does once the bytes reached the kernel.
struct FlushQueue {
  uv_idle_t idle{};
  std::deque<std::function<void()>> callbacks;

  void init(uv_loop_t* loop) {
    uv_idle_init(loop, &idle);
    idle.data = this;
  }
  void push(std::function<void()> cb) {
    callbacks.push_back(std::move(cb));
    uv_idle_start(&idle, [](uv_idle_t* h) { static_cast<FlushQueue*>(h->data)->drain(); });
  }
  void drain() {
    auto batch = std::move(callbacks);
    callbacks.clear();
    for (auto& cb : batch) cb();
    if (callbacks.empty()) uv_idle_stop(&idle);
  }
};

struct Fixture {
  uv_loop_t loop{};
  std::string dir;
  std::unique_ptr<FilesetServer> docs, pub;
  RequestRouter router;
  FlushQueue flushes;
  uv_timer_t guard{};
};

Fixture* g_fixture = nullptr;

void write_file(const std::string& path, const std::string& data) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || write(fd, data.data(), data.size()) != static_cast<ssize_t>(data.size())) {
    fail("cannot write the fixture", path);
  }
  close(fd);
}

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

std::unique_ptr<FilesetServer> start_fileset(Fixture& f, const std::string& name,
                                             const std::string& root, bool auth_none) {
  FilesetConfig c;
  c.name = name;
  c.path = root;
  c.role = Role::Server;
  c.backend = "null";
  c.auth_none = auth_none;
  if (!auth_none) c.clients.push_back({"laptop", hash_hex(sha256(kToken))});
  auto server = std::make_unique<FilesetServer>(&f.loop, c, f.dir + "/state");
  if (Status s = server->start(std::make_unique<NullBackend>()); !s) {
    fail("cannot start the fixture's fileset", s.error().message);
  }
  return server;
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
  uv_loop_init(&f->loop);
  f->flushes.init(&f->loop);
  uv_timer_init(&f->loop, &f->guard);
  uv_unref(reinterpret_cast<uv_handle_t*>(&f->guard));
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

  f->docs = start_fileset(*f, "docs", root, false);
  f->pub = start_fileset(*f, "public", root, true);
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

// A ResponseWriter that records what the handler sends and checks the
// order of calls.
class RecordingWriter : public ResponseWriter {
 public:
  explicit RecordingWriter(Fixture& f) : f_(f) {}

  void send_head(HttpResponseHead head) override {
    CHECK(!head_ && !ended_ && !aborted_, "send_head called twice or late");
    head_ = std::move(head);
  }
  void write(std::string data, std::function<void()> on_flushed) override {
    CHECK(head_ && !ended_ && !aborted_, "write before send_head or after the end");
    if (!gone_) body_ += data;
    if (on_flushed) f_.flushes.push(std::move(on_flushed));
  }
  void end() override {
    CHECK(head_ && !ended_ && !aborted_, "end before send_head or twice");
    ended_ = true;
  }
  void abort() override {
    CHECK(!ended_, "abort after end");
    aborted_ = true;
  }
  bool closed() const override { return gone_ || aborted_; }
  void on_abort(std::function<void()> callback) override {
    abort_callbacks_.push_back(std::move(callback));
  }
  std::string peer() const override { return kPeer; }

  // The connection closes under an unfinished response.
  void peer_gone() {
    if (ended_ || aborted_ || gone_) return;
    gone_ = true;
    for (auto& cb : std::exchange(abort_callbacks_, {})) cb();
  }

  bool finished() const { return ended_ || aborted_ || gone_; }
  // Ended with the peer still there to receive the whole response.
  bool complete() const { return ended_ && !gone_; }
  const std::optional<HttpResponseHead>& head() const { return head_; }
  const std::string& body() const { return body_; }

 private:
  Fixture& f_;
  std::optional<HttpResponseHead> head_;
  std::string body_;
  bool ended_ = false, aborted_ = false, gone_ = false;
  std::vector<std::function<void()>> abort_callbacks_;
};

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

// Lets the loop run until the request's work is done. A response still
// unfinished when the loop has nothing in flight but timers (a long-poll)
// loses its peer, as when a client gives up; the loop must then wind down
// by itself within a second. Thread-pool work and pending flushes are
// always waited for, so what runs does not depend on the machine's speed.
// The guard timer is unreferenced: it does not keep the loop alive itself.
struct Guard {
  Fixture* f;
  RecordingWriter* writer;
  bool expired = false;
};

void guard_expired(uv_timer_t* t) {
  static_cast<Guard*>(t->data)->expired = true;
  uv_stop(t->loop);
}

void guard_check_idle(uv_timer_t* t) {
  auto* g = static_cast<Guard*>(t->data);
  if (t->loop->active_reqs.count > 0 || !g->f->flushes.callbacks.empty()) {
    uv_timer_start(t, guard_check_idle, kGuardMs, 0);  // work in flight
    return;
  }
  g->writer->peer_gone();
  uv_timer_start(t, guard_expired, 1000, 0);
}

void pump(Fixture& f, RecordingWriter& w) {
  Guard guard{&f, &w};
  f.guard.data = &guard;
  bool finished_seen = w.finished();
  uv_timer_start(&f.guard, finished_seen ? guard_expired : guard_check_idle,
                 finished_seen ? 1000 : kGuardMs, 0);
  for (;;) {
    if (!finished_seen && w.finished()) {
      finished_seen = true;
      uv_timer_stop(&f.guard);
      uv_timer_start(&f.guard, guard_expired, 1000, 0);
    }
    bool more = uv_run(&f.loop, UV_RUN_ONCE) != 0;
    if (guard.expired) fail("the loop is still busy a second after the response ended");
    if (!more) break;
  }
  uv_timer_stop(&f.guard);
  CHECK(w.finished(), "the request was neither answered nor aborted");
  CHECK(f.flushes.callbacks.empty());
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
                           refusal = f.router.check_head(head, kPeer);
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
    request.peer = kPeer;
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
