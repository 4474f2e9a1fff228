// Client-side replication: follow the journal, fetch content, apply batches
// atomically and durably; see fileset_client.h.
#include "fileset_client.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uuid/uuid.h>

#include <cctype>
#include <charconv>
#include <chrono>
#include <cstring>
#include <ctime>
#include <map>
#include <random>
#include <thread>

#include "client_batch.h"
#include "intersync/log.h"
#include "json_text.h"
#include "protocol.h"
#include "record_applier.h"

namespace intersync {
namespace {

constexpr size_t kBatchRecords = 8192;
constexpr uint64_t kBatchSmallBytes = 64ull << 20;  // content held in memory per batch
constexpr size_t kBatchLargeFiles = 16;
// Large downloads per batch: a batch's small files wait for its large ones,
// so large files are spread over batches, each applied while the next
// downloads.
constexpr uint64_t kBatchLargeBytes = 64ull << 20;
// Large contents of records not yet in a batch are downloaded ahead, at
// most this many at once and this far ahead of the batches.
constexpr unsigned kPrefetchFiles = 4;
constexpr uint64_t kPrefetchBytes = 256ull << 20;
constexpr size_t kBulkIds = 1024;
constexpr uint64_t kMaxPending = 50000;  // records received ahead of applying
constexpr unsigned kPollWait = 25;       // seconds a long-poll waits on the server
constexpr uint64_t kMaxBackoffMs = 30000;

uint64_t unix_now() {
  return static_cast<uint64_t>(time(nullptr));
}

uint64_t get_u64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | static_cast<uint8_t>(p[i]);
  return v;
}

// "answered 507: upload failed: No space left on device", for the status.
std::string server_answer(int status, std::string_view body) {
  while (!body.empty() && std::isspace(static_cast<unsigned char>(body.back())))
    body.remove_suffix(1);
  return "answered " + std::to_string(status) + ": " + std::string(body);
}

}  // namespace

namespace {

// Everything the thread-pool job needs; while a job runs, the loop reads
// the index only through FileIndex::has_content (planning the next batch).
struct ApplyJob {
  uv_work_t work{};
  std::unique_ptr<FilesetClient::Batch> batch;
  std::shared_ptr<const SafeRoot> root;
  std::shared_ptr<FileIndex> index;
  std::string tmp_dir;
  std::string last_rcvd;
  std::string server_uuid;
  std::string fset;
  size_t entries = 0;
  std::function<bool(const std::string&)> protect;
  std::function<void(ApplyJob*)> done;
  // Where a server batch's time went, in ms, for the debug log: writing
  // small files to staging, applying the records in order, syncfs, and the
  // index and last_rcvd.
  double ms_prestage = 0, ms_apply = 0, ms_syncfs = 0, ms_commit = 0;
};

double ms_since(std::chrono::steady_clock::time_point& t) {
  auto now = std::chrono::steady_clock::now();
  double ms = std::chrono::duration<double, std::milli>(now - t).count();
  t = now;
  return ms;
}

// Runs on the thread pool: applies the batch, makes it durable with one
// syncfs, then advances the index and last_rcvd.
// Runs a local batch (see Batch::local): no syncfs, no last_rcvd; a crash
// leaves placeholders or fetched files, both valid states.
void run_local_job(ApplyJob& job, RecordApplier& applier) {
  FilesetClient::Batch& b = *job.batch;
  if (b.local == FilesetClient::Batch::Local::Install) {
    ContentSources sources;
    sources.staged = b.staged_as;
    sources.hashed = std::move(b.hashed);
    for (size_t i = 0; i < b.records.size(); ++i) {
      std::string err;
      size_t skipped = applier.skipped();
      if (!applier.apply(b.records, i, sources, &err) || applier.skipped() != skipped) {
        b.failed.push_back(b.records[i].path + ": " + (err.empty() ? "not installed" : err));
      }
    }
    for (const auto& [id, name] : sources.staged) unlink((job.tmp_dir + "/" + name).c_str());
  } else {
    for (const auto& path : b.evict) {
      std::string why;
      if (!applier.make_placeholder(path, &why)) b.failed.push_back(path + ": " + why);
    }
  }
  if (Status s = job.index->commit(); !s) b.error = s.error().message;
}

void run_apply_job(ApplyJob& job) {
  FilesetClient::Batch& b = *job.batch;
  RecordApplier applier(*job.root, *job.index, job.tmp_dir, job.fset);
  if (Status s = applier.open(); !s) {
    b.error = s.error().message;
    return;
  }
  if (b.local != FilesetClient::Batch::Local::None) return run_local_job(job, applier);
  applier.protect(job.protect);
  if (job.protect) applier.keep_unknown_entries();  // write-back: users create files here too
  // What this batch is about to write, durable before the first file
  // moves: after a crash, content found here that the index does not know
  // yet is recognised as the server's (see ChangeTracker::on_unknown_content)
  // instead of being sent back as a local change.
  nlohmann::json writing = nlohmann::json::object();
  for (const auto& r : b.records) {
    if (r.opcode == KmlOp::Content) writing[r.path] = {hash_hex(r.hash), r.recno};
  }
  job.index->set_meta(kApplyingKey, writing.dump());
  if (Status s = job.index->commit(); !s) {
    b.error = s.error().message;
    return;
  }
  ContentSources sources;
  sources.small = std::move(b.small);
  for (const auto& id : b.staged) sources.staged[id] = hash_hex(id);
  sources.hashed = std::move(b.hashed);
  sources.can_refetch = true;
  sources.on_demand = b.on_demand;
  sources.requested = b.requested;
  auto t = std::chrono::steady_clock::now();
  if (b.prestaged_early) {
    sources.prestaged = std::move(b.prestaged);
  } else {
    applier.prestage(b.records, sources, std::thread::hardware_concurrency());
  }
  job.ms_prestage = ms_since(t);
  for (size_t i = 0; i < b.records.size(); ++i) {
    std::string err;
    if (!applier.apply(b.records, i, sources, &err)) {
      b.error = err;
      break;
    }
    if (sources.refetch) {
      b.refetch = sources.refetch;
      break;
    }
    b.applied_upto = b.records[i].recno;
  }
  applier.discard_prestaged(sources);
  b.skipped = applier.skipped();
  job.ms_apply = ms_since(t);
  if (b.applied_upto == 0) return;
  const SafeRoot& root = *job.root;
  auto root_dir = root.open_beneath("", O_RDONLY | O_DIRECTORY);
  if (!root_dir || syncfs(root_dir->get()) != 0) {
    b.error = "syncfs of " + root.path() +
              " failed: " + (root_dir ? strerror(errno) : root_dir.error().message);
    b.applied_upto = 0;
    return;
  }
  job.ms_syncfs = ms_since(t);
  job.index->set_meta("server_uuid", job.server_uuid);
  job.index->set_meta("applied", std::to_string(b.applied_upto));
  job.index->set_meta(kApplyingKey, "{}");
  if (Status s = job.index->commit(); !s) {
    b.error = s.error().message;
    b.applied_upto = 0;
    return;
  }
  LastRcvdEntry e;
  uuid_t u;
  if (uuid_parse(job.server_uuid.c_str(), u) == 0) std::memcpy(e.uuid.data(), u, 16);
  e.remote_recno = b.applied_upto;
  e.last_ctime = static_cast<uint64_t>(time(nullptr));
  if (Status s = last_rcvd_update(job.last_rcvd, e); !s) {
    b.error = s.error().message;
    b.applied_upto = 0;
  }
  // Staged downloads no record used (superseded within the batch).
  for (const auto& [id, name] : sources.staged) unlink((job.tmp_dir + "/" + name).c_str());
  job.entries = job.index->size();
  job.ms_commit = ms_since(t);
}

}  // namespace

FilesetClient::FilesetClient(uv_loop_t* loop, FilesetConfig config, std::string state_dir)
    : loop_(loop),
      config_(std::move(config)),
      state_dir_(std::move(state_dir)),
      retry_timer_(loop),
      deletion_timer_(loop) {}

FilesetClient::~FilesetClient() {
  *alive_ = false;
  stop();
}

Status FilesetClient::start(std::unique_ptr<Transport> transport,
                            std::unique_ptr<Backend> backend) {
  auto dir = prepare_fileset_dir(config_.path, config_.name);
  if (!dir) return dir.error();
  dir_ = *dir;
  if (Status s = register_replicator(dir_, config_.path, config_.control_socket); !s) return s;
  if (config_.data_on_demand && !dir_.izofs) {
    return make_error(-EINVAL, "fileset '" + config_.name + "': data_on_demand needs " +
                                   config_.path + " to be an izofs mount");
  }
  if (Status s = root_->open(config_.path); !s) return s;
  if (Status s = index_->open(state_dir_ + "/" + config_.name + ".db"); !s) return s;
  entries_ = index_->size();
  clear_staging();
  ignore_.load_file(config_.path);
  load_pins();
  if (config_.write_back) {
    if (Status s = local_journal_.open(dir_.kml); !s) return s;
    reintegrated_ = static_cast<uint32_t>(std::stoul(index_->meta("reintegrated").value_or("0")));
    if (reintegrated_ > local_journal_.head()) reintegrated_ = local_journal_.head();
    if (auto c = index_->meta("conflicts")) {
      auto j = nlohmann::json::parse(*c, nullptr, false);
      if (j.is_array()) conflicts_ = j;
    }
    ChangeTracker::Options opts{config_.name};
    opts.client = true;
    tracker_ = std::make_unique<ChangeTracker>(
        loop_, opts, *root_, *index_, local_journal_,
        [this](std::string_view p, bool d) { return ignored(p, d); });
    tracker_->on_committed([this] { reintegrate(); });
    if (auto text = index_->meta(kApplyingKey)) {
      auto j = nlohmann::json::parse(*text, nullptr, false);
      if (j.is_object()) {
        for (const auto& [path, v] : j.items()) {
          Hash id;
          if (v.is_array() && v.size() == 2 && hash_from_hex(v[0].get<std::string>(), &id)) {
            interrupted_batch_[path] = {id, v[1].get<uint32_t>()};
          }
        }
      }
    }
    tracker_->on_unknown_content(
        [this](const std::string& path, const Hash& id) -> std::optional<uint32_t> {
          auto it = interrupted_batch_.find(path);
          if (it == interrupted_batch_.end() || it->second.first != id) return std::nullopt;
          log_info("fileset '{}': {} holds record {}'s content, written before a crash",
                   config_.name, path, it->second.second);
          return it->second.second;
        });
    backend_ = std::move(backend);
    if (Status s = backend_->start(loop_, config_.path, this); !s) return s;
    // Changes made while the daemon was down are found by comparing the
    // tree with the index, then reintegrated.
    if (!backend_->replays_changes())
      tracker_->rescan("", "start-up: looking for changes made while stopped");
  }
  transport_ = std::move(transport);
  session_ = open_session();
  log_info("fileset '{}': replicating {} from {}:{}", config_.name, config_.path,
           config_.server_host, config_.server_port);
  connect();
  return {};
}

// Files a crash left half-written in staging, or in the prestaging
// directories in it, are of no use; downloads (<id> and <id>.part) are
// kept to be verified or resumed.
void FilesetClient::clear_staging() {
  auto clear = [](const std::string& dir, bool descend, auto& self) -> void {
    DIR* d = opendir(dir.c_str());
    if (!d) return;
    size_t prefix = std::strlen(kPrestageDirPrefix);
    while (struct dirent* e = readdir(d)) {
      std::string_view name = e->d_name;
      if (name.starts_with(kStagingPrefix)) {
        unlinkat(dirfd(d), e->d_name, 0);
      } else if (descend && name.starts_with(kPrestageDirPrefix) && name.size() > prefix &&
                 name.find_first_not_of("0123456789", prefix) == std::string_view::npos) {
        self(dir + "/" + e->d_name, false, self);
      }
    }
    closedir(d);
  };
  clear(dir_.tmp, true, clear);
}

void FilesetClient::stop() {
  if (state_ == State::Stopped) return;
  state_ = State::Stopped;
  ++generation_;
  retry_timer_.stop();
  fail_on_demand("the daemon is stopping");
  if (backend_) backend_->stop();
  if (session_) session_->close();
  if (transport_) transport_->stop();
  if (tracker_) (void)index_->commit();
}

void FilesetClient::on_changes(std::vector<ChangeEvent>&& events) {
  for (const auto& e : events) {
    if (e.path == kIgnoreFile || e.to_path == kIgnoreFile) ignore_.load_file(config_.path);
  }
  if (tracker_) tracker_->add_events(std::move(events));
}

void FilesetClient::on_rescan(const std::string& rel_dir, const std::string& reason) {
  if (tracker_) tracker_->rescan(rel_dir, reason);
}

void FilesetClient::when_durable(std::function<void()> done) {
  if (tracker_) tracker_->when_durable(std::move(done));
}

bool FilesetClient::ignored(std::string_view rel_path, bool is_dir) const {
  return is_internal_path(rel_path) || ignore_.ignored(rel_path, is_dir);
}

std::unique_ptr<ClientSession> FilesetClient::open_session() {
  ClientTarget target;
  target.host = config_.server_host;
  target.port = config_.server_port;
  target.user = config_.server_user;
  target.fileset = config_.name;
  target.long_poll_ms = kPollWait * 1000;
  return transport_->connect(loop_, target);
}

HttpRequestHead FilesetClient::request_head(const std::string& method,
                                            const std::string& endpoint) const {
  HttpRequestHead h;
  h.method = method;
  h.target = protocol::url(url_encode_path(config_.name), endpoint);
  if (!config_.auth_none) h.headers.set("Authorization", "Bearer " + config_.token);
  return h;
}

void FilesetClient::set_error(Trouble trouble, const std::string& e) {
  trouble_ = trouble;
  last_error_ = e;
}

void FilesetClient::clear_error(Trouble trouble) {
  if (trouble_ == trouble) last_error_.clear();
}

// Collects a small response body and calls back with status and body.
static ResponseCallbacks collect(
    std::function<void(Status, int, HttpResponseHead&, std::string&)> cb,
    size_t limit = 256u << 20) {
  struct State {
    HttpResponseHead head;
    std::string body;
    bool too_big = false;
  };
  auto st = std::make_shared<State>();
  ResponseCallbacks c;
  c.on_head = [st](HttpResponseHead& h) { st->head = h; };
  c.on_body = [st, limit](std::string_view d) {
    if (st->body.size() + d.size() > limit) {
      st->too_big = true;
      return;
    }
    st->body.append(d);
  };
  c.on_done = [st, cb = std::move(cb)](Status s) {
    if (s && st->too_big) s = make_error(-E2BIG, "response too large");
    cb(s, st->head.status, st->head, st->body);
  };
  return c;
}

void FilesetClient::connect() {
  if (state_ == State::Stopped) return;
  uint64_t gen = ++generation_;
  auto alive = std::weak_ptr<bool>(alive_);
  session_->send(
      request_head("GET", "info"), {},
      collect([this, gen, alive](Status s, int status, HttpResponseHead&, std::string& body) {
        if (alive.expired() || gen != generation_) return;
        if (!s) return lost(s.error().message);
        if (status != 200) return lost("info answered " + std::to_string(status) + ": " + body);
        auto j = nlohmann::json::parse(body, nullptr, false);
        if (j.is_discarded() || !j.contains("uuid") || !j.contains("head")) {
          return lost("info answer is not valid JSON");
        }
        std::string uuid = j["uuid"].get<std::string>();
        server_head_ = j["head"].get<uint32_t>();
        if (server_uuid_.empty() || uuid != server_uuid_) {
          // Resume from last_rcvd of this server's journal, if we have one.
          applied_ = 0;
          uuid_t u;
          if (uuid_parse(uuid.c_str(), u) == 0) {
            if (auto entries = last_rcvd_read(dir_.last_rcvd); entries) {
              for (const auto& e : *entries) {
                if (std::memcmp(e.uuid.data(), u, 16) == 0) {
                  applied_ = static_cast<uint32_t>(e.remote_recno);
                }
              }
            }
          }
          if (!server_uuid_.empty()) {
            log_warn(
                "fileset '{}': the server's journal changed identity ({} -> {}); "
                "replaying it from record {}",
                config_.name, server_uuid_, uuid, applied_);
          }
          server_uuid_ = uuid;
          pending_.clear();
          received_ = applied_;
        }
        if (state_ == State::Disconnected) {
          log_info("fileset '{}': reconnected to {}:{} after {} s (server head {}, last_rcvd {})",
                   config_.name, config_.server_host, config_.server_port,
                   unix_now() - disconnected_since_, server_head_, applied_);
        } else {
          log_info("fileset '{}': connected to {}:{} (server head {}, last_rcvd {})", config_.name,
                   config_.server_host, config_.server_port, server_head_, applied_);
        }
        state_ = State::Connected;
        backoff_ms_ = 0;
        clear_error(Trouble::Connection);
        poll();
        reintegrate();
        next_batch();
      }));
}

void FilesetClient::lost(const std::string& why) {
  if (state_ == State::Stopped) return;
  ++generation_;
  poll_call_.reset();
  requeue_fetching();
  large_.clear();  // their calls went with the session; staged files stay in tmp/
  pending_bytes_ = 0;
  // An upload or reintegrate in flight is dropped with its session (its
  // answer is ignored); the next session starts the round again.
  reintegrating_ = false;
  if (state_ != State::Disconnected) {
    disconnected_since_ = unix_now();
    log_warn("fileset '{}': lost the server {}:{}: {}", config_.name, config_.server_host,
             config_.server_port, why);
  }
  state_ = State::Disconnected;
  set_error(Trouble::Connection, why);
  // Drop every connection: calls still in flight belong to the old session.
  session_->close();
  session_ = open_session();
  backoff_ms_ = backoff_ms_ == 0 ? 500 : std::min(backoff_ms_ * 2, kMaxBackoffMs);
  log_info("fileset '{}': retrying in {} ms ({})", config_.name, backoff_ms_, why);
  retry_timer_.start(backoff_ms_, [this] { connect(); });
}

void FilesetClient::poll() {
  if (state_ != State::Connected || poll_call_ || pending_.size() >= kMaxPending) return;
  uint64_t gen = generation_;
  auto alive = std::weak_ptr<bool>(alive_);
  std::string endpoint = "kml?since=" + std::to_string(received_) +
                         "&wait=" + std::to_string(kPollWait) + "&uuid=" + server_uuid_;
  poll_call_ = session_->send(
      request_head("GET", endpoint), {},
      collect([this, gen, alive](Status s, int status, HttpResponseHead& head, std::string& body) {
        if (alive.expired() || gen != generation_) return;
        poll_call_.reset();
        if (!s) return lost(s.error().message);
        if (status == 409) {
          log_warn("fileset '{}': {}", config_.name, body);
          server_uuid_.clear();  // learn the new identity, resume from its last_rcvd
          return connect();
        }
        if (status != 200) return lost("kml answered " + std::to_string(status) + ": " + body);
        uint32_t head_recno = 0;
        if (auto h = head.headers.get(protocol::kHeaderHead)) {
          std::from_chars(h->data(), h->data() + h->size(), head_recno);
        }
        on_records(std::move(body), head_recno);
        poll();
      }));
}

void FilesetClient::on_records(std::string bytes, uint32_t head) {
  if (head > server_head_) server_head_ = head;
  if (bytes.empty()) return;
  bytes_received_ += bytes.size();
  KmlScan scan = kml_scan(bytes);
  for (const auto& p : scan.problems) {
    log_error("fileset '{}': bad journal record from the server at byte {}: {}", config_.name,
              p.offset, p.reason);
  }
  for (auto& e : scan.entries) {
    if (e.record.recno <= received_) continue;  // a repeat after a reconnect
    if (e.record.recno != received_ + 1) {
      set_error(Trouble::Applying, "journal from the server skips from record " +
                                       std::to_string(received_) + " to " +
                                       std::to_string(e.record.recno));
      log_error("fileset '{}': {}; asking again", config_.name, last_error_);
      break;
    }
    received_ = e.record.recno;
    pending_.push_back(std::move(e.record));
  }
  next_batch();
  prefetch_large();
}

void FilesetClient::next_batch() {
  if (state_ != State::Connected || fetching_ || pending_.empty()) return;
  // Local changes go to the server before the server's are applied here:
  // the server orders both and settles conflicts.
  if (reintegrating_ || local_pending()) return reintegrate();
  auto batch = std::make_unique<Batch>();
  std::vector<Hash> small;
  std::set<Hash> wanted;
  uint64_t small_bytes = 0, large_bytes = 0;
  while (!pending_.empty() && batch->records.size() < kBatchRecords &&
         small_bytes < kBatchSmallBytes && batch->staged.size() < kBatchLargeFiles &&
         large_bytes < kBatchLargeBytes) {
    KmlRecord r = std::move(pending_.front());
    pending_.pop_front();
    std::string why;
    if (!record_paths_ok(r, &why)) {
      log_error("fileset '{}': refusing record {} from the server: {}", config_.name, r.recno, why);
      r.opcode = KmlOp::Noop;
    }
    if (r.opcode == KmlOp::Content && r.size > 0 && !wanted.count(r.hash)) {
      // (The batch before may be being applied: has_content is the safe read.)
      bool have = !refetch_.count(r.hash) && index_->has_content(r.path, r.hash);
      // Data on demand: only pinned files are fetched now, the others
      // become placeholders until a user opens them.
      if (config_.data_on_demand && !pinned(r.path)) have = true;
      if (!have) {
        wanted.insert(r.hash);
        if (r.size <= protocol::kSmallFile) {
          small.push_back(r.hash);
          small_bytes += r.size;
        } else {
          batch->staged.insert(r.hash);
          large_bytes += r.size;
        }
      }
    }
    batch->last_recno = r.recno;
    batch->records.push_back(std::move(r));
  }
  pending_bytes_ += small_bytes;
  batch->requested = std::move(wanted);
  batch->on_demand = config_.data_on_demand;
  batch->fetch_start = std::chrono::steady_clock::now();
  fetching_ = std::move(batch);
  fetches_in_flight_ = 1;  // released below, after every fetch is issued
  for (size_t i = 0; i < small.size(); i += kBulkIds) {
    fetch_small(
        std::vector<Hash>(small.begin() + i, small.begin() + std::min(small.size(), i + kBulkIds)));
  }
  for (const auto& id : std::set<Hash>(fetching_->staged)) {
    uint64_t size = 0;
    for (const auto& r : fetching_->records) {
      if (r.opcode == KmlOp::Content && r.hash == id) size = r.size;
    }
    fetch_large(id, size);
  }
  prefetch_large();
  fetch_done();
}

void FilesetClient::fetch_done() {
  if (--fetches_in_flight_ > 0 || !fetching_) return;
  if (fetching_->missing > 0 && fetch_retries_ < 10) {
    // Content the server did not have at this moment: most often a file
    // renamed on the server a moment ago and not yet journaled. Ask again
    // shortly rather than skip it; after a few tries a later record must
    // be what replaces it.
    ++fetch_retries_;
    requeue_fetching();
    retry_timer_.start(300, [this] { next_batch(); });
    return;
  }
  fetch_retries_ = 0;
  fetching_->ms_fetch = ms_since(fetching_->fetch_start);
  if (applying_ || reintegrating_) return;  // picked up when that ends
  apply(std::move(fetching_));
}

void FilesetClient::requeue(Batch& batch, uint32_t after) {
  for (auto it = batch.records.rbegin(); it != batch.records.rend(); ++it) {
    if (it->recno > after) pending_.push_front(std::move(*it));
  }
}

void FilesetClient::requeue_fetching() {
  if (fetching_) {
    for (const auto& [i, p] : fetching_->prestaged) unlink((dir_.tmp + "/" + p.name).c_str());
    requeue(*fetching_, 0);
  }
  fetching_.reset();
  fetches_in_flight_ = 0;
  ++batch_seq_;  // answers still on their way belong to the dropped batch
}

void FilesetClient::fetch_small(std::vector<Hash> ids) {
  std::string body;
  for (const auto& id : ids) body += hash_hex(id) + "\n";
  ++fetches_in_flight_;
  ++fetching_->small_fetches;
  uint64_t gen = generation_, seq = batch_seq_;
  auto alive = std::weak_ptr<bool>(alive_);
  session_->send(request_head("POST", "contents"), std::move(body),
                 collect([this, gen, seq, alive, ids](Status s, int status, HttpResponseHead&,
                                                      std::string& data) {
                   if (alive.expired() || gen != generation_ || seq != batch_seq_ || !fetching_)
                     return;
                   if (!s) return lost(s.error().message);
                   if (status != 200) return lost("contents answered " + std::to_string(status));
                   size_t pos = 0;
                   for (const auto& id : ids) {
                     if (pos + 8 > data.size()) return lost("contents answer is cut short");
                     uint64_t len = get_u64(data.data() + pos);
                     pos += 8;
                     if (len == UINT64_MAX) {
                       ++fetching_->missing;
                       continue;
                     }
                     if (len > data.size() - pos) return lost("contents answer is cut short");
                     fetching_->small[id] = data.substr(pos, len);
                     pending_bytes_ -= std::min<uint64_t>(pending_bytes_, len);
                     bytes_received_ += len;
                     pos += len;
                   }
                   if (--fetching_->small_fetches == 0) prestage();
                   fetch_done();
                 }));
}

namespace {

// Writes a fetched batch's small contents to staging files on the thread
// pool (RecordApplier::prestage) while the batch still waits for its large
// downloads or for the batch before it to be applied. It works on copies:
// the batch may be dropped meanwhile.
struct PrestageJob {
  uv_work_t work{};
  std::shared_ptr<const SafeRoot> root;
  std::shared_ptr<FileIndex> index;
  std::string tmp_dir, fset;
  std::vector<KmlRecord> records;
  ContentSources sources;
  uint64_t gen = 0, seq = 0;
  std::function<void(PrestageJob&)> done;
};

}  // namespace

void FilesetClient::prestage() {
  if (fetching_->small.empty()) return;
  auto* job = new PrestageJob;
  job->root = root_;
  job->index = index_;
  job->tmp_dir = dir_.tmp;
  job->fset = config_.name;
  job->records = fetching_->records;
  job->sources.small = std::move(fetching_->small);  // back in done()
  job->work.data = job;
  ++fetches_in_flight_;
  uint64_t gen = generation_, seq = batch_seq_;
  auto alive = std::weak_ptr<bool>(alive_);
  job->done = [this, gen, seq, alive](PrestageJob& j) {
    bool current = !alive.expired() && gen == generation_ && seq == batch_seq_ && fetching_;
    if (!current) {
      // The batch was dropped: so are its staging files.
      for (const auto& [i, p] : j.sources.prestaged) unlink((j.tmp_dir + "/" + p.name).c_str());
      return;
    }
    fetching_->small = std::move(j.sources.small);
    fetching_->prestaged = std::move(j.sources.prestaged);
    fetching_->prestaged_early = true;
    fetch_done();
  };
  uv_queue_work(
      loop_, &job->work,
      [](uv_work_t* w) {
        auto& j = *static_cast<PrestageJob*>(w->data);
        // The applier only opens the staging directory here; the index is
        // not touched.
        RecordApplier applier(*j.root, *j.index, j.tmp_dir, j.fset);
        if (applier.open()) {
          applier.prestage(j.records, j.sources, std::thread::hardware_concurrency());
        }
      },
      [](uv_work_t* w, int) {
        std::unique_ptr<PrestageJob> j(static_cast<PrestageJob*>(w->data));
        j->done(*j);
      });
}

void FilesetClient::fetch_large(const Hash& id, uint64_t size) {
  if (auto it = large_.find(id); it != large_.end()) {
    if (!it->second.done) {
      fetching_->awaiting.insert(id);  // downloading ahead: wait for it
      ++fetches_in_flight_;
      return;
    }
    if (it->second.manifest) fetching_->hashed[id] = std::move(*it->second.manifest);
    large_.erase(it);
    return;
  }
  std::string final_path = dir_.tmp + "/" + hash_hex(id);
  struct stat st;
  if (::stat(final_path.c_str(), &st) == 0 && static_cast<uint64_t>(st.st_size) == size) {
    return;  // downloaded before a restart; verified when applied
  }
  if (!download_large(id, size)) {
    fetching_->staged.erase(id);
    return;
  }
  fetching_->awaiting.insert(id);
  ++fetches_in_flight_;
}

bool FilesetClient::download_large(const Hash& id, uint64_t size) {
  std::string hex = hash_hex(id);
  std::string final_path = dir_.tmp + "/" + hex;
  std::string part = final_path + ".part";
  struct stat st;
  uint64_t have = 0;
  if (::stat(part.c_str(), &st) == 0) have = static_cast<uint64_t>(st.st_size);
  if (have >= size) have = 0;
  int fd = ::open(part.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    set_error(Trouble::Applying, part + ": " + strerror(errno));
    return false;
  }
  auto dl = std::make_shared<StagedDownload>();
  dl->loop = loop_;
  dl->fd = fd;
  dl->offset = have;
  pending_bytes_ += size - have;
  large_[id] = LargeDownload{dl, size, false, std::nullopt};
  uint64_t gen = generation_;
  auto alive = std::weak_ptr<bool>(alive_);
  dl->finished = [this, gen, alive, id, part, final_path, owed = size - have](StagedDownload& d) {
    if (alive.expired() || gen != generation_) return;
    auto it = large_.find(id);
    if (it == large_.end()) return;
    if (d.write_error != 0) {
      large_.erase(it);
      set_error(Trouble::Applying, part + ": " + uv_strerror(d.write_error));
      return lost("cannot write " + part + ": " + uv_strerror(d.write_error));
    }
    if (!d.response_status) {
      large_.erase(it);
      return lost(d.response_status.error().message);
    }
    bool awaited = fetching_ && fetching_->awaiting.erase(id) > 0;
    if (d.http_status == 404) {
      // Not there right now (see fetch_done); the partial file is kept.
      large_.erase(it);
      pending_bytes_ -= std::min(pending_bytes_, owed);
      if (awaited) {
        fetching_->staged.erase(id);
        ++fetching_->missing;
      }
    } else if (d.http_status == 200 || d.http_status == 206) {
      ::close(d.fd);
      d.fd = -1;
      if (::truncate(part.c_str(), static_cast<off_t>(d.offset)) != 0 ||
          ::rename(part.c_str(), final_path.c_str()) != 0) {
        large_.erase(it);
        return lost("cannot stage " + final_path + ": " + strerror(errno));
      }
      if (awaited) {
        if (d.manifest) fetching_->hashed[id] = std::move(*d.manifest);
        large_.erase(it);
      } else {
        it->second.done = true;
        it->second.manifest = std::move(d.manifest);
        it->second.dl.reset();
      }
    } else {
      large_.erase(it);
      return lost("content answered " + std::to_string(d.http_status));
    }
    prefetch_large();
    if (awaited) fetch_done();
  };
  if (have > 0) {
    log_info("fileset '{}': resuming download of {} at byte {} of {}", config_.name, hex, have,
             size);
  }
  start_download(dl, id, true);
  return true;
}

void FilesetClient::prefetch_large() {
  if (state_ != State::Connected || config_.data_on_demand) return;
  unsigned in_flight = 0;
  for (const auto& [id, d] : large_) in_flight += d.done ? 0 : 1;
  uint64_t ahead = 0;  // bytes of pending records' contents downloading or downloaded
  std::set<Hash> seen;
  for (const KmlRecord& r : pending_) {
    if (in_flight >= kPrefetchFiles || ahead >= kPrefetchBytes) break;
    if (r.opcode != KmlOp::Content || r.size <= protocol::kSmallFile || !seen.insert(r.hash).second)
      continue;
    if (auto it = large_.find(r.hash); it != large_.end()) {
      ahead += it->second.size;
      continue;
    }
    if (!refetch_.count(r.hash) && index_->has_content(r.path, r.hash)) {
      continue;  // here already (has_content: a batch may be being applied)
    }
    struct stat st;
    std::string final_path = dir_.tmp + "/" + hash_hex(r.hash);
    if (::stat(final_path.c_str(), &st) == 0 && static_cast<uint64_t>(st.st_size) == r.size) {
      continue;
    }
    if (!download_large(r.hash, r.size)) return;
    ++in_flight;
    ahead += r.size;
  }
  // Downloaded ahead for records that went away (the connection was lost,
  // the journal moved on): their files stay in tmp/ like any download.
  for (auto it = large_.begin(); it != large_.end();) {
    bool wanted = seen.count(it->first) || (fetching_ && fetching_->staged.count(it->first));
    it = it->second.done && !wanted ? large_.erase(it) : std::next(it);
  }
}

void FilesetClient::start_download(std::shared_ptr<StagedDownload> dl, const Hash& id,
                                   bool counts_as_pending) {
  HttpRequestHead head = request_head("GET", "content/" + hash_hex(id));
  if (dl->offset > 0) head.headers.set("Range", "bytes=" + std::to_string(dl->offset) + "-");
  ResponseCallbacks cb;
  std::weak_ptr<StagedDownload> weak = dl;
  cb.on_head = [weak](HttpResponseHead& h) {
    auto d = weak.lock();
    if (!d) return;
    d->http_status = h.status;
    if (h.status == 200) d->offset = 0;  // Range not honoured: start over
    if (h.status == 200 || h.status == 206) d->begin_body();
  };
  cb.on_body = [weak, this, counts_as_pending](std::string_view data) {
    auto d = weak.lock();
    if (!d || (d->http_status != 200 && d->http_status != 206)) return;
    bytes_received_ += data.size();
    if (counts_as_pending) pending_bytes_ -= std::min<uint64_t>(pending_bytes_, data.size());
    d->write(data);
  };
  cb.on_done = [dl](Status s) {
    dl->response_done = true;
    dl->response_status = s;
    dl->call.reset();
    dl->maybe_finish();
  };
  dl->call = session_->send(std::move(head), {}, std::move(cb));
}

void FilesetClient::apply(std::unique_ptr<Batch> batch) {
  applying_ = true;
  auto* job = new ApplyJob;
  job->batch = std::move(batch);
  job->root = root_;
  job->index = index_;
  job->tmp_dir = dir_.tmp;
  job->last_rcvd = dir_.last_rcvd;
  job->server_uuid = server_uuid_;
  job->fset = config_.name;
  if (tracker_) {
    // Nothing is journaled while the server's records are written; a file
    // changed here meanwhile is left alone (it differs from the index) and
    // reintegrated afterwards, where the server sees both versions.
    tracker_->pause();
    if (job->batch->local == Batch::Local::None) {
      job->protect = [paths = local_pending_paths()](const std::string& p) {
        return paths.count(p) > 0;
      };
    }
  }
  job->work.data = job;
  auto alive = std::weak_ptr<bool>(alive_);
  job->done = [this, alive](ApplyJob* j) {
    if (alive.expired()) return;
    applying_ = false;
    if (tracker_) tracker_->resume();
    Batch& b = *j->batch;
    if (b.local != Batch::Local::None) return local_batch_done(b);
    entries_ = j->entries ? j->entries : entries_;
    if (b.applied_upto > applied_) applied_ = b.applied_upto;
    if (!b.error.empty()) {
      // Keep what was applied; put the rest back and try again later (a
      // full disk, for one, clears up).
      log_error("fileset '{}': applying stopped at record {}: {}", config_.name, b.applied_upto + 1,
                b.error);
      set_error(Trouble::Applying, b.error);
      // The batch fetched meanwhile comes after this one's remainder.
      requeue_fetching();
      requeue(b, b.applied_upto);
      retry_timer_.start(5000, [this] {
        if (state_ == State::Connected) next_batch();
      });
      return;
    }
    if (b.refetch) {
      // The local copy a record was to be made from went away in this
      // batch: the rest goes again, that content from the server.
      log_debug("fileset '{}': record {}: local copy gone, fetching {}", config_.name,
                b.applied_upto + 1, hash_hex(*b.refetch));
      refetch_.insert(*b.refetch);
      requeue_fetching();
      requeue(b, b.applied_upto);
      next_batch();
      return;
    }
    refetch_.clear();
    interrupted_batch_.clear();
    if (b.skipped == 0) clear_error(Trouble::Applying);
    log_debug(
        "fileset '{}': applied records up to {} ({} records: fetched in {:.0f} ms; staging "
        "{:.0f} ms, applying {:.0f} ms, syncfs {:.0f} ms, index {:.0f} ms)",
        config_.name, applied_, b.records.size(), b.ms_fetch, j->ms_prestage, j->ms_apply,
        j->ms_syncfs, j->ms_commit);
    carry_on();
  };
  uv_queue_work(
      loop_, &job->work, [](uv_work_t* w) { run_apply_job(*static_cast<ApplyJob*>(w->data)); },
      [](uv_work_t* w, int) {
        std::unique_ptr<ApplyJob> j(static_cast<ApplyJob*>(w->data));
        j->done(j.get());
      });
  // Fetch the next batch while this one is written.
  next_batch();
}

std::set<std::string> FilesetClient::local_pending_paths() const {
  std::set<std::string> paths;
  if (!local_pending()) return paths;
  uint32_t last = 0;
  auto bytes = local_journal_.read_after(reintegrated_, UINT64_MAX, &last);
  if (!bytes) return paths;
  for (auto& e : kml_scan(*bytes).entries) {
    KmlRecord& r = e.record;
    std::string why;
    if (!record_paths_ok(r, &why)) continue;
    paths.insert(r.path);
    if (!r.src.empty()) paths.insert(r.src);
    if (r.opcode == KmlOp::Rename || r.opcode == KmlOp::Link) paths.insert(r.target);
  }
  return paths;
}

bool FilesetClient::local_pending() const {
  return tracker_ && local_journal_.head() > reintegrated_;
}

// One round of reintegration: the local records, the contents they need on
// the server, and where the upload stands.
struct UploadPlan {
  std::string records;  // KML bytes sent as the reintegrate body
  uint32_t last = 0;
  struct Upload {
    Hash id;
    std::string path;
    uint64_t size = 0;
  };
  std::vector<Upload> uploads;
  std::map<uint32_t, Hash> contents;  // local recno of each CONTENT record -> its content id
  size_t next = 0;
  uint64_t offset = 0;
};

void FilesetClient::reintegrate() {
  if (!tracker_ || state_ != State::Connected || reintegrating_ || applying_ || !local_pending()) {
    return;
  }
  uint32_t last = 0;
  auto bytes = local_journal_.read_after(reintegrated_, 1 << 20, &last);
  if (!bytes || bytes->empty()) return;
  KmlScan scan = kml_scan(*bytes);
  auto plan = std::make_shared<UploadPlan>();
  plan->records = std::move(*bytes);
  plan->last = last;
  size_t deletions = 0;
  std::set<Hash> seen;
  for (const auto& e : scan.entries) {
    const KmlRecord& r = e.record;
    if (r.opcode == KmlOp::Unlink || r.opcode == KmlOp::Rmdir) ++deletions;
    if (r.opcode == KmlOp::Content && r.size > 0) {
      plan->contents[r.recno] = r.hash;
      if (seen.insert(r.hash).second) plan->uploads.push_back({r.hash, r.path, r.size});
    }
  }
  // Deletions come in bursts (rm -r, a disk that vanished): let a burst
  // gather for a moment so the guard below judges it whole.
  if (deletions > 0 && !deletions_settled_) {
    if (!deletion_timer_.active()) {
      deletion_timer_.start(300, [this] {
        deletions_settled_ = true;
        reintegrate();
      });
    }
    return;
  }
  // Mass-deletion guard: an unmounted disk looks like everything deleted.
  // The share is of what the server has, which still counts these entries.
  double share = 0.5;
  size_t known = index_->size() + deletions;
  if (deletions >= 10 && double(deletions) > share * double(known) && !confirmed_) {
    if (held_deletions_ != deletions) {
      log_warn(
          "fileset '{}': holding {} deletions ({}% of {} entries): confirm with "
          "`intersyncctl confirm {}` if they are meant",
          config_.name, deletions, deletions * 100 / known, known, config_.name);
    }
    held_deletions_ = deletions;
    return;
  }
  if (confirmed_) log_info("fileset '{}': sending {} confirmed deletions", config_.name, deletions);
  confirmed_ = false;
  held_deletions_ = 0;
  deletions_settled_ = false;
  reintegrating_ = true;
  upload_next(plan);
}

bool FilesetClient::confirm() {
  if (held_deletions_ == 0) return false;
  confirmed_ = true;
  reintegrate();
  return true;
}

void FilesetClient::upload_next(std::shared_ptr<UploadPlan> plan) {
  if (plan->next >= plan->uploads.size()) return send_reintegrate(plan);
  const auto& u = plan->uploads[plan->next];
  // The bytes now on disk: where the record was made, or where the index
  // says that content is now (the file was renamed since). If the file
  // changed since it was journaled its content id no longer matches, the
  // server answers "superseded" and the later record carries the new
  // content.
  auto open_source = [&](const std::string& path, struct stat* st) -> Result<UniqueFd> {
    auto fd = root_->open_beneath(path, O_RDONLY | O_NOFOLLOW);
    if (!fd) return fd;
    if (fstat(fd->get(), st) != 0 || static_cast<uint64_t>(st->st_size) != u.size) {
      return make_error(-ESTALE, path + " changed");
    }
    return fd;
  };
  struct stat st;
  auto fd = open_source(u.path, &st);
  if (!fd) {
    if (auto moved = index_->path_of_content(u.id)) fd = open_source(*moved, &st);
  }
  if (!fd) {
    ++plan->next;
    plan->offset = 0;
    return upload_next(plan);
  }
  constexpr uint64_t kPiece = 16ull << 20;
  std::string piece(std::min(kPiece, u.size - plan->offset), '\0');
  ssize_t n = pread(fd->get(), piece.data(), piece.size(), static_cast<off_t>(plan->offset));
  if (n != static_cast<ssize_t>(piece.size())) {
    ++plan->next;
    plan->offset = 0;
    return upload_next(plan);
  }
  std::string endpoint = "upload/" + hash_hex(u.id) + "?offset=" + std::to_string(plan->offset) +
                         "&size=" + std::to_string(u.size);
  uint64_t gen = generation_;
  auto alive = std::weak_ptr<bool>(alive_);
  session_->send(request_head("PUT", endpoint), std::move(piece),
                 collect([this, gen, alive, plan](Status s, int status, HttpResponseHead& head,
                                                  std::string& body) {
                   if (alive.expired() || gen != generation_) return;
                   if (!s) {
                     reintegrating_ = false;
                     return lost(s.error().message);
                   }
                   const auto& up = plan->uploads[plan->next];
                   uint64_t at = 0;
                   if (auto o = head.headers.get("X-Intersync-Offset")) {
                     std::from_chars(o->data(), o->data() + o->size(), at);
                   }
                   if (status == 200 || status == 409) {
                     // 409: the server has a different amount already (a resumed
                     // upload); continue from where it stands.
                     if (status == 200 && at > plan->offset) bytes_sent_ += at - plan->offset;
                     plan->offset = at;
                     if (plan->offset >= up.size || body == "complete\n") {
                       ++plan->next;
                       plan->offset = 0;
                     }
                     return upload_next(plan);
                   }
                   reintegrating_ = false;
                   std::string answer = server_answer(status, body);
                   set_error(Trouble::Reintegrating, "upload of " + up.path + " " + answer);
                   log_error("fileset '{}': {}", config_.name, last_error_);
                   retry_timer_.start(5000, [this] { reintegrate(); });
                 }));
}

void FilesetClient::send_reintegrate(std::shared_ptr<UploadPlan> plan) {
  HttpRequestHead head = request_head("POST", "reintegrate");
  char host[256] = "client";
  gethostname(host, sizeof host - 1);
  head.headers.set("X-Intersync-Host", host);
  // Which copy of the fileset this is: clients may share a token, yet each
  // replica's own successive changes must be told apart from another's.
  head.headers.set("X-Intersync-Replica", dir_.uuid);
  head.headers.set("Content-Type", protocol::kKmlMediaType);
  uint64_t gen = generation_;
  auto alive = std::weak_ptr<bool>(alive_);
  session_->send(
      std::move(head), plan->records,
      collect([this, gen, alive, plan](Status s, int status, HttpResponseHead&, std::string& body) {
        if (alive.expired() || gen != generation_) return;
        reintegrating_ = false;
        if (!s) return lost(s.error().message);
        if (status != 200) {
          set_error(Trouble::Reintegrating, "reintegrate " + server_answer(status, body));
          log_error("fileset '{}': {}", config_.name, last_error_);
          retry_timer_.start(5000, [this] { reintegrate(); });
          return;
        }
        on_reintegrated(plan, body);
      }));
}

void FilesetClient::on_reintegrated(std::shared_ptr<UploadPlan> plan, const std::string& body) {
  auto answer = nlohmann::json::parse(body, nullptr, false);
  if (answer.is_discarded() || !answer.contains("results")) {
    set_error(Trouble::Reintegrating, "reintegrate answer is not valid JSON");
    return;
  }
  std::vector<std::string> resend, resend_content;
  size_t accepted = 0, conflicts = 0;
  for (const auto& r : answer["results"]) {
    std::string result = r.value("result", "");
    std::string path = r.value("path", "");
    uint32_t server_recno = r.value("server_recno", 0u);
    if (result == "accepted" || result == "conflict") {
      ++accepted;
      // After a conflict the server's version comes back through the
      // journal; until then the file here is still the client's, and a
      // later change to it must not be taken as based on the server's.
      bool own = result == "accepted" || r.value("winner", "") == "client";
      // A rename's entry is at its target here; the server's version of it
      // is now the RENAME's (so a later change is based on that, whatever
      // the server remembers of who made it).
      std::string entry = r.contains("target") ? r.value("target", "") : path;
      if (const FileState* st = index_->find(entry); own && st && server_recno > 0) {
        FileState fs = *st;
        fs.version = server_recno;
        index_->put(entry, fs);
      }
    }
    if (result == "conflict") {
      ++conflicts;
      nlohmann::json c{{"fileset", config_.name},
                       {"path", path},
                       {"copy", r.value("copy", "")},
                       {"detail", r.value("detail", "")},
                       {"time", unix_now()}};
      log_warn(
          "fileset '{}': conflict on {}: {}{}", config_.name, path, r.value("detail", ""),
          c["copy"].get<std::string>().empty() ? "" : " (" + c["copy"].get<std::string>() + ")");
      conflicts_.push_back(std::move(c));
    }
    if (result == "resend") {
      resend.push_back(path);
      if (r.contains("target")) resend.push_back(r.value("target", ""));
    }
    if (result == "superseded" && r.value("detail", "") == protocol::kNotUploaded) {
      // Its content never reached the server. If that content is still
      // what a file here holds (it moved, and the later records say only
      // that), the file is journaled again so that its bytes go up.
      auto c = plan->contents.find(r.value("recno", 0u));
      if (c != plan->contents.end()) {
        if (auto current = index_->path_of_content(c->second)) resend_content.push_back(*current);
      }
    }
    if (result == "refused") {
      log_error("fileset '{}': the server refused local record {} ({}): {}", config_.name,
                r.value("recno", 0u), path, r.value("detail", ""));
    }
  }
  reintegrated_ = plan->last;
  index_->set_meta("reintegrated", std::to_string(reintegrated_));
  index_->set_meta("conflicts", json_text(conflicts_));
  if (Status s = index_->commit(); !s) {
    set_error(Trouble::Reintegrating, s.error().message);
  } else {
    clear_error(Trouble::Reintegrating);
  }
  log_info("fileset '{}': reintegrated local records up to {} ({} accepted, {} conflicts)",
           config_.name, reintegrated_, accepted, conflicts);
  for (const auto& path : resend) {
    // The server could not rename it; the object goes again as new.
    for (const auto& p : index_->paths_under(path)) index_->erase(p);
    index_->erase(path);
    tracker_->reconcile_now(path);
  }
  for (const auto& path : resend_content) {
    const FileState* st = index_->find(path);
    if (!st) continue;
    log_info("fileset '{}': the server lacks the content of {}; sending it again", config_.name,
             path);
    FileState forget = *st;
    forget.content_id = Hash{};
    forget.size = UINT64_MAX;  // differs from the disk: the tracker hashes it again
    index_->put(path, forget);
    tracker_->reconcile_now(path);
  }
  carry_on();
}

void FilesetClient::carry_on() {
  if (start_local_batch()) return;
  if (local_pending()) return reintegrate();
  if (fetching_ && fetches_in_flight_ == 0 && !applying_) return apply(std::move(fetching_));
  next_batch();
  poll();
}

nlohmann::json FilesetClient::conflicts() const {
  return conflicts_;
}

nlohmann::json FilesetClient::status() const {
  nlohmann::json j;
  j["name"] = config_.name;
  j["role"] = "client";
  j["path"] = config_.path;
  j["server"] = config_.server_host + ":" + std::to_string(config_.server_port);
  const char* state = "connecting";
  switch (state_) {
    case State::Connecting:
      state = "connecting";
      break;
    case State::Connected:
      state = "connected";
      break;
    case State::Disconnected:
      state = "disconnected";
      break;
    case State::Stopped:
      state = "stopped";
      break;
  }
  j["state"] = state;
  if (state_ == State::Disconnected) j["disconnected_since"] = disconnected_since_;
  j["server_uuid"] = server_uuid_;
  j["last_rcvd"] = applied_;
  j["server_head"] = server_head_;
  j["records_pending"] = server_head_ > applied_ ? server_head_ - applied_ : 0;
  j["bytes_pending"] = pending_bytes_;
  j["bytes_received"] = bytes_received_;
  j["entries"] = entries_;
  j["last_error"] = last_error_;
  j["write_back"] = config_.write_back;
  j["data_on_demand"] = config_.data_on_demand;
  if (config_.data_on_demand) j["pinned"] = pins_;
  if (tracker_) {
    j["local_pending"] = local_journal_.head() - reintegrated_;
    j["local_head"] = local_journal_.head();
    j["reintegrated"] = reintegrated_;
    j["held_deletions"] = held_deletions_;
    j["conflicts"] = conflicts_.size();
    j["bytes_sent"] = bytes_sent_;
  }
  return j;
}

}  // namespace intersync
