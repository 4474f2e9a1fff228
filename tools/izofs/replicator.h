// The replicator: the intersync daemon working through the mount. What it
// does there is replication, not a change to journal, and it never waits
// for content on demand (it is the one that fetches content). It registers
// itself with setxattr on the mount root, naming its control socket.
//
// FUSE tells the calling thread, not its process, so a thread id is mapped
// to its thread group through /proc/<tid>/status. The answers are cached
// for a second only, since thread ids are reused. A pidfd of the registered
// process tells when it has exited; from then on no caller is the
// replicator (its process id may be reused too) until the next
// registration.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <unordered_map>

#include "intersync/result.h"
#include "unique_fd.h"

namespace izofs {

class ReplicatorRegistry {
 public:
  // Registers the process thread `tid` belongs to, replacing any earlier
  // registration; `socket` is the path of its control socket.
  intersync::Status register_process_of(pid_t tid, const std::string& socket);
  void unregister();

  // True when thread `tid` belongs to the registered, still running process.
  bool is_replicator(pid_t tid);
  // The registered replicator's control socket; "" when there is none.
  std::string socket();

 private:
  struct CachedGroup {
    pid_t tgid;
    std::chrono::steady_clock::time_point expires;
  };
  pid_t thread_group_of(pid_t tid);
  void forget_exited_locked();

  std::atomic<pid_t> tgid_{0};  // 0: none registered (read without the mutex)
  std::mutex mutex_;
  intersync::UniqueFd pidfd_;
  std::string socket_;
  std::unordered_map<pid_t, CachedGroup> groups_;
};

// The thread group (process) id of thread `tid`, from /proc/<tid>/status;
// an error when the thread does not exist.
intersync::Result<pid_t> read_thread_group(pid_t tid);

}  // namespace izofs
