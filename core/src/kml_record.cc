// Encoding and decoding of single KML records, byte-compatible with the
// InterMezzo KML 1.2 layout of shared/KML.md, and the scan that walks a whole
// log buffer. Everything here is a pure function over bytes so it can be
// unit-tested against hand-built records and fuzzed: the decoder trusts no
// length it reads and reports what is wrong instead of reading past the end.
//
// The fixed body of a record is a plain sequence of u32 and u64 fields in the
// order of its KML.md row, with no alignment padding before a u64: the
// original kernel module built records by appending each field with its own
// memcpy (logit), so a u64 lands wherever the previous field ended.
#include <endian.h>
#include <fmt/format.h>
#include <sys/stat.h>

#include <cstring>
#include <iterator>
#include <optional>

#include "intersync/kml.h"

namespace intersync {
namespace {

constexpr uint32_t kMajorMask = 0xffff0000;
constexpr uint32_t kMinorMask = 0x0000ffff;

size_t pad4(size_t n) {
  return (n + 3) & ~size_t{3};
}

uint32_t load_u32(const char* p) {
  uint32_t v;
  memcpy(&v, p, sizeof v);
  return le32toh(v);
}

uint64_t load_u64(const char* p) {
  uint64_t v;
  memcpy(&v, p, sizeof v);
  return le64toh(v);
}

void store_u32(std::string& out, uint32_t v) {
  v = htole32(v);
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

void store_u64(std::string& out, uint64_t v) {
  v = htole64(v);
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

// Path strings (object paths from the fileset root) are stored as the
// original wrote them, "/a/b" with a terminating NUL counted in the length;
// names, symlink targets and xattr data are stored bare.
enum class StrKind { Path, Bare };

// The field order of every opcode's fixed body, shared by the encoder and the
// decoder so the two cannot disagree. Length fields of the strings come last
// in every fixed body and the strings follow in the same order, so one call
// per string both places the length field and queues the string. Returns
// false for an opcode whose body is not parsed: NOOP (the original voided a
// record by rewriting its opcode in place, leaving the old body behind), the
// reserved opcodes and unknown ones.
template <typename Io, typename Rec>
bool visit_body(Io& io, Rec& r) {
  switch (r.opcode) {
    case KmlOp::Noop:
      return false;
    case KmlOp::Create:
    case KmlOp::Mkdir:
      io.version(r.v_parent_old);
      io.version(r.v_parent_new);
      io.version(r.v_obj_new);
      io.u32(r.mode);
      io.u32(r.uid);
      io.u32(r.gid);
      io.str(r.path, StrKind::Path, "path");
      return true;
    case KmlOp::Unlink:
    case KmlOp::Rmdir:
      io.version(r.v_parent_old);
      io.version(r.v_parent_new);
      io.version(r.v_obj_old);
      io.rollback(r.rollback);
      io.str(r.dir, StrKind::Path, "dir");
      io.str(r.name, StrKind::Bare, "name");
      if (r.opcode == KmlOp::Unlink) io.str(r.target, StrKind::Bare, "old target");
      return true;
    case KmlOp::Close:
      io.u32(r.open_mode);
      io.u32(r.open_uid);
      io.u32(r.open_gid);
      io.version(r.v_obj_old);
      io.version(r.v_obj_new);
      io.u64(r.ino);
      io.u32(r.generation);
      io.str(r.path, StrKind::Path, "path");
      return true;
    case KmlOp::Symlink:
      io.version(r.v_parent_old);
      io.version(r.v_parent_new);
      io.version(r.v_obj_new);
      io.u32(r.uid);
      io.u32(r.gid);
      io.str(r.path, StrKind::Path, "path");
      io.str(r.target, StrKind::Bare, "target");
      return true;
    case KmlOp::Rename:
      io.version(r.v_parent_old);
      io.version(r.v_parent_new);
      io.version(r.v_tgtdir_old);
      io.version(r.v_tgtdir_new);
      io.str(r.src, StrKind::Path, "src");
      io.str(r.target, StrKind::Path, "tgt");
      return true;
    case KmlOp::Setattr:
      io.version(r.v_obj_old);
      io.u32(r.valid);
      io.u32(r.mode);
      io.u32(r.uid);
      io.u32(r.gid);
      io.u64(r.size);
      io.u32(r.mtime_sec);
      io.u32(r.mtime_nsec);
      io.u32(r.ctime_sec);
      io.u32(r.ctime_nsec);
      io.u32(r.flags);
      io.rollback(r.rollback);
      io.str(r.path, StrKind::Path, "path");
      return true;
    case KmlOp::Link:
      io.version(r.v_parent_old);
      io.version(r.v_parent_new);
      io.version(r.v_obj_new);
      io.str(r.src, StrKind::Path, "src");
      io.str(r.target, StrKind::Path, "tgt");
      return true;
    case KmlOp::Mknod:
      io.version(r.v_parent_old);
      io.version(r.v_parent_new);
      io.version(r.v_obj_new);
      io.u32(r.mode);
      io.u32(r.uid);
      io.u32(r.gid);
      io.u32(r.major);
      io.u32(r.minor);
      io.str(r.path, StrKind::Path, "path");
      return true;
    case KmlOp::SetExtAttr:
    case KmlOp::DelExtAttr:
      io.version(r.v_obj_old);
      io.version(r.v_obj_new);
      io.u32(r.flags);
      io.u32(r.mode);
      io.str(r.path, StrKind::Path, "path");
      io.str(r.name, StrKind::Bare, "name");
      io.str(r.value, StrKind::Bare, "value");
      return true;
    case KmlOp::Content:
      io.version(r.v_obj_new);
      io.u64(r.size);
      io.u32(r.mode);
      io.u32(r.nchunks);
      io.bytes(r.hash);
      io.str(r.path, StrKind::Path, "path");
      return true;
  }
  return false;
}

// Appends the fixed body to `out` and queues the strings, which
// finish() writes padded to 4 bytes.
class BodyEncoder {
 public:
  explicit BodyEncoder(std::string& out) : out_(out) {}

  void u32(uint32_t v) { store_u32(out_, v); }
  void u64(uint64_t v) { store_u64(out_, v); }
  void version(const KmlVersion& v) {
    u32(v.mtime_sec);
    u32(v.mtime_nsec);
    u32(v.ctime_sec);
    u32(v.ctime_nsec);
    u64(v.size);
  }
  void rollback(const KmlRollback& rb) {
    u32(rb.mode);
    u32(rb.rdev);
    u64(rb.uid);
    u64(rb.gid);
  }
  void bytes(const std::array<uint8_t, 32>& b) {
    out_.append(reinterpret_cast<const char*>(b.data()), b.size());
  }

  void str(const std::string& s, StrKind kind, const char* what) {
    if (kind == StrKind::Path) {
      // A leading slash or a NUL would not survive the trip through the
      // on-disk form, so such a path is refused rather than silently altered.
      if (!s.empty() && s.front() == '/' && error_.empty()) {
        error_ = fmt::format("{} \"{}\" must be relative to the fileset root", what, s);
      }
      if (s.find('\0') != std::string::npos && error_.empty()) {
        error_ = fmt::format("{} contains a NUL byte", what);
      }
      u32(static_cast<uint32_t>(s.size() + 2));
    } else {
      u32(static_cast<uint32_t>(s.size()));
    }
    strings_.push_back({&s, kind});
  }

  void finish() {
    for (const auto& [s, kind] : strings_) {
      size_t len = s->size();
      if (kind == StrKind::Path) {
        out_.push_back('/');
        out_.append(*s);
        out_.push_back('\0');
        len += 2;
      } else {
        out_.append(*s);
      }
      out_.append(pad4(len) - len, '\0');
    }
  }

  const std::string& error() const { return error_; }

 private:
  struct Queued {
    const std::string* s;
    StrKind kind;
  };
  std::string& out_;
  std::vector<Queued> strings_;
  std::string error_;
};

// Reads the fixed body from `body` (the bytes between groups and suffix) and
// then the strings it announces. Every read is bounds-checked; the first
// failure is kept in error() and later reads become no-ops.
class BodyDecoder {
 public:
  explicit BodyDecoder(std::string_view body) : body_(body) {}

  void u32(uint32_t& v) {
    if (const char* p = take(4)) v = load_u32(p);
  }
  void u64(uint64_t& v) {
    if (const char* p = take(8)) v = load_u64(p);
  }
  void version(KmlVersion& v) {
    u32(v.mtime_sec);
    u32(v.mtime_nsec);
    u32(v.ctime_sec);
    u32(v.ctime_nsec);
    u64(v.size);
  }
  void rollback(KmlRollback& rb) {
    u32(rb.mode);
    u32(rb.rdev);
    u64(rb.uid);
    u64(rb.gid);
  }
  void bytes(std::array<uint8_t, 32>& b) {
    if (const char* p = take(b.size())) memcpy(b.data(), p, b.size());
  }

  void str(std::string& s, StrKind kind, const char* what) {
    uint32_t len = 0;
    u32(len);
    strings_.push_back({&s, kind, len, what});
  }

  // Reads the queued strings; returns the number of bytes left unread
  // between the last string and the suffix.
  size_t finish() {
    for (const auto& q : strings_) {
      if (!error_.empty()) break;
      if (pad4(q.len) > body_.size() - pos_) {
        error_ = fmt::format("{} length {} overruns the record ({} bytes left)", q.what, q.len,
                             body_.size() - pos_);
        break;
      }
      std::string_view s = body_.substr(pos_, q.len);
      pos_ += pad4(q.len);
      if (q.kind == StrKind::Bare) {
        q.s->assign(s);
        continue;
      }
      if (s.size() < 2 || s.front() != '/') {
        error_ = fmt::format("{} does not start with '/'", q.what);
      } else if (s.back() != '\0') {
        error_ = fmt::format("{} is not NUL-terminated", q.what);
      } else if (s.find('\0') != s.size() - 1) {
        error_ = fmt::format("{} contains a NUL byte before its end", q.what);
      } else if (s[1] == '/') {
        // "//x" would read as the absolute "/x", which no writer of this
        // format puts there (the encoder refuses it).
        error_ = fmt::format("{} \"{}\" starts with more than one '/'", q.what,
                             s.substr(0, s.size() - 1));
      } else {
        q.s->assign(s.substr(1, s.size() - 2));
      }
    }
    return body_.size() - pos_;
  }

  const std::string& error() const { return error_; }

 private:
  struct Queued {
    std::string* s;
    StrKind kind;
    uint32_t len;
    const char* what;
  };

  const char* take(size_t n) {
    if (!error_.empty()) return nullptr;
    if (n > body_.size() - pos_) {
      error_ = fmt::format("fixed body needs {} more bytes than the record holds",
                           n - (body_.size() - pos_));
      return nullptr;
    }
    const char* p = body_.data() + pos_;
    pos_ += n;
    return p;
  }

  std::string_view body_;
  size_t pos_ = 0;
  std::vector<Queued> strings_;
  std::string error_;
};

Error bad_message(std::string message) {
  return Error{-EBADMSG, std::move(message)};
}

}  // namespace

KmlVersion version_of(const struct stat& st) {
  KmlVersion v;
  v.mtime_sec = static_cast<uint32_t>(st.st_mtim.tv_sec);
  v.mtime_nsec = static_cast<uint32_t>(st.st_mtim.tv_nsec);
  v.ctime_sec = static_cast<uint32_t>(st.st_ctim.tv_sec);
  v.ctime_nsec = static_cast<uint32_t>(st.st_ctim.tv_nsec);
  v.size = static_cast<uint64_t>(st.st_size);
  return v;
}

const char* kml_op_name(KmlOp op) {
  // Opcodes 0 to 18 as the original numbered them, the reserved ones included
  // so that a listing of an old log names them.
  static constexpr const char* kNames[] = {
      "NOOP",   "CREATE",     "MKDIR",      "UNLINK",    "RMDIR",     "CLOSE", "SYMLINK",
      "RENAME", "SETATTR",    "LINK",       "OPEN",      "MKNOD",     "WRITE", "RELEASE",
      "TRUNC",  "SETEXTATTR", "DELEXTATTR", "KML_TRUNC", "GET_FILEID"};
  auto n = static_cast<uint32_t>(op);
  if (n < std::size(kNames)) return kNames[n];
  return op == KmlOp::Content ? "CONTENT" : "UNKNOWN";
}

Result<std::string> kml_encode(const KmlRecord& rec) {
  if ((rec.version & kMajorMask) != (kKmlVersion & kMajorMask)) {
    return Error{-EINVAL, fmt::format("KML version {:#010x} is not 1.x", rec.version)};
  }
  std::string out;
  out.reserve(256);
  store_u32(out, 0);  // len, patched below
  store_u32(out, rec.version);
  store_u32(out, rec.pid);
  store_u32(out, rec.auid);
  store_u32(out, rec.fsuid);
  store_u32(out, rec.fsgid);
  store_u32(out, static_cast<uint32_t>(rec.opcode));
  store_u32(out, static_cast<uint32_t>(rec.groups.size()));
  for (uint32_t g : rec.groups) store_u32(out, g);

  // NOOP, reserved and unknown opcodes have no body we could write: only the
  // frame goes out, which is what a reader of such a record expects to skip.
  BodyEncoder body(out);
  visit_body(body, rec);
  if (!body.error().empty()) {
    return Error{-EINVAL, fmt::format("{}: {}", kml_op_name(rec.opcode), body.error())};
  }
  if (rec.opcode == KmlOp::DelExtAttr && !rec.value.empty()) {
    return Error{-EINVAL, "DELEXTATTR: a deleted attribute carries no value"};
  }
  body.finish();

  store_u32(out, rec.prevrec);
  store_u32(out, rec.recno);
  store_u32(out, rec.time);
  store_u32(out, 0);  // len, patched below
  if (out.size() > kKmlChunk) {
    return Error{-E2BIG, fmt::format("{} record of {} bytes exceeds the {}-byte chunk",
                                     kml_op_name(rec.opcode), out.size(), kKmlChunk)};
  }
  uint32_t len = htole32(static_cast<uint32_t>(out.size()));
  memcpy(out.data(), &len, sizeof len);
  memcpy(out.data() + out.size() - sizeof len, &len, sizeof len);
  return out;
}

Result<KmlRecord> kml_decode(std::string_view data, size_t* consumed) {
  if (consumed) *consumed = 0;
  if (data.size() < kKmlPrefixSize) {
    return bad_message(
        fmt::format("only {} bytes left, a record prefix needs {}", data.size(), kKmlPrefixSize));
  }
  const char* p = data.data();
  uint32_t len = load_u32(p);
  if (len < kKmlPrefixSize + kKmlSuffixSize) {
    return bad_message(fmt::format("record length {} is below the minimum of {}", len,
                                   kKmlPrefixSize + kKmlSuffixSize));
  }
  if (len % 4 != 0) return bad_message(fmt::format("record length {} is not a multiple of 4", len));
  if (len > kKmlChunk) {
    return bad_message(fmt::format("record length {} exceeds the {}-byte chunk", len, kKmlChunk));
  }
  if (len > data.size()) {
    return bad_message(
        fmt::format("record length {} runs past the end ({} bytes left)", len, data.size()));
  }

  KmlRecord rec;
  rec.version = load_u32(p + 4);
  if ((rec.version & kMajorMask) != (kKmlVersion & kMajorMask)) {
    return bad_message(fmt::format("version {:#010x} is not KML 1.x", rec.version));
  }
  const char* suffix = p + len - kKmlSuffixSize;
  if (uint32_t suffix_len = load_u32(suffix + 12); suffix_len != len) {
    return bad_message(
        fmt::format("suffix length {} does not match prefix length {}", suffix_len, len));
  }
  rec.pid = load_u32(p + 8);
  rec.auid = load_u32(p + 12);
  rec.fsuid = load_u32(p + 16);
  rec.fsgid = load_u32(p + 20);
  rec.opcode = static_cast<KmlOp>(load_u32(p + 24));
  uint32_t ngroups = load_u32(p + 28);
  size_t room = (len - kKmlPrefixSize - kKmlSuffixSize) / 4;
  if (ngroups > room) {
    return bad_message(fmt::format("{} groups do not fit in a record of {} bytes", ngroups, len));
  }
  rec.groups.resize(ngroups);
  for (uint32_t i = 0; i < ngroups; ++i) rec.groups[i] = load_u32(p + kKmlPrefixSize + 4 * i);
  rec.prevrec = load_u32(suffix);
  rec.recno = load_u32(suffix + 4);
  rec.time = load_u32(suffix + 8);

  size_t body_start = kKmlPrefixSize + 4 * size_t{ngroups};
  BodyDecoder body(data.substr(body_start, len - kKmlSuffixSize - body_start));
  if (visit_body(body, rec)) {
    size_t unused = body.finish();
    if (!body.error().empty()) {
      return bad_message(fmt::format("{}: {}", kml_op_name(rec.opcode), body.error()));
    }
    if (rec.opcode == KmlOp::DelExtAttr && !rec.value.empty()) {
      return bad_message(
          fmt::format("DELEXTATTR: a deleted attribute carries no value, this one has {} bytes",
                      rec.value.size()));
    }
    // Records of the version we write end exactly at the suffix; a later
    // minor version may append fields, which an older reader skips.
    if (unused != 0 && (rec.version & kMinorMask) <= (kKmlVersion & kMinorMask)) {
      return bad_message(
          fmt::format("{}: {} unused bytes before the suffix", kml_op_name(rec.opcode), unused));
    }
  }
  if (consumed) *consumed = len;
  return rec;
}

KmlScan kml_scan(std::string_view data, uint64_t base_offset) {
  KmlScan scan;
  scan.end_offset = base_offset;
  std::optional<uint32_t> last_recno;
  bool after_damage = false;
  size_t pos = 0;
  while (pos < data.size()) {
    if (data.size() - pos >= 4 && load_u32(data.data() + pos) == 0) {
      pos += 4;  // chunk padding
      continue;
    }
    size_t used = 0;
    Result<KmlRecord> rec = kml_decode(data.substr(pos), &used);
    if (rec.ok()) {
      uint32_t recno = rec->recno;
      // Right after a damaged stretch a gap is expected (the damage ate
      // records), so only the order is checked there.
      bool in_order =
          !last_recno || (after_damage ? recno > *last_recno : recno == *last_recno + 1);
      if (!in_order) {
        scan.problems.push_back(
            {base_offset + pos, fmt::format("recno {} follows {}", recno, *last_recno), false});
      }
      last_recno = recno;
      after_damage = false;
      scan.entries.push_back({base_offset + pos, std::move(rec.value())});
      pos += used;
      scan.end_offset = base_offset + pos;
      continue;
    }

    // Resynchronise at the next 4-byte position where a record decodes. If
    // there is none, everything from here on is unusable: that is what a
    // torn append leaves behind, and what KmlWriter::open cuts off.
    size_t next = pos + 4;
    while (next < data.size()) {
      if (data.size() - next >= 4 && load_u32(data.data() + next) != 0 &&
          kml_decode(data.substr(next), &used).ok()) {
        break;
      }
      next += 4;
    }
    bool torn = next >= data.size();
    scan.problems.push_back({base_offset + pos, rec.error().message, torn});
    after_damage = true;
    pos = next;
  }
  return scan;
}

}  // namespace intersync
