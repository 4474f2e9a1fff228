// intersyncctl: asks a running intersyncd over its control socket.
//
//   intersyncctl -c /etc/intersync.yaml status [--json]
//   intersyncctl -c /etc/intersync.yaml conflicts [--json]
//   intersyncctl -c /etc/intersync.yaml confirm FSET
//   intersyncctl -c /etc/intersync.yaml fetch|pin|evict PATH   (data on demand)
//   intersyncctl --socket /var/intermezzo-0/control.sock status
//
// Exit status: 0 on an answer, 3 when the daemon is not running (as LSB
// status actions do), 1 on other errors.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "config.h"
#include "daemon.h"

using namespace intersync;

namespace {

constexpr int kNotRunning = 3;

// Sends one request line and reads the one reply line.
int ask(const std::string& socket_path, const nlohmann::json& request, std::string* reply) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 1;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof addr.sun_path) {
    std::fprintf(stderr, "intersyncctl: control socket path too long: %s\n", socket_path.c_str());
    close(fd);
    return 1;
  }
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int e = errno;
    close(fd);
    if (e == ENOENT || e == ECONNREFUSED) {
      std::fprintf(stderr, "intersyncctl: intersyncd is not running (no daemon at %s)\n",
                   socket_path.c_str());
      return kNotRunning;
    }
    std::fprintf(stderr, "intersyncctl: %s: %s\n", socket_path.c_str(), strerror(e));
    return 1;
  }
  std::string line = request.dump() + "\n";
  if (write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    close(fd);
    return 1;
  }
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) break;
    reply->append(buf, static_cast<size_t>(n));
  }
  close(fd);
  if (reply->empty()) {
    std::fprintf(stderr, "intersyncctl: the daemon closed the connection without answering\n");
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"intersyncctl: asks a running intersyncd"};
  std::string config_file = "/etc/intersync.yaml";
  std::string socket_path;
  bool json = false;
  app.add_option("-c,--config", config_file, "the daemon's configuration file")
      ->capture_default_str();
  app.add_option("--socket", socket_path,
                 "the control socket, instead of the one the configuration names (useful "
                 "while the file is being edited)");
  auto* status = app.add_subcommand("status",
                                    "per fileset: role, peers, journal position, "
                                    "what is pending, the last error");
  status->add_flag("--json", json, "print the daemon's answer as JSON");
  auto* conflicts = app.add_subcommand("conflicts", "conflicts met, where each losing version is");
  conflicts->add_flag("--json", json, "print the list as JSON");
  std::string fset;
  auto* confirm = app.add_subcommand(
      "confirm", "let a batch of deletions held by the mass-deletion guard go to the server");
  confirm->add_option("FSET", fset, "the fileset")->required();
  // Data on demand: PATH is a file or directory inside a client fileset.
  std::string demand_path;
  std::vector<CLI::App*> demand;
  for (auto [name, help] : {std::pair{"fetch",
                                      "fetch the content of PATH now (a file, or all "
                                      "of a directory)"},
                            std::pair{"pin", "fetch PATH and keep it fetched as it changes"},
                            std::pair{"evict",
                                      "drop the local content of PATH (it is fetched "
                                      "again when opened); unpins it"}}) {
    auto* sub = app.add_subcommand(name, help);
    sub->add_option("PATH", demand_path, "a path inside a client fileset")->required();
    demand.push_back(sub);
  }
  app.require_subcommand(1);
  CLI11_PARSE(app, argc, argv);

  if (socket_path.empty()) {
    auto config = load_config(config_file);
    if (!config) {
      std::fprintf(stderr, "intersyncctl: %s\n", config.error().message.c_str());
      return 1;
    }
    socket_path = config->control_socket;
  }
  nlohmann::json request{{"cmd", "status"}};
  if (conflicts->parsed()) request = {{"cmd", "conflicts"}};
  if (confirm->parsed()) request = {{"cmd", "confirm"}, {"fileset", fset}};
  for (auto* sub : demand) {
    if (!sub->parsed()) continue;
    std::string absolute = std::filesystem::absolute(demand_path).lexically_normal().string();
    if (absolute.size() > 1 && absolute.back() == '/') absolute.pop_back();
    request = {{"cmd", sub->get_name()}, {"path", absolute}};
    std::string reply;
    if (int rc = ask(socket_path, request, &reply); rc != 0) return rc;
    auto answer = nlohmann::json::parse(reply, nullptr, false);
    if (answer.is_discarded() || !answer.value("ok", false)) {
      std::fprintf(stderr, "intersyncctl: %s %s: %s\n", sub->get_name().c_str(), absolute.c_str(),
                   answer.is_object() ? answer.value("error", reply).c_str() : reply.c_str());
      return 1;
    }
    std::printf("%s: %s\n", sub->get_name().c_str(), absolute.c_str());
    return 0;
  }
  std::string reply;
  if (int rc = ask(socket_path, request, &reply); rc != 0) return rc;
  auto answer = nlohmann::json::parse(reply, nullptr, false);
  if (answer.is_discarded() || answer.contains("error")) {
    std::fprintf(stderr, "intersyncctl: bad answer from the daemon: %s", reply.c_str());
    return 1;
  }
  if (confirm->parsed()) {
    if (!answer.value("found", false)) {
      std::fprintf(stderr, "intersyncctl: no client fileset '%s'\n", fset.c_str());
      return 1;
    }
    std::printf("%s\n", answer.value("released", false) ? "deletions released to the server"
                                                        : "nothing was held");
    return 0;
  }
  if (conflicts->parsed()) {
    if (json) {
      std::printf("%s\n", answer["conflicts"].dump(2).c_str());
      return 0;
    }
    if (answer["conflicts"].empty()) std::printf("no conflicts\n");
    for (const auto& c : answer["conflicts"]) {
      std::string copy = c.value("copy", "");
      std::printf("%s: %s %s%s%s\n", c.value("fileset", "").c_str(), c.value("path", "").c_str(),
                  c.value("kind", c.value("detail", "")).c_str(),
                  copy.empty() ? "" : ", other version in ", copy.c_str());
    }
    return 0;
  }
  if (json) {
    std::printf("%s\n", answer.dump(2).c_str());
  } else {
    std::printf("%s", format_status(answer).c_str());
  }
  return 0;
}
