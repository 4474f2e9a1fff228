// SshStream: an ssh child as a ByteStream. The child's uv_process_t lives in
// a heap block of its own until ssh has exited and been reaped: closing a
// process handle earlier would leave a zombie behind, so a stream that is
// closed first only sends SIGTERM and lets the exit callback free it.
#include "ssh_stream.h"

#include <signal.h>

#include <utility>

#include "intersync/log.h"

namespace intersync::ssh {
namespace {

// After ssh exited and its stdout ended, its last stderr bytes may still be
// on their way; the error message waits this long for them.
constexpr uint64_t kStderrGraceMs = 200;
constexpr size_t kMaxStderrLine = 4096;
constexpr size_t kStderrTail = 3;

int pipe_init(uv_loop_t* loop, uv_pipe_t* pipe) {
  return uv_pipe_init(loop, pipe, 0);
}

}  // namespace

struct SshStream::Child {
  uv_process_t process;
  std::weak_ptr<SshStream> owner;
};

Result<std::shared_ptr<SshStream>> SshStream::spawn(uv_loop_t* loop,
                                                    const std::vector<std::string>& argv,
                                                    std::string endpoint) {
  std::shared_ptr<SshStream> stream(new SshStream(std::move(endpoint)));
  UvHandle<uv_pipe_t> in, out, err;  // the child's stdin, stdout and stderr
  int rc = in.init(loop, nullptr, pipe_init);
  if (rc == 0) rc = out.init(loop, nullptr, pipe_init);
  if (rc == 0) rc = err.init(loop, nullptr, pipe_init);
  if (rc == 0) rc = stream->stderr_grace_.init(loop, stream.get(), uv_timer_init);
  if (rc < 0) return make_error(rc, std::string("ssh: cannot start ssh: ") + uv_strerror(rc));

  std::vector<char*> args;
  for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  uv_stdio_container_t stdio[3];
  stdio[0].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_READABLE_PIPE);
  stdio[0].data.stream = in.stream();
  stdio[1].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[1].data.stream = out.stream();
  stdio[2].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[2].data.stream = err.stream();
  uv_process_options_t options{};
  options.file = args[0];
  options.args = args.data();
  options.exit_cb = on_exit;
  options.stdio = stdio;
  options.stdio_count = 3;

  auto* child = new Child;
  child->owner = stream;
  rc = uv_spawn(loop, &child->process, &options);
  child->process.data = child;
  if (rc < 0) {
    // uv_spawn initialized the handle even though it failed.
    uv_close(reinterpret_cast<uv_handle_t*>(&child->process),
             [](uv_handle_t* h) { delete static_cast<Child*>(h->data); });
    return make_error(rc, fmt::format("ssh: cannot start {}: {}", argv[0], uv_strerror(rc)));
  }
  log_debug("ssh: started {} (pid {}) for {}", argv[0], child->process.pid, stream->endpoint_);
  stream->child_ = child;
  stream->io_ = UvStream::adopt(std::move(out), std::move(in), stream->peer());
  stream->stderr_ = UvStream::adopt(std::move(err), UvHandle<uv_pipe_t>(), stream->peer());
  std::weak_ptr<SshStream> weak = stream;
  rc = stream->stderr_->read_start(Events{
      .on_data =
          [weak](std::string_view data) {
            if (auto self = weak.lock()) self->stderr_data(data);
          },
      .on_end =
          [weak](Status) {
            if (auto self = weak.lock()) {
              if (!self->stderr_partial_.empty())
                self->stderr_line(std::move(self->stderr_partial_));
              self->stderr_partial_.clear();
              self->stderr_ended_ = true;
              self->maybe_end();
            }
          },
  });
  if (rc < 0) {
    stream->close();
    return make_error(rc, std::string("ssh: cannot read ssh's stderr: ") + uv_strerror(rc));
  }
  return stream;
}

SshStream::~SshStream() {
  close();
}

int SshStream::read_start(Events events) {
  if (closed_) return UV_EPIPE;
  events_ = std::move(events);
  std::weak_ptr<SshStream> weak = weak_from_this();
  return io_->read_start(Events{
      .on_data =
          [weak](std::string_view data) {
            auto self = weak.lock();
            if (self && !self->closed_ && self->events_.on_data) self->events_.on_data(data);
          },
      .on_end =
          [weak](Status status) {
            if (auto self = weak.lock()) {
              self->stdout_end_ = std::move(status);
              self->maybe_end();
            }
          },
  });
}

void SshStream::close() {
  if (closed_) return;
  closed_ = true;
  if (io_) io_->close();
  if (stderr_) stderr_->close();
  stderr_grace_.close();
  if (child_) {
    child_->owner.reset();
    uv_process_kill(&child_->process, SIGTERM);
    child_ = nullptr;
  }
}

void SshStream::on_exit(uv_process_t* process, int64_t status, int signal) {
  auto* child = static_cast<Child*>(process->data);
  auto owner = child->owner.lock();
  uv_close(reinterpret_cast<uv_handle_t*>(process),
           [](uv_handle_t* h) { delete static_cast<Child*>(h->data); });
  if (!owner) return;
  owner->child_ = nullptr;
  owner->exited(status, signal);
}

void SshStream::exited(int64_t status, int signal) {
  exit_ok_ = status == 0 && signal == 0;
  exit_ = signal != 0 ? fmt::format("ssh was killed by signal {}", signal)
                      : fmt::format("ssh exited with status {}", status);
  log_debug("ssh: {} for {}", *exit_, endpoint_);
  maybe_end();
}

void SshStream::stderr_data(std::string_view data) {
  while (!data.empty()) {
    size_t newline = data.find('\n');
    if (newline == std::string_view::npos) {
      stderr_partial_.append(
          data.substr(0, kMaxStderrLine - std::min(kMaxStderrLine, stderr_partial_.size())));
      return;
    }
    stderr_partial_.append(data.substr(0, std::min(newline, kMaxStderrLine)));
    data.remove_prefix(newline + 1);
    stderr_line(std::move(stderr_partial_));
    stderr_partial_.clear();
  }
}

void SshStream::stderr_line(std::string line) {
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  if (line.empty()) return;
  log_info("ssh {}: {}", endpoint_, line);
  stderr_tail_.push_back(std::move(line));
  if (stderr_tail_.size() > kStderrTail) stderr_tail_.pop_front();
}

// The stream ends when ssh has exited and its stdout is read: only then is
// it known whether the end was orderly.
void SshStream::maybe_end() {
  if (ended_ || closed_ || !stdout_end_ || !exit_) return;
  if (!stderr_ended_) {
    uv_timer_start(
        stderr_grace_.get(),
        [](uv_timer_t* timer) {
          auto* raw = static_cast<SshStream*>(timer->data);
          if (!raw) return;
          auto self = raw->shared_from_this();
          self->stderr_ended_ = true;
          self->maybe_end();
        },
        kStderrGraceMs, 0);
    return;
  }
  end();
}

void SshStream::end() {
  ended_ = true;
  auto self = shared_from_this();
  if (stdout_end_->ok() && exit_ok_) {
    if (events_.on_end) events_.on_end(Status::Ok());
    return;
  }
  std::string why = *exit_;
  if (!stdout_end_->ok()) why += " (reading its output: " + stdout_end_->error().message + ")";
  if (!stderr_tail_.empty()) why += ": " + stderr_tail_.back();
  if (events_.on_end) events_.on_end(Error{-ECONNRESET, why});
}

// ---- SshConnector ----

namespace {

// A started ssh child waiting to be handed over from a loop callback.
class SshAttempt final : public ConnectAttempt {
 public:
  SshAttempt(std::shared_ptr<SshStream> stream, StreamConnector::Done done)
      : stream_(std::move(stream)), done_(std::move(done)) {}
  ~SshAttempt() override {
    if (stream_) stream_->close();
  }

  int start(uv_loop_t* loop) {
    int rc = timer_.init(loop, this, uv_timer_init);
    if (rc == 0) rc = uv_timer_start(timer_.get(), on_timer, 0, 0);
    return rc;
  }

 private:
  // The caller may destroy the attempt from inside `done`.
  static void on_timer(uv_timer_t* timer) {
    auto* attempt = static_cast<SshAttempt*>(timer->data);
    if (!attempt) return;
    auto done = std::move(attempt->done_);
    std::shared_ptr<ByteStream> stream = std::move(attempt->stream_);
    done(std::move(stream));
  }

  std::shared_ptr<SshStream> stream_;
  StreamConnector::Done done_;
  UvHandle<uv_timer_t> timer_;
};

}  // namespace

Result<std::unique_ptr<ConnectAttempt>> SshConnector::connect(Done done) {
  auto stream = SshStream::spawn(loop_, argv_, endpoint_);
  if (!stream) return stream.error();
  auto attempt = std::make_unique<SshAttempt>(std::move(*stream), std::move(done));
  if (int rc = attempt->start(loop_); rc < 0) {
    return make_error(rc, fmt::format("ssh: cannot connect to {}: {}", endpoint_, uv_strerror(rc)));
  }
  return std::unique_ptr<ConnectAttempt>(std::move(attempt));
}

}  // namespace intersync::ssh
