// Internal pieces of the client replicator shared by fileset_client.cc
// (following the journal) and on_demand.cc (data on demand): the unit of
// application, a batch, and a download streamed into the staging directory.
#pragma once

#include <uv.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "chunker.h"
#include "fileset_client.h"
#include "intersync/http_client.h"
#include "intersync/kml.h"
#include "intersync/result.h"
#include "record_applier.h"

namespace intersync {

// Index meta key: the contents the batch being applied writes (path ->
// [content id, recno]).
inline constexpr const char* kApplyingKey = "applying";

// One unit of application: records in order, the small contents fetched for
// them, and the large contents staged in tmp/.
struct FilesetClient::Batch {
  std::vector<KmlRecord> records;
  std::map<Hash, std::string> small;  // content id -> bytes (unverified)
  std::set<Hash> staged;              // content ids downloaded to tmp/<hex>
  std::map<Hash, Manifest> hashed;    // of staged files, hashed as they were written
  std::set<Hash> awaiting;            // staged contents still downloading
  // Small contents written to staging files as soon as they arrived, while
  // the batch waited for its large downloads or for the batch before it
  // (see FilesetClient::prestage); by record index.
  unsigned small_fetches = 0;  // "contents" requests in flight
  bool prestaged_early = false;
  std::map<size_t, ContentSources::Prestaged> prestaged;
  std::set<Hash> requested;  // content ids asked of the server
  uint32_t last_recno = 0;
  // Filled by the job:
  uint32_t applied_upto = 0;
  size_t skipped = 0;
  std::string error;
  size_t missing = 0;           // contents the server did not have when asked
  std::optional<Hash> refetch;  // a content to ask the server for (see ContentSources)
  // Data on demand: content not asked for becomes a placeholder.
  bool on_demand = false;
  // When its contents were asked for, and how long they took (debug log).
  std::chrono::steady_clock::time_point fetch_start;
  double ms_fetch = 0;

  // A local batch changes no server record and leaves last_rcvd alone: it
  // installs contents fetched on demand (`records` are CONTENT records of
  // the index's versions, their bytes in tmp/ under `staged_as`) or turns
  // `evict` back into placeholders. `waiters` learn how it went.
  enum class Local { None, Install, Evict } local = Local::None;
  std::map<Hash, std::string> staged_as;
  std::vector<std::string> evict;
  std::vector<std::function<void(Status)>> waiters;
  std::vector<std::string> failed;  // "path: why", filled by the job
};

// Streams one response body into a staging file. The bytes are written in
// order by one thread-pool job at a time, which also hashes them when the
// body starts at byte 0, so the applier need not read a large file back to
// check it. The call is paused while more than a few MiB wait for the disk.
struct StagedDownload : std::enable_shared_from_this<StagedDownload> {
  uv_loop_t* loop = nullptr;
  int fd = -1;
  uint64_t offset = 0;  // the file's length once what was received is written
  int write_error = 0;
  bool response_done = false;
  Status response_status;
  int http_status = 0;
  std::shared_ptr<ClientCall> call;
  std::function<void(StagedDownload&)> finished;
  // Set when the whole file was hashed on its way to the disk.
  std::optional<Manifest> manifest;

  ~StagedDownload();
  // The response's body is about to arrive, for the file from `offset` on;
  // from byte 0 it is hashed as it is written.
  void begin_body();
  void write(std::string_view data);
  void maybe_finish();

 private:
  void start_job();
  uint64_t queued_ = 0;  // received, not yet written
  uint64_t written_ = 0;
  bool paused_ = false;
  std::vector<std::string> waiting_;
  struct Job;
  Job* job_ = nullptr;  // in flight
  std::unique_ptr<Chunker> chunker_;
};

}  // namespace intersync
