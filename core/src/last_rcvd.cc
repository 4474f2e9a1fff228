// The last_rcvd file of a fileset: one 56-byte little-endian entry per peer
// saying how far that peer's log has been applied here, plus the all-zero
// uuid entry that holds this log's own truncated length. Entries are updated
// in place, one aligned 56-byte pwrite each, so that after a crash an entry is
// either its old or its new self and never a mix of two.
#include <endian.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cstring>

#include "intersync/kml.h"

namespace intersync {
namespace {

constexpr size_t kUuidSize = 16;

void put_u64(char* p, uint64_t v) {
  v = htole64(v);
  memcpy(p, &v, sizeof v);
}

uint64_t get_u64(const char* p) {
  uint64_t v;
  memcpy(&v, p, sizeof v);
  return le64toh(v);
}

// Reads the whole file from an open descriptor.
Result<std::string> read_all(int fd, const std::string& path) {
  std::string data;
  char buf[4096];
  for (;;) {
    ssize_t n = pread(fd, buf, sizeof buf, static_cast<off_t>(data.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_error(fmt::format("read {}", path));
    if (n == 0) return data;
    data.append(buf, static_cast<size_t>(n));
  }
}

// Decodes every whole entry. A partial entry at the end can only be a new
// peer's first entry whose append was interrupted: it never took effect, so
// it is ignored here and overwritten by the next update().
std::vector<LastRcvdEntry> decode_all(std::string_view data) {
  std::vector<LastRcvdEntry> entries;
  for (size_t pos = 0; data.size() - pos >= kLastRcvdEntrySize; pos += kLastRcvdEntrySize) {
    entries.push_back(last_rcvd_decode(data.substr(pos, kLastRcvdEntrySize)).value());
  }
  return entries;
}

}  // namespace

std::string last_rcvd_encode(const LastRcvdEntry& e) {
  std::string out(kLastRcvdEntrySize, '\0');
  char* p = out.data();
  memcpy(p, e.uuid.data(), kUuidSize);
  put_u64(p + 16, e.remote_recno);
  put_u64(p + 24, e.remote_offset);
  put_u64(p + 32, e.local_recno);
  put_u64(p + 40, e.local_offset);
  put_u64(p + 48, e.last_ctime);
  return out;
}

Result<LastRcvdEntry> last_rcvd_decode(std::string_view bytes) {
  if (bytes.size() != kLastRcvdEntrySize) {
    return Error{-EBADMSG, fmt::format("last_rcvd entry of {} bytes, expected {}", bytes.size(),
                                       kLastRcvdEntrySize)};
  }
  const char* p = bytes.data();
  LastRcvdEntry e;
  memcpy(e.uuid.data(), p, kUuidSize);
  e.remote_recno = get_u64(p + 16);
  e.remote_offset = get_u64(p + 24);
  e.local_recno = get_u64(p + 32);
  e.local_offset = get_u64(p + 40);
  e.last_ctime = get_u64(p + 48);
  return e;
}

Result<std::vector<LastRcvdEntry>> last_rcvd_read(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_error(fmt::format("open {}", path));
  auto data = read_all(fd, path);
  ::close(fd);
  if (!data.ok()) return data.error();
  return decode_all(*data);
}

Status last_rcvd_update(const std::string& path, const LastRcvdEntry& entry) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return errno_error(fmt::format("open {}", path));
  auto finish = [fd](Status st) {
    ::close(fd);
    return st;
  };
  auto data = read_all(fd, path);
  if (!data.ok()) return finish(data.error());
  std::vector<LastRcvdEntry> entries = decode_all(*data);

  size_t slot = 0;
  while (slot < entries.size() && entries[slot].uuid != entry.uuid) ++slot;
  std::string bytes = last_rcvd_encode(entry);
  off_t offset = static_cast<off_t>(slot * kLastRcvdEntrySize);
  ssize_t n;
  do {
    n = pwrite(fd, bytes.data(), bytes.size(), offset);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return finish(errno_error(fmt::format("write {} at offset {}", path, offset)));
  if (static_cast<size_t>(n) != bytes.size()) {
    return finish(Error{-EIO, fmt::format("short write to {} at offset {}", path, offset)});
  }
  if (fdatasync(fd) != 0) return finish(errno_error(fmt::format("fdatasync {}", path)));
  return finish(Status::Ok());
}

}  // namespace intersync
