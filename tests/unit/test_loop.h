// TestLoop: a real libuv loop for unit tests, run until a condition holds
// or a deadline passes (never for a fixed time). On destruction it checks
// that the code under test closed every handle it opened.
#pragma once

#include <uv.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <functional>

namespace intersync {

// A loop with helpers to run it until a condition holds and to schedule
// work; on destruction it checks that nothing was left open.
class TestLoop {
 public:
  TestLoop() { uv_loop_init(&loop_); }
  ~TestLoop() {
    int open_handles = 0;
    uv_walk(
        &loop_,
        [](uv_handle_t* handle, void* count) {
          if (!uv_is_closing(handle)) {
            ++*static_cast<int*>(count);
            uv_close(handle, nullptr);
          }
        },
        &open_handles);
    uv_run(&loop_, UV_RUN_DEFAULT);
    CHECK(open_handles == 0);
    CHECK(uv_loop_close(&loop_) == 0);
  }

  uv_loop_t* get() { return &loop_; }

  bool run_until(const std::function<bool()>& done, uint64_t timeout_ms = 20000) {
    struct Deadline {
      uv_timer_t timer;
      bool expired = false;
    };
    auto* deadline = new Deadline;
    uv_timer_init(&loop_, &deadline->timer);
    deadline->timer.data = deadline;
    uv_timer_start(
        &deadline->timer, [](uv_timer_t* t) { static_cast<Deadline*>(t->data)->expired = true; },
        timeout_ms, 0);
    // A condition met by a timer callback must not leave the loop blocked
    // in its poll until the next event: just before polling, a met
    // condition stops the loop, which makes the poll return at once.
    auto* check = new uv_prepare_t;
    uv_prepare_init(&loop_, check);
    check->data = const_cast<std::function<bool()>*>(&done);
    uv_prepare_start(check, [](uv_prepare_t* p) {
      if ((*static_cast<const std::function<bool()>*>(p->data))()) uv_stop(p->loop);
    });
    while (!done() && !deadline->expired) uv_run(&loop_, UV_RUN_ONCE);
    uv_close(reinterpret_cast<uv_handle_t*>(check),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_prepare_t*>(h); });
    uv_close(reinterpret_cast<uv_handle_t*>(&deadline->timer),
             [](uv_handle_t* h) { delete static_cast<Deadline*>(h->data); });
    return done();
  }

  // Runs `f` on the loop after `ms` milliseconds.
  void after(uint64_t ms, std::function<void()> f) {
    struct Later {
      uv_timer_t timer;
      std::function<void()> f;
    };
    auto* later = new Later{{}, std::move(f)};
    uv_timer_init(&loop_, &later->timer);
    later->timer.data = later;
    uv_timer_start(
        &later->timer,
        [](uv_timer_t* t) {
          auto* l = static_cast<Later*>(t->data);
          l->f();
          uv_close(reinterpret_cast<uv_handle_t*>(t),
                   [](uv_handle_t* h) { delete static_cast<Later*>(h->data); });
        },
        ms, 0);
  }

 private:
  uv_loop_t loop_;
};

}  // namespace intersync
