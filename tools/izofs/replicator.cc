// Registration of the replicator and recognition of its threads; see
// replicator.h.
#include "replicator.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "intersync/log.h"

namespace izofs {

using intersync::Error;
using intersync::Result;
using intersync::Status;
using intersync::UniqueFd;

namespace {

constexpr auto kGroupCacheLifetime = std::chrono::seconds(1);
constexpr size_t kGroupCacheMax = 4096;

}  // namespace

Result<pid_t> read_thread_group(pid_t tid) {
  std::string path = fmt::format("/proc/{}/status", tid);
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return intersync::errno_error(fmt::format("{}: {}", path, strerror(errno)));
  char buf[4096];
  ssize_t n = ::read(fd.get(), buf, sizeof buf - 1);
  if (n < 0) return intersync::errno_error(fmt::format("{}: {}", path, strerror(errno)));
  buf[n] = '\0';
  const char* line = strstr(buf, "\nTgid:");
  if (!line) return Error{-EINVAL, path + ": no Tgid line"};
  return static_cast<pid_t>(strtol(line + strlen("\nTgid:"), nullptr, 10));
}

Status ReplicatorRegistry::register_process_of(pid_t tid, const std::string& socket) {
  auto tgid = read_thread_group(tid);
  if (!tgid.ok()) return tgid.error();
  // glibc 2.36 declares pidfd_open() without C linkage: call it directly.
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, *tgid, 0));
  if (pidfd < 0) {
    return intersync::errno_error(fmt::format("pidfd of process {}: {}", *tgid, strerror(errno)));
  }
  std::lock_guard lock(mutex_);
  pidfd_.reset(pidfd);
  socket_ = socket;
  groups_.clear();
  tgid_.store(*tgid);
  intersync::log_info("izofs: replicator is process {}, control socket {}", *tgid, socket);
  return Status::Ok();
}

void ReplicatorRegistry::unregister() {
  std::lock_guard lock(mutex_);
  if (tgid_.load() != 0) intersync::log_info("izofs: replicator {} unregistered", tgid_.load());
  tgid_.store(0);
  pidfd_.reset();
  socket_.clear();
  groups_.clear();
}

bool ReplicatorRegistry::is_replicator(pid_t tid) {
  pid_t registered = tgid_.load(std::memory_order_relaxed);
  if (registered == 0 || tid <= 0) return false;
  if (tid != registered && thread_group_of(tid) != registered) return false;
  std::lock_guard lock(mutex_);
  forget_exited_locked();
  return tgid_.load() == registered;
}

std::string ReplicatorRegistry::socket() {
  std::lock_guard lock(mutex_);
  forget_exited_locked();
  return socket_;
}

pid_t ReplicatorRegistry::thread_group_of(pid_t tid) {
  auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(mutex_);
    auto it = groups_.find(tid);
    if (it != groups_.end() && it->second.expires > now) return it->second.tgid;
  }
  auto tgid = read_thread_group(tid);
  if (!tgid.ok()) return 0;  // gone already: no longer anyone's thread
  std::lock_guard lock(mutex_);
  if (groups_.size() >= kGroupCacheMax) groups_.clear();
  groups_[tid] = {*tgid, now + kGroupCacheLifetime};
  return *tgid;
}

void ReplicatorRegistry::forget_exited_locked() {
  if (!pidfd_.valid()) return;
  struct pollfd p = {pidfd_.get(), POLLIN, 0};
  if (poll(&p, 1, 0) == 0) return;
  intersync::log_warn("izofs: replicator {} has exited; its registration is dropped", tgid_.load());
  tgid_.store(0);
  pidfd_.reset();
  socket_.clear();
  groups_.clear();
}

}  // namespace izofs
