// The kml change backend: follows the KML that izofs writes for a fileset
// (`<backing>/.intermezzo/<fset>/kml`, or any KML 1.2 log named by `log:`)
// and turns its records into ChangeEvents for core. Unlike watching the tree,
// the log also holds what changed while the daemon was stopped, so the
// backend replays it from the position it saved and core skips its start-up
// scan of the whole tree (replays_changes()).
//
// The log is watched with inotify through libuv, never polled: a watch on
// the file wakes the backend when it grows or changes, one on its directory
// when it is replaced. Each wake-up reads the new bytes from the last
// position with pread, decodes the complete records with kml_scan and leaves
// a record still being written (a torn tail) for the next wake-up. The
// records of one read become one on_changes() batch, in order. Once core
// says a batch is journaled durably (when_durable), the position of its last
// record is saved in the position file (kml_position.h), so that a crash
// replays changes and never skips one. Without a saved position (a first
// start) the whole fileset is compared with core's index, unless the log
// was never truncated and `<log>.complete` says it was begun on an empty
// fileset: it then holds every change, and is replayed from its first
// record.
//
// On an izofs mount a record is in the log before the change shows through
// the mount: izofs appends it before answering the kernel, and the kernel
// updates its cached names and attributes only after that answer, in the
// caller's thread. Core reads the tree through the mount, so before a batch
// is handed over the backend waits, on a thread of libuv's pool (a caller
// may be waiting for the daemon meanwhile: data on demand), until the kernel
// has finished each change (settle_batch): for a change of names it takes
// the lock of each directory involved, which the caller holds until its
// names are updated; for a change of attributes or content it asks izofs
// for the object's attributes again.
//
// Offsets in the log are logical (KML.md): after the log is truncated, the
// all-zero-uuid entry of the `last_rcvd` next to it holds the truncated
// length, in its local_offset field. Every read starts by re-reading the last
// record consumed and checking its recno there, which catches a log that was
// truncated, rewritten or replaced under the backend; the truncated length is
// then read again and the position recomputed. When the log proves
// incomplete -- a gap in the recnos, a damaged record followed by good ones,
// the saved position's record gone -- core is asked to rescan the whole
// fileset, and following goes on.
#include <endian.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "intersync/backend.h"
#include "intersync/kml.h"
#include "intersync/log.h"
#include "intersync/plugin.h"
#include "intersync/uv_handle.h"
#include "intersync/uv_timer.h"
#include "kml_position.h"

namespace intersync {
namespace {

using Kind = ChangeEvent::Kind;

// At most this much is read, and delivered as one batch, at a time: a long
// backlog (a replay after a restart) is read over several loop iterations,
// so the loop keeps serving everything else. A multiple of the chunk size,
// so that a read never ends inside a record.
constexpr uint64_t kReadMax = 16 * uint64_t{kKmlChunk};
// The log file itself: it grows, is closed after writing, is truncated in
// place, or is moved or deleted.
constexpr uint32_t kFileMask =
    IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB | IN_MOVE_SELF | IN_DELETE_SELF;
// Its directory: a log appears, or a new one is renamed over the old one.
constexpr uint32_t kDirMask = IN_CREATE | IN_MOVED_TO | IN_ONLYDIR;
constexpr uint32_t kMajorMask = 0xffff0000u;
// `<log>.complete`, made by izofs and mkizofs (make_fileset_layout) when
// they begin a log on an empty fileset: the log then holds every change
// the fileset ever had, and a first start replays it instead of rescanning.
constexpr char kCompleteSuffix[] = ".complete";
// Removing this xattr, which nothing ever sets (izofs never journals a
// user.intersync.* xattr), takes the inode lock of the directory and fails
// with ENODATA: a wait for whatever change of names holds that lock.
constexpr char kSettleXattr[] = "user.intersync.settle";

uint32_t load_u32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return le32toh(v);
}

bool is_internal(std::string_view path) {
  return path == ".intermezzo" || path.starts_with(".intermezzo/");
}

// A path from a record in core's form: relative to the root, without
// leading, trailing or doubled slashes or "." components. nullopt when a
// ".." would leave the fileset.
std::optional<std::string> normalize(std::string_view in) {
  std::string out;
  size_t pos = 0;
  while (pos <= in.size()) {
    size_t slash = in.find('/', pos);
    if (slash == std::string_view::npos) slash = in.size();
    const std::string_view part = in.substr(pos, slash - pos);
    pos = slash + 1;
    if (part.empty() || part == ".") continue;
    if (part == "..") return std::nullopt;
    if (!out.empty()) out += '/';
    out += part;
  }
  return out;
}

std::string join_path(const std::string& dir, const std::string& name) {
  return dir.empty() ? name : dir + "/" + name;
}

std::string dirname_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// The directory holding `path` (normalized, relative), "" for the root.
std::string parent_rel(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash);
}

// What the kernel must have finished before the tree shows `rec`: the
// directories whose names it changes, and the object whose attributes or
// content it changes (paths relative to the root).
void settle_targets(const KmlRecord& rec, std::vector<std::string>& dirs,
                    std::vector<std::string>& objects) {
  auto dir_of = [&dirs](const std::string& raw) {
    std::optional<std::string> path = normalize(raw);
    if (path && !path->empty() && !is_internal(*path)) dirs.push_back(parent_rel(*path));
  };
  auto object = [&objects](const std::string& raw) {
    std::optional<std::string> path = normalize(raw);
    if (path && !is_internal(*path)) objects.push_back(std::move(*path));
  };
  switch (rec.opcode) {
    case KmlOp::Create:
    case KmlOp::Mkdir:
    case KmlOp::Mknod:
    case KmlOp::Symlink:
      dir_of(rec.path);
      break;
    case KmlOp::Link:
      dir_of(rec.target);
      break;
    case KmlOp::Unlink:
    case KmlOp::Rmdir:
      dir_of(join_path(rec.dir, rec.name));
      break;
    case KmlOp::Rename:
      dir_of(rec.src);
      dir_of(rec.target);
      break;
    case KmlOp::Setattr:
    case KmlOp::SetExtAttr:
    case KmlOp::DelExtAttr:
    case KmlOp::Close:
    case KmlOp::Content:
      object(rec.path);
      break;
    default:
      break;
  }
}

// Runs on the thread pool: waits until the kernel has finished the changes
// that `dirs` and `objects` name (see settle_targets). Errors do not matter:
// what cannot be reached has changed again since, and a later record says so.
void settle(const std::string& root, std::vector<std::string> dirs,
            std::vector<std::string> objects) {
  auto full = [&root](const std::string& rel) { return rel.empty() ? root : root + "/" + rel; };
  std::sort(dirs.begin(), dirs.end());
  dirs.erase(std::unique(dirs.begin(), dirs.end()), dirs.end());
  for (const std::string& dir : dirs) ::lremovexattr(full(dir).c_str(), kSettleXattr);
  std::sort(objects.begin(), objects.end());
  objects.erase(std::unique(objects.begin(), objects.end()), objects.end());
  for (const std::string& object : objects) {
    // Fresh attributes from izofs (which changed the backing file before it
    // journaled) replace those the kernel may still hold from before.
    struct statx stx;
    ::statx(AT_FDCWD, full(object).c_str(), AT_SYMLINK_NOFOLLOW | AT_STATX_FORCE_SYNC,
            STATX_BASIC_STATS, &stx);
  }
}

// A virtual attribute that izofs answers on its root; "" when absent.
std::string root_xattr(const std::string& root, const char* name) {
  char buf[4096];
  const ssize_t n = ::getxattr(root.c_str(), name, buf, sizeof buf);
  if (n <= 0) return {};
  std::string value(buf, static_cast<size_t>(n));
  while (!value.empty() && value.back() == '\0') value.pop_back();
  return value;
}

// Whether the bytes at `at` start a record that is still being written: a
// frame a writer could have begun (sane length and version, inside its
// 64 KiB chunk) that runs past the end of what was read. Its unwritten part
// cannot be judged yet, even when something inside the written part happens
// to decode (an xattr value may hold anything), so kml_scan's verdict of
// "damage" is not taken for it.
bool incomplete_record_at(std::string_view data, size_t at, uint64_t phys) {
  const size_t left = data.size() - at;
  if (left < 8) return true;
  const uint32_t len = load_u32(data.data() + at);
  const uint32_t version = load_u32(data.data() + at + 4);
  return len % 4 == 0 && len >= kKmlPrefixSize + kKmlSuffixSize &&
         (version & kMajorMask) == (kKmlVersion & kMajorMask) &&
         phys % kKmlChunk + len <= kKmlChunk && len > left;
}

// Reads up to `len` bytes at `offset` (fewer at the end of the file).
Result<std::string> read_at(int fd, uint64_t offset, size_t len) {
  std::string buf(len, '\0');
  size_t done = 0;
  while (done < len) {
    const ssize_t n = ::pread(fd, buf.data() + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_error(std::strerror(errno));
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  buf.resize(done);
  return buf;
}

class KmlBackend final : public Backend {
 public:
  KmlBackend() : self_(std::make_shared<KmlBackend*>(this)) {}
  ~KmlBackend() override {
    stop();
    self_.reset();
  }

  Status configure(const ConfigNode& node) override;
  Status start(uv_loop_t* loop, const std::string& root, BackendHost* host) override;
  void stop() override;
  bool replays_changes() const override { return true; }

 private:
  // The last record consumed: where it is and what it must still be.
  struct Anchor {
    uint64_t offset = 0;  // logical
    uint32_t recno = 0;
    uint32_t len = 0;
  };
  // More: read on at once; Settling: a batch waits for settle_batch, which
  // goes on reading once it has been delivered.
  enum class Step { Done, More, Settling };
  struct SettleJob;

  static void on_poll(uv_poll_t* handle, int status, int events);
  template <typename F>
  void guarded(F&& work) noexcept;

  Status fail_start(Error err);
  void restore(const KmlPosition& pos);
  void follow();
  Step read_once();
  // Hands `fresh` to the thread pool to wait for the kernel, then to
  // settled(); false (nothing taken) when it cannot be queued.
  bool settle_batch(std::vector<KmlEntry>& fresh, std::string& damage);
  static void settled(uv_work_t* work, int status);
  // Turns `fresh` into events for core, then asks for the rescan `damage`
  // says is needed (if any). False when core stopped the backend meanwhile.
  bool deliver(const std::vector<KmlEntry>& fresh, std::string damage);
  std::string check_position(uint64_t size, uint64_t* start, std::string* data, bool* io_error);
  bool switch_if_replaced();
  int open_log();
  void close_log();
  uint64_t read_base();
  void lose(const std::string& reason);
  void convert(const KmlEntry& entry, std::vector<ChangeEvent>& out, std::string& odd);
  void emit(std::vector<ChangeEvent>& out, Kind kind, const std::string& raw, bool is_dir,
            const KmlEntry& entry, std::string& odd);
  void rename(std::vector<ChangeEvent>& out, const KmlEntry& entry, std::string& odd);
  std::optional<KmlPosition> current_position() const;
  void request_persist();
  void persist(uint64_t seq, const KmlPosition& pos);

  // configuration
  std::string log_cfg_;
  std::string position_cfg_;

  // set by start()
  uv_loop_t* loop_ = nullptr;
  BackendHost* host_ = nullptr;
  std::string root_;
  bool izofs_ = false;  // the root is an izofs mount: batches are settled first
  std::string log_path_;
  std::string log_dir_;
  std::string last_rcvd_path_;
  bool running_ = false;

  // the log file
  int log_fd_ = -1;
  dev_t log_dev_ = 0;
  ino_t log_ino_ = 0;
  uint64_t base_ = 0;  // logical offset of the file's first byte (truncated length)

  // where following stands
  std::optional<Anchor> anchor_;
  uint64_t next_ = 0;                   // logical offset where unread data starts
  std::optional<uint32_t> last_recno_;  // unknown after a lost position
  uint64_t skip_until_ = 0;             // records ending before it: covered by a rescan
  bool after_damage_ = false;
  std::string pending_loss_;  // a rescan the first read must ask for
  bool settling_ = false;     // a batch read is on the thread pool, not yet delivered
  uint64_t run_ = 0;          // which start() a settling batch belongs to

  // inotify
  int inotify_fd_ = -1;
  int file_wd_ = -1;
  UvHandle<uv_poll_t> poll_;
  std::optional<UvTimer> continue_timer_;

  // the position file
  KmlPositionFile position_;
  std::optional<KmlPosition> requested_;  // last position handed to when_durable
  uint64_t requested_seq_ = 0;
  uint64_t saved_seq_ = 0;
  std::string save_error_;
  // Durability callbacks hold a weak reference: core may call them after
  // the backend is gone.
  std::shared_ptr<KmlBackend*> self_;
};

Status KmlBackend::configure(const ConfigNode& node) {
  log_cfg_.clear();
  position_cfg_.clear();
  if (!node.defined()) return Status::Ok();
  if (Status s = node.expect_map({"log", "position"}); !s) return s;
  for (auto [key, out] : {std::pair{"log", &log_cfg_}, std::pair{"position", &position_cfg_}}) {
    Result<std::string> value = node.get_string(key, "");
    if (!value) return value.error();
    if (!value->empty() && value->front() != '/') {
      return node.error_at(key,
                           fmt::format("'{}' must be an absolute path, not '{}'", key, *value));
    }
    *out = *value;
  }
  return Status::Ok();
}

Status KmlBackend::fail_start(Error err) {
  stop();
  position_.close();
  return err;
}

Status KmlBackend::start(uv_loop_t* loop, const std::string& root, BackendHost* host) {
  if (running_) return make_error(-EALREADY, "kml: already following '" + log_path_ + "'");
  if (root.empty() || root.front() != '/') {
    return make_error(-EINVAL, "kml: the fileset root '" + root + "' is not absolute");
  }
  loop_ = loop;
  host_ = host;
  root_ = root;
  const std::string fset = root_xattr(root, "user.izofs.fileset");
  const std::string backing = root_xattr(root, "user.izofs.backing");
  izofs_ = !fset.empty() && !backing.empty();
  if (!log_cfg_.empty()) {
    log_path_ = log_cfg_;
  } else {
    if (fset.empty() || backing.empty()) {
      return make_error(
          -ENOTSUP,
          fmt::format("kml: the fileset root '{}' is not an izofs mount (it has no "
                      "user.izofs.fileset and user.izofs.backing attributes) and no 'log:' is "
                      "configured: mount it with 'izofs -o fileset=NAME BACKING {}', or name the "
                      "KML to follow with 'kml: {{log: PATH}}', or use another backend",
                      root, root));
    }
    log_path_ = backing + "/.intermezzo/" + fset + "/kml";
  }
  log_dir_ = dirname_of(log_path_);
  last_rcvd_path_ = log_dir_ + "/last_rcvd";
  struct stat st;
  if (::stat(log_dir_.c_str(), &st) != 0) {
    const int err = errno;
    return make_error(
        -err, fmt::format("kml: the directory '{}' of the log '{}' cannot be used: {}", log_dir_,
                          log_path_, std::strerror(err)));
  }
  if (!S_ISDIR(st.st_mode)) {
    return make_error(-ENOTDIR, fmt::format("kml: '{}', the directory of the log '{}', is not a "
                                            "directory",
                                            log_dir_, log_path_));
  }

  // Where the last run stopped; without that, the log cannot tell what
  // changed before now, and the whole fileset is compared with the index.
  const std::string position_path = position_cfg_.empty() ? log_path_ + ".position" : position_cfg_;
  if (Status s = position_.open(position_path); !s) {
    return make_error(s.error().code, "kml: " + s.error().message);
  }
  anchor_.reset();
  last_recno_.reset();
  next_ = 0;
  skip_until_ = 0;
  after_damage_ = false;
  requested_.reset();
  pending_loss_.clear();
  settling_ = false;
  ++run_;
  Result<std::optional<KmlPosition>> saved = position_.load();
  if (!saved.ok()) {
    pending_loss_ = "the saved position cannot be used: " + saved.error().message;
  } else if (!*saved) {
    pending_loss_ =
        fmt::format("no position saved in '{}' yet: first start on this log", position_path);
  } else if ((*saved)->end - (*saved)->offset > kKmlChunk) {
    pending_loss_ = fmt::format("the position saved in '{}' is inconsistent", position_path);
  } else {
    restore(**saved);
  }

  inotify_fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (inotify_fd_ < 0) {
    return fail_start(make_error(
        -errno, fmt::format("kml: cannot create an inotify instance: {}", std::strerror(errno))));
  }
  if (::inotify_add_watch(inotify_fd_, log_dir_.c_str(), kDirMask) < 0) {
    const int err = errno;
    return fail_start(
        make_error(-err, fmt::format("kml: cannot watch '{}': {}{}", log_dir_, std::strerror(err),
                                     err == ENOSPC ? " (fs.inotify.max_user_watches "
                                                     "is reached)"
                                                   : "")));
  }
  // A log that does not exist yet is followed from when it appears.
  if (int err = open_log(); err < 0 && err != -ENOENT) {
    return fail_start(make_error(
        err, fmt::format("kml: cannot open the log '{}': {}", log_path_, std::strerror(-err))));
  }
  // No position, but a log that holds the fileset's whole history (begun
  // on an empty fileset, never truncated): replaying all of it is the same
  // as comparing the tree with the index, without reading the tree.
  bool from_first = false;
  if (saved.ok() && !*saved && base_ == 0 &&
      ::access((log_path_ + kCompleteSuffix).c_str(), F_OK) == 0) {
    pending_loss_.clear();
    restore(KmlPosition{});
    from_first = true;
  }
  if (int err = uv_poll_readable(poll_, loop, inotify_fd_, this, on_poll); err < 0) {
    return fail_start(make_error(
        err, fmt::format("kml: cannot poll the inotify descriptor: {}", uv_strerror(err))));
  }
  continue_timer_.emplace(loop);
  running_ = true;
  if (from_first) {
    log_info(
        "kml: following '{}' for '{}' from its first record: no position saved yet, and '{}{}' "
        "says the log holds the fileset's whole history",
        log_path_, root_, log_path_, kCompleteSuffix);
  } else if (pending_loss_.empty()) {
    log_info("kml: following '{}' for '{}' from record {} (logical offset {})", log_path_, root_,
             *last_recno_, next_);
  } else {
    log_info("kml: following '{}' for '{}'", log_path_, root_);
  }
  // The replay starts from the loop, once core has finished starting.
  continue_timer_->start(0, [this] { guarded([this] { follow(); }); });
  return Status::Ok();
}

void KmlBackend::stop() {
  running_ = false;
  // A batch still settling is dropped; its records are read again next time.
  settling_ = false;
  ++run_;
  // The poll handle must stop using the descriptor before it is closed.
  poll_.close();
  continue_timer_.reset();
  if (inotify_fd_ >= 0) ::close(inotify_fd_);
  inotify_fd_ = -1;
  file_wd_ = -1;
  close_log();
  // The position file stays open: core may still report durability of
  // delivered changes while it shuts down.
}

template <typename F>
void KmlBackend::guarded(F&& work) noexcept {
  try {
    work();
  } catch (const std::exception& e) {
    try {
      log_error("kml: following '{}' failed: {}; asking for a full rescan", log_path_, e.what());
      if (running_) host_->on_rescan("", std::string("kml backend error: ") + e.what());
    } catch (...) {
    }
  } catch (...) {
    try {
      log_error("kml: following '{}' failed; asking for a full rescan", log_path_);
      if (running_) host_->on_rescan("", "kml backend error");
    } catch (...) {
    }
  }
}

void KmlBackend::on_poll(uv_poll_t* handle, int status, int /*events*/) {
  auto* self = static_cast<KmlBackend*>(handle->data);
  if (self == nullptr) return;
  self->guarded([self, handle, status] {
    if (status < 0) {
      log_error("kml: polling inotify for '{}' failed: {}; no more changes are reported",
                self->log_path_, uv_strerror(status));
      uv_poll_stop(handle);
      self->host_->on_rescan("", "kml: polling inotify failed");
      return;
    }
    // What the events say does not matter: every wake-up looks at the file.
    alignas(inotify_event) char buf[4096];
    for (;;) {
      const ssize_t n = ::read(self->inotify_fd_, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
    }
    self->follow();
  });
}

void KmlBackend::restore(const KmlPosition& pos) {
  last_recno_ = pos.recno;
  next_ = pos.end;
  if (pos.end > pos.offset) {
    anchor_ = Anchor{pos.offset, pos.recno, static_cast<uint32_t>(pos.end - pos.offset)};
  }
  requested_ = pos;
}

// Reads until the end of the log or a record still being written, one batch
// per read; a long backlog continues on the next loop iteration.
void KmlBackend::follow() {
  if (!running_ || settling_) return;
  continue_timer_->stop();
  if (!pending_loss_.empty()) lose(std::exchange(pending_loss_, std::string()));
  for (;;) {
    const Step step = read_once();
    if (!running_ || step == Step::Settling) return;
    if (step == Step::More) {
      continue_timer_->start(0, [this] { guarded([this] { follow(); }); });
      return;
    }
    // The old file is read out: continue in the one the path names now.
    if (!switch_if_replaced()) break;
  }
  request_persist();
}

KmlBackend::Step KmlBackend::read_once() {
  if (log_fd_ < 0) return Step::Done;
  struct stat st;
  if (::fstat(log_fd_, &st) != 0) {
    log_error("kml: cannot stat the log '{}': {}", log_path_, std::strerror(errno));
    return Step::Done;
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);

  // The last record consumed must still be where it was; if not, the log
  // was truncated or rewritten, and its truncated length is read again.
  uint64_t start = 0;
  std::string data;
  for (int attempt = 0;; ++attempt) {
    bool io_error = false;
    const std::string why = check_position(size, &start, &data, &io_error);
    if (io_error) return Step::Done;  // logged; the next event tries again
    if (why.empty()) break;
    if (attempt == 0) {
      const uint64_t old = base_;
      base_ = read_base();
      if (base_ != old) {
        log_info("kml: '{}' was truncated: it now starts at logical offset {} (was {})", log_path_,
                 base_, old);
      }
      continue;
    }
    lose(why);
    return Step::More;
  }

  const uint64_t phys = start - base_;
  const bool to_eof = phys + data.size() == size;
  const size_t skip = anchor_ ? anchor_->len : 0;
  const std::string_view rest = std::string_view(data).substr(skip);
  const uint64_t rest_at = start + skip;  // logical offset of rest[0]
  const KmlScan scan = kml_scan(rest, rest_at);

  std::vector<KmlEntry> fresh;  // records to report
  std::string damage;           // why core must rescan, "" when it need not
  bool pending_tail = false;
  size_t entries = 0;
  size_t ei = 0;
  size_t pi = 0;
  while (ei < scan.entries.size() || pi < scan.problems.size()) {
    const bool problem_first =
        pi < scan.problems.size() &&
        (ei == scan.entries.size() || scan.problems[pi].offset < scan.entries[ei].offset);
    if (problem_first) {
      const KmlProblem& problem = scan.problems[pi++];
      const size_t at = static_cast<size_t>(problem.offset - rest_at);
      if (to_eof && (problem.torn_tail || incomplete_record_at(rest, at, problem.offset - base_))) {
        // A record still being written: read it again when it grows.
        pending_tail = true;
        break;
      }
      // Damage with good records after it, or (in a read that stops short
      // of the end, at a chunk boundary) with no record until that boundary.
      if (problem.offset >= skip_until_ && damage.empty()) {
        damage = fmt::format(
            "the KML '{}' is damaged at logical offset {} after record {} ({}): the changes "
            "recorded there are lost",
            log_path_, problem.offset, last_recno_ ? std::to_string(*last_recno_) : "?",
            problem.reason);
      }
      after_damage_ = true;
      if (problem.torn_tail) {
        anchor_.reset();
        next_ = rest_at + rest.size();
      }
      continue;
    }
    const KmlEntry& entry = scan.entries[ei++];
    // kml_scan checks the order of recnos within one read, reporting a
    // problem at the record's own offset; it is checked here, across reads.
    if (pi < scan.problems.size() && scan.problems[pi].offset == entry.offset) ++pi;
    const uint32_t recno = entry.record.recno;
    const uint32_t len = load_u32(rest.data() + (entry.offset - rest_at));
    // Only a record that was whole when the rescan was asked for is covered
    // by it: one still being written then may describe a change made later.
    const bool covered = entry.offset + len <= skip_until_;
    if (!covered && !after_damage_ && last_recno_ && recno != *last_recno_ + 1 && damage.empty()) {
      damage = fmt::format(
          "the KML '{}' has a gap: record {} at logical offset {} follows record {}{}", log_path_,
          recno, entry.offset, *last_recno_,
          recno > *last_recno_ + 1
              ? fmt::format(", records {} to {} are missing", *last_recno_ + 1, recno - 1)
              : std::string(", out of order"));
    }
    after_damage_ = false;
    anchor_ = Anchor{entry.offset, recno, len};
    next_ = entry.offset + len;
    last_recno_ = recno;
    ++entries;
    if (!covered) fresh.push_back(entry);
  }
  if (!to_eof && !pending_tail && entries == 0 && scan.problems.empty()) {
    // Nothing but zeros up to the end of this read: go past them.
    anchor_.reset();
    next_ = rest_at + rest.size();
  }

  if (izofs_ && !fresh.empty() && settle_batch(fresh, damage)) return Step::Settling;
  if (!deliver(fresh, std::move(damage))) return Step::Done;
  return !to_eof && !pending_tail ? Step::More : Step::Done;
}

bool KmlBackend::deliver(const std::vector<KmlEntry>& fresh, std::string damage) {
  std::vector<ChangeEvent> events;
  std::string odd;  // records whose paths cannot be reported
  for (const KmlEntry& entry : fresh) convert(entry, events, odd);
  if (!events.empty()) {
    host_->on_changes(std::move(events));
    if (!running_) return false;
  }
  if (damage.empty() && !odd.empty()) damage = odd;
  if (!damage.empty()) {
    log_warn("kml: {}; rescanning the whole fileset '{}'", damage, root_);
    host_->on_rescan("", damage);
    if (!running_) return false;
  }
  request_persist();
  return true;
}

// A batch waiting on the thread pool for the kernel to finish its changes.
// It refers to the backend only through the weak reference: the backend may
// be stopped and deleted before the pool is done with it.
struct KmlBackend::SettleJob {
  uv_work_t work{};
  std::weak_ptr<KmlBackend*> self;
  uint64_t run = 0;
  std::string root;
  std::vector<std::string> dirs;
  std::vector<std::string> objects;
  std::vector<KmlEntry> fresh;
  std::string damage;
};

bool KmlBackend::settle_batch(std::vector<KmlEntry>& fresh, std::string& damage) {
  auto job = std::make_unique<SettleJob>();
  job->self = self_;
  job->run = run_;
  job->root = root_;
  for (const KmlEntry& entry : fresh) settle_targets(entry.record, job->dirs, job->objects);
  job->work.data = job.get();
  const int err = uv_queue_work(
      loop_, &job->work,
      [](uv_work_t* work) {
        auto* j = static_cast<SettleJob*>(work->data);
        settle(j->root, std::move(j->dirs), std::move(j->objects));
      },
      settled);
  if (err < 0) {
    // Not expected with a valid loop: the batch is delivered without waiting
    // rather than not at all.
    log_error("kml: cannot queue the wait for the kernel: {}", uv_strerror(err));
    return false;
  }
  // The pool thread reads only root, dirs and objects.
  job->fresh = std::move(fresh);
  job->damage = std::move(damage);
  settling_ = true;
  job.release();
  return true;
}

void KmlBackend::settled(uv_work_t* work, int /*status*/) {
  std::unique_ptr<SettleJob> job(static_cast<SettleJob*>(work->data));
  std::shared_ptr<KmlBackend*> backend = job->self.lock();
  if (!backend) return;
  KmlBackend* self = *backend;
  if (!self->running_ || self->run_ != job->run) return;
  self->guarded([self, &job] {
    self->settling_ = false;
    if (self->deliver(job->fresh, std::move(job->damage))) self->follow();
  });
}

// Where reading starts in the open file (`start`, logical) and the bytes
// from there on (at most kReadMax, ending at a chunk boundary or the end of
// the file), checking that they begin with the last record consumed.
// Returns why the position does not hold, "" when it does.
std::string KmlBackend::check_position(uint64_t size, uint64_t* start, std::string* data,
                                       bool* io_error) {
  // A truncation may remove the last record consumed and keep all after it.
  if (anchor_ && anchor_->offset < base_ && next_ >= base_) anchor_.reset();
  const std::string last =
      last_recno_ ? fmt::format("record {} ending at logical offset {}", *last_recno_, next_)
                  : fmt::format("logical offset {}", next_);
  *start = anchor_ ? anchor_->offset : next_;
  if (*start < base_) {
    return fmt::format(
        "the log was truncated up to logical offset {}, past the last change "
        "delivered ({}): the changes in between are lost",
        base_, last);
  }
  const uint64_t phys = *start - base_;
  if (phys > size) {
    return fmt::format(
        "the log ends at logical offset {}, before the last change delivered "
        "({}): it was truncated or re-created",
        base_ + size, last);
  }
  const uint64_t end = std::min(size, (phys + kReadMax) / kKmlChunk * kKmlChunk);
  Result<std::string> bytes = read_at(log_fd_, phys, static_cast<size_t>(end - phys));
  if (!bytes.ok()) {
    log_error("kml: cannot read the log '{}' at offset {}: {}", log_path_, phys,
              bytes.error().message);
    *io_error = true;
    return {};
  }
  *data = std::move(*bytes);
  if (anchor_) {
    size_t used = 0;
    bool same = false;
    if (data->size() >= anchor_->len) {
      Result<KmlRecord> rec = kml_decode(std::string_view(*data).substr(0, anchor_->len), &used);
      same = rec.ok() && used == anchor_->len && rec->recno == anchor_->recno;
    }
    if (!same) {
      return fmt::format(
          "record {} is no longer at logical offset {}: the log was truncated, "
          "rewritten or re-created",
          anchor_->recno, anchor_->offset);
    }
  }
  return {};
}

// When the log path names another file than the one open (a truncation that
// wrote a new file, a log created after start), opens that one.
bool KmlBackend::switch_if_replaced() {
  struct stat st;
  if (::stat(log_path_.c_str(), &st) != 0) return false;
  if (log_fd_ >= 0 && st.st_dev == log_dev_ && st.st_ino == log_ino_) return false;
  const bool had = log_fd_ >= 0;
  if (int err = open_log(); err < 0) {
    if (err != -ENOENT) {
      log_error("kml: cannot open the log '{}': {}", log_path_, std::strerror(-err));
    }
    return false;
  }
  if (had) {
    log_info("kml: '{}' was replaced; continuing in the new file at logical offset {}", log_path_,
             next_);
  }
  return true;
}

// Opens the file the log path names now, learns its truncated length and
// watches it. Returns 0 or a negative errno (-ENOENT: no log there yet).
int KmlBackend::open_log() {
  const int fd = ::open(log_path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return -err;
  }
  close_log();
  log_fd_ = fd;
  log_dev_ = st.st_dev;
  log_ino_ = st.st_ino;
  base_ = read_base();
  if (inotify_fd_ >= 0) {
    file_wd_ = ::inotify_add_watch(inotify_fd_, log_path_.c_str(), kFileMask);
    if (file_wd_ < 0) {
      // Without this watch growth goes unseen until the directory changes.
      log_error("kml: cannot watch the log '{}': {}{}; its changes are not followed", log_path_,
                std::strerror(errno),
                errno == ENOSPC ? " (raise the sysctl fs.inotify.max_user_watches)" : "");
      if (running_) host_->on_rescan("", "kml: the log cannot be watched");
    }
  }
  return 0;
}

void KmlBackend::close_log() {
  if (file_wd_ >= 0 && inotify_fd_ >= 0) ::inotify_rm_watch(inotify_fd_, file_wd_);
  file_wd_ = -1;
  if (log_fd_ >= 0) ::close(log_fd_);
  log_fd_ = -1;
}

// The truncated length: local_offset of last_rcvd's all-zero-uuid entry,
// 0 when there is none.
uint64_t KmlBackend::read_base() {
  Result<std::vector<LastRcvdEntry>> entries = last_rcvd_read(last_rcvd_path_);
  if (!entries.ok()) {
    if (entries.error().code != -ENOENT) {
      log_warn("kml: cannot read '{}' for the log's truncated length: {} ({}); keeping {}",
               last_rcvd_path_, entries.error().message, std::strerror(-entries.error().code),
               base_);
      return base_;
    }
    return 0;
  }
  for (const LastRcvdEntry& entry : *entries) {
    if (std::all_of(entry.uuid.begin(), entry.uuid.end(), [](uint8_t b) { return b == 0; })) {
      return entry.local_offset;
    }
  }
  return 0;
}

// The log cannot say what changed: core compares the whole fileset with its
// index, and the records already in the log, which that comparison covers,
// are read without being reported.
void KmlBackend::lose(const std::string& reason) {
  log_warn("kml: {}: {}; rescanning the whole fileset '{}' and following the log from its end",
           log_path_, reason, root_);
  host_->on_rescan("", reason);
  base_ = read_base();
  anchor_.reset();
  after_damage_ = false;
  next_ = base_;
  // A log that was never truncated starts with record 1.
  last_recno_ = base_ == 0 ? std::optional<uint32_t>(0) : std::nullopt;
  struct stat st;
  const uint64_t size =
      log_fd_ >= 0 && ::fstat(log_fd_, &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
  skip_until_ = base_ + size;
}

void KmlBackend::convert(const KmlEntry& entry, std::vector<ChangeEvent>& out, std::string& odd) {
  const KmlRecord& rec = entry.record;
  switch (rec.opcode) {
    case KmlOp::Create:
    case KmlOp::Mknod:
    case KmlOp::Symlink:
      emit(out, Kind::Created, rec.path, false, entry, odd);
      break;
    case KmlOp::Mkdir:
      emit(out, Kind::Created, rec.path, true, entry, odd);
      break;
    case KmlOp::Link:
      emit(out, Kind::Created, rec.target, false, entry, odd);
      break;
    case KmlOp::Unlink:
      emit(out, Kind::Deleted, join_path(rec.dir, rec.name), false, entry, odd);
      break;
    case KmlOp::Rmdir:
      emit(out, Kind::Deleted, join_path(rec.dir, rec.name), true, entry, odd);
      break;
    case KmlOp::Close:
    case KmlOp::Content:
      emit(out, Kind::Closed, rec.path, false, entry, odd);
      break;
    case KmlOp::Setattr: {
      const bool is_dir =
          S_ISDIR(rec.rollback.mode) || ((rec.valid & kAttrMode) && S_ISDIR(rec.mode));
      emit(out, Kind::Attrib, rec.path, is_dir, entry, odd);
      // A truncate changes the content, which is final once the call
      // returns: core compares the whole entry (and hashes it) either way.
      if (rec.valid & kAttrSize) emit(out, Kind::Closed, rec.path, is_dir, entry, odd);
      break;
    }
    case KmlOp::SetExtAttr:
    case KmlOp::DelExtAttr:
      emit(out, Kind::Attrib, rec.path, S_ISDIR(rec.mode), entry, odd);
      break;
    case KmlOp::Rename:
      rename(out, entry, odd);
      break;
    default:
      // NOOP, the reserved opcodes and extensions this backend does not
      // know change nothing it could report.
      break;
  }
}

void KmlBackend::emit(std::vector<ChangeEvent>& out, Kind kind, const std::string& raw, bool is_dir,
                      const KmlEntry& entry, std::string& odd) {
  std::optional<std::string> path = normalize(raw);
  if (!path) {
    if (odd.empty()) {
      odd =
          fmt::format("record {} ({}) at logical offset {} names a path outside the fileset: '{}'",
                      entry.record.recno, kml_op_name(entry.record.opcode), entry.offset, raw);
    }
    return;
  }
  if (is_internal(*path) || host_->ignored(*path, is_dir)) return;
  ChangeEvent event;
  event.kind = kind;
  event.path = std::move(*path);
  event.is_dir = is_dir;
  out.push_back(std::move(event));
}

void KmlBackend::rename(std::vector<ChangeEvent>& out, const KmlEntry& entry, std::string& odd) {
  const KmlRecord& rec = entry.record;
  std::optional<std::string> from = normalize(rec.src);
  std::optional<std::string> to = normalize(rec.target);
  if (!from || !to) {
    if (odd.empty()) {
      odd = fmt::format(
          "record {} (RENAME) at logical offset {} names a path outside the "
          "fileset: '{}' -> '{}'",
          entry.record.recno, entry.offset, rec.src, rec.target);
    }
    return;
  }
  // The record does not say whether a directory moved; the tree does, if
  // nothing renamed it again since. Only ignore rules look at it.
  struct stat st;
  const bool is_dir = ::lstat((root_ + "/" + *to).c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  const bool from_out = is_internal(*from) || host_->ignored(*from, is_dir);
  const bool to_out = is_internal(*to) || host_->ignored(*to, is_dir);
  ChangeEvent event;
  event.is_dir = is_dir;
  if (!from_out && !to_out) {
    event.kind = Kind::Renamed;
    event.path = std::move(*from);
    event.to_path = std::move(*to);
  } else if (!from_out) {
    // Moved to where core does not look: gone from the fileset.
    event.kind = Kind::Deleted;
    event.path = std::move(*from);
  } else if (!to_out) {
    event.kind = Kind::Created;
    event.path = std::move(*to);
  } else {
    return;
  }
  out.push_back(std::move(event));
}

std::optional<KmlPosition> KmlBackend::current_position() const {
  if (anchor_) {
    return KmlPosition{anchor_->recno, anchor_->offset, anchor_->offset + anchor_->len};
  }
  if (last_recno_) return KmlPosition{*last_recno_, next_, next_};
  return std::nullopt;
}

// Saves where following stands once core has made everything delivered so
// far durable (and finished the rescans asked for).
void KmlBackend::request_persist() {
  // Read but not delivered yet: not to be saved as done.
  if (settling_) return;
  std::optional<KmlPosition> pos = current_position();
  if (!pos || pos == requested_) return;
  requested_ = pos;
  const uint64_t seq = ++requested_seq_;
  host_->when_durable([self = std::weak_ptr<KmlBackend*>(self_), seq, durable = *pos] {
    if (std::shared_ptr<KmlBackend*> backend = self.lock()) (*backend)->persist(seq, durable);
  });
}

void KmlBackend::persist(uint64_t seq, const KmlPosition& pos) {
  if (seq <= saved_seq_ || !position_.is_open()) return;
  saved_seq_ = seq;
  if (Status s = position_.save(pos); !s) {
    // Said once per kind of failure: it repeats with every batch.
    if (s.error().message != save_error_) {
      log_error("kml: {}; a restart replays the log from an older position", s.error().message);
    }
    save_error_ = s.error().message;
    return;
  }
  save_error_.clear();
}

}  // namespace
}  // namespace intersync

INTERSYNC_PLUGIN("kml", INTERSYNC_PLUGIN_BACKEND, intersync::KmlBackend)
