// The recursive watch tree: one inotify watch per directory of the fileset
// and the two-way map between watch descriptors and relative paths. See
// inotify_watcher.h for what each operation promises.
#include "inotify_watcher.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>

#include "intersync/log.h"

namespace intersync {
namespace {

// Removes `dir` and every path below it from `paths` (a std::map or
// std::set keyed by relative path) and returns them. The paths below `dir`
// all start with "dir/", so they form one range that ends before "dir0"
// ('0' follows '/' in ASCII); `dir` itself sorts apart from them because
// "dir b" or "dir.txt" fall in between.
template <typename Paths>
std::vector<typename Paths::value_type> extract_subtree(Paths& paths, const std::string& dir) {
  std::vector<typename Paths::value_type> out;
  if (auto it = paths.find(dir); it != paths.end()) {
    out.push_back(*it);
    paths.erase(it);
  }
  auto first = paths.lower_bound(dir + '/');
  auto last = paths.lower_bound(dir + static_cast<char>('/' + 1));
  for (auto it = first; it != last; ++it) out.push_back(*it);
  paths.erase(first, last);
  return out;
}

std::string moved_path(const std::string& path, const std::string& from, const std::string& to) {
  return to + path.substr(from.size());
}

struct DirCloser {
  void operator()(DIR* dir) const { closedir(dir); }
};

}  // namespace

InotifyWatcher::~InotifyWatcher() {
  close();
}

Status InotifyWatcher::open(const std::string& root) {
  close();
  root_ = root;
  while (root_.size() > 1 && root_.back() == '/') root_.pop_back();
  fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd_ < 0) {
    const int err = errno;
    return make_error(-err, fmt::format("inotify: cannot create an instance for '{}': {}{}", root_,
                                        std::strerror(err),
                                        err == EMFILE ? " (the per-user limit "
                                                        "fs.inotify.max_user_instances is reached)"
                                                      : ""));
  }
  return Status::Ok();
}

void InotifyWatcher::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  wd_to_path_.clear();
  path_to_wd_.clear();
  unwatched_.clear();
}

std::string InotifyWatcher::full_path(const std::string& rel) const {
  if (rel.empty()) return root_;
  if (root_ == "/") return root_ + rel;
  return root_ + '/' + rel;
}

std::string InotifyWatcher::join(std::string_view dir, std::string_view name) {
  std::string out;
  out.reserve(dir.size() + 1 + name.size());
  out.append(dir);
  if (!dir.empty()) out.push_back('/');
  out.append(name);
  return out;
}

int InotifyWatcher::add(const std::string& rel) {
  const int wd = inotify_add_watch(fd_, full_path(rel).c_str(), kDirMask);
  if (wd < 0) return -errno;
  // The kernel returns the existing descriptor when the directory is
  // already watched, possibly under an older path after a rename we have
  // not seen (queue overflow): the path found now is the true one.
  auto [it, inserted] = wd_to_path_.try_emplace(wd, rel);
  if (!inserted && it->second != rel) {
    if (auto old = path_to_wd_.find(it->second); old != path_to_wd_.end() && old->second == wd) {
      path_to_wd_.erase(old);
    }
    it->second = rel;
  }
  path_to_wd_[rel] = wd;
  unwatched_.erase(rel);
  return 0;
}

bool InotifyWatcher::list(const std::string& rel, const IgnoredFn& ignored, const EntryFn& on_entry,
                          std::vector<std::string>* subdirs) const {
  const std::string path = full_path(rel);
  const int dfd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (dfd < 0) {
    // A directory that vanished or was replaced after its watch was added
    // is reported by its parent's watch; anything else means entries that
    // existed before the watch may never be reported.
    if (errno != ENOENT && errno != ENOTDIR) {
      log_warn(
          "inotify: cannot list '{}': {}; entries created in it before it was watched may "
          "be missed",
          path, std::strerror(errno));
    }
    return false;
  }
  std::unique_ptr<DIR, DirCloser> dir(fdopendir(dfd));
  if (!dir) {
    log_warn("inotify: cannot list '{}': {}", path, std::strerror(errno));
    ::close(dfd);
    return false;
  }
  while (const dirent* entry = readdir(dir.get())) {
    const std::string_view name = entry->d_name;
    if (name == "." || name == "..") continue;
    bool is_dir = entry->d_type == DT_DIR;
    if (entry->d_type == DT_UNKNOWN) {
      struct stat st;
      if (fstatat(dirfd(dir.get()), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
      is_dir = S_ISDIR(st.st_mode);
    }
    std::string child = join(rel, name);
    if (ignored(child, is_dir)) continue;
    on_entry(child, is_dir);
    if (is_dir) subdirs->push_back(std::move(child));
  }
  return true;
}

int InotifyWatcher::watch_tree(const std::string& rel, const IgnoredFn& ignored,
                               const EntryFn& on_entry, std::vector<Failure>* failures) {
  // An explicit stack rather than recursion: the depth of a tree is not
  // ours to bound.
  std::vector<std::string> stack{rel};
  std::optional<int> top;
  while (!stack.empty()) {
    std::string dir = std::move(stack.back());
    stack.pop_back();
    const int rc = add(dir);
    if (!top) top = rc;
    if (rc < 0) {
      // A directory that is already gone or is no directory any more has
      // its removal reported by its parent; any other failure leaves a
      // subtree without events.
      if (rc != -ENOENT && rc != -ENOTDIR) {
        unwatched_.insert(dir);
        failures->push_back({dir, rc});
      }
      continue;
    }
    list(dir, ignored, on_entry, &stack);
  }
  return *top;
}

const std::string* InotifyWatcher::path_of(int wd) const {
  auto it = wd_to_path_.find(wd);
  return it == wd_to_path_.end() ? nullptr : &it->second;
}

void InotifyWatcher::forget(int wd) {
  auto it = wd_to_path_.find(wd);
  if (it == wd_to_path_.end()) return;
  // The path may already belong to a newer directory of the same name.
  if (auto p = path_to_wd_.find(it->second); p != path_to_wd_.end() && p->second == wd) {
    path_to_wd_.erase(p);
  }
  wd_to_path_.erase(it);
}

bool InotifyWatcher::rename(const std::string& from, const std::string& to) {
  const bool watched = path_to_wd_.count(from) != 0;
  for (auto& [path, wd] : extract_subtree(path_to_wd_, from)) {
    std::string moved = moved_path(path, from, to);
    wd_to_path_[wd] = moved;
    path_to_wd_[std::move(moved)] = wd;
  }
  for (const std::string& path : extract_subtree(unwatched_, from)) {
    unwatched_.insert(moved_path(path, from, to));
  }
  return watched;
}

void InotifyWatcher::unwatch_tree(const std::string& rel) {
  for (const auto& [path, wd] : extract_subtree(path_to_wd_, rel)) {
    // Erasing the mapping first makes the IN_IGNORED that removing the
    // watch queues an event for an unknown descriptor, which is skipped.
    if (auto it = wd_to_path_.find(wd); it != wd_to_path_.end() && it->second == path) {
      wd_to_path_.erase(it);
      inotify_rm_watch(fd_, wd);
    }
  }
  extract_subtree(unwatched_, rel);
}

void InotifyWatcher::resync(const IgnoredFn& ignored, std::vector<Failure>* failures) {
  std::unordered_map<int, std::string> old = std::move(wd_to_path_);
  wd_to_path_.clear();
  path_to_wd_.clear();
  unwatched_.clear();
  watch_tree(
      "", ignored, [](const std::string&, bool) {}, failures);
  for (const auto& [wd, path] : old) {
    if (wd_to_path_.count(wd) == 0) inotify_rm_watch(fd_, wd);
  }
}

}  // namespace intersync
