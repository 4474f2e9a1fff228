// Disk-versus-index reconciliation that journals local changes; see
// change_tracker.h for the model.
#include "change_tracker.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "intersync/log.h"
#include "journal_adoption.h"

namespace intersync {
namespace {

constexpr size_t kSliceItems = 2000;
constexpr uint64_t kSliceMs = 20;

int64_t mtime_ns(const struct stat& st) {
  return int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

bool supported(const struct stat& st) {
  return S_ISREG(st.st_mode) || S_ISDIR(st.st_mode) || S_ISLNK(st.st_mode);
}

// A SETATTR saying that the attributes `valid` names are now those of `st`,
// for an entry the index knew as `before`. Mode and owner are always
// filled in (readers go by `valid`); times when the modification time is
// among them.
KmlRecord setattr_record(const std::string& path, const struct stat& st, const FileState& before,
                         uint32_t valid) {
  KmlRecord r;
  r.opcode = KmlOp::Setattr;
  r.path = path;
  r.valid = valid;
  r.mode = st.st_mode;
  r.uid = st.st_uid;
  r.gid = st.st_gid;
  if (valid & kAttrMtime) {
    r.mtime_sec = static_cast<uint32_t>(st.st_mtim.tv_sec);
    r.mtime_nsec = static_cast<uint32_t>(st.st_mtim.tv_nsec);
    r.ctime_sec = static_cast<uint32_t>(st.st_ctim.tv_sec);
    r.ctime_nsec = static_cast<uint32_t>(st.st_ctim.tv_nsec);
  }
  r.v_obj_old = version_of(before);
  r.rollback = {before.mode, 0, before.uid, before.gid};
  return r;
}

uint64_t now_ms(uv_loop_t* loop) {
  return uv_now(loop);
}

bool same_content_stat(const struct stat& a, const struct stat& b) {
  return a.st_size == b.st_size && mtime_ns(a) == mtime_ns(b) && a.st_ino == b.st_ino;
}

}  // namespace

// A hash computed on the thread pool, with the file's stat before and after
// so the loop can tell whether the file changed while it was read.
struct ChangeTracker::HashResult {
  uv_work_t work{};
  int root_fd = -1;  // a dup owned by the job
  std::string path;
  bool created = false;
  struct stat before {};
  struct stat after {};
  Result<Manifest> manifest = Error{-EINVAL, "not run"};
  std::weak_ptr<bool> alive;
  ChangeTracker* tracker = nullptr;
};

namespace {

// Hashes r->path relative to root_fd (blocking), recording the stat after.
void hash_file(ChangeTracker::HashResult* r, int root_fd) {
  int fd = open_beneath_at(root_fd, r->path, O_RDONLY | O_NOFOLLOW);
  if (fd < 0) {
    r->manifest = errno_error(r->path + ": " + strerror(errno));
    return;
  }
  r->manifest = manifest_of_fd(fd);
  if (fstat(fd, &r->after) != 0) r->after = {};
  ::close(fd);
}

}  // namespace

ChangeTracker::ChangeTracker(uv_loop_t* loop, Options options, const SafeRoot& root,
                             FileIndex& index, Journal& journal,
                             std::function<bool(std::string_view, bool)> ignored)
    : loop_(loop),
      options_(std::move(options)),
      root_(root),
      index_(index),
      journal_(journal),
      ignored_(std::move(ignored)),
      slice_timer_(loop),
      deferred_timer_(loop) {}

ChangeTracker::~ChangeTracker() {
  *alive_ = false;
}

bool ChangeTracker::stat_path(const std::string& path, struct stat* st) const {
  return root_.lstat(path, st) == 0;
}

void ChangeTracker::push(Item item, bool front) {
  if (item.kind == Item::Kind::Reconcile) {
    if (!queued_.insert(item.path).second) return;
  }
  if (item.kind == Item::Kind::Rename) rename_targets_.insert(item.to);
  if (front) {
    queue_.push_front(std::move(item));
  } else {
    queue_.push_back(std::move(item));
  }
}

void ChangeTracker::add_events(std::vector<ChangeEvent>&& events) {
  for (auto& ev : events) {
    if (is_internal_path(ev.path) ||
        (ev.kind == ChangeEvent::Kind::Renamed && is_internal_path(ev.to_path))) {
      continue;
    }
    switch (ev.kind) {
      case ChangeEvent::Kind::Modified:
        defer(ev.path, options_.modified_quiet_ms);
        break;
      case ChangeEvent::Kind::Renamed:
        deferred_.erase(ev.path);
        push({Item::Kind::Rename, std::move(ev.path), std::move(ev.to_path)});
        break;
      default:
        deferred_.erase(ev.path);
        push({Item::Kind::Reconcile, std::move(ev.path), {}});
        break;
    }
  }
  schedule();
}

void ChangeTracker::defer(const std::string& path, uint64_t delay_ms) {
  deferred_[path] = now_ms(loop_) + delay_ms;
  arm_deferred();
}

void ChangeTracker::arm_deferred() {
  if (deferred_.empty()) return;
  uint64_t now = now_ms(loop_);
  uint64_t next = UINT64_MAX;
  for (const auto& [p, due] : deferred_) next = std::min(next, due);
  deferred_timer_.start(next > now ? next - now : 0, [this] {
    uint64_t t = now_ms(loop_);
    for (auto it = deferred_.begin(); it != deferred_.end();) {
      if (it->second <= t) {
        push({Item::Kind::Reconcile, it->first, {}});
        it = deferred_.erase(it);
      } else {
        ++it;
      }
    }
    arm_deferred();
    schedule();
  });
}

void ChangeTracker::rescan(const std::string& rel_dir, const std::string& reason) {
  log_info("fileset '{}': rescanning '{}': {}", options_.name, rel_dir.empty() ? "/" : rel_dir,
           reason);
  push({Item::Kind::Rescan, rel_dir, {}});
  schedule();
}

void ChangeTracker::reconcile_now(const std::string& path) {
  force_inline_ = true;
  reconcile(path);
  force_inline_ = false;
  commit();
}

void ChangeTracker::pause() {
  paused_ = true;
}

void ChangeTracker::resume() {
  paused_ = false;
  schedule();
}

uint32_t ChangeTracker::version_after(const KmlRecord& rec, uint32_t before) const {
  return options_.client ? before : rec.recno;
}

void ChangeTracker::when_durable(std::function<void()> done) {
  durable_waiters_.push_back(std::move(done));
  notify_durable();
}

void ChangeTracker::notify_durable() {
  if (durable_waiters_.empty() || !idle() || dirty_) return;
  auto waiters = std::move(durable_waiters_);
  durable_waiters_.clear();
  for (auto& done : waiters) done();
}

void ChangeTracker::schedule() {
  if (paused_ || hashing_ || queue_.empty() || slice_timer_.active()) {
    notify_durable();
    return;
  }
  slice_timer_.start(0, [this] { run_slice(); });
}

void ChangeTracker::run_slice() {
  uv_update_time(loop_);
  uint64_t start = uv_now(loop_);
  size_t n = 0;
  while (!queue_.empty() && !hashing_ && !paused_) {
    Item item = std::move(queue_.front());
    queue_.pop_front();
    if (item.kind == Item::Kind::Reconcile) queued_.erase(item.path);
    if (item.kind == Item::Kind::Rename) rename_targets_.erase(rename_targets_.find(item.to));
    process(item);
    if (++n % 64 == 0) {
      uv_update_time(loop_);
      if (n >= kSliceItems || uv_now(loop_) - start >= kSliceMs) break;
    }
  }
  // Records made so far become durable now, even if a large file is still
  // being hashed: small changes never wait behind big ones.
  commit();
  schedule();
}

void ChangeTracker::commit() {
  if (!dirty_) return;
  dirty_ = false;
  if (Status s = commit_journal_and_index(journal_, index_); !s) {
    last_error_ = s.error().message;
    log_error("fileset '{}': {}", options_.name, last_error_);
    // Records that are not durable are not announced; an index that failed
    // to commit is retried with the next commit.
    if (!journal_.all_durable()) return;
  }
  if (committed_) committed_();
  notify_durable();
}

bool ChangeTracker::append(KmlRecord& rec) {
  if (options_.client) {
    // The base: the server version of the entry before this change.
    std::string key = rec.path;
    if (rec.opcode == KmlOp::Unlink || rec.opcode == KmlOp::Rmdir)
      key = join_rel(rec.dir, rec.name);
    if (rec.opcode == KmlOp::Rename || rec.opcode == KmlOp::Link) key = rec.src;
    const FileState* before = index_.find(key);
    rec.prevrec = before ? before->version : 0;
  }
  auto off = journal_.append(rec);
  if (!off) {
    last_error_ = off.error().message;
    log_error("fileset '{}': journal append failed: {}", options_.name, last_error_);
    return false;
  }
  dirty_ = true;
  return true;
}

void ChangeTracker::process(const Item& item) {
  switch (item.kind) {
    case Item::Kind::Reconcile:
      reconcile(item.path);
      break;
    case Item::Kind::Rename:
      rename(item.path, item.to);
      break;
    case Item::Kind::Rescan:
      rescan_tree(item.path);
      break;
  }
}

// How long a known path found missing waits for the event that explains it
// (the rename of its directory, or its own next rename) before it is taken
// as removed. That event was queued by the kernel before the path was found
// missing, so it is normally read within the same loop iteration.
constexpr uint64_t kExplainingEventWaitMs = 100;

void ChangeTracker::reconcile(const std::string& path) {
  if (is_internal_path(path)) return;
  struct stat st;
  bool exists = stat_path(path, &st) && supported(st);
  const FileState* idx = index_.find(path);
  if (exists && !path.empty() && ignored_(path, S_ISDIR(st.st_mode))) exists = false;
  bool waited = waited_for_parent_.erase(path) > 0;
  if (!exists) {
    struct stat parent_st;
    if (idx && !path.empty() && !waited && !stat_path(parent_of(path), &parent_st)) {
      // Its directory is gone too: most often renamed a moment ago, the
      // event of that rename still on its way. Looked at again shortly; the
      // rename carries the look over to the new name.
      waited_for_parent_.insert(path);
      defer(path, kExplainingEventWaitMs);
      return;
    }
    if (idx) journal_removal(path);
    return;
  }
  if (!path.empty()) {
    std::string parent = parent_of(path);
    if (!index_.find(parent)) {
      // The parent is new too: reconciling it lists its children, this one
      // included, in order.
      push({Item::Kind::Reconcile, parent, {}}, true);
      return;
    }
  }
  if (idx && idx->type != type_of(st)) {
    journal_removal(path);
    idx = nullptr;
  }
  if (!idx) {
    // Moved here from a known name (into a directory listed before the
    // rename was seen): the queued rename journals it as a RENAME.
    if (rename_targets_.count(path)) return;
    journal_new(path, st);
    return;
  }
  FileState cur = *idx;
  switch (idx->type) {
    case FileType::Dir:
    case FileType::Symlink: {
      if (idx->type == FileType::Symlink) {
        auto target = root_.read_link(path);
        if (target && *target != idx->target) {
          journal_removal(path);
          journal_new(path, st);
          return;
        }
      }
      if ((st.st_mode & 07777) != idx->mode && idx->type == FileType::Dir) {
        KmlRecord r = setattr_record(path, st, *idx, kAttrMode);
        if (!append(r)) return;
        cur.version = version_after(r, cur.version);
      }
      FileState next = state_of(st);
      next.target = cur.target;
      next.version = cur.version;
      index_.put(path, next);
      return;
    }
    case FileType::File: {
      FileState disk = state_of(st);
      if (disk.size != idx->size || disk.mtime_ns != idx->mtime_ns || disk.ino != idx->ino) {
        journal_file_content(path, st, false);
        return;
      }
      if (disk.mode != idx->mode || disk.uid != idx->uid || disk.gid != idx->gid) {
        KmlRecord r = setattr_record(path, st, *idx, kAttrMode | kAttrUid | kAttrGid);
        if (!append(r)) return;
        cur.version = version_after(r, cur.version);
      }
      cur.mode = disk.mode;
      cur.uid = disk.uid;
      cur.gid = disk.gid;
      cur.ctime_ns = disk.ctime_ns;
      if (!(cur.mode == idx->mode && cur.ctime_ns == idx->ctime_ns && cur.uid == idx->uid &&
            cur.gid == idx->gid)) {
        index_.put(path, cur);
      }
      return;
    }
  }
}

void ChangeTracker::journal_new(const std::string& path, const struct stat& st) {
  if (S_ISREG(st.st_mode)) {
    journal_file_content(path, st, true);
    return;
  }
  FileState fs = state_of(st);
  if (S_ISLNK(st.st_mode)) {
    auto target = root_.read_link(path);
    if (!target) return;  // vanished meanwhile: a Deleted event follows
    fs.target = std::move(*target);
    KmlRecord r;
    r.opcode = KmlOp::Symlink;
    r.path = path;
    r.target = fs.target;
    r.uid = st.st_uid;
    r.gid = st.st_gid;
    r.v_obj_new = version_of(st);
    if (!append(r)) return;
    fs.version = version_after(r, 0);
    index_.put(path, fs);
    return;
  }
  // A directory. The root itself exists on every side and is not journaled.
  if (!path.empty()) {
    KmlRecord r;
    r.opcode = KmlOp::Mkdir;
    r.path = path;
    r.mode = st.st_mode;
    r.uid = st.st_uid;
    r.gid = st.st_gid;
    r.v_obj_new = version_of(st);
    if (!append(r)) return;
    fs.version = version_after(r, 0);
  }
  index_.put(path, fs);
  // Its entries, in order, ahead of everything else in the queue.
  UniqueFd dfd;
  if (auto fd = root_.open_beneath(path, O_RDONLY | O_DIRECTORY); fd) {
    dfd = std::move(*fd);
  } else {
    return;
  }
  DIR* d = fdopendir(dfd.release());
  if (!d) return;
  std::vector<std::string> children;
  while (struct dirent* e = readdir(d)) {
    std::string_view name = e->d_name;
    if (name == "." || name == "..") continue;
    std::string child = join_rel(path, name);
    if (is_internal_path(child)) continue;
    children.push_back(std::move(child));
  }
  closedir(d);
  std::sort(children.begin(), children.end());
  for (auto it = children.rbegin(); it != children.rend(); ++it) {
    push({Item::Kind::Reconcile, *it, {}}, true);
  }
}

void ChangeTracker::journal_removal(const std::string& path) {
  const FileState* idx = index_.find(path);
  if (!idx) return;
  if (idx->type == FileType::Dir) {
    std::vector<std::string> under = index_.paths_under(path);
    for (auto it = under.rbegin(); it != under.rend(); ++it) journal_removal(*it);
    idx = index_.find(path);
  }
  KmlRecord r;
  r.opcode = idx->type == FileType::Dir ? KmlOp::Rmdir : KmlOp::Unlink;
  r.dir = parent_of(path);
  r.name = base_name(path);
  r.v_obj_old = version_of(*idx);
  r.rollback = {idx->mode, 0, idx->uid, idx->gid};
  if (idx->type == FileType::Symlink) r.target = idx->target;
  if (!append(r)) return;
  index_.erase(path);
}

std::string ChangeTracker::where_now(const std::string& path) const {
  std::string now = path;
  for (const auto& item : queue_) {
    if (item.kind == Item::Kind::Rename && is_same_or_under(now, item.path)) {
      now = item.to + now.substr(item.path.size());
    }
  }
  return now;
}

void ChangeTracker::push_after_renames(Item item) {
  // Ahead of the queue unless a queued rename moves the path: then behind
  // it, where that rename carries the item over to the new name.
  bool front = where_now(item.path) == item.path;
  push(std::move(item), front);
}

void ChangeTracker::rename(const std::string& from, const std::string& to) {
  const FileState* src = index_.find(from);
  // Where `to` is now: a directory above it may have been renamed since
  // (those renames wait later in the queue).
  std::string now = where_now(to);
  struct stat st;
  int found = src ? root_.lstat(now, &st) : -ENOENT;
  // Gone from `to` already: moved on, or its directory moved, by an event
  // still on its way (or removed since). The rename happened as the event
  // says; the records that follow carry on from `to`.
  bool moved_on = src && found == -ENOENT;
  bool exact = src &&
               (moved_on || (found == 0 && supported(st) && st.st_ino == src->ino &&
                             type_of(st) == src->type)) &&
               index_.find(parent_of(to)) != nullptr && !is_same_or_under(to, from) &&
               !ignored_(to, src->type == FileType::Dir);
  if (!exact) {
    // Not a rename we can express (unknown source, replaced meanwhile,
    // moved under an ignored name): compare both sides with the disk.
    push_after_renames({Item::Kind::Reconcile, to, {}});
    push_after_renames({Item::Kind::Reconcile, from, {}});
    return;
  }
  if (const FileState* old = index_.find(to)) {
    // rename(2) replaced the target; the RENAME record says the same.
    if (old->type == FileType::Dir) {
      for (const auto& p : index_.paths_under(to)) index_.erase(p);
    }
    index_.erase(to);
  }
  FileType src_type = src->type;
  KmlRecord r;
  r.opcode = KmlOp::Rename;
  r.src = from;
  r.target = to;
  if (!append(r)) return;
  index_.rename_tree(from, to);
  if (FileState* moved = const_cast<FileState*>(index_.find(to))) {
    FileState copy = *moved;
    copy.version = version_after(r, copy.version);
    if (!moved_on) copy.ctime_ns = int64_t(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
    index_.put(to, copy);
  }
  // Pending work under the old name now concerns the new one.
  auto moved_path = [&](const std::string& p) { return to + p.substr(from.size()); };
  for (auto& item : queue_) {
    if ((item.kind == Item::Kind::Reconcile || item.kind == Item::Kind::Rescan) &&
        is_same_or_under(item.path, from)) {
      bool reconcile = item.kind == Item::Kind::Reconcile;
      if (reconcile) queued_.erase(item.path);
      item.path = moved_path(item.path);
      if (reconcile) queued_.insert(item.path);
    }
  }
  std::map<std::string, uint64_t> deferred;
  for (auto& [p, due] : deferred_) {
    deferred[is_same_or_under(p, from) ? moved_path(p) : p] = due;
  }
  deferred_.swap(deferred);
  std::set<std::string> waited;
  for (const auto& p : waited_for_parent_)
    waited.insert(is_same_or_under(p, from) ? moved_path(p) : p);
  waited_for_parent_.swap(waited);
  if (moved_on) {
    // Looked at once the event that explains its absence has come in: a
    // rename of it or of its directory carries the look to the new name
    // (and rescans a directory there), a removal makes it a removal.
    defer(to, kExplainingEventWaitMs);
  } else if (src_type == FileType::Dir) {
    // Entries created or renamed inside it before this rename was seen were
    // looked for under the old name: compare the whole subtree once.
    push_after_renames({Item::Kind::Rescan, to, {}});
  } else {
    push_after_renames({Item::Kind::Reconcile, to, {}});
  }
}

void ChangeTracker::rescan_tree(const std::string& dir) {
  std::set<std::string> seen;
  std::vector<std::string> order;
  std::vector<std::string> stack{dir};
  while (!stack.empty()) {
    std::string cur = std::move(stack.back());
    stack.pop_back();
    order.push_back(cur);
    seen.insert(cur);
    auto fd = root_.open_beneath(cur, O_RDONLY | O_DIRECTORY);
    if (!fd) continue;
    DIR* d = fdopendir(fd->release());
    if (!d) continue;
    std::vector<std::string> subdirs;
    while (struct dirent* e = readdir(d)) {
      std::string_view name = e->d_name;
      if (name == "." || name == "..") continue;
      std::string child = join_rel(cur, name);
      if (is_internal_path(child)) continue;
      if (e->d_type == DT_DIR) {
        subdirs.push_back(std::move(child));
      } else {
        order.push_back(child);
        seen.insert(std::move(child));
      }
    }
    closedir(d);
    std::sort(subdirs.rbegin(), subdirs.rend());
    for (auto& s : subdirs) stack.push_back(std::move(s));
  }
  for (auto& p : order) push({Item::Kind::Reconcile, std::move(p), {}});
  for (const auto& p : index_.paths_under(dir)) {
    if (!seen.count(p)) push({Item::Kind::Reconcile, p, {}});
  }
}

void ChangeTracker::journal_file_content(const std::string& path, const struct stat& st,
                                         bool created) {
  auto result = std::make_unique<HashResult>();
  result->path = path;
  result->created = created;
  result->before = st;
  result->tracker = this;
  result->alive = alive_;
  if (force_inline_ || static_cast<uint64_t>(st.st_size) <= options_.inline_hash_limit) {
    hash_file(result.get(), root_.fd());
    finish_hash(std::move(result));
    return;
  }
  hashing_ = true;
  result->root_fd = fcntl(root_.fd(), F_DUPFD_CLOEXEC, 0);
  HashResult* raw = result.release();
  raw->work.data = raw;
  uv_queue_work(
      loop_, &raw->work,
      [](uv_work_t* w) {
        auto* r = static_cast<HashResult*>(w->data);
        hash_file(r, r->root_fd);
      },
      [](uv_work_t* w, int) {
        std::unique_ptr<HashResult> r(static_cast<HashResult*>(w->data));
        ::close(r->root_fd);
        if (r->alive.expired() || !*r->alive.lock()) return;
        ChangeTracker* self = r->tracker;
        self->hashing_ = false;
        self->finish_hash(std::move(r));
        // Commits what the hash produced and goes on with the queue.
        self->run_slice();
      });
}

void ChangeTracker::finish_hash(std::unique_ptr<HashResult> r) {
  const std::string& path = r->path;
  if (!r->manifest) {
    // Vanished or unreadable: look again; a removal is journaled if gone.
    if (r->manifest.error().code != -ENOENT) {
      log_warn("fileset '{}': cannot hash {}: {}", options_.name, path,
               r->manifest.error().message);
    }
    struct stat st;
    if (!stat_path(path, &st) && index_.find(path)) journal_removal(path);
    return;
  }
  if (!same_content_stat(r->before, r->after)) {
    // Written while we read it: look again once the writer is quiet.
    defer(path, 50);
    return;
  }
  const Manifest& m = *r->manifest;
  const struct stat& st = r->after;
  const FileState* idx = index_.find(path);
  FileState fs = state_of(st);
  fs.content_id = m.content_id;
  fs.nchunks = static_cast<uint32_t>(m.chunks.size());
  if (m.chunks.size() > 1) fs.chunks = pack_chunks(m.chunks);
  if (!r->created && idx && idx->type == FileType::File && idx->content_id == m.content_id) {
    // Same bytes (touched, or rewritten identically): only attributes moved.
    if (fs.mtime_ns != idx->mtime_ns || fs.mode != idx->mode) {
      KmlRecord s = setattr_record(path, st, *idx, kAttrMode | kAttrMtime);
      if (!append(s)) return;
      fs.version = version_after(s, idx->version);
    } else {
      fs.version = idx->version;
    }
    index_.put(path, fs);
    return;
  }
  if (server_content_) {
    if (auto version = server_content_(path, m.content_id)) {
      fs.version = *version;
      index_.put(path, fs);
      dirty_ = true;
      return;
    }
  }
  if (r->created || !idx) {
    KmlRecord c;
    c.opcode = KmlOp::Create;
    c.path = path;
    c.mode = st.st_mode;
    c.uid = st.st_uid;
    c.gid = st.st_gid;
    c.v_obj_new = version_of(st);
    if (!append(c)) return;
  }
  KmlRecord close;
  close.opcode = KmlOp::Close;
  close.path = path;
  close.open_uid = st.st_uid;
  close.open_gid = st.st_gid;
  if (idx) close.v_obj_old = version_of(*idx);
  close.v_obj_new = version_of(st);
  close.ino = st.st_ino;
  if (!append(close)) return;
  KmlRecord content;
  content.opcode = KmlOp::Content;
  content.path = path;
  content.v_obj_new = version_of(st);
  content.size = static_cast<uint64_t>(st.st_size);
  content.mode = st.st_mode;
  content.nchunks = fs.nchunks;
  content.hash = m.content_id;
  if (!append(content)) return;
  fs.version = version_after(content, idx ? idx->version : 0);
  index_.put(path, fs);
}

}  // namespace intersync
