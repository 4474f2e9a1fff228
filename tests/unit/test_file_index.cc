// Tests of the file index: the in-memory operations (put, find, erase,
// rename_tree of a whole subtree, ordered paths_under, lookup by content id)
// and SQLite persistence (a commit read back by a fresh FileIndex gives the
// same entries and meta, erases and renames included).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "file_index.h"
#include "path_util.h"
#include "temp_dir.h"

namespace {

namespace fs = std::filesystem;
using intersync::FileIndex;
using intersync::FileState;
using intersync::FileType;
using intersync::Hash;
using intersync::sha256;

FileState file_with(const std::string& content, uint32_t version = 1) {
  FileState st;
  st.type = FileType::File;
  st.mode = 0644;
  st.size = content.size();
  st.content_id = sha256(content);
  st.version = version;
  return st;
}

FileState dir_state(uint32_t version = 1) {
  FileState st;
  st.type = FileType::Dir;
  st.mode = 0755;
  st.version = version;
  return st;
}

// Every field, so that a mismatch shows which one differs.
std::string describe(const FileState& st) {
  std::ostringstream o;
  o << "type=" << int(st.type) << " mode=" << std::oct << st.mode << std::dec << " uid=" << st.uid
    << " gid=" << st.gid << " size=" << st.size << " mtime=" << st.mtime_ns
    << " ctime=" << st.ctime_ns << " ino=" << st.ino << " id=" << intersync::hash_hex(st.content_id)
    << " chunks=" << st.chunks.size() << ":" << intersync::hash_hex(sha256(st.chunks))
    << " nchunks=" << st.nchunks << " target='" << st.target << "' version=" << st.version;
  return o.str();
}

std::vector<std::string> all_paths(const FileIndex& idx) {
  std::vector<std::string> out;
  for (const auto& [p, st] : idx.entries()) out.push_back(p);
  return out;
}

void check_same_entries(const FileIndex& a, const FileIndex& b) {
  REQUIRE(all_paths(a) == all_paths(b));
  for (const auto& [p, st] : a.entries()) {
    INFO(p);
    const FileState* other = b.find(p);
    REQUIRE(other != nullptr);
    CHECK(describe(st) == describe(*other));
  }
}

}  // namespace

TEST_CASE("put, find and erase") {
  FileIndex idx;
  CHECK(idx.find("a") == nullptr);
  CHECK(idx.size() == 0);

  idx.put("a", file_with("one"));
  idx.put("d", dir_state());
  REQUIRE(idx.find("a") != nullptr);
  CHECK(describe(*idx.find("a")) == describe(file_with("one")));
  CHECK(idx.find("d")->type == FileType::Dir);
  CHECK(idx.size() == 2);

  idx.put("a", file_with("two", 2));  // replaces
  CHECK(idx.size() == 2);
  CHECK(idx.find("a")->content_id == sha256("two"));
  CHECK(idx.find("a")->version == 2);

  idx.erase("a");
  CHECK(idx.find("a") == nullptr);
  CHECK(idx.size() == 1);
  idx.erase("a");         // erasing what is not there is harmless
  idx.erase("nonesuch");  // likewise
  CHECK(idx.size() == 1);
  CHECK(idx.find("d") != nullptr);
  // A FileIndex that was never opened commits nothing, successfully.
  CHECK(idx.commit().ok());
}

TEST_CASE("paths_under lists strictly beneath, parents before children") {
  FileIndex idx;
  // Inserted out of order, with siblings that sort around '/'.
  for (const char* p : {"a/b/c/d", "b", "a.b", "a/c", "a/b.c", "a", "a/b/c", "a-x", "a/b", "ab",
                        "a/b-c", "a/b/c0", "a0"}) {
    idx.put(p, dir_state());
  }
  const std::vector<std::string> expect = {"a/b",     "a/b-c",  "a/b.c", "a/b/c",
                                           "a/b/c/d", "a/b/c0", "a/c"};
  const std::vector<std::string> under_a = idx.paths_under("a");
  CHECK(under_a == expect);
  // Whatever the order, every parent beneath "a" comes before its children.
  for (size_t i = 0; i < under_a.size(); ++i) {
    std::string parent = intersync::parent_of(under_a[i]);
    if (parent == "a") continue;
    auto pos = std::find(under_a.begin(), under_a.end(), parent);
    REQUIRE(pos != under_a.end());
    CHECK(pos - under_a.begin() < static_cast<long>(i));
  }

  CHECK(idx.paths_under("a/b/c") == std::vector<std::string>{"a/b/c/d"});
  CHECK(idx.paths_under("a/b/c/d").empty());
  CHECK(idx.paths_under("a.b").empty());  // "a.b" is not under "a" and has nothing under it
  CHECK(idx.paths_under("zzz").empty());
  CHECK(idx.paths_under("b").empty());

  // "" is the root: everything, in order, but not the root entry itself.
  idx.put("", dir_state());
  std::vector<std::string> all = idx.paths_under("");
  CHECK(all.size() == idx.size() - 1);
  CHECK(std::is_sorted(all.begin(), all.end()));
  CHECK(std::find(all.begin(), all.end(), "") == all.end());
}

TEST_CASE("rename_tree moves a directory with all its nested children") {
  FileIndex idx;
  idx.put("d", dir_state(1));
  idx.put("d/x", file_with("x", 2));
  idx.put("d/sub", dir_state(3));
  idx.put("d/sub/y", file_with("y", 4));
  idx.put("d/sub/deeper", dir_state(5));
  idx.put("d/sub/deeper/z", file_with("z", 6));
  // Neighbours that share the prefix "d" but are not under "d/".
  idx.put("d.b", file_with("d.b"));
  idx.put("d-c", file_with("d-c"));
  idx.put("dz", file_with("dz"));
  idx.put("e", dir_state());
  const std::string before_x = describe(*idx.find("d/x"));
  const std::string before_z = describe(*idx.find("d/sub/deeper/z"));
  const size_t n = idx.size();

  idx.rename_tree("d", "e/moved");

  CHECK(idx.size() == n);
  CHECK(idx.find("d") == nullptr);
  CHECK(idx.paths_under("d").empty());
  for (const auto& [p, st] : idx.entries()) {
    INFO(p);
    CHECK_FALSE(intersync::is_same_or_under(p, "d"));
  }
  CHECK(idx.paths_under("e/moved") == std::vector<std::string>{"e/moved/sub", "e/moved/sub/deeper",
                                                               "e/moved/sub/deeper/z",
                                                               "e/moved/sub/y", "e/moved/x"});
  REQUIRE(idx.find("e/moved") != nullptr);
  CHECK(idx.find("e/moved")->version == 1);
  CHECK(describe(*idx.find("e/moved/x")) == before_x);
  CHECK(describe(*idx.find("e/moved/sub/deeper/z")) == before_z);
  CHECK(idx.find("d.b") != nullptr);
  CHECK(idx.find("d-c") != nullptr);
  CHECK(idx.find("dz") != nullptr);

  // Renaming a single file, and back to a top-level name.
  idx.rename_tree("e/moved/x", "x2");
  CHECK(idx.find("e/moved/x") == nullptr);
  CHECK(describe(*idx.find("x2")) == before_x);
  idx.rename_tree("e/moved", "d");
  CHECK(idx.paths_under("e").empty());
  CHECK(idx.paths_under("d") ==
        std::vector<std::string>{"d/sub", "d/sub/deeper", "d/sub/deeper/z", "d/sub/y"});
  // Renaming what is not there changes nothing.
  idx.rename_tree("nonesuch", "other");
  CHECK(idx.find("other") == nullptr);
  CHECK(idx.size() == n);
}

TEST_CASE("path_of_content follows put, erase and rename") {
  FileIndex idx;
  const Hash c = sha256("shared content");
  CHECK_FALSE(idx.path_of_content(c).has_value());

  idx.put("x", file_with("shared content"));
  CHECK(idx.path_of_content(c) == std::optional<std::string>("x"));
  idx.put("dir/y", file_with("shared content"));
  auto some = idx.path_of_content(c);
  REQUIRE(some.has_value());
  CHECK((*some == "x" || *some == "dir/y"));

  idx.erase("x");
  CHECK(idx.path_of_content(c) == std::optional<std::string>("dir/y"));

  idx.put("dir", dir_state());
  idx.rename_tree("dir", "new");
  CHECK(idx.path_of_content(c) == std::optional<std::string>("new/y"));

  // Overwriting with other content moves the path to the new id.
  idx.put("new/y", file_with("other"));
  CHECK_FALSE(idx.path_of_content(c).has_value());
  CHECK(idx.path_of_content(sha256("other")) == std::optional<std::string>("new/y"));

  idx.erase("new/y");
  CHECK_FALSE(idx.path_of_content(sha256("other")).has_value());

  // Only regular files are indexed by content.
  FileState link;
  link.type = FileType::Symlink;
  link.target = "somewhere";
  link.content_id = sha256("link id");
  idx.put("l", link);
  CHECK_FALSE(idx.path_of_content(sha256("link id")).has_value());
  CHECK_FALSE(idx.path_of_content(Hash{}).has_value());  // dirs have a zero id
}

TEST_CASE("commit, then a new FileIndex reads back the same entries and meta") {
  TempDir tmp;
  const std::string db = tmp.path() + "/index.db";

  FileState big = file_with("big");
  big.mode = 07777;
  big.uid = std::numeric_limits<uint32_t>::max();
  big.gid = 1234;
  big.size = (uint64_t{1} << 40) + 7;
  big.mtime_ns = 1'700'000'000'123'456'789;
  big.ctime_ns = -5;  // before the epoch
  big.ino = std::numeric_limits<uint64_t>::max();
  big.version = std::numeric_limits<uint32_t>::max();
  std::vector<intersync::ChunkRef> chunks = {{sha256("c1"), 65536}, {sha256("c2"), 1234}};
  big.chunks = intersync::pack_chunks(chunks);
  big.nchunks = 2;
  FileState link;
  link.type = FileType::Symlink;
  link.mode = 0777;
  link.target = "../some where/ü";

  {
    FileIndex idx;
    REQUIRE(idx.open(db).ok());
    CHECK(idx.size() == 0);
    CHECK_FALSE(idx.meta("last_rcvd").has_value());
    idx.put("", dir_state());
    idx.put("big", big);
    idx.put("dir", dir_state(3));
    idx.put("dir/f", file_with("f"));
    idx.put("dir/link", link);
    idx.put("gone", file_with("gone"));
    idx.erase("gone");  // never reaches the database
    idx.set_meta("last_rcvd", "42");
    idx.set_meta("uuid", "0123-abcd");
    REQUIRE(idx.commit().ok());
    CHECK(idx.commit().ok());  // nothing left to write

    FileIndex again;
    REQUIRE(again.open(db).ok());
    check_same_entries(idx, again);
    CHECK(again.find("gone") == nullptr);
    CHECK(again.meta("last_rcvd") == std::optional<std::string>("42"));
    CHECK(again.meta("uuid") == std::optional<std::string>("0123-abcd"));
    // The content index is rebuilt on load.
    CHECK(again.path_of_content(sha256("f")) == std::optional<std::string>("dir/f"));
    std::vector<intersync::ChunkRef> back;
    REQUIRE(intersync::unpack_chunks(again.find("big")->chunks, &back));
    REQUIRE(back.size() == 2);
    CHECK(back[1].length == 1234);
  }

  // Erase, rename and meta updates in a later session are persisted too.
  {
    FileIndex idx;
    REQUIRE(idx.open(db).ok());
    REQUIRE(idx.size() == 5);
    idx.erase("big");
    idx.rename_tree("dir", "renamed");
    idx.set_meta("last_rcvd", "43");
    idx.put("uncommitted", file_with("u"));
    REQUIRE(idx.commit().ok());
    idx.put("after-commit", file_with("a"));  // never committed
    idx.set_meta("never", "x");
  }
  {
    FileIndex idx;
    REQUIRE(idx.open(db).ok());
    CHECK(idx.find("big") == nullptr);
    CHECK(idx.find("dir") == nullptr);
    CHECK(idx.find("dir/f") == nullptr);
    CHECK(idx.find("dir/link") == nullptr);
    REQUIRE(idx.find("renamed/link") != nullptr);
    CHECK(describe(*idx.find("renamed/link")) == describe(link));
    CHECK(idx.find("renamed/f") != nullptr);
    CHECK(idx.find("renamed")->version == 3);
    CHECK(idx.find("uncommitted") != nullptr);
    CHECK(idx.find("after-commit") == nullptr);
    CHECK(idx.meta("last_rcvd") == std::optional<std::string>("43"));
    CHECK(idx.meta("uuid") == std::optional<std::string>("0123-abcd"));
    CHECK_FALSE(idx.meta("never").has_value());
    CHECK(all_paths(idx) ==
          std::vector<std::string>{"", "renamed", "renamed/f", "renamed/link", "uncommitted"});
    CHECK(idx.path_of_content(sha256("big")) == std::nullopt);
    CHECK(idx.path_of_content(sha256("f")) == std::optional<std::string>("renamed/f"));
  }
}

TEST_CASE("opening an index in a missing directory fails and names the file") {
  TempDir tmp;
  const std::string db = tmp.path() + "/no/such/dir/index.db";
  FileIndex idx;
  intersync::Status s = idx.open(db);
  REQUIRE_FALSE(s.ok());
  CHECK_THAT(s.error().message, Catch::Matchers::Contains(db));
}
