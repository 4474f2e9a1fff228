// A fileset's journal as the server uses it: the KML writer plus a table of
// every record's logical offset, so that "records after N" is one pread of a
// contiguous byte range. Appends are group-committed: append() many, then
// sync() once (one fdatasync), and only synced records are served.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "intersync/kml.h"
#include "intersync/result.h"

namespace intersync {

class Journal {
 public:
  // Opens (repairing a torn tail) and indexes the existing records.
  Status open(const std::string& path);
  Result<uint64_t> append(KmlRecord& rec);
  Status sync();

  uint32_t head() const { return durable_head_; }  // last durable recno
  uint32_t last_appended() const { return writer_.last_recno(); }
  bool all_durable() const { return head() == last_appended(); }
  // Bytes of records (since, ...], at least one record when any exists,
  // otherwise at most `max_bytes`. Sets *last to the last recno included.
  Result<std::string> read_after(uint32_t since, uint64_t max_bytes, uint32_t* last) const;
  // The durable records after `since`, decoded (a damaged one, reported
  // when the journal was opened, is left out).
  Result<std::vector<KmlRecord>> records_after(uint32_t since) const;
  const std::string& path() const { return path_; }

 private:
  KmlWriter writer_;
  std::string path_;
  uint32_t first_recno_ = 1;
  std::vector<uint64_t> offsets_;  // offsets_[r - first_recno_] = logical offset of record r
  uint32_t durable_head_ = 0;
  uint64_t durable_end_ = 0;
};

}  // namespace intersync
