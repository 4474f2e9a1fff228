// The daemon's configuration: the YAML file given with -c, mirroring the
// options of the original /etc/sysconfig/intersync (--fset, --server, ...).
// load_config() parses and validates all of core's keys; each plugin's own
// subtree (a fileset key named like the plugin) is kept as a ConfigNode and
// validated by the plugin itself once loaded. Every error names the file,
// line and column.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "intersync/config_node.h"
#include "intersync/log.h"
#include "intersync/result.h"

namespace intersync {

enum class Role { Server, Client };
enum class ConflictPolicy { ServerWins, ClientWins, NewestWins, KeepBoth };

struct ClientEntry {
  std::string name;
  std::string token_sha256;  // 64 lowercase hex digits
};

struct FilesetConfig {
  std::string name;  // the --fset; [A-Za-z0-9._-], 1..64 chars
  std::string path;  // absolute fileset root
  Role role = Role::Server;
  std::string backend = "inotify";
  std::string transport = "http";
  // server
  std::string listen_host = "0.0.0.0";
  uint16_t listen_port = 370;
  std::vector<ClientEntry> clients;
  bool auth_none = false;  // `auth: none` (server and client)
  // client
  std::string server_host;
  uint16_t server_port = 370;
  std::string server_user;  // [user@]host for ssh
  std::string token_file;
  std::string token;  // read from token_file at load time, trailing whitespace cut
  bool write_back = false;
  // Content is fetched when a file is first opened (izofs only): metadata
  // arrives eagerly, a file stays a placeholder until then.
  bool data_on_demand = false;
  ConflictPolicy conflict = ConflictPolicy::ServerWins;
  // Plugin subtrees: the values of keys named like the backend and the
  // transport (may be undefined).
  ConfigNode backend_node;
  ConfigNode transport_node;
  ConfigNode node;             // the whole entry, for error positions
  std::string control_socket;  // the daemon's (Config::control_socket), told to izofs
};

struct Config {
  std::string file;  // the path given with -c
  std::string state_dir = "/var/intermezzo-0";
  std::vector<std::string> plugin_dirs;  // empty: the built-in search path
  LogSink log_sink = LogSink::Stderr;
  LogLevel log_level = LogLevel::Info;
  std::string pid_file;        // default <state_dir>/intersyncd.pid
  std::string control_socket;  // default <state_dir>/control.sock
  std::string relay_socket;    // default <state_dir>/relay.sock; see relay_socket.h
  std::vector<FilesetConfig> filesets;
};

// Reads and validates `file`. Errors: "FILE:LINE:COL: message" (-EINVAL), or
// "FILE: <strerror>" when it cannot be read.
Result<Config> load_config(const std::string& file);

// Parses "host:port", "[v6]:port", "host" (default_port). Port 0 allowed.
Result<std::pair<std::string, uint16_t>> parse_host_port(std::string_view s, uint16_t default_port);

const char* role_name(Role r);
const char* conflict_policy_name(ConflictPolicy p);

}  // namespace intersync
