// A libuv timer owned by a C++ object. The uv handle lives in its own heap
// block that is freed in the close callback, so the owner may be destroyed
// at any time, even from inside the timer's own callback.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>

namespace intersync {

class UvTimer {
 public:
  explicit UvTimer(uv_loop_t* loop) : h_(new Handle) {
    uv_timer_init(loop, &h_->timer);
    h_->timer.data = h_;
  }
  ~UvTimer() {
    h_->callback = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(&h_->timer),
             [](uv_handle_t* h) { delete static_cast<Handle*>(h->data); });
  }
  UvTimer(const UvTimer&) = delete;
  UvTimer& operator=(const UvTimer&) = delete;

  // (Re)arms the timer: `callback` runs once after `ms` milliseconds, or
  // every `repeat_ms` after that when non-zero.
  void start(uint64_t ms, std::function<void()> callback, uint64_t repeat_ms = 0) {
    h_->callback = std::move(callback);
    uv_timer_start(
        &h_->timer,
        [](uv_timer_t* t) {
          auto* h = static_cast<Handle*>(t->data);
          if (!h->callback) return;
          // Copy first: the callback may re-arm or destroy the timer.
          auto cb = h->callback;
          cb();
        },
        ms, repeat_ms);
  }
  void stop() { uv_timer_stop(&h_->timer); }
  // Housekeeping: the timer alone does not keep the loop running (uv_unref).
  void unref() { uv_unref(reinterpret_cast<uv_handle_t*>(&h_->timer)); }
  bool active() const { return uv_is_active(reinterpret_cast<const uv_handle_t*>(&h_->timer)); }

 private:
  struct Handle {
    uv_timer_t timer;
    std::function<void()> callback;
  };
  Handle* h_;
};

}  // namespace intersync
