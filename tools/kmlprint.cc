// kmlprint: prints the records of a KML file, one line each, as text or as
// JSON, and reports damaged records on stderr without stopping. With
// --follow it keeps printing records as they are appended, like tail -f.
// Offsets are logical: the base is taken from the all-zero-uuid entry of the
// last_rcvd file beside the log unless --base says otherwise.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "intersync/kml.h"

namespace {

using intersync::KmlEntry;
using intersync::KmlOp;
using intersync::KmlRecord;
using intersync::KmlRollback;
using intersync::KmlVersion;
using Json = nlohmann::ordered_json;

// Quotes a string for the text output. Control bytes are escaped so that a
// hostile file name cannot drive the terminal; other bytes pass, which keeps
// UTF-8 names readable.
std::string quote(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

std::string to_hex(std::string_view bytes) {
  std::string out;
  for (unsigned char c : bytes) out += fmt::format("{:02x}", c);
  return out;
}

std::string iso_time(uint32_t t) {
  time_t tt = t;
  struct tm tm;
  gmtime_r(&tt, &tm);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// The named fields of one record, each rendered once for the text line and
// once for JSON, in the order the text line shows them: strings first, then
// numbers, then versions.
class Fields {
 public:
  void num(const char* name, uint64_t v) { add(name, v, std::to_string(v)); }
  void octal(const char* name, uint32_t v) { add(name, v, fmt::format("{:#o}", v)); }
  void hexnum(const char* name, uint32_t v) { add(name, v, fmt::format("{:#x}", v)); }
  void str(const char* name, const std::string& s) { add(name, s, quote(s)); }
  // Binary data (xattr values, hashes) is hex in JSON, which has no bytes.
  void bytes(const char* name, std::string_view b, bool quoted) {
    add(name, to_hex(b), quoted ? quote(b) : to_hex(b));
  }
  void version(const char* name, const KmlVersion& v) {
    Json j = {{"mtime_sec", v.mtime_sec},
              {"mtime_nsec", v.mtime_nsec},
              {"ctime_sec", v.ctime_sec},
              {"ctime_nsec", v.ctime_nsec},
              {"size", v.size}};
    add(name, j,
        fmt::format("{{mtime={}.{:09},ctime={}.{:09},size={}}}", v.mtime_sec, v.mtime_nsec,
                    v.ctime_sec, v.ctime_nsec, v.size));
  }
  void rollback(const char* name, const KmlRollback& rb) {
    Json j = {{"mode", rb.mode}, {"rdev", rb.rdev}, {"uid", rb.uid}, {"gid", rb.gid}};
    add(name, j,
        fmt::format("{{mode={:#o},rdev={},uid={},gid={}}}", rb.mode, rb.rdev, rb.uid, rb.gid));
  }

  std::string text() const {
    std::string out;
    for (const auto& f : fields_) out += fmt::format(" {}={}", f.name, f.text);
    return out;
  }
  void to_json(Json& j) const {
    for (const auto& f : fields_) j[f.name] = f.json;
  }

 private:
  struct Field {
    const char* name;
    Json json;
    std::string text;
  };
  void add(const char* name, Json json, std::string text) {
    fields_.push_back({name, std::move(json), std::move(text)});
  }
  std::vector<Field> fields_;
};

// Names every body field of the record's opcode by its role.
Fields body_fields(const KmlRecord& r) {
  Fields f;
  switch (r.opcode) {
    case KmlOp::Create:
    case KmlOp::Mkdir:
      f.str("path", r.path);
      f.octal("mode", r.mode);
      f.num("uid", r.uid);
      f.num("gid", r.gid);
      f.version("parent_old", r.v_parent_old);
      f.version("parent_new", r.v_parent_new);
      f.version("obj_new", r.v_obj_new);
      break;
    case KmlOp::Unlink:
    case KmlOp::Rmdir:
      f.str("dir", r.dir);
      f.str("name", r.name);
      if (r.opcode == KmlOp::Unlink) f.str("old_target", r.target);
      f.rollback("rollback", r.rollback);
      f.version("dir_old", r.v_parent_old);
      f.version("dir_new", r.v_parent_new);
      f.version("obj_old", r.v_obj_old);
      break;
    case KmlOp::Close:
      f.str("path", r.path);
      f.octal("open_mode", r.open_mode);
      f.num("open_uid", r.open_uid);
      f.num("open_gid", r.open_gid);
      f.num("ino", r.ino);
      f.num("generation", r.generation);
      f.version("old", r.v_obj_old);
      f.version("new", r.v_obj_new);
      break;
    case KmlOp::Symlink:
      f.str("path", r.path);
      f.str("target", r.target);
      f.num("uid", r.uid);
      f.num("gid", r.gid);
      f.version("parent_old", r.v_parent_old);
      f.version("parent_new", r.v_parent_new);
      f.version("obj_new", r.v_obj_new);
      break;
    case KmlOp::Rename:
      f.str("src", r.src);
      f.str("tgt", r.target);
      f.version("srcdir_old", r.v_parent_old);
      f.version("srcdir_new", r.v_parent_new);
      f.version("tgtdir_old", r.v_tgtdir_old);
      f.version("tgtdir_new", r.v_tgtdir_new);
      break;
    case KmlOp::Setattr:
      f.str("path", r.path);
      f.hexnum("valid", r.valid);
      f.octal("mode", r.mode);
      f.num("uid", r.uid);
      f.num("gid", r.gid);
      f.num("size", r.size);
      f.num("mtime_sec", r.mtime_sec);
      f.num("mtime_nsec", r.mtime_nsec);
      f.num("ctime_sec", r.ctime_sec);
      f.num("ctime_nsec", r.ctime_nsec);
      f.hexnum("flags", r.flags);
      f.version("old", r.v_obj_old);
      f.rollback("rollback", r.rollback);
      break;
    case KmlOp::Link:
      f.str("src", r.src);
      f.str("tgt", r.target);
      f.version("parent_old", r.v_parent_old);
      f.version("parent_new", r.v_parent_new);
      f.version("obj_new", r.v_obj_new);
      break;
    case KmlOp::Mknod:
      f.str("path", r.path);
      f.octal("mode", r.mode);
      f.num("uid", r.uid);
      f.num("gid", r.gid);
      f.num("major", r.major);
      f.num("minor", r.minor);
      f.version("parent_old", r.v_parent_old);
      f.version("parent_new", r.v_parent_new);
      f.version("obj_new", r.v_obj_new);
      break;
    case KmlOp::SetExtAttr:
    case KmlOp::DelExtAttr:
      f.str("path", r.path);
      f.str("name", r.name);
      if (r.opcode == KmlOp::SetExtAttr) f.bytes("value", r.value, true);
      f.hexnum("flags", r.flags);
      f.octal("mode", r.mode);
      f.version("old", r.v_obj_old);
      f.version("new", r.v_obj_new);
      break;
    case KmlOp::Content:
      f.str("path", r.path);
      f.num("size", r.size);
      f.octal("mode", r.mode);
      f.num("nchunks", r.nchunks);
      f.bytes("hash", {reinterpret_cast<const char*>(r.hash.data()), r.hash.size()}, false);
      f.version("new", r.v_obj_new);
      break;
    case KmlOp::Noop:
      break;
  }
  return f;
}

std::string op_label(KmlOp op) {
  std::string name = intersync::kml_op_name(op);
  if (name == "UNKNOWN") name += fmt::format("({})", static_cast<uint32_t>(op));
  return name;
}

void print_text(const KmlEntry& e) {
  const KmlRecord& r = e.record;
  std::string line =
      fmt::format("#{} @{} {} time={} pid={} auid={} fsuid={} fsgid={}", r.recno, e.offset,
                  op_label(r.opcode), iso_time(r.time), r.pid, r.auid, r.fsuid, r.fsgid);
  if (!r.groups.empty()) line += fmt::format(" groups={}", fmt::join(r.groups, ","));
  if (r.version != intersync::kKmlVersion) line += fmt::format(" version={:#010x}", r.version);
  if (r.prevrec != 0) line += fmt::format(" prevrec={}", r.prevrec);
  line += body_fields(r).text();
  std::puts(line.c_str());
}

void print_json(const KmlEntry& e) {
  const KmlRecord& r = e.record;
  Json j = {{"recno", r.recno},
            {"offset", e.offset},
            {"op", intersync::kml_op_name(r.opcode)},
            {"opcode", static_cast<uint32_t>(r.opcode)},
            {"version", r.version},
            {"time", r.time},
            {"pid", r.pid},
            {"auid", r.auid},
            {"fsuid", r.fsuid},
            {"fsgid", r.fsgid},
            {"groups", r.groups},
            {"prevrec", r.prevrec}};
  body_fields(r).to_json(j);
  // Paths are bytes, not necessarily UTF-8; an invalid sequence is replaced
  // rather than aborting the whole listing.
  std::puts(j.dump(-1, ' ', false, Json::error_handler_t::replace).c_str());
}

// Everything from `pos` to the end of the file.
std::optional<std::string> read_from(int fd, uint64_t pos) {
  std::string data;
  char buf[65536];
  for (;;) {
    ssize_t n = pread(fd, buf, sizeof buf, static_cast<off_t>(pos + data.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return std::nullopt;
    if (n == 0) return data;
    data.append(buf, static_cast<size_t>(n));
  }
}

// The logical offset of the log's first byte: its truncated length, kept in
// the all-zero-uuid entry of last_rcvd in the same directory.
uint64_t base_from_last_rcvd(const std::string& file) {
  std::string path = (std::filesystem::path(file).parent_path() / "last_rcvd").string();
  auto entries = intersync::last_rcvd_read(path);
  if (!entries.ok()) {
    if (entries.error().code != -ENOENT) {
      fmt::print(stderr, "kmlprint: {}; offsets start at 0\n", entries.error().message);
    }
    return 0;
  }
  for (const auto& e : *entries) {
    if (e.uuid == decltype(e.uuid){}) return e.local_offset;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Prints the records of an InterMezzo KML (modification log) file."};
  bool json = false;
  bool follow = false;
  uint32_t from = 0;
  std::optional<uint64_t> base;
  std::string file;
  app.add_flag("--json", json,
               "One JSON object per record; binary data (xattr values, hashes) as hex");
  app.add_option("--from", from, "Print records from this recno on");
  app.add_flag("--follow", follow,
               "Keep printing records as they are appended; an incomplete record at the end is "
               "awaited, not reported");
  app.add_option("--base", base,
                 "Logical offset of the file's first byte (default: from last_rcvd beside FILE)");
  app.add_option("FILE", file, "The kml file")->required();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  int fd = open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    fmt::print(stderr, "kmlprint: {}: {}\n", file, strerror(errno));
    return 2;
  }
  // The watch is set before the first read so that no append between the
  // read and the wait goes unnoticed.
  int ifd = -1;
  if (follow) {
    ifd = inotify_init1(IN_CLOEXEC);
    if (ifd < 0 || inotify_add_watch(ifd, file.c_str(), IN_MODIFY) < 0) {
      fmt::print(stderr, "kmlprint: {}: cannot watch: {}\n", file, strerror(errno));
      return 2;
    }
  }
  uint64_t base_offset = base ? *base : base_from_last_rcvd(file);

  bool found_problem = false;
  uint64_t pos = 0;  // physical offset up to which records have been printed
  for (;;) {
    auto data = read_from(fd, pos);
    if (!data) {
      fmt::print(stderr, "kmlprint: {}: read at offset {}: {}\n", file, pos, strerror(errno));
      return 2;
    }
    intersync::KmlScan scan = intersync::kml_scan(*data, base_offset + pos);
    for (const auto& e : scan.entries) {
      if (e.record.recno < from) continue;
      if (json) {
        print_json(e);
      } else {
        print_text(e);
      }
    }
    std::fflush(stdout);
    for (const auto& p : scan.problems) {
      if (follow && p.torn_tail) continue;
      fmt::print(stderr, "kmlprint: {}: offset {}: bad record: {}{}\n", file, p.offset, p.reason,
                 p.torn_tail ? " (torn tail)" : "");
      found_problem = true;
    }
    if (!follow) break;

    pos = scan.end_offset - base_offset;
    alignas(struct inotify_event) char events[4096];
    ssize_t n;
    do {
      n = read(ifd, events, sizeof events);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      fmt::print(stderr, "kmlprint: {}: waiting for changes: {}\n", file, strerror(errno));
      return 2;
    }
  }
  close(fd);
  return found_problem ? 1 : 0;
}
