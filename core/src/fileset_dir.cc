// Creation of `.intermezzo/<fset>/`; see fileset_dir.h.
#include "fileset_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <uuid/uuid.h>

#include <cstring>
#include <fstream>

namespace intersync {
namespace {

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

// The fileset an izofs mount at `root` journals, or "" when `root` is not
// an izofs mount (izofs answers this virtual attribute on its root).
std::string izofs_fileset(const std::string& root) {
  char buf[256];
  ssize_t n = ::getxattr(root.c_str(), "user.izofs.fileset", buf, sizeof buf);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

}  // namespace

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
