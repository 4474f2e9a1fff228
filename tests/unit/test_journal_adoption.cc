// Tests of adopting the journal records a crash left out of the index: their
// effect on the index (entries made, moved, removed, attributes, content ids,
// versions), files read back to take their inode and chunk list when their
// bytes are the journal's and left for the next comparison when not, records
// that do not fit skipped, and the journal head committed with the index.
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "chunker.h"
#include "journal_adoption.h"
#include "temp_dir.h"

namespace {

namespace fs = std::filesystem;
using namespace intersync;

// A fileset root with an open SafeRoot and index, as a server has them.
struct Fixture {
  TempDir tmp;
  std::string root = tmp.path() + "/root";
  SafeRoot safe;
  FileIndex index;
  Fixture() {
    fs::create_directory(root);
    REQUIRE(safe.open(root).ok());
    REQUIRE(index.open(tmp.path() + "/index.db").ok());
    FileState top;
    top.type = FileType::Dir;
    top.mode = 0755;
    index.put("", top);
  }
  struct stat write(const std::string& rel, const std::string& data) {
    std::ofstream(root + "/" + rel, std::ios::binary | std::ios::trunc) << data;
    struct stat st;
    REQUIRE(::lstat((root + "/" + rel).c_str(), &st) == 0);
    return st;
  }
};

// The records the change tracker journals for a new file: CREATE, CLOSE,
// CONTENT, numbered from `recno`.
std::vector<KmlRecord> new_file(const std::string& path, const struct stat& st,
                                const std::string& data, uint32_t recno) {
  KmlRecord create;
  create.opcode = KmlOp::Create;
  create.path = path;
  create.mode = st.st_mode;
  create.v_obj_new = version_of(st);
  create.recno = recno;
  KmlRecord close;
  close.opcode = KmlOp::Close;
  close.path = path;
  close.v_obj_new = version_of(st);
  close.ino = st.st_ino;
  close.recno = recno + 1;
  KmlRecord content;
  content.opcode = KmlOp::Content;
  content.path = path;
  content.v_obj_new = version_of(st);
  content.size = data.size();
  content.mode = st.st_mode;
  Manifest m = manifest_of(data);
  content.nchunks = static_cast<uint32_t>(m.chunks.size());
  content.hash = m.content_id;
  content.recno = recno + 2;
  return {create, close, content};
}

}  // namespace

TEST_CASE("adopted records make the index what the journal says, read back from disk") {
  Fixture f;
  fs::create_directory(f.root + "/d");
  KmlRecord mkdir;
  mkdir.opcode = KmlOp::Mkdir;
  mkdir.path = "d";
  mkdir.mode = 040750;
  mkdir.recno = 11;
  // Large enough for several chunks: the index must hold their list.
  std::string data(3 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 7919) >> 5);
  struct stat st = f.write("d/big", data);
  std::vector<KmlRecord> records{mkdir};
  for (auto& r : new_file("d/big", st, data, 12)) records.push_back(r);

  AdoptionReport report = adopt_journal_tail(f.safe, f.index, records);
  CHECK(report.adopted == 4);
  CHECK(report.skipped == 0);
  CHECK(report.unverified == 0);
  const FileState* d = f.index.find("d");
  REQUIRE(d);
  CHECK(d->type == FileType::Dir);
  CHECK(d->mode == 0750);
  CHECK(d->version == 11);
  const FileState* big = f.index.find("d/big");
  REQUIRE(big);
  Manifest m = manifest_of(data);
  CHECK(big->version == 14);
  CHECK(big->content_id == m.content_id);
  CHECK(big->ino == st.st_ino);
  CHECK(big->size == data.size());
  CHECK(big->mode == (st.st_mode & 07777));
  REQUIRE(m.chunks.size() > 1);
  CHECK(big->nchunks == m.chunks.size());
  CHECK(big->chunks == pack_chunks(m.chunks));
}

TEST_CASE("a file changed since it was journaled is left for the next comparison") {
  Fixture f;
  struct stat st = f.write("f", "journaled\n");
  auto records = new_file("f", st, "journaled\n", 5);
  f.write("f", "changed after the crash\n");

  AdoptionReport report = adopt_journal_tail(f.safe, f.index, records);
  CHECK(report.adopted == 3);
  CHECK(report.unverified == 1);
  const FileState* entry = f.index.find("f");
  REQUIRE(entry);
  CHECK(entry->content_id == manifest_of("journaled\n").content_id);
  CHECK(entry->version == 7);
  CHECK(entry->ino == 0);  // never matches the disk: the tracker hashes it again
}

TEST_CASE("renames, removals and attributes; records that do not fit are skipped") {
  Fixture f;
  FileState a;
  a.type = FileType::File;
  a.mode = 0644;
  a.version = 2;
  f.index.put("a", a);
  f.index.put("gone", a);
  FileState dir;
  dir.type = FileType::Dir;
  dir.mode = 0755;
  dir.version = 3;
  f.index.put("olddir", dir);
  f.index.put("olddir/inside", a);

  KmlRecord rename;
  rename.opcode = KmlOp::Rename;
  rename.src = "olddir";
  rename.target = "newdir";
  rename.recno = 20;
  KmlRecord unlink;
  unlink.opcode = KmlOp::Unlink;
  unlink.name = "gone";
  unlink.recno = 21;
  KmlRecord chmod;
  chmod.opcode = KmlOp::Setattr;
  chmod.path = "newdir";
  chmod.valid = kAttrMode;
  chmod.mode = 040700;
  chmod.uid = 99;  // not among the valid bits
  chmod.recno = 22;
  KmlRecord stray;
  stray.opcode = KmlOp::Close;
  stray.path = "never-indexed";
  stray.recno = 23;

  AdoptionReport report = adopt_journal_tail(f.safe, f.index, {rename, unlink, chmod, stray});
  CHECK(report.adopted == 3);
  CHECK(report.skipped == 1);
  CHECK_FALSE(f.index.find("olddir"));
  CHECK_FALSE(f.index.find("olddir/inside"));
  CHECK_FALSE(f.index.find("gone"));
  CHECK_FALSE(f.index.find("never-indexed"));
  REQUIRE(f.index.find("newdir/inside"));
  const FileState* moved = f.index.find("newdir");
  REQUIRE(moved);
  CHECK(moved->mode == 0700);
  CHECK(moved->uid == 0);
  CHECK(moved->version == 22);
}

TEST_CASE("the index commits with the journal head it reflects") {
  Fixture f;
  Journal journal;
  REQUIRE(journal.open(f.tmp.path() + "/kml").ok());
  KmlRecord mkdir;
  mkdir.opcode = KmlOp::Mkdir;
  mkdir.path = "d";
  mkdir.mode = 040755;
  REQUIRE(journal.append(mkdir).ok());
  REQUIRE(journal.append(mkdir).ok());
  REQUIRE(commit_journal_and_index(journal, f.index).ok());
  CHECK(journal.head() == 2);
  f.index.close();

  FileIndex reopened;
  REQUIRE(reopened.open(f.tmp.path() + "/index.db").ok());
  CHECK(reopened.meta(kJournalHeadKey) == "2");
  auto after_first = journal.records_after(1);
  REQUIRE(after_first.ok());
  REQUIRE(after_first->size() == 1);
  CHECK(after_first->front().recno == 2);
}
