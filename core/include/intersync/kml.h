// The KML (modification log) of a fileset: record encoding, decoding and the
// append-only log file, byte-compatible with the InterMezzo KML 1.2 layout
// described in shared/KML.md. Records are values (KmlRecord); encode/decode
// are pure functions so they can be unit-tested and fuzzed; KmlWriter and
// KmlReader own the file, its 64 KiB chunking, torn-tail repair and logical
// offsets. LastRcvd reads and writes the 56-byte last_rcvd entries.
//
// Extensions of this project use opcodes from 64 up (see KmlOp::Content).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "intersync/result.h"

struct stat;

namespace intersync {

inline constexpr uint32_t kKmlVersion = 0x00010002;  // major 1, minor 2
inline constexpr uint32_t kKmlChunk = 64 * 1024;     // records never cross this boundary
inline constexpr size_t kKmlPrefixSize = 32;
inline constexpr size_t kKmlSuffixSize = 16;

enum class KmlOp : uint32_t {
  Noop = 0,
  Create = 1,
  Mkdir = 2,
  Unlink = 3,
  Rmdir = 4,
  Close = 5,
  Symlink = 6,
  Rename = 7,
  Setattr = 8,
  Link = 9,
  Mknod = 11,
  SetExtAttr = 15,
  DelExtAttr = 16,
  // Extension (this project): the content of a regular file after a CLOSE or
  // CREATE. Body: V new, u64 size, u32 mode, u32 nchunks, u8 hash[32],
  // u32 pathlen | path. `hash` is the file's content id (see chunker.h).
  Content = 64,
};

// "V" in KML.md: 24 bytes.
struct KmlVersion {
  uint32_t mtime_sec = 0, mtime_nsec = 0, ctime_sec = 0, ctime_nsec = 0;
  uint64_t size = 0;
  bool operator==(const KmlVersion&) const = default;
};

// The version of a file-system object as stat(2) reports it.
KmlVersion version_of(const struct stat& st);

// "RB" in KML.md: 24 bytes.
struct KmlRollback {
  uint32_t mode = 0, rdev = 0;
  uint64_t uid = 0, gid = 0;
  bool operator==(const KmlRollback&) const = default;
};

// Linux iattr "valid" bits used in SETATTR records.
enum KmlAttrValid : uint32_t {
  kAttrMode = 1,
  kAttrUid = 2,
  kAttrGid = 4,
  kAttrSize = 8,
  kAttrAtime = 16,
  kAttrMtime = 32,
  kAttrCtime = 64,
};

// One record, all opcodes in one flat struct: each opcode uses the fields its
// row of the KML.md table names, the rest stay zero/empty. Field names follow
// KML.md. Paths are relative to the fileset root without a leading slash
// ("dir/file"); on disk they are written as the original did ("/dir/file"),
// NUL-terminated.
struct KmlRecord {
  // prefix
  uint32_t version = kKmlVersion;
  uint32_t pid = 0, auid = 0, fsuid = 0, fsgid = 0;
  KmlOp opcode = KmlOp::Noop;
  std::vector<uint32_t> groups;
  // suffix
  uint32_t prevrec = 0;
  uint32_t recno = 0;
  uint32_t time = 0;

  // body: versions, named by role
  KmlVersion v_parent_old, v_parent_new, v_obj_old, v_obj_new;  // CREATE/MKDIR/SYMLINK/LINK/MKNOD
  // RENAME uses: v_parent_old/v_parent_new = srcdir old/new, v_tgtdir_old/new.
  KmlVersion v_tgtdir_old, v_tgtdir_new;
  KmlRollback rollback;  // UNLINK, RMDIR, SETATTR

  uint32_t mode = 0, uid = 0,
           gid = 0;  // CREATE, MKDIR, SYMLINK(uid,gid), MKNOD, SETATTR, SETEXTATTR(mode)
  uint32_t major = 0, minor = 0;  // MKNOD
  // CLOSE
  uint32_t open_mode = 0, open_uid = 0, open_gid = 0;
  uint64_t ino = 0;
  uint32_t generation = 0;
  // SETATTR
  uint32_t valid = 0;
  uint64_t size = 0;  // SETATTR size; CONTENT size
  uint32_t mtime_sec = 0, mtime_nsec = 0, ctime_sec = 0, ctime_nsec = 0;
  uint32_t flags = 0;  // SETATTR, SETEXTATTR
  // CONTENT (extension)
  uint32_t nchunks = 0;
  std::array<uint8_t, 32> hash{};

  // strings
  std::string path;    // CREATE, MKDIR, CLOSE, SYMLINK, SETATTR, MKNOD, SETEXTATTR, CONTENT
  std::string dir;     // UNLINK, RMDIR (the parent directory)
  std::string name;    // UNLINK, RMDIR (entry name); SETEXTATTR/DELEXTATTR (xattr name)
  std::string target;  // SYMLINK target; UNLINK old symlink target; RENAME/LINK tgt
  std::string src;     // RENAME, LINK
  std::string value;   // SETEXTATTR value (binary)

  bool operator==(const KmlRecord&) const = default;
};

const char* kml_op_name(KmlOp op);  // "CREATE", ..., "CONTENT", "UNKNOWN"

// Encodes one record (len fields computed, strings padded to 4). The result
// is at most kKmlChunk bytes; a larger record is an error (-E2BIG).
Result<std::string> kml_encode(const KmlRecord& rec);

// Decodes the record that starts at `data`. On success `consumed` is the
// record's length. A record with an unknown opcode but a sane frame decodes
// with only prefix and suffix filled (readers skip it). Errors: -EBADMSG with
// a message naming what is wrong (length, version, string overflow ...).
Result<KmlRecord> kml_decode(std::string_view data, size_t* consumed);

// One decoded record with its logical offset in the log.
struct KmlEntry {
  uint64_t offset = 0;  // logical offset of the record's first byte
  KmlRecord record;
};

// Reads a KML file (or a byte buffer holding one). Skips zero padding words
// between records; a corrupt record in the middle is reported (offset +
// reason) and reading resumes at the next 4-byte position where a valid
// record starts; a torn tail is reported as such.
struct KmlProblem {
  uint64_t offset = 0;
  std::string reason;
  bool torn_tail = false;
};

struct KmlScan {
  std::vector<KmlEntry> entries;
  std::vector<KmlProblem> problems;
  uint64_t end_offset = 0;  // logical offset just past the last good record
};

// `base_offset` is the logical offset of data[0] (the truncated length).
KmlScan kml_scan(std::string_view data, uint64_t base_offset = 0);

// The append-only log of one fileset, for a single writer (the daemon or
// izofs). open() finds the last good record by scanning back from the end,
// cuts off a torn tail with a warning in `repaired`, and learns the next
// recno. append() assigns recno and time, keeps records inside 64 KiB chunks
// (zero-padding the rest of a chunk), and writes with one write(2).
// sync() makes appended records durable (fdatasync).
class KmlWriter {
 public:
  KmlWriter() = default;
  KmlWriter(const KmlWriter&) = delete;
  KmlWriter& operator=(const KmlWriter&) = delete;
  KmlWriter(KmlWriter&& other) noexcept;
  KmlWriter& operator=(KmlWriter&& other) noexcept;
  ~KmlWriter();

  // `base_offset`: logical offset of the file's first byte (from last_rcvd's
  // all-zero-uuid record). Creates the file if missing.
  Status open(const std::string& path, uint64_t base_offset = 0);
  void close();

  // Appends; on success returns the record's logical offset and sets
  // rec.recno / rec.time (time left as is when non-zero).
  Result<uint64_t> append(KmlRecord& rec);
  Status sync();

  uint32_t last_recno() const { return last_recno_; }
  uint64_t end_offset() const { return end_offset_; }        // logical
  const std::string& repaired() const { return repaired_; }  // "" or what was cut off
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  std::string path_;
  uint64_t base_offset_ = 0;
  uint64_t end_offset_ = 0;
  uint32_t last_recno_ = 0;
  std::string repaired_;
};

// Reads a whole log file (with its base offset) into a KmlScan.
Result<KmlScan> kml_read_file(const std::string& path, uint64_t base_offset = 0);

// last_rcvd: array of 56-byte little-endian entries.
struct LastRcvdEntry {
  std::array<uint8_t, 16> uuid{};  // all zero: this log's truncation record
  uint64_t remote_recno = 0;
  uint64_t remote_offset = 0;
  uint64_t local_recno = 0;
  uint64_t local_offset = 0;
  uint64_t last_ctime = 0;
  bool operator==(const LastRcvdEntry&) const = default;
};
inline constexpr size_t kLastRcvdEntrySize = 56;

std::string last_rcvd_encode(const LastRcvdEntry& e);
Result<LastRcvdEntry> last_rcvd_decode(std::string_view bytes);  // exactly 56 bytes

// The last_rcvd file: find or update the entry of one peer uuid. update()
// rewrites the one 56-byte slot in place with pwrite and fdatasyncs, so an
// entry is either the old or the new one after a crash (a sector write is
// atomic).
Result<std::vector<LastRcvdEntry>> last_rcvd_read(const std::string& path);
Status last_rcvd_update(const std::string& path, const LastRcvdEntry& entry);

}  // namespace intersync
