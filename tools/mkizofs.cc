// mkizofs: prepares a directory to hold an InterMezzo fileset. It creates
// DIR/.intermezzo/FSET/ with the ROOT symlink, an empty kml and last_rcvd,
// and a `uuid` file naming the fileset, which is how the daemon tells
// filesets apart. Running it again is safe: what exists is left alone and
// said so, and only what is missing is created.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uuid/uuid.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstring>
#include <string>

#include "intersync/result.h"

namespace {

using intersync::Error;
using intersync::Result;

Error sys_error(const std::string& path) {
  return intersync::errno_error(path + ": " + strerror(errno));
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

intersync::Status sync_dir(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return sys_error(path);
  if (fsync(fd) != 0) {
    Error err = sys_error(path);
    close(fd);
    return err;
  }
  close(fd);
  return intersync::Status::Ok();
}

bool valid_fileset_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Prepares DIR to hold the InterMezzo fileset FSET (DIR/.intermezzo/FSET/)."};
  std::string fset;
  std::string dir;
  app.add_option("-r,--fileset", fset, "Name of the fileset")->required();
  app.add_option("DIR", dir, "Root directory of the fileset")->required();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (!valid_fileset_name(fset)) {
    fmt::print(stderr, "mkizofs: \"{}\" is not a fileset name (no '/', not . or ..)\n", fset);
    return 2;
  }
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    fmt::print(stderr, "mkizofs: {}: {}\n", dir, strerror(errno));
    return 1;
  }
  if (!S_ISDIR(st.st_mode)) {
    fmt::print(stderr, "mkizofs: {}: not a directory\n", dir);
    return 1;
  }

  std::string meta = dir + "/.intermezzo";
  std::string fset_dir = meta + "/" + fset;
  bool failed = false;
  auto report = [&failed](const std::string& path, const Result<bool>& made) {
    if (!made.ok()) {
      fmt::print(stderr, "mkizofs: {}\n", made.error().message);
      failed = true;
    } else {
      fmt::print("{}: {}\n", path, made.value() ? "created" : "exists, left alone");
    }
    return made.ok();
  };
  if (!report(meta, make_dir(meta)) || !report(fset_dir, make_dir(fset_dir))) return 1;
  report(fset_dir + "/ROOT", make_symlink("../..", fset_dir + "/ROOT"));
  report(fset_dir + "/kml", make_empty_file(fset_dir + "/kml"));
  report(fset_dir + "/last_rcvd", make_empty_file(fset_dir + "/last_rcvd"));
  report(fset_dir + "/uuid", make_uuid_file(fset_dir + "/uuid"));

  // New directory entries are made durable before saying the fileset exists.
  for (const std::string& d : {fset_dir, meta, dir}) {
    if (auto synced = sync_dir(d); !synced.ok()) {
      fmt::print(stderr, "mkizofs: {}\n", synced.error().message);
      failed = true;
    }
  }
  if (failed) return 1;
  auto uuid = read_uuid(fset_dir + "/uuid");
  if (!uuid.ok()) {
    fmt::print(stderr, "mkizofs: {}\n", uuid.error().message);
    return 1;
  }
  fmt::print("fileset {} in {}: uuid {}\n", fset, dir, *uuid);
  return 0;
}
