// Tests of the KML record codec, the log file (chunking, torn-tail repair,
// logical offsets) and last_rcvd. Records in the "original layout" are built
// here byte by byte from the table in shared/KML.md with a small
// little-endian writer that shares nothing with kml_encode, so a passing test
// shows compatibility with the InterMezzo module rather than agreement of our
// encoder with our decoder.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>

#include "intersync/kml.h"
#include "temp_dir.h"

namespace fs = std::filesystem;
using namespace intersync;

namespace {

// A temporary directory removed with everything in it at the end of a test.
// Little-endian byte writer written from KML.md, independent of kml_encode.
struct Le {
  std::string b;
  Le& u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return *this;
  }
  Le& u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) b.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return *this;
  }
  Le& v(uint32_t mtime_sec, uint32_t mtime_nsec, uint32_t ctime_sec, uint32_t ctime_nsec,
        uint64_t size) {
    return u32(mtime_sec).u32(mtime_nsec).u32(ctime_sec).u32(ctime_nsec).u64(size);
  }
  // Raw string bytes followed by `fill` up to a multiple of 4.
  Le& str(std::string_view s, char fill = '\0') {
    b.append(s);
    while (b.size() % 4 != 0) b.push_back(fill);
    return *this;
  }
};

// Frames a body the way the original module did: prefix with groups, body,
// suffix whose len repeats the prefix's.
std::string frame(uint32_t opcode, const std::vector<uint32_t>& groups, const std::string& body,
                  uint32_t recno, uint32_t time, uint32_t version = 0x00010002) {
  uint32_t len = static_cast<uint32_t>(32 + 4 * groups.size() + body.size() + 16);
  Le r;
  r.u32(len).u32(version).u32(4242).u32(1000).u32(1001).u32(1002).u32(opcode);
  r.u32(static_cast<uint32_t>(groups.size()));
  for (uint32_t g : groups) r.u32(g);
  r.b += body;
  r.u32(0).u32(recno).u32(time).u32(len);
  return r.b;
}

uint32_t read_u32(const std::string& data, size_t pos) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(data[pos + i]);
  return v;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void spit(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

// Gives every field an opcode uses its own value, so a field read from the
// wrong position shows up as a mismatch.
KmlRecord sample(KmlOp op) {
  uint32_t n = 100 * static_cast<uint32_t>(op) + 1;
  auto next = [&n] { return n++; };
  auto version = [&] {
    return KmlVersion{next(), next(), next(), next(), 0x100000000ull + next()};
  };
  KmlRecord r;
  r.opcode = op;
  r.pid = next(), r.auid = next(), r.fsuid = next(), r.fsgid = next();
  r.groups = {next(), next(), next()};
  r.recno = next(), r.time = next(), r.prevrec = next();
  switch (op) {
    case KmlOp::Create:
    case KmlOp::Mkdir:
      r.v_parent_old = version(), r.v_parent_new = version(), r.v_obj_new = version();
      r.mode = 0100644, r.uid = next(), r.gid = next();
      r.path = "dir/file";
      break;
    case KmlOp::Unlink:
    case KmlOp::Rmdir:
      r.v_parent_old = version(), r.v_parent_new = version(), r.v_obj_old = version();
      r.rollback = {next(), next(), 0x200000000ull + next(), 0x300000000ull + next()};
      r.dir = "some/dir";
      r.name = "entry";
      if (op == KmlOp::Unlink) r.target = "../link/target";
      break;
    case KmlOp::Close:
      r.open_mode = next(), r.open_uid = next(), r.open_gid = next();
      r.v_obj_old = version(), r.v_obj_new = version();
      r.ino = 0x123456789abcull, r.generation = next();
      r.path = "a/closed file";
      break;
    case KmlOp::Symlink:
      r.v_parent_old = version(), r.v_parent_new = version(), r.v_obj_new = version();
      r.uid = next(), r.gid = next();
      r.path = "lnk";
      r.target = "/absolute/target";
      break;
    case KmlOp::Rename:
      r.v_parent_old = version(), r.v_parent_new = version();
      r.v_tgtdir_old = version(), r.v_tgtdir_new = version();
      r.src = "from/x";
      r.target = "to/y";
      break;
    case KmlOp::Setattr:
      r.v_obj_old = version();
      r.valid = kAttrMode | kAttrSize | kAttrMtime, r.mode = next(), r.uid = next(), r.gid = next();
      r.size = 0x400000000ull + next();
      r.mtime_sec = next(), r.mtime_nsec = next(), r.ctime_sec = next(), r.ctime_nsec = next();
      r.flags = next();
      r.rollback = {next(), next(), 0x500000000ull + next(), 0x600000000ull + next()};
      r.path = "";  // the fileset root itself
      break;
    case KmlOp::Link:
      r.v_parent_old = version(), r.v_parent_new = version(), r.v_obj_new = version();
      r.src = "old/name";
      r.target = "new/name2";
      break;
    case KmlOp::Mknod:
      r.v_parent_old = version(), r.v_parent_new = version(), r.v_obj_new = version();
      r.mode = 020644, r.uid = next(), r.gid = next(), r.major = next(), r.minor = next();
      r.path = "dev/null0";
      break;
    case KmlOp::SetExtAttr:
    case KmlOp::DelExtAttr:
      r.v_obj_old = version(), r.v_obj_new = version();
      r.flags = next(), r.mode = next();
      r.path = "with/xattr";
      r.name = "user.comment";
      if (op == KmlOp::SetExtAttr) r.value = std::string("bin\0ary\xff", 8);
      break;
    case KmlOp::Content:
      r.v_obj_new = version();
      r.size = 0x700000000ull + next(), r.mode = next(), r.nchunks = next();
      for (size_t i = 0; i < r.hash.size(); ++i) r.hash[i] = static_cast<uint8_t>(0xa0 + i);
      r.path = "big/file.bin";
      break;
    case KmlOp::Noop:
      break;
  }
  return r;
}

const KmlOp kAllOps[] = {KmlOp::Noop,       KmlOp::Create, KmlOp::Mkdir,   KmlOp::Unlink,
                         KmlOp::Rmdir,      KmlOp::Close,  KmlOp::Symlink, KmlOp::Rename,
                         KmlOp::Setattr,    KmlOp::Link,   KmlOp::Mknod,   KmlOp::SetExtAttr,
                         KmlOp::DelExtAttr, KmlOp::Content};

KmlRecord create_record(const std::string& path) {
  KmlRecord r;
  r.opcode = KmlOp::Create;
  r.mode = 0100600;
  r.path = path;
  return r;
}

}  // namespace

TEST_CASE("every opcode survives encode and decode", "[kml]") {
  for (KmlOp op : kAllOps) {
    INFO(kml_op_name(op));
    KmlRecord rec = sample(op);
    auto bytes = kml_encode(rec);
    REQUIRE(bytes.ok());
    CHECK(bytes->size() % 4 == 0);
    CHECK(read_u32(*bytes, 0) == bytes->size());
    CHECK(read_u32(*bytes, bytes->size() - 4) == bytes->size());
    size_t used = 0;
    auto back = kml_decode(*bytes, &used);
    REQUIRE(back.ok());
    CHECK(used == bytes->size());
    CHECK(*back == rec);
  }
}

TEST_CASE("opcode names", "[kml]") {
  CHECK(std::string(kml_op_name(KmlOp::Create)) == "CREATE");
  CHECK(std::string(kml_op_name(KmlOp::DelExtAttr)) == "DELEXTATTR");
  CHECK(std::string(kml_op_name(KmlOp::Content)) == "CONTENT");
  CHECK(std::string(kml_op_name(static_cast<KmlOp>(12))) == "WRITE");
  CHECK(std::string(kml_op_name(static_cast<KmlOp>(999))) == "UNKNOWN");
}

TEST_CASE("a CREATE in the original layout", "[kml]") {
  Le body;
  body.v(10, 11, 12, 13, 14).v(20, 21, 22, 23, 24).v(30, 31, 32, 33, 0x1122334455ull);
  body.u32(0100644).u32(500).u32(501).u32(10);    // mode uid gid pathlen ("/dir/file" + NUL)
  body.str(std::string("/dir/file\0", 10), 'X');  // padding need not be zero
  std::string bytes = frame(1, {7, 8}, body.b, 5, 1700000000);

  size_t used = 0;
  auto rec = kml_decode(bytes, &used);
  REQUIRE(rec.ok());
  CHECK(used == bytes.size());
  CHECK(rec->version == 0x00010002);
  CHECK(rec->pid == 4242);
  CHECK(rec->auid == 1000);
  CHECK(rec->fsuid == 1001);
  CHECK(rec->fsgid == 1002);
  CHECK(rec->groups == std::vector<uint32_t>{7, 8});
  CHECK(rec->opcode == KmlOp::Create);
  CHECK(rec->v_parent_old == KmlVersion{10, 11, 12, 13, 14});
  CHECK(rec->v_parent_new == KmlVersion{20, 21, 22, 23, 24});
  CHECK(rec->v_obj_new == KmlVersion{30, 31, 32, 33, 0x1122334455ull});
  CHECK(rec->mode == 0100644);
  CHECK(rec->uid == 500);
  CHECK(rec->gid == 501);
  CHECK(rec->path == "dir/file");
  CHECK(rec->recno == 5);
  CHECK(rec->time == 1700000000);

  // Our encoder writes the same bytes, up to the padding.
  std::string zero_padded = bytes;
  zero_padded.replace(zero_padded.find("XX"), 2, std::string(2, '\0'));
  auto encoded = kml_encode(*rec);
  REQUIRE(encoded.ok());
  CHECK(*encoded == zero_padded);
}

TEST_CASE("UNLINK, SETATTR and CLOSE in the original layout", "[kml]") {
  SECTION("UNLINK: path string, then bare name and old symlink target") {
    Le body;
    body.v(1, 2, 3, 4, 5).v(6, 7, 8, 9, 10).v(11, 12, 13, 14, 15);
    body.u32(0120777).u32(0).u64(1000).u64(1001);  // rollback
    body.u32(3).u32(4).u32(6);                     // dirlen ("/d" + NUL), namelen, targetlen
    body.str(std::string("/d\0", 3)).str("link").str("target");
    std::string bytes = frame(3, {}, body.b, 9, 0);
    auto rec = kml_decode(bytes, nullptr);
    REQUIRE(rec.ok());
    CHECK(rec->opcode == KmlOp::Unlink);
    CHECK(rec->v_obj_old == KmlVersion{11, 12, 13, 14, 15});
    CHECK(rec->rollback == KmlRollback{0120777, 0, 1000, 1001});
    CHECK(rec->dir == "d");
    CHECK(rec->name == "link");
    CHECK(rec->target == "target");
    CHECK(*kml_encode(*rec) == bytes);
  }
  SECTION("SETATTR: a u64 packed right after u32 fields, no alignment gap") {
    Le body;
    body.v(1, 2, 3, 4, 5);
    body.u32(kAttrMode | kAttrSize).u32(0100600).u32(7).u32(8);  // valid mode uid gid
    body.u64(0xdeadbeef01ull);                                   // size at body offset 40
    body.u32(100).u32(101).u32(102).u32(103).u32(0);             // mtime ctime (sec, nsec), flags
    body.u32(0100644).u32(0).u64(1).u64(2);                      // rollback
    body.u32(2).str(std::string("/\0", 2));                      // the root
    std::string bytes = frame(8, {}, body.b, 2, 0);
    auto rec = kml_decode(bytes, nullptr);
    REQUIRE(rec.ok());
    CHECK(rec->valid == (kAttrMode | kAttrSize));
    CHECK(rec->size == 0xdeadbeef01ull);
    CHECK(rec->mtime_sec == 100);
    CHECK(rec->ctime_nsec == 103);
    CHECK(rec->rollback == KmlRollback{0100644, 0, 1, 2});
    CHECK(rec->path.empty());
    CHECK(*kml_encode(*rec) == bytes);
  }
  SECTION("CLOSE: u64 ino at a 4-byte boundary") {
    Le body;
    body.u32(2).u32(3).u32(4);  // open_mode open_uid open_gid
    body.v(1, 2, 3, 4, 5).v(6, 7, 8, 9, 10);
    body.u64(0xabcdef0123ull).u32(77).u32(3);  // ino generation pathlen
    body.str(std::string("/f\0", 3));
    std::string bytes = frame(5, {1}, body.b, 3, 0);
    auto rec = kml_decode(bytes, nullptr);
    REQUIRE(rec.ok());
    CHECK(rec->open_mode == 2);
    CHECK(rec->v_obj_new == KmlVersion{6, 7, 8, 9, 10});
    CHECK(rec->ino == 0xabcdef0123ull);
    CHECK(rec->generation == 77);
    CHECK(rec->path == "f");
    CHECK(*kml_encode(*rec) == bytes);
  }
}

TEST_CASE("reserved opcodes and newer minor versions decode by their frame", "[kml]") {
  // WRITE (12) had a body in no released module; whatever is there is skipped.
  std::string bytes = frame(12, {3}, std::string(20, '\x5a'), 4, 99);
  size_t used = 0;
  auto rec = kml_decode(bytes, &used);
  REQUIRE(rec.ok());
  CHECK(used == bytes.size());
  CHECK(static_cast<uint32_t>(rec->opcode) == 12);
  CHECK(rec->groups == std::vector<uint32_t>{3});
  CHECK(rec->recno == 4);

  // Minor 3 may append fields after the strings; minor 2 may not.
  Le body;
  body.v(0, 0, 0, 0, 0).v(0, 0, 0, 0, 0).v(0, 0, 0, 0, 0).u32(0).u32(0).u32(0).u32(3);
  body.str(std::string("/x\0", 3)).u32(0xfeed);
  CHECK(kml_decode(frame(2, {}, body.b, 1, 0, 0x00010003), nullptr).ok());
  auto strict = kml_decode(frame(2, {}, body.b, 1, 0, 0x00010002), nullptr);
  REQUIRE_FALSE(strict.ok());
  CHECK(strict.error().message.find("unused") != std::string::npos);
}

TEST_CASE("malformed records are refused with a reason", "[kml]") {
  std::string good = *kml_encode(sample(KmlOp::Create));
  auto expect_bad = [](const std::string& bytes, const std::string& words) {
    auto rec = kml_decode(bytes, nullptr);
    REQUIRE_FALSE(rec.ok());
    CHECK(rec.error().code == -EBADMSG);
    INFO(rec.error().message);
    CHECK(rec.error().message.find(words) != std::string::npos);
  };
  expect_bad(good.substr(0, 20), "prefix");
  expect_bad(good.substr(0, good.size() - 4), "runs past the end");

  std::string bad = good;
  bad[4] = 7;  // version 0x00010007 is fine, 0x00020002 is not
  CHECK(kml_decode(bad, nullptr).ok());
  bad[6] = 2;
  expect_bad(bad, "version");

  bad = good;
  bad[bad.size() - 4] ^= 4;
  expect_bad(bad, "suffix length");

  bad = good;
  bad[28] = 100;  // ngroups
  expect_bad(bad, "groups");

  // A path length pointing past the suffix.
  Le body;
  body.v(0, 0, 0, 0, 0).v(0, 0, 0, 0, 0).v(0, 0, 0, 0, 0).u32(0).u32(0).u32(0).u32(4000);
  body.str(std::string("/x\0", 3));
  expect_bad(frame(1, {}, body.b, 1, 0), "overruns");

  // Paths must be "/..." and NUL-terminated.
  Le unterminated;
  unterminated.v(0, 0, 0, 0, 0).v(0, 0, 0, 0, 0).v(0, 0, 0, 0, 0).u32(0).u32(0).u32(0).u32(4);
  unterminated.str("/abc");
  expect_bad(frame(1, {}, unterminated.b, 1, 0), "NUL-terminated");
  Le relative;
  relative.v(0, 0, 0, 0, 0).v(0, 0, 0, 0, 0).v(0, 0, 0, 0, 0).u32(0).u32(0).u32(0).u32(4);
  relative.str(std::string("abc\0", 4));
  expect_bad(frame(1, {}, relative.b, 1, 0), "'/'");
  // ... with exactly one '/': "//x" would read as the absolute "/x".
  Le absolute;
  absolute.v(0, 0, 0, 0, 0).v(0, 0, 0, 0, 0).v(0, 0, 0, 0, 0).u32(0).u32(0).u32(0).u32(4);
  absolute.str(std::string("//x\0", 4));
  expect_bad(frame(1, {}, absolute.b, 1, 0), "more than one '/'");

  // A DELEXTATTR names the attribute it removes and carries no value.
  auto delextattr = [](std::string_view value) {
    Le body;
    body.v(0, 0, 0, 0, 0).v(0, 0, 0, 0, 0).u32(0).u32(0100644);  // V old, V new, flags, mode
    body.u32(3).u32(12).u32(static_cast<uint32_t>(value.size()));
    body.str(std::string("/f\0", 3)).str("user.comment").str(value);
    return frame(16, {}, body.b, 1, 0);
  };
  auto removed = kml_decode(delextattr(""), nullptr);
  REQUIRE(removed.ok());
  CHECK(removed->name == "user.comment");
  expect_bad(delextattr("stale"), "carries no value");
}

TEST_CASE("the encoder refuses what it cannot write faithfully", "[kml]") {
  KmlRecord r = create_record("/absolute");
  CHECK(kml_encode(r).error().code == -EINVAL);
  r.path = std::string("nul\0inside", 10);
  CHECK(kml_encode(r).error().code == -EINVAL);
  r.path = std::string(70000, 'a');
  CHECK(kml_encode(r).error().code == -E2BIG);
  r.path = std::string(kKmlChunk - 200, 'a');
  CHECK(kml_encode(r).ok());
}

TEST_CASE("the writer keeps records inside 64 KiB chunks", "[kml]") {
  TempDir dir;
  std::string path = dir.file("kml");
  KmlWriter w;
  REQUIRE(w.open(path).ok());
  CHECK(w.last_recno() == 0);
  CHECK(w.repaired().empty());

  std::vector<uint64_t> offsets;
  for (int i = 0; w.end_offset() < 3 * uint64_t{kKmlChunk} + 1000; ++i) {
    // Sizes vary so that records end at many positions within a chunk.
    KmlRecord r = create_record("f" + std::to_string(i) + std::string(500 + (i * 997) % 3000, 'p'));
    auto off = w.append(r);
    REQUIRE(off.ok());
    CHECK(r.recno == static_cast<uint32_t>(i + 1));
    CHECK(r.time != 0);
    size_t len = kml_encode(r)->size();
    CHECK(*off / kKmlChunk == (*off + len - 1) / kKmlChunk);
    offsets.push_back(*off);
  }
  REQUIRE(w.sync().ok());

  std::string data = slurp(path);
  CHECK(data.size() == w.end_offset());
  auto scan = kml_scan(data);
  CHECK(scan.problems.empty());
  REQUIRE(scan.entries.size() == offsets.size());
  size_t padded_chunks = 0;
  uint64_t prev_end = 0;
  for (size_t i = 0; i < offsets.size(); ++i) {
    CHECK(scan.entries[i].offset == offsets[i]);
    CHECK(scan.entries[i].record.recno == i + 1);
    // Anything between two records is zero padding that ends at a boundary.
    if (offsets[i] != prev_end) {
      CHECK(offsets[i] % kKmlChunk == 0);
      CHECK(data.substr(prev_end, offsets[i] - prev_end).find_first_not_of('\0') ==
            std::string::npos);
      ++padded_chunks;
    }
    prev_end = offsets[i] + read_u32(data, offsets[i]);
  }
  CHECK(padded_chunks >= 2);
  CHECK(scan.end_offset == data.size());

  // Reopening learns the recno from the end of the file without repairs.
  KmlWriter again;
  REQUIRE(again.open(path).ok());
  CHECK(again.repaired().empty());
  CHECK(again.last_recno() == offsets.size());
  CHECK(again.end_offset() == data.size());
}

TEST_CASE("a torn tail is cut off when the log is opened", "[kml]") {
  TempDir dir;
  std::string path = dir.file("kml");
  std::vector<uint64_t> offsets;
  {
    KmlWriter w;
    REQUIRE(w.open(path).ok());
    for (int i = 0; i < 3; ++i) {
      KmlRecord r = create_record("file" + std::to_string(i));
      offsets.push_back(*w.append(r));
    }
  }
  uint64_t size = fs::file_size(path);
  uint64_t cut_at = offsets[2] + (size - offsets[2]) / 2 + 1;  // not even 4-aligned
  fs::resize_file(path, cut_at);

  KmlWriter w;
  REQUIRE(w.open(path).ok());
  INFO(w.repaired());
  CHECK_FALSE(w.repaired().empty());
  CHECK(w.repaired().find(std::to_string(offsets[2])) != std::string::npos);
  CHECK(w.last_recno() == 2);
  CHECK(w.end_offset() == offsets[2]);
  CHECK(fs::file_size(path) == offsets[2]);

  KmlRecord r = create_record("again");
  auto off = w.append(r);
  REQUIRE(off.ok());
  CHECK(*off == offsets[2]);
  CHECK(r.recno == 3);

  auto scan = kml_read_file(path);
  REQUIRE(scan.ok());
  CHECK(scan->problems.empty());
  REQUIRE(scan->entries.size() == 3);
  CHECK(scan->entries[2].record.path == "again");
  CHECK(scan->entries[2].record.recno == 3);
}

TEST_CASE("a torn first record in a later chunk and a torn only record", "[kml]") {
  TempDir dir;
  std::string path = dir.file("kml");
  SECTION("the only record is torn: the log becomes empty") {
    std::string rec = *kml_encode(create_record("only"));
    spit(path, rec.substr(0, rec.size() - 8));
    KmlWriter w;
    REQUIRE(w.open(path).ok());
    CHECK_FALSE(w.repaired().empty());
    CHECK(w.last_recno() == 0);
    CHECK(fs::file_size(path) == 0);
  }
  SECTION("the torn record was the first of its chunk, after padding") {
    KmlWriter w;
    REQUIRE(w.open(path).ok());
    KmlRecord big = create_record(std::string(40000, 'b'));
    REQUIRE(w.append(big).ok());
    uint64_t good_end = w.end_offset();
    REQUIRE(w.append(big).ok());  // starts the second chunk
    w.close();
    fs::resize_file(path, kKmlChunk + 100);
    REQUIRE(w.open(path).ok());
    CHECK(w.last_recno() == 1);
    CHECK(fs::file_size(path) == good_end);
  }
  SECTION("damage that is more than a torn append is left alone") {
    KmlWriter w;
    REQUIRE(w.open(path).ok());
    std::vector<uint64_t> offsets;
    for (int i = 0; i < 3; ++i) {
      KmlRecord r = create_record(std::string(30000, 'c'));
      offsets.push_back(*w.append(r));
    }
    w.close();
    REQUIRE(offsets[2] == kKmlChunk);
    // Record 2 (first chunk) is damaged and record 3 (second chunk) torn:
    // cutting back to record 1 would throw away more than one append.
    std::string data = slurp(path);
    uint32_t len2 = read_u32(data, offsets[1]);
    data[offsets[1] + len2 - 4] ^= 0x04;  // record 2's suffix length disagrees
    data.resize(kKmlChunk + 100);
    spit(path, data);
    auto st = w.open(path);
    REQUIRE_FALSE(st.ok());
    CHECK(st.error().code == -EBADMSG);
    CHECK(st.error().message.find(std::to_string(offsets[1])) != std::string::npos);
    CHECK(fs::file_size(path) == data.size());
  }
}

TEST_CASE("a corrupt record in the middle is reported and skipped", "[kml]") {
  TempDir dir;
  std::string path = dir.file("kml");
  std::vector<uint64_t> offsets;
  {
    KmlWriter w;
    REQUIRE(w.open(path).ok());
    for (int i = 0; i < 4; ++i) {
      KmlRecord r = create_record("f" + std::to_string(i));
      offsets.push_back(*w.append(r));
    }
  }
  std::string data = slurp(path);
  uint32_t len2 = read_u32(data, offsets[1]);
  for (size_t i = offsets[1] + len2 - 8; i < offsets[1] + len2; ++i) data[i] ^= 0x55;
  spit(path, data);

  auto scan = kml_read_file(path);
  REQUIRE(scan.ok());
  REQUIRE(scan->problems.size() == 1);
  CHECK(scan->problems[0].offset == offsets[1]);
  CHECK_FALSE(scan->problems[0].torn_tail);
  CHECK(scan->problems[0].reason.find("suffix") != std::string::npos);
  REQUIRE(scan->entries.size() == 3);
  CHECK(scan->entries[0].record.recno == 1);
  CHECK(scan->entries[1].record.recno == 3);
  CHECK(scan->entries[1].offset == offsets[2]);
  CHECK(scan->entries[2].record.recno == 4);

  // The tail is intact, so the writer neither repairs nor complains.
  KmlWriter w;
  REQUIRE(w.open(path).ok());
  CHECK(w.repaired().empty());
  CHECK(w.last_recno() == 4);
}

TEST_CASE("recno gaps and torn tails in a scan", "[kml]") {
  std::string log;
  for (uint32_t recno : {5u, 6u, 8u}) {
    KmlRecord r = create_record("x");
    r.recno = recno;
    log += *kml_encode(r);
  }
  std::string torn = *kml_encode(create_record("y"));
  log += torn.substr(0, 37);
  auto scan = kml_scan(log);
  CHECK(scan.entries.size() == 3);
  REQUIRE(scan.problems.size() == 2);
  CHECK(scan.problems[0].reason == "recno 8 follows 6");
  CHECK(scan.problems[0].offset == scan.entries[2].offset);
  CHECK(scan.problems[1].torn_tail);
  CHECK(scan.problems[1].offset == log.size() - 37);
  CHECK(scan.end_offset == log.size() - 37);
}

TEST_CASE("logical offsets start at the truncated length", "[kml]") {
  const uint64_t base = 10 * uint64_t{kKmlChunk} + 1234;
  TempDir dir;
  std::string path = dir.file("kml");
  KmlWriter w;
  REQUIRE(w.open(path, base).ok());
  CHECK(w.end_offset() == base);
  std::vector<uint64_t> offsets;
  for (int i = 0; i < 3; ++i) {
    KmlRecord r = create_record("g" + std::to_string(i));
    auto off = w.append(r);
    REQUIRE(off.ok());
    offsets.push_back(*off);
  }
  CHECK(offsets[0] == base);

  auto plain = kml_read_file(path);
  auto shifted = kml_read_file(path, base);
  REQUIRE(plain.ok());
  REQUIRE(shifted.ok());
  REQUIRE(shifted->entries.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    CHECK(shifted->entries[i].offset == offsets[i]);
    CHECK(shifted->entries[i].offset == plain->entries[i].offset + base);
  }
  CHECK(shifted->end_offset == w.end_offset());

  std::string data = slurp(path);
  data.resize(data.size() - 5);
  spit(path, data);
  KmlWriter reopened;
  REQUIRE(reopened.open(path, base).ok());
  CHECK(reopened.repaired().find(std::to_string(offsets[2])) != std::string::npos);
  CHECK(reopened.end_offset() == offsets[2]);
}

TEST_CASE("last_rcvd entries are updated in place", "[kml][last_rcvd]") {
  LastRcvdEntry a;
  for (size_t i = 0; i < 16; ++i) a.uuid[i] = static_cast<uint8_t>(i + 1);
  a.remote_recno = 1, a.remote_offset = 0x100000002ull, a.local_recno = 3;
  a.local_offset = 4, a.last_ctime = 0x0102030405060708ull;

  std::string bytes = last_rcvd_encode(a);
  REQUIRE(bytes.size() == 56);
  Le expected;
  expected.b.assign(reinterpret_cast<const char*>(a.uuid.data()), 16);
  expected.u64(1).u64(0x100000002ull).u64(3).u64(4).u64(0x0102030405060708ull);
  CHECK(bytes == expected.b);
  CHECK(*last_rcvd_decode(bytes) == a);
  CHECK(last_rcvd_decode(bytes.substr(1)).error().code == -EBADMSG);

  TempDir dir;
  std::string path = dir.file("last_rcvd");
  LastRcvdEntry b;
  b.uuid.fill(0xbb);
  b.remote_recno = 77;
  REQUIRE(last_rcvd_update(path, a).ok());
  REQUIRE(last_rcvd_update(path, b).ok());
  LastRcvdEntry a2 = a;
  a2.remote_recno = 1000, a2.local_offset = 2000;
  REQUIRE(last_rcvd_update(path, a2).ok());
  CHECK(fs::file_size(path) == 112);

  auto entries = last_rcvd_read(path);
  REQUIRE(entries.ok());
  REQUIRE(entries->size() == 2);
  CHECK((*entries)[0] == a2);
  CHECK((*entries)[1] == b);

  CHECK(last_rcvd_read(dir.file("missing")).error().code == -ENOENT);
}

TEST_CASE("decoding garbage never reads out of bounds", "[kml][fuzz]") {
  std::mt19937 rng(20261121);
  std::vector<std::string> seeds;
  for (KmlOp op : kAllOps) seeds.push_back(*kml_encode(sample(op)));

  for (int iter = 0; iter < 20000; ++iter) {
    std::string data;
    if (iter % 2 == 0) {
      // Pure noise, sometimes behind a plausible length and version.
      data.resize(rng() % 300);
      for (char& c : data) c = static_cast<char>(rng());
      if (data.size() >= 8 && iter % 4 == 0) {
        uint32_t len = static_cast<uint32_t>(data.size()) & ~3u;
        memcpy(data.data(), &len, 4);
        data[4] = 2, data[5] = 0, data[6] = 1, data[7] = 0;
      }
    } else {
      // A valid record with a few bytes changed, cut short now and then.
      data = seeds[rng() % seeds.size()];
      for (int k = 1 + rng() % 4; k > 0; --k) data[rng() % data.size()] = static_cast<char>(rng());
      if (rng() % 4 == 0) data.resize(rng() % data.size());
    }
    // An exact-size heap copy lets a sanitizer see any overread.
    std::unique_ptr<char[]> copy(new char[data.size() + 1]);
    memcpy(copy.get(), data.data(), data.size());
    std::string_view view(copy.get(), data.size());
    size_t used = 0;
    auto rec = kml_decode(view, &used);
    if (rec.ok()) {
      CHECK(used <= view.size());
      CHECK(used >= kKmlPrefixSize + kKmlSuffixSize);
    } else {
      CHECK(rec.error().code == -EBADMSG);
      CHECK_FALSE(rec.error().message.empty());
    }
    KmlScan scan = kml_scan(view, 7);
    CHECK(scan.end_offset <= 7 + view.size());
  }
}
