// Fileset-relative paths and safe access beneath a fileset root. Every path
// that comes from the network or from a journal goes through
// normalize_rel_path() before it is used, and every file-system operation on
// such a path goes through a SafeRoot, which resolves the parent directory
// with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS): a path can never leave
// the root, neither by "..", nor by an absolute path, nor through a symlink
// planted inside the fileset.
#pragma once

#include <sys/stat.h>

#include <string>
#include <string_view>

#include "intersync/result.h"
#include "unique_fd.h"

namespace intersync {

inline constexpr size_t kMaxPathBytes = 4095;
inline constexpr size_t kMaxNameBytes = 255;

// Accepts "a/b/c" (also "/a/b", "a//b/", "./a") and returns the canonical
// relative form "a/b/c"; "" is the root. Refuses "..", NUL bytes, names
// longer than 255 bytes and paths longer than 4095 bytes with -EINVAL and a
// reason. Absolute paths are refused unless `allow_leading_slash` (the KML
// writes paths as "/a/b").
Result<std::string> normalize_rel_path(std::string_view path, bool allow_leading_slash = false);

// True for the paths that are never replicated: ".intermezzo" at the root and
// everything under it, and the daemon's temporary files.
bool is_internal_path(std::string_view rel_path);

std::string parent_of(std::string_view rel_path);                   // "a/b" -> "a", "a" -> ""
std::string base_name(std::string_view rel_path);                   // "a/b" -> "b"
std::string join_rel(std::string_view dir, std::string_view name);  // "" + "x" -> "x"
// True if `path` equals `dir` or lies beneath it ("" is above everything).
bool is_same_or_under(std::string_view path, std::string_view dir);

// openat2(root_fd, rel, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS): `rel`
// itself, never through a symlink, for jobs on the thread pool that hold a
// dup of a root's fd. Returns the fd, or -1 with errno set. With O_PATH |
// O_NOFOLLOW a symlink as the last component is opened itself.
int open_beneath_at(int root_fd, std::string_view rel, int flags, mode_t mode = 0);

// An open fileset root. Operations take canonical relative paths.
class SafeRoot {
 public:
  SafeRoot() = default;
  Status open(const std::string& root_path);
  int fd() const { return root_.get(); }
  const std::string& path() const { return path_; }

  // Opens the parent directory of `rel` beneath the root without following
  // any symlink, and returns it with the last component in *name. For ""
  // (the root itself) returns a dup of the root fd and name ".".
  Result<UniqueFd> open_parent(std::string_view rel, std::string* name) const;
  // Opens `rel` itself (O_PATH unless flags say otherwise) beneath the root.
  Result<UniqueFd> open_beneath(std::string_view rel, int flags, mode_t mode = 0) const;
  // lstat() and readlink() of `rel` beneath the root, no symlink followed
  // on the way (fstatat and readlinkat follow those of the parent path).
  // lstat returns 0 or -errno.
  int lstat(std::string_view rel, struct stat* st) const;
  Result<std::string> read_link(std::string_view rel) const;

 private:
  UniqueFd root_;
  std::string path_;
};

}  // namespace intersync
