// UvStream: reads into one buffer per stream and hands each piece to the
// owner's on_data; writes and shutdowns are libuv requests that carry their
// own data and callback and never touch the stream again, so a request
// completing after the stream went away is harmless.
#include "intersync/uv_stream.h"

#include <utility>

namespace intersync {
namespace {

constexpr size_t kReadBufferSize = 64 * 1024;

struct WriteReq {
  uv_write_t req;
  std::string data;
  ByteStream::Done done;
};

struct ShutdownReq {
  uv_shutdown_t req;
  ByteStream::Done done;
  // A stream whose write side is a handle of its own closes that handle
  // once the shutdown is through: a pipe has no half-close but EOF.
  std::weak_ptr<UvStream> split;
};

}  // namespace

UvStream::UvStream(Owned in, Owned out, std::string peer)
    : in_(in), out_(out), peer_(std::move(peer)) {
  if (in_.handle) in_.handle->data = this;
  if (out_.handle) out_.handle->data = this;
}

UvStream::~UvStream() {
  close();
}

int UvStream::read_start(Events events) {
  if (closed_) return UV_EPIPE;
  if (!in_.handle) return UV_EBADF;
  if (started_) return UV_EALREADY;
  started_ = true;
  events_ = std::move(events);
  read_buffer_ = std::make_unique<char[]>(kReadBufferSize);
  return read_resume();
}

void UvStream::read_stop() {
  if (!reading_) return;
  uv_read_stop(in_.handle);
  reading_ = false;
}

int UvStream::read_resume() {
  if (closed_) return UV_EPIPE;
  if (!started_) return UV_EINVAL;
  if (reading_ || ended_) return 0;
  int rc = uv_read_start(in_.handle, on_alloc, on_read);
  if (rc == 0) reading_ = true;
  return rc;
}

void UvStream::on_alloc(uv_handle_t* handle, size_t, uv_buf_t* buf) {
  auto* self = static_cast<UvStream*>(handle->data);
  *buf = uv_buf_init(self->read_buffer_.get(), kReadBufferSize);
}

void UvStream::on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* raw = static_cast<UvStream*>(stream->data);
  if (!raw || raw->closed_ || nread == 0) return;
  // The owner may drop its reference from inside a callback.
  auto self = raw->shared_from_this();
  if (nread > 0) {
    if (self->events_.on_data) {
      self->events_.on_data(std::string_view(buf->base, static_cast<size_t>(nread)));
    }
    return;
  }
  self->read_stop();
  self->ended_ = true;
  Status end;
  if (nread != UV_EOF)
    end = make_error(static_cast<int>(nread), uv_strerror(static_cast<int>(nread)));
  if (self->events_.on_end) self->events_.on_end(std::move(end));
}

int UvStream::write(std::string data, Done done) {
  if (closed_ || !out_.handle) return UV_EPIPE;
  auto req = std::make_unique<WriteReq>();
  req->data = std::move(data);
  req->done = std::move(done);
  req->req.data = req.get();
  uv_buf_t buf = uv_buf_init(req->data.data(), static_cast<unsigned>(req->data.size()));
  int rc = uv_write(&req->req, out_.handle, &buf, 1, [](uv_write_t* raw, int status) {
    std::unique_ptr<WriteReq> req(static_cast<WriteReq*>(raw->data));
    if (req->done) req->done(status);
  });
  if (rc < 0) return rc;
  req.release();
  return 0;
}

int UvStream::shutdown(Done done) {
  if (closed_ || !out_.handle) return UV_EPIPE;
  auto req = std::make_unique<ShutdownReq>();
  req->done = std::move(done);
  if (out_.handle != in_.handle) req->split = weak_from_this();
  req->req.data = req.get();
  int rc = uv_shutdown(&req->req, out_.handle, on_shutdown);
  if (rc < 0) return rc;
  req.release();
  return 0;
}

void UvStream::on_shutdown(uv_shutdown_t* raw, int status) {
  std::unique_ptr<ShutdownReq> req(static_cast<ShutdownReq*>(raw->data));
  if (auto split = req->split.lock()) {
    // shutdown(2) does not apply to a pipe (ENOTSOCK); closing it is the EOF.
    if (status == UV_ENOTSOCK) status = 0;
    split->close_out();
  } else if (status == UV_ENOTSOCK) {
    status = 0;
  }
  if (req->done) req->done(status);
}

void UvStream::close_out() {
  if (!out_.handle) return;
  if (out_.handle != in_.handle) out_.close(out_.handle);
  out_ = {};
}

void UvStream::close() {
  if (closed_) return;
  closed_ = true;
  reading_ = false;
  close_out();
  if (in_.handle) in_.close(in_.handle);
  in_ = {};
}

}  // namespace intersync
