// The harness the request-handler fuzz targets share: a uv loop that
// drives real FilesetServers with a no-op backend, a ResponseWriter that
// records what a handler sends (checking the order of calls), and pump(),
// which runs the loop until a request's work is done. Each target includes
// it once; everything lives in an anonymous namespace of that target.
#pragma once

#include <fcntl.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "config.h"
#include "fileset_server.h"
#include "fuzz_check.h"
#include "intersync/backend.h"
#include "intersync/http_codec.h"
#include "protocol.h"

namespace {

using namespace intersync;

constexpr const char* kFuzzPeer = "192.0.2.7:40370";
constexpr uint64_t kGuardMs = 5;  // idle this long: a long-poll's peer goes away

// The backend of the fixture's filesets: reports nothing.
class NullBackend : public Backend {
 public:
  Status configure(const ConfigNode&) override { return Status::Ok(); }
  Status start(uv_loop_t*, const std::string&, BackendHost*) override { return Status::Ok(); }
  void stop() override {}
};

// Runs the flush callbacks of RecordingWriter::write from the loop, as a
// transport does once the bytes reached the kernel.
struct FlushQueue {
  uv_idle_t idle{};
  std::deque<std::function<void()>> callbacks;

  void init(uv_loop_t* loop) {
    uv_idle_init(loop, &idle);
    idle.data = this;
  }
  void push(std::function<void()> cb) {
    callbacks.push_back(std::move(cb));
    uv_idle_start(&idle, [](uv_idle_t* h) { static_cast<FlushQueue*>(h->data)->drain(); });
  }
  void drain() {
    auto batch = std::move(callbacks);
    callbacks.clear();
    for (auto& cb : batch) cb();
    if (callbacks.empty()) uv_idle_stop(&idle);
  }
};

// The loop of a fixture, with what pump() needs beside it.
struct ServerLoop {
  uv_loop_t loop{};
  FlushQueue flushes;
  uv_timer_t guard{};

  void init() {
    uv_loop_init(&loop);
    flushes.init(&loop);
    uv_timer_init(&loop, &guard);
    uv_unref(reinterpret_cast<uv_handle_t*>(&guard));
  }
};

inline void write_file(const std::string& path, const std::string& data) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || write(fd, data.data(), data.size()) != static_cast<ssize_t>(data.size())) {
    fail("cannot write the fixture", path);
  }
  close(fd);
}

// A server fileset of `root` whose state goes to `state_dir`, started and
// with its start-up rescan not yet run: the caller runs the loop. A fileset
// with a token has one client, "laptop", with that token.
inline std::unique_ptr<FilesetServer> start_fileset(ServerLoop& f, const std::string& state_dir,
                                                    const std::string& name,
                                                    const std::string& root, const char* token) {
  FilesetConfig c;
  c.name = name;
  c.path = root;
  c.role = Role::Server;
  c.backend = "null";
  c.auth_none = token == nullptr;
  if (token) c.clients.push_back({"laptop", hash_hex(sha256(token))});
  auto server = std::make_unique<FilesetServer>(&f.loop, c, state_dir);
  if (Status s = server->start(std::make_unique<NullBackend>()); !s) {
    fail("cannot start the fixture's fileset", s.error().message);
  }
  return server;
}

// A ResponseWriter that records what the handler sends and checks the
// order of calls.
class RecordingWriter : public ResponseWriter {
 public:
  explicit RecordingWriter(ServerLoop& f) : f_(f) {}

  void send_head(HttpResponseHead head) override {
    CHECK(!head_ && !ended_ && !aborted_, "send_head called twice or late");
    head_ = std::move(head);
  }
  void write(std::string data, std::function<void()> on_flushed) override {
    CHECK(head_ && !ended_ && !aborted_, "write before send_head or after the end");
    if (!gone_) body_ += data;
    if (on_flushed) f_.flushes.push(std::move(on_flushed));
  }
  void end() override {
    CHECK(head_ && !ended_ && !aborted_, "end before send_head or twice");
    ended_ = true;
  }
  void abort() override {
    CHECK(!ended_, "abort after end");
    aborted_ = true;
  }
  bool closed() const override { return gone_ || aborted_; }
  void on_abort(std::function<void()> callback) override {
    abort_callbacks_.push_back(std::move(callback));
  }
  std::string peer() const override { return kFuzzPeer; }

  // The connection closes under an unfinished response.
  void peer_gone() {
    if (ended_ || aborted_ || gone_) return;
    gone_ = true;
    for (auto& cb : std::exchange(abort_callbacks_, {})) cb();
  }

  bool finished() const { return ended_ || aborted_ || gone_; }
  // Ended with the peer still there to receive the whole response.
  bool complete() const { return ended_ && !gone_; }
  const std::optional<HttpResponseHead>& head() const { return head_; }
  const std::string& body() const { return body_; }

 private:
  ServerLoop& f_;
  std::optional<HttpResponseHead> head_;
  std::string body_;
  bool ended_ = false, aborted_ = false, gone_ = false;
  std::vector<std::function<void()>> abort_callbacks_;
};

// Lets the loop run until the request's work is done. A response still
// unfinished when the loop has nothing in flight but timers (a long-poll)
// loses its peer, as when a client gives up; the loop must then wind down
// by itself within a second. Thread-pool work and pending flushes are
// always waited for, so what runs does not depend on the machine's speed.
// The guard timer is unreferenced: it does not keep the loop alive itself.
struct Guard {
  ServerLoop* f;
  RecordingWriter* writer;
  bool expired = false;
};

inline void guard_expired(uv_timer_t* t) {
  static_cast<Guard*>(t->data)->expired = true;
  uv_stop(t->loop);
}

inline void guard_check_idle(uv_timer_t* t) {
  auto* g = static_cast<Guard*>(t->data);
  if (t->loop->active_reqs.count > 0 || !g->f->flushes.callbacks.empty()) {
    uv_timer_start(t, guard_check_idle, kGuardMs, 0);  // work in flight
    return;
  }
  g->writer->peer_gone();
  uv_timer_start(t, guard_expired, 1000, 0);
}

inline void pump(ServerLoop& f, RecordingWriter& w) {
  Guard guard{&f, &w};
  f.guard.data = &guard;
  bool finished_seen = w.finished();
  uv_timer_start(&f.guard, finished_seen ? guard_expired : guard_check_idle,
                 finished_seen ? 1000 : kGuardMs, 0);
  for (;;) {
    if (!finished_seen && w.finished()) {
      finished_seen = true;
      uv_timer_stop(&f.guard);
      uv_timer_start(&f.guard, guard_expired, 1000, 0);
    }
    bool more = uv_run(&f.loop, UV_RUN_ONCE) != 0;
    if (guard.expired) fail("the loop is still busy a second after the response ended");
    if (!more) break;
  }
  uv_timer_stop(&f.guard);
  CHECK(w.finished(), "the request was neither answered nor aborted");
  CHECK(f.flushes.callbacks.empty());
}

}  // namespace
