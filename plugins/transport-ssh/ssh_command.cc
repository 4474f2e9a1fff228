// Reading the ssh settings and building the ssh command line; see
// ssh_command.h.
#include "ssh_command.h"

#include <algorithm>
#include <filesystem>

#include "intersync/net_address.h"

namespace intersync::ssh {
namespace {

// A file named in the configuration, relative to the configuration file's
// directory unless absolute (as token_file is).
std::string config_path(const ConfigNode& node, const std::string& path) {
  if (path.empty() || path.front() == '/' || node.file().empty()) return path;
  return (std::filesystem::path(node.file()).parent_path() / path).lexically_normal().string();
}

bool is_one_line(const std::string& s) {
  return !s.empty() && s.find_first_of("\n\r") == std::string::npos;
}

}  // namespace

Result<SshSettings> parse_ssh_settings(const ConfigNode& node) {
  SshSettings settings;
  if (!node.defined()) return settings;
  if (Status status = node.expect_map(
          {"identity_file", "known_hosts", "remote_config", "remote_command", "options", "port"});
      !status) {
    return status.error();
  }
  for (auto [key, value] : {std::pair{"identity_file", &settings.identity_file},
                            std::pair{"known_hosts", &settings.known_hosts}}) {
    auto path = node.get_string(key, "");
    if (!path) return path.error();
    *value = config_path(node, *path);
  }
  for (auto [key, value] : {std::pair{"remote_config", &settings.remote_config},
                            std::pair{"remote_command", &settings.remote_command}}) {
    auto text = node.get_string(key, *value);
    if (!text) return text.error();
    if (!is_one_line(*text)) {
      return node.error_at(
          key, "'" + std::string(key) + "' in " + node.what() + " must be one non-empty line");
    }
    *value = *text;
  }
  if (node.has("port")) {
    auto port = node.get_int("port", 22, 1, 65535);
    if (!port) return port.error();
    settings.port = static_cast<uint16_t>(*port);
  }
  if (node.has("options")) {
    ConfigNode options = node.child("options", "'options' in " + node.what());
    if (!options.yaml().IsSequence()) {
      return node.error_at(
          "options", "'options' in " + node.what() + " must be a list of ssh options (Name=value)");
    }
    for (const auto& item : options.yaml()) {
      // An option starting with '-' would be taken for another flag.
      if (!item.IsScalar() || !is_one_line(item.Scalar()) || item.Scalar().front() == '-') {
        return ConfigNode(item, node.file(), options.what())
            .error("each of " + options.what() +
                   " must be an ssh option as -o takes it "
                   "(Name=value)");
      }
      settings.options.push_back(item.Scalar());
    }
  }
  return settings;
}

std::string shell_quote(std::string_view word) {
  bool plain = !word.empty() && std::all_of(word.begin(), word.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           std::string_view("@%+=:,./_-").find(c) != std::string_view::npos;
  });
  if (plain) return std::string(word);
  std::string out = "'";
  for (char c : word) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::optional<uint16_t> ssh_port(const SshSettings& settings, const ClientTarget& target) {
  if (settings.port) return settings.port;
  if (target.port != kUnnamedPort) return target.port;
  return std::nullopt;
}

std::string ssh_endpoint(const SshSettings& settings, const ClientTarget& target) {
  std::string host = strip_brackets(target.host);
  std::string user = target.user.empty() ? std::string() : target.user + "@";
  auto port = ssh_port(settings, target);
  return user + (port ? format_endpoint(host, *port) : host);
}

std::vector<std::string> ssh_command_line(const SshSettings& settings, const ClientTarget& target) {
  std::vector<std::string> argv = {"ssh", "-T", "-o", "BatchMode=yes"};
  if (auto port = ssh_port(settings, target)) {
    argv.insert(argv.end(), {"-p", std::to_string(*port)});
  }
  if (!settings.identity_file.empty()) {
    argv.insert(argv.end(), {"-i", settings.identity_file, "-o", "IdentitiesOnly=yes"});
  }
  if (!settings.known_hosts.empty()) {
    argv.insert(argv.end(), {"-o", "UserKnownHostsFile=" + settings.known_hosts});
  }
  argv.insert(argv.end(), {"-o", "StrictHostKeyChecking=yes"});
  for (const auto& option : settings.options) argv.insert(argv.end(), {"-o", option});
  unsigned timeout_s = std::max(1u, (target.connect_timeout_ms + 999) / 1000);
  argv.insert(argv.end(), {"-o", "ConnectTimeout=" + std::to_string(timeout_s), "--"});
  std::string host = strip_brackets(target.host);
  argv.push_back(target.user.empty() ? host : target.user + "@" + host);
  argv.push_back(settings.remote_command + " --serve-stdio --fset " + shell_quote(target.fileset) +
                 " -c " + shell_quote(settings.remote_config));
  return argv;
}

}  // namespace intersync::ssh
