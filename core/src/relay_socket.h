// The daemon's relay socket: HTTP/1.1 on a unix socket (`relay_socket`,
// default <state_dir>/relay.sock) serving every server fileset of the
// daemon, beside whatever its transports' listeners speak. intersync.cgi
// and `intersyncd --serve-stdio` relay to it, so they reach a fileset whose
// listener is TLS-only, or listens on port 0, the same way as any other,
// without TLS of their own: the bytes never leave the machine, and the
// socket's directory decides which local users reach it. Authentication is
// the same as on a listener: the bearer token each request carries.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>

#include "intersync/http_server.h"
#include "intersync/result.h"
#include "intersync/uv_handle.h"
#include "request_router.h"

namespace intersync {

class RelaySocket {
 public:
  // The peer name requests through the socket carry in logs and status.
  static constexpr const char* kPeer = "relay socket";

  RelaySocket(uv_loop_t* loop, std::string path);
  ~RelaySocket() { close(); }
  RelaySocket(const RelaySocket&) = delete;
  RelaySocket& operator=(const RelaySocket&) = delete;

  // Replaces a stale socket file, binds and listens; the socket is mode
  // 0666, so the permissions of its directory are what restrict it.
  Status open();
  // Stops listening, closes every connection and removes the socket file.
  void close();

  RequestRouter& router() { return router_; }

 private:
  static void on_connection(uv_stream_t* server, int status);
  void accept_one(uv_stream_t* server);

  uv_loop_t* loop_;
  std::string path_;
  UvHandle<uv_pipe_t> listener_;
  RequestRouter router_;
  std::unordered_map<HttpServerConnection*, std::shared_ptr<HttpServerConnection>> connections_;
};

}  // namespace intersync
