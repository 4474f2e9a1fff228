// The KML file of a fileset: KmlWriter appends records for the one process
// that owns the log, and kml_read_file reads a whole log for the others.
//
// Opening finds the last good record the way the original module did, by
// scanning back from the end of the file, so a large healthy log costs a few
// reads. Only when the tail does not end in a whole record (a crash during an
// append) is part of the file scanned forward to find where the good records
// stop; the bytes after them are cut off and the cut is reported in
// repaired(). Records never cross a 64 KiB boundary of the file, which the
// writer ensures by zero-filling the rest of a chunk before a record that
// would not fit.
#include <endian.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <ctime>
#include <utility>

#include "intersync/kml.h"

namespace intersync {
namespace {

// Reads exactly `len` bytes at `offset` (fewer only at end of file).
Result<std::string> read_at(int fd, uint64_t offset, size_t len, const std::string& path) {
  std::string buf(len, '\0');
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, buf.data() + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_error(fmt::format("read {} at offset {}", path, offset + done));
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  buf.resize(done);
  return buf;
}

Status write_at(int fd, uint64_t offset, std::string_view data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n =
        pwrite(fd, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_error(fmt::format("write {} at offset {}", path, offset + done));
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

// Where the good records of a log file end (a physical offset), the recno of
// the last one, and where the damaged bytes after them start.
struct LogTail {
  uint64_t good_end = 0;
  uint32_t recno = 0;
  uint64_t damage = 0;
};

// The end of the last non-zero 4-byte word before `end`, read backwards one
// chunk at a time; 0 if there is none. A file whose size is not a multiple
// of 4 ends in a partial word, which counts as non-zero: no writer leaves one.
Result<uint64_t> last_data_end(int fd, uint64_t end, const std::string& path) {
  if (end % 4 != 0) return end;
  while (end > 0) {
    uint64_t start = end > kKmlChunk ? end - kKmlChunk : 0;
    auto block = read_at(fd, start, end - start, path);
    if (!block.ok()) return block.error();
    for (size_t i = block->size(); i >= 4; i -= 4) {
      uint32_t word;
      memcpy(&word, block->data() + i - 4, sizeof word);
      if (word != 0) return start + i;
    }
    end = start;
  }
  return uint64_t{0};
}

// The record that ends at `tail`, if a whole and valid one does: its suffix
// names its length, and the record that length points back to must decode
// to exactly that length.
Result<std::optional<LogTail>> record_ending_at(int fd, uint64_t tail, const std::string& path) {
  if (tail < kKmlPrefixSize + kKmlSuffixSize || tail % 4 != 0) return std::optional<LogTail>();
  auto suffix = read_at(fd, tail - kKmlSuffixSize, kKmlSuffixSize, path);
  if (!suffix.ok()) return suffix.error();
  uint32_t len;
  memcpy(&len, suffix->data() + 12, sizeof len);
  len = le32toh(len);
  if (len < kKmlPrefixSize + kKmlSuffixSize || len > kKmlChunk || len > tail) {
    return std::optional<LogTail>();
  }
  auto bytes = read_at(fd, tail - len, len, path);
  if (!bytes.ok()) return bytes.error();
  size_t used = 0;
  auto rec = kml_decode(*bytes, &used);
  if (!rec.ok() || used != len) return std::optional<LogTail>();
  return std::optional<LogTail>(LogTail{tail, rec->recno, tail});
}

// Forward scan of [start, end), which does not end in a whole record, for
// the last good record in it. The scan's last problem is the torn tail that
// follows that record. With `from_file_start` a range without any good
// record is an answer too: the log holds no record at all.
Result<std::optional<LogTail>> last_record_in(int fd, uint64_t start, uint64_t end,
                                              bool from_file_start, const std::string& path) {
  auto bytes = read_at(fd, start, end - start, path);
  if (!bytes.ok()) return bytes.error();
  KmlScan scan = kml_scan(*bytes, start);
  if (scan.entries.empty() && !from_file_start) return std::optional<LogTail>();
  LogTail tail;
  tail.good_end = scan.end_offset;
  tail.recno = scan.entries.empty() ? 0 : scan.entries.back().record.recno;
  tail.damage = scan.problems.empty() ? end : scan.problems.back().offset;
  return std::optional<LogTail>(tail);
}

}  // namespace

KmlWriter::KmlWriter(KmlWriter&& other) noexcept {
  *this = std::move(other);
}

KmlWriter& KmlWriter::operator=(KmlWriter&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
    base_offset_ = other.base_offset_;
    end_offset_ = other.end_offset_;
    last_recno_ = other.last_recno_;
    repaired_ = std::move(other.repaired_);
  }
  return *this;
}

KmlWriter::~KmlWriter() {
  close();
}

void KmlWriter::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Status KmlWriter::open(const std::string& path, uint64_t base_offset) {
  close();
  repaired_.clear();
  path_ = path;
  base_offset_ = base_offset;
  last_recno_ = 0;
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return errno_error(fmt::format("open {}", path));
  auto fail = [fd](Error err) {
    ::close(fd);
    return err;
  };
  struct stat st;
  if (fstat(fd, &st) != 0) return fail(errno_error(fmt::format("stat {}", path)));
  uint64_t size = static_cast<uint64_t>(st.st_size);

  // The common case: the file ends in a whole record, possibly followed by
  // chunk padding. Otherwise the good records end somewhere before the last
  // data: first look in the tail's own chunk, which holds the torn record,
  // and only if no whole record starts there scan the file from the start.
  auto tail = last_data_end(fd, size, path);
  if (!tail.ok()) return fail(tail.error());
  if (*tail > 0) {
    auto found = record_ending_at(fd, *tail, path);
    if (!found.ok()) return fail(found.error());
    if (!*found) {
      uint64_t chunk_start = (*tail - 1) / kKmlChunk * kKmlChunk;
      found = last_record_in(fd, chunk_start, *tail, chunk_start == 0, path);
      if (found.ok() && !*found) found = last_record_in(fd, 0, *tail, true, path);
      if (!found.ok()) return fail(found.error());
      LogTail cut = **found;
      // An interrupted append damages one record, which lies inside one
      // chunk. Damage that starts in an earlier chunk is something else (a
      // wrong file, a corrupted disk) and is left for a human to look at.
      if (cut.damage < chunk_start) {
        return fail(Error{-EBADMSG, fmt::format("{}: damaged from offset {} to the end, more than "
                                                "a torn append; not cutting it",
                                                path, base_offset + cut.damage)});
      }
      if (ftruncate(fd, static_cast<off_t>(cut.good_end)) != 0) {
        return fail(errno_error(fmt::format("truncate {} to {} bytes", path, cut.good_end)));
      }
      repaired_ = fmt::format("cut {} torn bytes at offset {}", size - cut.good_end,
                              base_offset + cut.good_end);
      size = cut.good_end;
    }
    last_recno_ = (*found)->recno;
  }
  fd_ = fd;
  end_offset_ = base_offset + size;
  return Status::Ok();
}

Result<uint64_t> KmlWriter::append(KmlRecord& rec) {
  if (fd_ < 0) return Error{-EBADF, fmt::format("append to {}: log is not open", path_)};
  KmlRecord out = rec;
  out.recno = last_recno_ + 1;
  if (out.time == 0) out.time = static_cast<uint32_t>(::time(nullptr));
  auto bytes = kml_encode(out);
  if (!bytes.ok()) {
    return Error{bytes.error().code, fmt::format("append to {}: {}", path_, bytes.error().message)};
  }

  // A record that does not fit in the rest of the current chunk starts the
  // next one; padding and record go out in one write.
  uint64_t pos = end_offset_ - base_offset_;
  size_t room = kKmlChunk - pos % kKmlChunk;
  size_t pad = bytes->size() > room ? room : 0;
  std::string buf(pad, '\0');
  buf += *bytes;
  if (Status st = write_at(fd_, pos, buf, path_); !st.ok()) {
    // Take back a partial write so the log still ends in a whole record;
    // if even that fails, the next open() finds and cuts the torn tail.
    if (ftruncate(fd_, static_cast<off_t>(pos)) != 0) {
      return Error{st.error().code, st.error().message + " (and the partial record remains)"};
    }
    return st.error();
  }
  end_offset_ += buf.size();
  last_recno_ = out.recno;
  rec.recno = out.recno;
  rec.time = out.time;
  return base_offset_ + pos + pad;
}

Status KmlWriter::sync() {
  if (fd_ < 0) return Error{-EBADF, fmt::format("sync {}: log is not open", path_)};
  if (fdatasync(fd_) != 0) return errno_error(fmt::format("fdatasync {}", path_));
  return Status::Ok();
}

Result<KmlScan> kml_read_file(const std::string& path, uint64_t base_offset) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_error(fmt::format("open {}", path));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    Error err = errno_error(fmt::format("stat {}", path));
    ::close(fd);
    return err;
  }
  auto bytes = read_at(fd, 0, static_cast<size_t>(st.st_size), path);
  ::close(fd);
  if (!bytes.ok()) return bytes.error();
  return kml_scan(*bytes, base_offset);
}

}  // namespace intersync
