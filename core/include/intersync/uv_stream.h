// UvStream: a ByteStream over libuv stream handles. A TCP socket is one
// handle for both directions; an ssh child is two pipes (its stdout to read,
// its stdin to write); `intersyncd --serve-stdio` reads stdin and writes
// stdout. The handles are adopted from UvHandle owners and freed in their
// close callbacks, so the stream may go away at any time.
#pragma once

#include <uv.h>

#include <memory>
#include <string>

#include "intersync/byte_stream.h"
#include "intersync/uv_handle.h"

namespace intersync {

class UvStream final : public ByteStream, public std::enable_shared_from_this<UvStream> {
 public:
  // One handle for both directions: connected or accepted, not yet reading.
  template <typename T>
  static std::shared_ptr<UvStream> adopt(UvHandle<T> handle, std::string peer) {
    Owned both = own(handle);
    return std::shared_ptr<UvStream>(new UvStream(both, both, std::move(peer)));
  }
  // A handle to read and another to write. Either may be empty, for a
  // stream that only reads (a child's stderr) or only writes.
  template <typename R, typename W>
  static std::shared_ptr<UvStream> adopt(UvHandle<R> in, UvHandle<W> out, std::string peer) {
    return std::shared_ptr<UvStream>(new UvStream(own(in), own(out), std::move(peer)));
  }

  ~UvStream() override;
  UvStream(const UvStream&) = delete;
  UvStream& operator=(const UvStream&) = delete;

  int read_start(Events events) override;
  void read_stop() override;
  int read_resume() override;
  int write(std::string data, Done done) override;
  int shutdown(Done done) override;
  void close() override;
  std::string peer() const override { return peer_; }

 private:
  struct Owned {
    uv_stream_t* handle = nullptr;
    void (*close)(uv_stream_t*) = nullptr;
  };

  template <typename T>
  static Owned own(UvHandle<T>& handle) {
    if (!handle) return {};
    return {reinterpret_cast<uv_stream_t*>(handle.release()),
            [](uv_stream_t* s) { uv_close_and_delete(reinterpret_cast<T*>(s)); }};
  }

  UvStream(Owned in, Owned out, std::string peer);

  static void on_alloc(uv_handle_t* handle, size_t suggested, uv_buf_t* buf);
  static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  static void on_shutdown(uv_shutdown_t* req, int status);
  void close_out();

  Owned in_;
  Owned out_;
  std::string peer_;
  Events events_;
  std::unique_ptr<char[]> read_buffer_;
  bool started_ = false;
  bool reading_ = false;
  bool ended_ = false;
  bool closed_ = false;
};

}  // namespace intersync
