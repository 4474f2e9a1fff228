// The position file of the kml backend: how far into the KML core has made
// the backend's changes durable, so that a restart replays exactly what
// follows. It sits next to the log (`<log>.position` by default, so
// `.intermezzo/<fset>/kml.position` on an izofs mount).
//
// Format: one 56-byte entry in the layout of a last_rcvd entry (KML.md),
// little-endian, so the same tools can print it:
//   uuid[16]       "intersync-kmlpos" (marks the file; anything else is refused)
//   remote_recno   recno of the last record delivered and durable (0 = none yet)
//   remote_offset  its logical offset
//   local_recno    0 (unused)
//   local_offset   logical offset just past that record: reading resumes here
//   last_ctime     seconds since the epoch when it was saved
// An empty file means "no position saved yet".
//
// The entry is rewritten in place with one 56-byte pwrite at offset 0, which
// lies in one sector, so after a crash it is the old or the new entry, never
// a mix. It is not fsynced: core's journal is durable before a position is
// written, and a position that reaches the disk late only makes a restart
// replay a few more records, which core applies idempotently.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "intersync/result.h"

namespace intersync {

struct KmlPosition {
  uint32_t recno = 0;   // last record consumed; 0 = before the first record
  uint64_t offset = 0;  // its logical offset; == end when there is no such record
  uint64_t end = 0;     // logical offset just past it
  bool operator==(const KmlPosition&) const = default;
};

class KmlPositionFile {
 public:
  KmlPositionFile() = default;
  KmlPositionFile(const KmlPositionFile&) = delete;
  KmlPositionFile& operator=(const KmlPositionFile&) = delete;
  ~KmlPositionFile() { close(); }

  // Opens `path` for reading and writing, creating it (empty) if missing.
  Status open(const std::string& path);
  void close();
  bool is_open() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }

  // The saved position; nullopt when none was saved yet (empty file). An
  // error when the file cannot be read or is not a position file.
  Result<std::optional<KmlPosition>> load() const;
  Status save(const KmlPosition& pos);

 private:
  int fd_ = -1;
  std::string path_;
};

}  // namespace intersync
