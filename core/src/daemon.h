// The daemon: one libuv loop running every configured fileset, its plugins,
// the shared listeners, the control socket, and the signal handling
// (SIGTERM/SIGINT stop cleanly, SIGHUP reloads the configuration, keeping
// the running one if the new file is broken).
#pragma once

#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "config.h"
#include "fileset_client.h"
#include "fileset_server.h"
#include "plugin_loader.h"
#include "relay_socket.h"
#include "request_router.h"

namespace intersync {

class Daemon {
 public:
  explicit Daemon(Config config);
  ~Daemon();

  // Runs until stopped by a signal. Returns the process exit status.
  // `on_ready` runs once everything started (the pid file is written then).
  int run(std::function<void()> on_ready = {});

  // Loads every plugin the configuration names and lets each validate its
  // YAML subtree, without starting anything (intersyncd --check).
  static Status check(const Config& config);

  nlohmann::json status() const;

 private:
  struct Listener {
    std::unique_ptr<Transport> transport;
    std::unique_ptr<RequestRouter> router;
    std::string address;
  };
  Status start_filesets();
  void stop_filesets();
  void reload();
  void shutdown();
  Status open_control_socket();
  void close_control_socket();
  // Answers one control request by calling `respond` once, now or later.
  void on_control_request(const std::string& line, std::function<void(std::string)> respond);
  // fetch, pin, evict: by `fileset` and relative `path` (izofs), or by
  // absolute `path` (intersyncctl).
  void on_demand_request(const std::string& cmd, const nlohmann::json& req,
                         std::function<void(std::string)> respond);

  Config config_;
  uv_loop_t loop_{};
  std::unique_ptr<PluginRegistry> plugins_;
  // Registries a reload replaced. Their libraries stay loaded until the
  // daemon exits: the stopped filesets' handles are closed by the loop
  // later, and their close callbacks are plugin code.
  std::vector<std::unique_ptr<PluginRegistry>> retired_plugins_;
  std::map<std::string, Listener> listeners_;  // "transport host:port" -> listener
  std::vector<std::unique_ptr<FilesetServer>> servers_;
  std::vector<std::unique_ptr<FilesetClient>> clients_;
  std::map<std::string, std::string> server_listener_;  // fset -> listener key
  std::unique_ptr<RelaySocket> relay_;                  // while there are server filesets
  uv_signal_t sigterm_{}, sigint_{}, sighup_{};
  uv_pipe_t* control_ = nullptr;
  uint64_t started_at_ = 0;
  unsigned reloads_ = 0, reloads_failed_ = 0;
  std::string last_reload_error_;
  int exit_status_ = 0;
};

// Builds the status text intersyncctl prints from the daemon's JSON.
std::string format_status(const nlohmann::json& status);

}  // namespace intersync
