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
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "config.h"
#include "file_index.h"
#include "fileset_dir.h"
#include "intersync/kml.h"
#include "intersync/transport.h"
#include "intersync/uv_timer.h"
#include "path_util.h"

namespace intersync {

class FilesetClient {
 public:
  FilesetClient(uv_loop_t* loop, FilesetConfig config, std::string state_dir);
  ~FilesetClient();

  Status start(std::unique_ptr<Transport> transport);
  void stop();

  const FilesetConfig& config() const { return config_; }
  nlohmann::json status() const;

  struct Batch;  // records with their content, applied as one unit

 private:
  enum class State { Connecting, Connected, Disconnected, Stopped };

  HttpRequestHead request_head(const std::string& method, const std::string& endpoint) const;
  void connect();
  void poll();
  void on_records(std::string bytes, uint32_t head);
  void next_batch();
  void fetch_small(std::vector<Hash> ids);
  void fetch_large(const Hash& id, uint64_t size);
  void fetch_done();
  void apply(std::unique_ptr<Batch> batch);
  void lost(const std::string& why);
  void set_error(const std::string& e);

  uv_loop_t* loop_;
  FilesetConfig config_;
  std::string state_dir_;
  FilesetDir dir_;
  SafeRoot root_;
  FileIndex index_;
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
  unsigned fetches_in_flight_ = 0;
  bool applying_ = false;
  uint64_t backoff_ms_ = 0;
  uint64_t disconnected_since_ = 0;  // unix seconds
  UvTimer retry_timer_;
  std::string last_error_;
  uint64_t bytes_received_ = 0;
  uint64_t pending_bytes_ = 0;  // content bytes the current batch still needs
  size_t entries_ = 0;
  uint64_t generation_ = 0;  // bumped on every (re)connect: stale callbacks check it
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace intersync
