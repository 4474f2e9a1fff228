// Small helpers shared by the HTTP transport's server and client halves: an
// RAII owner for libuv handles, a guard for user callbacks run from a loop
// callback, and socket address formatting for logs and error messages.
#pragma once

#include <uv.h>

#include <exception>
#include <memory>
#include <string>
#include <string_view>

#include "intersync/log.h"

namespace intersync::http {

// Owns one libuv handle. libuv touches a handle until its close callback has
// run, so the handle lives on the heap and is freed in that callback, never
// by the owner: the owner may be destroyed at any time, even from inside one
// of the handle's callbacks. close() sets the handle's data to null first,
// and closing twice is safe.
template <typename T>
class UvHandle {
 public:
  UvHandle() = default;
  ~UvHandle() { close(); }
  UvHandle(const UvHandle&) = delete;
  UvHandle& operator=(const UvHandle&) = delete;

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

  void close() {
    if (!handle_) return;
    auto* handle = reinterpret_cast<uv_handle_t*>(handle_);
    handle_ = nullptr;
    handle->data = nullptr;
    uv_close(handle, [](uv_handle_t* closed) { delete reinterpret_cast<T*>(closed); });
  }

 private:
  T* handle_ = nullptr;
};

// Runs a callback that belongs to someone else (core's handler, a caller's
// response callbacks) from inside a loop callback: an exception must not
// unwind through libuv, so it is logged here and reported as false.
template <typename F>
bool call_guarded(std::string_view what, F&& f) {
  try {
    f();
    return true;
  } catch (const std::exception& e) {
    log_error("http transport: {} threw: {}", what, e.what());
  } catch (...) {
    log_error("http transport: {} threw an unknown exception", what);
  }
  return false;
}

// "127.0.0.1:370" or "[::1]:370".
inline std::string format_endpoint(std::string_view host, unsigned port) {
  if (host.find(':') != std::string_view::npos) {
    return "[" + std::string(host) + "]:" + std::to_string(port);
  }
  return std::string(host) + ":" + std::to_string(port);
}

inline std::string format_address(const sockaddr* addr) {
  char ip[64] = "?";
  unsigned port = 0;
  if (addr->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(addr);
    uv_ip4_name(in, ip, sizeof ip);
    port = ntohs(in->sin_port);
  } else if (addr->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(addr);
    uv_ip6_name(in6, ip, sizeof ip);
    port = ntohs(in6->sin6_port);
  }
  return format_endpoint(ip, port);
}

// A host as written in configuration may carry IPv6 brackets ("[::1]");
// resolvers and uv_ip6_addr want it bare.
inline std::string strip_brackets(std::string_view host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    return std::string(host.substr(1, host.size() - 2));
  }
  return std::string(host);
}

}  // namespace intersync::http
