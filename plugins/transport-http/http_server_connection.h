// One accepted connection of the built-in HTTP server. It reads requests
// with core's codec, asks the RequestHandler about each head before reading
// the body, hands every complete request to the handler and writes its
// response through a ResponseWriter. Requests are served one at a time:
// pipelined bytes wait, the parser paused, until the response before them
// has ended.
#pragma once

#include <uv.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "intersync/http_codec.h"
#include "intersync/transport.h"
#include "uv_handle.h"

namespace intersync::http {

class ServerResponseWriter;

class HttpServerConnection : public std::enable_shared_from_this<HttpServerConnection> {
 public:
  struct Options {
    HttpLimits limits;
    uint64_t idle_timeout_ms = 60000;  // no request for this long closes the connection
  };

  // `on_closed` runs once when the connection closes, so the owner can drop
  // it. Always create with std::make_shared.
  HttpServerConnection(uv_loop_t* loop, RequestHandler* handler, Options options,
                       std::function<void(HttpServerConnection*)> on_closed);
  HttpServerConnection(const HttpServerConnection&) = delete;
  HttpServerConnection& operator=(const HttpServerConnection&) = delete;

  // Accepts the pending connection on `server` and starts reading.
  // Returns a negative errno on failure.
  int accept(uv_stream_t* server);
  // Closes at once; a response in progress is aborted. Idempotent.
  void close();
  // Forgets the owner, which is going away and closes the connection itself.
  void detach() { on_closed_ = nullptr; }

  bool closed() const { return state_ == State::Closed; }
  const std::string& peer() const { return peer_; }

 private:
  friend class ServerResponseWriter;

  enum class State {
    Reading,    // serving requests
    Closing,    // a last response is being flushed; then the write side shuts down
    Lingering,  // shut down; discarding what the peer still sends until it closes
    Closed,
  };

  static void on_alloc(uv_handle_t* handle, size_t suggested, uv_buf_t* buf);
  static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  static void on_timer(uv_timer_t* timer);
  static void on_write(uv_write_t* req, int status);
  static void on_shutdown(uv_shutdown_t* req, int status);

  void handle_read(ssize_t nread, const char* data);
  size_t consume(const char* data, size_t size);
  void drain_pending();
  void dispatch();
  void reject(HttpResponseHead head);
  void reply_parse_error();
  void close_after_flush();
  void start_shutdown();
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
  RequestHandler* handler_;
  Options options_;
  std::function<void(HttpServerConnection*)> on_closed_;
  UvHandle<uv_tcp_t> tcp_;
  UvHandle<uv_timer_t> timer_;
  HttpParser parser_;
  std::string peer_ = "?";
  std::unique_ptr<char[]> read_buffer_;
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

}  // namespace intersync::http
