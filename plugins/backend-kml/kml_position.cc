// The kml backend's position file; see kml_position.h.
#include "kml_position.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>

#include "intersync/kml.h"

namespace intersync {
namespace {

constexpr char kMagic[] = "intersync-kmlpos";
static_assert(sizeof kMagic - 1 == 16, "the magic fills the uuid field");

Error sys_error(const std::string& what) {
  const int err = errno;
  return Error{-err, fmt::format("{}: {}", what, std::strerror(err))};
}

}  // namespace

Status KmlPositionFile::open(const std::string& path) {
  close();
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return sys_error(fmt::format("cannot open the position file {}", path));
  fd_ = fd;
  path_ = path;
  return Status::Ok();
}

void KmlPositionFile::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Result<std::optional<KmlPosition>> KmlPositionFile::load() const {
  if (fd_ < 0) return Error{-EBADF, fmt::format("the position file {} is not open", path_)};
  char buf[kLastRcvdEntrySize + 1];
  ssize_t n;
  do {
    n = ::pread(fd_, buf, sizeof buf, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return sys_error(fmt::format("cannot read the position file {}", path_));
  if (n == 0) return std::optional<KmlPosition>();
  if (static_cast<size_t>(n) != kLastRcvdEntrySize) {
    return Error{-EBADMSG, fmt::format("the position file {} holds {}{} bytes instead of {}", path_,
                                       n, static_cast<size_t>(n) > kLastRcvdEntrySize ? "+" : "",
                                       kLastRcvdEntrySize)};
  }
  Result<LastRcvdEntry> entry = last_rcvd_decode(std::string_view(buf, kLastRcvdEntrySize));
  if (!entry.ok()) return Error{-EBADMSG, fmt::format("{}: {}", path_, entry.error().message)};
  if (std::memcmp(entry->uuid.data(), kMagic, entry->uuid.size()) != 0) {
    return Error{-EBADMSG, fmt::format("{} is not a kml position file", path_)};
  }
  KmlPosition pos;
  pos.recno = static_cast<uint32_t>(entry->remote_recno);
  pos.offset = entry->remote_offset;
  pos.end = entry->local_offset;
  if (entry->remote_recno > UINT32_MAX || pos.end < pos.offset) {
    return Error{-EBADMSG, fmt::format("the position file {} is inconsistent (record {} at "
                                       "offset {}, ending at {})",
                                       path_, entry->remote_recno, pos.offset, pos.end)};
  }
  return std::optional<KmlPosition>(pos);
}

Status KmlPositionFile::save(const KmlPosition& pos) {
  if (fd_ < 0) return Error{-EBADF, fmt::format("the position file {} is not open", path_)};
  LastRcvdEntry entry;
  std::memcpy(entry.uuid.data(), kMagic, entry.uuid.size());
  entry.remote_recno = pos.recno;
  entry.remote_offset = pos.offset;
  entry.local_offset = pos.end;
  entry.last_ctime = static_cast<uint64_t>(::time(nullptr));
  const std::string bytes = last_rcvd_encode(entry);
  ssize_t n;
  do {
    n = ::pwrite(fd_, bytes.data(), bytes.size(), 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return sys_error(fmt::format("cannot write the position file {}", path_));
  if (static_cast<size_t>(n) != bytes.size()) {
    return Error{-EIO, fmt::format("short write to the position file {}", path_)};
  }
  return Status::Ok();
}

}  // namespace intersync
