// Kernel FUSE passthrough (Linux 6.9 and later) on libfuse 3.14, which has
// no API for it (libfuse 3.16 has). With passthrough, the kernel reads,
// writes and maps a regular file opened through the mount straight from
// its backing file, which izofs names by a backing id in its answer to
// OPEN or CREATE: no READ or WRITE reaches izofs, and the mount reads and
// writes about as fast as the backing file system.
//
// libfuse lets a file system move the session's messages itself
// (fuse_session_custom_io); KernelPassthrough does that with plain read and
// writev on /dev/fuse, and on the way
//   * reads the kernel's INIT to learn whether it offers passthrough, and
//     notes which requests are INIT, OPEN and CREATE;
//   * when izofs enabled passthrough, completes the answers to those: the
//     INIT answer asks for passthrough, each successful OPEN or CREATE
//     answer names the backing id izofs put in its handle.
// Backing ids come from an ioctl on /dev/fuse, which needs CAP_SYS_ADMIN.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <unordered_map>

namespace izofs {

class KernelPassthrough {
 public:
  // The backing id an answer to OPEN or CREATE names, from the handle
  // (fuse_file_info::fh) izofs put in it; 0 or less for none.
  using BackingIdOfHandle = std::function<int32_t(uint64_t fh)>;
  explicit KernelPassthrough(BackingIdOfHandle backing_id_of_handle);

  // Whether the kernel offered passthrough in its INIT: known from the time
  // izofs's init operation runs.
  bool offered() const { return offered_.load(std::memory_order_acquire); }
  // Turns passthrough on for this connection (the INIT answer asks for it)
  // or off; called before the INIT answer goes out, or to give up on it.
  void enable(bool on) { enabled_.store(on, std::memory_order_release); }
  bool enabled() const { return enabled_.load(std::memory_order_acquire); }

  // /dev/fuse of the session, for the backing-id ioctls.
  void set_device(int fd) { device_ = fd; }
  // Registers the regular file that `fd` (O_PATH will do) refers to as a
  // backing file: its id (> 0), or -errno.
  int32_t open_backing(int fd) const;
  void close_backing(int32_t id) const;

  // The I/O of the session (fuse_custom_io).
  ssize_t receive(int fd, void* buf, size_t size);
  ssize_t send(int fd, const struct iovec* iov, int count);

 private:
  ssize_t send_completed(int fd, const struct iovec* iov, int count, uint32_t opcode);

  const BackingIdOfHandle backing_id_of_handle_;
  int device_ = -1;
  std::atomic<bool> offered_{false};
  std::atomic<bool> enabled_{false};
  // The requests whose answers may need completing: unique -> opcode.
  std::mutex pending_mutex_;
  std::unordered_map<uint64_t, uint32_t> pending_;
};

}  // namespace izofs
