// Data on demand (izofs): a client fileset with `data_on_demand: true`
// receives metadata eagerly and keeps each file as a placeholder (see
// record_applier.h) until a user opens it; izofs then sends `fetch` over
// the control socket and the open waits for the answer. `pin` fetches a
// path (a file or a whole directory) and keeps it fetched as it changes;
// `evict` turns fetched, unchanged files back into placeholders. Downloads
// are installed by local batches, serialised with the apply jobs that
// share the index.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "client_batch.h"
#include "fileset_client.h"
#include "intersync/log.h"
#include "path_util.h"
#include "record_applier.h"

namespace intersync {
namespace {

std::string pins_file(const FilesetDir& dir) {
  return dir.dir + "/pins";
}

}  // namespace

void FilesetClient::load_pins() {
  pins_.clear();
  std::ifstream in(pins_file(dir_));
  auto j = nlohmann::json::parse(in, nullptr, false);
  if (!j.is_array()) return;
  for (const auto& p : j) {
    if (p.is_string()) pins_.push_back(p.get<std::string>());
  }
}

void FilesetClient::save_pins() {
  std::string path = pins_file(dir_), tmp = path + ".new";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << nlohmann::json(pins_).dump() << "\n";
    if (!out.flush()) {
      log_error("fileset '{}': cannot write {}", config_.name, tmp);
      return;
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    log_error("fileset '{}': cannot write {}: {}", config_.name, path, strerror(errno));
}

bool FilesetClient::pinned(const std::string& path) const {
  for (const auto& p : pins_) {
    if (is_same_or_under(path, p)) return true;
  }
  return false;
}

std::vector<std::string> FilesetClient::files_at(const std::string& path) const {
  std::vector<std::string> files;
  const FileState* idx = index_->find(path);
  if (idx && idx->type == FileType::File) return {path};
  if (!idx && !path.empty()) return files;
  for (const auto& p : index_->paths_under(path)) {
    const FileState* st = index_->find(p);
    if (st && st->type == FileType::File) files.push_back(p);
  }
  return files;
}

bool FilesetClient::is_placeholder_path(const std::string& path) const {
  std::string name;
  auto parent = root_->open_parent(path, &name);
  return parent && is_placeholder(parent->get(), name);
}

void FilesetClient::on_demand(const std::string& cmd, const std::string& path,
                              std::function<void(Status)> done) {
  if (!path.empty() && !index_->find(path)) {
    return done(make_error(-ENOENT, "'" + path + "' is not in fileset '" + config_.name + "'"));
  }
  if (cmd == "fetch") return fetch_on_demand(path, std::move(done));
  if (!config_.data_on_demand) {
    return done(make_error(
        -EINVAL, "fileset '" + config_.name + "' keeps every file: it has no data_on_demand"));
  }
  if (cmd == "pin") {
    if (!pinned(path)) {
      std::erase_if(pins_, [&](const std::string& p) { return is_same_or_under(p, path); });
      pins_.push_back(path);
      save_pins();
    }
    return fetch_on_demand(path, std::move(done));
  }
  if (cmd == "evict") {
    std::erase_if(pins_, [&](const std::string& p) { return is_same_or_under(p, path); });
    save_pins();
    for (const auto& p : pins_) {
      if (is_same_or_under(path, p)) {
        return done(make_error(
            -EBUSY, "'" + path + "' is under the pinned '" + (p.empty() ? "/" : p) + "'"));
      }
    }
    return evict(path, std::move(done));
  }
  done(make_error(-EINVAL, "unknown command '" + cmd + "'"));
}

void FilesetClient::fetch_on_demand(const std::string& path, std::function<void(Status)> done) {
  std::vector<std::string> absent;
  for (const auto& f : files_at(path)) {
    if (is_placeholder_path(f)) absent.push_back(f);
  }
  if (absent.empty()) return done({});
  if (state_ != State::Connected) {
    return done(make_error(-EHOSTUNREACH, "cannot fetch '" + path + "': the server " +
                                              config_.server_host + " cannot be reached"));
  }
  // One answer once every file is in, or at the first failure.
  struct Join {
    size_t left;
    std::function<void(Status)> done;
  };
  auto join = std::make_shared<Join>(Join{absent.size(), std::move(done)});
  auto one_done = [join](Status s) {
    if (!join->done) return;
    if (!s || --join->left == 0) {
      auto d = std::move(join->done);
      join->done = nullptr;
      d(s);
    }
  };
  for (const auto& f : absent) {
    const FileState* st = index_->find(f);
    Demand& d = demands_[st->content_id];
    bool start = d.waiters.empty();
    d.paths.insert(f);
    d.waiters.push_back(one_done);
    if (start) download_on_demand(st->content_id, st->size);
  }
}

void FilesetClient::download_on_demand(const Hash& id, uint64_t size) {
  std::string hex = hash_hex(id);
  std::string name = "d-" + hex;
  std::string part = dir_.tmp + "/" + name + ".part";
  auto fail = [this, id](const std::string& why) {
    auto it = demands_.find(id);
    if (it == demands_.end()) return;
    auto waiters = std::move(it->second.waiters);
    demands_.erase(it);
    log_warn("fileset '{}': fetch on demand of {} failed: {}", config_.name, hash_hex(id), why);
    for (auto& w : waiters) w(make_error(-EIO, why));
  };
  struct stat st;
  uint64_t have = ::stat(part.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
  if (have >= size) have = 0;
  int fd = ::open(part.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return fail(part + ": " + strerror(errno));
  auto dl = std::make_shared<StagedDownload>();
  dl->loop = loop_;
  dl->fd = fd;
  dl->offset = have;
  uint64_t gen = generation_;
  auto alive = std::weak_ptr<bool>(alive_);
  dl->finished = [this, gen, alive, id, part, name, fail](StagedDownload& d) {
    if (alive.expired()) return;
    if (gen != generation_) return fail("the connection to the server was lost");
    if (d.write_error != 0) return fail(part + ": " + uv_strerror(d.write_error));
    if (!d.response_status) return fail(d.response_status.error().message);
    if (d.http_status == 404) return fail("the server no longer has this content");
    if (d.http_status != 200 && d.http_status != 206) {
      return fail("content answered " + std::to_string(d.http_status));
    }
    ::close(d.fd);
    d.fd = -1;
    if (::truncate(part.c_str(), static_cast<off_t>(d.offset)) != 0 ||
        ::rename(part.c_str(), (dir_.tmp + "/" + name).c_str()) != 0) {
      return fail("cannot stage " + part + ": " + strerror(errno));
    }
    auto it = demands_.find(id);
    if (it == demands_.end()) return;
    auto batch = std::make_unique<Batch>();
    batch->local = Batch::Local::Install;
    batch->staged_as[id] = name;
    if (d.manifest) batch->hashed[id] = std::move(*d.manifest);
    for (const auto& path : it->second.paths) {
      const FileState* idx = index_->find(path);
      if (!idx || idx->content_id != id) {
        batch->failed.push_back(path + ": changed on the server meanwhile; open it again");
        continue;
      }
      KmlRecord r;
      r.opcode = KmlOp::Content;
      r.path = path;
      r.recno = idx->version;
      r.hash = id;
      r.size = idx->size;
      r.nchunks = idx->nchunks;
      r.mode = S_IFREG | idx->mode;
      r.v_obj_new.mtime_sec = static_cast<uint32_t>(idx->mtime_ns / 1000000000);
      r.v_obj_new.mtime_nsec = static_cast<uint32_t>(idx->mtime_ns % 1000000000);
      batch->records.push_back(std::move(r));
    }
    batch->waiters = std::move(it->second.waiters);
    demands_.erase(it);
    queue_local_batch(std::move(batch));
  };
  start_download(dl, id, false);
}

void FilesetClient::evict(const std::string& path, std::function<void(Status)> done) {
  std::set<std::string> busy = local_pending_paths();
  auto batch = std::make_unique<Batch>();
  batch->local = Batch::Local::Evict;
  for (const auto& f : files_at(path)) {
    if (busy.count(f)) {
      return done(make_error(-EBUSY, "'" + f + "' has local changes the server has not taken yet"));
    }
    if (!is_placeholder_path(f)) batch->evict.push_back(f);
  }
  if (batch->evict.empty()) return done({});
  batch->waiters.push_back(std::move(done));
  queue_local_batch(std::move(batch));
}

void FilesetClient::fail_on_demand(const std::string& why) {
  auto demands = std::move(demands_);
  demands_.clear();
  auto batches = std::move(local_batches_);
  local_batches_.clear();
  for (auto& [id, d] : demands) {
    for (auto& w : d.waiters) w(make_error(-ECANCELED, why));
  }
  for (auto& b : batches) {
    for (auto& w : b->waiters) w(make_error(-ECANCELED, why));
  }
}

void FilesetClient::queue_local_batch(std::unique_ptr<Batch> batch) {
  local_batches_.push_back(std::move(batch));
  start_local_batch();
}

bool FilesetClient::start_local_batch() {
  if (local_batches_.empty() || applying_ || reintegrating_) return false;
  auto batch = std::move(local_batches_.front());
  local_batches_.pop_front();
  apply(std::move(batch));
  return true;
}

void FilesetClient::local_batch_done(Batch& b) {
  Status result;
  if (!b.error.empty()) {
    result = make_error(-EIO, b.error);
  } else if (!b.failed.empty()) {
    std::string why = b.failed.front();
    if (b.failed.size() > 1) why += " (and " + std::to_string(b.failed.size() - 1) + " more)";
    result = make_error(-EIO, why);
  }
  size_t n = b.local == Batch::Local::Install ? b.records.size() : b.evict.size();
  const char* what = b.local == Batch::Local::Install ? "fetched on demand" : "evicted";
  if (result) {
    log_info("fileset '{}': {} {} file(s)", config_.name, what, n);
  } else {
    log_warn("fileset '{}': {}: {}", config_.name, what, result.error().message);
  }
  for (auto& w : b.waiters) w(result);
  carry_on();
}

}  // namespace intersync
