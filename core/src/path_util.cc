// Path normalisation and openat2-based access beneath a fileset root; see
// path_util.h for why every network or journal path goes through here.
#include "path_util.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

namespace intersync {
namespace {

long sys_openat2(int dirfd, const char* path, int flags, mode_t mode, uint64_t resolve) {
  struct open_how how;
  std::memset(&how, 0, sizeof how);
  how.flags = static_cast<uint64_t>(flags);
  how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
  how.resolve = resolve;
  return syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

constexpr uint64_t kResolveSafe = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;

}  // namespace

Result<std::string> normalize_rel_path(std::string_view path, bool allow_leading_slash) {
  if (path.size() > kMaxPathBytes) return make_error(-ENAMETOOLONG, "path longer than 4095 bytes");
  if (path.find('\0') != std::string_view::npos) {
    return make_error(-EINVAL, "path contains a NUL byte");
  }
  if (!path.empty() && path.front() == '/' && !allow_leading_slash) {
    return make_error(-EINVAL, "absolute path '" + std::string(path) + "' is not allowed");
  }
  std::string out;
  out.reserve(path.size());
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    std::string_view comp = path.substr(i, j - i);
    if (comp == "..") {
      return make_error(-EINVAL, "path '" + std::string(path) + "' contains '..'");
    }
    if (comp.size() > kMaxNameBytes) {
      return make_error(-ENAMETOOLONG, "a name in '" + std::string(path) + "' exceeds 255 bytes");
    }
    if (!comp.empty() && comp != ".") {
      if (!out.empty()) out.push_back('/');
      out.append(comp);
    }
    i = j + 1;
  }
  return out;
}

bool is_internal_path(std::string_view rel) {
  constexpr std::string_view kMeta = ".intermezzo";
  if (rel == kMeta || rel.substr(0, kMeta.size() + 1) == ".intermezzo/") return true;
  // The daemon's temporary files: ".<name>.intersync-<id>.tmp".
  std::string_view name =
      rel.substr(rel.rfind('/') == std::string_view::npos ? 0 : rel.rfind('/') + 1);
  return name.size() > 4 && name.front() == '.' &&
         name.find(".intersync-") != std::string_view::npos &&
         name.substr(name.size() - 4) == ".tmp";
}

std::string parent_of(std::string_view rel) {
  size_t slash = rel.rfind('/');
  return slash == std::string_view::npos ? std::string() : std::string(rel.substr(0, slash));
}

std::string base_name(std::string_view rel) {
  size_t slash = rel.rfind('/');
  return std::string(slash == std::string_view::npos ? rel : rel.substr(slash + 1));
}

std::string join_rel(std::string_view dir, std::string_view name) {
  if (dir.empty()) return std::string(name);
  std::string out(dir);
  out.push_back('/');
  out.append(name);
  return out;
}

bool is_same_or_under(std::string_view path, std::string_view dir) {
  if (dir.empty()) return true;
  if (path.size() < dir.size() || path.substr(0, dir.size()) != dir) return false;
  return path.size() == dir.size() || path[dir.size()] == '/';
}

Status SafeRoot::open(const std::string& root_path) {
  int fd = ::open(root_path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno_error("cannot open fileset root " + root_path + ": " + strerror(errno));
  root_.reset(fd);
  path_ = root_path;
  return {};
}

Result<UniqueFd> SafeRoot::open_parent(std::string_view rel, std::string* name) const {
  if (rel.empty()) {
    *name = ".";
    int fd = fcntl(root_.get(), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return errno_error("dup of fileset root failed");
    return UniqueFd(fd);
  }
  std::string parent = parent_of(rel);
  *name = base_name(rel);
  // The caller uses *name with an *at() call on the returned fd, which
  // resolves ".." without RESOLVE_BENEATH: "..", "." and "" are never names.
  if (*name == ".." || *name == "." || name->empty()) {
    return make_error(-EINVAL, path_ + "/" + std::string(rel) + ": not a name beneath the root");
  }
  return open_beneath(parent, O_PATH | O_DIRECTORY);
}

int open_beneath_at(int root_fd, std::string_view rel, int flags, mode_t mode) {
  std::string p = rel.empty() ? std::string(".") : std::string(rel);
  return static_cast<int>(sys_openat2(root_fd, p.c_str(), flags | O_CLOEXEC, mode, kResolveSafe));
}

Result<UniqueFd> SafeRoot::open_beneath(std::string_view rel, int flags, mode_t mode) const {
  int fd = open_beneath_at(root_.get(), rel, flags, mode);
  if (fd < 0) {
    int e = errno;
    return make_error(
        -e, path_ + "/" + (rel.empty() ? std::string(".") : std::string(rel)) + ": " + strerror(e));
  }
  return UniqueFd(fd);
}

int SafeRoot::lstat(std::string_view rel, struct stat* st) const {
  int fd = open_beneath_at(root_.get(), rel, O_PATH | O_NOFOLLOW);
  if (fd < 0) return -errno;
  int rc = fstat(fd, st) == 0 ? 0 : -errno;
  ::close(fd);
  return rc;
}

Result<std::string> SafeRoot::read_link(std::string_view rel) const {
  auto fd = open_beneath(rel, O_PATH | O_NOFOLLOW);
  if (!fd) return fd.error();
  char buf[4096];
  ssize_t n = readlinkat(fd->get(), "", buf, sizeof buf);
  if (n < 0) return errno_error(path_ + "/" + std::string(rel) + ": " + strerror(errno));
  return std::string(buf, static_cast<size_t>(n));
}

}  // namespace intersync
