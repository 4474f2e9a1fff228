// The server's staging of uploads: a write-back client PUTs the content of a
// file as `<fileset>/.intermezzo/<fset>/tmp/up-<content id>.part`, renamed
// to `up-<content id>` once complete, before it reintegrates the record that
// uses it. A client that never comes back leaves those files behind, so the
// server removes the ones untouched for longer than kAbandonedUploadAge.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "intersync/result.h"

namespace intersync {

// No client reintegrates a day after its last upload without checking it
// again (which refreshes a complete upload's time: see FilesetServer).
inline constexpr std::chrono::hours kAbandonedUploadAge{24};

struct RemovedUploads {
  size_t files = 0;
  uint64_t bytes = 0;
};

// Removes the `up-*` files of `tmp_dir` last modified more than `max_age`
// ago; everything else there is left alone. Blocking: for the thread pool.
Result<RemovedUploads> remove_abandoned_uploads(const std::string& tmp_dir,
                                                std::chrono::seconds max_age);

}  // namespace intersync
