// Internal pieces of the client replicator shared by fileset_client.cc
// (following the journal) and on_demand.cc (data on demand): the unit of
// application, a batch, and a download streamed into the staging directory.
#pragma once

#include <uv.h>

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
  std::set<Hash> requested;           // content ids asked of the server
  uint32_t last_recno = 0;
  // Filled by the job:
  uint32_t applied_upto = 0;
  size_t skipped = 0;
  std::string error;
  size_t missing = 0;           // contents the server did not have when asked
  std::optional<Hash> refetch;  // a content to ask the server for (see ContentSources)
  // Data on demand: content not asked for becomes a placeholder.
  bool on_demand = false;

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

// Streams one response body into a staging file with uv_fs_write, pausing
// the call while more than a few MiB wait for the disk.
struct StagedDownload : std::enable_shared_from_this<StagedDownload> {
  uv_loop_t* loop = nullptr;
  int fd = -1;
  uint64_t offset = 0;
  uint64_t queued = 0;
  int write_error = 0;
  bool paused = false;
  bool response_done = false;
  Status response_status;
  int http_status = 0;
  std::shared_ptr<ClientCall> call;
  std::function<void(StagedDownload&)> finished;

  ~StagedDownload() {
    if (fd >= 0) ::close(fd);
  }

  void write(std::string_view data) {
    struct Req {
      uv_fs_t fs;
      std::string buf;
      std::shared_ptr<StagedDownload> owner;
    };
    auto* req = new Req{{}, std::string(data), shared_from_this()};
    req->fs.data = req;
    uv_buf_t b = uv_buf_init(req->buf.data(), static_cast<unsigned>(req->buf.size()));
    queued += data.size();
    int64_t at = static_cast<int64_t>(offset);
    offset += data.size();
    uv_fs_write(loop, &req->fs, fd, &b, 1, at, [](uv_fs_t* f) {
      std::unique_ptr<Req> r(static_cast<Req*>(f->data));
      auto& self = *r->owner;
      if (f->result < 0 && self.write_error == 0) self.write_error = static_cast<int>(f->result);
      self.queued -= r->buf.size();
      uv_fs_req_cleanup(f);
      if (self.paused && self.queued < (2u << 20) && self.call) {
        self.paused = false;
        self.call->resume();
      }
      self.maybe_finish();
    });
    if (queued > (8u << 20) && call && !paused) {
      paused = true;
      call->pause();
    }
  }

  void maybe_finish() {
    if (!response_done || queued > 0 || !finished) return;
    auto f = std::move(finished);
    finished = nullptr;
    f(*this);
  }
};

}  // namespace intersync
