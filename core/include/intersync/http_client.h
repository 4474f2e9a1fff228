// The client side of HTTP/1.1 over any ByteStream, shared by every
// transport that talks to a server: an HttpClientSession is a small pool of
// keep-alive connections to one server. Calls take an idle connection, open
// a new one while the pool is below max_connections, or wait in FIFO order.
// How a connection's stream comes to be (a TCP connect, a TLS handshake, an
// ssh child) is the transport's part, a StreamConnector.
#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <string>

#include "intersync/byte_stream.h"
#include "intersync/result.h"
#include "intersync/transport.h"

namespace intersync {

// An opening stream; destroying it cancels the attempt, and its callback
// does not run.
class ConnectAttempt {
 public:
  virtual ~ConnectAttempt() = default;
};

// Opens streams to one server, each ready to carry requests.
class StreamConnector {
 public:
  using Done = std::function<void(Result<std::shared_ptr<ByteStream>>)>;

  virtual ~StreamConnector() = default;
  // Starts opening a stream; `done` runs once, from a loop callback, with
  // the stream (not reading yet) or an Error whose message names the server
  // and what failed. An attempt that cannot start returns the Error and
  // never calls `done`. The attempt may be destroyed from inside `done`;
  // the client's connect timeout destroys attempts that take too long.
  virtual Result<std::unique_ptr<ConnectAttempt>> connect(Done done) = 0;
  // What starts the client's own error messages ("http", "ssh").
  virtual std::string label() const = 0;
  // The server as error messages name it ("127.0.0.1:370", "root@host:22").
  virtual std::string endpoint() const = 0;
};

class ClientPool;

class HttpClientSession final : public ClientSession {
 public:
  HttpClientSession(uv_loop_t* loop, ClientTarget target,
                    std::shared_ptr<StreamConnector> connector);
  // Closes the session; it may be destroyed from inside one of its callbacks.
  ~HttpClientSession() override;

  std::shared_ptr<ClientCall> send(HttpRequestHead head, std::string body,
                                   ResponseCallbacks callbacks) override;
  void close() override;

 private:
  // Shared so that code running inside a connection's callback keeps the
  // pool alive even when the caller destroys the session from there.
  std::shared_ptr<ClientPool> pool_;
};

}  // namespace intersync
