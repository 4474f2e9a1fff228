// load_config(): reads the daemon's YAML file and validates every key core
// owns, the way the original /etc/sysconfig/intersync options were checked
// before the daemon started. Plugin subtrees are only located here; each
// plugin validates its own once loaded. All yaml-cpp exceptions stop in this
// file and come out as "FILE:LINE:COL: message" errors.
#include "config.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace intersync {
namespace {

constexpr uint16_t kDefaultPort = 370;
constexpr size_t kMaxNameLength = 64;

// Keys of a fileset entry, by the role that may use them.
constexpr std::string_view kCommonKeys[] = {"name",      "path", "role",    "backend",
                                            "transport", "auth", "conflict"};
constexpr std::string_view kServerKeys[] = {"listen", "clients"};
constexpr std::string_view kClientKeys[] = {"server", "token_file", "write_back", "data_on_demand"};

template <size_t N>
bool contains(const std::string_view (&keys)[N], std::string_view key) {
  return std::find(std::begin(keys), std::end(keys), key) != std::end(keys);
}

bool is_fileset_key(std::string_view key) {
  return contains(kCommonKeys, key) || contains(kServerKeys, key) || contains(kClientKeys, key);
}

// Reads a whole file; the error is the bare strerror text, for the caller
// to place after its own context.
Result<std::string> read_file(const std::string& path, struct stat* st) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_error(std::strerror(errno));
  std::string data;
  Error err{0, {}};
  if (st && ::fstat(fd, st) < 0) err = errno_error(std::strerror(errno));
  char buf[8192];
  while (err.code == 0) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) err = errno_error(std::strerror(errno));
    if (n <= 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  if (err.code != 0) return err;
  return data;
}

bool is_valid_name(std::string_view s) {
  return !s.empty() && s.size() <= kMaxNameLength && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

bool is_valid_plugin_name(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

bool is_hex64(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return std::isxdigit(static_cast<unsigned char>(c));
         });
}

bool is_host_name(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
  });
}

// An IPv6 zone: an interface name (at most IF_NAMESIZE - 1 bytes) or index.
bool is_zone(std::string_view s) {
  return !s.empty() && s.size() < IF_NAMESIZE && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
  });
}

bool is_all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Checks that the string read from `key` is an absolute path: the daemon
// changes to / when it detaches, so a relative one would change meaning.
Result<std::string> absolute(const ConfigNode& n, std::string_view key, Result<std::string> v) {
  if (!v) return v;
  if (v->empty() || v->front() != '/') {
    return n.error_at(key, "'" + std::string(key) + "' in " + n.what() +
                               " must be an absolute path, not '" + *v + "'");
  }
  return v;
}

// Checks that the string read from `key` is one of `names`; returns its index.
template <size_t N>
Result<size_t> choice(const ConfigNode& n, std::string_view key, Result<std::string> v,
                      const char* const (&names)[N]) {
  if (!v) return v.error();
  for (size_t i = 0; i < N; ++i) {
    if (*v == names[i]) return i;
  }
  std::string list;
  for (size_t i = 0; i < N; ++i) list += std::string(i ? ", " : "") + names[i];
  return n.error_at(key, "'" + std::string(key) + "' in " + n.what() + " must be one of " + list +
                             ", not '" + *v + "'");
}

constexpr const char* kLogSinks[] = {"stderr", "syslog"};
constexpr const char* kLogLevels[] = {"debug", "info", "warn", "error"};
constexpr const char* kRoles[] = {"server", "client"};
constexpr const char* kConflictPolicies[] = {"server-wins", "client-wins", "newest-wins",
                                             "keep-both"};

// plugin_dir: one absolute path or a list of them.
Status parse_plugin_dirs(const ConfigNode& top, Config& cfg) {
  if (!top.has("plugin_dir")) return Status::Ok();
  ConfigNode dirs = top.child("plugin_dir", "plugin_dir");
  if (!dirs.yaml().IsSequence()) {
    auto dir = absolute(top, "plugin_dir", top.get_string("plugin_dir"));
    if (!dir) return dir.error();
    cfg.plugin_dirs.push_back(*dir);
    return Status::Ok();
  }
  for (const auto& item : dirs.yaml()) {
    ConfigNode entry(item, cfg.file, "plugin_dir");
    if (!item.IsScalar() || item.Scalar().empty() || item.Scalar().front() != '/') {
      return entry.error("each entry of 'plugin_dir' must be an absolute path");
    }
    cfg.plugin_dirs.push_back(item.Scalar());
  }
  return Status::Ok();
}

Status parse_clients(const ConfigNode& fs, FilesetConfig& out) {
  ConfigNode list = fs.child("clients", "clients of " + fs.what());
  if (!list.defined()) return Status::Ok();
  if (!list.yaml().IsSequence()) {
    return list.error("'clients' in " + fs.what() + " must be a list of {name, token_sha256}");
  }
  for (const auto& item : list.yaml()) {
    ConfigNode c(item, fs.file(), "a client of " + fs.what());
    if (!item.IsMap()) return c.error(c.what() + " must be a mapping with name and token_sha256");
    if (auto st = c.expect_map({"name", "token_sha256"}); !st) return st.error();
    auto name = c.get_string("name");
    if (!name) return name.error();
    if (!is_valid_name(*name)) {
      return c.error_at("name", "client name '" + *name + "' in " + fs.what() +
                                    " must be 1 to 64 letters, digits, '.', '_' or '-'");
    }
    c = ConfigNode(item, fs.file(), "client '" + *name + "' of " + fs.what());
    for (const ClientEntry& other : out.clients) {
      if (other.name == *name) {
        return c.error_at("name", "client '" + *name + "' appears twice in " + fs.what());
      }
    }
    auto hash = c.get_string("token_sha256");
    if (!hash) return hash.error();
    if (!is_hex64(*hash)) {
      return c.error_at("token_sha256", "'token_sha256' of " + c.what() +
                                            " must be 64 hex digits (sha256sum of the token)");
    }
    std::string lower = *hash;
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    out.clients.push_back({*name, std::move(lower)});
  }
  return Status::Ok();
}

// The token is read now rather than when the daemon first connects, so that
// a missing or unreadable file is reported at start-up and on reload.
Status read_token(const ConfigNode& fs, FilesetConfig& out) {
  auto file = fs.get_string("token_file");
  if (!file) return file.error();
  if (file->empty()) return fs.error_at("token_file", "'token_file' in " + fs.what() + " is empty");
  std::filesystem::path path(*file);
  if (path.is_relative()) path = std::filesystem::path(fs.file()).parent_path() / path;
  out.token_file = path.lexically_normal().string();
  struct stat st {};
  auto data = read_file(out.token_file, &st);
  if (!data) {
    return make_error(data.error().code, fs.where("token_file") + "cannot read token_file '" +
                                             out.token_file + "' of " + fs.what() + ": " +
                                             data.error().message);
  }
  std::string token = std::move(*data);
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) {
    token.pop_back();
  }
  if (token.empty()) {
    return fs.error_at("token_file",
                       "token_file '" + out.token_file + "' of " + fs.what() + " holds no token");
  }
  // The token goes into an Authorization header, so a line break or a control
  // character in it would corrupt or inject header lines.
  bool printable =
      std::all_of(token.begin(), token.end(), [](char c) { return c > ' ' && c < 0x7f; });
  if (!printable) {
    return fs.error_at("token_file", "token_file '" + out.token_file + "' of " + fs.what() +
                                         " must hold one token of printable characters");
  }
  if (st.st_mode & (S_IRGRP | S_IROTH)) {
    log_warn("token file '{}' of {} is readable by group or others; chmod 600 it", out.token_file,
             fs.what());
  }
  out.token = std::move(token);
  return Status::Ok();
}

Status parse_server(const ConfigNode& fs, FilesetConfig& out) {
  auto listen = fs.get_string("listen", "0.0.0.0:370");
  if (!listen) return listen.error();
  auto hp = parse_host_port(*listen, kDefaultPort);
  if (!hp) return fs.error_at("listen", "'listen' in " + fs.what() + ": " + hp.error().message);
  out.listen_host = hp->first;
  out.listen_port = hp->second;
  if (auto st = parse_clients(fs, out); !st) return st;
  if (out.auth_none && !out.clients.empty()) {
    return fs.error_at("auth", fs.what() + " says auth: none but lists clients; remove one");
  }
  if (!out.auth_none && out.clients.empty()) {
    return fs.error(fs.what() +
                    " has no clients: list clients with token_sha256, or say auth: none");
  }
  return Status::Ok();
}

Status parse_client(const ConfigNode& fs, FilesetConfig& out) {
  auto server = fs.get_string("server");
  if (!server) return server.error();
  std::string_view addr = *server;
  if (size_t at = addr.find('@'); at != std::string_view::npos) {
    out.server_user = std::string(addr.substr(0, at));
    addr.remove_prefix(at + 1);
    if (out.server_user.empty()) {
      return fs.error_at("server", "'server' in " + fs.what() + " has an empty user before '@'");
    }
  }
  auto hp = parse_host_port(addr, kDefaultPort);
  if (!hp) return fs.error_at("server", "'server' in " + fs.what() + ": " + hp.error().message);
  out.server_host = hp->first;
  out.server_port = hp->second;
  if (out.auth_none) {
    if (fs.has("token_file")) {
      return fs.error_at("token_file", fs.what() + " says auth: none but has a token_file");
    }
  } else if (!fs.has("token_file")) {
    return fs.error(fs.what() + " has no token_file: name the file holding its token, or say " +
                    "auth: none");
  } else if (auto st = read_token(fs, out); !st) {
    return st;
  }
  auto wb = fs.get_bool("write_back", false);
  if (!wb) return wb.error();
  out.write_back = *wb;
  auto on_demand = fs.get_bool("data_on_demand", false);
  if (!on_demand) return on_demand.error();
  out.data_on_demand = *on_demand;
  return Status::Ok();
}

// Checks the keys of a fileset entry: unknown ones first, so that a typo is
// reported as such rather than as the missing key it was meant to be.
Status check_fileset_keys(const ConfigNode& fs, const FilesetConfig& out) {
  for (const auto& kv : fs.yaml()) {
    ConfigNode key(kv.first, fs.file(), fs.what());
    if (!kv.first.IsScalar()) return key.error("keys in " + fs.what() + " must be names");
    const std::string& k = kv.first.Scalar();
    if (!is_fileset_key(k) && k != out.backend && k != out.transport) {
      return key.error("unknown key '" + k + "' in " + fs.what());
    }
  }
  // yaml-cpp keeps duplicate keys and lookups see only the first, so a
  // repeated key would silently lose its second value.
  std::vector<std::string> seen;
  for (const auto& kv : fs.yaml()) {
    const std::string& k = kv.first.Scalar();
    if (std::find(seen.begin(), seen.end(), k) != seen.end()) {
      return ConfigNode(kv.first, fs.file(), fs.what())
          .error("key '" + k + "' appears twice in " + fs.what());
    }
    seen.push_back(k);
  }
  return Status::Ok();
}

Result<FilesetConfig> parse_fileset(const YAML::Node& item, size_t index, const Config& cfg) {
  // The entry's own name makes the best label even before it is validated.
  std::string what = "fileset #" + std::to_string(index + 1);
  ConfigNode fs(item, cfg.file, what);
  if (!item.IsMap()) return fs.error(what + " must be a mapping with name, path and role");
  // A missing or malformed name is reported below, with the other keys.
  if (auto name = fs.get_string("name"); name) {
    fs = ConfigNode(item, cfg.file, "fileset '" + *name + "'");
  }

  FilesetConfig out;
  out.node = fs;
  auto backend = fs.get_string("backend", out.backend);
  if (!backend) return backend.error();
  auto transport = fs.get_string("transport", out.transport);
  if (!transport) return transport.error();
  for (auto [key, value] : {std::pair{"backend", &*backend}, std::pair{"transport", &*transport}}) {
    if (!is_valid_plugin_name(*value)) {
      return fs.error_at(key, std::string(key) + " '" + *value + "' in " + fs.what() +
                                  " must be lowercase letters, digits, '_' or '-'");
    }
    // The plugin's subtree is the key named like it, so a plugin named like
    // a core key could never be given one.
    if (is_fileset_key(*value)) {
      return fs.error_at(key, std::string(key) + " '" + *value + "' in " + fs.what() +
                                  " has the name of a fileset key");
    }
  }
  out.backend = *backend;
  out.transport = *transport;
  if (auto st = check_fileset_keys(fs, out); !st) return st.error();

  auto name = fs.get_string("name");
  if (!name) return name.error();
  if (!is_valid_name(*name)) {
    return fs.error_at(
        "name", "fileset name '" + *name + "' must be 1 to 64 letters, digits, '.', '_' or '-'");
  }
  for (const FilesetConfig& other : cfg.filesets) {
    if (other.name == *name) {
      std::string first = other.node.where("name");
      first.resize(first.size() - 2);  // where() ends in ": "
      return fs.error_at("name",
                         "fileset '" + *name + "' is defined twice (first at " + first + ")");
    }
  }
  out.name = *name;

  auto path = absolute(fs, "path", fs.get_string("path"));
  if (!path) return path.error();
  out.path = *path;

  auto role = choice(fs, "role", fs.get_string("role"), kRoles);
  if (!role) return role.error();
  out.role = static_cast<Role>(*role);
  Role other_role = out.role == Role::Server ? Role::Client : Role::Server;
  std::span<const std::string_view> foreign = kServerKeys;
  if (out.role == Role::Server) foreign = kClientKeys;
  for (std::string_view key : foreign) {
    if (fs.has(key)) {
      return fs.error_at(key, "'" + std::string(key) + "' is a " + role_name(other_role) +
                                  " key, but " + fs.what() + " is a " + role_name(out.role));
    }
  }

  if (fs.has("auth")) {
    auto auth = fs.get_string("auth");
    if (!auth) return auth.error();
    if (*auth != "none") {
      return fs.error_at("auth", "'auth' in " + fs.what() + " can only be 'none', not '" + *auth +
                                     "'; leave it out to require tokens");
    }
    out.auth_none = true;
  }

  auto conflict =
      choice(fs, "conflict", fs.get_string("conflict", "server-wins"), kConflictPolicies);
  if (!conflict) return conflict.error();
  out.conflict = static_cast<ConflictPolicy>(*conflict);

  Status st = out.role == Role::Server ? parse_server(fs, out) : parse_client(fs, out);
  if (!st) return st.error();

  out.backend_node = fs.child(out.backend, "'" + out.backend + "' settings of " + fs.what());
  out.transport_node = fs.child(out.transport, "'" + out.transport + "' settings of " + fs.what());
  return out;
}

Result<Config> parse_config(const YAML::Node& root, const std::string& file) {
  Config cfg;
  cfg.file = file;
  ConfigNode top(root, file, "the top level");
  if (!root.IsMap()) {
    return top.error("the configuration must be a mapping with a 'filesets' list");
  }
  if (auto st = top.expect_map({"state_dir", "plugin_dir", "log", "log_level", "pid_file",
                                "control_socket", "relay_socket", "filesets"});
      !st) {
    return st.error();
  }

  auto state_dir = absolute(top, "state_dir", top.get_string("state_dir", cfg.state_dir));
  if (!state_dir) return state_dir.error();
  cfg.state_dir = *state_dir;
  if (auto st = parse_plugin_dirs(top, cfg); !st) return st.error();
  auto sink = choice(top, "log", top.get_string("log", "stderr"), kLogSinks);
  if (!sink) return sink.error();
  cfg.log_sink = static_cast<LogSink>(*sink);
  auto level = choice(top, "log_level", top.get_string("log_level", "info"), kLogLevels);
  if (!level) return level.error();
  cfg.log_level = static_cast<LogLevel>(*level);
  auto pid_file =
      absolute(top, "pid_file", top.get_string("pid_file", cfg.state_dir + "/intersyncd.pid"));
  if (!pid_file) return pid_file.error();
  cfg.pid_file = *pid_file;
  auto socket = absolute(top, "control_socket",
                         top.get_string("control_socket", cfg.state_dir + "/control.sock"));
  if (!socket) return socket.error();
  cfg.control_socket = *socket;
  auto relay =
      absolute(top, "relay_socket", top.get_string("relay_socket", cfg.state_dir + "/relay.sock"));
  if (!relay) return relay.error();
  cfg.relay_socket = *relay;

  if (!top.has("filesets")) return top.error("missing key 'filesets': list at least one fileset");
  ConfigNode filesets = top.child("filesets", "filesets");
  if (!filesets.yaml().IsSequence()) {
    return filesets.error("'filesets' must be a list of filesets");
  }
  if (filesets.yaml().size() == 0) {
    return filesets.error("'filesets' is empty: list at least one fileset");
  }
  for (size_t i = 0; i < filesets.yaml().size(); ++i) {
    auto fs = parse_fileset(filesets.yaml()[i], i, cfg);
    if (!fs) return fs.error();
    fs->control_socket = cfg.control_socket;
    cfg.filesets.push_back(std::move(*fs));
  }
  return cfg;
}

}  // namespace

Result<Config> load_config(const std::string& file) {
  auto text = read_file(file, nullptr);
  if (!text) return make_error(text.error().code, file + ": " + text.error().message);
  try {
    return parse_config(YAML::Load(*text), file);
  } catch (const YAML::Exception& e) {
    // Parser errors carry the position of the offending character; the few
    // others yaml-cpp may throw carry a null mark and get the file name only.
    std::string where = file + ":";
    if (!e.mark.is_null()) {
      where += std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1) + ":";
    }
    return make_error(-EINVAL, where + " " + e.msg);
  }
}

Result<std::pair<std::string, uint16_t>> parse_host_port(std::string_view s,
                                                         uint16_t default_port) {
  std::string_view host = s;
  std::string_view port;
  bool has_port = false;
  if (s.empty()) return make_error(-EINVAL, "the address is empty");
  if (s.front() == '[') {
    size_t close = s.find(']');
    if (close == std::string_view::npos) {
      return make_error(-EINVAL, "'" + std::string(s) + "' has no ']' after the IPv6 address");
    }
    host = s.substr(1, close - 1);
    std::string_view rest = s.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        return make_error(-EINVAL, "'" + std::string(s) + "': expected ':port' after ']'");
      }
      port = rest.substr(1);
      has_port = true;
    }
    // A zone ("fe80::1%eth0") is not part of the address inet_pton checks;
    // it must be an interface name or number. A NUL would end the address
    // early for inet_pton and let anything follow it.
    size_t percent = host.find('%');
    std::string addr(host.substr(0, percent));
    in6_addr a6;
    if (host.empty() || addr.find('\0') != std::string::npos ||
        ::inet_pton(AF_INET6, addr.c_str(), &a6) != 1) {
      return make_error(-EINVAL, "'" + std::string(host) + "' is not an IPv6 address");
    }
    if (percent != std::string_view::npos && !is_zone(host.substr(percent + 1))) {
      return make_error(-EINVAL, "'" + std::string(host) +
                                     "' has an invalid zone: expected an interface name or number");
    }
  } else {
    size_t colon = s.find(':');
    if (colon != std::string_view::npos && s.find(':', colon + 1) != std::string_view::npos) {
      return make_error(
          -EINVAL, "'" + std::string(s) + "': write an IPv6 address in brackets, as in [::1]:370");
    }
    if (colon != std::string_view::npos) {
      host = s.substr(0, colon);
      port = s.substr(colon + 1);
      has_port = true;
    }
    if (!is_host_name(host)) {
      return make_error(-EINVAL, "'" + std::string(host) + "' is not a host name or address");
    }
    // inet_aton() would take "370" as the address 0.0.1.114: a bare number
    // is almost surely a port written without its host.
    if (is_all_digits(host)) {
      return make_error(
          -EINVAL, "'" + std::string(host) + "' is not a host; write host:port, as in 0.0.0.0:370");
    }
  }
  if (!has_port) return std::pair{std::string(host), default_port};
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (!is_all_digits(port) || ec != std::errc() || end != port.data() + port.size() ||
      value > 65535) {
    return make_error(-EINVAL, "port '" + std::string(port) + "' must be a number from 0 to 65535");
  }
  return std::pair{std::string(host), static_cast<uint16_t>(value)};
}

const char* role_name(Role r) {
  return kRoles[static_cast<size_t>(r)];
}

const char* conflict_policy_name(ConflictPolicy p) {
  return kConflictPolicies[static_cast<size_t>(p)];
}

}  // namespace intersync
