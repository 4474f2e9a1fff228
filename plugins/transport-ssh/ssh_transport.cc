// The "ssh" transport plugin, client side only: each connection of core's
// HTTP client pool is an ssh child running `intersyncd --serve-stdio` on the
// server, which relays the HTTP messages to the daemon serving the fileset,
// as rsync and unison run their remote side. ssh brings the encryption, the
// server's authentication (known_hosts) and the client's (its key); the
// daemon behind the relay still checks the fileset's bearer token.
//
//   transport: ssh
//   server: sync@fileserver.example.org      # [user@]host[:port]
//   ssh:
//     identity_file: /etc/intersync/id_ed25519
//     known_hosts: /etc/intersync/known_hosts
//     remote_config: /etc/intersync.yaml     # the server's configuration
//     remote_command: intersyncd             # how to run it there
//     options: [ServerAliveInterval=15]      # more -o options
//     port: 22                               # instead of the server's port
//
// A lost ssh process is a closed connection: the client engine retries
// with its backoff.
#include <fmt/format.h>

#include <memory>

#include "intersync/http_client.h"
#include "intersync/plugin.h"
#include "intersync/transport.h"
#include "ssh_command.h"
#include "ssh_stream.h"

namespace intersync::ssh {

class SshTransport final : public Transport {
 public:
  Status configure(const ConfigNode& node) override {
    auto settings = parse_ssh_settings(node);
    if (!settings) return settings.error();
    settings_ = std::move(*settings);
    return Status::Ok();
  }

  Result<std::string> listen(uv_loop_t*, const std::string& host, uint16_t port,
                             RequestHandler*) override {
    return make_error(-EOPNOTSUPP,
                      fmt::format("ssh: cannot listen on {}:{}: the ssh transport is client-only; "
                                  "serve the fileset with transport: http, and ssh clients reach "
                                  "it through `intersyncd --serve-stdio`",
                                  host, port));
  }

  std::unique_ptr<ClientSession> connect(uv_loop_t* loop, const ClientTarget& target) override {
    auto connector = std::make_shared<SshConnector>(loop, ssh_command_line(settings_, target),
                                                    ssh_endpoint(settings_, target));
    return std::make_unique<HttpClientSession>(loop, target, std::move(connector));
  }

  // Sessions belong to their callers; there is no listener to stop.
  void stop() override {}
  size_t connection_count() const override { return 0; }

 private:
  SshSettings settings_;
};

}  // namespace intersync::ssh

INTERSYNC_PLUGIN("ssh", INTERSYNC_PLUGIN_TRANSPORT, intersync::ssh::SshTransport)
