// The server side of one HTTP/1.1 connection over any ByteStream, shared by
// every transport that accepts peers. It reads requests with core's codec,
// asks the RequestHandler about each head before reading the body, hands
// every complete request to the handler and writes its response through a
// ResponseWriter. Requests are served one at a time: pipelined bytes wait,
// the stream paused, until the response before them has ended. An idle
// timeout closes connections that send nothing, trickle a head, or stop
// reading their response; the last response of a connection is followed by
// a lingering close.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "intersync/byte_stream.h"
#include "intersync/http_codec.h"
#include "intersync/result.h"
#include "intersync/transport.h"

namespace intersync {

class HttpServerConnection {
 public:
  struct Options {
    HttpLimits limits;
    uint64_t idle_timeout_ms = 60000;  // no request for this long closes the connection
  };

  // Starts serving `stream`, which must not be reading yet. `on_closed`
  // runs once when the connection closes, so the owner can drop it; it does
  // not run when start() fails.
  static Result<std::shared_ptr<HttpServerConnection>> start(
      uv_loop_t* loop, std::shared_ptr<ByteStream> stream, RequestHandler* handler, Options options,
      std::function<void(HttpServerConnection*)> on_closed);

  virtual ~HttpServerConnection() = default;
  // Closes at once; a response in progress is aborted. Idempotent.
  virtual void close() = 0;
  // Forgets the owner, which is going away and closes the connection itself.
  virtual void detach() = 0;
  virtual bool closed() const = 0;
  virtual const std::string& peer() const = 0;
};

}  // namespace intersync
