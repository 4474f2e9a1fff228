// Tests of fileset-relative path handling: normalize_rel_path (what it
// canonicalizes and what it refuses), is_internal_path, the small path
// helpers, and SafeRoot, which must never leave the root: not by "..", not
// by an absolute path, not through any symlink inside the tree.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "path_util.h"
#include "temp_dir.h"

namespace {

namespace fs = std::filesystem;
using intersync::normalize_rel_path;
using intersync::SafeRoot;

void write_file(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
  REQUIRE(out.good());
}

std::string normalized(std::string_view path, bool allow_leading_slash = false) {
  auto r = normalize_rel_path(path, allow_leading_slash);
  REQUIRE(r.ok());
  return *r;
}

// The (dev, ino) of an open fd and of a path, to check which directory an fd is.
bool same_file(int fd, const std::string& path) {
  struct stat a, b;
  return fstat(fd, &a) == 0 && stat(path.c_str(), &b) == 0 && a.st_dev == b.st_dev &&
         a.st_ino == b.st_ino;
}

}  // namespace

TEST_CASE("normalize_rel_path canonicalizes relative paths") {
  CHECK(normalized("a/b/c") == "a/b/c");
  CHECK(normalized("a//b/") == "a/b");
  CHECK(normalized("./a") == "a");
  CHECK(normalized("a/./b/.") == "a/b");
  CHECK(normalized("") == "");
  CHECK(normalized(".") == "");
  CHECK(normalized("./") == "");
  CHECK(normalized("...") == "...");  // a legal name, not ".."
  CHECK(normalized("a/..b/c..") == "a/..b/c..");
  CHECK(normalized(".intermezzo/x") == ".intermezzo/x");
}

TEST_CASE("normalize_rel_path accepts a leading slash only when allowed") {
  CHECK(normalized("/a", true) == "a");
  CHECK(normalized("/a//b/", true) == "a/b");
  CHECK(normalized("/", true) == "");

  for (const char* abs : {"/a", "/", "//a", "/etc/passwd"}) {
    INFO(abs);
    auto r = normalize_rel_path(abs);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == -EINVAL);
    CHECK_THAT(r.error().message, Catch::Matchers::Contains(abs));
  }
}

TEST_CASE("normalize_rel_path refuses '..' in any position") {
  for (const char* bad : {"..", "../a", "a/..", "a/../b", "a/b/../../..", "./..", "a//../b"}) {
    INFO(bad);
    auto r = normalize_rel_path(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == -EINVAL);
    CHECK_THAT(r.error().message, Catch::Matchers::Contains(".."));
  }
  auto r = normalize_rel_path("/a/../b", true);
  CHECK_FALSE(r.ok());
}

TEST_CASE("normalize_rel_path refuses NUL bytes") {
  using namespace std::string_literals;
  for (const std::string& bad : {"a\0b"s, "\0"s, "a/b\0"s, "\0/a"s}) {
    auto r = normalize_rel_path(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == -EINVAL);
  }
}

TEST_CASE("normalize_rel_path limits names to 255 and paths to 4095 bytes") {
  const std::string name255(255, 'n');
  const std::string name256(256, 'n');
  CHECK(normalized(name255) == name255);
  CHECK(normalized("a/" + name255 + "/b") == "a/" + name255 + "/b");
  for (const std::string& bad : {name256, "a/" + name256, name256 + "/b"}) {
    auto r = normalize_rel_path(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == -ENAMETOOLONG);
  }

  // 16 components of 255 bytes with 15 slashes = 4095 bytes: the limit.
  std::string longest;
  for (int i = 0; i < 16; ++i) longest += (i ? "/" : "") + name255;
  REQUIRE(longest.size() == 4095);
  CHECK(normalized(longest) == longest);
  auto r = normalize_rel_path(longest + "x");
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == -ENAMETOOLONG);
  CHECK_FALSE(normalize_rel_path(std::string(5000, 'a')).ok());
}

TEST_CASE("is_internal_path recognizes .intermezzo and the daemon's temp files") {
  using intersync::is_internal_path;
  CHECK(is_internal_path(".intermezzo"));
  CHECK(is_internal_path(".intermezzo/x"));
  CHECK(is_internal_path(".intermezzo/a/b/c"));
  CHECK_FALSE(is_internal_path(".intermezzox"));
  CHECK_FALSE(is_internal_path(".intermezz"));
  CHECK_FALSE(is_internal_path("a/.intermezzo"));  // only at the root
  CHECK_FALSE(is_internal_path("intermezzo"));
  CHECK_FALSE(is_internal_path(""));

  CHECK(is_internal_path(".x.intersync-0123.tmp"));
  CHECK(is_internal_path("dir/sub/.x.intersync-0123.tmp"));
  CHECK_FALSE(is_internal_path("x.intersync-0123.tmp"));    // no leading dot
  CHECK_FALSE(is_internal_path(".x.intersync-0123.tmpx"));  // not the suffix
  CHECK_FALSE(is_internal_path(".x.intersync-0123"));
  CHECK_FALSE(is_internal_path(".x.tmp"));
  CHECK_FALSE(is_internal_path(".x.intersync-0123.tmp/child"));
  CHECK_FALSE(is_internal_path("a.tmp"));
}

TEST_CASE("parent_of, base_name, join_rel and is_same_or_under") {
  using namespace intersync;
  CHECK(parent_of("a/b/c") == "a/b");
  CHECK(parent_of("a/b") == "a");
  CHECK(parent_of("a") == "");
  CHECK(parent_of("") == "");
  CHECK(base_name("a/b/c") == "c");
  CHECK(base_name("a") == "a");
  CHECK(base_name("") == "");
  CHECK(join_rel("", "x") == "x");
  CHECK(join_rel("a", "x") == "a/x");
  CHECK(join_rel("a/b", "x") == "a/b/x");
  CHECK(join_rel(parent_of("a/b/c"), base_name("a/b/c")) == "a/b/c");

  CHECK(is_same_or_under("a", "a"));
  CHECK(is_same_or_under("a/b", "a"));
  CHECK(is_same_or_under("a/b/c", "a/b"));
  CHECK(is_same_or_under("anything", ""));
  CHECK(is_same_or_under("", ""));
  CHECK_FALSE(is_same_or_under("ab", "a"));
  CHECK_FALSE(is_same_or_under("a.b", "a"));
  CHECK_FALSE(is_same_or_under("a", "a/b"));
  CHECK_FALSE(is_same_or_under("b/a", "a"));
  CHECK_FALSE(is_same_or_under("", "a"));
}

TEST_CASE("SafeRoot opens normal nested paths beneath the root") {
  TempDir tmp;
  const std::string root = tmp.path() + "/root";
  fs::create_directories(root + "/a/b");
  write_file(root + "/a/b/c", "nested");
  write_file(root + "/top", "top");

  SafeRoot sr;
  REQUIRE(sr.open(root).ok());
  CHECK(sr.path() == root);
  CHECK(sr.fd() >= 0);

  auto f = sr.open_beneath("a/b/c", O_RDONLY);
  REQUIRE(f.ok());
  char buf[16] = {};
  CHECK(read(f->get(), buf, sizeof buf) == 6);
  CHECK(std::string(buf) == "nested");

  auto d = sr.open_beneath("a/b", O_RDONLY | O_DIRECTORY);
  REQUIRE(d.ok());
  CHECK(same_file(d->get(), root + "/a/b"));

  auto self = sr.open_beneath("", O_RDONLY | O_DIRECTORY);
  REQUIRE(self.ok());
  CHECK(same_file(self->get(), root));

  // O_CREAT beneath the root works and lands where expected.
  auto created = sr.open_beneath("a/new", O_WRONLY | O_CREAT | O_EXCL, 0600);
  REQUIRE(created.ok());
  CHECK(fs::exists(root + "/a/new"));

  auto missing = sr.open_beneath("a/nope", O_RDONLY);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().code == -ENOENT);
  CHECK_THAT(missing.error().message, Catch::Matchers::Contains("a/nope"));
}

TEST_CASE("SafeRoot::open_parent returns the parent directory and the last name") {
  TempDir tmp;
  const std::string root = tmp.path() + "/root";
  fs::create_directories(root + "/a/b");
  write_file(root + "/a/b/c", "x");

  SafeRoot sr;
  REQUIRE(sr.open(root).ok());
  std::string name;

  auto p = sr.open_parent("a/b/c", &name);
  REQUIRE(p.ok());
  CHECK(name == "c");
  CHECK(same_file(p->get(), root + "/a/b"));
  struct stat st;
  CHECK(fstatat(p->get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0);

  p = sr.open_parent("a/b/not-yet", &name);  // the last name need not exist
  REQUIRE(p.ok());
  CHECK(name == "not-yet");
  CHECK(same_file(p->get(), root + "/a/b"));

  p = sr.open_parent("top", &name);
  REQUIRE(p.ok());
  CHECK(name == "top");
  CHECK(same_file(p->get(), root));

  p = sr.open_parent("", &name);
  REQUIRE(p.ok());
  CHECK(name == ".");
  CHECK(same_file(p->get(), root));
  CHECK(p->get() != sr.fd());  // a dup, owned by the caller

  p = sr.open_parent("missing/x", &name);
  CHECK_FALSE(p.ok());
}

TEST_CASE("SafeRoot never follows a symlink, whether it points outside or inside") {
  TempDir tmp;
  const std::string root = tmp.path() + "/root";
  const std::string outside = tmp.path() + "/outside";
  fs::create_directories(root + "/a/b");
  fs::create_directories(outside);
  write_file(root + "/a/b/c", "inside");
  write_file(outside + "/secret", "secret");
  fs::create_symlink(outside, root + "/out_abs");            // absolute, outside
  fs::create_symlink("../outside", root + "/out_rel");       // relative, outside
  fs::create_symlink("a", root + "/in_dir");                 // relative, inside
  fs::create_symlink(root + "/a/b/c", root + "/a/in_file");  // absolute, inside

  SafeRoot sr;
  REQUIRE(sr.open(root).ok());
  std::string name;

  for (const char* path : {"out_abs/secret", "out_rel/secret", "in_dir/b/c"}) {
    INFO(path);
    auto f = sr.open_beneath(path, O_RDONLY);
    REQUIRE_FALSE(f.ok());
    CHECK(f.error().code == -ELOOP);
    auto p = sr.open_parent(path, &name);
    CHECK_FALSE(p.ok());
  }
  // The symlink as the last component is refused too (unless O_NOFOLLOW|O_PATH
  // asks for the link itself).
  for (const char* path : {"out_abs", "out_rel", "in_dir", "a/in_file"}) {
    INFO(path);
    auto f = sr.open_beneath(path, O_RDONLY);
    REQUIRE_FALSE(f.ok());
    CHECK(f.error().code == -ELOOP);
  }
  // A parent directory reached through a symlink, even one inside the root.
  auto p = sr.open_parent("in_dir/b", &name);
  REQUIRE_FALSE(p.ok());
  p = sr.open_parent("out_abs/x", &name);
  REQUIRE_FALSE(p.ok());
  // Opening the link itself with O_PATH|O_NOFOLLOW is allowed and is the link.
  auto link = sr.open_beneath("in_dir", O_PATH | O_NOFOLLOW);
  REQUIRE(link.ok());
  struct stat st;
  REQUIRE(fstatat(link->get(), "", &st, AT_EMPTY_PATH) == 0);
  CHECK(S_ISLNK(st.st_mode));
}

TEST_CASE("SafeRoot refuses '..' and absolute paths") {
  TempDir tmp;
  const std::string root = tmp.path() + "/root";
  fs::create_directories(root + "/a");
  write_file(tmp.path() + "/secret", "secret");

  SafeRoot sr;
  REQUIRE(sr.open(root).ok());
  for (const char* path : {"..", "../secret", "a/../../secret", tmp.path().c_str()}) {
    INFO(path);
    auto f = sr.open_beneath(path, O_PATH);
    CHECK_FALSE(f.ok());
  }
  std::string name;
  auto p = sr.open_parent("../secret", &name);
  CHECK_FALSE(p.ok());
  p = sr.open_parent("a/../../secret", &name);
  CHECK_FALSE(p.ok());
  // A last component of ".." would let the caller's *at() call climb out of
  // the root (openat(root_fd, "..")), so open_parent must refuse it too.
  for (const char* path : {"..", "a/..", "a/.", "a/"}) {
    INFO(path);
    p = sr.open_parent(path, &name);
    REQUIRE_FALSE(p.ok());
    CHECK(p.error().code == -EINVAL);
  }
}

TEST_CASE("SafeRoot::open names the root it could not open") {
  TempDir tmp;
  SafeRoot sr;
  const std::string missing = tmp.path() + "/missing";
  intersync::Status s = sr.open(missing);
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().code == -ENOENT);
  CHECK_THAT(s.error().message, Catch::Matchers::Contains(missing));

  write_file(tmp.path() + "/file", "x");
  CHECK_FALSE(sr.open(tmp.path() + "/file").ok());  // not a directory
}
