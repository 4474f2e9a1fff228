// The "http" transport plugin: protocol messages as HTTP/1.1 over TCP. As a
// server it listens, accepts connections and serves each with an
// HttpServerConnection; as a client it hands out HttpClientSession pools.
// Its own configuration (the `http:` key of a fileset) tunes the pool size
// and the idle timeout.
#include <fmt/format.h>

#include <memory>
#include <optional>
#include <unordered_map>

#include "http_client_session.h"
#include "http_server_connection.h"
#include "intersync/log.h"
#include "intersync/plugin.h"
#include "intersync/transport.h"
#include "uv_handle.h"

namespace intersync::http {
namespace {

constexpr int kListenBacklog = 128;

// Fills `addr` from a listen host: an IPv4 or IPv6 literal, "localhost" or
// empty (any IPv4 address).
int listen_address(const std::string& host, uint16_t port, sockaddr_storage* addr) {
  std::string bare = strip_brackets(host);
  if (bare.empty()) bare = "0.0.0.0";
  if (bare == "localhost") bare = "127.0.0.1";
  if (uv_ip4_addr(bare.c_str(), port, reinterpret_cast<sockaddr_in*>(addr)) == 0) return 0;
  return uv_ip6_addr(bare.c_str(), port, reinterpret_cast<sockaddr_in6*>(addr));
}

}  // namespace

class HttpTransport final : public Transport {
 public:
  HttpTransport() = default;
  ~HttpTransport() override { stop(); }

  Status configure(const ConfigNode& node) override {
    if (!node.defined()) return Status::Ok();
    if (Status status = node.expect_map({"max_connections", "idle_timeout"}); !status) {
      return status;
    }
    if (node.has("max_connections")) {
      auto value = node.get_int("max_connections", 4, 1, 64);
      if (!value) return value.error();
      max_connections_ = static_cast<unsigned>(*value);
    }
    if (node.has("idle_timeout")) {
      auto value = node.get_int("idle_timeout", 60, 1, 24 * 3600);
      if (!value) return value.error();
      idle_timeout_s_ = static_cast<unsigned>(*value);
    }
    return Status::Ok();
  }

  Result<std::string> listen(uv_loop_t* loop, const std::string& host, uint16_t port,
                             RequestHandler* handler) override {
    std::string where = format_endpoint(strip_brackets(host), port);
    if (listener_) return make_error(-EBUSY, fmt::format("http: already listening ({})", where));
    sockaddr_storage addr{};
    if (int rc = listen_address(host, port, &addr); rc < 0) {
      return make_error(rc, fmt::format("http: cannot listen on {}: not an IP address", where));
    }
    loop_ = loop;
    handler_ = handler;
    int rc = listener_.init(loop, this, uv_tcp_init);
    if (rc == 0) rc = uv_tcp_bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), 0);
    if (rc == 0) rc = uv_listen(listener_.stream(), kListenBacklog, on_connection);
    sockaddr_storage bound{};
    int len = sizeof bound;
    if (rc == 0)
      rc = uv_tcp_getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&bound), &len);
    if (rc < 0) {
      listener_.close();
      return make_error(rc, fmt::format("http: cannot listen on {}: {}", where, uv_strerror(rc)));
    }
    std::string address = format_address(reinterpret_cast<sockaddr*>(&bound));
    log_info("http: listening on {}", address);
    return address;
  }

  std::unique_ptr<ClientSession> connect(uv_loop_t* loop, const ClientTarget& target) override {
    ClientTarget effective = target;
    if (max_connections_) effective.max_connections = *max_connections_;
    if (idle_timeout_s_) effective.idle_timeout_ms = *idle_timeout_s_ * 1000;
    return std::make_unique<HttpClientSession>(loop, std::move(effective));
  }

  void stop() override {
    listener_.close();
    auto connections = std::move(connections_);
    connections_.clear();
    for (auto& [raw, conn] : connections) {
      conn->detach();
      conn->close();
    }
  }

  size_t connection_count() const override { return connections_.size(); }

 private:
  static void on_connection(uv_stream_t* server, int status) {
    auto* transport = static_cast<HttpTransport*>(server->data);
    if (!transport) return;
    if (status < 0) {
      log_warn("http: accepting a connection failed: {}", uv_strerror(status));
      return;
    }
    transport->accept_one(server);
  }

  void accept_one(uv_stream_t* server) {
    HttpServerConnection::Options options;
    if (idle_timeout_s_) options.idle_timeout_ms = *idle_timeout_s_ * 1000ull;
    auto conn = std::make_shared<HttpServerConnection>(
        loop_, handler_, options,
        [this](HttpServerConnection* closed) { connections_.erase(closed); });
    if (int rc = conn->accept(server); rc < 0) {
      log_warn("http: accepting a connection failed: {}", uv_strerror(rc));
      return;
    }
    log_debug("http: connection from {}", conn->peer());
    connections_.emplace(conn.get(), conn);
  }

  std::optional<unsigned> max_connections_;
  std::optional<unsigned> idle_timeout_s_;
  uv_loop_t* loop_ = nullptr;
  RequestHandler* handler_ = nullptr;
  UvHandle<uv_tcp_t> listener_;
  std::unordered_map<HttpServerConnection*, std::shared_ptr<HttpServerConnection>> connections_;
};

}  // namespace intersync::http

INTERSYNC_PLUGIN("http", INTERSYNC_PLUGIN_TRANSPORT, intersync::http::HttpTransport)
