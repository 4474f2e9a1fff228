// The HTTP client: a pool of keep-alive connections to one server, each
// running one call at a time. Ownership keeps every callback safe whatever
// the caller does from inside it (cancel, close, destroy the session): the
// pool is shared by the session and by code running on its behalf, a
// connection is owned by the pool and reaches it through a weak pointer,
// its timer is freed in its close callback, and its stream and connect
// attempt reach it through a weak pointer.
#include "intersync/http_client.h"

#include <fmt/format.h>

#include <algorithm>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "intersync/log.h"
#include "intersync/net_address.h"
#include "intersync/uv_handle.h"

namespace intersync {

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
  ClientPool(uv_loop_t* loop, ClientTarget target, std::shared_ptr<StreamConnector> connector)
      : loop_(loop), target_(std::move(target)), connector_(std::move(connector)) {}

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
  std::shared_ptr<StreamConnector> connector_;
  std::vector<std::shared_ptr<HttpClientConnection>> connections_;
  std::deque<std::shared_ptr<HttpClientCall>> queue_;
  bool closed_ = false;
  bool dispatching_ = false;
};

// One connection of the pool: its stream is opened by the connector, then
// it runs one call after another while both sides keep it alive.
class HttpClientConnection : public std::enable_shared_from_this<HttpClientConnection> {
 public:
  HttpClientConnection(uv_loop_t* loop, std::weak_ptr<ClientPool> pool, const ClientTarget& target,
                       std::shared_ptr<StreamConnector> connector);
  HttpClientConnection(const HttpClientConnection&) = delete;
  HttpClientConnection& operator=(const HttpClientConnection&) = delete;

  // Opens a stream, then runs `call`.
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
  enum class State { Connecting, Busy, Idle, Closed };

  static void on_timer(uv_timer_t* timer);

  void connected(Result<std::shared_ptr<ByteStream>> stream);
  void start_call();
  void written(int status);
  void received(std::string_view data);
  void ended(Status status);
  void complete(bool extra_bytes);
  void arm_timer(uint64_t ms);
  Error error(int code, std::string_view what) const;

  uv_loop_t* loop_;
  std::weak_ptr<ClientPool> pool_;
  ClientTarget target_;
  std::shared_ptr<StreamConnector> connector_;
  std::string label_;     // "http", in every error message
  std::string endpoint_;  // "host:port", in every error message
  std::string host_;      // the Host header
  UvHandle<uv_timer_t> timer_;
  std::unique_ptr<ConnectAttempt> attempt_;
  std::shared_ptr<ByteStream> stream_;
  HttpParser parser_;

  State state_ = State::Connecting;
  std::shared_ptr<HttpClientCall> call_;
  bool read_started_ = false;
  bool reading_ = false;
  bool writing_ = false;
  bool request_keep_alive_ = true;
  bool response_keep_alive_ = false;
  bool response_started_ = false;
  bool response_done_ = false;
  bool informational_ = false;
};

namespace {
// A request body up to this size travels in the same write as its head.
constexpr size_t kInlineBody = 64 * 1024;
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
    call->finish(Error{-ECANCELED, fmt::format("{}: the session to {} is closed",
                                               connector_->label(), connector_->endpoint())});
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
  Error closed{-ECANCELED, fmt::format("{}: the session to {} was closed", connector_->label(),
                                       connector_->endpoint())};
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
      conn = std::make_shared<HttpClientConnection>(loop_, weak_from_this(), target_, connector_);
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
                                           const ClientTarget& target,
                                           std::shared_ptr<StreamConnector> connector)
    : loop_(loop),
      pool_(std::move(pool)),
      target_(target),
      connector_(std::move(connector)),
      label_(connector_->label()),
      endpoint_(connector_->endpoint()),
      host_(format_endpoint(strip_brackets(target.host), target.port)),
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
                          close(Error{-EIO, label_ + ": the response callback failed"});
                        }
                        if (state_ != State::Busy) parser_.pause();
                      },
                  .on_body =
                      [this](std::string_view piece) {
                        if (auto call = call_; call && !call->deliver_body(piece)) {
                          close(Error{-EIO, label_ + ": the response callback failed"});
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
  return Error{code, fmt::format("{}: {} {}: {}", label_, what, endpoint_, uv_strerror(code))};
}

void HttpClientConnection::open(std::shared_ptr<HttpClientCall> call) {
  call_ = std::move(call);
  call_->conn = this;
  state_ = State::Connecting;
  int rc = timer_.init(loop_, this, uv_timer_init);
  if (rc < 0) {
    close(error(rc, "cannot connect to"));
    return;
  }
  arm_timer(target_.connect_timeout_ms);
  std::weak_ptr<HttpClientConnection> weak = weak_from_this();
  auto attempt = connector_->connect([weak](Result<std::shared_ptr<ByteStream>> stream) {
    if (auto conn = weak.lock()) conn->connected(std::move(stream));
  });
  if (!attempt) {
    close(attempt.error());
    return;
  }
  attempt_ = std::move(*attempt);
}

void HttpClientConnection::connected(Result<std::shared_ptr<ByteStream>> stream) {
  if (state_ != State::Connecting) return;
  if (!stream) {
    close(stream.error());
    return;
  }
  stream_ = std::move(*stream);
  attempt_.reset();
  start_call();
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
  if (!head.headers.get("Host")) head.headers.add("Host", host_);
  bool bodiless = head.method == "GET" || head.method == "HEAD";
  if (!call_->body.empty() || !bodiless) {
    head.headers.set("Content-Length", std::to_string(call_->body.size()));
  }
  request_keep_alive_ = head.keep_alive;
  if (head.method == "HEAD") parser_.expect_head_response();

  std::string data = http_serialize(head);
  std::string body = std::move(call_->body);
  if (body.size() <= kInlineBody) {
    data += body;
    body.clear();
  }
  std::weak_ptr<HttpClientConnection> weak = weak_from_this();
  auto on_written = [weak](int status) {
    if (auto conn = weak.lock()) conn->written(status);
  };
  // A large body goes in a write of its own rather than being copied
  // behind the head; the last write's completion is the request's.
  int rc = stream_->write(std::move(data), body.empty() ? ByteStream::Done(on_written) : nullptr);
  if (rc == 0 && !body.empty()) rc = stream_->write(std::move(body), on_written);
  if (rc < 0) {
    close(error(rc, "cannot send a request to"));
    return;
  }
  writing_ = true;
  update_reading();
}

void HttpClientConnection::written(int status) {
  if (state_ == State::Closed) return;
  writing_ = false;
  // A server may answer before it has read the whole request (a refusal)
  // and close, and a server that went away tells why when the end of its
  // stream is read (ssh's last words): while reading, the response side
  // decides how the call ends.
  if (status < 0 && state_ == State::Busy && !response_started_ && !reading_) {
    close(error(status, "cannot send a request to"));
  }
}

void HttpClientConnection::update_reading() {
  if (state_ != State::Busy && state_ != State::Idle) return;
  bool paused = state_ == State::Busy && call_ && call_->paused();
  if (!paused && !reading_) {
    int rc = 0;
    if (!std::exchange(read_started_, true)) {
      std::weak_ptr<HttpClientConnection> weak = weak_from_this();
      rc = stream_->read_start(ByteStream::Events{
          .on_data =
              [weak](std::string_view data) {
                if (auto conn = weak.lock()) conn->received(data);
              },
          .on_end =
              [weak](Status status) {
                if (auto conn = weak.lock()) conn->ended(std::move(status));
              },
      });
    } else {
      rc = stream_->read_resume();
    }
    if (rc < 0) {
      close(error(rc, "cannot read from"));
      return;
    }
    reading_ = true;
  } else if (paused && reading_) {
    stream_->read_stop();
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

void HttpClientConnection::received(std::string_view data) {
  if (state_ == State::Idle) {
    log_warn("{}: {} sent data on an idle connection; closing it", label_, endpoint_);
    close(Status::Ok());
    return;
  }
  if (state_ != State::Busy) return;
  if (!call_->paused()) arm_timer(target_.idle_timeout_ms);
  size_t used = 0;
  bool ok = parser_.feed(data.data(), data.size(), &used);
  if (state_ != State::Busy) return;  // a callback canceled the call or closed the session
  if (!ok) {
    close(Error{-EPROTO, fmt::format("{}: bad response from {}: {}", label_, endpoint_,
                                     parser_.error()->reason)});
    return;
  }
  if (response_done_) complete(used < data.size());
}

void HttpClientConnection::ended(Status status) {
  reading_ = false;
  // A server closes an idle keep-alive connection whenever it likes.
  if (state_ == State::Idle) {
    close(Status::Ok());
    return;
  }
  if (state_ != State::Busy) return;
  if (status.ok()) {
    // A body without a length ends with the connection.
    if (response_started_ && parser_.finish() && response_done_) {
      complete(false);
      return;
    }
    close(Error{-ECONNRESET,
                fmt::format("{}: {} closed the connection before the response was complete", label_,
                            endpoint_)});
    return;
  }
  close(Error{status.error().code, fmt::format("{}: lost the connection to {}: {}", label_,
                                               endpoint_, status.error().message)});
}

void HttpClientConnection::complete(bool extra_bytes) {
  if (extra_bytes) log_warn("{}: {} sent more than one response; closing", label_, endpoint_);
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
    case State::Connecting:
      conn->close(
          Error{-ETIMEDOUT, fmt::format("{}: connecting to {} timed out after {} ms", conn->label_,
                                        conn->endpoint_, conn->target_.connect_timeout_ms)});
      break;
    case State::Busy:
      conn->close(Error{-ETIMEDOUT, fmt::format("{}: no response from {} for {} ms", conn->label_,
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
  attempt_.reset();
  if (stream_) stream_->close();
  timer_.close();
  auto pool = pool_.lock();
  pool_.reset();
  if (pool) pool->connection_closed(this);
  if (auto call = std::move(call_)) call->finish(std::move(why));
  if (pool) pool->dispatch();
}

// ---- HttpClientSession ----

HttpClientSession::HttpClientSession(uv_loop_t* loop, ClientTarget target,
                                     std::shared_ptr<StreamConnector> connector)
    : pool_(std::make_shared<ClientPool>(loop, std::move(target), std::move(connector))) {}

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

}  // namespace intersync
