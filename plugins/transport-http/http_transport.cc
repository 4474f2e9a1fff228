// The "http" transport plugin: protocol messages as HTTP/1.1 over TCP,
// optionally in TLS. As a server it listens, accepts connections, wraps each
// in TLS when configured, and serves it with core's HttpServerConnection; as
// a client it hands out core's HttpClientSession pools over TCP (or TLS)
// connections. Its own configuration (the `http:` key of a fileset) tunes
// the pool size and the idle timeout and holds the TLS settings:
//
//   http:
//     tls: {cert: server.pem, key: server.key}   # a server
//     tls: {ca: ca.pem}                          # a client verifying the server's chain and name
//     tls: {fingerprint: 3a:5f:...}              # a client pinning the server's certificate
//     plain: true                                # no TLS: tokens and files travel in clear
//
// A fileset using this transport has one or the other: plain HTTP only when
// the configuration says so, on loopback too; without either, configure()
// refuses, naming the file, line and column.
#include <fmt/format.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <unordered_map>

#include "intersync/http_client.h"
#include "intersync/http_server.h"
#include "intersync/log.h"
#include "intersync/net_address.h"
#include "intersync/plugin.h"
#include "intersync/transport.h"
#include "intersync/uv_handle.h"
#include "tcp_stream.h"
#include "tls_context.h"
#include "tls_stream.h"

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

// A file named in the configuration, relative to the configuration file's
// directory unless absolute (as token_file is).
std::string config_path(const ConfigNode& node, const std::string& path) {
  if (path.empty() || path.front() == '/' || node.file().empty()) return path;
  return (std::filesystem::path(node.file()).parent_path() / path).lexically_normal().string();
}

// The connector of a client whose settings cannot work as a client's (tls
// settings that are a server's, an idle timeout its long-polls outlast):
// every connection fails, saying why.
class MisconfiguredConnector final : public StreamConnector {
 public:
  MisconfiguredConnector(std::string endpoint, std::string why)
      : endpoint_(std::move(endpoint)), why_(std::move(why)) {}
  Result<std::unique_ptr<ConnectAttempt>> connect(Done) override {
    return make_error(-EINVAL, "http: cannot connect to " + endpoint_ + ": " + why_);
  }
  std::string label() const override { return "http"; }
  std::string endpoint() const override { return endpoint_; }

 private:
  std::string endpoint_;
  std::string why_;
};

}  // namespace

class HttpTransport final : public Transport {
 public:
  HttpTransport() = default;
  ~HttpTransport() override { stop(); }

  Status configure(const ConfigNode& node) override {
    what_ = node.what();
    server_tls_.reset();
    client_tls_.reset();
    plain_ = false;
    if (Status status = configure_settings(node); !status) return status;
    if (!server_tls_ && !client_tls_ && !plain_) {
      return node.error_at(
          "plain", what_ +
                       " have no 'tls': plain HTTP is refused unless the configuration says "
                       "so. Add 'tls: {cert: FILE, key: FILE}' (a server), 'tls: {ca: FILE}' or "
                       "'tls: {fingerprint: SHA256}' (a client) under 'http:' to encrypt, or "
                       "'plain: true' there to accept that bearer tokens and file contents "
                       "cross the network unencrypted");
    }
    return Status::Ok();
  }

  Result<std::string> listen(uv_loop_t* loop, const std::string& host, uint16_t port,
                             RequestHandler* handler) override {
    std::string where = format_endpoint(strip_brackets(host), port);
    if (listener_) return make_error(-EBUSY, fmt::format("http: already listening ({})", where));
    if (client_tls_) {
      return make_error(-EINVAL, fmt::format("http: cannot listen on {} with TLS: {} has no "
                                             "'cert' and 'key' under 'tls'",
                                             where, what_));
    }
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
    log_info("http: listening on {} ({})", address, server_tls_ ? "TLS" : "plain HTTP");
    return address;
  }

  std::unique_ptr<ClientSession> connect(uv_loop_t* loop, const ClientTarget& target) override {
    ClientTarget effective = target;
    if (max_connections_) effective.max_connections = *max_connections_;
    if (idle_timeout_s_) effective.idle_timeout_ms = *idle_timeout_s_ * 1000;
    std::shared_ptr<StreamConnector> connector =
        std::make_shared<TcpConnector>(loop, target.host, target.port);
    if (client_tls_) {
      connector = std::make_shared<TlsConnector>(loop, std::move(connector), client_tls_,
                                                 strip_brackets(target.host));
    } else if (server_tls_) {
      connector = std::make_shared<MisconfiguredConnector>(
          connector->endpoint(),
          "the fileset's tls settings have cert and key, which are a server's; a client needs "
          "ca or fingerprint");
    }
    if (idle_timeout_s_ && effective.idle_timeout_ms <= target.long_poll_ms) {
      // Every long-poll would time out before the server answers it.
      connector = std::make_shared<MisconfiguredConnector>(
          connector->endpoint(),
          fmt::format("{}'idle_timeout' of {} is {} s, but a client's long-poll waits {} s for "
                      "the server: it must be longer",
                      idle_timeout_where_, what_, *idle_timeout_s_, target.long_poll_ms / 1000));
    }
    return std::make_unique<HttpClientSession>(loop, std::move(effective), std::move(connector));
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
  // The keys of the `http:` subtree, when there is one.
  Status configure_settings(const ConfigNode& node) {
    if (!node.defined()) return Status::Ok();
    if (Status status = node.expect_map({"max_connections", "idle_timeout", "tls", "plain"});
        !status) {
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
      idle_timeout_where_ = node.where("idle_timeout");
    }
    auto plain = node.get_bool("plain", false);
    if (!plain) return plain.error();
    plain_ = *plain;
    if (node.has("tls")) {
      if (plain_) {
        return node.error_at("plain", "'plain: true' in " + what_ + " contradicts its 'tls'");
      }
      if (Status status = configure_tls(node); !status) return status;
    }
    return Status::Ok();
  }

  Status configure_tls(const ConfigNode& node) {
    ConfigNode tls = node.child("tls", "'tls' in " + what_);
    if (!tls.defined() || !tls.yaml().IsMap()) {
      return node.error_at("tls", "'tls' in " + what_ +
                                      " must be a mapping: {cert: FILE, key: FILE} on a server, "
                                      "{ca: FILE} or {fingerprint: SHA256} on a client");
    }
    if (Status status = tls.expect_map({"cert", "key", "ca", "fingerprint"}); !status) {
      return status;
    }
    bool server = tls.has("cert") || tls.has("key");
    if (server && !(tls.has("cert") && tls.has("key"))) {
      std::string given = tls.has("cert") ? "cert" : "key";
      return tls.error_at(given,
                          "'" + given + "' in " + tls.what() + " needs both 'cert' and 'key'");
    }
    if (tls.has("ca") && tls.has("fingerprint")) {
      return tls.error_at("fingerprint",
                          tls.what() + " has both 'ca' and 'fingerprint'; give one of them");
    }
    if (server && (tls.has("ca") || tls.has("fingerprint"))) {
      std::string key = tls.has("ca") ? "ca" : "fingerprint";
      return tls.error_at(key, "'" + key + "' in " + tls.what() +
                                   " is a client's setting, but it has a server's cert and key");
    }
    if (server) {
      auto cert = tls.get_string("cert");
      if (!cert) return cert.error();
      auto key = tls.get_string("key");
      if (!key) return key.error();
      auto context = TlsContext::server(config_path(node, *cert), config_path(node, *key));
      if (!context) return tls.error_at("cert", context.error().message);
      server_tls_ = *context;
      return Status::Ok();
    }
    if (tls.has("fingerprint")) {
      auto text = tls.get_string("fingerprint");
      if (!text) return text.error();
      auto fingerprint = parse_fingerprint(*text);
      if (!fingerprint) {
        return tls.error_at("fingerprint",
                            "'fingerprint' in " + tls.what() +
                                " must be the SHA-256 of the server's certificate: 64 hex "
                                "digits, colons allowed (openssl x509 -noout -fingerprint "
                                "-sha256)");
      }
      auto context = TlsContext::client_pinned(*fingerprint);
      if (!context) return tls.error_at("fingerprint", context.error().message);
      client_tls_ = *context;
      return Status::Ok();
    }
    auto ca = tls.get_string("ca", "");
    if (!ca) return ca.error();
    auto context = TlsContext::client_ca(config_path(node, *ca));
    if (!context) return tls.error_at("ca", context.error().message);
    client_tls_ = *context;
    return Status::Ok();
  }

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
    auto accepted = accept_tcp(loop_, server);
    if (!accepted) {
      log_warn("http: accepting a connection failed: {}", accepted.error().message);
      return;
    }
    std::shared_ptr<ByteStream> stream = *accepted;
    if (server_tls_) {
      auto tls = TlsStream::server(loop_, stream, server_tls_);
      if (!tls) {
        log_warn("http: connection from {}: {}", stream->peer(), tls.error().message);
        stream->close();
        return;
      }
      stream = *tls;
    }
    HttpServerConnection::Options options;
    if (idle_timeout_s_) options.idle_timeout_ms = *idle_timeout_s_ * 1000ull;
    auto conn = HttpServerConnection::start(
        loop_, stream, handler_, options,
        [this](HttpServerConnection* closed) { connections_.erase(closed); });
    if (!conn) {
      log_warn("{}", conn.error().message);
      return;
    }
    log_debug("http: connection from {}", (*conn)->peer());
    connections_.emplace(conn->get(), *conn);
  }

  std::string what_;  // "'http' settings of fileset 'docs'", for messages
  std::optional<unsigned> max_connections_;
  std::optional<unsigned> idle_timeout_s_;
  std::string idle_timeout_where_;  // "file:line:col: " of the key
  std::shared_ptr<TlsContext> server_tls_;
  std::shared_ptr<TlsContext> client_tls_;
  bool plain_ = false;
  uv_loop_t* loop_ = nullptr;
  RequestHandler* handler_ = nullptr;
  UvHandle<uv_tcp_t> listener_;
  std::unordered_map<HttpServerConnection*, std::shared_ptr<HttpServerConnection>> connections_;
};

}  // namespace intersync::http

INTERSYNC_PLUGIN("http", INTERSYNC_PLUGIN_TRANSPORT, intersync::http::HttpTransport)
