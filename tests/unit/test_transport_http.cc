// Tests for the "http" transport plugin over real sockets on 127.0.0.1: the
// plugin's own descriptor creates the transport, which serves a test
// RequestHandler and also provides the client sessions talking to it. Each
// test runs a real libuv loop until a condition holds or a deadline timer
// fires; at the end every handle must have been closed and freed. The TLS
// tests make a throw-away CA and server certificate with OpenSSL in a
// temporary directory.
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <uv.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "intersync/config_node.h"
#include "intersync/plugin.h"
#include "intersync/transport.h"
#include "test_loop.h"

extern "C" const intersync_plugin_descriptor_t* intersync_plugin_descriptor(void);

using namespace intersync;

namespace {

uint64_t now_ms() {
  return uv_hrtime() / 1000000;
}

char pattern_byte(uint64_t offset) {
  return static_cast<char>((offset * 7 + (offset >> 11)) & 0xff);
}

std::string pattern(uint64_t offset, size_t size) {
  std::string out(size, '\0');
  for (size_t i = 0; i < size; ++i) out[i] = pattern_byte(offset + i);
  return out;
}

void respond(const std::shared_ptr<ResponseWriter>& writer, int status, std::string body) {
  HttpResponseHead head;
  head.status = status;
  head.content_length = body.size();
  writer->send_head(head);
  if (!body.empty()) writer->write(std::move(body));
  writer->end();
}

// Streams `total` pattern bytes in pieces, each written once the previous
// one was flushed, and records how far ahead of the client it ever got.
struct Streamer : std::enable_shared_from_this<Streamer> {
  std::shared_ptr<ResponseWriter> writer;
  uint64_t total = 0;
  size_t piece = 256 * 1024;
  uint64_t offset = 0;
  uint64_t flushed = 0;
  int outstanding = 0;
  int max_outstanding = 0;

  void start() {
    HttpResponseHead head;
    head.content_length = total;
    writer->send_head(head);
    pump();
  }

  void pump() {
    if (writer->closed()) return;
    if (offset == total) {
      writer->end();
      return;
    }
    size_t n = static_cast<size_t>(std::min<uint64_t>(piece, total - offset));
    std::string data = pattern(offset, n);
    offset += n;
    max_outstanding = std::max(max_outstanding, ++outstanding);
    writer->write(std::move(data), [self = shared_from_this(), n] {
      --self->outstanding;
      self->flushed += n;
      self->pump();
    });
  }
};

class TestHandler : public RequestHandler {
 public:
  using Route = std::function<void(HttpRequest&, std::shared_ptr<ResponseWriter>)>;

  std::optional<HttpResponseHead> check_head(const HttpRequestHead& head,
                                             const std::string&) override {
    ++checked;
    if (head.target == "/secret" && !head.headers.get("Authorization")) {
      HttpResponseHead refusal;
      refusal.status = 401;
      refusal.headers.add("WWW-Authenticate", "Bearer");
      return refusal;
    }
    return std::nullopt;
  }

  void handle(HttpRequest&& request, std::shared_ptr<ResponseWriter> writer) override {
    ++handled;
    peers.push_back(request.peer);
    hosts.push_back(std::string(request.head.headers.get("Host").value_or("")));
    auto target = parse_target(request.head.target);
    REQUIRE(target);
    auto route = routes.find(target->path);
    if (route != routes.end()) {
      route->second(request, std::move(writer));
      return;
    }
    respond(writer, 200,
            "echo " + request.head.method + " " + target->path + " " +
                std::to_string(request.body.size()));
  }

  std::map<std::string, Route> routes;
  int checked = 0;
  int handled = 0;
  std::vector<std::string> peers;
  std::vector<std::string> hosts;
};

// What a client call reported.
struct Reply {
  bool done = false;
  Status status;
  std::optional<HttpResponseHead> head;
  std::string body;

  ResponseCallbacks callbacks() {
    ResponseCallbacks cb;
    cb.on_head = [this](HttpResponseHead& h) { head = h; };
    cb.on_body = [this](std::string_view piece) { body.append(piece); };
    cb.on_done = [this](Status s) {
      CHECK_FALSE(done);
      done = true;
      status = std::move(s);
    };
    return cb;
  }
};

HttpRequestHead request(std::string method, std::string target) {
  HttpRequestHead head;
  head.method = std::move(method);
  head.target = std::move(target);
  return head;
}

std::unique_ptr<Transport> make_transport() {
  const intersync_plugin_descriptor_t* descriptor = intersync_plugin_descriptor();
  REQUIRE(descriptor->abi_version == INTERSYNC_PLUGIN_ABI_VERSION);
  REQUIRE(std::string(descriptor->name) == "http");
  REQUIRE(descriptor->kind == INTERSYNC_PLUGIN_TRANSPORT);
  return std::unique_ptr<Transport>(static_cast<Transport*>(descriptor->create()));
}

// A port nothing listens on: bound, read back, closed.
uint16_t unused_port(TestLoop& loop) {
  auto* tcp = new uv_tcp_t;
  uv_tcp_init(loop.get(), tcp);
  sockaddr_in addr{};
  uv_ip4_addr("127.0.0.1", 0, &addr);
  REQUIRE(uv_tcp_bind(tcp, reinterpret_cast<sockaddr*>(&addr), 0) == 0);
  sockaddr_in bound{};
  int len = sizeof bound;
  uv_tcp_getsockname(tcp, reinterpret_cast<sockaddr*>(&bound), &len);
  uv_close(reinterpret_cast<uv_handle_t*>(tcp),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
  return ntohs(bound.sin_port);
}

// A plain TCP client that sends bytes as they are and collects everything
// the server sends until it closes.
struct RawClient {
  uv_tcp_t tcp;
  uv_connect_t connect;
  uv_write_t write;
  std::string out;
  std::string in;
  bool eof = false;
  bool reads = true;

  // A client with `reads` false never reads what the server sends.
  static RawClient* open(TestLoop& loop, uint16_t port, std::string data, bool reads = true) {
    auto* c = new RawClient;
    c->out = std::move(data);
    c->reads = reads;
    uv_tcp_init(loop.get(), &c->tcp);
    c->tcp.data = c;
    sockaddr_in addr{};
    uv_ip4_addr("127.0.0.1", port, &addr);
    uv_tcp_connect(&c->connect, &c->tcp, reinterpret_cast<sockaddr*>(&addr),
                   [](uv_connect_t* req, int status) {
                     auto* self = static_cast<RawClient*>(req->handle->data);
                     REQUIRE(status == 0);
                     if (!self->out.empty()) {
                       uv_buf_t buf = uv_buf_init(self->out.data(), self->out.size());
                       uv_write(&self->write, req->handle, &buf, 1, [](uv_write_t*, int) {});
                     }
                     if (!self->reads) return;
                     uv_read_start(
                         req->handle,
                         [](uv_handle_t*, size_t size, uv_buf_t* buf) {
                           *buf = uv_buf_init(new char[size], size);
                         },
                         [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
                           auto* me = static_cast<RawClient*>(stream->data);
                           if (nread > 0) me->in.append(buf->base, nread);
                           if (nread < 0) {
                             me->eof = true;
                             uv_read_stop(stream);
                           }
                           delete[] buf->base;
                         });
                   });
    return c;
  }

  void close() {
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp),
             [](uv_handle_t* h) { delete static_cast<RawClient*>(h->data); });
  }
};

struct Fixture {
  TestLoop loop;
  TestHandler handler;
  std::unique_ptr<Transport> transport = make_transport();
  uint16_t port = 0;

  Fixture() { listen(); }

  void listen() {
    auto bound = transport->listen(loop.get(), "127.0.0.1", 0, &handler);
    REQUIRE(bound.ok());
    REQUIRE(bound->rfind("127.0.0.1:", 0) == 0);
    port = static_cast<uint16_t>(std::stoi(bound->substr(10)));
    REQUIRE(port != 0);
  }

  ~Fixture() {
    transport->stop();
    transport.reset();
  }

  std::unique_ptr<ClientSession> session(unsigned max_connections = 4) {
    ClientTarget target;
    target.host = "127.0.0.1";
    target.port = port;
    target.max_connections = max_connections;
    return transport->connect(loop.get(), target);
  }
};

}  // namespace

TEST_CASE_METHOD(Fixture, "GETs echo the path over one keep-alive connection") {
  auto client = session();
  for (int i = 0; i < 3; ++i) {
    Reply reply;
    client->send(request("GET", "/cgi-bin/intersync/docs/info%20" + std::to_string(i) + "?x=1"), "",
                 reply.callbacks());
    REQUIRE(loop.run_until([&] { return reply.done; }));
    REQUIRE(reply.status.ok());
    REQUIRE(reply.head);
    CHECK(reply.head->status == 200);
    CHECK(reply.head->keep_alive);
    CHECK(reply.body == "echo GET /cgi-bin/intersync/docs/info " + std::to_string(i) + " 0");
  }
  REQUIRE(handler.peers.size() == 3);
  CHECK(handler.peers[0] == handler.peers[1]);
  CHECK(handler.peers[1] == handler.peers[2]);
  CHECK(handler.hosts[0] == "127.0.0.1:" + std::to_string(port));
  CHECK(transport->connection_count() == 1);

  // A HEAD response has a length but no body, and the connection survives.
  handler.routes["/head"] = [](HttpRequest&, std::shared_ptr<ResponseWriter> writer) {
    respond(writer, 200, "not sent to a HEAD request");
  };
  Reply head;
  client->send(request("HEAD", "/head"), "", head.callbacks());
  REQUIRE(loop.run_until([&] { return head.done; }));
  REQUIRE(head.status.ok());
  CHECK(head.head->content_length == 26);
  CHECK(head.body.empty());

  Reply post;
  client->send(request("POST", "/upload"), std::string(100000, 'p'), post.callbacks());
  REQUIRE(loop.run_until([&] { return post.done; }));
  CHECK(post.body == "echo POST /upload 100000");
  CHECK(handler.peers.back() == handler.peers.front());

  client->close();
  REQUIRE(loop.run_until([&] { return transport->connection_count() == 0; }));
}

TEST_CASE_METHOD(Fixture, "a 64 MiB response streams with bounded memory") {
  constexpr uint64_t kTotal = 64ull << 20;
  std::shared_ptr<Streamer> streamer;
  handler.routes["/big"] = [&](HttpRequest&, std::shared_ptr<ResponseWriter> writer) {
    streamer = std::make_shared<Streamer>();
    streamer->writer = std::move(writer);
    streamer->total = kTotal;
    streamer->start();
  };

  auto client = session();
  uint64_t received = 0;
  uint64_t mismatches = 0;
  uint64_t max_ahead = 0;
  bool paused_once = false;
  Reply reply;
  ResponseCallbacks cb = reply.callbacks();
  std::shared_ptr<ClientCall> call;
  cb.on_body = [&](std::string_view piece) {
    for (size_t i = 0; i < piece.size(); ++i) {
      if (piece[i] != pattern_byte(received + i)) ++mismatches;
    }
    received += piece.size();
    max_ahead = std::max(max_ahead, streamer->flushed - std::min(streamer->flushed, received));
    // A slow consumer for a while: the server must wait for it.
    if (!paused_once && received >= (1 << 20)) {
      paused_once = true;
      call->pause();
      loop.after(300, [&] { call->resume(); });
    }
  };
  call = client->send(request("GET", "/big"), "", cb);
  REQUIRE(loop.run_until([&] { return reply.done; }, 60000));
  REQUIRE(reply.status.ok());
  CHECK(reply.head->content_length == kTotal);
  CHECK(received == kTotal);
  CHECK(mismatches == 0);
  CHECK(streamer->max_outstanding <= 2);
  // Without backpressure the server would have flushed everything while the
  // client slept; with it, it stays within the kernel's socket buffers.
  INFO("max bytes flushed ahead of the client: " << max_ahead);
  CHECK(max_ahead < (24ull << 20));
}

TEST_CASE_METHOD(Fixture, "a refused head is answered without reading the body") {
  auto client = session();
  Reply refused;
  client->send(request("POST", "/secret"), std::string(1 << 20, 's'), refused.callbacks());
  REQUIRE(loop.run_until([&] { return refused.done; }));
  REQUIRE(refused.status.ok());
  CHECK(refused.head->status == 401);
  CHECK_FALSE(refused.head->keep_alive);
  CHECK(refused.head->headers.get("WWW-Authenticate") == "Bearer");
  CHECK(handler.checked == 1);
  CHECK(handler.handled == 0);

  // The next call opens a new connection.
  Reply next;
  HttpRequestHead authorized = request("POST", "/secret");
  authorized.headers.add("Authorization", "Bearer token");
  client->send(authorized, "abc", next.callbacks());
  REQUIRE(loop.run_until([&] { return next.done; }));
  CHECK(next.body == "echo POST /secret 3");
  REQUIRE(loop.run_until([&] { return transport->connection_count() == 1; }));
}

TEST_CASE_METHOD(Fixture, "garbage gets a 400 and the server keeps serving") {
  RawClient* raw = RawClient::open(loop, port, "GARBAGE / NONSENSE\r\n\r\n");
  REQUIRE(loop.run_until([&] { return raw->eof; }));
  CHECK(raw->in.rfind("HTTP/1.1 400 Bad Request\r\n", 0) == 0);
  CHECK(raw->in.find("Connection: close\r\n") != std::string::npos);
  CHECK(raw->in.find("HPE_") != std::string::npos);
  raw->close();

  RawClient* long_target =
      RawClient::open(loop, port, "GET /" + std::string(9000, 'a') + " HTTP/1.1\r\n\r\n");
  REQUIRE(loop.run_until([&] { return long_target->eof; }));
  CHECK(long_target->in.rfind("HTTP/1.1 414 ", 0) == 0);
  long_target->close();

  auto client = session();
  Reply reply;
  client->send(request("GET", "/after"), "", reply.callbacks());
  REQUIRE(loop.run_until([&] { return reply.done; }));
  CHECK(reply.body == "echo GET /after 0");
  CHECK(handler.handled == 1);
}

TEST_CASE_METHOD(Fixture, "pipelined requests are answered in order") {
  RawClient* raw = RawClient::open(loop, port,
                                   "GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
                                   "POST /two HTTP/1.1\r\nContent-Length: 2\r\n\r\nab"
                                   "GET /three HTTP/1.1\r\nConnection: close\r\n\r\n");
  REQUIRE(loop.run_until([&] { return raw->eof; }));
  auto one = raw->in.find("echo GET /one 0");
  auto two = raw->in.find("echo POST /two 2");
  auto three = raw->in.find("echo GET /three 0");
  CHECK(one != std::string::npos);
  CHECK(two != std::string::npos);
  CHECK(three != std::string::npos);
  CHECK(one < two);
  CHECK(two < three);
  raw->close();
}

TEST_CASE_METHOD(Fixture, "a paused call reads nothing until resumed") {
  constexpr uint64_t kTotal = 8ull << 20;
  handler.routes["/big"] = [&](HttpRequest&, std::shared_ptr<ResponseWriter> writer) {
    auto streamer = std::make_shared<Streamer>();
    streamer->writer = std::move(writer);
    streamer->total = kTotal;
    streamer->start();
  };
  auto client = session();
  Reply reply;
  ResponseCallbacks cb = reply.callbacks();
  std::shared_ptr<ClientCall> call;
  bool paused = false;
  uint64_t received = 0;
  uint64_t while_paused = 0;
  uint64_t paused_at = 0;
  uint64_t resumed_at = 0;
  cb.on_body = [&](std::string_view piece) {
    received += piece.size();
    if (paused) while_paused += piece.size();
    if (paused_at == 0 && received >= (2 << 20)) {
      paused = true;
      paused_at = now_ms();
      call->pause();
      loop.after(200, [&] {
        paused = false;
        resumed_at = now_ms();
        call->resume();
      });
    }
  };
  call = client->send(request("GET", "/big"), "", cb);
  REQUIRE(loop.run_until([&] { return reply.done; }, 30000));
  REQUIRE(reply.status.ok());
  CHECK(received == kTotal);
  REQUIRE(paused_at != 0);
  CHECK(resumed_at >= paused_at + 150);
  // At most the rest of the read buffer in hand when pause() was called.
  CHECK(while_paused < 64 * 1024);
}

TEST_CASE_METHOD(Fixture, "a refused connection ends the call with an error") {
  uint16_t closed_port = unused_port(loop);
  ClientTarget target;
  target.host = "127.0.0.1";
  target.port = closed_port;
  auto client = transport->connect(loop.get(), target);
  Reply reply;
  client->send(request("GET", "/"), "", reply.callbacks());
  REQUIRE(loop.run_until([&] { return reply.done; }));
  REQUIRE_FALSE(reply.status.ok());
  CHECK(reply.status.error().code == -ECONNREFUSED);
  CHECK(reply.status.error().message.find("127.0.0.1:" + std::to_string(closed_port)) !=
        std::string::npos);
  CHECK_FALSE(reply.head);
}

TEST_CASE_METHOD(Fixture, "a response cut short ends the call with an error") {
  handler.routes["/cut"] = [](HttpRequest&, std::shared_ptr<ResponseWriter> writer) {
    HttpResponseHead head;
    head.content_length = 1 << 20;
    writer->send_head(head);
    writer->write(std::string(1000, 'c'));
    writer->end();
  };
  auto client = session();
  Reply reply;
  client->send(request("GET", "/cut"), "", reply.callbacks());
  REQUIRE(loop.run_until([&] { return reply.done; }));
  REQUIRE(reply.head);
  CHECK(reply.body.size() == 1000);
  REQUIRE_FALSE(reply.status.ok());
  CHECK(reply.status.error().code < 0);
  CHECK(reply.status.error().message.find("127.0.0.1:" + std::to_string(port)) !=
        std::string::npos);
  REQUIRE(loop.run_until([&] { return transport->connection_count() == 0; }));
}

TEST_CASE_METHOD(Fixture, "a long-poll is answered later, or aborted when the client leaves") {
  std::shared_ptr<ResponseWriter> parked;
  bool aborted = false;
  handler.routes["/poll"] = [&](HttpRequest& request, std::shared_ptr<ResponseWriter> writer) {
    auto target = parse_target(request.head.target);
    if (target->param("wait") == "forever") {
      parked = writer;
      writer->on_abort([&] { aborted = true; });
      return;
    }
    loop.after(200, [writer] { respond(writer, 200, "news"); });
  };
  auto client = session();

  Reply reply;
  uint64_t start = now_ms();
  client->send(request("GET", "/poll?since=4&wait=1"), "", reply.callbacks());
  REQUIRE(loop.run_until([&] { return reply.done; }));
  CHECK(now_ms() - start >= 150);
  REQUIRE(reply.status.ok());
  CHECK(reply.body == "news");

  Reply canceled;
  auto call = client->send(request("GET", "/poll?wait=forever"), "", canceled.callbacks());
  REQUIRE(loop.run_until([&] { return parked != nullptr; }));
  call->cancel();
  CHECK(canceled.done);
  CHECK(canceled.status.error().code == -ECANCELED);
  REQUIRE(loop.run_until([&] { return aborted; }));
  CHECK(parked->closed());
  // Writes to a gone peer are dropped; their callbacks still run, once.
  int flushed = 0;
  parked->write("late", [&] { ++flushed; });
  CHECK(flushed == 1);
  parked->end();
  call->cancel();
}

TEST_CASE_METHOD(Fixture, "an unanswered call times out") {
  std::shared_ptr<ResponseWriter> parked;
  handler.routes["/hang"] = [&](HttpRequest&, std::shared_ptr<ResponseWriter> writer) {
    parked = std::move(writer);
  };
  ClientTarget target;
  target.host = "127.0.0.1";
  target.port = port;
  target.idle_timeout_ms = 200;
  auto client = transport->connect(loop.get(), target);
  Reply reply;
  client->send(request("GET", "/hang"), "", reply.callbacks());
  REQUIRE(loop.run_until([&] { return reply.done; }));
  CHECK(reply.status.error().code == -ETIMEDOUT);
}

TEST_CASE_METHOD(Fixture, "a client whose idle_timeout its long-polls outlast is refused") {
  handler.routes["/"] = [](HttpRequest&, std::shared_ptr<ResponseWriter> writer) {
    respond(writer, 200, "ok");
  };
  auto call = [&](const char* yaml) {
    REQUIRE(
        transport->configure(ConfigNode(YAML::Load(yaml), "client.yaml", "'http' settings")).ok());
    ClientTarget target;
    target.host = "127.0.0.1";
    target.port = port;
    target.long_poll_ms = 25000;
    auto client = transport->connect(loop.get(), target);
    Reply reply;
    client->send(request("GET", "/"), "", reply.callbacks());
    REQUIRE(loop.run_until([&] { return reply.done; }));
    return reply;
  };
  Reply refused = call("plain: true\nidle_timeout: 20");
  REQUIRE_FALSE(refused.status.ok());
  std::string message = refused.status.error().message;
  INFO(message);
  CHECK(message.find("client.yaml:2:1: 'idle_timeout' of 'http' settings is 20 s") !=
        std::string::npos);
  CHECK(message.find("long-poll waits 25 s") != std::string::npos);
  Reply longer = call("plain: true\nidle_timeout: 26");
  CHECK(longer.status.ok());
}

TEST_CASE("configure accepts the plugin's keys and rejects others") {
  auto transport = make_transport();
  CHECK(transport
            ->configure(ConfigNode(YAML::Load("max_connections: 2\nidle_timeout: 30\nplain: true"),
                                   "test.yaml", "fileset 'docs'"))
            .ok());
  Status unknown = transport->configure(
      ConfigNode(YAML::Load("max_conections: 2"), "test.yaml", "fileset 'docs'"));
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().message.find("max_conections") != std::string::npos);
  CHECK_FALSE(
      transport
          ->configure(ConfigNode(YAML::Load("max_connections: 0"), "test.yaml", "fileset 'docs'"))
          .ok());
  CHECK_FALSE(
      transport
          ->configure(ConfigNode(YAML::Load("max_connections: 65"), "test.yaml", "fileset 'docs'"))
          .ok());
}

TEST_CASE("plain HTTP only when the configuration says so") {
  auto transport = make_transport();
  // A fileset without an `http:` key: the error points at the fileset.
  YAML::Node file = YAML::Load("filesets:\n  - name: docs\n    role: server\n");
  ConfigNode fileset(file["filesets"][0], "test.yaml", "fileset 'docs'");
  auto refused = [&](const ConfigNode& node) {
    Status status = transport->configure(node);
    REQUIRE_FALSE(status.ok());
    return status.error().message;
  };
  std::string absent = refused(fileset.child("http", "'http' settings of fileset 'docs'"));
  INFO(absent);
  CHECK(absent.rfind("test.yaml:2:5: 'http' settings of fileset 'docs' have no 'tls'", 0) == 0);
  CHECK(absent.find("plain: true") != std::string::npos);
  CHECK(absent.find("tls: {cert: FILE, key: FILE}") != std::string::npos);
  // Settings without tls or plain, on loopback as anywhere else.
  std::string tuned =
      refused(ConfigNode(YAML::Load("\nmax_connections: 2"), "test.yaml", "'http' settings"));
  CHECK(tuned.rfind("test.yaml:2:1: 'http' settings have no 'tls'", 0) == 0);
  std::string explicit_false =
      refused(ConfigNode(YAML::Load("idle_timeout: 5\nplain: false"), "test.yaml", "'http'"));
  CHECK(explicit_false.rfind("test.yaml:2:1: ", 0) == 0);
  CHECK(transport->configure(ConfigNode(YAML::Load("plain: true"), "test.yaml", "'http'")).ok());
}

TEST_CASE_METHOD(Fixture, "concurrent calls share a pool of max_connections connections") {
  REQUIRE(transport
              ->configure(ConfigNode(YAML::Load("max_connections: 2\nplain: true"), "test.yaml",
                                     "fileset 'docs'"))
              .ok());
  int active = 0;
  int max_active = 0;
  size_t max_connections_seen = 0;
  handler.routes["/slow"] = [&](HttpRequest&, std::shared_ptr<ResponseWriter> writer) {
    max_active = std::max(max_active, ++active);
    max_connections_seen = std::max(max_connections_seen, transport->connection_count());
    loop.after(20, [&, writer] {
      --active;
      respond(writer, 200, "slow");
    });
  };
  auto client = session(8);
  std::vector<Reply> replies(8);
  for (auto& reply : replies) client->send(request("GET", "/slow"), "", reply.callbacks());
  REQUIRE(loop.run_until([&] {
    return std::all_of(replies.begin(), replies.end(), [](const Reply& r) { return r.done; });
  }));
  for (const auto& reply : replies) {
    CHECK(reply.status.ok());
    CHECK(reply.body == "slow");
  }
  CHECK(max_active == 2);
  CHECK(max_connections_seen == 2);
  std::vector<std::string> peers = handler.peers;
  std::sort(peers.begin(), peers.end());
  CHECK(std::unique(peers.begin(), peers.end()) - peers.begin() == 2);
}

TEST_CASE_METHOD(Fixture, "closing a session cancels its calls, even from a callback") {
  handler.routes["/slow"] = [&](HttpRequest&, std::shared_ptr<ResponseWriter> writer) {
    loop.after(50, [writer] { respond(writer, 200, "late"); });
  };
  auto client = session(1);
  Reply first;
  Reply queued;
  ResponseCallbacks cb = first.callbacks();
  auto record = cb.on_done;
  // The owner destroys the session from inside a callback.
  cb.on_done = [&](Status status) {
    record(std::move(status));
    client.reset();
  };
  client->send(request("GET", "/slow"), "", cb);
  client->send(request("GET", "/slow"), "", queued.callbacks());
  REQUIRE(loop.run_until([&] { return first.done && queued.done; }));
  CHECK(first.status.ok());
  CHECK(queued.status.error().code == -ECANCELED);
  CHECK_FALSE(client);
  REQUIRE(loop.run_until([&] { return transport->connection_count() == 0; }));

  auto other = session();
  Reply after_close;
  other->close();
  other->send(request("GET", "/"), "", after_close.callbacks());
  CHECK(after_close.done);
  CHECK(after_close.status.error().code == -ECANCELED);
}

TEST_CASE_METHOD(Fixture, "an idle server connection is closed after idle_timeout") {
  REQUIRE(transport
              ->configure(ConfigNode(YAML::Load("idle_timeout: 1\nplain: true"), "test.yaml",
                                     "fileset 'docs'"))
              .ok());
  uint64_t start = now_ms();
  RawClient* raw = RawClient::open(loop, port, "");
  REQUIRE(loop.run_until([&] { return raw->eof; }, 5000));
  CHECK(now_ms() - start >= 900);
  CHECK(raw->in.empty());
  raw->close();
  REQUIRE(loop.run_until([&] { return transport->connection_count() == 0; }));
}

TEST_CASE_METHOD(Fixture, "responses without a length or without a head end the connection") {
  handler.routes["/unframed"] = [](HttpRequest&, std::shared_ptr<ResponseWriter> writer) {
    writer->send_head(HttpResponseHead());
    writer->write("until ");
    writer->write("the end");
    writer->end();
  };
  handler.routes["/nohead"] = [](HttpRequest&, std::shared_ptr<ResponseWriter> writer) {
    writer->end();
  };
  auto client = session();
  Reply unframed;
  client->send(request("GET", "/unframed"), "", unframed.callbacks());
  REQUIRE(loop.run_until([&] { return unframed.done; }));
  REQUIRE(unframed.status.ok());
  CHECK_FALSE(unframed.head->keep_alive);
  CHECK(unframed.body == "until the end");

  Reply nohead;
  client->send(request("GET", "/nohead"), "", nohead.callbacks());
  REQUIRE(loop.run_until([&] { return nohead.done; }));
  REQUIRE_FALSE(nohead.status.ok());
  CHECK(nohead.status.error().code == -ECONNRESET);
  REQUIRE(loop.run_until([&] { return transport->connection_count() == 0; }));
}

TEST_CASE_METHOD(Fixture, "a peer that stops reading is dropped after idle_timeout") {
  REQUIRE(transport
              ->configure(ConfigNode(YAML::Load("idle_timeout: 1\nplain: true"), "test.yaml",
                                     "fileset 'docs'"))
              .ok());
  std::shared_ptr<Streamer> streamer;
  bool aborted = false;
  handler.routes["/big"] = [&](HttpRequest&, std::shared_ptr<ResponseWriter> writer) {
    writer->on_abort([&] { aborted = true; });
    streamer = std::make_shared<Streamer>();
    streamer->writer = std::move(writer);
    streamer->total = 1ull << 30;
    streamer->start();
  };
  RawClient* raw = RawClient::open(loop, port, "GET /big HTTP/1.1\r\n\r\n", false);
  REQUIRE(loop.run_until([&] { return aborted; }, 10000));
  CHECK(streamer->writer->closed());
  CHECK(streamer->offset < streamer->total);
  // The write in flight when the connection died still reports back.
  REQUIRE(loop.run_until([&] { return streamer->outstanding == 0; }));
  raw->close();
  REQUIRE(loop.run_until([&] { return transport->connection_count() == 0; }));
}

// ---- TLS ----

namespace {

// A throw-away PKI in a temporary directory: a CA, a server certificate
// for 127.0.0.1 signed by it, a second unrelated CA, and a certificate for
// another address.
class TestPki {
 public:
  TestPki() {
    char dir_template[] = "/tmp/intersync-tls-XXXXXX";
    REQUIRE(mkdtemp(dir_template) != nullptr);
    dir = dir_template;
    EVP_PKEY* ca_key = EVP_EC_gen("P-256");
    X509* ca = make_cert(ca_key, "intersync test CA", nullptr, ca_key, "");
    EVP_PKEY* server_key = EVP_EC_gen("P-256");
    X509* server = make_cert(server_key, "server", ca, ca_key, "IP:127.0.0.1");
    X509* elsewhere = make_cert(server_key, "elsewhere", ca, ca_key, "IP:127.0.0.2");
    EVP_PKEY* other_key = EVP_EC_gen("P-256");
    X509* other_ca = make_cert(other_key, "another CA", nullptr, other_key, "");
    write_cert(ca_file(), ca);
    write_cert(cert_file(), server);
    write_cert(elsewhere_file(), elsewhere);
    write_cert(other_ca_file(), other_ca);
    FILE* f = fopen(key_file().c_str(), "w");
    REQUIRE(f);
    PEM_write_PrivateKey(f, server_key, nullptr, nullptr, 0, nullptr, nullptr);
    fclose(f);
    std::filesystem::permissions(
        key_file(), std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    X509_digest(server, EVP_sha256(), md, &length);
    for (unsigned i = 0; i < length; ++i) {
      char hex[4];
      snprintf(hex, sizeof hex, i ? ":%02X" : "%02X", md[i]);
      fingerprint += hex;
    }
    for (X509* cert : {ca, server, elsewhere, other_ca}) X509_free(cert);
    for (EVP_PKEY* key : {ca_key, server_key, other_key}) EVP_PKEY_free(key);
  }
  ~TestPki() { std::filesystem::remove_all(dir); }

  std::string ca_file() const { return dir + "/ca.pem"; }
  std::string other_ca_file() const { return dir + "/other-ca.pem"; }
  std::string cert_file() const { return dir + "/server.pem"; }
  std::string elsewhere_file() const { return dir + "/elsewhere.pem"; }
  std::string key_file() const { return dir + "/server.key"; }

  std::string dir;
  std::string fingerprint;  // SHA-256 of server.pem, as openssl x509 -fingerprint prints it

 private:
  static X509* make_cert(EVP_PKEY* key, const std::string& cn, X509* issuer, EVP_PKEY* issuer_key,
                         const std::string& san) {
    static long serial = 1;
    X509* cert = X509_new();
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), serial++);
    X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600);
    X509_set_pubkey(cert, key);
    X509_NAME* name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
    X509_set_issuer_name(cert, issuer ? X509_get_subject_name(issuer) : name);
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer ? issuer : cert, cert, nullptr, nullptr, 0);
    auto add = [&](int nid, const std::string& value) {
      X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
      REQUIRE(ext);
      X509_add_ext(cert, ext, -1);
      X509_EXTENSION_free(ext);
    };
    add(NID_basic_constraints, issuer ? "critical,CA:FALSE" : "critical,CA:TRUE");
    add(NID_key_usage, issuer ? "critical,digitalSignature" : "critical,keyCertSign,cRLSign");
    if (!san.empty()) add(NID_subject_alt_name, san);
    REQUIRE(X509_sign(cert, issuer_key, EVP_sha256()) > 0);
    return cert;
  }

  static void write_cert(const std::string& path, X509* cert) {
    FILE* f = fopen(path.c_str(), "w");
    REQUIRE(f);
    PEM_write_X509(f, cert);
    fclose(f);
  }
};

Status configure(Transport& transport, const std::string& yaml) {
  return transport.configure(ConfigNode(YAML::Load(yaml), "test.yaml", "'http' settings of test"));
}

struct TlsFixture {
  TestPki pki;
  TestLoop loop;
  TestHandler handler;
  std::unique_ptr<Transport> server = make_transport();
  std::unique_ptr<Transport> client = make_transport();
  uint16_t port = 0;

  TlsFixture() {
    Status configured =
        configure(*server, "tls: {cert: " + pki.cert_file() + ", key: " + pki.key_file() + "}");
    INFO(configured.error().message);
    REQUIRE(configured.ok());
    auto bound = server->listen(loop.get(), "127.0.0.1", 0, &handler);
    REQUIRE(bound.ok());
    port = static_cast<uint16_t>(std::stoi(bound->substr(10)));
  }

  ~TlsFixture() {
    server->stop();
    client->stop();
  }

  std::unique_ptr<ClientSession> session(const std::string& client_yaml) {
    Status configured = configure(*client, client_yaml);
    INFO(configured.error().message);
    REQUIRE(configured.ok());
    ClientTarget target;
    target.host = "127.0.0.1";
    target.port = port;
    return client->connect(loop.get(), target);
  }

  Reply get(ClientSession& session, const std::string& path) {
    Reply reply;
    session.send(request("GET", path), "", reply.callbacks());
    REQUIRE(loop.run_until([&] { return reply.done; }));
    return reply;
  }
};

}  // namespace

TEST_CASE_METHOD(TlsFixture, "requests travel over TLS to a server the CA vouches for") {
  auto tls = session("tls: {ca: " + pki.ca_file() + "}");
  for (int i = 0; i < 3; ++i) {
    Reply reply = get(*tls, "/info/" + std::to_string(i));
    INFO(reply.status.error().message);
    REQUIRE(reply.status.ok());
    CHECK(reply.body == "echo GET /info/" + std::to_string(i) + " 0");
  }
  Reply post;
  tls->send(request("POST", "/upload"), std::string(3 << 20, 'p'), post.callbacks());
  REQUIRE(loop.run_until([&] { return post.done; }));
  CHECK(post.body == "echo POST /upload 3145728");
  // One keep-alive connection carried them all.
  REQUIRE(handler.peers.size() == 4);
  CHECK(std::all_of(handler.peers.begin(), handler.peers.end(),
                    [&](const std::string& p) { return p == handler.peers[0]; }));
}

TEST_CASE_METHOD(TlsFixture, "a TLS response streams with back-pressure and a pause") {
  constexpr uint64_t kTotal = 16ull << 20;
  std::shared_ptr<Streamer> streamer;
  handler.routes["/big"] = [&](HttpRequest&, std::shared_ptr<ResponseWriter> writer) {
    streamer = std::make_shared<Streamer>();
    streamer->writer = std::move(writer);
    streamer->total = kTotal;
    streamer->start();
  };
  auto tls = session("tls: {fingerprint: \"" + pki.fingerprint + "\"}");
  Reply reply;
  ResponseCallbacks cb = reply.callbacks();
  std::shared_ptr<ClientCall> call;
  uint64_t received = 0;
  uint64_t mismatches = 0;
  uint64_t while_paused = 0;
  bool paused = false;
  bool paused_once = false;
  cb.on_body = [&](std::string_view piece) {
    for (size_t i = 0; i < piece.size(); ++i) {
      if (piece[i] != pattern_byte(received + i)) ++mismatches;
    }
    received += piece.size();
    if (paused) while_paused += piece.size();
    if (!paused_once && received >= (2 << 20)) {
      paused_once = paused = true;
      call->pause();
      loop.after(200, [&] {
        paused = false;
        call->resume();
      });
    }
  };
  call = tls->send(request("GET", "/big"), "", cb);
  REQUIRE(loop.run_until([&] { return reply.done; }, 60000));
  INFO(reply.status.error().message);
  REQUIRE(reply.status.ok());
  CHECK(received == kTotal);
  CHECK(mismatches == 0);
  CHECK(paused_once);
  // At most what one read of the socket had already decrypted.
  CHECK(while_paused < 128 * 1024);
  CHECK(streamer->max_outstanding <= 2);
}

TEST_CASE_METHOD(TlsFixture, "a server the client cannot trust is refused with the reason") {
  SECTION("another CA") {
    auto tls = session("tls: {ca: " + pki.other_ca_file() + "}");
    Reply reply = get(*tls, "/");
    REQUIRE_FALSE(reply.status.ok());
    CHECK_FALSE(reply.head);
    const std::string& message = reply.status.error().message;
    INFO(message);
    CHECK(message.find("127.0.0.1:" + std::to_string(port)) != std::string::npos);
    CHECK(message.find("certificate verify failed") != std::string::npos);
  }
  SECTION("a pinned fingerprint that is not the server's") {
    std::string wrong = pki.fingerprint;
    wrong[0] = wrong[0] == 'A' ? 'B' : 'A';
    auto tls = session("tls: {fingerprint: \"" + wrong + "\"}");
    Reply reply = get(*tls, "/");
    REQUIRE_FALSE(reply.status.ok());
    const std::string& message = reply.status.error().message;
    INFO(message);
    CHECK(message.find("not the pinned one") != std::string::npos);
  }
  CHECK(handler.handled == 0);
  // The server goes on serving clients that trust it.
  auto good = session("tls: {ca: " + pki.ca_file() + "}");
  Reply reply = get(*good, "/after");
  INFO(reply.status.error().message);
  CHECK(reply.body == "echo GET /after 0");
  REQUIRE(loop.run_until([&] { return server->connection_count() == 1; }));
}

TEST_CASE("a certificate for another address is refused") {
  TestPki pki;
  TestLoop loop;
  TestHandler handler;
  auto server = make_transport();
  REQUIRE(
      configure(*server, "tls: {cert: " + pki.elsewhere_file() + ", key: " + pki.key_file() + "}")
          .ok());
  auto bound = server->listen(loop.get(), "127.0.0.1", 0, &handler);
  REQUIRE(bound.ok());
  auto client = make_transport();
  REQUIRE(configure(*client, "tls: {ca: " + pki.ca_file() + "}").ok());
  ClientTarget target;
  target.host = "127.0.0.1";
  target.port = static_cast<uint16_t>(std::stoi(bound->substr(10)));
  auto session = client->connect(loop.get(), target);
  Reply reply;
  session->send(request("GET", "/"), "", reply.callbacks());
  REQUIRE(loop.run_until([&] { return reply.done; }));
  REQUIRE_FALSE(reply.status.ok());
  INFO(reply.status.error().message);
  CHECK(reply.status.error().message.find("IP address mismatch") != std::string::npos);
  server->stop();
}

TEST_CASE_METHOD(TlsFixture, "plain HTTP and garbage on the TLS port fail cleanly") {
  // A plain client is answered in plain HTTP: it can tell what went wrong.
  auto plain = session("plain: true");
  Reply reply = get(*plain, "/");
  REQUIRE(reply.status.ok());
  REQUIRE(reply.head);
  CHECK(reply.head->status == 400);
  CHECK_FALSE(reply.head->keep_alive);
  CHECK(reply.body.find("speaks TLS") != std::string::npos);

  RawClient* raw = RawClient::open(loop, port, "GARBAGE, NOT TLS\r\n\r\n");
  REQUIRE(loop.run_until([&] { return raw->eof; }));
  raw->close();
  REQUIRE(loop.run_until([&] { return server->connection_count() == 0; }));
  CHECK(handler.handled == 0);

  auto tls = session("tls: {ca: " + pki.ca_file() + "}");
  Reply after = get(*tls, "/after");
  INFO(after.status.error().message);
  CHECK(after.body == "echo GET /after 0");
}

TEST_CASE_METHOD(Fixture, "a TLS client against a plain server fails with the reason") {
  TestPki pki;
  auto client = make_transport();
  REQUIRE(configure(*client, "tls: {ca: " + pki.ca_file() + "}").ok());
  ClientTarget target;
  target.host = "127.0.0.1";
  target.port = port;
  target.connect_timeout_ms = 5000;
  auto tls = client->connect(loop.get(), target);
  Reply reply;
  tls->send(request("GET", "/"), "", reply.callbacks());
  REQUIRE(loop.run_until([&] { return reply.done; }));
  REQUIRE_FALSE(reply.status.ok());
  INFO(reply.status.error().message);
  CHECK(reply.status.error().message.find("TLS handshake failed") != std::string::npos);
  REQUIRE(loop.run_until([&] { return transport->connection_count() == 0; }));
}

TEST_CASE("tls settings are checked when the configuration is loaded") {
  TestPki pki;
  auto transport = make_transport();
  auto error_of = [&](const std::string& yaml) {
    Status status = configure(*transport, yaml);
    REQUIRE_FALSE(status.ok());
    return status.error().message;
  };
  std::string missing =
      error_of("tls: {cert: " + pki.dir + "/nope.pem, key: " + pki.key_file() + "}");
  INFO(missing);
  CHECK(missing.find("test.yaml:1:") == 0);
  CHECK(missing.find(pki.dir + "/nope.pem") != std::string::npos);
  CHECK(missing.find("No such file") != std::string::npos);
  std::string not_pem =
      error_of("tls: {cert: " + pki.key_file() + ", key: " + pki.key_file() + "}");
  CHECK(not_pem.find(pki.key_file()) != std::string::npos);
  CHECK(not_pem.find("no start line") != std::string::npos);
  std::string bad_ca = error_of("tls: {ca: " + pki.key_file() + "}");
  CHECK(bad_ca.find(pki.key_file()) != std::string::npos);
  CHECK(error_of("tls: {cert: " + pki.cert_file() + "}").find("needs both") != std::string::npos);
  CHECK(error_of("tls: {ca: " + pki.ca_file() + ", fingerprint: \"" + pki.fingerprint + "\"}")
            .find("give one of them") != std::string::npos);
  CHECK(error_of("tls: {fingerprint: abc}").find("64 hex digits") != std::string::npos);
  CHECK(error_of("tls: {cerf: x}").find("unknown key 'cerf'") != std::string::npos);
  CHECK(error_of("plain: true\ntls: {ca: " + pki.ca_file() + "}").find("contradicts") !=
        std::string::npos);
  CHECK(error_of("plain: false").find("have no 'tls'") != std::string::npos);
  CHECK(error_of("tls: yes").find("must be a mapping") != std::string::npos);

  CHECK(configure(*transport, "plain: true").ok());
  CHECK(configure(*transport, "tls: {fingerprint: \"" + pki.fingerprint + "\"}").ok());
  // A relative file is relative to the configuration file.
  CHECK(transport
            ->configure(ConfigNode(YAML::Load("tls: {cert: server.pem, key: server.key}"),
                                   pki.dir + "/intersync.yaml", "'http' settings of test"))
            .ok());
  // A client's settings cannot serve.
  REQUIRE(configure(*transport, "tls: {ca: " + pki.ca_file() + "}").ok());
  TestLoop loop;
  TestHandler handler;
  auto bound = transport->listen(loop.get(), "127.0.0.1", 0, &handler);
  REQUIRE_FALSE(bound.ok());
  CHECK(bound.error().message.find("'cert' and 'key'") != std::string::npos);
}
