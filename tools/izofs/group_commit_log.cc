// Appends and group commit of izofs's KML; see group_commit_log.h.
#include "group_commit_log.h"

#include "intersync/log.h"

namespace izofs {

using intersync::Status;

GroupCommitLog::~GroupCommitLog() {
  (void)stop();
}

Status GroupCommitLog::open(const std::string& path) {
  return writer_.open(path);
}

Status GroupCommitLog::append(intersync::KmlRecord& rec) {
  std::lock_guard lock(mutex_);
  auto offset = writer_.append(rec);
  if (!offset.ok()) return offset.error();
  if (appended_++ == durable_) {
    oldest_not_durable_ = std::chrono::steady_clock::now();
    became_dirty_.notify_one();
  }
  return Status::Ok();
}

Status GroupCommitLog::sync() {
  std::unique_lock lock(mutex_);
  const uint64_t wanted = appended_;
  while (durable_ < wanted) {
    if (syncing_) {
      sync_done_.wait(lock);
      continue;
    }
    syncing_ = true;
    const uint64_t covered = appended_;
    const auto started = std::chrono::steady_clock::now();
    lock.unlock();
    // KmlWriter::sync() reads only the descriptor, which append() never
    // changes: it may run beside appends.
    Status synced = writer_.sync();
    lock.lock();
    syncing_ = false;
    if (synced.ok()) {
      durable_ = std::max(durable_, covered);
      // What this sync did not cover was appended after it started.
      if (durable_ < appended_) oldest_not_durable_ = std::max(oldest_not_durable_, started);
    }
    sync_done_.notify_all();
    if (!synced.ok()) return synced;
  }
  return Status::Ok();
}

void GroupCommitLog::start(std::chrono::milliseconds max_delay) {
  thread_ = std::thread([this, max_delay] { sync_in_background(max_delay); });
}

void GroupCommitLog::sync_in_background(std::chrono::milliseconds max_delay) {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    if (durable_ == appended_) {
      became_dirty_.wait(lock);
      continue;
    }
    if (became_dirty_.wait_until(lock, oldest_not_durable_ + max_delay,
                                 [this] { return stopping_ || durable_ == appended_; })) {
      continue;
    }
    lock.unlock();
    Status synced = sync();
    lock.lock();
    if (!synced.ok()) {
      intersync::log_error("izofs: {}; trying again", synced.error().message);
      oldest_not_durable_ = std::chrono::steady_clock::now();
    }
  }
}

Status GroupCommitLog::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    became_dirty_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
  if (writer_.fd() < 0) return Status::Ok();
  return sync();
}

}  // namespace izofs
