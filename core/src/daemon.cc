// The daemon's life cycle, listeners and control socket; see daemon.h.
#include "daemon.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <ctime>
#include <map>

#include "intersync/log.h"
#include "intersync_build_config.h"
#include "json_text.h"
#include "path_util.h"

namespace intersync {
namespace {

std::string listener_key(const FilesetConfig& f) {
  return f.transport + " " + f.listen_host + ":" + std::to_string(f.listen_port);
}

// Filesets sharing a listener are served by the transport configured for
// the first of them, so their transport settings (TLS among them) must
// agree: a fileset must never be served with another's.
Status check_shared_listeners(const Config& config) {
  std::map<std::string, const FilesetConfig*> first;
  auto settings = [](const FilesetConfig& f) {
    return f.transport_node.defined() ? YAML::Dump(f.transport_node.yaml()) : std::string();
  };
  for (const auto& f : config.filesets) {
    if (f.role != Role::Server) continue;
    auto [it, inserted] = first.emplace(listener_key(f), &f);
    if (!inserted && settings(*it->second) != settings(f)) {
      return f.node.error_at(f.transport, "fileset '" + f.name + "' shares its listener with " +
                                              "fileset '" + it->second->name + "' but has other '" +
                                              f.transport + "' settings; make them the same or " +
                                              "listen elsewhere");
    }
  }
  return {};
}

Status mkdir_p(const std::string& path, mode_t mode) {
  std::string cur;
  for (size_t i = 0; i <= path.size(); ++i) {
    if (i == path.size() || (path[i] == '/' && i > 0)) {
      cur = path.substr(0, i);
      if (::mkdir(cur.c_str(), mode) != 0 && errno != EEXIST) {
        return errno_error("cannot create " + cur + ": " + strerror(errno));
      }
    }
  }
  return {};
}

// One control-socket connection: reads a request line, writes one reply.
// One control connection: a request line in, one reply line out, then
// closed. The reply may come later (a fetch waits for the download); it is
// dropped if the connection is gone by then.
struct ControlConn {
  uv_pipe_t pipe{};
  std::string in;
  Daemon* daemon = nullptr;
  bool answered = false;
  std::shared_ptr<bool> open = std::make_shared<bool>(true);
};

void close_control_conn(ControlConn* c) {
  if (!*c->open) return;
  *c->open = false;
  uv_close(reinterpret_cast<uv_handle_t*>(&c->pipe),
           [](uv_handle_t* h) { delete static_cast<ControlConn*>(h->data); });
}

void send_control_reply(ControlConn* c, std::string reply) {
  auto* text = new std::string(std::move(reply));
  text->push_back('\n');
  auto* req = new uv_write_t;
  req->data = text;
  uv_buf_t out = uv_buf_init(text->data(), static_cast<unsigned>(text->size()));
  int rc = uv_write(req, reinterpret_cast<uv_stream_t*>(&c->pipe), &out, 1, [](uv_write_t* w, int) {
    auto* conn = static_cast<ControlConn*>(w->handle->data);
    delete static_cast<std::string*>(w->data);
    delete w;
    close_control_conn(conn);
  });
  if (rc != 0) {
    delete text;
    delete req;
    close_control_conn(c);
  }
}

}  // namespace

Daemon::Daemon(Config config) : config_(std::move(config)) {
  uv_loop_init(&loop_);
}

Daemon::~Daemon() {
  // Let close callbacks of everything stopped run before the loop goes.
  uv_run(&loop_, UV_RUN_DEFAULT);
  uv_loop_close(&loop_);
}

Status Daemon::check(const Config& config) {
  if (Status s = check_shared_listeners(config); !s) return s;
  PluginRegistry plugins(config.plugin_dirs);
  for (const auto& f : config.filesets) {
    if (f.role == Role::Server || f.write_back) {
      auto b = plugins.create_backend(f.backend);
      if (!b) return b.error();
      if (Status s = (*b)->configure(f.backend_node); !s) return s;
    }
    auto t = plugins.create_transport(f.transport);
    if (!t) return t.error();
    if (Status s = (*t)->configure(f.transport_node); !s) return s;
  }
  return {};
}

Status Daemon::start_filesets() {
  if (Status s = check_shared_listeners(config_); !s) return s;
  if (Status s = mkdir_p(config_.state_dir, 0700); !s) return s;
  if (plugins_) retired_plugins_.push_back(std::move(plugins_));
  plugins_ = std::make_unique<PluginRegistry>(config_.plugin_dirs);
  for (const auto& f : config_.filesets) {
    if (f.auth_none) {
      log_warn(
          "fileset '{}': authentication is OFF (auth: none): anyone who can reach {} "
          "can read it",
          f.name, f.role == Role::Server ? "the listener" : "the server");
    }
    auto transport = plugins_->create_transport(f.transport);
    if (!transport) return transport.error();
    if (Status s = (*transport)->configure(f.transport_node); !s) return s;
    if (f.role == Role::Client) {
      std::unique_ptr<Backend> watcher;
      if (f.write_back) {
        auto backend = plugins_->create_backend(f.backend);
        if (!backend) return backend.error();
        if (Status s = (*backend)->configure(f.backend_node); !s) return s;
        watcher = std::move(*backend);
      }
      auto client = std::make_unique<FilesetClient>(&loop_, f, config_.state_dir);
      if (Status s = client->start(std::move(*transport), std::move(watcher)); !s) return s;
      clients_.push_back(std::move(client));
      continue;
    }
    auto backend = plugins_->create_backend(f.backend);
    if (!backend) return backend.error();
    if (Status s = (*backend)->configure(f.backend_node); !s) return s;
    std::string key = listener_key(f);
    Listener& l = listeners_[key];
    if (!l.transport) {
      l.transport = std::move(*transport);
      l.router = std::make_unique<RequestRouter>();
      auto bound = l.transport->listen(&loop_, f.listen_host, f.listen_port, l.router.get());
      if (!bound) {
        listeners_.erase(key);
        return make_error(bound.error().code,
                          "fileset '" + f.name + "': cannot listen on " + f.listen_host + ":" +
                              std::to_string(f.listen_port) + ": " + bound.error().message);
      }
      l.address = *bound;
      log_info("listening on {} ({})", l.address, f.transport);
    }
    auto server = std::make_unique<FilesetServer>(&loop_, f, config_.state_dir);
    if (Status s = server->start(std::move(*backend)); !s) return s;
    l.router->add(server.get());
    server_listener_[f.name] = key;
    servers_.push_back(std::move(server));
  }
  if (servers_.empty()) return {};
  relay_ = std::make_unique<RelaySocket>(&loop_, config_.relay_socket);
  for (auto& s : servers_) relay_->router().add(s.get());
  return relay_->open();
}

void Daemon::stop_filesets() {
  for (auto& c : clients_) c->stop();
  clients_.clear();
  relay_.reset();
  for (auto& [key, l] : listeners_) l.transport->stop();
  for (auto& s : servers_) s->stop();
  servers_.clear();
  listeners_.clear();
  server_listener_.clear();
}

void Daemon::reload() {
  log_info("SIGHUP: reloading {}", config_.file);
  auto fresh = load_config(config_.file);
  Status checked = fresh ? check(*fresh) : Status(fresh.error());
  if (!checked) {
    ++reloads_failed_;
    last_reload_error_ = checked.error().message;
    log_error("reload failed, keeping the running configuration: {}", last_reload_error_);
    return;
  }
  ++reloads_;
  last_reload_error_.clear();
  std::string old_socket = config_.control_socket;
  stop_filesets();
  config_ = std::move(*fresh);
  log_setup(config_.log_sink, config_.log_level);
  if (config_.control_socket != old_socket) {
    close_control_socket();
    if (Status s = open_control_socket(); !s) log_error("{}", s.error().message);
  }
  if (Status s = start_filesets(); !s) {
    log_error("reload: {}", s.error().message);
    exit_status_ = 1;
    shutdown();
    return;
  }
  log_info("reload done: {} fileset(s)", config_.filesets.size());
}

void Daemon::shutdown() {
  stop_filesets();
  close_control_socket();
  for (uv_signal_t* s : {&sigterm_, &sigint_, &sighup_}) {
    if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(s))) {
      uv_close(reinterpret_cast<uv_handle_t*>(s), nullptr);
    }
  }
}

Status Daemon::open_control_socket() {
  ::unlink(config_.control_socket.c_str());
  control_ = new uv_pipe_t;
  uv_pipe_init(&loop_, control_, 0);
  control_->data = this;
  int rc = uv_pipe_bind(control_, config_.control_socket.c_str());
  if (rc == 0) {
    chmod(config_.control_socket.c_str(), 0600);
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(control_), 16, [](uv_stream_t* srv, int st) {
      if (st != 0) return;
      auto* self = static_cast<Daemon*>(srv->data);
      auto* c = new ControlConn;
      c->daemon = self;
      uv_pipe_init(srv->loop, &c->pipe, 0);
      c->pipe.data = c;
      if (uv_accept(srv, reinterpret_cast<uv_stream_t*>(&c->pipe)) != 0) {
        close_control_conn(c);
        return;
      }
      uv_read_start(
          reinterpret_cast<uv_stream_t*>(&c->pipe),
          [](uv_handle_t*, size_t, uv_buf_t* b) {
            static thread_local char buf[4096];
            *b = uv_buf_init(buf, sizeof buf);
          },
          [](uv_stream_t* s, ssize_t n, const uv_buf_t* b) {
            auto* c = static_cast<ControlConn*>(s->data);
            if (c->answered) {
              // The request is in; a reply still to come closes it.
              if (n < 0) uv_read_stop(s);
              return;
            }
            if (n < 0) return close_control_conn(c);
            c->in.append(b->base, static_cast<size_t>(n));
            size_t nl = c->in.find('\n');
            if (nl == std::string::npos) {
              if (c->in.size() > 65536) close_control_conn(c);
              return;
            }
            c->answered = true;
            std::weak_ptr<bool> open = c->open;
            c->daemon->on_control_request(c->in.substr(0, nl), [c, open](std::string reply) {
              if (auto o = open.lock(); o && *o) send_control_reply(c, std::move(reply));
            });
          });
    });
  }
  if (rc != 0) {
    close_control_socket();
    return make_error(rc, "control socket " + config_.control_socket + ": " + uv_strerror(rc));
  }
  return {};
}

void Daemon::close_control_socket() {
  if (!control_) return;
  uv_close(reinterpret_cast<uv_handle_t*>(control_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_pipe_t*>(h); });
  control_ = nullptr;
  ::unlink(config_.control_socket.c_str());
}

void Daemon::on_control_request(const std::string& line, std::function<void(std::string)> respond) {
  auto req = nlohmann::json::parse(line, nullptr, false);
  std::string cmd = req.is_object() && req.contains("cmd") && req["cmd"].is_string()
                        ? req["cmd"].get<std::string>()
                        : std::string();
  if (cmd == "status") {
    respond(json_text(status()));
  } else if (cmd == "conflicts") {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& s : servers_) {
      for (auto& c : s->conflicts()) list.push_back(c);
    }
    for (const auto& c : clients_) {
      for (auto& e : c->conflicts()) list.push_back(e);
    }
    respond(json_text(nlohmann::json{{"conflicts", list}}));
  } else if (cmd == "confirm") {
    std::string fset = req.value("fileset", "");
    bool found = false, held = false;
    for (auto& c : clients_) {
      if (c->config().name == fset) {
        found = true;
        held = c->confirm();
      }
    }
    respond(nlohmann::json{{"fileset", fset}, {"found", found}, {"released", held}}.dump());
  } else if (cmd == "fetch" || cmd == "pin" || cmd == "evict") {
    on_demand_request(cmd, req, std::move(respond));
  } else {
    respond(nlohmann::json{{"error", "unknown command '" + cmd + "'"}}.dump());
  }
}

void Daemon::on_demand_request(const std::string& cmd, const nlohmann::json& req,
                               std::function<void(std::string)> respond) {
  auto fail = [&](const std::string& why) { respond(nlohmann::json{{"error", why}}.dump()); };
  std::string fset = req.value("fileset", ""), path = req.value("path", "");
  FilesetClient* target = nullptr;
  std::string rel;
  for (auto& c : clients_) {
    const std::string& root = c->config().path;
    if (!fset.empty()) {
      if (c->config().name != fset) continue;
      target = c.get();
      rel = path;
    } else if (path == root) {
      target = c.get();
    } else if (path.size() > root.size() && path.starts_with(root) && path[root.size()] == '/') {
      target = c.get();
      rel = path.substr(root.size() + 1);
    }
    if (target) break;
  }
  if (!target) {
    return fail(fset.empty() ? "'" + path + "' is in no client fileset of this daemon"
                             : "no client fileset '" + fset + "'");
  }
  auto normal = normalize_rel_path(rel);
  if (!normal) return fail(normal.error().message);
  target->on_demand(cmd, *normal, [respond = std::move(respond)](Status s) {
    respond(s ? nlohmann::json{{"ok", true}}.dump()
              : json_text(nlohmann::json{{"error", s.error().message}}));
  });
}

nlohmann::json Daemon::status() const {
  nlohmann::json j;
  j["daemon"] = {{"pid", getpid()},
                 {"version", INTERSYNC_VERSION},
                 {"config", config_.file},
                 {"uptime_seconds", static_cast<uint64_t>(time(nullptr)) - started_at_},
                 {"reloads", reloads_},
                 {"reloads_failed", reloads_failed_},
                 {"last_reload_error", last_reload_error_}};
  j["filesets"] = nlohmann::json::array();
  for (const auto& s : servers_) {
    nlohmann::json f = s->status();
    auto key = server_listener_.find(s->config().name);
    if (key != server_listener_.end()) {
      const Listener& l = listeners_.at(key->second);
      f["listen"] = l.address;
      f["transport"] = s->config().transport;
      f["peers"] = l.router->peers(s->config().name);
    }
    if (relay_) {
      for (auto& p : relay_->router().peers(s->config().name)) f["peers"].push_back(p);
    }
    j["filesets"].push_back(std::move(f));
  }
  for (const auto& c : clients_) j["filesets"].push_back(c->status());
  return j;
}

namespace {

// Refuses to start twice: a pid file naming a live process wins.
Status claim_pid_file(const std::string& path) {
  if (FILE* f = fopen(path.c_str(), "r")) {
    long pid = 0;
    int n = fscanf(f, "%ld", &pid);
    fclose(f);
    if (n == 1 && pid > 0 && pid != getpid() && kill(static_cast<pid_t>(pid), 0) == 0) {
      return make_error(
          -EEXIST, "intersyncd is already running (pid " + std::to_string(pid) + ", " + path + ")");
    }
  }
  std::string tmp = path + ".new";
  FILE* f = fopen(tmp.c_str(), "w");
  if (!f) return errno_error("cannot write pid file " + tmp + ": " + strerror(errno));
  fprintf(f, "%d\n", getpid());
  fclose(f);
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    return errno_error("cannot write pid file " + path + ": " + strerror(errno));
  }
  return {};
}

}  // namespace

int Daemon::run(std::function<void()> on_ready) {
  started_at_ = static_cast<uint64_t>(time(nullptr));
  if (Status s = mkdir_p(config_.state_dir, 0700); !s) {
    log_error("{}", s.error().message);
    return 1;
  }
  if (Status s = claim_pid_file(config_.pid_file); !s) {
    log_error("{}", s.error().message);
    return 1;
  }
  if (Status s = open_control_socket(); !s) {
    log_error("{}", s.error().message);
    ::unlink(config_.pid_file.c_str());
    return 1;
  }
  if (Status s = start_filesets(); !s) {
    log_error("{}", s.error().message);
    stop_filesets();
    close_control_socket();
    ::unlink(config_.pid_file.c_str());
    return 1;
  }
  auto on_signal = [](uv_signal_t* h, int signum) {
    auto* self = static_cast<Daemon*>(h->data);
    if (signum == SIGHUP) return self->reload();
    log_info("{}: stopping", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    self->shutdown();
  };
  for (auto [handle, signum] :
       {std::pair{&sigterm_, SIGTERM}, {&sigint_, SIGINT}, {&sighup_, SIGHUP}}) {
    uv_signal_init(&loop_, handle);
    handle->data = this;
    uv_signal_start(handle, on_signal, signum);
  }
  log_info("intersyncd {} running with {} fileset(s) (pid {})", INTERSYNC_VERSION,
           config_.filesets.size(), getpid());
  if (on_ready) on_ready();
  uv_run(&loop_, UV_RUN_DEFAULT);
  ::unlink(config_.pid_file.c_str());
  log_info("intersyncd stopped");
  return exit_status_;
}

std::string format_status(const nlohmann::json& st) {
  std::string out;
  const auto& d = st["daemon"];
  out += fmt::format("intersyncd {} (pid {}), up {} s, config {}\n", d.value("version", "?"),
                     d.value("pid", 0), d.value("uptime_seconds", 0), d.value("config", "?"));
  for (const auto& f : st["filesets"]) {
    out += fmt::format("\nfileset {} ({}) {}\n", f.value("name", "?"), f.value("role", "?"),
                       f.value("path", "?"));
    if (f.value("role", "") == "server") {
      out += fmt::format("  listening on {} ({}), uuid {}\n", f.value("listen", "?"),
                         f.value("transport", "?"), f.value("uuid", "?"));
      out += fmt::format("  journal head {}, {} entries, {} changes pending, {} bytes served\n",
                         f.value("head", 0), f.value("entries", 0), f.value("pending_changes", 0),
                         f.value("bytes_served", 0));
      std::string peers;
      for (const auto& p : f.value("peers", nlohmann::json::array())) {
        peers +=
            fmt::format("{}{} ({}, idle {} s)", peers.empty() ? "" : ", ", p.value("name", "?"),
                        p.value("address", "?"), p.value("idle_seconds", 0));
      }
      out += "  peers: " + (peers.empty() ? std::string("none") : peers) + "\n";
    } else {
      out += fmt::format("  server {}: {}", f.value("server", "?"), f.value("state", "?"));
      if (f.contains("disconnected_since")) {
        time_t t = static_cast<time_t>(f["disconnected_since"].get<uint64_t>());
        char buf[64];
        strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", gmtime(&t));
        out += std::string(" since ") + buf;
      }
      out += "\n";
      out += fmt::format("  last_rcvd {} of {}, {} records and {} bytes pending, {} entries\n",
                         f.value("last_rcvd", 0), f.value("server_head", 0),
                         f.value("records_pending", 0), f.value("bytes_pending", 0),
                         f.value("entries", 0));
    }
    std::string err = f.value("last_error", "");
    out += "  last error: " + (err.empty() ? std::string("none") : err) + "\n";
  }
  return out;
}

}  // namespace intersync
