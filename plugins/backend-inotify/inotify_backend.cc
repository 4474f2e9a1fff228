// The inotify change backend: follows a fileset of plain directories (no
// izofs underneath) with one inotify watch per directory, and turns the
// kernel's events into ChangeEvents for core. The events of one read()
// become one on_changes() batch, in order, so that core can aggregate them.
//
// What inotify does not give directly is reconstructed here: a rename is a
// MOVED_FROM/MOVED_TO pair joined by a cookie (a lone half means the entry
// left or entered the fileset); a new directory's content created before
// its watch existed is found by listing it; and when the kernel drops
// events (queue overflow, watch limit) core is asked to rescan, because a
// backend may report too much but never too little.
#include <sys/inotify.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "inotify_watcher.h"
#include "intersync/backend.h"
#include "intersync/log.h"
#include "intersync/plugin.h"
#include "intersync/uv_handle.h"
#include "intersync/uv_timer.h"

namespace intersync {
namespace {

// How long a MOVED_FROM that ended a read waits for its MOVED_TO. The
// kernel queues both halves of a rename back to back, so only a read that
// falls between them splits a pair; 20 ms is long past that window.
constexpr uint64_t kPairDelayMs = 20;
// Large enough for hundreds of events per read (an event is at most
// sizeof(inotify_event) + NAME_MAX + 1 bytes).
constexpr size_t kReadBufferSize = 64 * 1024;
constexpr int64_t kDefaultRescanIntervalS = 60;
constexpr int64_t kMaxRescanIntervalS = 86400;

using Kind = ChangeEvent::Kind;

ChangeEvent make_event(Kind kind, std::string path, bool is_dir, std::string to_path = {}) {
  ChangeEvent event;
  event.kind = kind;
  event.path = std::move(path);
  event.to_path = std::move(to_path);
  event.is_dir = is_dir;
  return event;
}

// The current value of an inotify sysctl, for log lines that tell the
// operator which limit to raise.
std::string inotify_sysctl(const char* name) {
  std::ifstream in(std::string("/proc/sys/fs/inotify/") + name);
  std::string value;
  if (!(in >> value)) return "unknown";
  return value;
}

std::string unwatched_reason(int code) {
  if (code == -ENOSPC) {
    return "directory not watched: the inotify watch limit (fs.inotify.max_user_watches) is "
           "reached";
  }
  return std::string("directory not watched: ") + std::strerror(-code);
}

class InotifyBackend final : public Backend {
 public:
  InotifyBackend() = default;
  ~InotifyBackend() override { stop(); }

  Status configure(const ConfigNode& node) override;
  Status start(uv_loop_t* loop, const std::string& root, BackendHost* host) override;
  void stop() override;

 private:
  // The MOVED_FROM half of a rename, waiting for its MOVED_TO.
  struct MoveFrom {
    uint32_t cookie = 0;
    std::string path;
    bool is_dir = false;
    bool ignored = false;  // the source is a path core ignores
    size_t slot = 0;       // its place in the batch, holding a Deleted
    bool paired = false;
  };

  // The events of one read(), in order. A MOVED_FROM takes a slot holding
  // Deleted, which is emptied when its MOVED_TO turns the pair into one
  // Renamed.
  struct Batch {
    std::vector<std::optional<ChangeEvent>> slots;
    std::vector<MoveFrom> froms;
    std::vector<InotifyWatcher::Failure> failures;
    bool overflow = false;
    bool root_gone = false;
  };

  static void on_poll(uv_poll_t* handle, int status, int events);
  void on_pair_timeout();

  // Runs a loop callback's work: an exception must not cross into libuv,
  // and one that escapes means events may have been lost.
  template <typename F>
  void guarded(F&& work) noexcept;
  void recover(const char* why) noexcept;

  void drain();
  void process(const char* buf, size_t len);
  void handle_event(Batch& batch, const inotify_event& event);
  void moved_to(Batch& batch, uint32_t cookie, std::string path, bool is_dir, bool ignored);
  void appeared(Batch& batch, std::string path, bool is_dir);
  void expire_pending();
  void overflowed();
  void report_unwatched(const std::vector<InotifyWatcher::Failure>& failures, bool rescan);
  void retry_unwatched();

  InotifyWatcher watcher_;
  InotifyWatcher::IgnoredFn ignored_;
  BackendHost* host_ = nullptr;
  UvHandle<uv_poll_t> poll_;
  std::optional<UvTimer> pair_timer_;
  std::optional<UvTimer> rescan_timer_;
  // A MOVED_FROM that ended the previous read; pending_seq_ tells a new one
  // from the one the pairing timer was started for.
  std::optional<MoveFrom> pending_;
  uint64_t pending_seq_ = 0;
  uint64_t rescan_interval_ms_ = kDefaultRescanIntervalS * 1000;
  // The kernel sizes an instance's queue when it is created, from the
  // sysctl as it was then: that is the figure an overflow report needs.
  std::string queue_size_;
  bool running_ = false;
  alignas(inotify_event) char buf_[kReadBufferSize];
};

Status InotifyBackend::configure(const ConfigNode& node) {
  if (!node.defined()) return Status::Ok();
  if (Status s = node.expect_map({"rescan_interval"}); !s) return s;
  Result<int64_t> interval =
      node.get_int("rescan_interval", kDefaultRescanIntervalS, 1, kMaxRescanIntervalS);
  if (!interval) return interval.error();
  rescan_interval_ms_ = static_cast<uint64_t>(*interval) * 1000;
  return Status::Ok();
}

Status InotifyBackend::start(uv_loop_t* loop, const std::string& root, BackendHost* host) {
  if (running_) return make_error(-EALREADY, "inotify: already watching '" + watcher_.root() + "'");
  if (root.empty() || root.front() != '/') {
    return make_error(-EINVAL, "inotify: the fileset root '" + root + "' is not absolute");
  }
  host_ = host;
  ignored_ = [host](std::string_view rel, bool is_dir) { return host->ignored(rel, is_dir); };
  if (Status s = watcher_.open(root); !s) return s;
  queue_size_ = inotify_sysctl("max_queued_events");

  std::vector<InotifyWatcher::Failure> failures;
  const int rc = watcher_.watch_tree(
      "", ignored_, [](const std::string&, bool) {}, &failures);
  if (rc < 0) {
    watcher_.close();
    return make_error(rc, fmt::format("inotify: cannot watch the fileset root '{}': {}{}", root,
                                      std::strerror(-rc),
                                      rc == -ENOSPC ? " (the limit sysctl "
                                                      "fs.inotify.max_user_watches is reached)"
                                                    : ""));
  }

  if (int err = uv_poll_readable(poll_, loop, watcher_.fd(), this, on_poll); err < 0) {
    stop();
    return make_error(err, fmt::format("inotify: cannot poll the inotify descriptor for '{}': {}",
                                       root, uv_strerror(err)));
  }
  pair_timer_.emplace(loop);
  rescan_timer_.emplace(loop);
  running_ = true;
  log_info("inotify: watching '{}' ({} directories)", watcher_.root(), watcher_.watch_count());
  // Core scans the fileset when it starts, so the directories that could
  // not be watched need rescans only from the first interval on.
  report_unwatched(failures, false);
  return Status::Ok();
}

void InotifyBackend::stop() {
  running_ = false;
  // The poll handle must stop using the descriptor before it is closed.
  poll_.close();
  pair_timer_.reset();
  rescan_timer_.reset();
  watcher_.close();
  pending_.reset();
}

template <typename F>
void InotifyBackend::guarded(F&& work) noexcept {
  try {
    work();
  } catch (const std::exception& e) {
    recover(e.what());
  } catch (...) {
    recover("unknown exception");
  }
}

void InotifyBackend::recover(const char* why) noexcept {
  try {
    log_error("inotify: handling the events of '{}' failed: {}; asking for a full rescan",
              watcher_.root(), why);
    if (running_) host_->on_rescan("", std::string("inotify backend error: ") + why);
  } catch (...) {
    // Nothing is left to tell anyone with; the loop must go on.
  }
}

void InotifyBackend::on_poll(uv_poll_t* handle, int status, int /*events*/) {
  auto* self = static_cast<InotifyBackend*>(handle->data);
  self->guarded([self, handle, status] {
    if (status < 0) {
      // The descriptor is unusable; polling it again would fail the same
      // way on every loop iteration.
      log_error("inotify: polling the events of '{}' failed: {}; no more changes are reported",
                self->watcher_.root(), uv_strerror(status));
      uv_poll_stop(handle);
      self->host_->on_rescan("", "inotify polling failed");
      return;
    }
    self->drain();
  });
}

void InotifyBackend::on_pair_timeout() {
  // The MOVED_TO may be queued but not read yet (timers run before polls
  // within a loop iteration), so read first.
  const uint64_t seq = pending_seq_;
  drain();
  if (running_ && pending_ && pending_seq_ == seq) expire_pending();
}

void InotifyBackend::drain() {
  while (running_) {
    const ssize_t n = ::read(watcher_.fd(), buf_, sizeof buf_);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) {
        log_error("inotify: reading the events of '{}' failed: {}", watcher_.root(),
                  std::strerror(errno));
      }
      return;
    }
    if (n == 0) return;
    process(buf_, static_cast<size_t>(n));
  }
}

void InotifyBackend::process(const char* buf, size_t len) {
  Batch batch;
  if (pending_) {
    // The MOVED_FROM that ended the previous read comes first, as it
    // happened first.
    pair_timer_->stop();
    MoveFrom carried = std::move(*pending_);
    pending_.reset();
    carried.slot = 0;
    if (carried.ignored) {
      batch.slots.emplace_back();
    } else {
      batch.slots.emplace_back(make_event(Kind::Deleted, carried.path, carried.is_dir));
    }
    batch.froms.push_back(std::move(carried));
  }

  std::optional<size_t> tail_from;
  for (size_t off = 0; off + sizeof(inotify_event) <= len;) {
    const auto* event = reinterpret_cast<const inotify_event*>(buf + off);
    off += sizeof(inotify_event) + event->len;
    const size_t froms = batch.froms.size();
    handle_event(batch, *event);
    tail_from = batch.froms.size() > froms ? std::optional(froms) : std::nullopt;
  }

  for (size_t i = 0; i < batch.froms.size(); ++i) {
    MoveFrom& from = batch.froms[i];
    if (from.paired) continue;
    if (tail_from == i) {
      // The MOVED_TO may be in the next read: hold this one back.
      batch.slots.pop_back();
      pending_ = std::move(from);
      ++pending_seq_;
      pair_timer_->start(kPairDelayMs, [this] { guarded([this] { on_pair_timeout(); }); });
    } else if (!from.ignored && from.is_dir) {
      // Moved out of the fileset: its Deleted stays in its slot, and its
      // watches must go or its events would come back under a stale path.
      watcher_.unwatch_tree(from.path);
    }
  }

  std::vector<ChangeEvent> events;
  events.reserve(batch.slots.size());
  for (std::optional<ChangeEvent>& slot : batch.slots) {
    if (slot) events.push_back(std::move(*slot));
  }
  if (!events.empty()) {
    host_->on_changes(std::move(events));
    if (!running_) return;
  }
  report_unwatched(batch.failures, true);
  if (!running_) return;
  if (batch.root_gone) {
    log_error("inotify: the fileset root '{}' was moved away or deleted", watcher_.root());
    host_->on_rescan("", "the fileset root was moved away or deleted");
    if (!running_) return;
  }
  if (batch.overflow) overflowed();
}

void InotifyBackend::handle_event(Batch& batch, const inotify_event& event) {
  const uint32_t mask = event.mask;
  if (mask & IN_Q_OVERFLOW) {
    batch.overflow = true;
    return;
  }
  // Unknown descriptors belong to watches removed by unwatch_tree() or
  // resync() whose last events were still queued.
  const std::string* dir = watcher_.path_of(event.wd);
  if (dir == nullptr) return;
  if (mask & (IN_IGNORED | IN_DELETE_SELF)) {
    if (dir->empty()) batch.root_gone = true;
    watcher_.forget(event.wd);
    return;
  }
  if (mask & IN_MOVE_SELF) {
    // A watched directory's own move is reported, with both names, by the
    // watch on its parent; only the root has none.
    if (dir->empty()) batch.root_gone = true;
    return;
  }
  const bool is_dir = (mask & IN_ISDIR) != 0;
  if (event.len == 0 || event.name[0] == '\0') {
    // Likewise, an event on a directory itself also reaches its parent's
    // watch with the directory's name, except for the root.
    if (dir->empty() && (mask & IN_ATTRIB)) {
      batch.slots.emplace_back(make_event(Kind::Attrib, "", true));
    }
    return;
  }
  std::string path = InotifyWatcher::join(*dir, event.name);
  const bool ignored = host_->ignored(path, is_dir);
  if (mask & IN_MOVED_FROM) {
    MoveFrom from;
    from.cookie = event.cookie;
    from.path = path;
    from.is_dir = is_dir;
    from.ignored = ignored;
    from.slot = batch.slots.size();
    if (ignored) {
      batch.slots.emplace_back();
    } else {
      batch.slots.emplace_back(make_event(Kind::Deleted, std::move(path), is_dir));
    }
    batch.froms.push_back(std::move(from));
    return;
  }
  if (mask & IN_MOVED_TO) {
    moved_to(batch, event.cookie, std::move(path), is_dir, ignored);
    return;
  }
  if (ignored) return;
  if (mask & IN_CREATE) {
    appeared(batch, std::move(path), is_dir);
  } else if (mask & IN_DELETE) {
    batch.slots.emplace_back(make_event(Kind::Deleted, std::move(path), is_dir));
  } else if (mask & IN_MODIFY) {
    batch.slots.emplace_back(make_event(Kind::Modified, std::move(path), is_dir));
  } else if (mask & IN_CLOSE_WRITE) {
    batch.slots.emplace_back(make_event(Kind::Closed, std::move(path), is_dir));
  } else if (mask & IN_ATTRIB) {
    batch.slots.emplace_back(make_event(Kind::Attrib, std::move(path), is_dir));
  }
}

void InotifyBackend::moved_to(Batch& batch, uint32_t cookie, std::string path, bool is_dir,
                              bool ignored) {
  auto it = std::find_if(batch.froms.rbegin(), batch.froms.rend(),
                         [cookie](const MoveFrom& f) { return !f.paired && f.cookie == cookie; });
  if (it == batch.froms.rend() || it->ignored) {
    // Moved in from outside the fileset (or from an ignored place in it).
    if (it != batch.froms.rend()) it->paired = true;
    if (!ignored) appeared(batch, std::move(path), is_dir);
    return;
  }
  MoveFrom& from = *it;
  from.paired = true;
  if (ignored) {
    // Moved to an ignored place, which for the fileset means gone: the
    // Deleted in the MOVED_FROM's slot stands.
    if (from.is_dir) watcher_.unwatch_tree(from.path);
    return;
  }
  batch.slots[from.slot].reset();
  batch.slots.emplace_back(make_event(Kind::Renamed, from.path, is_dir, path));
  if (is_dir && !watcher_.rename(from.path, path)) {
    // The directory was renamed before its IN_CREATE was handled, so its
    // watch could not be added under the old name: it is new to us.
    watcher_.watch_tree(
        path, ignored_,
        [&batch](const std::string& p, bool d) {
          batch.slots.emplace_back(make_event(Kind::Created, p, d));
        },
        &batch.failures);
  }
}

void InotifyBackend::appeared(Batch& batch, std::string path, bool is_dir) {
  batch.slots.emplace_back(make_event(Kind::Created, path, is_dir));
  if (!is_dir) return;
  // Whatever was created inside before the watch existed produced no
  // event, so everything listed is reported as created.
  watcher_.watch_tree(
      path, ignored_,
      [&batch](const std::string& p, bool d) {
        batch.slots.emplace_back(make_event(Kind::Created, p, d));
      },
      &batch.failures);
}

void InotifyBackend::expire_pending() {
  MoveFrom from = std::move(*pending_);
  pending_.reset();
  if (from.ignored) return;
  if (from.is_dir) watcher_.unwatch_tree(from.path);
  std::vector<ChangeEvent> events;
  events.push_back(make_event(Kind::Deleted, std::move(from.path), from.is_dir));
  host_->on_changes(std::move(events));
}

void InotifyBackend::overflowed() {
  log_warn(
      "inotify: the event queue for '{}' overflowed (it holds {} events, the sysctl "
      "fs.inotify.max_queued_events when watching began); events were lost, so every "
      "directory is watched again and the whole fileset is rescanned",
      watcher_.root(), queue_size_);
  // Directories created while events were dropped have no watch yet, and
  // renamed ones may be known under their old path.
  std::vector<InotifyWatcher::Failure> failures;
  watcher_.resync(ignored_, &failures);
  host_->on_rescan("", "inotify queue overflowed (fs.inotify.max_queued_events reached)");
  if (!running_) return;
  report_unwatched(failures, false);
}

void InotifyBackend::report_unwatched(const std::vector<InotifyWatcher::Failure>& failures,
                                      bool rescan) {
  if (failures.empty()) return;
  // One line per kind of failure, naming the first directory: a tree that
  // hits the watch limit may have thousands of them.
  std::map<int, std::pair<std::string, size_t>> by_code;
  for (const auto& failure : failures) {
    auto [it, inserted] = by_code.try_emplace(failure.code, failure.rel, 0);
    ++it->second.second;
  }
  for (const auto& [code, first] : by_code) {
    const std::string more =
        first.second > 1 ? fmt::format(" (and {} more directories)", first.second - 1) : "";
    if (code == -ENOSPC) {
      log_error(
          "inotify: cannot watch '{}'{}: the per-user limit on inotify watches (sysctl "
          "fs.inotify.max_user_watches = {}) is reached; raise it. Until then these "
          "directories get no events and are rescanned every {} s",
          watcher_.full_path(first.first), more, inotify_sysctl("max_user_watches"),
          rescan_interval_ms_ / 1000);
    } else {
      log_error("inotify: cannot watch '{}'{}: {}; it gets no events and is rescanned every {} s",
                watcher_.full_path(first.first), more, std::strerror(-code),
                rescan_interval_ms_ / 1000);
    }
  }
  if (!rescan_timer_->active()) {
    rescan_timer_->start(
        rescan_interval_ms_, [this] { guarded([this] { retry_unwatched(); }); },
        rescan_interval_ms_);
  }
  if (!rescan) return;
  for (const auto& failure : failures) {
    host_->on_rescan(failure.rel, unwatched_reason(failure.code));
    if (!running_) return;
  }
}

void InotifyBackend::retry_unwatched() {
  // Each unwatched subtree is tried again (the limit may have been raised
  // or watches freed) and rescanned either way: while it had no watch its
  // changes went unseen. Those still failing are recorded again.
  std::vector<std::pair<std::string, std::string>> rescans;
  std::vector<InotifyWatcher::Failure> failures;
  for (const std::string& rel : watcher_.take_unwatched()) {
    if (host_->ignored(rel, true)) continue;
    const int rc = watcher_.watch_tree(
        rel, ignored_, [](const std::string&, bool) {}, &failures);
    // A directory that is gone had its removal reported by its parent.
    if (rc == -ENOENT || rc == -ENOTDIR) continue;
    if (rc == 0) {
      log_info("inotify: '{}' is watched again", watcher_.full_path(rel));
      rescans.emplace_back(rel, "directory watched again after being unwatched; catching up");
    } else {
      log_debug("inotify: '{}' still cannot be watched: {}", watcher_.full_path(rel),
                std::strerror(-rc));
      rescans.emplace_back(rel, unwatched_reason(rc));
    }
  }
  if (watcher_.unwatched().empty()) rescan_timer_->stop();
  for (const auto& [rel, reason] : rescans) {
    host_->on_rescan(rel, reason);
    if (!running_) return;
  }
}

}  // namespace
}  // namespace intersync

INTERSYNC_PLUGIN("inotify", INTERSYNC_PLUGIN_BACKEND, intersync::InotifyBackend)
