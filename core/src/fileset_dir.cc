// Creation of `.intermezzo/<fset>/`; see fileset_dir.h.
#include "fileset_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <uuid/uuid.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string_view>

namespace intersync {
namespace {

Error sys_error(const std::string& path) {
  return errno_error(path + ": " + strerror(errno));
}

// Each make_* returns true if it created the item, false if a suitable one
// was already there.
Result<bool> make_dir(const std::string& path) {
  if (mkdir(path.c_str(), 0755) == 0) return true;
  if (errno != EEXIST) return sys_error(path);
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return sys_error(path);
  if (!S_ISDIR(st.st_mode)) return Error{-ENOTDIR, path + ": exists and is not a directory"};
  return false;
}

Result<bool> make_symlink(const std::string& target, const std::string& path) {
  if (symlink(target.c_str(), path.c_str()) == 0) return true;
  if (errno != EEXIST) return sys_error(path);
  char buf[4096];
  ssize_t n = readlink(path.c_str(), buf, sizeof buf);
  if (n < 0) return sys_error(path);
  if (std::string(buf, static_cast<size_t>(n)) != target) {
    return Error{-EEXIST, fmt::format("{}: exists and points to \"{}\", not \"{}\"", path,
                                      std::string(buf, static_cast<size_t>(n)), target)};
  }
  return false;
}

Result<bool> make_empty_file(const std::string& path) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd >= 0) {
    close(fd);
    return true;
  }
  if (errno != EEXIST) return sys_error(path);
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return sys_error(path);
  if (!S_ISREG(st.st_mode)) return Error{-EEXIST, path + ": exists and is not a regular file"};
  return false;
}

// Reads the uuid a fileset already has, refusing a file that holds none.
Result<std::string> read_uuid(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sys_error(path);
  char buf[64];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n < 0) return sys_error(path);
  std::string text(buf, static_cast<size_t>(n));
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  uuid_t parsed;
  if (uuid_parse(text.c_str(), parsed) != 0) {
    return Error{-EINVAL, path + ": exists but does not hold a uuid"};
  }
  return text;
}

// Writes a fresh uuid to a temporary file and links it into place, so the
// uuid file is either absent or complete, and an existing one is never
// replaced even by a concurrent run.
Result<bool> make_uuid_file(const std::string& path) {
  uuid_t id;
  uuid_generate(id);
  char text[37];
  uuid_unparse_lower(id, text);
  std::string line = std::string(text) + "\n";

  std::string tmp = fmt::format("{}.tmp.{}", path, getpid());
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return sys_error(tmp);
  if (write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size()) || fsync(fd) != 0) {
    Error err = sys_error(tmp);
    close(fd);
    unlink(tmp.c_str());
    return err;
  }
  close(fd);
  int rc = link(tmp.c_str(), path.c_str());
  int link_errno = errno;
  unlink(tmp.c_str());
  if (rc == 0) return true;
  if (link_errno != EEXIST) {
    errno = link_errno;
    return sys_error(path);
  }
  return false;
}

Status sync_dir(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return sys_error(path);
  if (fsync(fd) != 0) {
    Error err = sys_error(path);
    close(fd);
    return err;
  }
  close(fd);
  return Status::Ok();
}

Status ensure_dir(const std::string& path) {
  if (::mkdir(path.c_str(), 0700) == 0 || errno == EEXIST) return {};
  return errno_error("cannot create " + path + ": " + strerror(errno));
}

Status ensure_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return errno_error("cannot create " + path + ": " + strerror(errno));
  ::close(fd);
  return {};
}

// Whether `root` holds nothing but the `.intermezzo` directory.
Result<bool> holds_only_meta(const std::string& root) {
  DIR* d = opendir(root.c_str());
  if (!d) return sys_error(root);
  bool empty = true;
  errno = 0;
  while (struct dirent* e = readdir(d)) {
    std::string_view name = e->d_name;
    if (name != "." && name != ".." && name != ".intermezzo") {
      empty = false;
      break;
    }
  }
  const int err = errno;
  closedir(d);
  if (empty && err != 0) {
    errno = err;
    return sys_error(root);
  }
  return empty;
}

// The fileset an izofs mount at `root` journals, or "" when `root` is not
// an izofs mount (izofs answers this virtual attribute on its root).
std::string izofs_fileset(const std::string& root) {
  char buf[256];
  ssize_t n = ::getxattr(root.c_str(), "user.izofs.fileset", buf, sizeof buf);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

}  // namespace

bool valid_fileset_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos;
}

const Error* FilesetLayout::first_error() const {
  for (const auto& step : steps) {
    if (!step.created.ok()) return &step.created.error();
  }
  if (!synced.ok()) return &synced.error();
  if (!uuid.ok()) return &uuid.error();
  return nullptr;
}

FilesetLayout make_fileset_layout(const std::string& root, const std::string& fset) {
  FilesetLayout layout;
  auto step = [&layout](const std::string& path, Result<bool> made) {
    layout.steps.push_back({path, std::move(made)});
    return layout.steps.back().created.ok();
  };
  std::string meta = root + "/.intermezzo";
  std::string fset_dir = meta + "/" + fset;
  // Looked at before anything is made in it.
  Result<bool> empty = holds_only_meta(root);
  if (!step(meta, make_dir(meta)) || !step(fset_dir, make_dir(fset_dir))) return layout;
  step(fset_dir + "/ROOT", make_symlink("../..", fset_dir + "/ROOT"));
  const std::string kml = fset_dir + "/kml";
  const bool new_kml = step(kml, make_empty_file(kml)) && *layout.steps.back().created;
  if (new_kml) {
    // A new log is the fileset's whole history only when the fileset had
    // nothing yet; a stale marker of an earlier log must not vouch for it.
    const std::string marker = kml + kKmlCompleteSuffix;
    if (empty.ok() && *empty) {
      step(marker, make_empty_file(marker));
    } else if (::unlink(marker.c_str()) != 0 && errno != ENOENT) {
      step(marker, sys_error(marker));
    }
  }
  step(fset_dir + "/last_rcvd", make_empty_file(fset_dir + "/last_rcvd"));
  step(fset_dir + "/uuid", make_uuid_file(fset_dir + "/uuid"));

  // New directory entries are made durable before saying the fileset exists.
  for (const std::string& d : {fset_dir, meta, root}) {
    if (Status s = sync_dir(d); !s.ok() && layout.synced.ok()) layout.synced = s;
  }
  for (const auto& s : layout.steps) {
    if (!s.created.ok()) return layout;
  }
  if (layout.synced.ok()) layout.uuid = read_uuid(fset_dir + "/uuid");
  return layout;
}

Result<FilesetDir> prepare_fileset_dir(const std::string& root, const std::string& fset) {
  FilesetDir d;
  std::string top = root + "/.intermezzo";
  d.dir = top + "/" + fset;
  std::string mounted = izofs_fileset(root);
  if (!mounted.empty() && mounted != fset) {
    return make_error(-EINVAL, "fileset '" + fset + "': " + root +
                                   " is an izofs mount of fileset '" + mounted + "'");
  }
  d.izofs = !mounted.empty();
  d.kml = d.dir + (d.izofs ? "/sync.kml" : "/kml");
  d.last_rcvd = d.dir + "/last_rcvd";
  d.tmp = d.dir + "/tmp";
  for (const auto& p : {top, d.dir, d.tmp}) {
    if (Status s = ensure_dir(p); !s) return s.error();
  }
  if (::symlink("../..", (d.dir + "/ROOT").c_str()) != 0 && errno != EEXIST) {
    return errno_error("cannot create " + d.dir + "/ROOT: " + strerror(errno));
  }
  for (const auto& p : {d.kml, d.last_rcvd}) {
    if (Status s = ensure_file(p); !s) return s.error();
  }
  std::string uuid_file = d.dir + "/uuid";
  std::ifstream in(uuid_file);
  std::string text;
  if (in && std::getline(in, text) && text.size() == 36) {
    uuid_t probe;
    if (uuid_parse(text.c_str(), probe) == 0) {
      d.uuid = text;
      return d;
    }
  }
  uuid_t u;
  uuid_generate(u);
  char buf[37];
  uuid_unparse_lower(u, buf);
  d.uuid = buf;
  std::string tmp = uuid_file + ".new";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << d.uuid << "\n";
    if (!out.flush()) return errno_error("cannot write " + tmp);
  }
  if (::rename(tmp.c_str(), uuid_file.c_str()) != 0) {
    return errno_error("cannot write " + uuid_file + ": " + strerror(errno));
  }
  return d;
}

Status register_replicator(const FilesetDir& dir, const std::string& root,
                           const std::string& control_socket) {
  if (!dir.izofs) return {};
  if (::setxattr(root.c_str(), "user.izofs.replicator", control_socket.data(),
                 control_socket.size(), 0) != 0) {
    return errno_error("cannot register with izofs at " + root + ": " + strerror(errno));
  }
  return {};
}

}  // namespace intersync
