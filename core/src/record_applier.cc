// The record applier; see record_applier.h.
#include "record_applier.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <random>
#include <thread>

#include "intersync/log.h"

namespace intersync {
namespace {

int64_t mtime_ns(const struct stat& st) {
  return int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

std::string random_hex() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[17];
  snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(rng()));
  return buf;
}

// A file being written lives in the staging directory, .intermezzo/<fset>/
// tmp/, so that a crash leaves nothing half-written in the tree and start-up
// clears what is left with one directory listing.

// Only when the target is on another file system than the staging directory
// (a mount point inside the fileset) is the temporary file made beside the
// target, with a name that is never replicated.
std::string sibling_temp_name(const std::string& name) {
  return "." + name.substr(0, 200) + ".intersync-" + random_hex() + ".tmp";
}

}  // namespace

bool is_placeholder(int dirfd, const std::string& name) {
  int fd = openat(dirfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return false;
  bool absent = fgetxattr(fd, kAbsentXattr, nullptr, 0) > 0;
  ::close(fd);
  return absent;
}

std::string staging_name() {
  return kStagingPrefix + random_hex();
}

bool record_paths_ok(KmlRecord& r, std::string* why) {
  auto check = [&](std::string& p, bool may_be_root) {
    auto n = normalize_rel_path(p);
    if (!n) {
      *why = n.error().message;
      return false;
    }
    if ((!may_be_root && n->empty()) || is_internal_path(*n)) {
      *why = "path '" + p + "' is not replicable";
      return false;
    }
    p = *n;
    return true;
  };
  switch (r.opcode) {
    case KmlOp::Create:
    case KmlOp::Mkdir:
    case KmlOp::Symlink:
    case KmlOp::Content:
    case KmlOp::Close:
      return check(r.path, false);
    case KmlOp::Setattr:
      return check(r.path, true);
    case KmlOp::Unlink:
    case KmlOp::Rmdir: {
      if (!check(r.dir, true)) return false;
      if (r.name.empty() || r.name.find('/') != std::string::npos || r.name == "." ||
          r.name == "..") {
        *why = "bad entry name '" + r.name + "'";
        return false;
      }
      r.path = join_rel(r.dir, r.name);
      return check(r.path, false);
    }
    case KmlOp::Rename:
    case KmlOp::Link:
      return check(r.src, false) && check(r.target, false);
    default:
      return true;  // NOOP and opcodes we do not apply carry no path we use
  }
}

class RecordApplier::Impl {
 public:
  Impl(const SafeRoot& root, FileIndex& index, std::string staging_dir, std::string fset)
      : root_(root), index_(index), staging_dir_(std::move(staging_dir)), fset_(std::move(fset)) {}

  Status open() {
    staging_.reset(::open(staging_dir_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!staging_.valid()) return errno_error(staging_dir_ + ": " + strerror(errno));
    return {};
  }

  size_t skipped = 0;
  std::function<bool(const std::string&)> protect;
  bool keep_unknown = false;  // see RecordApplier::keep_unknown_entries
  const std::string& staging_dir() const { return staging_dir_; }

  bool fail(std::string* err, const std::string& what, int e) {
    *err = what + ": " + strerror(e);
    return false;
  }

  // Records `st`, the state this applier gave the entry, as the index entry
  // for `path`.
  void index_stat(const std::string& path, FileState fs, const struct stat& st) {
    fs.mode = st.st_mode & 07777;
    fs.uid = st.st_uid;
    fs.gid = st.st_gid;
    fs.size = S_ISDIR(st.st_mode) ? 0 : static_cast<uint64_t>(st.st_size);
    fs.mtime_ns = mtime_ns(st);
    fs.ctime_ns = int64_t(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
    fs.ino = st.st_ino;
    index_.put(path, fs);
  }

  // Records the state of `name` in `dirfd` as the index entry for `path`.
  // For a regular file `fs` holds what this applier expects there (size,
  // mtime, inode): when the disk differs, a user wrote the file meanwhile
  // and the expectation is stored instead, so that the change tracker sees
  // the difference and journals the user's bytes (never mistaking them for
  // the content `fs` names).
  void index_from_disk(int dirfd, const std::string& name, const std::string& path, FileState fs) {
    struct stat st;
    if (fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return;
    if (fs.type == FileType::File &&
        !(S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) == fs.size &&
          mtime_ns(st) == fs.mtime_ns && st.st_ino == fs.ino)) {
      index_.put(path, fs);
      return;
    }
    index_stat(path, std::move(fs), st);
  }

  // The directory holding `rel`'s entry, opened beneath the root; the last
  // one stays open for the next records, which are mostly in the same
  // directory (a batch walks the server's tree one directory at a time).
  Result<int> parent_dir(const std::string& rel, std::string* name) {
    std::string dir = parent_of(rel);
    if (parent_fd_.valid() && dir == parent_path_ && !rel.empty()) {
      *name = base_name(rel);
      if (*name != ".." && *name != "." && !name->empty()) return parent_fd_.get();
    }
    auto fd = root_.open_parent(rel, name);
    if (!fd) return fd.error();
    parent_fd_ = std::move(*fd);
    parent_path_ = rel.empty() ? std::string("\n") : dir;  // the root's parent is never reused
    return parent_fd_.get();
  }
  void forget_parent_dir() { parent_fd_.reset(); }

  bool apply(std::vector<KmlRecord>& recs, size_t i, ContentSources& src, std::string* err) {
    src_ = &src;
    current_ = i;
    KmlRecord& r = recs[i];
    if (protect && touches_protected(r))
      return skip(r, "a local change to it is not reintegrated yet");
    if (protect && stale(r)) return true;  // this entry is newer here already
    switch (r.opcode) {
      case KmlOp::Mkdir:
      case KmlOp::Create:
      case KmlOp::Content:
      case KmlOp::Symlink:
      case KmlOp::Unlink:
      case KmlOp::Rmdir:
      case KmlOp::Rename:
      case KmlOp::Setattr:
      case KmlOp::Link:
        break;
      default:
        return true;  // CLOSE (CONTENT carries the data), NOOP, unknown opcodes
    }
    if (r.opcode == KmlOp::Create && i + 2 < recs.size() && recs[i + 2].opcode == KmlOp::Content &&
        recs[i + 2].path == r.path) {
      // The server writes CREATE, CLOSE, CONTENT for a new file: the
      // CONTENT brings the file, an empty one in between is not needed.
      return true;
    }
    if (r.opcode == KmlOp::Rename || r.opcode == KmlOp::Rmdir || r.opcode == KmlOp::Unlink) {
      // The directory kept open may be the one that moves or goes. The one
      // this record opens stays right: it holds the entry that changes.
      forget_parent_dir();
    }
    std::string name;
    auto parent =
        parent_dir(r.opcode == KmlOp::Rename || r.opcode == KmlOp::Link ? r.target : r.path, &name);
    switch (r.opcode) {
      case KmlOp::Mkdir: {
        if (!parent) return skip(r, parent.error().message);
        if (mkdirat(*parent, name.c_str(), r.mode & 07777) != 0 && errno != EEXIST) {
          return fail(err, root_.path() + "/" + r.path, errno);
        }
        fchmodat(*parent, name.c_str(), r.mode & 07777, 0);
        FileState fs;
        fs.type = FileType::Dir;
        fs.version = r.recno;
        index_from_disk(*parent, name, r.path, fs);
        return true;
      }
      case KmlOp::Create: {
        if (!parent) return skip(r, parent.error().message);
        int fd =
            openat(*parent, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, r.mode & 07777);
        if (fd < 0) {
          if (errno == EEXIST) return true;
          return fail(err, root_.path() + "/" + r.path, errno);
        }
        struct stat created;
        int stat_rc = fstat(fd, &created);
        ::close(fd);
        FileState fs;
        fs.content_id = content_id_of({});
        fs.version = r.recno;
        if (stat_rc == 0) index_stat(r.path, std::move(fs), created);
        return true;
      }
      case KmlOp::Content:
        if (!parent) return skip(r, parent.error().message);
        return apply_content(r, *parent, name, err);
      case KmlOp::Symlink: {
        if (!parent) return skip(r, parent.error().message);
        char buf[4096];
        ssize_t n = readlinkat(*parent, name.c_str(), buf, sizeof buf);
        if (n < 0 || std::string_view(buf, static_cast<size_t>(n)) != r.target) {
          std::string tmp = staging_name();
          if (symlinkat(r.target.c_str(), staging_.get(), tmp.c_str()) != 0) {
            return fail(err, root_.path() + "/" + r.path, errno);
          }
          if (int e = move_into_place(tmp, *parent, name, r.path); e != 0) {
            unlinkat(staging_.get(), tmp.c_str(), 0);
            if (e == EEXIST) return skip(r, "created here meanwhile");
            if (e == EBUSY || e == ENOENT) return skip(r, "changed locally meanwhile");
            if (e == EISDIR || e == ENOTEMPTY) return skip(r, "a directory is in the way");
            return fail(err, root_.path() + "/" + r.path, e);
          }
        }
        FileState fs;
        fs.type = FileType::Symlink;
        fs.target = r.target;
        fs.version = r.recno;
        index_from_disk(*parent, name, r.path, fs);
        return true;
      }
      case KmlOp::Unlink:
      case KmlOp::Rmdir: {
        if (!parent) {
          index_.erase(r.path);
          return true;  // the parent is gone already: so is the entry
        }
        if (protect && r.opcode == KmlOp::Unlink && changed_here(*parent, name, r.path)) {
          return skip(r, "changed locally meanwhile");
        }
        int flags = r.opcode == KmlOp::Rmdir ? AT_REMOVEDIR : 0;
        if (unlinkat(*parent, name.c_str(), flags) != 0 && errno != ENOENT) {
          if (errno == ENOTEMPTY || errno == EISDIR || errno == ENOTDIR) {
            return skip(r, strerror(errno));
          }
          return fail(err, root_.path() + "/" + r.path, errno);
        }
        for (const auto& p : index_.paths_under(r.path)) index_.erase(p);
        index_.erase(r.path);
        return true;
      }
      case KmlOp::Rename: {
        std::string src_name;
        auto src_parent = root_.open_parent(r.src, &src_name);
        if (!parent || !src_parent) return skip(r, "a parent directory is missing");
        if (renameat(src_parent->get(), src_name.c_str(), *parent, name.c_str()) != 0) {
          if (errno == ENOENT) return true;  // applied before a crash, or never had it
          if (errno == ENOTEMPTY || errno == EEXIST || errno == EISDIR || errno == ENOTDIR) {
            return skip(r, strerror(errno));
          }
          return fail(err, root_.path() + "/" + r.src, errno);
        }
        if (const FileState* old = index_.find(r.target); old && old->type == FileType::Dir) {
          for (const auto& p : index_.paths_under(r.target)) index_.erase(p);
        }
        index_.erase(r.target);
        index_.rename_tree(r.src, r.target);
        if (const FileState* moved = index_.find(r.target)) {
          FileState fs = *moved;
          fs.version = r.recno;
          index_from_disk(*parent, name, r.target, fs);
        }
        return true;
      }
      case KmlOp::Setattr: {
        if (!parent) return skip(r, parent.error().message);
        const FileState* idx = index_.find(r.path);
        if (!idx) return skip(r, "not here");
        if ((r.valid & kAttrMode) && idx->type != FileType::Symlink) {
          if (fchmodat(*parent, name.c_str(), r.mode & 07777, 0) != 0 && errno != ENOENT) {
            return fail(err, root_.path() + "/" + r.path, errno);
          }
        }
        if (r.valid & kAttrMtime) {
          struct timespec ts[2] = {{0, UTIME_OMIT}, {time_t(r.mtime_sec), long(r.mtime_nsec)}};
          utimensat(*parent, name.c_str(), ts, AT_SYMLINK_NOFOLLOW);
        }
        FileState fs = *idx;
        fs.version = r.recno;
        if (r.valid & kAttrMtime) fs.mtime_ns = int64_t(r.mtime_sec) * 1000000000 + r.mtime_nsec;
        index_from_disk(*parent, name, r.path, fs);
        return true;
      }
      case KmlOp::Link: {
        std::string src_name;
        auto src_parent = root_.open_parent(r.src, &src_name);
        if (!parent || !src_parent) return skip(r, "a parent directory is missing");
        if (linkat(src_parent->get(), src_name.c_str(), *parent, name.c_str(), 0) != 0 &&
            errno != EEXIST) {
          return skip(r, strerror(errno));
        }
        if (const FileState* src = index_.find(r.src)) {
          FileState fs = *src;
          fs.version = r.recno;
          index_from_disk(*parent, name, r.target, fs);
        }
        return true;
      }
      default:
        return true;  // the opcodes above are the ones applied
    }
  }

  bool skip(const KmlRecord& r, const std::string& why) {
    ++skipped;
    log_warn("fileset '{}': record {} ({} {}) not applied: {}", fset_, r.recno,
             kml_op_name(r.opcode), r.path.empty() ? r.src : r.path, why);
    return true;
  }

  // Writes `bytes` to a temporary name beside the target and renames it into
  // place, with the record's mode and mtime; indexes it as `fs`.
  bool install_bytes(const KmlRecord& r, int dirfd, const std::string& name, std::string_view bytes,
                     FileState fs, std::string* err) {
    std::string tmp = staging_name();
    int fd = openat(staging_.get(), tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return fail(err, staging_dir_ + "/" + tmp, errno);
    size_t off = 0;
    while (off < bytes.size()) {
      ssize_t n = write(fd, bytes.data() + off, bytes.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        int e = errno;
        ::close(fd);
        unlinkat(staging_.get(), tmp.c_str(), 0);
        return fail(err, root_.path() + "/" + r.path, e);
      }
      off += static_cast<size_t>(n);
    }
    return finish_install(r, fd, dirfd, tmp, name, std::move(fs), err);
  }

  // Gives staging/<tmp> (open as `fd`) the record's mode and mtime and
  // renames it to dirfd/<name>.
  // The index records the state read from the staged file before the
  // rename, never the path afterwards: a user's write just after the
  // rename must not be taken for the record's content.
  bool finish_install(const KmlRecord& r, int fd, int dirfd, const std::string& tmp,
                      const std::string& name, FileState fs, std::string* err) {
    fchmod(fd, r.mode & 07777);
    struct timespec ts[2] = {{0, UTIME_OMIT},
                             {time_t(r.v_obj_new.mtime_sec), long(r.v_obj_new.mtime_nsec)}};
    futimens(fd, ts);
    struct stat installed;
    int stat_rc = fstat(fd, &installed);
    ::close(fd);
    if (stat_rc != 0) installed.st_ino = 0;
    return place_staged(r, tmp, installed, dirfd, name, std::move(fs), err);
  }

  // Renames staging/<tmp>, whose state is `installed`, to dirfd/<name> and
  // indexes it.
  bool place_staged(const KmlRecord& r, const std::string& tmp, struct stat installed, int dirfd,
                    const std::string& name, FileState fs, std::string* err) {
    if (protect && changed_here(dirfd, name, r.path)) {
      // Written here while the record's bytes were being prepared.
      unlinkat(staging_.get(), tmp.c_str(), 0);
      return skip(r, "changed locally meanwhile");
    }
    if (int e = move_into_place(tmp, dirfd, name, r.path, &installed); e != 0) {
      unlinkat(staging_.get(), tmp.c_str(), 0);
      if (e == EEXIST) return skip(r, "created here meanwhile");
      if (e == EBUSY || e == ENOENT) return skip(r, "changed locally meanwhile");
      if (e == EISDIR || e == ENOTEMPTY) return skip(r, "a directory is in the way");
      return fail(err, root_.path() + "/" + r.path, e);
    }
    if (installed.st_ino != 0) index_stat(r.path, std::move(fs), installed);
    return true;
  }

  // Writes one small content to a staging file with the record's mode and
  // mtime (thread-safe: touches nothing but that file).
  // `subdir` is the writing thread's own directory in staging.
  std::optional<ContentSources::Prestaged> prestage_one(const KmlRecord& r,
                                                        const std::string& bytes,
                                                        const std::string& subdir) const {
    Manifest m = manifest_of(bytes);
    if (m.content_id != r.hash) return std::nullopt;  // apply() reports it
    ContentSources::Prestaged p;
    p.name = subdir + staging_name();
    int fd = openat(staging_.get(), p.name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return std::nullopt;
    bool ok = true;
    for (size_t off = 0; ok && off < bytes.size();) {
      ssize_t n = write(fd, bytes.data() + off, bytes.size() - off);
      if (n < 0 && errno == EINTR) continue;
      ok = n > 0;
      off += ok ? static_cast<size_t>(n) : 0;
    }
    struct timespec ts[2] = {{0, UTIME_OMIT},
                             {time_t(r.v_obj_new.mtime_sec), long(r.v_obj_new.mtime_nsec)}};
    ok = ok && fchmod(fd, r.mode & 07777) == 0 && futimens(fd, ts) == 0 && fstat(fd, &p.st) == 0;
    ::close(fd);
    if (!ok) {
      unlinkat(staging_.get(), p.name.c_str(), 0);
      return std::nullopt;  // apply() writes it again and reports what fails
    }
    if (m.chunks.size() > 1) p.chunks = pack_chunks(m.chunks);
    return p;
  }

  void prestage(const std::vector<KmlRecord>& recs, ContentSources& sources, unsigned threads) {
    std::vector<size_t> todo;
    for (size_t i = 0; i < recs.size(); ++i) {
      const KmlRecord& r = recs[i];
      if (r.opcode == KmlOp::Content && r.size > 0 && sources.small.count(r.hash))
        todo.push_back(i);
    }
    std::vector<std::optional<ContentSources::Prestaged>> done(todo.size());
    // Each thread creates its files in a directory of its own: creating
    // files in one directory takes its lock, and the threads would queue.
    auto work = [&](unsigned t) {
      std::string subdir = kPrestageDirPrefix + std::to_string(t);
      if (mkdirat(staging_.get(), subdir.c_str(), 0700) != 0 && errno != EEXIST) subdir.clear();
      if (!subdir.empty()) subdir += '/';
      for (size_t k = t; k < todo.size(); k += threads) {
        const KmlRecord& r = recs[todo[k]];
        done[k] = prestage_one(r, sources.small.at(r.hash), subdir);
      }
    };
    std::vector<std::thread> pool;
    for (unsigned t = 1; t < threads; ++t) pool.emplace_back(work, t);
    work(0);
    for (auto& th : pool) th.join();
    for (size_t k = 0; k < todo.size(); ++k) {
      if (done[k]) sources.prestaged[todo[k]] = std::move(*done[k]);
    }
  }

  void discard_prestaged(ContentSources& sources) {
    for (const auto& [i, p] : sources.prestaged) unlinkat(staging_.get(), p.name.c_str(), 0);
    sources.prestaged.clear();
  }

  bool apply_content(const KmlRecord& r, int dirfd, const std::string& name, std::string* err) {
    const FileState* idx = index_.find(r.path);
    struct stat st;
    bool exists = fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
    FileState fs;
    fs.type = FileType::File;
    fs.content_id = r.hash;
    fs.nchunks = r.nchunks;
    fs.version = r.recno;
    int64_t want_mtime = int64_t(r.v_obj_new.mtime_sec) * 1000000000 + r.v_obj_new.mtime_nsec;
    if (idx && exists && idx->content_id == r.hash && is_indexed(st, *idx) &&
        (src_->on_demand || !is_placeholder(dirfd, name))) {
      // Already here (a replay after a crash, or the same bytes twice), or
      // its placeholder when content comes on demand.
      if ((st.st_mode & 07777) != (r.mode & 07777))
        fchmodat(dirfd, name.c_str(), r.mode & 07777, 0);
      if (mtime_ns(st) != want_mtime) {
        struct timespec ts[2] = {{0, UTIME_OMIT},
                                 {time_t(r.v_obj_new.mtime_sec), long(r.v_obj_new.mtime_nsec)}};
        utimensat(dirfd, name.c_str(), ts, AT_SYMLINK_NOFOLLOW);
      }
      fs.chunks = idx->chunks;
      fs.size = idx->size;
      fs.ino = idx->ino;
      fs.mtime_ns = want_mtime;
      index_from_disk(dirfd, name, r.path, fs);
      return true;
    }
    if (protect && changed_here(dirfd, name, r.path)) {
      // Changed here and not journaled yet: the local change is kept and
      // the server will see both when it is reintegrated.
      return skip(r, "changed locally meanwhile");
    }
    if (r.nchunks == 0 && r.size == 0) {
      return install_bytes(r, dirfd, name, {}, std::move(fs), err);
    }
    if (auto it = src_->prestaged.find(current_); it != src_->prestaged.end()) {
      ContentSources::Prestaged p = std::move(it->second);
      src_->prestaged.erase(it);
      fs.chunks = std::move(p.chunks);
      return place_staged(r, p.name, p.st, dirfd, name, std::move(fs), err);
    }
    if (auto it = src_->small.find(r.hash); it != src_->small.end()) {
      Manifest m = manifest_of(it->second);
      if (m.content_id != r.hash) return skip(r, "received bytes do not match the content id");
      if (m.chunks.size() > 1) fs.chunks = pack_chunks(m.chunks);
      return install_bytes(r, dirfd, name, it->second, std::move(fs), err);
    }
    if (auto it = src_->staged.find(r.hash); it != src_->staged.end()) {
      std::string staged_name = it->second;
      src_->staged.erase(it);
      int fd = openat(staging_.get(), staged_name.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
      if (fd >= 0) {
        Result<Manifest> m = read_back_unless_hashed(fd, r.hash);
        if (m && m->content_id == r.hash) {
          if (m->chunks.size() > 1) fs.chunks = pack_chunks(m->chunks);
          return finish_install(r, fd, dirfd, staged_name, name, std::move(fs), err);
        }
        ::close(fd);
        unlinkat(staging_.get(), staged_name.c_str(), 0);
        return skip(r, "transferred file does not match its content id");
      }
    }
    if (auto local = index_.path_of_content(r.hash)) {
      // The same bytes are already here under another name: copy them.
      const FileState* src = index_.find(*local);
      auto in = root_.open_beneath(*local, O_RDONLY | O_NOFOLLOW);
      struct stat sst;
      if (src && in && fstat(in->get(), &sst) == 0 &&
          static_cast<uint64_t>(sst.st_size) == src->size && mtime_ns(sst) == src->mtime_ns) {
        std::string tmp = staging_name();
        int fd = openat(staging_.get(), tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) return fail(err, staging_dir_ + "/" + tmp, errno);
        off_t in_off = 0;
        uint64_t left = src->size;
        while (left > 0) {
          ssize_t n = copy_file_range(in->get(), &in_off, fd, nullptr, left, 0);
          if (n <= 0) {
            int e = n < 0 ? errno : EIO;
            ::close(fd);
            unlinkat(staging_.get(), tmp.c_str(), 0);
            return fail(err, root_.path() + "/" + r.path, e);
          }
          left -= static_cast<uint64_t>(n);
        }
        fs.chunks = src->chunks;
        return finish_install(r, fd, dirfd, tmp, name, std::move(fs), err);
      }
    }
    if (src_->on_demand) return install_placeholder(r, dirfd, name, std::move(fs), err);
    if (src_->can_refetch && !src_->requested.count(r.hash)) {
      src_->refetch = r.hash;
      return true;
    }
    // The server no longer has these bytes: a later record replaces them.
    ++skipped;
    log_debug("fileset '{}': record {}: content of {} no longer available", fset_, r.recno, r.path);
    return true;
  }

  // The manifest of the staged file open at `fd`: the one computed as it
  // was downloaded when its length still matches, else read from the disk.
  Result<Manifest> read_back_unless_hashed(int fd, const Hash& id) {
    auto it = src_->hashed.find(id);
    struct stat st;
    if (it != src_->hashed.end() && fstat(fd, &st) == 0 &&
        static_cast<uint64_t>(st.st_size) == it->second.size) {
      return std::move(it->second);
    }
    return manifest_of_fd(fd);
  }

  // A sparse file of the record's size, marked absent, in place of the
  // content (data on demand).
  bool install_placeholder(const KmlRecord& r, int dirfd, const std::string& name, FileState fs,
                           std::string* err) {
    std::string tmp = staging_name();
    int fd = openat(staging_.get(), tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return fail(err, staging_dir_ + "/" + tmp, errno);
    std::string id = hash_hex(r.hash);
    if (ftruncate(fd, static_cast<off_t>(r.size)) != 0 ||
        fsetxattr(fd, kAbsentXattr, id.data(), id.size(), 0) != 0) {
      int e = errno;
      ::close(fd);
      unlinkat(staging_.get(), tmp.c_str(), 0);
      return fail(err, "placeholder for " + root_.path() + "/" + r.path, e);
    }
    return finish_install(r, fd, dirfd, tmp, name, std::move(fs), err);
  }

  bool make_placeholder(const std::string& path, std::string* why) {
    const FileState* idx = index_.find(path);
    if (!idx || idx->type != FileType::File) {
      *why = "not a file";
      return false;
    }
    std::string name;
    auto parent = root_.open_parent(path, &name);
    if (!parent) {
      *why = parent.error().message;
      return false;
    }
    if (changed_here(parent->get(), name, path)) {
      *why = "changed here since it was last synced";
      return false;
    }
    if (is_placeholder(parent->get(), name)) return true;
    KmlRecord r;
    r.opcode = KmlOp::Content;
    r.path = path;
    r.hash = idx->content_id;
    r.size = idx->size;
    r.mode = idx->mode;
    r.v_obj_new.mtime_sec = static_cast<uint32_t>(idx->mtime_ns / 1000000000);
    r.v_obj_new.mtime_nsec = static_cast<uint32_t>(idx->mtime_ns % 1000000000);
    std::string err;
    if (install_placeholder(r, parent->get(), name, *idx, &err)) return true;
    *why = err;
    return false;
  }

  // Moves staging/<tmp> to dirfd/<name>, copying it beside the target
  // first when they are on different file systems (then `*placed`, when
  // given, becomes the state of the copy).
  // Renames staging/<tmp> to dirfd/<name>, the entry `path`, copying it
  // beside the target first when they are on different file systems (then
  // `*placed`, when given, becomes the state of the copy). See
  // rename_into_place for what it refuses where local users write.
  int move_into_place(const std::string& tmp, int dirfd, const std::string& name,
                      const std::string& path, struct stat* placed = nullptr) {
    int rc = rename_into_place(staging_.get(), tmp, dirfd, name, path);
    if (rc != EXDEV) return rc;
    std::string sibling = sibling_temp_name(name);
    int in = openat(staging_.get(), tmp.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (in < 0) return errno;
    struct stat st;
    fstat(in, &st);
    int out =
        openat(dirfd, sibling.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st.st_mode & 07777);
    rc = out < 0 ? errno : 0;
    for (off_t left = st.st_size; rc == 0 && left > 0;) {
      ssize_t n = copy_file_range(in, nullptr, out, nullptr, static_cast<size_t>(left), 0);
      if (n <= 0) rc = n < 0 ? errno : EIO;
      left -= n > 0 ? n : 0;
    }
    if (rc == 0) {
      struct timespec ts[2] = {{0, UTIME_OMIT}, st.st_mtim};
      futimens(out, ts);
      if (placed) fstat(out, placed);
    }
    ::close(in);
    if (out >= 0) ::close(out);
    unlinkat(staging_.get(), tmp.c_str(), 0);
    if (rc == 0) rc = rename_into_place(dirfd, sibling, dirfd, name, path);
    if (rc != 0) unlinkat(dirfd, sibling.c_str(), 0);
    return rc;
  }

  // The rename that puts a new entry at dirfd/<name>. Where local users
  // write too (keep_unknown), a local change made since the applier looked
  // is never replaced: an entry the index does not know makes it fail
  // with EEXIST (RENAME_NOREPLACE); a known file is exchanged with the new
  // one (RENAME_EXCHANGE) and, if what came out is no longer what the index
  // knows, exchanged back, failing with EBUSY; a file gone meanwhile fails
  // with ENOENT. `from` is gone after a success and still there otherwise.
  int rename_into_place(int fromdir, const std::string& from, int dirfd, const std::string& name,
                        const std::string& path) {
    const FileState* idx = keep_unknown ? index_.find(path) : nullptr;
    unsigned flags = !keep_unknown                 ? 0
                     : !idx                        ? RENAME_NOREPLACE
                     : idx->type == FileType::File ? RENAME_EXCHANGE
                                                   : 0;
    if (renameat2(fromdir, from.c_str(), dirfd, name.c_str(), flags) != 0) {
      if (flags != RENAME_EXCHANGE || (errno != EINVAL && errno != ENOSYS)) return errno;
      // A file system without exchange: the plain rename, after one more look.
      if (changed_here(dirfd, name, path)) return EBUSY;
      return renameat2(fromdir, from.c_str(), dirfd, name.c_str(), 0) == 0 ? 0 : errno;
    }
    if (flags != RENAME_EXCHANGE) return 0;
    struct stat was;
    if (fstatat(fromdir, from.c_str(), &was, AT_SYMLINK_NOFOLLOW) == 0 && is_indexed(was, *idx)) {
      unlinkat(fromdir, from.c_str(), 0);
      return 0;
    }
    // Written (or replaced) here in the moment between the last look and the
    // exchange: it goes back, and the new file with it to `from`.
    if (renameat2(fromdir, from.c_str(), dirfd, name.c_str(), RENAME_EXCHANGE) != 0) {
      int e = errno;
      log_error("fileset '{}': {}: cannot put back the local version, which is now {}/{}: {}",
                fset_, path, staging_dir_, from, strerror(e));
      return e;
    }
    return EBUSY;
  }

  // True if `name` in `dirfd` differs from the index: created, written,
  // or removed or renamed away here after the index last saw it (a change
  // the change tracker has yet to journal).
  bool changed_here(int dirfd, const std::string& name, const std::string& path) const {
    const FileState* idx = index_.find(path);
    struct stat st;
    if (!idx) return fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
    if (idx->type != FileType::File) return false;
    if (fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return errno == ENOENT;
    return !is_indexed(st, *idx);
  }

  // True if `st` is the file `idx` describes, unwritten since.
  static bool is_indexed(const struct stat& st, const FileState& idx) {
    return S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) == idx.size &&
           mtime_ns(st) == idx.mtime_ns && st.st_ino == idx.ino;
  }

  // True if the entry the record is about already has a later server
  // version here (a write-back client's own change, acknowledged, is newer
  // than an older server record still on its way).
  bool stale(const KmlRecord& r) const {
    const std::string& key = r.opcode == KmlOp::Rename || r.opcode == KmlOp::Link ? r.src : r.path;
    const FileState* idx = index_.find(key);
    if (!idx) return false;
    // Equal, for content: the version here is this record's (the echo of
    // this client's own change) and the bytes here differ from it: they are
    // a later local change based on it, never to be replaced by it.
    if (idx->version == r.recno && r.opcode == KmlOp::Content) return idx->content_id != r.hash;
    return idx->version > r.recno;
  }

  // True if the record would touch a path the owner protects.
  bool touches_protected(const KmlRecord& r) const {
    switch (r.opcode) {
      case KmlOp::Rename:
      case KmlOp::Link:
        return protect(r.src) || protect(r.target);
      case KmlOp::Noop:
        return false;
      default:
        return protect(r.path);
    }
  }

  const SafeRoot& root_;
  FileIndex& index_;
  UniqueFd parent_fd_;  // see parent_dir()
  std::string parent_path_;
  std::string staging_dir_;
  std::string fset_;
  UniqueFd staging_;
  ContentSources* src_ = nullptr;
  size_t current_ = 0;  // index of the record being applied
};

RecordApplier::RecordApplier(const SafeRoot& root, FileIndex& index, std::string staging_dir,
                             std::string fset)
    : impl_(std::make_unique<Impl>(root, index, std::move(staging_dir), std::move(fset))) {}
RecordApplier::~RecordApplier() = default;
Status RecordApplier::open() {
  return impl_->open();
}
bool RecordApplier::apply(std::vector<KmlRecord>& recs, size_t i, ContentSources& sources,
                          std::string* err) {
  return impl_->apply(recs, i, sources, err);
}
void RecordApplier::keep_unknown_entries() {
  impl_->keep_unknown = true;
}
void RecordApplier::prestage(const std::vector<KmlRecord>& recs, ContentSources& sources,
                             unsigned threads) {
  impl_->prestage(recs, sources, std::max(1u, threads));
}
void RecordApplier::discard_prestaged(ContentSources& sources) {
  impl_->discard_prestaged(sources);
}
bool RecordApplier::make_placeholder(const std::string& path, std::string* why) {
  return impl_->make_placeholder(path, why);
}
size_t RecordApplier::skipped() const {
  return impl_->skipped;
}
void RecordApplier::protect(std::function<bool(const std::string&)> predicate) {
  impl_->protect = std::move(predicate);
}
const std::string& RecordApplier::staging_dir() const {
  return impl_->staging_dir();
}

}  // namespace intersync
