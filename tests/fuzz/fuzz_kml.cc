// libFuzzer target for the KML record codec (intersync/kml.h): kml_decode on
// arbitrary bytes, kml_scan over them as a whole log, and last_rcvd_decode.
// Beyond "no crash, no sanitizer report" it checks that a record that
// decodes re-encodes and decodes to the same record, and that a scan's
// entries are exactly what kml_decode finds at their offsets.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "fuzz_check.h"
#include "intersync/kml.h"

using namespace intersync;

namespace {

// kml_decode on its own, and the round trip through kml_encode.
void check_record(std::string_view data) {
  size_t consumed = 12345;
  Result<KmlRecord> rec = kml_decode(data, &consumed);
  if (!rec) {
    CHECK(consumed == 0);
    CHECK(rec.error().code == -EBADMSG);
    CHECK(!rec.error().message.empty());
    return;
  }
  CHECK(consumed >= kKmlPrefixSize + kKmlSuffixSize);
  CHECK(consumed <= data.size() && consumed <= kKmlChunk);
  CHECK(consumed % 4 == 0);
  (void)kml_op_name(rec->opcode);

  // What the decoder accepts, the encoder writes.
  Result<std::string> bytes = kml_encode(*rec);
  CHECK(bytes.ok(), bytes.ok() ? std::string() : bytes.error().message);
  // The encoding is never longer than what was decoded: strings keep their
  // padded length and only a newer minor version's extra fields are lost.
  CHECK(bytes->size() <= consumed);
  CHECK(bytes->size() % 4 == 0);
  size_t again_consumed = 0;
  Result<KmlRecord> again = kml_decode(*bytes, &again_consumed);
  CHECK(again.ok(), again.ok() ? std::string() : again.error().message);
  CHECK(again_consumed == bytes->size());
  CHECK(*again == *rec, "re-decoded record differs");
  Result<std::string> bytes2 = kml_encode(*again);
  CHECK(bytes2.ok() && *bytes2 == *bytes, "encoding is not deterministic");
}

// kml_scan: entries in order, inside the buffer, and equal to what
// kml_decode reads at their offsets.
void check_scan(std::string_view data, uint64_t base) {
  KmlScan scan = kml_scan(data, base);
  CHECK(scan.end_offset >= base && scan.end_offset <= base + data.size());
  uint64_t next_free = base;
  for (const KmlEntry& e : scan.entries) {
    CHECK(e.offset >= next_free && e.offset < base + data.size());
    size_t used = 0;
    Result<KmlRecord> rec = kml_decode(data.substr(e.offset - base), &used);
    CHECK(rec.ok(), "a scanned entry does not decode at its offset");
    CHECK(*rec == e.record, "a scanned entry differs from its decoding");
    next_free = e.offset + used;
  }
  CHECK(scan.end_offset == next_free, "end_offset is not just past the last entry");
  uint64_t last_problem = 0;
  bool torn_seen = false;
  for (const KmlProblem& p : scan.problems) {
    CHECK(p.offset >= base && p.offset < base + data.size());
    CHECK(p.offset >= last_problem);
    CHECK(!torn_seen, "a problem follows the torn tail");
    CHECK(!p.reason.empty());
    last_problem = p.offset;
    torn_seen = p.torn_tail;
  }
  if (torn_seen) CHECK(scan.problems.back().offset >= scan.end_offset);
}

void check_last_rcvd(std::string_view data) {
  Result<LastRcvdEntry> e = last_rcvd_decode(data);
  if (data.size() != kLastRcvdEntrySize) {
    CHECK(!e.ok(), "last_rcvd_decode accepted a wrong size");
    return;
  }
  CHECK(e.ok());
  CHECK(last_rcvd_encode(*e) == data, "last_rcvd round trip differs");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  check_record(bytes);
  check_scan(bytes, 0);
  // A log whose head was truncated starts at a non-zero logical offset.
  if (size >= 4) check_scan(bytes.substr(4), 1u << 20);
  check_last_rcvd(bytes.substr(0, kLastRcvdEntrySize));
  return 0;
}
