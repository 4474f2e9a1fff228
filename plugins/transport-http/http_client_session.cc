// The HTTP client: a pool of keep-alive connections to one server, each
// running one call at a time. Ownership keeps every callback safe whatever
// the caller does from inside it (cancel, close, destroy the session): the
// pool is shared by the session and by code running on its behalf, a
// connection is owned by the pool and reaches it through a weak pointer,
// uv handles are freed in their close callbacks, and uv requests find their
// connection through a weak pointer.
#include "http_client_session.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "intersync/log.h"
#include "uv_handle.h"

namespace intersync::http {

class HttpClientConnection;

// One request and the caller's callbacks. The connection delivers the
// response through deliver_*() and finish(); finish() runs on_done once and
// then drops the callbacks, which breaks the cycle a caller creates when its
// callbacks hold the call itself.
class HttpClientCall final : public ClientCall,
                             public std::enable_shared_from_this<HttpClientCall> {
 public:
  HttpClientCall(HttpRequestHead head, std::string body, ResponseCallbacks callbacks)
      : head(std::move(head)), body(std::move(body)), callbacks_(std::move(callbacks)) {}

  void pause() override;
  void resume() override;
  void cancel() override;

  bool paused() const { return paused_; }

  // False when the caller's callback threw.
  bool deliver_head(HttpResponseHead& response) {
    return deliver([&] {
      if (callbacks_.on_head) callbacks_.on_head(response);
    });
  }
  bool deliver_body(std::string_view piece) {
    return deliver([&] {
      if (callbacks_.on_body) callbacks_.on_body(piece);
    });
  }

  void finish(Status status) {
    if (std::exchange(done_, true)) return;
    pool.reset();
    conn = nullptr;
    auto on_done = std::move(callbacks_.on_done);
    callbacks_.on_done = nullptr;
    // A std::function must not be destroyed while it runs: when finish()
    // comes from inside on_head or on_body, deliver() drops them afterwards.
    if (delivering_ == 0) callbacks_ = ResponseCallbacks();
    if (on_done) call_guarded("on_done", [&] { on_done(std::move(status)); });
  }

  HttpRequestHead head;
  std::string body;
  std::weak_ptr<ClientPool> pool;        // set while queued
  HttpClientConnection* conn = nullptr;  // set while running on a connection

 private:
  template <typename F>
  bool deliver(F&& f) {
    if (done_) return true;
    auto self = shared_from_this();
    ++delivering_;
    bool ok = call_guarded("a response callback", f);
    if (--delivering_ == 0 && done_) callbacks_ = ResponseCallbacks();
    return ok;
  }

  ResponseCallbacks callbacks_;
  bool done_ = false;
  bool paused_ = false;
  int delivering_ = 0;
};

// The pool behind an HttpClientSession.
class ClientPool : public std::enable_shared_from_this<ClientPool> {
 public:
  ClientPool(uv_loop_t* loop, ClientTarget target)
      : loop_(loop),
        target_(std::move(target)),
        endpoint_(format_endpoint(strip_brackets(target_.host), target_.port)) {}

  std::shared_ptr<ClientCall> send(HttpRequestHead head, std::string body,
                                   ResponseCallbacks callbacks);
  void close();
  // Starts queued calls on idle connections or on new ones.
  void dispatch();
  void connection_closed(HttpClientConnection* conn);
  void remove_queued(HttpClientCall* call);

 private:
  uv_loop_t* loop_;
  ClientTarget target_;
  std::string endpoint_;
  std::vector<std::shared_ptr<HttpClientConnection>> connections_;
  std::deque<std::shared_ptr<HttpClientCall>> queue_;
  bool closed_ = false;
  bool dispatching_ = false;
};

// One TCP connection of the pool: resolve, connect, then one call after
// another while both sides keep the connection alive.
class HttpClientConnection : public std::enable_shared_from_this<HttpClientConnection> {
 public:
  HttpClientConnection(uv_loop_t* loop, std::weak_ptr<ClientPool> pool, const ClientTarget& target);
  HttpClientConnection(const HttpClientConnection&) = delete;
  HttpClientConnection& operator=(const HttpClientConnection&) = delete;

  // Resolves and connects, then runs `call`.
  void open(std::shared_ptr<HttpClientCall> call);
  // Runs `call` on this idle connection.
  void run(std::shared_ptr<HttpClientCall> call);
  // Ends the current call, if any, with `why` and closes. Idempotent.
  void close(Status why);
  // Forgets the pool, which is closing.
  void detach() { pool_.reset(); }
  bool idle() const { return state_ == State::Idle; }
  // Reads unless the current call is paused.
  void update_reading();

 private:
  enum class State { Resolving, Connecting, Busy, Idle, Closed };

  struct ResolveReq {
    uv_getaddrinfo_t req;
    std::weak_ptr<HttpClientConnection> conn;
  };
  struct ConnectReq {
    uv_connect_t req;
    std::weak_ptr<HttpClientConnection> conn;
  };
  struct WriteReq {
    uv_write_t req;
    std::string head;
    std::string body;
    std::weak_ptr<HttpClientConnection> conn;
  };

  static void on_resolved(uv_getaddrinfo_t* req, int status, addrinfo* res);
  static void on_connected(uv_connect_t* req, int status);
  static void on_written(uv_write_t* req, int status);
  static void on_alloc(uv_handle_t* handle, size_t suggested, uv_buf_t* buf);
  static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  static void on_timer(uv_timer_t* timer);

  void connect_next();
  void start_call();
  void received(const char* data, size_t size);
  void read_failed(int status);
  void complete(bool extra_bytes);
  void arm_timer(uint64_t ms);
  Error error(int code, std::string_view what) const;

  uv_loop_t* loop_;
  std::weak_ptr<ClientPool> pool_;
  ClientTarget target_;
  std::string endpoint_;  // "host:port", in every error message
  UvHandle<uv_tcp_t> tcp_;
  UvHandle<uv_timer_t> timer_;
  uv_getaddrinfo_t* resolve_req_ = nullptr;
  std::vector<sockaddr_storage> addresses_;
  size_t next_address_ = 0;
  int last_error_ = UV_EADDRNOTAVAIL;
  HttpParser parser_;
  std::unique_ptr<char[]> read_buffer_;

  State state_ = State::Resolving;
  std::shared_ptr<HttpClientCall> call_;
  bool reading_ = false;
  bool writing_ = false;
  bool request_keep_alive_ = true;
  bool response_keep_alive_ = false;
  bool response_started_ = false;
  bool response_done_ = false;
  bool informational_ = false;
};

namespace {
constexpr size_t kReadBufferSize = 64 * 1024;
}  // namespace

// ---- HttpClientCall ----

void HttpClientCall::pause() {
  paused_ = true;
  if (conn) conn->update_reading();
}

void HttpClientCall::resume() {
  paused_ = false;
  if (conn) conn->update_reading();
}

void HttpClientCall::cancel() {
  if (done_) return;
  auto self = shared_from_this();
  Error canceled{-ECANCELED, "http: request canceled"};
  // The connection's state is unknown once a response was cut off, so it
  // closes; that ends this call.
  if (conn) {
    conn->close(std::move(canceled));
    return;
  }
  if (auto queued_in = pool.lock()) queued_in->remove_queued(this);
  finish(std::move(canceled));
}

// ---- ClientPool ----

std::shared_ptr<ClientCall> ClientPool::send(HttpRequestHead head, std::string body,
                                             ResponseCallbacks callbacks) {
  auto call =
      std::make_shared<HttpClientCall>(std::move(head), std::move(body), std::move(callbacks));
  if (closed_) {
    call->finish(Error{-ECANCELED, fmt::format("http: the session to {} is closed", endpoint_)});
    return call;
  }
  call->pool = weak_from_this();
  queue_.push_back(call);
  dispatch();
  return call;
}

void ClientPool::close() {
  if (std::exchange(closed_, true)) return;
  auto self = shared_from_this();
  auto queued = std::move(queue_);
  auto connections = std::move(connections_);
  queue_.clear();
  connections_.clear();
  Error closed{-ECANCELED, fmt::format("http: the session to {} was closed", endpoint_)};
  for (auto& conn : connections) conn->detach();
  for (auto& call : queued) call->finish(closed);
  for (auto& conn : connections) conn->close(closed);
}

void ClientPool::dispatch() {
  // A dispatch started from inside one (a call that failed at once and
  // whose on_done sent another) is left to the outer loop.
  if (closed_ || std::exchange(dispatching_, true)) return;
  auto self = shared_from_this();
  size_t limit = std::max(1u, target_.max_connections);
  while (!closed_ && !queue_.empty()) {
    auto idle = std::find_if(connections_.begin(), connections_.end(),
                             [](const auto& conn) { return conn->idle(); });
    std::shared_ptr<HttpClientConnection> conn;
    if (idle != connections_.end()) {
      conn = *idle;
    } else if (connections_.size() >= limit) {
      break;
    }
    auto call = std::move(queue_.front());
    queue_.pop_front();
    call->pool.reset();
    if (conn) {
      conn->run(std::move(call));
    } else {
      conn = std::make_shared<HttpClientConnection>(loop_, weak_from_this(), target_);
      connections_.push_back(conn);
      conn->open(std::move(call));
    }
  }
  dispatching_ = false;
}

void ClientPool::connection_closed(HttpClientConnection* conn) {
  std::erase_if(connections_, [conn](const auto& c) { return c.get() == conn; });
}

void ClientPool::remove_queued(HttpClientCall* call) {
  std::erase_if(queue_, [call](const auto& c) { return c.get() == call; });
}

// ---- HttpClientConnection ----

HttpClientConnection::HttpClientConnection(uv_loop_t* loop, std::weak_ptr<ClientPool> pool,
                                           const ClientTarget& target)
    : loop_(loop),
      pool_(std::move(pool)),
      target_(target),
      endpoint_(format_endpoint(strip_brackets(target.host), target.port)),
      parser_(HttpParser::Kind::Response,
              HttpParser::Callbacks{
                  .on_response_head =
                      [this](HttpResponseHead& head) {
                        // An interim response (100 Continue, 103 Early
                        // Hints) precedes the real one.
                        if (head.status / 100 == 1) {
                          informational_ = true;
                          return;
                        }
                        response_started_ = true;
                        response_keep_alive_ = head.keep_alive;
                        if (auto call = call_; call && !call->deliver_head(head)) {
                          close(Error{-EIO, "http: the response callback failed"});
                        }
                        if (state_ != State::Busy) parser_.pause();
                      },
                  .on_body =
                      [this](std::string_view piece) {
                        if (auto call = call_; call && !call->deliver_body(piece)) {
                          close(Error{-EIO, "http: the response callback failed"});
                        }
                        if (state_ != State::Busy) parser_.pause();
                      },
                  .on_message_complete =
                      [this] {
                        if (std::exchange(informational_, false)) return;
                        response_done_ = true;
                        parser_.pause();
                      },
              }) {}

Error HttpClientConnection::error(int code, std::string_view what) const {
  return Error{code, fmt::format("http: {} {}: {}", what, endpoint_, uv_strerror(code))};
}

void HttpClientConnection::open(std::shared_ptr<HttpClientCall> call) {
  call_ = std::move(call);
  call_->conn = this;
  state_ = State::Resolving;
  int rc = timer_.init(loop_, this, uv_timer_init);
  if (rc < 0) {
    close(error(rc, "cannot connect to"));
    return;
  }
  arm_timer(target_.connect_timeout_ms);
  auto req = std::make_unique<ResolveReq>();
  req->conn = weak_from_this();
  req->req.data = req.get();
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  std::string port = std::to_string(target_.port);
  rc = uv_getaddrinfo(loop_, &req->req, on_resolved, strip_brackets(target_.host).c_str(),
                      port.c_str(), &hints);
  if (rc < 0) {
    close(error(rc, "cannot resolve"));
    return;
  }
  resolve_req_ = &req->req;
  req.release();
}

void HttpClientConnection::on_resolved(uv_getaddrinfo_t* raw, int status, addrinfo* res) {
  std::unique_ptr<ResolveReq> req(static_cast<ResolveReq*>(raw->data));
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> list(res, uv_freeaddrinfo);
  auto conn = req->conn.lock();
  if (!conn || conn->state_ != State::Resolving) return;
  conn->resolve_req_ = nullptr;
  if (status < 0) {
    conn->close(conn->error(status, "cannot resolve"));
    return;
  }
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    if (ai->ai_addrlen > sizeof(sockaddr_storage)) continue;
    sockaddr_storage addr{};
    std::memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
    conn->addresses_.push_back(addr);
  }
  conn->connect_next();
}

// Tries the resolved addresses in order ("localhost" may give ::1 first
// while the server listens on 127.0.0.1 only).
void HttpClientConnection::connect_next() {
  while (next_address_ < addresses_.size()) {
    const sockaddr_storage& addr = addresses_[next_address_++];
    int rc = tcp_.init(loop_, this, uv_tcp_init);
    if (rc == 0) {
      auto req = std::make_unique<ConnectReq>();
      req->conn = weak_from_this();
      req->req.data = req.get();
      rc = uv_tcp_connect(&req->req, tcp_.get(), reinterpret_cast<const sockaddr*>(&addr),
                          on_connected);
      if (rc == 0) {
        req.release();
        state_ = State::Connecting;
        return;
      }
    }
    last_error_ = rc;
  }
  close(error(last_error_, "cannot connect to"));
}

void HttpClientConnection::on_connected(uv_connect_t* raw, int status) {
  std::unique_ptr<ConnectReq> req(static_cast<ConnectReq*>(raw->data));
  auto conn = req->conn.lock();
  // A request of an attempt given up on (its handle closed) ends here.
  if (!conn || conn->state_ != State::Connecting || raw->handle != conn->tcp_.stream()) return;
  if (status < 0) {
    conn->last_error_ = status;
    conn->connect_next();
    return;
  }
  uv_tcp_nodelay(conn->tcp_.get(), 1);
  conn->read_buffer_ = std::make_unique<char[]>(kReadBufferSize);
  conn->start_call();
}

void HttpClientConnection::run(std::shared_ptr<HttpClientCall> call) {
  call_ = std::move(call);
  call_->conn = this;
  start_call();
}

void HttpClientConnection::start_call() {
  state_ = State::Busy;
  response_started_ = false;
  response_done_ = false;
  response_keep_alive_ = false;
  informational_ = false;

  HttpRequestHead& head = call_->head;
  if (!head.headers.get("Host")) head.headers.add("Host", endpoint_);
  bool bodiless = head.method == "GET" || head.method == "HEAD";
  if (!call_->body.empty() || !bodiless) {
    head.headers.set("Content-Length", std::to_string(call_->body.size()));
  }
  request_keep_alive_ = head.keep_alive;
  if (head.method == "HEAD") parser_.expect_head_response();

  auto req = std::make_unique<WriteReq>();
  req->head = http_serialize(head);
  req->body = std::move(call_->body);
  req->conn = weak_from_this();
  req->req.data = req.get();
  uv_buf_t bufs[2] = {
      uv_buf_init(req->head.data(), static_cast<unsigned>(req->head.size())),
      uv_buf_init(req->body.data(), static_cast<unsigned>(req->body.size())),
  };
  int rc = uv_write(&req->req, tcp_.stream(), bufs, req->body.empty() ? 1 : 2, on_written);
  if (rc < 0) {
    close(error(rc, "cannot send a request to"));
    return;
  }
  req.release();
  writing_ = true;
  update_reading();
}

void HttpClientConnection::on_written(uv_write_t* raw, int status) {
  std::unique_ptr<WriteReq> req(static_cast<WriteReq*>(raw->data));
  auto conn = req->conn.lock();
  if (!conn || conn->state_ == State::Closed) return;
  conn->writing_ = false;
  // A server may answer before it has read the whole request (a refusal)
  // and close: then the response decides how the call ends.
  if (status < 0 && conn->state_ == State::Busy && !conn->response_started_) {
    conn->close(conn->error(status, "cannot send a request to"));
  }
}

void HttpClientConnection::update_reading() {
  if (state_ != State::Busy && state_ != State::Idle) return;
  bool paused = state_ == State::Busy && call_ && call_->paused();
  if (!paused && !reading_) {
    int rc = uv_read_start(tcp_.stream(), on_alloc, on_read);
    if (rc < 0) {
      close(error(rc, "cannot read from"));
      return;
    }
    reading_ = true;
  } else if (paused && reading_) {
    uv_read_stop(tcp_.stream());
    reading_ = false;
  }
  // The idle timeout measures the server's silence, not the caller's pause;
  // an idle pooled connection waits without one.
  if (state_ == State::Busy && !paused) {
    arm_timer(target_.idle_timeout_ms);
  } else {
    uv_timer_stop(timer_.get());
  }
}

void HttpClientConnection::on_alloc(uv_handle_t* handle, size_t, uv_buf_t* buf) {
  auto* conn = static_cast<HttpClientConnection*>(handle->data);
  *buf = uv_buf_init(conn->read_buffer_.get(), kReadBufferSize);
}

void HttpClientConnection::on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* conn = static_cast<HttpClientConnection*>(stream->data);
  if (!conn) return;
  auto self = conn->shared_from_this();
  if (nread > 0) {
    conn->received(buf->base, static_cast<size_t>(nread));
  } else if (nread < 0) {
    conn->read_failed(static_cast<int>(nread));
  }
}

void HttpClientConnection::received(const char* data, size_t size) {
  if (state_ == State::Idle) {
    log_warn("http: {} sent data on an idle connection; closing it", endpoint_);
    close(Status::Ok());
    return;
  }
  if (state_ != State::Busy) return;
  if (!call_->paused()) arm_timer(target_.idle_timeout_ms);
  size_t used = 0;
  bool ok = parser_.feed(data, size, &used);
  if (state_ != State::Busy) return;  // a callback canceled the call or closed the session
  if (!ok) {
    close(Error{-EPROTO,
                fmt::format("http: bad response from {}: {}", endpoint_, parser_.error()->reason)});
    return;
  }
  if (response_done_) complete(used < size);
}

void HttpClientConnection::read_failed(int status) {
  // A server closes an idle keep-alive connection whenever it likes.
  if (state_ == State::Idle) {
    close(Status::Ok());
    return;
  }
  if (state_ != State::Busy) return;
  if (status == UV_EOF) {
    // A body without a length ends with the connection.
    if (response_started_ && parser_.finish() && response_done_) {
      complete(false);
      return;
    }
    close(Error{
        -ECONNRESET,
        fmt::format("http: {} closed the connection before the response was complete", endpoint_)});
    return;
  }
  close(error(status, "lost the connection to"));
}

void HttpClientConnection::complete(bool extra_bytes) {
  if (extra_bytes) log_warn("http: {} sent more than one response; closing", endpoint_);
  auto call = std::move(call_);
  bool reusable = request_keep_alive_ && response_keep_alive_ && !writing_ && !extra_bytes;
  if (reusable) {
    state_ = State::Idle;
    parser_.resume();
    update_reading();
  } else {
    close(Status::Ok());
  }
  // The caller may send its next request from on_done; it then finds this
  // connection idle.
  call->finish(Status::Ok());
  if (state_ == State::Idle) {
    if (auto pool = pool_.lock()) pool->dispatch();
  }
}

void HttpClientConnection::arm_timer(uint64_t ms) {
  if (timer_) uv_timer_start(timer_.get(), on_timer, ms, 0);
}

void HttpClientConnection::on_timer(uv_timer_t* timer) {
  auto* conn = static_cast<HttpClientConnection*>(timer->data);
  if (!conn) return;
  auto self = conn->shared_from_this();
  switch (conn->state_) {
    case State::Resolving:
    case State::Connecting:
      conn->close(
          Error{-ETIMEDOUT, fmt::format("http: connecting to {} timed out after {} ms",
                                        conn->endpoint_, conn->target_.connect_timeout_ms)});
      break;
    case State::Busy:
      conn->close(Error{-ETIMEDOUT, fmt::format("http: no response from {} for {} ms",
                                                conn->endpoint_, conn->target_.idle_timeout_ms)});
      break;
    case State::Idle:
    case State::Closed:
      break;
  }
}

void HttpClientConnection::close(Status why) {
  if (state_ == State::Closed) return;
  auto self = shared_from_this();
  state_ = State::Closed;
  if (resolve_req_) {
    uv_cancel(reinterpret_cast<uv_req_t*>(resolve_req_));
    resolve_req_ = nullptr;
  }
  tcp_.close();
  timer_.close();
  auto pool = pool_.lock();
  pool_.reset();
  if (pool) pool->connection_closed(this);
  if (auto call = std::move(call_)) call->finish(std::move(why));
  if (pool) pool->dispatch();
}

// ---- HttpClientSession ----

HttpClientSession::HttpClientSession(uv_loop_t* loop, ClientTarget target)
    : pool_(std::make_shared<ClientPool>(loop, std::move(target))) {}

HttpClientSession::~HttpClientSession() {
  close();
}

std::shared_ptr<ClientCall> HttpClientSession::send(HttpRequestHead head, std::string body,
                                                    ResponseCallbacks callbacks) {
  return pool_->send(std::move(head), std::move(body), std::move(callbacks));
}

void HttpClientSession::close() {
  pool_->close();
}

}  // namespace intersync::http
