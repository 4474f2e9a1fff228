// The transport interface: what a plugin that carries protocol messages
// between client and server (HTTP over TCP, HTTP over an ssh channel)
// implements, and what core offers it. A transport frames HTTP/1.1 messages
// with core's codec (http_codec.h) and moves bytes; what a request means is
// decided by core's RequestHandler, and what to ask is decided by core's
// sync engine. Everything runs on the loop thread.
#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <string>

#include "intersync/config_node.h"
#include "intersync/http_codec.h"
#include "intersync/result.h"

namespace intersync {

// ---- server side ----

// One response in progress, implemented by the transport. Bodies stream:
// write() queues bytes and calls `on_flushed` once they are handed to the
// kernel (or dropped because the peer went away), which is how a sender of a
// large file keeps memory bounded.
class ResponseWriter {
 public:
  virtual ~ResponseWriter() = default;
  virtual void send_head(HttpResponseHead head) = 0;  // once, before write/end
  virtual void write(std::string data, std::function<void()> on_flushed = {}) = 0;
  virtual void end() = 0;  // the message is complete; the connection may serve the next one
  // The body cannot be completed (the file shrank, a read failed): closes
  // the connection so the peer sees a cut message, never a short one.
  virtual void abort() = 0;
  virtual bool closed() const = 0;  // peer gone: writes are dropped
  // Runs once if the peer goes away before end() (a long-poll stops waiting).
  virtual void on_abort(std::function<void()> callback) = 0;
  virtual std::string peer() const = 0;  // "127.0.0.1:51234", for logs
};

struct HttpRequest {
  HttpRequestHead head;
  std::string body;  // whole body, at most HttpLimits::max_body
  std::string peer;
};

// Implemented by core.
class RequestHandler {
 public:
  virtual ~RequestHandler() = default;
  // Called when a request head is complete, before any body byte is read.
  // Returning a response (401, 404, 413 ...) makes the transport answer it
  // and close the connection without reading the body.
  virtual std::optional<HttpResponseHead> check_head(const HttpRequestHead& head,
                                                     const std::string& peer) = 0;
  // A complete request. The handler answers through `writer`, now or later.
  virtual void handle(HttpRequest&& request, std::shared_ptr<ResponseWriter> writer) = 0;
};

// ---- client side ----

struct ResponseCallbacks {
  std::function<void(HttpResponseHead&)> on_head;
  std::function<void(std::string_view)> on_body;
  // Exactly once: ok after the whole response arrived, or the error that
  // ended it (connect failure, reset, timeout, parse error, cancel).
  std::function<void(Status)> on_done;
};

// A request in flight. pause()/resume() stop and restart reading its
// response (backpressure while a consumer writes to disk).
class ClientCall {
 public:
  virtual ~ClientCall() = default;
  virtual void pause() = 0;
  virtual void resume() = 0;
  virtual void cancel() = 0;  // on_done(-ECANCELED) unless already done
};

struct ClientTarget {
  std::string host;
  uint16_t port = 370;
  std::string user;  // ssh: [user@]host
  unsigned max_connections = 4;
  unsigned connect_timeout_ms = 5000;
  // No response byte for this long ends a call with -ETIMEDOUT (long-polls
  // set their own wait well below it).
  unsigned idle_timeout_ms = 120000;
  // The fileset the session is for: ssh starts the remote side with it.
  // Last, so that a plugin built before it was added still reads the rest.
  std::string fileset;
  // The longest the caller's calls wait for the server's answer by design
  // (a long-poll); 0 when none does. A transport whose configured idle
  // timeout is not above it refuses the session's calls, saying where that
  // timeout is set. After `fileset`, for the same reason.
  unsigned long_poll_ms = 0;
};

// A client's sessions with one server: a small pool of keep-alive
// connections. send() uses an idle connection, opens one while fewer than
// max_connections are open, and queues otherwise.
class ClientSession {
 public:
  virtual ~ClientSession() = default;
  virtual std::shared_ptr<ClientCall> send(HttpRequestHead head, std::string body,
                                           ResponseCallbacks callbacks) = 0;
  // Aborts every call (on_done with -ECANCELED) and closes connections.
  virtual void close() = 0;
};

class Transport {
 public:
  virtual ~Transport() = default;
  // Parses and validates the plugin's own YAML subtree (the fileset key named
  // like the plugin, e.g. `http:`); `node.defined()` may be false.
  virtual Status configure(const ConfigNode& node) = 0;
  // Server: listens on "host:port" (port 0 = any) and returns the address
  // actually bound.
  virtual Result<std::string> listen(uv_loop_t* loop, const std::string& host, uint16_t port,
                                     RequestHandler* handler) = 0;
  // Client: a session to the server. Connections open lazily on send().
  virtual std::unique_ptr<ClientSession> connect(uv_loop_t* loop, const ClientTarget& target) = 0;
  // Stops listening and closes all server connections. Idempotent; the
  // object may be deleted right after it returns.
  virtual void stop() = 0;
  virtual size_t connection_count() const = 0;
};

}  // namespace intersync
