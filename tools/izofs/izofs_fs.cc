// The operations of izofs; see izofs_fs.h. Each one does what it was asked
// on the backing object, and, when the change is to be journaled, reads the
// versions the KML record names (the parent directory before and after,
// the object after) around it and appends the record before answering.
#include "izofs_fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstring>
#include <vector>

#include "intersync/log.h"
#include "path_util.h"

namespace izofs {

using intersync::is_internal_path;
using intersync::join_rel;
using intersync::KmlOp;
using intersync::KmlRecord;
using intersync::Result;
using intersync::Status;
using intersync::UniqueFd;
using intersync::version_of;

namespace {

// How long the kernel may trust an answer about names and attributes.
// Changes made beside the mount, in the backing directory, show within it:
// file pages are kept across opens, and dropped when the kernel sees a new
// mtime or size (FUSE_CAP_AUTO_INVAL_DATA, on by default).
constexpr double kCacheSeconds = 1.0;
constexpr std::chrono::milliseconds kMaxSyncDelay{1000};
// How often the inode count is looked at without being asked, and how long
// a reclaim pass lets the kernel's forgets come in before the next one.
constexpr std::chrono::milliseconds kReclaimInterval{1000};
constexpr std::chrono::milliseconds kReclaimPause{50};
// How long an operation short of descriptors waits for the reclaim.
constexpr int kDescriptorTries = 100;
constexpr std::chrono::milliseconds kDescriptorWait{10};

constexpr std::string_view kNoJournalXattrPrefix = "user.intersync.";
constexpr char kFilesetXattr[] = "user.izofs.fileset";
constexpr char kBackingXattr[] = "user.izofs.backing";
constexpr char kReplicatorXattr[] = "user.izofs.replicator";

// "/proc/self/fd/N": how a path-taking call reaches the object of an
// O_PATH descriptor.
class ProcPath {
 public:
  explicit ProcPath(int fd) { snprintf(text_, sizeof text_, "/proc/self/fd/%d", fd); }
  const char* c_str() const { return text_; }

 private:
  char text_[32];
};

fuse_bufvec fd_bufvec(int fd, size_t size, off_t pos) {
  fuse_bufvec v{};
  v.count = 1;
  v.buf[0].size = size;
  v.buf[0].flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
  v.buf[0].fd = fd;
  v.buf[0].pos = pos;
  return v;
}

std::string read_link_at(int dirfd, const char* name) {
  char buf[PATH_MAX];
  ssize_t n = readlinkat(dirfd, name, buf, sizeof buf);
  return n < 0 ? std::string() : std::string(buf, static_cast<size_t>(n));
}

uint32_t file_generation(int fd) {
  int generation = 0;
  return ioctl(fd, FS_IOC_GETVERSION, &generation) == 0 ? static_cast<uint32_t>(generation) : 0;
}

bool has_absent_xattr(const char* path) {
  return getxattr(path, kAbsentXattr, nullptr, 0) >= 0;
}

// FUSE passthrough came with Linux 6.9.
bool kernel_may_offer_passthrough() {
  struct utsname name;
  int major = 0, minor = 0;
  return uname(&name) == 0 && sscanf(name.release, "%d.%d", &major, &minor) == 2 &&
         (major > 6 || (major == 6 && minor >= 9));
}

// The kernel registers backing files for passthrough only for a process
// with CAP_SYS_ADMIN.
bool may_register_backing_files() {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (syscall(SYS_capget, &header, data) != 0) return false;
  return data[CAP_SYS_ADMIN / 32].effective & (1u << (CAP_SYS_ADMIN % 32));
}

}  // namespace

// One open regular file.
class OpenFile {
 public:
  OpenFile(UniqueFd fd, const Caller& opener, int open_flags, Inode& inode, int32_t backing_id)
      : opener(opener),
        inode(inode),
        backing_id(backing_id),
        writes_unseen(backing_id > 0 && (open_flags & O_ACCMODE) != O_RDONLY && !opener.replicator),
        fd_(std::move(fd)) {
    if (writes_unseen) fstat(fd_.get(), &before_write);
  }
  int fd() const { return fd_.get(); }

  const Caller opener;  // CLOSE records carry the opener's identity
  Inode& inode;         // the kernel holds it while the file is open
  // What the kernel reads and writes the file through by passthrough; 0
  // when READ and WRITE requests come to izofs.
  const int32_t backing_id;
  // Opened for writing with passthrough: its writes (and those of a
  // mapping) never reach izofs, which compares the file's version at
  // FLUSH and RELEASE with `before_write` instead.
  const bool writes_unseen;
  // Written through izofs since its last CLOSE record.
  std::atomic<bool> written{false};
  std::mutex mutex;
  // The file as it was at the first write since the last CLOSE record. With
  // writes_unseen (guarded by Izofs::unseen_writes_mutex_ then): as it was
  // at the open, at the file's last CLOSE record or after izofs's own
  // last change of it.
  struct stat before_write = {};

 private:
  UniqueFd fd_;
};

namespace {

OpenFile& file_of_handle(uint64_t fh) {
  return *reinterpret_cast<OpenFile*>(static_cast<uintptr_t>(fh));
}

OpenFile& file_of(const fuse_file_info* fi) {
  return file_of_handle(fi->fh);
}

// One open directory, read with readdir(3); `entry` is the entry read but
// not yet sent (it did not fit in the last answer).
struct OpenDir {
  explicit OpenDir(DIR* d) : dir(d) {}
  ~OpenDir() { closedir(dir); }
  DIR* dir;
  off_t offset = 0;
  struct dirent* entry = nullptr;
};

OpenDir& dir_of(const fuse_file_info* fi) {
  return *reinterpret_cast<OpenDir*>(static_cast<uintptr_t>(fi->fh));
}

int errno_or_eio() {
  return errno != 0 ? errno : EIO;
}

// How many inodes (each holding a descriptor) izofs keeps at most: half its
// open-file limit, the rest being for open files and directories.
size_t inode_budget() {
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return 1 << 20;
  return std::max<size_t>(limit.rlim_cur / 2, 64);
}

}  // namespace

Result<std::unique_ptr<Izofs>> Izofs::create(const IzofsConfig& config) {
  UniqueFd root(::open(config.backing.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  struct stat st;
  if (!root.valid() || fstat(root.get(), &st) != 0) {
    return intersync::errno_error(config.backing + ": " + strerror(errno));
  }
  std::unique_ptr<Izofs> fs(new Izofs(config, std::move(root), st));
  if (Status s = fs->kml_.open(config.kml); !s.ok()) return s.error();
  if (!fs->kml_.repaired().empty()) {
    intersync::log_warn("izofs: {}: {}", config.kml, fs->kml_.repaired());
  }
  return fs;
}

Izofs::Izofs(const IzofsConfig& config, UniqueFd root, const struct stat& root_st)
    : config_(config),
      as_root_(geteuid() == 0),
      passthrough_([](uint64_t fh) { return file_of_handle(fh).backing_id; }),
      max_inodes_(inode_budget()),
      inodes_(std::move(root), root_st,
              [this](int32_t backing_id) { passthrough_.close_backing(backing_id); }),
      fetcher_(config.fileset, config.fetch_timeout) {}

void Izofs::start(struct fuse_session* se) {
  passthrough_.set_device(fuse_session_fd(se));
  kml_.start(kMaxSyncDelay);
  reclaimer_ = std::thread([this, se] { reclaim_inodes(se); });
}

Status Izofs::stop() {
  {
    std::lock_guard lock(reclaim_mutex_);
    stopping_ = true;
    reclaim_wanted_.notify_one();
  }
  if (reclaimer_.joinable()) reclaimer_.join();
  fetcher_.stop();
  return kml_.stop();
}

int Izofs::open_reclaiming(const std::function<int()>& open_fd) {
  for (int tries = 1;; tries++) {
    int fd = open_fd();
    if (fd >= 0 || (errno != EMFILE && errno != ENFILE) || tries == kDescriptorTries) return fd;
    reclaim_soon();
    std::this_thread::sleep_for(kDescriptorWait);
  }
}

void Izofs::reclaim_soon() {
  if (reclaim_asked_.exchange(true)) return;
  std::lock_guard lock(reclaim_mutex_);
  reclaim_wanted_.notify_one();
}

void Izofs::reclaim_inodes(struct fuse_session* se) {
  std::unique_lock lock(reclaim_mutex_);
  while (!stopping_) {
    reclaim_wanted_.wait_for(lock, kReclaimInterval,
                             [this] { return stopping_ || reclaim_asked_.load(); });
    reclaim_asked_.store(false);
    size_t held = inodes_.size();
    if (stopping_ || held <= max_inodes_) continue;
    lock.unlock();
    // The kernel drops the entries nobody uses and forgets their inodes;
    // a directory's entry takes its unused descendants along.
    for (const auto& entry : inodes_.least_recently_used(held - max_inodes_ / 2)) {
      fuse_lowlevel_notify_inval_entry(se, entry.parent, entry.name.data(), entry.name.size());
    }
    lock.lock();
    // Inodes still in use cannot be forgotten: when nothing went, give the
    // kernel a moment before trying again.
    if (inodes_.size() >= held) {
      reclaim_wanted_.wait_for(lock, kReclaimPause, [this] { return stopping_; });
    }
  }
}

// ------------------------------------------------------------- helpers

Caller Izofs::caller_of(fuse_req_t req) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  return {ctx->pid, ctx->uid, ctx->gid, replicator_.is_replicator(ctx->pid)};
}

std::optional<std::string> Izofs::path_of(int fd) const {
  char buf[PATH_MAX];
  ssize_t n = ::readlink(ProcPath(fd).c_str(), buf, sizeof buf);
  if (n < 0 || static_cast<size_t>(n) == sizeof buf) return std::nullopt;
  std::string_view path(buf, static_cast<size_t>(n));
  if (path.ends_with(" (deleted)")) {
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_nlink == 0) return std::nullopt;
  }
  std::string_view root = config_.backing;
  if (path == root) return std::string();
  if (root == "/") return std::string(path.substr(1));
  if (path.size() > root.size() && path.starts_with(root) && path[root.size()] == '/') {
    return std::string(path.substr(root.size() + 1));
  }
  return std::nullopt;
}

int Izofs::lookup_entry(Inode& parent, const char* name, fuse_entry_param* e) {
  *e = fuse_entry_param{};
  e->attr_timeout = e->entry_timeout = kCacheSeconds;
  UniqueFd fd(
      open_reclaiming([&] { return openat(parent.fd(), name, O_PATH | O_NOFOLLOW | O_CLOEXEC); }));
  if (!fd.valid() || fstat(fd.get(), &e->attr) != 0) return errno_or_eio();
  e->ino = inodes_.id_of(inodes_.remember(std::move(fd), e->attr, inodes_.id_of(parent), name));
  if (inodes_.size() > max_inodes_) reclaim_soon();
  return 0;
}

int Izofs::give_to_caller(int dirfd, const char* name, const Caller& c, const struct stat& dir) {
  if (!as_root_) return 0;
  // In a set-group-id directory the new object has the directory's group.
  gid_t gid = (dir.st_mode & S_ISGID) ? static_cast<gid_t>(-1) : c.gid;
  if (c.uid == 0 && (gid == 0 || gid == static_cast<gid_t>(-1))) return 0;
  int flags = AT_SYMLINK_NOFOLLOW | (*name == '\0' ? AT_EMPTY_PATH : 0);
  return fchownat(dirfd, name, c.uid, gid, flags) == 0 ? 0 : errno_or_eio();
}

KmlRecord Izofs::record(const Caller& c, KmlOp op) const {
  KmlRecord rec;
  rec.opcode = op;
  rec.pid = c.pid;
  // The original logged the real uid as auid; FUSE tells only the fsuid.
  rec.auid = c.uid;
  rec.fsuid = c.uid;
  rec.fsgid = c.gid;
  return rec;
}

KmlRecord Izofs::creation_record(const Caller& c, KmlOp op, std::string path,
                                 const struct stat& obj, const struct stat& dir_old,
                                 const struct stat& dir_new) const {
  KmlRecord rec = record(c, op);
  rec.path = std::move(path);
  rec.mode = obj.st_mode;
  rec.uid = obj.st_uid;
  rec.gid = obj.st_gid;
  rec.v_parent_old = version_of(dir_old);
  rec.v_parent_new = version_of(dir_new);
  rec.v_obj_new = version_of(obj);
  return rec;
}

int Izofs::journal(KmlRecord& rec) {
  if (Status s = kml_.append(rec); !s.ok()) {
    intersync::log_error("izofs: {} not journaled: {}", intersync::kml_op_name(rec.opcode),
                         s.error().message);
    return EIO;
  }
  return 0;
}

int Izofs::journal_removal(const Caller& c, const std::string& path, const struct stat& obj,
                           const std::string& old_target, const struct stat& dir_old,
                           const struct stat& dir_new) {
  KmlRecord rec = record(c, S_ISDIR(obj.st_mode) ? KmlOp::Rmdir : KmlOp::Unlink);
  rec.dir = intersync::parent_of(path);
  rec.name = intersync::base_name(path);
  rec.target = old_target;
  rec.v_parent_old = version_of(dir_old);
  rec.v_parent_new = version_of(dir_new);
  rec.v_obj_old = version_of(obj);
  rec.rollback = {obj.st_mode, static_cast<uint32_t>(obj.st_rdev), obj.st_uid, obj.st_gid};
  return journal(rec);
}

int Izofs::journal_appearance(const Caller& c, const std::string& path, int dirfd, const char* name,
                              const struct stat& dir_old, const struct stat& dir_new) {
  struct stat st;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return 0;  // gone again
  KmlOp op = S_ISREG(st.st_mode)   ? KmlOp::Create
             : S_ISDIR(st.st_mode) ? KmlOp::Mkdir
             : S_ISLNK(st.st_mode) ? KmlOp::Symlink
                                   : KmlOp::Mknod;
  KmlRecord rec = record(c, op);
  rec.path = path;
  rec.mode = st.st_mode;
  rec.uid = st.st_uid;
  rec.gid = st.st_gid;
  rec.major = major(st.st_rdev);
  rec.minor = minor(st.st_rdev);
  if (op == KmlOp::Symlink) rec.target = read_link_at(dirfd, name);
  rec.v_parent_old = version_of(dir_old);
  rec.v_parent_new = version_of(dir_new);
  rec.v_obj_new = version_of(st);
  if (op == KmlOp::Mkdir) {
    intersync::log_warn(
        "izofs: {}: directory moved in from an internal name; its entries are "
        "not journaled",
        path);
  }
  if (int err = journal(rec); err != 0 || op != KmlOp::Create) return err;
  KmlRecord close = record(c, KmlOp::Close);
  close.path = path;
  close.open_mode = st.st_mode;
  close.open_uid = st.st_uid;
  close.open_gid = st.st_gid;
  close.v_obj_new = version_of(st);
  close.ino = st.st_ino;
  return journal(close);
}

// ------------------------------------------------------------ the ops

void Izofs::init(struct fuse_conn_info* conn) {
  // open(O_TRUNC) arrives as one OPEN and is journaled there.
  if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
  // Read answers go from the backing file to /dev/fuse by splice; not with
  // SPLICE_MOVE, which has the kernel try to steal each page from the
  // backing file's page cache, fail while that file holds it and copy it
  // after all.
  if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want |= FUSE_CAP_SPLICE_WRITE;
  // Written data goes from /dev/fuse to the backing file by splice too
  // (SPLICE_READ, on by default), in requests that fit the pipe. Readahead
  // asks for as much at a time; the kernel keeps the smaller of this and
  // the mount's read_ahead_kb, which izofs.cc raises.
  conn->max_write = kRequestBytes;
  conn->max_readahead = kRequestBytes;
  // izofs writes as root, so the backing file system would leave set-user-id
  // bits on a file an ordinary user writes; the kernel clears them with a
  // SETATTR instead (journaled as any other).
  conn->want &= ~FUSE_CAP_HANDLE_KILLPRIV;
  // Every write must reach izofs with its handle for CLOSE to be right
  // (and the kernel allows no passthrough with it).
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;

  const char* why_not = no_passthrough_reason_    ? no_passthrough_reason_
                        : !passthrough_.offered() ? "the kernel offers no FUSE passthrough"
                                                  : nullptr;
  if (why_not) {
    intersync::log_info("izofs: file data goes through izofs ({})", why_not);
    return;
  }
  passthrough_.enable(true);
  // Every OPEN and CREATE must come through the session I/O's read: no
  // request spliced in (libfuse 3.14 splices none with izofs's I/O, but
  // may not always); with passthrough no WRITE comes to splice anyway.
  conn->want &= ~FUSE_CAP_SPLICE_READ;
  intersync::log_info("izofs: file data goes straight to the backing files (kernel passthrough)");
}

void Izofs::lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  fuse_entry_param e;
  int err = lookup_entry(inodes_.at(parent), name, &e);
  if (err == ENOENT) {
    // Remembered as absent for as long as an entry would be.
    e = fuse_entry_param{};
    e.entry_timeout = kCacheSeconds;
    fuse_reply_entry(req, &e);
  } else if (err != 0) {
    fuse_reply_err(req, err);
  } else {
    fuse_reply_entry(req, &e);
  }
}

void Izofs::forget(fuse_ino_t ino, uint64_t lookups) {
  inodes_.forget(inodes_.at(ino), lookups);
}

void Izofs::getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
  struct stat st;
  int fd = fi ? file_of(fi).fd() : inodes_.at(ino).fd();
  if (fstat(fd, &st) != 0) {
    fuse_reply_err(req, errno_or_eio());
    return;
  }
  fuse_reply_attr(req, &st, kCacheSeconds);
}

void Izofs::setattr(fuse_req_t req, fuse_ino_t ino, const struct stat& attr, int to_set,
                    struct fuse_file_info* fi) {
  Caller c = caller_of(req);
  Inode& inode = inodes_.at(ino);
  struct stat st;
  if (fstat(inode.fd(), &st) != 0) {
    fuse_reply_err(req, errno_or_eio());
    return;
  }
  // The kernel also names the handle of an open directory; only a regular
  // file's handle is an OpenFile.
  int fd = fi && S_ISREG(st.st_mode) ? file_of(fi).fd() : -1;
  bool growing_placeholder = (to_set & FUSE_SET_ATTR_SIZE) && attr.st_size > 0 && fd < 0 &&
                             !c.replicator && S_ISREG(st.st_mode) &&
                             has_absent_xattr(ProcPath(inode.fd()).c_str());
  if (growing_placeholder) {
    fetch_then(req, inode, [this, &inode, attr, to_set, c](fuse_req_t r) {
      do_setattr(r, inode, attr, to_set, -1, c);
    });
    return;
  }
  do_setattr(req, inode, attr, to_set, fd, c);
}

void Izofs::do_setattr(fuse_req_t req, Inode& inode, const struct stat& attr, int to_set, int fd,
                       const Caller& c) {
  const int object = fd >= 0 ? fd : inode.fd();
  const ProcPath proc(inode.fd());
  struct stat before;
  if (fstat(object, &before) != 0) {
    fuse_reply_err(req, errno_or_eio());
    return;
  }
  int rc = 0;
  if (to_set & FUSE_SET_ATTR_MODE) {
    rc = fd >= 0 ? fchmod(fd, attr.st_mode) : chmod(proc.c_str(), attr.st_mode);
  }
  if (rc == 0 && (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))) {
    uid_t uid = (to_set & FUSE_SET_ATTR_UID) ? attr.st_uid : static_cast<uid_t>(-1);
    gid_t gid = (to_set & FUSE_SET_ATTR_GID) ? attr.st_gid : static_cast<gid_t>(-1);
    rc = fchownat(object, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
  }
  if (rc == 0 && (to_set & FUSE_SET_ATTR_SIZE)) {
    rc = fd >= 0 ? ftruncate(fd, attr.st_size) : truncate(proc.c_str(), attr.st_size);
    // A placeholder cut to nothing has no content left to fetch.
    if (rc == 0 && attr.st_size == 0 && !c.replicator) ::removexattr(proc.c_str(), kAbsentXattr);
  }
  if (rc == 0 && (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME))) {
    struct timespec times[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
    if (to_set & FUSE_SET_ATTR_ATIME_NOW) {
      times[0].tv_nsec = UTIME_NOW;
    } else if (to_set & FUSE_SET_ATTR_ATIME) {
      times[0] = attr.st_atim;
    }
    if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
      times[1].tv_nsec = UTIME_NOW;
    } else if (to_set & FUSE_SET_ATTR_MTIME) {
      times[1] = attr.st_mtim;
    }
    rc = fd >= 0 ? futimens(fd, times) : utimensat(AT_FDCWD, proc.c_str(), times, 0);
  }
  struct stat after;
  if (rc != 0 || fstat(object, &after) != 0) {
    fuse_reply_err(req, errno_or_eio());
    return;
  }
  note_own_change(inode, before, after);

  uint32_t valid = intersync::kAttrCtime;
  if (to_set & FUSE_SET_ATTR_MODE) valid |= intersync::kAttrMode;
  if (to_set & FUSE_SET_ATTR_UID) valid |= intersync::kAttrUid;
  if (to_set & FUSE_SET_ATTR_GID) valid |= intersync::kAttrGid;
  if (to_set & FUSE_SET_ATTR_SIZE) valid |= intersync::kAttrSize;
  if (to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW)) valid |= intersync::kAttrMtime;
  // Access times are not replicated: a change of atime alone is no record.
  int err = 0;
  if (!c.replicator && valid != intersync::kAttrCtime) {
    err = journal_setattr(c, object, valid, before, after);
  }
  if (err != 0) {
    fuse_reply_err(req, err);
  } else {
    fuse_reply_attr(req, &after, kCacheSeconds);
  }
}

int Izofs::journal_setattr(const Caller& c, int object, uint32_t valid, const struct stat& before,
                           const struct stat& after) {
  auto path = path_of(object);
  if (!path || is_internal_path(*path) || after.st_nlink == 0) return 0;
  KmlRecord rec = record(c, KmlOp::Setattr);
  rec.path = *path;
  rec.valid = valid;
  if (valid & intersync::kAttrMode) rec.mode = after.st_mode;
  if (valid & intersync::kAttrUid) rec.uid = after.st_uid;
  if (valid & intersync::kAttrGid) rec.gid = after.st_gid;
  if (valid & intersync::kAttrSize) rec.size = static_cast<uint64_t>(after.st_size);
  if (valid & intersync::kAttrMtime) {
    rec.mtime_sec = static_cast<uint32_t>(after.st_mtim.tv_sec);
    rec.mtime_nsec = static_cast<uint32_t>(after.st_mtim.tv_nsec);
  }
  rec.ctime_sec = static_cast<uint32_t>(after.st_ctim.tv_sec);
  rec.ctime_nsec = static_cast<uint32_t>(after.st_ctim.tv_nsec);
  rec.v_obj_old = version_of(before);
  rec.rollback = {before.st_mode, static_cast<uint32_t>(before.st_rdev), before.st_uid,
                  before.st_gid};
  return journal(rec);
}

void Izofs::readlink(fuse_req_t req, fuse_ino_t ino) {
  char buf[PATH_MAX + 1];
  ssize_t n = readlinkat(inodes_.at(ino).fd(), "", buf, sizeof buf);
  if (n < 0 || static_cast<size_t>(n) == sizeof buf) {
    fuse_reply_err(req, n < 0 ? errno_or_eio() : ENAMETOOLONG);
    return;
  }
  buf[n] = '\0';
  fuse_reply_readlink(req, buf);
}

void Izofs::make_node(fuse_req_t req, fuse_ino_t parent_id, const char* name, KmlOp op,
                      const std::function<int(int dirfd)>& make, const char* symlink_target) {
  Caller c = caller_of(req);
  Inode& parent = inodes_.at(parent_id);
  struct stat dir_old;
  if (fstat(parent.fd(), &dir_old) != 0 || make(parent.fd()) != 0) {
    fuse_reply_err(req, errno_or_eio());
    return;
  }
  fuse_entry_param e;
  int err = give_to_caller(parent.fd(), name, c, dir_old);
  if (err == 0) err = lookup_entry(parent, name, &e);
  if (err != 0) {
    fuse_reply_err(req, err);
    return;
  }
  auto dir = c.replicator ? std::nullopt : path_of(parent.fd());
  if (dir && !is_internal_path(join_rel(*dir, name))) {
    struct stat dir_new;
    fstat(parent.fd(), &dir_new);
    KmlRecord rec = creation_record(c, op, join_rel(*dir, name), e.attr, dir_old, dir_new);
    rec.major = major(e.attr.st_rdev);
    rec.minor = minor(e.attr.st_rdev);
    if (symlink_target) rec.target = symlink_target;
    err = journal(rec);
  }
  if (err != 0) {
    inodes_.forget(inodes_.at(e.ino), 1);
    fuse_reply_err(req, err);
    return;
  }
  fuse_reply_entry(req, &e);
}

void Izofs::mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  make_node(
      req, parent, name, KmlOp::Mknod, [&](int dirfd) { return mknodat(dirfd, name, mode, rdev); },
      nullptr);
}

void Izofs::mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  make_node(
      req, parent, name, KmlOp::Mkdir, [&](int dirfd) { return mkdirat(dirfd, name, mode); },
      nullptr);
}

void Izofs::symlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
  make_node(
      req, parent, name, KmlOp::Symlink, [&](int dirfd) { return symlinkat(target, dirfd, name); },
      target);
}

void Izofs::link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
  Caller c = caller_of(req);
  Inode& object = inodes_.at(ino);
  Inode& dir = inodes_.at(newparent);
  struct stat dir_old;
  if (fstat(dir.fd(), &dir_old) != 0 ||
      linkat(AT_FDCWD, ProcPath(object.fd()).c_str(), dir.fd(), newname, AT_SYMLINK_FOLLOW) != 0) {
    fuse_reply_err(req, errno_or_eio());
    return;
  }
  fuse_entry_param e;
  if (int err = lookup_entry(dir, newname, &e); err != 0) {
    fuse_reply_err(req, err);
    return;
  }
  int err = 0;
  auto dir_path = c.replicator ? std::nullopt : path_of(dir.fd());
  if (dir_path && !is_internal_path(join_rel(*dir_path, newname))) {
    std::string target = join_rel(*dir_path, newname);
    struct stat dir_new;
    fstat(dir.fd(), &dir_new);
    auto src = path_of(object.fd());
    if (src && !is_internal_path(*src)) {
      KmlRecord rec = record(c, KmlOp::Link);
      rec.src = *src;
      rec.target = target;
      rec.v_parent_old = version_of(dir_old);
      rec.v_parent_new = version_of(dir_new);
      rec.v_obj_new = version_of(e.attr);
      err = journal(rec);
    } else {
      // A link to something no replica knows by name: it appears.
      err = journal_appearance(c, target, dir.fd(), newname, dir_old, dir_new);
    }
  }
  if (err != 0) {
    inodes_.forget(inodes_.at(e.ino), 1);
    fuse_reply_err(req, err);
    return;
  }
  fuse_reply_entry(req, &e);
}

void Izofs::unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  remove_entry(req, parent, name, false);
}

void Izofs::rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  remove_entry(req, parent, name, true);
}

void Izofs::remove_entry(fuse_req_t req, fuse_ino_t parent, const char* name, bool is_dir) {
  Caller c = caller_of(req);
  Inode& dir = inodes_.at(parent);
  auto dir_path = c.replicator ? std::nullopt : path_of(dir.fd());
  bool journaled = dir_path && !is_internal_path(join_rel(*dir_path, name));
  struct stat dir_old, object;
  std::string old_target;
  if (journaled) {
    if (fstat(dir.fd(), &dir_old) != 0 ||
        fstatat(dir.fd(), name, &object, AT_SYMLINK_NOFOLLOW) != 0) {
      fuse_reply_err(req, errno_or_eio());
      return;
    }
    if (S_ISLNK(object.st_mode)) old_target = read_link_at(dir.fd(), name);
  }
  if (unlinkat(dir.fd(), name, is_dir ? AT_REMOVEDIR : 0) != 0) {
    fuse_reply_err(req, errno_or_eio());
    return;
  }
  int err = 0;
  if (journaled) {
    struct stat dir_new;
    fstat(dir.fd(), &dir_new);
    err = journal_removal(c, join_rel(*dir_path, name), object, old_target, dir_old, dir_new);
  }
  fuse_reply_err(req, err);
}

void Izofs::rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
                   const char* newname, unsigned int flags) {
  // An exchange of two names has no record to describe it.
  if (flags & ~static_cast<unsigned int>(RENAME_NOREPLACE)) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  Caller c = caller_of(req);
  Inode& from = inodes_.at(parent);
  Inode& to = inodes_.at(newparent);
  struct stat from_old, to_old;
  if (!c.replicator && (fstat(from.fd(), &from_old) != 0 || fstat(to.fd(), &to_old) != 0)) {
    fuse_reply_err(req, errno_or_eio());
    return;
  }
  if (renameat2(from.fd(), name, to.fd(), newname, flags) != 0) {
    fuse_reply_err(req, errno_or_eio());
    return;
  }
  struct stat moved;
  const bool found = fstatat(to.fd(), newname, &moved, AT_SYMLINK_NOFOLLOW) == 0;
  if (found) inodes_.renamed(moved, newparent, newname);
  auto from_dir = c.replicator ? std::nullopt : path_of(from.fd());
  auto to_dir = c.replicator ? std::nullopt : path_of(to.fd());
  if (!from_dir || !to_dir) {
    fuse_reply_err(req, 0);
    return;
  }
  std::string src = join_rel(*from_dir, name);
  std::string tgt = join_rel(*to_dir, newname);
  struct stat from_new, to_new;
  fstat(from.fd(), &from_new);
  fstat(to.fd(), &to_new);
  int err = 0;
  if (!is_internal_path(src) && !is_internal_path(tgt)) {
    KmlRecord rec = record(c, KmlOp::Rename);
    rec.src = src;
    rec.target = tgt;
    rec.v_parent_old = version_of(from_old);
    rec.v_parent_new = version_of(from_new);
    rec.v_tgtdir_old = version_of(to_old);
    rec.v_tgtdir_new = version_of(to_new);
    err = journal(rec);
  } else if (!is_internal_path(src)) {
    // Out of sight: for a replica it is gone.
    if (found) {
      std::string old_target = S_ISLNK(moved.st_mode) ? read_link_at(to.fd(), newname) : "";
      err = journal_removal(c, src, moved, old_target, from_old, from_new);
    }
  } else if (!is_internal_path(tgt)) {
    err = journal_appearance(c, tgt, to.fd(), newname, to_old, to_new);
  }
  fuse_reply_err(req, err);
}

void Izofs::create(fuse_req_t req, fuse_ino_t parent_id, const char* name, mode_t mode,
                   struct fuse_file_info* fi) {
  Caller c = caller_of(req);
  Inode& parent = inodes_.at(parent_id);
  struct stat dir_old;
  if (fstat(parent.fd(), &dir_old) != 0) {
    fuse_reply_err(req, errno_or_eio());
    return;
  }
  int flags = (fi->flags | O_CREAT | O_EXCL | O_CLOEXEC) & ~O_NOFOLLOW;
  UniqueFd fd(open_reclaiming([&] { return openat(parent.fd(), name, flags, mode); }));
  if (!fd.valid()) {
    int err = errno_or_eio();
    fuse_entry_param e;
    if (err == EEXIST && !(fi->flags & O_EXCL) && (err = lookup_entry(parent, name, &e)) == 0) {
      // The kernel believed the name absent; it is an open of what is there.
      open_inode(req, inodes_.at(e.ino), *fi, c, e, false);
      return;
    }
    fuse_reply_err(req, err);
    return;
  }
  int err = give_to_caller(fd.get(), "", c, dir_old);
  // A change of owner clears set-user-id and set-group-id: put them back.
  if (err == 0 && as_root_ && (mode & (S_ISUID | S_ISGID)) && fchmod(fd.get(), mode) != 0) {
    err = errno_or_eio();
  }
  fuse_entry_param e{};
  e.attr_timeout = e.entry_timeout = kCacheSeconds;
  UniqueFd object(
      open_reclaiming([&] { return ::open(ProcPath(fd.get()).c_str(), O_PATH | O_CLOEXEC); }));
  if (err == 0 && (!object.valid() || fstat(fd.get(), &e.attr) != 0)) err = errno_or_eio();
  if (err != 0) {
    fuse_reply_err(req, err);
    return;
  }
  e.ino = inodes_.id_of(inodes_.remember(std::move(object), e.attr, parent_id, name));
  if (inodes_.size() > max_inodes_) reclaim_soon();
  auto dir = c.replicator ? std::nullopt : path_of(parent.fd());
  if (dir && !is_internal_path(join_rel(*dir, name))) {
    struct stat dir_new;
    fstat(parent.fd(), &dir_new);
    KmlRecord rec =
        creation_record(c, KmlOp::Create, join_rel(*dir, name), e.attr, dir_old, dir_new);
    err = journal(rec);
  }
  if (err != 0) {
    inodes_.forget(inodes_.at(e.ino), 1);
    fuse_reply_err(req, err);
    return;
  }
  fi->keep_cache = 1;
  answer_open(req, inodes_.at(e.ino), std::move(fd), *fi, c, e);
}

void Izofs::open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
  open_inode(req, inodes_.at(ino), *fi, caller_of(req), std::nullopt, false);
}

void Izofs::open_inode(fuse_req_t req, Inode& inode, fuse_file_info fi, const Caller& c,
                       std::optional<fuse_entry_param> entry, bool fetched) {
  const int flags = (fi.flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW)) | O_CLOEXEC;
  const bool truncating = (flags & O_TRUNC) && !c.replicator;
  struct stat before;
  if (truncating && fstat(inode.fd(), &before) != 0) {
    fuse_reply_err(req, errno_or_eio());
    return;
  }
  UniqueFd fd(open_reclaiming([&] { return ::open(ProcPath(inode.fd()).c_str(), flags); }));
  if (!fd.valid()) {
    fuse_reply_err(req, errno_or_eio());
    return;
  }
  if (!c.replicator && fgetxattr(fd.get(), kAbsentXattr, nullptr, 0) >= 0) {
    if (truncating) {
      // Emptied by this open: nothing left to fetch.
      fremovexattr(fd.get(), kAbsentXattr);
    } else if (fetched) {
      intersync::log_error(
          "izofs: {}: still a placeholder after the replicator said it fetched "
          "it; the open fails with EIO",
          path_of(inode.fd()).value_or("?"));
      fuse_reply_err(req, EIO);
      return;
    } else {
      fd.reset();
      fetch_then(req, inode, [this, &inode, fi, c, entry](fuse_req_t r) {
        open_inode(r, inode, fi, c, entry, true);
      });
      return;
    }
  }
  if (truncating) {
    struct stat after;
    int err = fstat(fd.get(), &after) == 0 ? 0 : errno_or_eio();
    if (err == 0) {
      err = journal_setattr(c, fd.get(),
                            intersync::kAttrSize | intersync::kAttrMtime | intersync::kAttrCtime,
                            before, after);
    }
    if (err != 0) {
      fuse_reply_err(req, err);
      return;
    }
  }
  // After a fetch the kernel may still hold the placeholder's zeros.
  fi.keep_cache = !fetched;
  answer_open(req, inode, std::move(fd), fi, c, entry);
}

void Izofs::fetch_then(fuse_req_t req, Inode& inode, std::function<void(fuse_req_t)> then) {
  auto path = path_of(inode.fd());
  std::string socket = replicator_.socket();
  if (!path || socket.empty()) {
    intersync::log_error(
        "izofs: {}: content not fetched: no replicator is registered; failing "
        "with EIO",
        path.value_or("(deleted)"));
    fuse_reply_err(req, EIO);
    return;
  }
  fetcher_.fetch(socket, *path, [this, req, &inode, path = *path, then](Status fetched) {
    if (!fetched.ok()) {
      intersync::log_error("izofs: {}: content not fetched: {}; failing with EIO", path,
                           fetched.error().message);
      fuse_reply_err(req, EIO);
      return;
    }
    // The replicator renamed the fetched file over the placeholder: from now
    // on the inode is that file.
    UniqueFd object(openat(inodes_.root().fd(), path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    struct stat st;
    if (!object.valid() || fstat(object.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
      intersync::log_error("izofs: {}: fetched, but no regular file is there; failing with EIO",
                           path);
      fuse_reply_err(req, EIO);
      return;
    }
    inodes_.repoint(inode, std::move(object), st);
    then(req);
  });
}

void Izofs::answer_open(fuse_req_t req, Inode& inode, UniqueFd fd, fuse_file_info fi,
                        const Caller& c, const std::optional<fuse_entry_param>& entry) {
  // With passthrough every open of a regular file is one, the replicator's
  // too: the kernel refuses to open an inode cached and by passthrough at
  // once. It also refuses FOPEN_KEEP_CACHE with passthrough, and needs
  // none: the kernel's pages are then the backing file's own.
  const int32_t backing_id = passthrough_.enabled() ? backing_id_of(inode) : 0;
  if (backing_id > 0) fi.keep_cache = 0;
  auto file = std::make_unique<OpenFile>(std::move(fd), c, fi.flags, inode, backing_id);
  fi.fh = reinterpret_cast<uintptr_t>(file.get());
  // close() waits for a FLUSH only where a CLOSE record may be due.
  fi.noflush = (fi.flags & O_ACCMODE) == O_RDONLY || c.replicator;
  if (file->writes_unseen) {
    std::lock_guard lock(unseen_writes_mutex_);
    inode.unseen_writers.push_back(file.get());
  }
  if ((entry ? fuse_reply_create(req, &*entry, &fi) : fuse_reply_open(req, &fi)) == 0) {
    file.release();
    return;
  }
  // The caller gave up: the kernel never saw the handle (nor a new entry).
  if (file->writes_unseen) {
    std::lock_guard lock(unseen_writes_mutex_);
    std::erase(inode.unseen_writers, file.get());
  }
  if (entry) inodes_.forget(inodes_.at(entry->ino), 1);
}

int32_t Izofs::backing_id_of(Inode& inode) {
  if (int32_t id = inode.backing_id(); id > 0) return id;
  int32_t id = passthrough_.open_backing(inode.fd());
  if (id == -EPERM) {
    passthrough_.enable(false);
    intersync::log_warn(
        "izofs: the kernel refused a backing file (EPERM): file data goes through izofs from "
        "now on");
    return 0;
  }
  if (id <= 0) {
    if (!told_no_backing_file_.exchange(true)) {
      intersync::log_warn(
          "izofs: {}: no backing file for passthrough: {}; such opens go through izofs (said "
          "once)",
          path_of(inode.fd()).value_or("?"), strerror(-id));
    }
    return 0;
  }
  if (inode.set_backing_id(id)) return id;
  passthrough_.close_backing(id);  // another open of the inode set one first
  return inode.backing_id();
}

void Izofs::read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info* fi) {
  fuse_bufvec data = fd_bufvec(file_of(fi).fd(), size, off);
  fuse_reply_data(req, &data, static_cast<fuse_buf_copy_flags>(0));
}

void Izofs::note_write(OpenFile& file) {
  if (file.opener.replicator || file.writes_unseen) return;
  if (file.written.load(std::memory_order_acquire)) return;
  std::lock_guard lock(file.mutex);
  if (file.written.load(std::memory_order_relaxed)) return;
  fstat(file.fd(), &file.before_write);
  file.written.store(true, std::memory_order_release);
}

void Izofs::note_own_change(Inode& inode, const struct stat& before, const struct stat& after) {
  std::lock_guard lock(unseen_writes_mutex_);
  // Journaled as what it is; a CLOSE is due only for a change before it.
  for (OpenFile* file : inode.unseen_writers) {
    if (version_of(file->before_write) == version_of(before)) file->before_write = after;
  }
}

int Izofs::journal_close(OpenFile& file) {
  if (file.opener.replicator) return 0;
  if (!file.writes_unseen && !file.written.load(std::memory_order_acquire)) return 0;
  std::lock_guard lock(file.writes_unseen ? unseen_writes_mutex_ : file.mutex);
  struct stat before = file.before_write, now;
  if (file.writes_unseen) {
    if (fstat(file.fd(), &now) != 0 || version_of(now) == version_of(before)) return 0;
    // This CLOSE tells the change to every handle, whichever wrote it.
    for (OpenFile* writer : file.inode.unseen_writers) writer->before_write = now;
  } else {
    if (!file.written.load(std::memory_order_relaxed)) return 0;
    file.written.store(false, std::memory_order_relaxed);
    if (fstat(file.fd(), &now) != 0) return 0;
  }
  if (now.st_nlink == 0) return 0;  // deleted: nothing to tell
  auto path = path_of(file.fd());
  if (!path || is_internal_path(*path)) return 0;
  KmlRecord rec = record(file.opener, KmlOp::Close);
  rec.path = *path;
  rec.open_mode = before.st_mode;
  rec.open_uid = before.st_uid;
  rec.open_gid = before.st_gid;
  rec.v_obj_old = version_of(before);
  rec.v_obj_new = version_of(now);
  rec.ino = now.st_ino;
  rec.generation = file_generation(file.fd());
  return journal(rec);
}

void Izofs::write_buf(fuse_req_t req, struct fuse_bufvec* in, off_t off,
                      struct fuse_file_info* fi) {
  OpenFile& file = file_of(fi);
  note_write(file);
  fuse_bufvec out = fd_bufvec(file.fd(), fuse_buf_size(in), off);
  ssize_t n = fuse_buf_copy(&out, in, static_cast<fuse_buf_copy_flags>(0));
  if (n < 0) {
    fuse_reply_err(req, static_cast<int>(-n));
  } else {
    fuse_reply_write(req, static_cast<size_t>(n));
  }
}

void Izofs::flush(fuse_req_t req, struct fuse_file_info* fi) {
  fuse_reply_err(req, journal_close(file_of(fi)));
}

void Izofs::release(fuse_req_t req, struct fuse_file_info* fi) {
  std::unique_ptr<OpenFile> file(&file_of(fi));
  journal_close(*file);
  if (file->writes_unseen) {
    std::lock_guard lock(unseen_writes_mutex_);
    std::erase(file->inode.unseen_writers, file.get());
  }
  fuse_reply_err(req, 0);
}

void Izofs::fsync(fuse_req_t req, int datasync, struct fuse_file_info* fi) {
  int fd = file_of(fi).fd();
  if ((datasync ? fdatasync(fd) : ::fsync(fd)) != 0) {
    fuse_reply_err(req, errno_or_eio());
    return;
  }
  fuse_reply_err(req, sync_journal());
}

int Izofs::sync_journal() {
  if (Status s = kml_.sync(); !s.ok()) {
    intersync::log_error("izofs: {}", s.error().message);
    return EIO;
  }
  return 0;
}

void Izofs::fallocate(fuse_req_t req, int mode, off_t off, off_t len, struct fuse_file_info* fi) {
  OpenFile& file = file_of(fi);
  note_write(file);
  fuse_reply_err(req, ::fallocate(file.fd(), mode, off, len) == 0 ? 0 : errno_or_eio());
}

void Izofs::copy_file_range(fuse_req_t req, off_t off_in, struct fuse_file_info* fi_in,
                            off_t off_out, struct fuse_file_info* fi_out, size_t len, int flags) {
  OpenFile& out = file_of(fi_out);
  note_write(out);
  ssize_t n = ::copy_file_range(file_of(fi_in).fd(), &off_in, out.fd(), &off_out, len,
                                static_cast<unsigned int>(flags));
  if (n < 0) {
    fuse_reply_err(req, errno_or_eio());
  } else {
    fuse_reply_write(req, static_cast<size_t>(n));
  }
}

void Izofs::lseek(fuse_req_t req, off_t off, int whence, struct fuse_file_info* fi) {
  off_t pos = ::lseek(file_of(fi).fd(), off, whence);
  if (pos < 0) {
    fuse_reply_err(req, errno_or_eio());
  } else {
    fuse_reply_lseek(req, pos);
  }
}

void Izofs::opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
  Inode& inode = inodes_.at(ino);
  int fd =
      open_reclaiming([&] { return openat(inode.fd(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC); });
  DIR* dir = fd >= 0 ? fdopendir(fd) : nullptr;
  if (!dir) {
    int err = errno_or_eio();
    if (fd >= 0) close(fd);
    fuse_reply_err(req, err);
    return;
  }
  auto open_dir = std::make_unique<OpenDir>(dir);
  fi->fh = reinterpret_cast<uintptr_t>(open_dir.get());
  if (fuse_reply_open(req, fi) == 0) open_dir.release();
}

void Izofs::readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
                    struct fuse_file_info* fi, bool plus) {
  OpenDir& d = dir_of(fi);
  Inode& dir = inodes_.at(ino);
  std::vector<char> buf(size);
  size_t used = 0;
  int err = 0;
  if (offset != d.offset) {
    seekdir(d.dir, offset);
    d.entry = nullptr;
    d.offset = offset;
  }
  for (;;) {
    if (!d.entry) {
      errno = 0;
      d.entry = ::readdir(d.dir);
      if (!d.entry) {
        err = errno;
        break;
      }
    }
    const char* name = d.entry->d_name;
    const off_t next = d.entry->d_off;
    size_t size_needed;
    if (plus) {
      fuse_entry_param e{};
      // Over the inode budget (a large listing), entries go without their
      // attributes: the kernel looks them up when they are used.
      if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
          inodes_.size() > max_inodes_ + max_inodes_ / 2) {
        e.attr.st_ino = d.entry->d_ino;
        e.attr.st_mode = static_cast<mode_t>(d.entry->d_type) << 12;
      } else if ((err = lookup_entry(dir, name, &e)) == ENOENT) {
        err = 0;  // removed since it was read: left out
        d.entry = nullptr;
        d.offset = next;
        continue;
      } else if (err != 0) {
        break;
      }
      size_needed = fuse_add_direntry_plus(req, buf.data() + used, size - used, name, &e, next);
      if (size_needed > size - used) {
        if (e.ino != 0) inodes_.forget(inodes_.at(e.ino), 1);
        break;
      }
    } else {
      struct stat st = {};
      st.st_ino = d.entry->d_ino;
      st.st_mode = static_cast<mode_t>(d.entry->d_type) << 12;
      size_needed = fuse_add_direntry(req, buf.data() + used, size - used, name, &st, next);
      if (size_needed > size - used) break;
    }
    used += size_needed;
    d.entry = nullptr;
    d.offset = next;
  }
  // An error after some entries is reported by the next call.
  if (err != 0 && used == 0) {
    fuse_reply_err(req, err);
  } else {
    fuse_reply_buf(req, buf.data(), used);
  }
}

void Izofs::releasedir(fuse_req_t req, struct fuse_file_info* fi) {
  delete &dir_of(fi);
  fuse_reply_err(req, 0);
}

void Izofs::fsyncdir(fuse_req_t req, int datasync, struct fuse_file_info* fi) {
  int fd = dirfd(dir_of(fi).dir);
  if ((datasync ? fdatasync(fd) : ::fsync(fd)) != 0) {
    fuse_reply_err(req, errno_or_eio());
    return;
  }
  fuse_reply_err(req, sync_journal());
}

void Izofs::statfs(fuse_req_t req, fuse_ino_t ino) {
  struct statvfs sv;
  if (fstatvfs(inodes_.at(ino).fd(), &sv) != 0) {
    fuse_reply_err(req, errno_or_eio());
    return;
  }
  fuse_reply_statfs(req, &sv);
}

// ------------------------------------------------------------- xattrs

bool Izofs::is_root_virtual_xattr(fuse_ino_t ino, const char* name) const {
  return ino == FUSE_ROOT_ID &&
         (strcmp(name, kFilesetXattr) == 0 || strcmp(name, kBackingXattr) == 0 ||
          strcmp(name, kReplicatorXattr) == 0);
}

void Izofs::set_virtual_xattr(fuse_req_t req, const char* name, std::string_view value) {
  if (strcmp(name, kReplicatorXattr) != 0) {
    fuse_reply_err(req, EPERM);
    return;
  }
  // Who may say which process's changes go unjournaled: root, or whoever
  // mounted.
  const fuse_ctx* ctx = fuse_req_ctx(req);
  if (ctx->uid != 0 && ctx->uid != geteuid()) {
    fuse_reply_err(req, EPERM);
    return;
  }
  if (value.empty()) {
    replicator_.unregister();
    fuse_reply_err(req, 0);
    return;
  }
  if (value.front() != '/' || value.find('\0') != std::string_view::npos) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  Status s = replicator_.register_process_of(ctx->pid, std::string(value));
  if (!s.ok()) intersync::log_error("izofs: replicator not registered: {}", s.error().message);
  fuse_reply_err(req, s.ok() ? 0 : -s.error().code);
}

void Izofs::get_virtual_xattr(fuse_req_t req, const char* name, size_t size) {
  std::string value = strcmp(name, kFilesetXattr) == 0   ? config_.fileset
                      : strcmp(name, kBackingXattr) == 0 ? config_.backing
                                                         : replicator_.socket();
  if (value.empty()) {
    fuse_reply_err(req, ENODATA);
  } else if (size == 0) {
    fuse_reply_xattr(req, value.size());
  } else if (size < value.size()) {
    fuse_reply_err(req, ERANGE);
  } else {
    fuse_reply_buf(req, value.data(), value.size());
  }
}

void Izofs::setxattr(fuse_req_t req, fuse_ino_t ino, const char* name, std::string_view value,
                     int flags) {
  if (is_root_virtual_xattr(ino, name)) {
    set_virtual_xattr(req, name, value);
    return;
  }
  change_xattr(req, ino, name, value, flags, KmlOp::SetExtAttr);
}

void Izofs::removexattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
  if (is_root_virtual_xattr(ino, name)) {
    set_virtual_xattr(req, name, "");
    return;
  }
  change_xattr(req, ino, name, "", 0, KmlOp::DelExtAttr);
}

void Izofs::change_xattr(fuse_req_t req, fuse_ino_t ino, const char* name, std::string_view value,
                         int flags, KmlOp op) {
  Caller c = caller_of(req);
  Inode& inode = inodes_.at(ino);
  const ProcPath proc(inode.fd());
  const bool journaled =
      !c.replicator && !std::string_view(name).starts_with(kNoJournalXattrPrefix);
  struct stat before;
  if (journaled && fstat(inode.fd(), &before) != 0) {
    fuse_reply_err(req, errno_or_eio());
    return;
  }
  int rc = op == KmlOp::SetExtAttr
               ? ::setxattr(proc.c_str(), name, value.data(), value.size(), flags)
               : ::removexattr(proc.c_str(), name);
  if (rc != 0) {
    fuse_reply_err(req, errno_or_eio());
    return;
  }
  int err = 0;
  auto path = journaled ? path_of(inode.fd()) : std::nullopt;
  if (path && !is_internal_path(*path)) {
    struct stat after;
    fstat(inode.fd(), &after);
    note_own_change(inode, before, after);
    KmlRecord rec = record(c, op);
    rec.path = *path;
    rec.name = name;
    rec.value = value;
    rec.flags = static_cast<uint32_t>(flags);
    rec.mode = after.st_mode;
    rec.v_obj_old = version_of(before);
    rec.v_obj_new = version_of(after);
    err = journal(rec);
  }
  fuse_reply_err(req, err);
}

void Izofs::getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  if (is_root_virtual_xattr(ino, name)) {
    get_virtual_xattr(req, name, size);
    return;
  }
  const ProcPath proc(inodes_.at(ino).fd());
  std::vector<char> buf(size);
  ssize_t n = ::getxattr(proc.c_str(), name, size ? buf.data() : nullptr, size);
  if (n < 0) {
    fuse_reply_err(req, errno_or_eio());
  } else if (size == 0) {
    fuse_reply_xattr(req, static_cast<size_t>(n));
  } else {
    fuse_reply_buf(req, buf.data(), static_cast<size_t>(n));
  }
}

void Izofs::listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  const ProcPath proc(inodes_.at(ino).fd());
  std::vector<char> buf(size);
  ssize_t n = ::listxattr(proc.c_str(), size ? buf.data() : nullptr, size);
  if (n < 0) {
    fuse_reply_err(req, errno_or_eio());
  } else if (size == 0) {
    fuse_reply_xattr(req, static_cast<size_t>(n));
  } else {
    fuse_reply_buf(req, buf.data(), static_cast<size_t>(n));
  }
}

// ------------------------------------------------------ the ops table

namespace {

Izofs& fs(fuse_req_t req) {
  return *static_cast<Izofs*>(fuse_req_userdata(req));
}

fuse_lowlevel_ops make_operations() {
  fuse_lowlevel_ops ops{};
  ops.init = [](void* userdata, fuse_conn_info* conn) {
    static_cast<Izofs*>(userdata)->init(conn);
  };
  ops.lookup = [](fuse_req_t req, fuse_ino_t parent, const char* name) {
    fs(req).lookup(req, parent, name);
  };
  ops.forget = [](fuse_req_t req, fuse_ino_t ino, uint64_t lookups) {
    fs(req).forget(ino, lookups);
    fuse_reply_none(req);
  };
  ops.forget_multi = [](fuse_req_t req, size_t count, fuse_forget_data* forgets) {
    for (size_t i = 0; i < count; i++) fs(req).forget(forgets[i].ino, forgets[i].nlookup);
    fuse_reply_none(req);
  };
  ops.getattr = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    fs(req).getattr(req, ino, fi);
  };
  ops.setattr = [](fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
                   fuse_file_info* fi) { fs(req).setattr(req, ino, *attr, to_set, fi); };
  ops.readlink = [](fuse_req_t req, fuse_ino_t ino) { fs(req).readlink(req, ino); };
  ops.mknod = [](fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
    fs(req).mknod(req, parent, name, mode, rdev);
  };
  ops.mkdir = [](fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
    fs(req).mkdir(req, parent, name, mode);
  };
  ops.unlink = [](fuse_req_t req, fuse_ino_t parent, const char* name) {
    fs(req).unlink(req, parent, name);
  };
  ops.rmdir = [](fuse_req_t req, fuse_ino_t parent, const char* name) {
    fs(req).rmdir(req, parent, name);
  };
  ops.symlink = [](fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
    fs(req).symlink(req, target, parent, name);
  };
  ops.rename = [](fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
                  const char* newname, unsigned int flags) {
    fs(req).rename(req, parent, name, newparent, newname, flags);
  };
  ops.link = [](fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
    fs(req).link(req, ino, newparent, newname);
  };
  ops.open = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) { fs(req).open(req, ino, fi); };
  ops.read = [](fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
    fs(req).read(req, size, off, fi);
  };
  ops.write_buf = [](fuse_req_t req, fuse_ino_t, fuse_bufvec* in, off_t off, fuse_file_info* fi) {
    fs(req).write_buf(req, in, off, fi);
  };
  ops.flush = [](fuse_req_t req, fuse_ino_t, fuse_file_info* fi) { fs(req).flush(req, fi); };
  ops.release = [](fuse_req_t req, fuse_ino_t, fuse_file_info* fi) { fs(req).release(req, fi); };
  ops.fsync = [](fuse_req_t req, fuse_ino_t, int datasync, fuse_file_info* fi) {
    fs(req).fsync(req, datasync, fi);
  };
  ops.opendir = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    fs(req).opendir(req, ino, fi);
  };
  ops.readdir = [](fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
    fs(req).readdir(req, ino, size, off, fi, false);
  };
  ops.readdirplus = [](fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
    fs(req).readdir(req, ino, size, off, fi, true);
  };
  ops.releasedir = [](fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
    fs(req).releasedir(req, fi);
  };
  ops.fsyncdir = [](fuse_req_t req, fuse_ino_t, int datasync, fuse_file_info* fi) {
    fs(req).fsyncdir(req, datasync, fi);
  };
  ops.statfs = [](fuse_req_t req, fuse_ino_t ino) { fs(req).statfs(req, ino); };
  ops.setxattr = [](fuse_req_t req, fuse_ino_t ino, const char* name, const char* value,
                    size_t size, int flags) {
    fs(req).setxattr(req, ino, name, std::string_view(value, size), flags);
  };
  ops.getxattr = [](fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
    fs(req).getxattr(req, ino, name, size);
  };
  ops.listxattr = [](fuse_req_t req, fuse_ino_t ino, size_t size) {
    fs(req).listxattr(req, ino, size);
  };
  ops.removexattr = [](fuse_req_t req, fuse_ino_t ino, const char* name) {
    fs(req).removexattr(req, ino, name);
  };
  ops.create = [](fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
                  fuse_file_info* fi) { fs(req).create(req, parent, name, mode, fi); };
  ops.fallocate = [](fuse_req_t req, fuse_ino_t, int mode, off_t off, off_t len,
                     fuse_file_info* fi) { fs(req).fallocate(req, mode, off, len, fi); };
  ops.copy_file_range = [](fuse_req_t req, fuse_ino_t, off_t off_in, fuse_file_info* fi_in,
                           fuse_ino_t, off_t off_out, fuse_file_info* fi_out, size_t len,
                           int flags) {
    fs(req).copy_file_range(req, off_in, fi_in, off_out, fi_out, len, flags);
  };
  ops.lseek = [](fuse_req_t req, fuse_ino_t, off_t off, int whence, fuse_file_info* fi) {
    fs(req).lseek(req, off, whence, fi);
  };
  return ops;
}

}  // namespace

const fuse_lowlevel_ops& Izofs::operations() {
  static const fuse_lowlevel_ops ops = make_operations();
  return ops;
}

int Izofs::take_session_io(struct fuse_session* se) {
  no_passthrough_reason_ = !config_.passthrough ? "-o no_passthrough"
                           : !kernel_may_offer_passthrough()
                               ? "the kernel offers no FUSE passthrough: Linux 6.9 and later do"
                           : !may_register_backing_files() ? "passthrough needs CAP_SYS_ADMIN"
                                                           : nullptr;
  if (no_passthrough_reason_) return 0;
  return fuse_session_custom_io(se, &session_io(), fuse_session_fd(se));
}

const fuse_custom_io& Izofs::session_io() {
  static const fuse_custom_io io = [] {
    fuse_custom_io io{};
    io.read = [](int fd, void* buf, size_t size, void* userdata) {
      return static_cast<Izofs*>(userdata)->passthrough_.receive(fd, buf, size);
    };
    io.writev = [](int fd, struct iovec* iov, int count, void* userdata) {
      return static_cast<Izofs*>(userdata)->passthrough_.send(fd, iov, count);
    };
    // Answers to READ (when the kernel turns out not to offer passthrough)
    // are still spliced from the backing file. Requests are read, never
    // spliced in: libfuse 3.14 splices them only through splice_receive.
    io.splice_send = [](int fd_in, off_t* off_in, int fd_out, off_t* off_out, size_t len,
                        unsigned int flags,
                        void*) { return splice(fd_in, off_in, fd_out, off_out, len, flags); };
    return io;
  }();
  return io;
}

}  // namespace izofs
