// Journal: KML writer with a record offset table; see journal.h.
#include "journal.h"

#include <unistd.h>

#include <cstring>

#include "intersync/log.h"

namespace intersync {

Status Journal::open(const std::string& path) {
  path_ = path;
  if (Status s = writer_.open(path); !s) return s;
  if (!writer_.repaired().empty()) log_warn("journal {}: {}", path, writer_.repaired());
  auto scan = kml_read_file(path);
  if (!scan) return scan.error();
  for (const auto& p : scan->problems) {
    log_warn("journal {}: offset {}: {}", path, p.offset, p.reason);
  }
  offsets_.clear();
  if (!scan->entries.empty()) first_recno_ = scan->entries.front().record.recno;
  for (const auto& e : scan->entries) {
    if (e.record.recno != first_recno_ + offsets_.size()) {
      return make_error(-EBADMSG, "journal " + path + ": record numbers jump from " +
                                      std::to_string(first_recno_ + offsets_.size() - 1) + " to " +
                                      std::to_string(e.record.recno));
    }
    offsets_.push_back(e.offset);
  }
  durable_head_ = writer_.last_recno();
  durable_end_ = writer_.end_offset();
  return {};
}

Result<uint64_t> Journal::append(KmlRecord& rec) {
  auto off = writer_.append(rec);
  if (!off) return off;
  if (offsets_.empty()) first_recno_ = rec.recno;
  offsets_.push_back(*off);
  return off;
}

Status Journal::sync() {
  if (writer_.last_recno() == durable_head_) return {};
  if (Status s = writer_.sync(); !s) return s;
  durable_head_ = writer_.last_recno();
  durable_end_ = writer_.end_offset();
  return {};
}

Result<std::string> Journal::read_after(uint32_t since, uint64_t max_bytes, uint32_t* last) const {
  *last = since;
  if (since >= durable_head_ || offsets_.empty()) return std::string();
  uint32_t first = std::max(since + 1, first_recno_);
  uint64_t begin = offsets_[first - first_recno_];
  // Extend record by record while within max_bytes (always at least one).
  uint32_t end_rec = first;
  auto end_of = [&](uint32_t r) {
    return r < durable_head_ ? offsets_[r + 1 - first_recno_] : durable_end_;
  };
  while (end_rec < durable_head_ && end_of(end_rec + 1) - begin <= max_bytes) ++end_rec;
  uint64_t end = end_of(end_rec);
  std::string out(end - begin, '\0');
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n =
        pread(writer_.fd(), out.data() + done, out.size() - done, static_cast<off_t>(begin + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return errno_error("journal " + path_ + ": read failed: " + strerror(errno));
    done += static_cast<size_t>(n);
  }
  *last = end_rec;
  return out;
}

Result<std::vector<KmlRecord>> Journal::records_after(uint32_t since) const {
  std::vector<KmlRecord> records;
  while (since < durable_head_) {
    uint32_t last = since;
    auto bytes = read_after(since, 1 << 20, &last);
    if (!bytes) return bytes.error();
    for (auto& e : kml_scan(*bytes).entries) records.push_back(std::move(e.record));
    since = last;
  }
  return records;
}

}  // namespace intersync
