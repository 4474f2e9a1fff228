// The client half of the HTTP transport: a ClientSession is a small pool of
// keep-alive connections to one server. Calls take an idle connection, open
// a new one while the pool is below max_connections, or wait in FIFO order.
#pragma once

#include <uv.h>

#include <memory>

#include "intersync/transport.h"

namespace intersync::http {

class ClientPool;

class HttpClientSession final : public ClientSession {
 public:
  HttpClientSession(uv_loop_t* loop, ClientTarget target);
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

}  // namespace intersync::http
