// The ssh command line of the ssh transport: the `ssh:` settings of a
// fileset and how one connection (one ssh child) reaches `intersyncd
// --serve-stdio` on the server with them. Kept apart from the process
// handling so that both can be checked word by word.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "intersync/config_node.h"
#include "intersync/result.h"
#include "intersync/transport.h"

namespace intersync::ssh {

// The `ssh:` settings of a fileset.
struct SshSettings {
  std::string identity_file;                          // -i, with IdentitiesOnly
  std::string known_hosts;                            // UserKnownHostsFile
  std::string remote_config = "/etc/intersync.yaml";  // the server's -c
  std::string remote_command = "intersyncd";          // shell words, as written
  std::vector<std::string> options;                   // extra -o options
  std::optional<uint16_t> port;                       // overrides the server's port
};

// Reads the `ssh:` subtree (undefined: the defaults). identity_file and
// known_hosts are relative to the configuration file's directory unless
// absolute; remote_config is a path on the server.
Result<SshSettings> parse_ssh_settings(const ConfigNode& node);

// The port the fileset's `server:` has when it names none; for ssh it means
// ssh's own default (22, or what ~/.ssh/config says).
inline constexpr uint16_t kUnnamedPort = 370;

// Quotes a word for the remote shell, which reads ssh's command string.
std::string shell_quote(std::string_view word);

// The port ssh is told with -p, if any: `port:` in the settings, else the
// port of the fileset's `server:` unless it is the unnamed default.
std::optional<uint16_t> ssh_port(const SshSettings& settings, const ClientTarget& target);

// "root@host:2222", for logs and error messages.
std::string ssh_endpoint(const SshSettings& settings, const ClientTarget& target);

// argv of one ssh child, argv[0] being "ssh":
//   ssh -T -o BatchMode=yes [-p PORT] [-i IDENTITY -o IdentitiesOnly=yes]
//       [-o UserKnownHostsFile=FILE] -o StrictHostKeyChecking=yes [-o OPTION ...]
//       -o ConnectTimeout=SECONDS -- [user@]host
//       'REMOTE_COMMAND --serve-stdio --fset FSET -c REMOTE_CONFIG'
// ssh uses the first value it gets for an option, so `options` can change
// ConnectTimeout but never host key checking or batch mode.
std::vector<std::string> ssh_command_line(const SshSettings& settings, const ClientTarget& target);

}  // namespace intersync::ssh
