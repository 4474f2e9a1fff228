// The server side of one HTTP connection: reading, dispatching one request
// at a time, writing responses and closing gracefully. Lifetime follows
// libuv's rules: the connection object is shared by its owner (the
// transport) and by the response writer handed to core, its timer is owned
// by UvHandle and freed in its close callback, and the stream's callbacks
// (reads, completed writes and shutdowns) reach the connection only through
// a weak pointer, so each part can go away in any order.
#include "intersync/http_server.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <deque>
#include <optional>
#include <utility>

#include "intersync/log.h"
#include "intersync/uv_handle.h"

namespace intersync {
namespace {

// A declared Content-Length is only a claim: memory is reserved for at most
// this much up front and grows with the bytes that really arrive.
constexpr uint64_t kMaxBodyReserve = 1 << 20;
// After the last response of a connection the write side is shut down and
// what the peer still sends is read and discarded for at most this long:
// closing with unread data would reset the connection and could destroy the
// response before the peer has read it (nginx's lingering close).
constexpr uint64_t kLingerMs = 5000;

std::optional<uint64_t> declared_length(const HttpResponseHead& head) {
  if (head.content_length) return head.content_length;
  auto header = head.headers.get("Content-Length");
  if (!header) return std::nullopt;
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(header->data(), header->data() + header->size(), value);
  if (ec != std::errc() || end != header->data() + header->size()) return std::nullopt;
  return value;
}

class ServerResponseWriter;

class ServerConnection final : public HttpServerConnection,
                               public std::enable_shared_from_this<ServerConnection> {
 public:
  ServerConnection(uv_loop_t* loop, std::shared_ptr<ByteStream> stream, RequestHandler* handler,
                   Options options, std::function<void(HttpServerConnection*)> on_closed);
  ServerConnection(const ServerConnection&) = delete;
  ServerConnection& operator=(const ServerConnection&) = delete;

  int start();
  void close() override;
  void detach() override { on_closed_ = nullptr; }
  bool closed() const override { return state_ == State::Closed; }
  const std::string& peer() const override { return peer_; }

 private:
  friend class ServerResponseWriter;

  enum class State {
    Reading,    // serving requests
    Closing,    // a last response is being flushed; then the write side shuts down
    Lingering,  // shut down; discarding what the peer still sends until it closes
    Closed,
  };

  static void on_timer(uv_timer_t* timer);

  void received(std::string_view data);
  void ended(Status status);
  size_t consume(const char* data, size_t size);
  void drain_pending();
  void dispatch();
  void reject(HttpResponseHead head);
  void reply_parse_error();
  void close_after_flush();
  void start_shutdown();
  void shutdown_done(int status);
  void update_reading();
  void arm_timer(uint64_t ms);
  void write_raw(std::string data, std::function<void()> on_flushed);
  void write_done(int status, std::function<void()> on_flushed);
  void drop(std::function<void()> on_flushed);

  // The ResponseWriter side; `writer` must be the current one or the call
  // is dropped (a writer outliving its response, or a closed connection).
  bool is_current(const ServerResponseWriter* writer) const;
  void send_head(const ServerResponseWriter* writer, HttpResponseHead head);
  void write_body(const ServerResponseWriter* writer, std::string data,
                  std::function<void()> on_flushed);
  void end_response(const ServerResponseWriter* writer);

  uv_loop_t* loop_;
  std::shared_ptr<ByteStream> stream_;
  RequestHandler* handler_;
  Options options_;
  std::function<void(HttpServerConnection*)> on_closed_;
  UvHandle<uv_timer_t> timer_;
  HttpParser parser_;
  std::string peer_;
  std::string pending_;  // bytes read past a request that waits for its predecessor's response

  State state_ = State::Reading;
  bool reading_ = false;
  bool in_consume_ = false;
  bool peer_eof_ = false;
  bool shutdown_started_ = false;
  size_t writes_in_flight_ = 0;

  // The request being read.
  HttpRequest request_;
  bool reading_body_ = false;
  bool request_ready_ = false;

  // The request being answered and its response.
  bool awaiting_response_ = false;
  std::string request_line_;  // "GET /path", for log messages
  std::string request_method_;
  bool request_keep_alive_ = true;
  int request_version_minor_ = 1;
  std::weak_ptr<ServerResponseWriter> writer_;
  const ServerResponseWriter* writer_id_ = nullptr;
  bool head_sent_ = false;
  bool response_keep_alive_ = false;
  bool body_allowed_ = true;
  std::optional<uint64_t> declared_length_;
  uint64_t body_written_ = 0;

  // on_flushed callbacks of dropped writes run from a queue, not nested, so
  // that a writer that writes again from on_flushed cannot recurse without
  // bound once the peer is gone.
  std::deque<std::function<void()>> dropped_;
  bool running_dropped_ = false;
};

// The ResponseWriter core gets for one request. It only forwards to the
// connection, which checks that the writer is still the current one; it
// keeps the connection object (not its socket) alive, so a handler holding
// a writer after the peer left sees closed() and has its writes dropped.
class ServerResponseWriter final : public ResponseWriter {
 public:
  explicit ServerResponseWriter(std::shared_ptr<ServerConnection> conn)
      : conn_(std::move(conn)), peer_(conn_->peer()) {}

  void send_head(HttpResponseHead head) override {
    if (ended_) {
      log_error("http: response head for {} sent after end()", peer_);
      return;
    }
    conn_->send_head(this, std::move(head));
  }

  void write(std::string data, std::function<void()> on_flushed) override {
    if (ended_) log_error("http: response body for {} written after end()", peer_);
    conn_->write_body(this, std::move(data), std::move(on_flushed));
  }

  void end() override {
    if (std::exchange(ended_, true)) return;
    // A complete response cannot be aborted any more; dropping the callback
    // also frees whatever it holds (often this writer).
    on_abort_ = nullptr;
    conn_->end_response(this);
  }

  bool closed() const override { return conn_->closed(); }

  void on_abort(std::function<void()> callback) override {
    if (aborted_) {
      // The peer is already gone: the caller learns it at once.
      if (callback) call_guarded("on_abort", callback);
      return;
    }
    on_abort_ = std::move(callback);
  }

  std::string peer() const override { return peer_; }

  // The connection closed before end().
  void abort() {
    if (std::exchange(aborted_, true)) return;
    auto callback = std::move(on_abort_);
    on_abort_ = nullptr;
    if (callback) call_guarded("on_abort", callback);
  }

 private:
  std::shared_ptr<ServerConnection> conn_;
  std::string peer_;
  std::function<void()> on_abort_;
  bool ended_ = false;
  bool aborted_ = false;
};

ServerConnection::ServerConnection(uv_loop_t* loop, std::shared_ptr<ByteStream> stream,
                                   RequestHandler* handler, Options options,
                                   std::function<void(HttpServerConnection*)> on_closed)
    : loop_(loop),
      stream_(std::move(stream)),
      handler_(handler),
      options_(options),
      on_closed_(std::move(on_closed)),
      parser_(HttpParser::Kind::Request,
              HttpParser::Callbacks{
                  .on_request_head =
                      [this](HttpRequestHead& head) {
                        if (auto refusal = handler_->check_head(head, peer_)) {
                          log_info("http: refused {} {} from {} with {}", head.method,
                                   head.target.substr(0, 200), peer_, refusal->status);
                          parser_.pause();
                          reject(std::move(*refusal));
                          return;
                        }
                        // A client that waits for permission before sending
                        // its body (curl does for large ones) gets it now.
                        auto expect = head.headers.get("Expect");
                        if (expect && head.version_minor >= 1 && *expect == "100-continue") {
                          write_raw("HTTP/1.1 100 Continue\r\n\r\n", {});
                        }
                        request_.body.reserve(
                            std::min(head.content_length.value_or(0), kMaxBodyReserve));
                        request_.head = std::move(head);
                        reading_body_ = true;
                      },
                  .on_body = [this](std::string_view piece) { request_.body.append(piece); },
                  .on_message_complete =
                      [this] {
                        parser_.pause();
                        request_ready_ = true;
                      },
              },
              options.limits) {}

int ServerConnection::start() {
  peer_ = stream_->peer();
  int rc = timer_.init(loop_, this, uv_timer_init);
  if (rc < 0) return rc;
  std::weak_ptr<ServerConnection> weak = weak_from_this();
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
  if (rc < 0) return rc;
  reading_ = true;
  arm_timer(options_.idle_timeout_ms);
  return 0;
}

void ServerConnection::close() {
  if (state_ == State::Closed) return;
  auto self = shared_from_this();
  state_ = State::Closed;
  stream_->close();
  timer_.close();
  auto writer = writer_.lock();
  bool aborted = std::exchange(awaiting_response_, false);
  writer_.reset();
  writer_id_ = nullptr;
  if (auto owner = std::exchange(on_closed_, nullptr)) owner(this);
  if (writer && aborted) writer->abort();
}

void ServerConnection::ended(Status status) {
  if (state_ == State::Closed) return;
  if (!status.ok() && status.error().code != UV_ECONNRESET) {
    log_info("http: reading from {} failed: {}", peer_, status.error().message);
  }
  // A peer that half-closes while its last response is still being
  // flushed may read it yet; everywhere else it has gone away.
  if (status.ok() && state_ == State::Closing) {
    peer_eof_ = true;
    update_reading();
    return;
  }
  close();
}

void ServerConnection::received(std::string_view data) {
  if (state_ != State::Reading) return;  // closing: discarded
  // A body that keeps arriving may take its time; a head must come whole
  // within the idle timeout, so that trickling it cannot hold a connection.
  if (reading_body_) arm_timer(options_.idle_timeout_ms);
  size_t used = consume(data.data(), data.size());
  if (state_ == State::Reading && used < data.size()) pending_.append(data.substr(used));
  update_reading();
}

size_t ServerConnection::consume(const char* data, size_t size) {
  in_consume_ = true;
  size_t offset = 0;
  while (state_ == State::Reading && !awaiting_response_ && offset < size) {
    size_t used = 0;
    bool ok = parser_.feed(data + offset, size - offset, &used);
    offset += used;
    if (!ok) {
      reply_parse_error();
      break;
    }
    if (std::exchange(request_ready_, false)) {
      dispatch();
    } else if (used == 0) {
      break;
    }
  }
  in_consume_ = false;
  return offset;
}

void ServerConnection::drain_pending() {
  std::string data = std::move(pending_);
  pending_.clear();
  size_t used = consume(data.data(), data.size());
  if (state_ == State::Reading && used < data.size()) pending_ = data.substr(used);
  update_reading();
}

void ServerConnection::dispatch() {
  awaiting_response_ = true;
  reading_body_ = false;
  uv_timer_stop(timer_.get());
  request_.peer = peer_;
  request_line_ = request_.head.method + " " + request_.head.target.substr(0, 200);
  request_method_ = request_.head.method;
  request_keep_alive_ = request_.head.keep_alive;
  request_version_minor_ = request_.head.version_minor;
  head_sent_ = false;
  response_keep_alive_ = false;
  body_allowed_ = true;
  declared_length_.reset();
  body_written_ = 0;

  auto writer = std::make_shared<ServerResponseWriter>(shared_from_this());
  writer_ = writer;
  writer_id_ = writer.get();
  HttpRequest request = std::move(request_);
  request_ = HttpRequest();
  if (!call_guarded("the request handler", [&] { handler_->handle(std::move(request), writer); })) {
    close();
  }
}

void ServerConnection::reject(HttpResponseHead head) {
  head.keep_alive = false;
  if (!head.content_length && !head.headers.get("Content-Length")) head.content_length = 0;
  write_raw(http_serialize(head), {});
  close_after_flush();
}

void ServerConnection::reply_parse_error() {
  const HttpParseError& error = *parser_.error();
  log_info("http: bad request from {}: {}", peer_, error.reason);
  HttpResponseHead head;
  head.status = error.status;
  head.keep_alive = false;
  head.headers.add("Content-Type", "text/plain; charset=utf-8");
  std::string body = fmt::format("{} {}\n", error.status, http_reason_phrase(error.status));
  // A failure of our own code is not the client's business.
  if (error.status != 500) body += error.reason + "\n";
  head.content_length = body.size();
  write_raw(http_serialize(head) + body, {});
  close_after_flush();
}

void ServerConnection::close_after_flush() {
  if (state_ != State::Reading) return;
  state_ = State::Closing;
  pending_.clear();
  // A peer that never reads its response must not hold the connection.
  arm_timer(options_.idle_timeout_ms);
  if (writes_in_flight_ == 0) start_shutdown();
  update_reading();
}

void ServerConnection::start_shutdown() {
  if (std::exchange(shutdown_started_, true)) return;
  std::weak_ptr<ServerConnection> weak = weak_from_this();
  int rc = stream_->shutdown([weak](int status) {
    if (auto conn = weak.lock()) conn->shutdown_done(status);
  });
  if (rc < 0) close();
}

void ServerConnection::shutdown_done(int status) {
  if (state_ != State::Closing) return;
  if (status < 0 || peer_eof_) {
    close();
    return;
  }
  state_ = State::Lingering;
  arm_timer(kLingerMs);
  update_reading();
}

void ServerConnection::on_timer(uv_timer_t* timer) {
  auto* conn = static_cast<ServerConnection*>(timer->data);
  if (!conn) return;
  auto self = conn->shared_from_this();
  if (conn->state_ == State::Reading) {
    log_debug("http: closing connection from {}: {}", conn->peer_,
              conn->awaiting_response_ ? "it stopped reading" : "idle");
  }
  conn->close();
}

void ServerConnection::update_reading() {
  if (state_ == State::Closed) return;
  bool want = state_ == State::Reading ? pending_.empty() : !peer_eof_;
  if (want == reading_) return;
  if (want) {
    reading_ = stream_->read_resume() == 0;
    if (!reading_) close();
  } else {
    stream_->read_stop();
    reading_ = false;
  }
}

void ServerConnection::arm_timer(uint64_t ms) {
  if (timer_) uv_timer_start(timer_.get(), on_timer, ms, 0);
}

void ServerConnection::write_raw(std::string data, std::function<void()> on_flushed) {
  if (state_ == State::Closed) {
    drop(std::move(on_flushed));
    return;
  }
  // The callback owns on_flushed until the write completes; a write that
  // fails at once never calls it, so the callback is kept to be dropped.
  auto callback = std::make_shared<std::function<void()>>(std::move(on_flushed));
  std::weak_ptr<ServerConnection> weak = weak_from_this();
  int rc = stream_->write(std::move(data), [weak, callback](int status) {
    if (auto conn = weak.lock()) {
      conn->write_done(status, std::move(*callback));
    } else if (*callback) {
      call_guarded("on_flushed", *callback);
    }
  });
  if (rc < 0) {
    log_info("http: writing to {} failed: {}", peer_, uv_strerror(rc));
    close();
    drop(std::move(*callback));
    return;
  }
  // While a response is being written, the timer measures the peer's
  // reading: one that stops reading must not hold the connection forever.
  if (++writes_in_flight_ == 1 && awaiting_response_) arm_timer(options_.idle_timeout_ms);
}

void ServerConnection::write_done(int status, std::function<void()> on_flushed) {
  --writes_in_flight_;
  if (status < 0 && state_ != State::Closed) {
    if (status != UV_ECONNRESET && status != UV_EPIPE) {
      log_info("http: writing to {} failed: {}", peer_, uv_strerror(status));
    }
    close();
  }
  if (state_ == State::Reading && awaiting_response_) {
    if (writes_in_flight_ > 0) {
      arm_timer(options_.idle_timeout_ms);
    } else {
      uv_timer_stop(timer_.get());
    }
  }
  if (on_flushed && !call_guarded("on_flushed", on_flushed)) close();
  if (state_ == State::Closing && writes_in_flight_ == 0) start_shutdown();
}

void ServerConnection::drop(std::function<void()> on_flushed) {
  if (!on_flushed) return;
  dropped_.push_back(std::move(on_flushed));
  if (std::exchange(running_dropped_, true)) return;
  auto self = shared_from_this();
  while (!dropped_.empty()) {
    auto callback = std::move(dropped_.front());
    dropped_.pop_front();
    call_guarded("on_flushed", callback);
  }
  running_dropped_ = false;
}

bool ServerConnection::is_current(const ServerResponseWriter* writer) const {
  return state_ != State::Closed && awaiting_response_ && writer_id_ == writer;
}

void ServerConnection::send_head(const ServerResponseWriter* writer, HttpResponseHead head) {
  if (!is_current(writer)) return;
  if (std::exchange(head_sent_, true)) {
    log_error("http: a second response head for {} from {}", request_line_, peer_);
    return;
  }
  body_allowed_ =
      request_method_ != "HEAD" && head.status >= 200 && head.status != 204 && head.status != 304;
  declared_length_ = declared_length(head);
  // Without a length the body ends where the connection does.
  bool delimited = !body_allowed_ || declared_length_ || head.headers.get("Transfer-Encoding");
  response_keep_alive_ = request_keep_alive_ && head.keep_alive && delimited;
  head.keep_alive = response_keep_alive_;
  if (response_keep_alive_ && request_version_minor_ == 0) {
    head.headers.set("Connection", "keep-alive");
  }
  write_raw(http_serialize(head), {});
}

void ServerConnection::write_body(const ServerResponseWriter* writer, std::string data,
                                  std::function<void()> on_flushed) {
  if (!is_current(writer)) {
    drop(std::move(on_flushed));
    return;
  }
  if (!head_sent_) {
    log_error("http: response body for {} from {} written before its head", request_line_, peer_);
    close();
    drop(std::move(on_flushed));
    return;
  }
  if (!body_allowed_) {
    drop(std::move(on_flushed));
    return;
  }
  body_written_ += data.size();
  write_raw(std::move(data), std::move(on_flushed));
}

void ServerConnection::end_response(const ServerResponseWriter* writer) {
  if (!is_current(writer)) return;
  if (!head_sent_) {
    log_error("http: the response to {} from {} ended without a head", request_line_, peer_);
    close();
    return;
  }
  bool complete = !body_allowed_ || !declared_length_ || body_written_ == *declared_length_;
  if (!complete) {
    // The peer cannot find the end of this message: it must see the
    // connection close instead of waiting for bytes that never come.
    log_warn("http: the response to {} from {} ended after {} of {} body bytes", request_line_,
             peer_, body_written_, *declared_length_);
  }
  awaiting_response_ = false;
  writer_.reset();
  writer_id_ = nullptr;
  if (!response_keep_alive_ || !complete) {
    close_after_flush();
    return;
  }
  parser_.resume();
  arm_timer(options_.idle_timeout_ms);
  // Called from inside handle() the loop in consume() goes on by itself.
  if (!in_consume_) drain_pending();
}

}  // namespace

Result<std::shared_ptr<HttpServerConnection>> HttpServerConnection::start(
    uv_loop_t* loop, std::shared_ptr<ByteStream> stream, RequestHandler* handler, Options options,
    std::function<void(HttpServerConnection*)> on_closed) {
  std::string peer = stream->peer();
  auto conn = std::make_shared<ServerConnection>(loop, std::move(stream), handler, options,
                                                 std::move(on_closed));
  if (int rc = conn->start(); rc < 0) {
    conn->detach();
    conn->close();
    return make_error(rc, fmt::format("http: cannot serve {}: {}", peer, uv_strerror(rc)));
  }
  return std::shared_ptr<HttpServerConnection>(std::move(conn));
}

}  // namespace intersync
