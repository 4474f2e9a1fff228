// Chunked, back-pressured file streaming; see file_streamer.h.
#include "file_streamer.h"

#include <string>
#include <utility>

#include "intersync/log.h"

namespace intersync {
namespace {

constexpr size_t kPiece = 256 * 1024;
constexpr unsigned kPiecesAhead = 4;  // read but not yet handed to the kernel

struct Streamer : std::enable_shared_from_this<Streamer> {
  uv_fs_t req{};
  uv_loop_t* loop = nullptr;
  UniqueFd fd;
  uint64_t offset = 0;
  uint64_t remaining = 0;
  uint64_t sent = 0;
  std::string buf;
  bool reading = false;
  bool finished = false;
  unsigned unflushed = 0;
  std::shared_ptr<ResponseWriter> writer;
  std::function<void(uint64_t)> on_done;
  std::shared_ptr<Streamer> self;  // kept while a read is in flight

  void finish(bool ok) {
    if (std::exchange(finished, true)) return;
    if (ok) {
      writer->end();
    } else {
      writer->abort();
    }
    if (on_done) on_done(sent);
  }

  // Reads the next piece when one is due, or ends the response once every
  // piece is read and flushed.
  void pump() {
    if (finished || reading) return;
    if (remaining == 0) {
      if (unflushed == 0) finish(true);
      return;
    }
    if (writer->closed()) return finish(false);
    if (unflushed >= kPiecesAhead) return;
    buf.resize(std::min<uint64_t>(kPiece, remaining));
    uv_buf_t b = uv_buf_init(buf.data(), static_cast<unsigned>(buf.size()));
    self = shared_from_this();
    req.data = this;
    reading = true;
    int rc = uv_fs_read(loop, &req, fd.get(), &b, 1, static_cast<int64_t>(offset), [](uv_fs_t* r) {
      auto* s = static_cast<Streamer*>(r->data);
      std::shared_ptr<Streamer> keep = std::move(s->self);
      ssize_t n = r->result;
      uv_fs_req_cleanup(r);
      s->on_read(n);
    });
    if (rc != 0) {
      reading = false;
      self.reset();
      finish(false);
    }
  }

  void on_read(ssize_t n) {
    reading = false;
    if (finished) return;
    if (n <= 0) {
      log_warn("stream to {}: file ended or failed {} bytes early", writer->peer(), remaining);
      return finish(false);
    }
    buf.resize(static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
    remaining -= static_cast<uint64_t>(n);
    sent += static_cast<uint64_t>(n);
    ++unflushed;
    auto keep = shared_from_this();
    writer->write(std::move(buf), [keep] {
      --keep->unflushed;
      keep->pump();
    });
    buf = std::string();
    pump();
  }
};

}  // namespace

void stream_file(uv_loop_t* loop, UniqueFd fd, uint64_t offset, uint64_t length,
                 std::shared_ptr<ResponseWriter> writer, std::function<void(uint64_t)> on_done) {
  auto s = std::make_shared<Streamer>();
  s->loop = loop;
  s->fd = std::move(fd);
  s->offset = offset;
  s->remaining = length;
  s->writer = std::move(writer);
  s->on_done = std::move(on_done);
  s->pump();
}

}  // namespace intersync
