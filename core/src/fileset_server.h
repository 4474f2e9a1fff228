// The server side of one fileset: it journals every local change (backend
// events through a ChangeTracker into the KML) and answers the protocol's
// requests for that fileset: `info`, `kml` (with long-poll), `contents`
// (many small files in one answer), `content/<id>` and `file/<path>`
// (streamed, with Range), and `manifest/<id>`. Authentication and routing
// happen before a request gets here (see request_router.h).
#pragma once

#include <uv.h>

#include <list>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "change_tracker.h"
#include "config.h"
#include "file_index.h"
#include "fileset_dir.h"
#include "ignore_rules.h"
#include "intersync/backend.h"
#include "intersync/transport.h"
#include "intersync/uv_timer.h"
#include "journal.h"
#include "path_util.h"
#include "reintegrator.h"

namespace intersync {

class FilesetServer : public BackendHost {
 public:
  FilesetServer(uv_loop_t* loop, FilesetConfig config, std::string state_dir);
  ~FilesetServer() override;

  // Opens the journal and index, indexes the records a crash left out of the
  // index, rescans the tree against the index and starts the backend.
  Status start(std::unique_ptr<Backend> backend);
  void stop();

  const FilesetConfig& config() const { return config_; }
  const std::string& uuid() const { return dir_.uuid; }

  // `endpoint` is the URL path after "/cgi-bin/intersync/<fset>/".
  void handle(const std::string& endpoint, const ParsedTarget& target, HttpRequest&& request,
              std::shared_ptr<ResponseWriter> writer, const std::string& client);

  nlohmann::json status() const;
  nlohmann::json conflicts() const;

  // BackendHost
  void on_changes(std::vector<ChangeEvent>&& events) override;
  void on_rescan(const std::string& rel_dir, const std::string& reason) override;
  void when_durable(std::function<void()> done) override;
  bool ignored(std::string_view rel_path, bool is_dir) const override;

 private:
  struct Waiter;
  // Makes the index describe the journal up to its last record: adopts the
  // records a crash left unindexed, or starts a foreign index afresh.
  Status catch_up_index();
  void serve_info(std::shared_ptr<ResponseWriter> w);
  void serve_kml(const ParsedTarget& t, std::shared_ptr<ResponseWriter> w);
  void answer_kml(uint32_t since, std::shared_ptr<ResponseWriter> w);
  void serve_contents(const std::string& body, std::shared_ptr<ResponseWriter> w);
  void serve_content(const std::string& hex, const HttpRequestHead& head,
                     std::shared_ptr<ResponseWriter> w);
  void serve_file(const std::string& rel, const HttpRequestHead& head,
                  std::shared_ptr<ResponseWriter> w);
  void serve_manifest(const std::string& hex, std::shared_ptr<ResponseWriter> w);
  void serve_upload(const std::string& hex, const ParsedTarget& t, HttpRequest& request,
                    const std::string& client, std::shared_ptr<ResponseWriter> w);
  void serve_reintegrate(HttpRequest& request, const std::string& client,
                         std::shared_ptr<ResponseWriter> w);
  void stream_entry(const std::string& path, const FileState& st, const HttpRequestHead& head,
                    std::shared_ptr<ResponseWriter> w);
  void wake_waiters();
  // Removes, on the thread pool, the upload staging files no client came
  // back for (upload_staging.h).
  void remove_abandoned_uploads();

  uv_loop_t* loop_;
  FilesetConfig config_;
  std::string state_dir_;
  FilesetDir dir_;
  SafeRoot root_;
  Journal journal_;
  FileIndex index_;
  std::unique_ptr<ChangeTracker> tracker_;
  std::unique_ptr<Reintegrator> reintegrator_;
  std::unique_ptr<Backend> backend_;
  std::list<std::shared_ptr<Waiter>> waiters_;
  UvTimer upload_sweep_timer_;
  uint64_t bytes_served_ = 0;
  // Why the last upload could not be stored (a full disk, say); cleared by
  // the next upload that completes. Shown in the status before the
  // tracker's error.
  std::string upload_error_;
  IgnoreRules ignore_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// Sends a complete response with a small body.
void respond(ResponseWriter& w, int status, std::string body,
             std::string content_type = "text/plain; charset=utf-8", HttpHeaders extra = {});

}  // namespace intersync
