// An RAII owner for libuv handles and a guard for callbacks that belong to
// someone else, shared by core's connection code and the transports.
#pragma once

#include <uv.h>

#include <exception>
#include <memory>
#include <string_view>

#include "intersync/log.h"

namespace intersync {

// Closes a handle allocated with `new T` and deletes it in the close
// callback: libuv touches a handle until that callback has run.
template <typename T>
void uv_close_and_delete(T* handle) {
  auto* h = reinterpret_cast<uv_handle_t*>(handle);
  h->data = nullptr;
  uv_close(h, [](uv_handle_t* closed) { delete reinterpret_cast<T*>(closed); });
}

// Owns one libuv handle. The handle lives on the heap and is freed in its
// close callback, never by the owner, so the owner may be destroyed at any
// time, even from inside one of the handle's callbacks. close() sets the
// handle's data to null first, and closing twice is safe.
template <typename T>
class UvHandle {
 public:
  UvHandle() = default;
  ~UvHandle() { close(); }
  UvHandle(const UvHandle&) = delete;
  UvHandle& operator=(const UvHandle&) = delete;
  UvHandle(UvHandle&& other) noexcept : handle_(other.release()) {}
  UvHandle& operator=(UvHandle&& other) noexcept {
    if (this != &other) {
      close();
      handle_ = other.release();
    }
    return *this;
  }

  // Allocates the handle and initializes it with `init` (uv_tcp_init,
  // uv_timer_init, ...); `data` is what its callbacks get back. A handle
  // held before is closed first. Returns a negative errno on failure.
  template <typename Init>
  int init(uv_loop_t* loop, void* data, Init init) {
    close();
    auto handle = std::make_unique<T>();
    int rc = init(loop, handle.get());
    if (rc < 0) return rc;
    handle->data = data;
    handle_ = handle.release();
    return 0;
  }

  T* get() const { return handle_; }
  uv_stream_t* stream() const { return reinterpret_cast<uv_stream_t*>(handle_); }
  explicit operator bool() const { return handle_ != nullptr; }

  // Gives the handle up; the caller closes it with uv_close_and_delete<T>.
  T* release() {
    T* handle = handle_;
    handle_ = nullptr;
    return handle;
  }

  void close() {
    if (handle_) uv_close_and_delete(release());
  }

 private:
  T* handle_ = nullptr;
};

// Starts polling `fd` for reading with a fresh handle owned by `poll` (a
// backend watching an inotify descriptor); `callback` gets `data` in
// handle->data. Returns 0 or a negative uv error.
inline int uv_poll_readable(UvHandle<uv_poll_t>& poll, uv_loop_t* loop, int fd, void* data,
                            uv_poll_cb callback) {
  int rc =
      poll.init(loop, data, [fd](uv_loop_t* l, uv_poll_t* h) { return uv_poll_init(l, h, fd); });
  return rc < 0 ? rc : uv_poll_start(poll.get(), UV_READABLE, callback);
}

// Runs a callback that belongs to someone else (core's handler, a caller's
// response callbacks) from inside a loop callback: an exception must not
// unwind through libuv, so it is logged here and reported as false.
template <typename F>
bool call_guarded(std::string_view what, F&& f) {
  try {
    f();
    return true;
  } catch (const std::exception& e) {
    log_error("{} threw: {}", what, e.what());
  } catch (...) {
    log_error("{} threw an unknown exception", what);
  }
  return false;
}

}  // namespace intersync
