// StagedDownload (see client_batch.h): a response body written to its
// staging file, and hashed, in order on the thread pool.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "client_batch.h"

namespace intersync {

// One thread-pool job: writes the buffers received since the last job at
// the file's end and feeds them to the chunker.
struct StagedDownload::Job {
  uv_work_t work{};
  std::shared_ptr<StagedDownload> owner;
  std::vector<std::string> bufs;
  int fd = -1;
  uint64_t at = 0;
  Chunker* chunker = nullptr;
  int error = 0;  // a negative errno
  uint64_t bytes = 0;
};

StagedDownload::~StagedDownload() {
  if (fd >= 0) ::close(fd);
}

void StagedDownload::begin_body() {
  written_ = offset;
  if (offset == 0) chunker_ = std::make_unique<Chunker>();
}

void StagedDownload::write(std::string_view data) {
  if (write_error != 0) return;  // reported when the response ends
  waiting_.emplace_back(data);
  queued_ += data.size();
  offset += data.size();
  if (!job_) start_job();
  if (queued_ > (8u << 20) && call && !paused_) {
    paused_ = true;
    call->pause();
  }
}

void StagedDownload::start_job() {
  job_ = new Job;
  job_->work.data = job_;
  job_->owner = shared_from_this();
  job_->bufs = std::move(waiting_);
  waiting_.clear();
  job_->fd = fd;
  job_->at = written_;
  job_->chunker = write_error == 0 ? chunker_.get() : nullptr;
  uv_queue_work(
      loop, &job_->work,
      [](uv_work_t* w) {
        Job& j = *static_cast<Job*>(w->data);
        for (const auto& b : j.bufs) {
          for (size_t off = 0; off < b.size() && j.error == 0;) {
            ssize_t n = pwrite(j.fd, b.data() + off, b.size() - off, static_cast<off_t>(j.at));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
              j.error = n < 0 ? -errno : -EIO;
              break;
            }
            off += static_cast<size_t>(n);
            j.at += static_cast<uint64_t>(n);
          }
          if (j.error != 0) break;
          if (j.chunker) j.chunker->feed(b.data(), b.size());
          j.bytes += b.size();
        }
        // Start writing back what is written: the batch's syncfs then
        // waits for the last few MiB, not for the whole file.
        if (j.bytes > 0) {
          sync_file_range(j.fd, static_cast<off_t>(j.at - j.bytes), static_cast<off_t>(j.bytes),
                          SYNC_FILE_RANGE_WRITE);
        }
      },
      [](uv_work_t* w, int) {
        std::unique_ptr<Job> j(static_cast<Job*>(w->data));
        StagedDownload& self = *j->owner;
        self.job_ = nullptr;
        uint64_t total = 0;
        for (const auto& b : j->bufs) total += b.size();
        self.queued_ -= total;
        self.written_ += j->bytes;
        if (j->error != 0 && self.write_error == 0) {
          self.write_error = j->error;
          self.chunker_.reset();
        }
        if (self.paused_ && self.queued_ < (2u << 20) && self.call) {
          self.paused_ = false;
          self.call->resume();
        }
        if (!self.waiting_.empty()) return self.start_job();
        self.maybe_finish();
      });
}

void StagedDownload::maybe_finish() {
  if (!response_done || job_ || !waiting_.empty() || !finished) return;
  if (chunker_ && write_error == 0 && response_status &&
      (http_status == 200 || http_status == 206)) {
    manifest = chunker_->finish();
  }
  chunker_.reset();
  auto f = std::move(finished);
  finished = nullptr;
  f(*this);
}

}  // namespace intersync
