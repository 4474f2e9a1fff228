// The fileset's KML as izofs writes it: one KmlWriter behind a mutex, so
// that the records of every FUSE worker thread go out whole and in order,
// each with one write(2) before the operation it describes returns.
//
// Durability is group-committed, never one fsync per operation: sync() runs
// one fdatasync for everything appended so far, and callers that arrive
// while one runs wait for it and share the next; a background thread syncs
// within `max_delay` of the oldest record not yet durable; stop() syncs
// what is left.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

#include "intersync/kml.h"
#include "intersync/result.h"

namespace izofs {

class GroupCommitLog {
 public:
  GroupCommitLog() = default;
  GroupCommitLog(const GroupCommitLog&) = delete;
  GroupCommitLog& operator=(const GroupCommitLog&) = delete;
  ~GroupCommitLog();

  // Opens the log (cutting a torn tail, which `repaired()` then describes).
  intersync::Status open(const std::string& path);
  const std::string& repaired() const { return writer_.repaired(); }

  // Appends `rec` (setting its recno and time) with one write(2).
  intersync::Status append(intersync::KmlRecord& rec);
  // Returns once every record appended before the call is durable.
  intersync::Status sync();

  // Starts the background thread (after fork: fuse_daemonize).
  void start(std::chrono::milliseconds max_delay);
  // Stops the background thread and makes every record durable.
  intersync::Status stop();

 private:
  void sync_in_background(std::chrono::milliseconds max_delay);

  std::mutex mutex_;
  std::condition_variable became_dirty_;  // to the background thread
  std::condition_variable sync_done_;     // to callers of sync() waiting for one running
  intersync::KmlWriter writer_;
  uint64_t appended_ = 0;  // records appended since open
  uint64_t durable_ = 0;   // of those, how many an fdatasync has covered
  bool syncing_ = false;
  bool stopping_ = false;
  std::chrono::steady_clock::time_point oldest_not_durable_;
  std::thread thread_;
};

}  // namespace izofs
