// Server side of a fileset: journaling and the protocol's endpoints; see
// fileset_server.h and doc/PROTOCOL.md.
#include "fileset_server.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <cstring>

#include "file_streamer.h"
#include "intersync/log.h"
#include "intersync/uv_timer.h"
#include "intersync_build_config.h"
#include "journal_adoption.h"
#include "json_text.h"
#include "protocol.h"
#include "upload_staging.h"

namespace intersync {
namespace {

// How often abandoned uploads are looked for, besides at start-up.
constexpr uint64_t kUploadSweepMs = 3600 * 1000;

std::optional<uint64_t> parse_u64(std::string_view s) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

int64_t mtime_ns(const struct stat& st) {
  return int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

// "bytes=N-" or "bytes=N-M" -> [first, last]; nullopt when absent or not
// understood (the whole file is sent, as RFC 9110 allows).
std::optional<std::pair<uint64_t, uint64_t>> parse_range(std::string_view v, uint64_t size) {
  if (v.substr(0, 6) != "bytes=") return std::nullopt;
  v.remove_prefix(6);
  size_t dash = v.find('-');
  if (dash == std::string_view::npos || v.find(',') != std::string_view::npos) return std::nullopt;
  auto first = parse_u64(v.substr(0, dash));
  if (!first) return std::nullopt;
  uint64_t last = size == 0 ? 0 : size - 1;
  if (dash + 1 < v.size()) {
    auto l = parse_u64(v.substr(dash + 1));
    if (!l) return std::nullopt;
    last = std::min(*l, last);
  }
  return std::make_pair(*first, last);
}

}  // namespace

void respond(ResponseWriter& w, int status, std::string body, std::string content_type,
             HttpHeaders extra) {
  HttpResponseHead head;
  head.status = status;
  head.headers = std::move(extra);
  head.headers.set("Content-Type", std::move(content_type));
  head.content_length = body.size();
  w.send_head(std::move(head));
  if (!body.empty()) w.write(std::move(body));
  w.end();
}

struct FilesetServer::Waiter {
  uint32_t since = 0;
  std::shared_ptr<ResponseWriter> writer;
  std::unique_ptr<UvTimer> timer;
};

FilesetServer::FilesetServer(uv_loop_t* loop, FilesetConfig config, std::string state_dir)
    : loop_(loop),
      config_(std::move(config)),
      state_dir_(std::move(state_dir)),
      upload_sweep_timer_(loop) {}

FilesetServer::~FilesetServer() {
  *alive_ = false;
  stop();
}

Status FilesetServer::start(std::unique_ptr<Backend> backend) {
  auto dir = prepare_fileset_dir(config_.path, config_.name);
  if (!dir) return dir.error();
  dir_ = *dir;
  if (Status s = register_replicator(dir_, config_.path, config_.control_socket); !s) return s;
  if (Status s = root_.open(config_.path); !s) return s;
  ignore_.load_file(config_.path);
  if (Status s = journal_.open(dir_.kml); !s) return s;
  if (Status s = index_.open(state_dir_ + "/" + config_.name + ".db"); !s) return s;
  if (Status s = catch_up_index(); !s) return s;
  tracker_ = std::make_unique<ChangeTracker>(
      loop_, ChangeTracker::Options{config_.name}, root_, index_, journal_,
      [this](std::string_view p, bool d) { return ignored(p, d); });
  reintegrator_ = std::make_unique<Reintegrator>(config_, root_, index_, journal_, *tracker_, dir_);
  reintegrator_->load_conflicts();
  tracker_->on_committed([this] { wake_waiters(); });
  upload_sweep_timer_.start(
      0, [this] { remove_abandoned_uploads(); }, kUploadSweepMs);
  upload_sweep_timer_.unref();  // the listeners keep a server's loop running
  backend_ = std::move(backend);
  if (Status s = backend_->start(loop_, config_.path, this); !s) return s;
  if (!backend_->replays_changes())
    tracker_->rescan("", "start-up: comparing the tree with the index");
  log_info("fileset '{}' serving {} (uuid {}, journal head {})", config_.name, config_.path,
           dir_.uuid, journal_.head());
  return {};
}

Status FilesetServer::catch_up_index() {
  auto indexed = index_.meta(kJournalHeadKey);
  // An index written for another journal (the fileset was re-created) would
  // suppress records the new journal needs: start it afresh.
  if (index_.meta("uuid").value_or(dir_.uuid) != dir_.uuid ||
      std::stoul(indexed.value_or("0")) > journal_.head()) {
    log_warn("fileset '{}': index does not belong to this journal; rebuilding it", config_.name);
    for (const auto& p : index_.paths_under("")) index_.erase(p);
    index_.erase("");
    indexed.reset();
  }
  index_.set_meta("uuid", dir_.uuid);
  // Without a journal head the index is new (or was just emptied): it
  // describes no record, and the start-up comparison journals the tree.
  if (indexed && std::stoul(*indexed) < journal_.head()) {
    uint32_t from = static_cast<uint32_t>(std::stoul(*indexed));
    auto records = journal_.records_after(from);
    if (!records) return records.error();
    AdoptionReport r = adopt_journal_tail(root_, index_, *records);
    log_warn(
        "fileset '{}': records {} to {} were journaled but the daemon stopped before indexing "
        "them; indexed them now ({} adopted, {} did not fit, {} files changed since)",
        config_.name, from + 1, journal_.head(), r.adopted, r.skipped, r.unverified);
  }
  return commit_journal_and_index(journal_, index_);
}

void FilesetServer::remove_abandoned_uploads() {
  struct Sweep {
    uv_work_t work{};
    std::string tmp, fileset;
    Result<RemovedUploads> removed = RemovedUploads{};
  };
  auto* sweep = new Sweep{{}, dir_.tmp, config_.name};
  sweep->work.data = sweep;
  uv_queue_work(
      loop_, &sweep->work,
      [](uv_work_t* w) {
        auto* sw = static_cast<Sweep*>(w->data);
        sw->removed = intersync::remove_abandoned_uploads(sw->tmp, kAbandonedUploadAge);
      },
      [](uv_work_t* w, int) {
        std::unique_ptr<Sweep> sw(static_cast<Sweep*>(w->data));
        if (!sw->removed) {
          log_warn("fileset '{}': looking for abandoned uploads: {}", sw->fileset,
                   sw->removed.error().message);
        } else if (sw->removed->files > 0) {
          log_info(
              "fileset '{}': removed {} abandoned uploads ({} bytes, untouched for {} h) "
              "from {}",
              sw->fileset, sw->removed->files, sw->removed->bytes, kAbandonedUploadAge.count(),
              sw->tmp);
        }
      });
}

void FilesetServer::stop() {
  upload_sweep_timer_.stop();
  if (backend_) backend_->stop();
  backend_.reset();
  for (auto& w : waiters_) {
    w->timer.reset();
    if (!w->writer->closed()) respond(*w->writer, 503, "server stopping\n");
  }
  waiters_.clear();
  reintegrator_.reset();
  tracker_.reset();
  if (Status s = commit_journal_and_index(journal_, index_); !s) {
    log_error("fileset '{}': {}", config_.name, s.error().message);
  }
}

void FilesetServer::on_changes(std::vector<ChangeEvent>&& events) {
  for (const auto& e : events) {
    if (e.path == kIgnoreFile || e.to_path == kIgnoreFile) ignore_.load_file(config_.path);
  }
  if (tracker_) tracker_->add_events(std::move(events));
}

void FilesetServer::on_rescan(const std::string& rel_dir, const std::string& reason) {
  if (tracker_) tracker_->rescan(rel_dir, reason);
}

void FilesetServer::when_durable(std::function<void()> done) {
  if (tracker_) tracker_->when_durable(std::move(done));
}

bool FilesetServer::ignored(std::string_view rel_path, bool is_dir) const {
  return is_internal_path(rel_path) || ignore_.ignored(rel_path, is_dir);
}

nlohmann::json FilesetServer::status() const {
  nlohmann::json j;
  j["name"] = config_.name;
  j["role"] = "server";
  j["path"] = config_.path;
  j["uuid"] = dir_.uuid;
  j["head"] = journal_.head();
  j["entries"] = index_.size();
  j["pending_changes"] = tracker_ ? tracker_->pending() : 0;
  j["long_polls"] = waiters_.size();
  j["bytes_served"] = bytes_served_;
  j["last_error"] = !upload_error_.empty() ? upload_error_
                    : tracker_             ? tracker_->last_error()
                                           : std::string();
  j["conflicts"] = reintegrator_ ? reintegrator_->conflicts().size() : 0;
  return j;
}

nlohmann::json FilesetServer::conflicts() const {
  nlohmann::json out = nlohmann::json::array();
  if (!reintegrator_) return out;
  for (const auto& c : reintegrator_->conflicts()) {
    out.push_back({{"fileset", config_.name},
                   {"path", c.path},
                   {"copy", c.copy},
                   {"kind", c.kind},
                   {"client", c.client},
                   {"winner", c.winner},
                   {"time", c.time}});
  }
  return out;
}

void FilesetServer::handle(const std::string& endpoint, const ParsedTarget& target,
                           HttpRequest&& request, std::shared_ptr<ResponseWriter> writer,
                           const std::string& client) {
  const std::string& method = request.head.method;
  log_debug("fileset '{}': {} {} {} from {}", config_.name, client, method, endpoint, request.peer);
  if (endpoint == "info" && (method == "GET" || method == "HEAD")) return serve_info(writer);
  if (endpoint == "kml" && method == "GET") return serve_kml(target, writer);
  if (endpoint == "contents" && method == "POST") return serve_contents(request.body, writer);
  if (endpoint.rfind("content/", 0) == 0 && method == "GET") {
    return serve_content(endpoint.substr(8), request.head, writer);
  }
  if (endpoint.rfind("manifest/", 0) == 0 && method == "GET") {
    return serve_manifest(endpoint.substr(9), writer);
  }
  if (endpoint.rfind("upload/", 0) == 0 && (method == "PUT" || method == "HEAD")) {
    return serve_upload(endpoint.substr(7), target, request, client, writer);
  }
  if (endpoint == "reintegrate" && method == "POST") {
    return serve_reintegrate(request, client, writer);
  }
  if (endpoint.rfind("file/", 0) == 0 && method == "GET") {
    return serve_file(endpoint.substr(5), request.head, writer);
  }
  respond(*writer, 404, "no such endpoint: " + method + " " + endpoint + "\n");
}

void FilesetServer::serve_info(std::shared_ptr<ResponseWriter> w) {
  nlohmann::json j;
  j["fset"] = config_.name;
  j["uuid"] = dir_.uuid;
  j["head"] = journal_.head();
  j["version"] = INTERSYNC_VERSION;
  respond(*w, 200, j.dump() + "\n", "application/json");
}

void FilesetServer::serve_kml(const ParsedTarget& t, std::shared_ptr<ResponseWriter> w) {
  auto since = parse_u64(t.param("since").value_or("0"));
  auto wait = parse_u64(t.param("wait").value_or("0"));
  if (!since || !wait || *since > UINT32_MAX) {
    return respond(*w, 400, "kml: since and wait must be whole numbers\n");
  }
  if (auto uuid = t.param("uuid"); uuid && !uuid->empty() && *uuid != dir_.uuid) {
    nlohmann::json j{{"error", "fileset uuid differs: the server's journal was re-created"},
                     {"uuid", dir_.uuid},
                     {"head", journal_.head()}};
    return respond(*w, 409, j.dump() + "\n", "application/json");
  }
  if (*since > journal_.head()) {
    nlohmann::json j{{"error", "since is past the journal head: the journal was re-created"},
                     {"uuid", dir_.uuid},
                     {"head", journal_.head()}};
    return respond(*w, 409, j.dump() + "\n", "application/json");
  }
  if (*since < journal_.head() || *wait == 0) return answer_kml(static_cast<uint32_t>(*since), w);
  auto waiter = std::make_shared<Waiter>();
  waiter->since = static_cast<uint32_t>(*since);
  waiter->writer = w;
  waiter->timer = std::make_unique<UvTimer>(loop_);
  std::weak_ptr<Waiter> weak = waiter;
  waiters_.push_back(waiter);
  auto drop = [this, weak, alive = std::weak_ptr<bool>(alive_)](bool answer) {
    if (alive.expired()) return;
    auto wt = weak.lock();
    if (!wt) return;
    waiters_.remove(wt);
    if (answer) answer_kml(wt->since, wt->writer);
  };
  waiter->timer->start(std::min<uint64_t>(*wait, protocol::kMaxWaitSeconds) * 1000,
                       [drop] { drop(true); });
  w->on_abort([drop] { drop(false); });
}

void FilesetServer::answer_kml(uint32_t since, std::shared_ptr<ResponseWriter> w) {
  if (w->closed()) return;
  uint32_t last = since;
  auto bytes = journal_.read_after(since, protocol::kMaxKmlResponse, &last);
  if (!bytes) {
    log_error("fileset '{}': {}", config_.name, bytes.error().message);
    return respond(*w, 500, "journal read failed\n");
  }
  HttpHeaders h;
  h.set(protocol::kHeaderHead, std::to_string(journal_.head()));
  h.set(protocol::kHeaderUuid, dir_.uuid);
  h.set("X-Intersync-Last", std::to_string(last));
  h.set("Cache-Control", "no-store");
  bytes_served_ += bytes->size();
  respond(*w, 200, std::move(*bytes), protocol::kKmlMediaType, std::move(h));
}

void FilesetServer::wake_waiters() {
  auto waiters = std::move(waiters_);
  waiters_.clear();
  for (auto& wt : waiters) {
    if (wt->since < journal_.head()) {
      wt->timer.reset();
      answer_kml(wt->since, wt->writer);
    } else {
      waiters_.push_back(wt);
    }
  }
}

namespace {

// A bulk read of small files on the thread pool: the answer to `contents`.
struct BulkRead {
  uv_work_t work{};
  int root_fd = -1;
  std::vector<std::pair<std::string, uint64_t>> files;  // path (empty: unknown), size
  std::string body;
  std::shared_ptr<ResponseWriter> writer;
};

void put_u64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}

}  // namespace

void FilesetServer::serve_contents(const std::string& body, std::shared_ptr<ResponseWriter> w) {
  auto job = std::make_unique<BulkRead>();
  uint64_t total = 0;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t nl = body.find('\n', pos);
    if (nl == std::string::npos) nl = body.size();
    std::string_view line(body.data() + pos, nl - pos);
    pos = nl + 1;
    if (line.empty()) continue;
    Hash id;
    if (!hash_from_hex(line, &id)) return respond(*w, 400, "contents: bad content id\n");
    if (job->files.size() >= 4096) return respond(*w, 413, "contents: at most 4096 ids\n");
    auto path = index_.path_of_content(id);
    const FileState* st = path ? index_.find(*path) : nullptr;
    if (st && st->size <= protocol::kSmallFile && total + st->size <= (64u << 20)) {
      job->files.emplace_back(*path, st->size);
      total += st->size;
    } else {
      job->files.emplace_back(std::string(), 0);
    }
  }
  job->root_fd = fcntl(root_.fd(), F_DUPFD_CLOEXEC, 0);
  job->writer = std::move(w);
  BulkRead* raw = job.release();
  raw->work.data = raw;
  uv_queue_work(
      loop_, &raw->work,
      [](uv_work_t* wk) {
        auto* j = static_cast<BulkRead*>(wk->data);
        for (const auto& [path, size] : j->files) {
          std::string data;
          bool ok = false;
          if (!path.empty()) {
            int fd = open_beneath_at(j->root_fd, path, O_RDONLY | O_NOFOLLOW);
            if (fd >= 0) {
              data.resize(size + 1);
              size_t got = 0;
              for (;;) {
                ssize_t n = pread(fd, data.data() + got, data.size() - got, got);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) break;
                got += static_cast<size_t>(n);
                if (got == data.size()) break;
              }
              ::close(fd);
              // A file that changed size since it was indexed is not the
              // content asked for; the client learns of it from the journal.
              ok = got == size;
              data.resize(got);
            }
          }
          put_u64(j->body, ok ? data.size() : UINT64_MAX);
          if (ok) j->body += data;
        }
      },
      [](uv_work_t* wk, int) {
        std::unique_ptr<BulkRead> j(static_cast<BulkRead*>(wk->data));
        ::close(j->root_fd);
        if (j->writer->closed()) return;
        respond(*j->writer, 200, std::move(j->body), "application/octet-stream");
      });
}

void FilesetServer::serve_content(const std::string& hex, const HttpRequestHead& head,
                                  std::shared_ptr<ResponseWriter> w) {
  Hash id;
  if (!hash_from_hex(hex, &id)) return respond(*w, 400, "bad content id\n");
  auto path = index_.path_of_content(id);
  const FileState* st = path ? index_.find(*path) : nullptr;
  if (!st) return respond(*w, 404, "content no longer available\n");
  stream_entry(*path, *st, head, w);
}

void FilesetServer::serve_file(const std::string& rel, const HttpRequestHead& head,
                               std::shared_ptr<ResponseWriter> w) {
  auto path = normalize_rel_path(rel);
  if (!path || is_internal_path(*path)) {
    return respond(*w, 400,
                   "bad path: " + (path ? std::string("internal") : path.error().message) + "\n");
  }
  const FileState* st = index_.find(*path);
  if (!st || st->type != FileType::File) return respond(*w, 404, "no such file\n");
  if (auto m = head.headers.get("If-Match"); m && *m != "\"" + hash_hex(st->content_id) + "\"") {
    return respond(*w, 412, "the file changed\n");
  }
  stream_entry(*path, *st, head, w);
}

void FilesetServer::stream_entry(const std::string& path, const FileState& st,
                                 const HttpRequestHead& head, std::shared_ptr<ResponseWriter> w) {
  auto fd = root_.open_beneath(path, O_RDONLY | O_NOFOLLOW);
  struct stat now;
  if (!fd || fstat(fd->get(), &now) != 0 || static_cast<uint64_t>(now.st_size) != st.size ||
      mtime_ns(now) != st.mtime_ns) {
    return respond(*w, 404, "content no longer available\n");
  }
  HttpResponseHead h;
  uint64_t first = 0, length = st.size;
  if (auto r = head.headers.get("Range")) {
    if (auto range = parse_range(*r, st.size)) {
      if (range->first >= st.size || range->first > range->second) {
        HttpHeaders extra;
        extra.set("Content-Range", "bytes */" + std::to_string(st.size));
        return respond(*w, 416, "range not satisfiable\n", "text/plain", std::move(extra));
      }
      first = range->first;
      length = range->second - range->first + 1;
      h.status = 206;
      h.headers.set("Content-Range", "bytes " + std::to_string(first) + "-" +
                                         std::to_string(range->second) + "/" +
                                         std::to_string(st.size));
    }
  }
  std::string id = hash_hex(st.content_id);
  h.headers.set("Content-Type", "application/octet-stream");
  h.headers.set("Accept-Ranges", "bytes");
  h.headers.set("ETag", "\"" + id + "\"");
  h.headers.set(protocol::kHeaderContent, id);
  h.content_length = length;
  w->send_head(std::move(h));
  if (head.method == "HEAD" || length == 0) return w->end();
  stream_file(loop_, std::move(*fd), first, length, w,
              [this, alive = std::weak_ptr<bool>(alive_)](uint64_t sent) {
                if (!alive.expired()) bytes_served_ += sent;
              });
}

void FilesetServer::serve_upload(const std::string& hex, const ParsedTarget& t,
                                 HttpRequest& request, const std::string& client,
                                 std::shared_ptr<ResponseWriter> w) {
  Hash id;
  if (!hash_from_hex(hex, &id)) return respond(*w, 400, "bad content id\n");
  std::string done = dir_.tmp + "/up-" + hash_hex(id);
  std::string part = done + ".part";
  struct stat st;
  uint64_t have = 0;
  if (::stat(done.c_str(), &st) == 0) {
    // The client is about to reintegrate the record that uses it: fresh
    // again, it is not abandoned.
    utimensat(AT_FDCWD, done.c_str(), nullptr, 0);
    HttpHeaders h;
    h.set("X-Intersync-Offset", std::to_string(st.st_size));
    return respond(*w, 200, "complete\n", "text/plain", std::move(h));
  }
  if (::stat(part.c_str(), &st) == 0) have = static_cast<uint64_t>(st.st_size);
  auto offset = parse_u64(t.param("offset").value_or("0"));
  auto size = parse_u64(t.param("size").value_or(""));
  HttpHeaders h;
  h.set("X-Intersync-Offset", std::to_string(have));
  if (request.head.method == "HEAD") return respond(*w, 200, "", "text/plain", std::move(h));
  if (!offset || !size || *offset + request.body.size() > *size) {
    return respond(*w, 400,
                   "upload: offset and size must be whole numbers, the piece within size\n");
  }
  // The whole part takes its final name; false once the failure is answered.
  auto complete = [&] {
    if (::rename(part.c_str(), done.c_str()) == 0) {
      upload_error_.clear();
      return true;
    }
    upload_error_ = fmt::format("completing an upload from {} failed: {}", client, strerror(errno));
    log_error("fileset '{}': {} ({})", config_.name, upload_error_, part);
    respond(*w, 500, "upload: cannot complete\n");
    return false;
  };
  if (have == *size && have > 0) {
    // Whole already: the daemon stopped between the last piece and its
    // completion. Completed now, or the client would send it forever.
    if (complete()) respond(*w, 200, "complete\n", "text/plain", std::move(h));
    return;
  }
  if (*offset != have)
    return respond(*w, 409, "upload: wrong offset\n", "text/plain", std::move(h));
  int fd = ::open(part.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  ssize_t n = fd < 0 ? -1 : pwrite(fd, request.body.data(), request.body.size(), *offset);
  int e = errno;
  if (fd >= 0) ::close(fd);
  if (n != static_cast<ssize_t>(request.body.size())) {
    upload_error_ = fmt::format("storing an upload from {} failed: {}", client, strerror(e));
    log_error("fileset '{}': {} ({})", config_.name, upload_error_, part);
    return respond(*w, e == ENOSPC ? 507 : 500,
                   std::string("upload failed: ") + strerror(e) + "\n");
  }
  if (*offset + request.body.size() == *size && !complete()) return;
  h.set("X-Intersync-Offset", std::to_string(*offset + request.body.size()));
  respond(*w, 200, "ok\n", "text/plain", std::move(h));
}

void FilesetServer::serve_reintegrate(HttpRequest& request, const std::string& client,
                                      std::shared_ptr<ResponseWriter> w) {
  KmlScan scan = kml_scan(request.body);
  if (!scan.problems.empty()) {
    return respond(*w, 400, "reintegrate: bad records: " + scan.problems.front().reason + "\n");
  }
  std::vector<KmlRecord> records;
  for (auto& e : scan.entries) records.push_back(std::move(e.record));
  std::string host(request.head.headers.get("X-Intersync-Host").value_or(client));
  std::string replica(request.head.headers.get("X-Intersync-Replica").value_or(""));
  bool replica_ok = replica.size() == 36 && std::all_of(replica.begin(), replica.end(), [](char c) {
                      return c == '-' || std::isxdigit(static_cast<unsigned char>(c));
                    });
  if (!replica_ok) replica.clear();
  nlohmann::json answer = reintegrator_->reintegrate(std::move(records), client, host, replica);
  wake_waiters();
  if (answer.contains("error"))
    return respond(*w, 503, json_text(answer) + "\n", "application/json");
  respond(*w, 200, json_text(answer) + "\n", "application/json");
}

void FilesetServer::serve_manifest(const std::string& hex, std::shared_ptr<ResponseWriter> w) {
  Hash id;
  if (!hash_from_hex(hex, &id)) return respond(*w, 400, "bad content id\n");
  auto path = index_.path_of_content(id);
  const FileState* st = path ? index_.find(*path) : nullptr;
  if (!st) return respond(*w, 404, "content no longer available\n");
  std::string body = st->nchunks > 1
                         ? st->chunks
                         : pack_chunks({ChunkRef{st->content_id, static_cast<uint32_t>(st->size)}});
  HttpHeaders h;
  h.set("Cache-Control", "public, max-age=31536000, immutable");
  respond(*w, 200, std::move(body), "application/octet-stream", std::move(h));
}

}  // namespace intersync
