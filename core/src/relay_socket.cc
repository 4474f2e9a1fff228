// The relay socket; see relay_socket.h.
#include "relay_socket.h"

#include <sys/stat.h>
#include <unistd.h>

#include "intersync/log.h"
#include "intersync/uv_stream.h"

namespace intersync {

RelaySocket::RelaySocket(uv_loop_t* loop, std::string path) : loop_(loop), path_(std::move(path)) {}

Status RelaySocket::open() {
  ::unlink(path_.c_str());
  int rc =
      listener_.init(loop_, this, [](uv_loop_t* l, uv_pipe_t* p) { return uv_pipe_init(l, p, 0); });
  if (rc == 0) rc = uv_pipe_bind(listener_.get(), path_.c_str());
  if (rc == 0 && ::chmod(path_.c_str(), 0666) != 0) rc = -errno;
  if (rc == 0) rc = uv_listen(listener_.stream(), 128, on_connection);
  if (rc < 0) {
    close();
    return make_error(rc, "relay socket " + path_ + ": " + uv_strerror(rc));
  }
  log_info("relay socket {} serves the server filesets to intersync.cgi and --serve-stdio", path_);
  return {};
}

void RelaySocket::close() {
  if (!listener_) return;
  listener_.close();
  ::unlink(path_.c_str());
  auto connections = std::move(connections_);
  connections_.clear();
  for (auto& [raw, conn] : connections) {
    conn->detach();
    conn->close();
  }
}

void RelaySocket::on_connection(uv_stream_t* server, int status) {
  auto* self = static_cast<RelaySocket*>(server->data);
  if (!self) return;
  if (status < 0) {
    log_warn("relay socket: accepting a connection failed: {}", uv_strerror(status));
    return;
  }
  self->accept_one(server);
}

void RelaySocket::accept_one(uv_stream_t* server) {
  UvHandle<uv_pipe_t> pipe;
  int rc =
      pipe.init(loop_, nullptr, [](uv_loop_t* l, uv_pipe_t* p) { return uv_pipe_init(l, p, 0); });
  if (rc == 0) rc = uv_accept(server, pipe.stream());
  if (rc < 0) {
    log_warn("relay socket: accepting a connection failed: {}", uv_strerror(rc));
    return;
  }
  auto conn = HttpServerConnection::start(
      loop_, UvStream::adopt(std::move(pipe), kPeer), &router_, {},
      [this](HttpServerConnection* closed) { connections_.erase(closed); });
  if (!conn) {
    log_warn("relay socket: {}", conn.error().message);
    return;
  }
  connections_.emplace(conn->get(), *conn);
}

}  // namespace intersync
