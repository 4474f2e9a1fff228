// The recursive watch tree of the inotify backend. inotify watches single
// directories, so following a fileset means one watch per directory and a
// map from each watch descriptor to the directory's path relative to the
// root. This class owns the inotify file descriptor and that map, and keeps
// the map true as directories appear, are renamed (a watch descriptor stays
// valid across a rename, only its path changes) or leave the fileset. It
// also remembers the directories it could not watch (the per-user watch
// limit), because they get no events and must be rescanned instead.
// It knows nothing about the event loop or about change events: the backend
// reads the descriptor and decides what each event means.
#pragma once

#include <sys/inotify.h>

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "intersync/result.h"

namespace intersync {

class InotifyWatcher {
 public:
  // Everything the backend maps to a change event, plus the events that
  // tell it a watched directory itself went away. IN_ONLYDIR and
  // IN_DONT_FOLLOW make a symlink or a file that replaced a directory fail
  // with ENOTDIR instead of being watched through.
  static constexpr uint32_t kDirMask = IN_CREATE | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE |
                                       IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF |
                                       IN_MOVE_SELF | IN_DONT_FOLLOW | IN_EXCL_UNLINK | IN_ONLYDIR;

  // Says whether a path relative to the root is left out of the fileset.
  using IgnoredFn = std::function<bool(std::string_view rel, bool is_dir)>;
  // Receives each entry found while listing a newly watched tree.
  using EntryFn = std::function<void(const std::string& rel, bool is_dir)>;

  // A directory that could not be watched, with the negative errno.
  struct Failure {
    std::string rel;
    int code;
  };

  InotifyWatcher() = default;
  ~InotifyWatcher();
  InotifyWatcher(const InotifyWatcher&) = delete;
  InotifyWatcher& operator=(const InotifyWatcher&) = delete;

  // Creates the non-blocking inotify instance for the fileset at `root`
  // (absolute; trailing slashes are dropped).
  Status open(const std::string& root);
  // Closes the instance, which drops every watch at once. Idempotent.
  void close();

  int fd() const { return fd_; }
  const std::string& root() const { return root_; }
  // The absolute path of `rel`.
  std::string full_path(const std::string& rel) const;
  // `dir`/`name`, where "" is the root.
  static std::string join(std::string_view dir, std::string_view name);

  // Watches `rel` and every directory below it that `ignored` does not
  // exclude. Each directory is watched before it is listed, so an entry
  // created in between produces an event, an entry created before shows up
  // in the listing, and none is missed (some may be seen twice).
  // `on_entry` receives every entry below `rel`, parents before children.
  // Directories that cannot be watched (other than vanished ones) are not
  // descended into, are appended to `failures` and are remembered as
  // unwatched. Returns 0 or the negative errno of watching `rel` itself.
  int watch_tree(const std::string& rel, const IgnoredFn& ignored, const EntryFn& on_entry,
                 std::vector<Failure>* failures);

  // The path of a watch descriptor, or nullptr when it is not (or no
  // longer) known.
  const std::string* path_of(int wd) const;
  // Drops the mapping of a watch the kernel removed (IN_IGNORED,
  // IN_DELETE_SELF).
  void forget(int wd);
  // Moves the directory `from` and everything watched or unwatched below
  // it to `to`. Returns false when `from` itself was not watched, which
  // means the caller must watch the new location itself.
  bool rename(const std::string& from, const std::string& to);
  // Removes the watches on `rel` and below: the directory left the
  // fileset, and its events would otherwise come back under a stale path.
  void unwatch_tree(const std::string& rel);
  // Rebuilds the map from the directories on disk after the kernel dropped
  // events (queue overflow): watches every directory again, which returns
  // the same descriptor for a directory already watched, and removes the
  // watches of directories no longer in the fileset.
  void resync(const IgnoredFn& ignored, std::vector<Failure>* failures);

  // The directories that could not be watched. take_unwatched() hands
  // them over for a retry and forgets them; watch_tree() records again
  // those that still fail.
  const std::set<std::string>& unwatched() const { return unwatched_; }
  std::set<std::string> take_unwatched() { return std::exchange(unwatched_, {}); }

  size_t watch_count() const { return wd_to_path_.size(); }

 private:
  // Adds or refreshes the watch on one directory; 0 or a negative errno.
  int add(const std::string& rel);
  // Lists one directory; false when it cannot be read.
  bool list(const std::string& rel, const IgnoredFn& ignored, const EntryFn& on_entry,
            std::vector<std::string>* subdirs) const;

  int fd_ = -1;
  std::string root_;
  std::unordered_map<int, std::string> wd_to_path_;
  // Ordered, so that the directories below one path form a single range.
  std::map<std::string, int> path_to_wd_;
  std::set<std::string> unwatched_;
};

}  // namespace intersync
