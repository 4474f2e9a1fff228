// The client side of one fileset: it follows the server's journal (a
// long-poll on `kml`), fetches the content the records name (small files in
// bulk, large ones streamed to a resumable staging file), and applies each
// batch on the thread pool: every file is written to a temporary name and
// renamed into place, the batch is made durable with one syncfs, and only
// then do the index and last_rcvd advance. After a crash the records past
// last_rcvd are applied again, idempotently.
//
// The next batch is fetched while the current one is applied, so the network
// and the disk work at the same time.
#pragma once

#include <uv.h>

#include <deque>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>

#include "change_tracker.h"
#include "config.h"
#include "file_index.h"
#include "fileset_dir.h"
#include "ignore_rules.h"
#include "intersync/backend.h"
#include "intersync/kml.h"
#include "intersync/transport.h"
#include "intersync/uv_timer.h"
#include "journal.h"
#include "path_util.h"

namespace intersync {

class FilesetClient : public BackendHost {
 public:
  FilesetClient(uv_loop_t* loop, FilesetConfig config, std::string state_dir);
  ~FilesetClient() override;

  // `backend` is used only with write_back: it watches the local tree.
  Status start(std::unique_ptr<Transport> transport, std::unique_ptr<Backend> backend);
  void stop();

  const FilesetConfig& config() const { return config_; }
  nlohmann::json status() const;
  nlohmann::json conflicts() const;
  // Lets a batch held by the mass-deletion guard go to the server.
  bool confirm();

  // BackendHost (write-back)
  void on_changes(std::vector<ChangeEvent>&& events) override;
  void on_rescan(const std::string& rel_dir, const std::string& reason) override;
  void when_durable(std::function<void()> done) override;
  bool ignored(std::string_view rel_path, bool is_dir) const override;

  struct Batch;  // records with their content, applied as one unit

 private:
  enum class State { Connecting, Connected, Disconnected, Stopped };

  HttpRequestHead request_head(const std::string& method, const std::string& endpoint) const;
  std::unique_ptr<ClientSession> open_session();
  void connect();
  void poll();
  void on_records(std::string bytes, uint32_t head);
  void next_batch();
  void fetch_small(std::vector<Hash> ids);
  // Writes fetching_'s small contents to staging files on the thread pool,
  // once they are all in.
  void prestage();
  // The batch being fetched needs large content `id`: waits for its
  // download, started now or ahead by prefetch_large().
  void fetch_large(const Hash& id, uint64_t size);
  // Starts downloading `id` into tmp/<hex> (resuming a .part file).
  bool download_large(const Hash& id, uint64_t size);
  // Starts the downloads of large contents that pending records will need.
  void prefetch_large();
  // Sends the GET of content `id` whose body `dl` writes (from dl->offset
  // on, with Range); `counts_as_pending`: its bytes are the batch's.
  void start_download(std::shared_ptr<struct StagedDownload> dl, const Hash& id,
                      bool counts_as_pending);
  void fetch_done();
  void clear_staging();
  // Puts a batch's records after `after` back in front of pending_.
  void requeue(Batch& batch, uint32_t after);
  // Drops the batch being fetched, its records back in pending_.
  void requeue_fetching();
  void apply(std::unique_ptr<Batch> batch);
  // What follows a batch or a reintegration: a queued local batch, local
  // records to send, the next batch of the server's.
  void carry_on();
  void lost(const std::string& why);
  // Write-back: sends local records after reintegrated_ to the server.
  void reintegrate();
  void upload_next(std::shared_ptr<struct UploadPlan> plan);
  void send_reintegrate(std::shared_ptr<struct UploadPlan> plan);
  void on_reintegrated(std::shared_ptr<struct UploadPlan> plan, const std::string& body);
  bool local_pending() const;
  // Paths the local records not yet reintegrated touch: the server's
  // records leave them alone until the server has judged those.
  std::set<std::string> local_pending_paths() const;

  // Data on demand (on_demand.cc).
 public:
  // `intersyncctl fetch|pin|evict` and izofs's fetch on open: `path` is
  // relative to the fileset root ("" = all of it). `done` is called once.
  void on_demand(const std::string& cmd, const std::string& path, std::function<void(Status)> done);

 private:
  bool pinned(const std::string& path) const;
  void fetch_on_demand(const std::string& path, std::function<void(Status)> done);
  void evict(const std::string& path, std::function<void(Status)> done);
  // Files at or under `path` (a file or a directory) in the index.
  std::vector<std::string> files_at(const std::string& path) const;
  bool is_placeholder_path(const std::string& path) const;
  void queue_local_batch(std::unique_ptr<Batch> batch);
  // Starts a queued local batch when nothing else uses the index.
  bool start_local_batch();
  void local_batch_done(Batch& b);
  std::vector<std::string> pins_;  // pinned paths, kept in the index
  std::deque<std::unique_ptr<Batch>> local_batches_;
  // Downloads on demand in flight, by content id.
  struct Demand {
    std::set<std::string> paths;  // placeholders that get this content
    std::vector<std::function<void(Status)>> waiters;
  };
  std::map<Hash, Demand> demands_;
  void download_on_demand(const Hash& id, uint64_t size);
  void load_pins();
  // Answers every fetch, pin and evict still waiting with an error.
  void fail_on_demand(const std::string& why);
  void save_pins();
  // The work that failed last; the status shows its error until the same
  // work succeeds (or, for the connection, until the next connect).
  enum class Trouble { Connection, Applying, Reintegrating };
  void set_error(Trouble trouble, const std::string& e);
  void clear_error(Trouble trouble);

  uv_loop_t* loop_;
  FilesetConfig config_;
  std::string state_dir_;
  FilesetDir dir_;
  // Shared with the apply job on the thread pool, which may outlive this
  // object when the daemon stops mid-batch.
  std::shared_ptr<SafeRoot> root_ = std::make_shared<SafeRoot>();
  std::shared_ptr<FileIndex> index_ = std::make_shared<FileIndex>();
  std::unique_ptr<Transport> transport_;
  std::unique_ptr<ClientSession> session_;

  State state_ = State::Connecting;
  std::string server_uuid_;
  uint32_t server_head_ = 0;
  uint32_t applied_ = 0;   // last record applied and durable (last_rcvd)
  uint32_t received_ = 0;  // last record received
  std::deque<KmlRecord> pending_;
  std::shared_ptr<ClientCall> poll_call_;
  std::unique_ptr<Batch> fetching_;  // batch whose content is being fetched
  // Large contents downloading into tmp/<hex> or downloaded ahead of their
  // batch, by id.
  struct LargeDownload {
    std::shared_ptr<struct StagedDownload> dl;  // while downloading
    uint64_t size = 0;
    bool done = false;
    std::optional<Manifest> manifest;  // hashed on the way in
  };
  std::map<Hash, LargeDownload> large_;
  unsigned fetches_in_flight_ = 0;
  uint64_t batch_seq_ = 0;  // identifies fetching_ to its fetch callbacks
  unsigned fetch_retries_ = 0;
  // Contents to ask the server for even though the index knows a local
  // copy: that copy went away before it could be used.
  std::set<Hash> refetch_;
  // The contents a batch interrupted by a crash was writing: path ->
  // (content id, server recno).
  std::map<std::string, std::pair<Hash, uint32_t>> interrupted_batch_;
  bool applying_ = false;
  uint64_t backoff_ms_ = 0;
  uint64_t disconnected_since_ = 0;  // unix seconds
  UvTimer retry_timer_;
  std::string last_error_;
  Trouble trouble_ = Trouble::Connection;
  uint64_t bytes_received_ = 0;
  uint64_t bytes_sent_ = 0;
  uint64_t pending_bytes_ = 0;  // content bytes the current batch still needs
  size_t entries_ = 0;
  uint64_t generation_ = 0;
  // write-back
  Journal local_journal_;
  std::unique_ptr<ChangeTracker> tracker_;
  std::unique_ptr<Backend> backend_;
  uint32_t reintegrated_ = 0;  // last local record the server acknowledged
  bool reintegrating_ = false;
  size_t held_deletions_ = 0;  // > 0: a batch waits for `intersyncctl confirm`
  bool confirmed_ = false;
  bool deletions_settled_ = false;
  UvTimer deletion_timer_;
  nlohmann::json conflicts_ = nlohmann::json::array();
  IgnoreRules ignore_;  // bumped on every (re)connect: stale callbacks check it
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace intersync
