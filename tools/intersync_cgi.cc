// intersync.cgi: the protocol served as a CGI program behind any web server
// (Apache's ScriptAlias, lighttpd's mod_cgi), as the original InterSync was.
//
// It owns no state: for each request it reads the configuration (env
// INTERSYNC_CONFIG, default /etc/intersync.yaml), connects to the relay
// socket of the running daemon (relay_socket.h: a unix socket serving every
// server fileset, whatever its listener speaks, TLS included), relays the
// request as HTTP/1.1 and writes the daemon's answer back as a CGI
// response. The daemon keeps its journal, index and authentication to
// itself, so CGI requests and its own listener can never disagree about
// the fileset's state; the bearer token simply travels through.
//
// A CGI process serves one request and exits, so plain blocking I/O with a
// fixed buffer is enough: bodies of any size stream through without being
// held in memory, and a long-poll just waits for the daemon's answer.
//
//   PATH_INFO=/<fset>/<endpoint>  ->  <relay_socket>:
//   /cgi-bin/intersync/<fset>/<endpoint>?QUERY_STRING
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "config.h"
#include "intersync/http_codec.h"
#include "intersync/log.h"
#include "protocol.h"

using namespace intersync;

namespace {

constexpr size_t kBufferSize = 64 * 1024;
// The daemon answers a long-poll within kMaxWaitSeconds; silence well past
// that means it is stuck, and the web server's worker should be let go.
constexpr int kIoTimeoutSeconds = protocol::kMaxWaitSeconds + 30;

// The request headers relayed to the daemon, by CGI variable. Authorization
// carries the token; the others are the conditional and partial requests
// the protocol answers. REDIRECT_HTTP_AUTHORIZATION is where Apache puts the
// header when a RewriteRule passed it on instead of CGIPassAuth.
struct RelayedHeader {
  const char* variable;
  const char* fallback;
  const char* name;
};
constexpr RelayedHeader kRelayedHeaders[] = {
    {"HTTP_AUTHORIZATION", "REDIRECT_HTTP_AUTHORIZATION", "Authorization"},
    {"HTTP_RANGE", nullptr, "Range"},
    {"HTTP_IF_RANGE", nullptr, "If-Range"},
    {"HTTP_IF_MATCH", nullptr, "If-Match"},
    {"HTTP_IF_NONE_MATCH", nullptr, "If-None-Match"},
    {"HTTP_USER_AGENT", nullptr, "User-Agent"},
    {"CONTENT_TYPE", nullptr, "Content-Type"},
};

std::optional<std::string_view> env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return std::nullopt;
  return std::string_view(v);
}

bool write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

bool write_all(int fd, std::string_view s) {
  return write_all(fd, s.data(), s.size());
}

// Answers the web server with a response made here rather than relayed, for
// a request that never reached the daemon. Returns main's exit status.
int answer(int status, std::string_view body) {
  std::string out = "Status: " + std::to_string(status) + " " + http_reason_phrase(status) +
                    "\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    "Cache-Control: no-store\r\nContent-Length: " +
                    std::to_string(body.size()) + "\r\n\r\n";
  out.append(body);
  return write_all(STDOUT_FILENO, out) ? 0 : 1;
}

bool is_valid_fset(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

bool is_token(std::string_view s) {
  if (s.empty() || s.size() > 32) return false;
  for (char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) &&
        std::string_view("!#$%&'*+-.^_`|~").find(c) == std::string_view::npos) {
      return false;
    }
  }
  return true;
}

// QUERY_STRING comes as the client sent it (still percent-encoded), but a
// web server may hand over bytes a request line cannot carry (a space, a
// control character, 8-bit bytes); those are encoded so that the request
// to the daemon stays one well-formed line and means the same.
std::string sanitize_query(std::string_view q) {
  return percent_encode(q, [](unsigned char c) { return c > 0x20 && c < 0x7f && c != '#'; });
}

void set_timeout(int fd, int option, int seconds) {
  timeval tv{};
  tv.tv_sec = seconds;
  (void)setsockopt(fd, SOL_SOCKET, option, &tv, sizeof tv);
}

// Connects to the daemon's relay socket. Returns the socket, or -1 with
// *error naming why.
int connect_to(const std::string& path, std::string* error) {
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path) {
    *error = "the path is too long for a unix socket";
    return -1;
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = std::strerror(errno);
    return -1;
  }
  set_timeout(fd, SO_SNDTIMEO, kIoTimeoutSeconds);
  set_timeout(fd, SO_RCVTIMEO, kIoTimeoutSeconds);
  int rc;
  do {
    rc = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    *error = std::strerror(errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

// The parts of the CGI environment the relay needs, checked.
struct CgiRequest {
  std::string fset;
  HttpRequestHead head;
  std::optional<uint64_t> body_length;  // CONTENT_LENGTH
  bool chunked_body = false;            // a body without CONTENT_LENGTH: read stdin to EOF
};

// Fills `out` from the environment, or returns the status to answer with
// and sets *why.
std::optional<int> parse_environment(CgiRequest& out, std::string* why) {
  auto method = env("REQUEST_METHOD");
  if (!method || !is_token(*method)) {
    *why = "REQUEST_METHOD is missing or malformed: run intersync.cgi from a web server\n";
    return 400;
  }
  auto path_info = env("PATH_INFO");
  if (!path_info || path_info->empty() || path_info->front() != '/') {
    *why = "PATH_INFO is missing: the URL must be .../cgi-bin/intersync/<fset>/<endpoint>\n";
    return 400;
  }
  std::string_view rest = path_info->substr(1);
  size_t slash = rest.find('/');
  std::string_view fset = rest.substr(0, slash);
  std::string_view endpoint =
      slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
  if (!is_valid_fset(fset)) {
    *why = "malformed fileset name in PATH_INFO: expected /<fset>/<endpoint>\n";
    return 400;
  }
  out.fset = std::string(fset);
  if (endpoint.empty()) {
    *why = "no endpoint: the URL must be .../cgi-bin/intersync/<fset>/<endpoint>\n";
    return 404;
  }

  HttpRequestHead& h = out.head;
  h.method = std::string(*method);
  // PATH_INFO arrives decoded (RFC 3875 4.1.5); encoding it again gives the
  // daemon the same path whatever characters the file names hold.
  h.target = protocol::url(url_encode_path(fset), url_encode_path(endpoint));
  if (auto q = env("QUERY_STRING"); q && !q->empty()) h.target += "?" + sanitize_query(*q);
  h.version_minor = 1;
  // One request per connection: the CGI process ends with its request.
  h.keep_alive = false;
  for (const auto& r : kRelayedHeaders) {
    auto v = env(r.variable);
    if (!v && r.fallback) v = env(r.fallback);
    if (v && !v->empty()) h.headers.set(r.name, std::string(*v));
  }
  // The daemon sees the web server as its peer; like any proxy, the relay
  // says who really asked.
  if (auto addr = env("REMOTE_ADDR"); addr && !addr->empty()) {
    h.headers.set("X-Forwarded-For", std::string(*addr));
  }

  auto length = env("CONTENT_LENGTH");
  if (length && !length->empty()) {
    uint64_t n = 0;
    auto [end, ec] = std::from_chars(length->data(), length->data() + length->size(), n);
    if (ec != std::errc() || end != length->data() + length->size()) {
      *why = "CONTENT_LENGTH is not a number\n";
      return 400;
    }
    out.body_length = n;
    h.content_length = n;
  } else if (h.method == "POST" || h.method == "PUT" || h.method == "PATCH") {
    // RFC 3875 wants CONTENT_LENGTH with every body, but Apache hands a
    // chunked upload over without one; stdin then runs to EOF.
    out.chunked_body = true;
    h.headers.set("Transfer-Encoding", "chunked");
  }
  return std::nullopt;
}

// What sending the request body came to.
enum class BodyResult {
  Sent,           // all of it
  EarlyResponse,  // the daemon answered before taking it all (401, 413, ...)
  ShortInput,     // stdin ended before CONTENT_LENGTH bytes
  SocketError,    // the daemon went away; its answer may still be readable
};

// Streams the request body from stdin to the daemon through a fixed buffer.
// The daemon judges a request by its head and may answer (and stop
// reading) before the body is complete, so the socket is watched for an
// answer all along, also while stdin has nothing to give: waiting for an
// upload the daemon has already refused, or on a send it will never drain,
// would keep its answer from the client.
BodyResult send_body(int sock, const CgiRequest& req, char* buf) {
  uint64_t remaining = req.body_length.value_or(0);
  bool input_done = !req.chunked_body && remaining == 0;
  bool trailer_queued = !req.chunked_body;
  std::string pending;
  size_t pending_at = 0;
  for (;;) {
    if (pending_at == pending.size()) {
      pending.clear();
      pending_at = 0;
      if (input_done && trailer_queued) return BodyResult::Sent;
      if (input_done) {
        pending = "0\r\n\r\n";
        trailer_queued = true;
      }
    }
    bool want_input = pending.empty();
    pollfd p[2] = {{sock, static_cast<short>(want_input ? POLLIN : POLLIN | POLLOUT), 0},
                   {STDIN_FILENO, POLLIN, 0}};
    int rc = poll(p, want_input ? 2 : 1, kIoTimeoutSeconds * 1000);
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0) return BodyResult::SocketError;
    if (rc == 0) return want_input ? BodyResult::ShortInput : BodyResult::SocketError;
    if (p[0].revents & POLLIN) return BodyResult::EarlyResponse;
    if (p[0].revents & (POLLERR | POLLHUP)) return BodyResult::SocketError;
    if (want_input) {
      if (p[1].revents == 0) continue;
      size_t want = req.chunked_body ? kBufferSize : std::min<uint64_t>(remaining, kBufferSize);
      ssize_t n = ::read(STDIN_FILENO, buf, want);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n < 0) return BodyResult::ShortInput;
      if (n == 0) {
        if (!req.chunked_body) return BodyResult::ShortInput;
        input_done = true;
        continue;
      }
      if (req.chunked_body) {
        char size_line[24];
        int len = std::snprintf(size_line, sizeof size_line, "%zx\r\n", static_cast<size_t>(n));
        pending.append(size_line, static_cast<size_t>(len));
        pending.append(buf, static_cast<size_t>(n));
        pending.append("\r\n");
      } else {
        pending.assign(buf, static_cast<size_t>(n));
        remaining -= static_cast<uint64_t>(n);
        input_done = remaining == 0;
      }
      continue;
    }
    if (!(p[0].revents & POLLOUT)) continue;
    ssize_t n = send(sock, pending.data() + pending_at, pending.size() - pending_at,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (n < 0) return BodyResult::SocketError;
    pending_at += static_cast<size_t>(n);
  }
}

// Hop-by-hop fields belong to the connection with the daemon, not to the
// web server's answer (which frames the body itself); "Status" would be
// taken by the web server as the CGI status line.
bool is_relayed_response_header(std::string_view name) {
  static constexpr std::string_view kDropped[] = {
      "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "status"};
  std::string lower(name);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (auto d : kDropped) {
    if (lower == d) return false;
  }
  return true;
}

// Reads the daemon's answer and writes it to stdout as a CGI response,
// body streamed as it arrives. Returns main's exit status.
int relay_response(int sock, const CgiRequest& req, const std::string& where, char* buf) {
  bool head_written = false;
  bool complete = false;
  bool output_failed = false;
  HttpParser::Callbacks cb;
  cb.on_response_head = [&](HttpResponseHead& h) {
    // An interim answer (100 Continue) is the connection's business.
    if (h.status < 200) return;
    std::string out = "Status: " + std::to_string(h.status) + " " +
                      (h.reason.empty() ? http_reason_phrase(h.status) : h.reason) + "\r\n";
    for (const auto& [name, value] : h.headers.all()) {
      if (!is_relayed_response_header(name)) continue;
      out += name + ": " + value + "\r\n";
    }
    out += "\r\n";
    head_written = true;
    if (!write_all(STDOUT_FILENO, out)) output_failed = true;
  };
  cb.on_body = [&](std::string_view piece) {
    if (!output_failed && !write_all(STDOUT_FILENO, piece)) output_failed = true;
  };
  cb.on_message_complete = [&] {
    if (head_written) complete = true;
  };
  HttpParser parser(HttpParser::Kind::Response, std::move(cb));
  if (req.head.method == "HEAD") parser.expect_head_response();

  // Before the head has gone out the web client can still be told what
  // went wrong; after it, a cut-short body is all that can be said (the
  // web server closes the connection and the client sees the short read).
  auto fail = [&](int status, const std::string& why) {
    std::fprintf(stderr, "intersync.cgi: %s %s: %s\n", req.head.method.c_str(),
                 req.head.target.c_str(), why.c_str());
    if (head_written) return 1;
    return answer(status, "intersync.cgi: " + why + "\n");
  };

  // A daemon that closes without a byte of answer is going away (it drops
  // its connections when it stops): that is 503, try again later, like a
  // daemon not listening at all. A broken or cut-short answer is 502.
  uint64_t received = 0;
  auto lost = [&](const std::string& how) {
    return fail(received == 0 ? 503 : 502, "the intersync daemon at " + where + " " + how);
  };
  while (!complete) {
    ssize_t n = recv(sock, buf, kBufferSize, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return fail(504, "no answer from the intersync daemon at " + where + " for " +
                           std::to_string(kIoTimeoutSeconds) + " s");
    }
    if (n < 0) {
      return lost(std::string("dropped the connection: ") + std::strerror(errno));
    }
    if (n == 0) {
      // A body without a length ends with the connection.
      if (parser.finish() && complete) break;
      return lost(received == 0 ? "closed the connection without answering"
                                : "closed the connection before its answer was complete");
    }
    received += static_cast<uint64_t>(n);
    if (!parser.feed(buf, static_cast<size_t>(n))) {
      return fail(
          502, "bad answer from the intersync daemon at " + where + ": " + parser.error()->reason);
    }
    if (output_failed) return 1;  // the web client went away
  }
  return output_failed ? 1 : 0;
}

int run() {
  CgiRequest req;
  std::string why;
  if (auto status = parse_environment(req, &why)) return answer(*status, "intersync.cgi: " + why);

  std::string config_file(env("INTERSYNC_CONFIG").value_or("/etc/intersync.yaml"));
  auto config = load_config(config_file);
  if (!config) {
    // The details (paths, positions) go to the web server's error log, not
    // to whoever sent the request.
    std::fprintf(stderr, "intersync.cgi: %s\n", config.error().message.c_str());
    return answer(500,
                  "intersync.cgi: cannot read its configuration; see the web server's "
                  "error log\n");
  }
  const FilesetConfig* fs = nullptr;
  for (const auto& f : config->filesets) {
    if (f.name == req.fset && f.role == Role::Server) fs = &f;
  }
  // The same answer the daemon gives for a fileset it does not serve.
  if (fs == nullptr) return answer(404, "no such fileset\n");
  const std::string& relay = config->relay_socket;
  std::string where = "relay socket " + relay;
  std::string error;
  int sock = connect_to(relay, &error);
  if (sock < 0) {
    std::fprintf(stderr, "intersync.cgi: fileset '%s': the intersync daemon at %s: %s\n",
                 fs->name.c_str(), where.c_str(), error.c_str());
    return answer(503, "intersync.cgi: the intersync daemon for fileset '" + fs->name +
                           "' is not reachable at its " + where + ": " + error + "\n");
  }
  req.head.headers.set("Host", "localhost");

  static char buf[kBufferSize];
  std::string head = http_serialize(req.head);
  bool sent = write_all(sock, head);  // SIGPIPE is ignored: a failure is EPIPE
  BodyResult body = BodyResult::Sent;
  if (sent && (req.body_length.value_or(0) > 0 || req.chunked_body)) {
    body = send_body(sock, req, buf);
  }
  if (body == BodyResult::ShortInput) {
    // The web client went away mid-upload; the daemon sees the connection
    // close with the body incomplete and drops the request.
    ::close(sock);
    return answer(400, "intersync.cgi: the request body ended early or stalled\n");
  }
  // After a failed send the daemon may still have answered (a refusal
  // before the body); relay_response reports a 502 if it did not.
  int rc = relay_response(sock, req, where, buf);
  ::close(sock);
  return rc;
}

}  // namespace

int main() {
  // A client that disconnects, or a daemon that closes early, must show up
  // as a failed write, not kill the process mid-response.
  signal(SIGPIPE, SIG_IGN);
  // What core logs while reading the configuration (a token file readable
  // by others, say) lands in the web server's error log under our name.
  log_setup(LogSink::Stderr, LogLevel::Warn, "intersync.cgi");
  try {
    return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "intersync.cgi: %s\n", e.what());
    return answer(500, "intersync.cgi: internal error\n");
  }
}
