// The file system izofs serves: every request is passed through to the
// backing directory (FUSE low-level API, one O_PATH descriptor per inode),
// and every change is journaled in the fileset's KML before the request is
// answered. The data of regular files goes by kernel passthrough when the
// kernel offers it and izofs may use it (root): the kernel reads, writes
// and maps the backing file itself, and izofs, which sees no WRITE then,
// journals a CLOSE when a handle opened for writing finds the file changed
// at its FLUSH or RELEASE. Otherwise (or with -o no_passthrough) READ and
// WRITE requests come to izofs, spliced between /dev/fuse and the backing
// files, and each handle that wrote gets its CLOSE.
//
// Never journaled: anything under `.intermezzo/` (and the daemon's
// temporary files, as everywhere in intersync: is_internal_path), xattrs
// named `user.intersync.*`, and whatever the registered replicator does.
// The mount root answers three virtual xattrs, `user.izofs.fileset`,
// `user.izofs.backing` and `user.izofs.replicator` (the registration).
#pragma once

#include <fuse_lowlevel.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "content_fetcher.h"
#include "group_commit_log.h"
#include "inode_table.h"
#include "intersync/kml.h"
#include "intersync/result.h"
#include "kernel_passthrough.h"
#include "replicator.h"
#include "unique_fd.h"

namespace izofs {

// The most data one READ or WRITE request carries. libfuse moves it by
// splice only when the request and its header fit in one pipe, which may
// grow to fs.pipe-max-size (1 MiB unless raised): requests of 1 MiB are
// copied through a buffer instead, and read three times slower.
constexpr unsigned kRequestBytes = 512 << 10;

struct IzofsConfig {
  std::string fileset;
  std::string backing;  // absolute, without symlinks
  std::string kml;      // the log file
  std::chrono::seconds fetch_timeout{60};
  bool passthrough = true;  // false: -o no_passthrough
};

// Who made a request.
struct Caller {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  bool replicator = false;
};

class OpenFile;

class Izofs {
 public:
  // Opens the backing root and the KML.
  static intersync::Result<std::unique_ptr<Izofs>> create(const IzofsConfig& config);
  // The operations table; the session's userdata must be the Izofs.
  static const fuse_lowlevel_ops& operations();
  // Takes over the I/O of the mounted session `se` when passthrough may be
  // used: not -o no_passthrough, Linux 6.9 or later, CAP_SYS_ADMIN. The
  // session's userdata must be the Izofs. Otherwise libfuse keeps its own,
  // which also splices requests in (libfuse reads them when the I/O is
  // izofs's). 0, or -errno.
  int take_session_io(struct fuse_session* se);

  // Starts the threads that make records durable within a second and keep
  // the inodes within the descriptor budget (after fuse_daemonize, which
  // forks), and takes the session's /dev/fuse for backing files.
  void start(struct fuse_session* se);
  // Stops them, ends waiting fetches (they fail) and makes every record
  // durable.
  intersync::Status stop();

  // Operations, named as in fuse_lowlevel_ops.
  void init(struct fuse_conn_info* conn);
  void lookup(fuse_req_t req, fuse_ino_t parent, const char* name);
  void forget(fuse_ino_t ino, uint64_t lookups);
  void getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi);
  void setattr(fuse_req_t req, fuse_ino_t ino, const struct stat& attr, int to_set,
               struct fuse_file_info* fi);
  void readlink(fuse_req_t req, fuse_ino_t ino);
  void mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev);
  void mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode);
  void symlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name);
  void link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname);
  void unlink(fuse_req_t req, fuse_ino_t parent, const char* name);
  void rmdir(fuse_req_t req, fuse_ino_t parent, const char* name);
  void rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
              const char* newname, unsigned int flags);
  void create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
              struct fuse_file_info* fi);
  void open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi);
  void read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info* fi);
  void write_buf(fuse_req_t req, struct fuse_bufvec* in, off_t off, struct fuse_file_info* fi);
  void flush(fuse_req_t req, struct fuse_file_info* fi);
  void release(fuse_req_t req, struct fuse_file_info* fi);
  void fsync(fuse_req_t req, int datasync, struct fuse_file_info* fi);
  void fallocate(fuse_req_t req, int mode, off_t off, off_t len, struct fuse_file_info* fi);
  void copy_file_range(fuse_req_t req, off_t off_in, struct fuse_file_info* fi_in, off_t off_out,
                       struct fuse_file_info* fi_out, size_t len, int flags);
  void lseek(fuse_req_t req, off_t off, int whence, struct fuse_file_info* fi);
  void opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi);
  void readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, struct fuse_file_info* fi,
               bool plus);
  void releasedir(fuse_req_t req, struct fuse_file_info* fi);
  void fsyncdir(fuse_req_t req, int datasync, struct fuse_file_info* fi);
  void statfs(fuse_req_t req, fuse_ino_t ino);
  void setxattr(fuse_req_t req, fuse_ino_t ino, const char* name, std::string_view value,
                int flags);
  void getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size);
  void listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);
  void removexattr(fuse_req_t req, fuse_ino_t ino, const char* name);

 private:
  Izofs(const IzofsConfig& config, intersync::UniqueFd root, const struct stat& root_st);

  // The session I/O of kernel passthrough (kernel_passthrough.h).
  static const fuse_custom_io& session_io();

  Caller caller_of(fuse_req_t req);
  // The path of the object `fd` refers to, relative to the backing root
  // ("" for the root); nullopt once it has been deleted.
  std::optional<std::string> path_of(int fd) const;
  // Looks `name` up in `parent` and fills `e` (counting one lookup).
  int lookup_entry(Inode& parent, const char* name, fuse_entry_param* e);
  // Makes an object the caller just created in `dirfd` theirs: izofs runs
  // as root for everyone, so the backing file system made it root's.
  int give_to_caller(int dirfd, const char* name, const Caller& c, const struct stat& dir);

  // Creates `name` in `parent` with `make`, answers with its entry and
  // journals it as `op`.
  void make_node(fuse_req_t req, fuse_ino_t parent, const char* name, intersync::KmlOp op,
                 const std::function<int(int dirfd)>& make, const char* symlink_target);
  void remove_entry(fuse_req_t req, fuse_ino_t parent, const char* name, bool is_dir);
  // Opens an existing inode for `fi` (O_TRUNC included), fetching a
  // placeholder's content first unless the caller is the replicator
  // (`fetched`: that was done already), and answers with reply_create when
  // `entry` is given, reply_open otherwise.
  void open_inode(fuse_req_t req, Inode& inode, fuse_file_info fi, const Caller& c,
                  std::optional<fuse_entry_param> entry, bool fetched);
  // Has the replicator fetch the placeholder `inode`, points the inode at
  // the fetched file and runs `then` (on the fetch's thread); or answers
  // EIO, saying why in the log.
  void fetch_then(fuse_req_t req, Inode& inode, std::function<void(fuse_req_t)> then);
  void answer_open(fuse_req_t req, Inode& inode, intersync::UniqueFd fd, fuse_file_info fi,
                   const Caller& c, const std::optional<fuse_entry_param>& entry);
  // The backing id of `inode` for a passthrough open, registered with the
  // kernel at its first open; 0 when there is none (the open then goes
  // through izofs).
  int32_t backing_id_of(Inode& inode);
  // Sets what `to_set` names, on the open file `fd` or else on the inode.
  void do_setattr(fuse_req_t req, Inode& inode, const struct stat& attr, int to_set, int fd,
                  const Caller& c);
  void change_xattr(fuse_req_t req, fuse_ino_t ino, const char* name, std::string_view value,
                    int flags, intersync::KmlOp op);

  // Journaling. Each returns 0 or EIO when the record could not be written
  // (the failure is logged); none journals for the replicator or for an
  // internal path.
  intersync::KmlRecord record(const Caller& c, intersync::KmlOp op) const;
  // The record of a new entry `path` (CREATE, MKDIR, MKNOD, SYMLINK): its
  // attributes `obj` and its directory's versions before and after.
  intersync::KmlRecord creation_record(const Caller& c, intersync::KmlOp op, std::string path,
                                       const struct stat& obj, const struct stat& dir_old,
                                       const struct stat& dir_new) const;
  int journal(intersync::KmlRecord& rec);
  // 0, or EIO when the log could not be made durable.
  int sync_journal();
  int journal_setattr(const Caller& c, int object, uint32_t valid, const struct stat& before,
                      const struct stat& after);
  void note_write(OpenFile& file);
  // Notes a change izofs made to `inode` itself, for journal_close to tell
  // it from writes by passthrough.
  void note_own_change(Inode& inode, const struct stat& before, const struct stat& after);
  int journal_close(OpenFile& file);
  // Records that make `path` (which came into view by a rename or link
  // from an internal name) exist on a replica: CREATE and CLOSE for a file,
  // MKDIR, SYMLINK or MKNOD for the rest.
  int journal_appearance(const Caller& c, const std::string& path, int dirfd, const char* name,
                         const struct stat& dir_old, const struct stat& dir_new);
  int journal_removal(const Caller& c, const std::string& path, const struct stat& obj,
                      const std::string& old_target, const struct stat& dir_old,
                      const struct stat& dir_new);

  // Keeps at most max_inodes_ inodes: beyond that, asks the kernel to drop
  // the entries of the least recently used, which makes it forget them.
  void reclaim_inodes(struct fuse_session* se);
  void reclaim_soon();
  // Runs `open_fd` (a descriptor, or -1 and errno) again while it fails for
  // want of descriptors, having inodes reclaimed, for up to a second.
  int open_reclaiming(const std::function<int()>& open_fd);

  bool is_root_virtual_xattr(fuse_ino_t ino, const char* name) const;
  void set_virtual_xattr(fuse_req_t req, const char* name, std::string_view value);
  void get_virtual_xattr(fuse_req_t req, const char* name, size_t size);

  const IzofsConfig config_;
  const bool as_root_;  // izofs runs as root: new objects are given to their creators
  KernelPassthrough passthrough_;
  // Why passthrough is out of the question before INIT, if it is.
  const char* no_passthrough_reason_ = nullptr;
  std::atomic<bool> told_no_backing_file_{false};  // logged once
  // Guards Inode::unseen_writers and their OpenFile::before_write.
  std::mutex unseen_writes_mutex_;
  const size_t max_inodes_;
  InodeTable inodes_;
  GroupCommitLog kml_;
  ReplicatorRegistry replicator_;
  ContentFetcher fetcher_;

  std::mutex reclaim_mutex_;
  std::condition_variable reclaim_wanted_;
  std::atomic<bool> reclaim_asked_{false};
  bool stopping_ = false;
  std::thread reclaimer_;
};

}  // namespace izofs
