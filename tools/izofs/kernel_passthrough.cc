// Passthrough on libfuse 3.14's session I/O; see kernel_passthrough.h.
#include "kernel_passthrough.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

namespace izofs {

namespace {

// The FUSE protocol as the kernel's include/uapi/linux/fuse.h defines it
// (7.40, Linux 6.9, added passthrough). Debian 12's kernel headers (6.1)
// and libfuse 3.14 predate it, so izofs spells out what it reads and
// writes here.
struct InHeader {
  uint32_t len;
  uint32_t opcode;
  uint64_t unique;
  uint64_t nodeid;
  uint32_t uid;
  uint32_t gid;
  uint32_t pid;
  uint16_t total_extlen;
  uint16_t padding;
};
static_assert(sizeof(InHeader) == 40);

struct OutHeader {
  uint32_t len;
  int32_t error;
  uint64_t unique;
};
static_assert(sizeof(OutHeader) == 16);

// fuse_init_in up to flags2 (sent from protocol 7.36 on).
struct InitIn {
  uint32_t major;
  uint32_t minor;
  uint32_t max_readahead;
  uint32_t flags;
  uint32_t flags2;
};
static_assert(sizeof(InitIn) == 20);

struct InitOut {
  uint32_t major;
  uint32_t minor;
  uint32_t max_readahead;
  uint32_t flags;
  uint16_t max_background;
  uint16_t congestion_threshold;
  uint32_t max_write;
  uint32_t time_gran;
  uint16_t max_pages;
  uint16_t map_alignment;
  uint32_t flags2;
  uint32_t max_stack_depth;
  uint32_t unused[6];
};
static_assert(sizeof(InitOut) == 64);

struct OpenOut {
  uint64_t fh;
  uint32_t open_flags;
  int32_t backing_id;
};
static_assert(sizeof(OpenOut) == 16);

// struct fuse_entry_out, which comes before the fuse_open_out in an answer
// to CREATE: node id, generation, two timeouts and their nanoseconds, and
// a struct fuse_attr of 88 bytes.
constexpr size_t kEntryOutSize = 128;

struct BackingMap {
  int32_t fd;
  uint32_t flags;
  uint64_t padding;
};
static_assert(sizeof(BackingMap) == 16);

constexpr uint32_t kOpcodeOpen = 14;
constexpr uint32_t kOpcodeInit = 26;
constexpr uint32_t kOpcodeCreate = 35;

constexpr uint32_t kInitExt = 1u << 30;                  // FUSE_INIT_EXT: flags2 is valid
constexpr uint32_t kPassthroughFlag2 = 1u << (37 - 32);  // FUSE_PASSTHROUGH, in flags2
constexpr uint32_t kFopenPassthrough = 1u << 7;          // FOPEN_PASSTHROUGH
// How many stacked file systems may lie under the mount (the backing one
// being at most an ordinary one): 1, so that overlayfs may still stack
// on an izofs mount.
constexpr uint32_t kMaxStackDepth = 1;

constexpr unsigned kDevIocMagic = 229;
constexpr unsigned long kBackingOpen = _IOW(kDevIocMagic, 1, BackingMap);
constexpr unsigned long kBackingClose = _IOW(kDevIocMagic, 2, uint32_t);

}  // namespace

KernelPassthrough::KernelPassthrough(BackingIdOfHandle backing_id_of_handle)
    : backing_id_of_handle_(std::move(backing_id_of_handle)) {}

int32_t KernelPassthrough::open_backing(int fd) const {
  BackingMap map{fd, 0, 0};
  int id = ioctl(device_, kBackingOpen, &map);
  return id > 0 ? id : -(errno != 0 ? errno : EIO);
}

void KernelPassthrough::close_backing(int32_t id) const {
  uint32_t backing_id = static_cast<uint32_t>(id);
  ioctl(device_, kBackingClose, &backing_id);
}

ssize_t KernelPassthrough::receive(int fd, void* buf, size_t size) {
  ssize_t n = ::read(fd, buf, size);
  if (n < static_cast<ssize_t>(sizeof(InHeader))) return n;
  InHeader in;
  memcpy(&in, buf, sizeof in);
  if (in.opcode == kOpcodeInit) {
    InitIn init{};
    memcpy(&init, static_cast<const char*>(buf) + sizeof in,
           std::min(sizeof init, static_cast<size_t>(n) - sizeof in));
    bool offered = init.major == 7 && init.minor >= 36 && (init.flags & kInitExt) &&
                   (init.flags2 & kPassthroughFlag2);
    offered_.store(offered, std::memory_order_release);
  } else if (!((in.opcode == kOpcodeOpen || in.opcode == kOpcodeCreate) && enabled())) {
    return n;
  }
  std::lock_guard lock(pending_mutex_);
  pending_[in.unique] = in.opcode;
  return n;
}

ssize_t KernelPassthrough::send(int fd, const struct iovec* iov, int count) {
  if (count > 0 && iov[0].iov_len >= sizeof(OutHeader)) {
    OutHeader out;
    memcpy(&out, iov[0].iov_base, sizeof out);
    uint32_t opcode = 0;
    if (out.unique != 0) {
      std::lock_guard lock(pending_mutex_);
      if (auto it = pending_.find(out.unique); it != pending_.end()) {
        opcode = it->second;
        pending_.erase(it);
      }
    }
    if (opcode != 0 && out.error == 0 && enabled()) return send_completed(fd, iov, count, opcode);
  }
  return ::writev(fd, iov, count);
}

// Writes the answer with what passthrough adds to it: the answers to INIT,
// OPEN and CREATE are small, and are put together in one buffer for that.
ssize_t KernelPassthrough::send_completed(int fd, const struct iovec* iov, int count,
                                          uint32_t opcode) {
  std::array<char, sizeof(OutHeader) + kEntryOutSize + sizeof(OpenOut)> message;
  size_t len = 0;
  for (int i = 0; i < count; i++) {
    if (iov[i].iov_len > message.size() - len) return ::writev(fd, iov, count);
    memcpy(message.data() + len, iov[i].iov_base, iov[i].iov_len);
    len += iov[i].iov_len;
  }
  char* body = message.data() + sizeof(OutHeader);
  const size_t body_len = len - sizeof(OutHeader);
  if (opcode == kOpcodeInit && body_len == sizeof(InitOut)) {
    InitOut init;
    memcpy(&init, body, sizeof init);
    init.flags |= kInitExt;
    init.flags2 |= kPassthroughFlag2;
    init.max_stack_depth = kMaxStackDepth;
    memcpy(body, &init, sizeof init);
  } else if ((opcode == kOpcodeOpen && body_len == sizeof(OpenOut)) ||
             (opcode == kOpcodeCreate && body_len == kEntryOutSize + sizeof(OpenOut))) {
    char* at = body + body_len - sizeof(OpenOut);
    OpenOut open;
    memcpy(&open, at, sizeof open);
    int32_t id = backing_id_of_handle_(open.fh);
    if (id > 0) {
      open.open_flags |= kFopenPassthrough;
      open.backing_id = id;
      memcpy(at, &open, sizeof open);
    }
  }
  struct iovec whole = {message.data(), len};
  return ::writev(fd, &whole, 1);
}

}  // namespace izofs
