// The byte relay behind `intersyncd --serve-stdio`: stdin and stdout become
// ByteStreams (pipes, a socket or a terminal, whatever sshd handed over),
// the daemon's relay socket a third, and each direction forwards what it
// reads with back-pressure: past a high-water mark of unwritten bytes,
// reading stops until the other side has taken them.
#include "stdio_relay.h"

#include <cstdio>

#include "intersync/uv_handle.h"
#include "intersync/uv_stream.h"

namespace intersync {
namespace {

constexpr size_t kHighWater = 1 << 20;
constexpr size_t kLowWater = 256 << 10;

Result<std::shared_ptr<ByteStream>> open_stdio(uv_loop_t* loop, int fd, bool input) {
  const char* name = input ? "stdin" : "stdout";
  auto wrap = [&](auto handle) -> std::shared_ptr<ByteStream> {
    using Handle = decltype(handle);
    if (input) return UvStream::adopt(std::move(handle), Handle(), name);
    return UvStream::adopt(Handle(), std::move(handle), name);
  };
  int rc = UV_EINVAL;
  switch (uv_guess_handle(fd)) {
    case UV_NAMED_PIPE: {
      UvHandle<uv_pipe_t> pipe;
      rc = pipe.init(loop, nullptr,
                     [](uv_loop_t* l, uv_pipe_t* p) { return uv_pipe_init(l, p, 0); });
      if (rc == 0) rc = uv_pipe_open(pipe.get(), fd);
      if (rc == 0) return wrap(std::move(pipe));
      break;
    }
    case UV_TCP: {
      UvHandle<uv_tcp_t> tcp;
      rc = tcp.init(loop, nullptr, uv_tcp_init);
      if (rc == 0) rc = uv_tcp_open(tcp.get(), fd);
      if (rc == 0) return wrap(std::move(tcp));
      break;
    }
    case UV_TTY: {
      UvHandle<uv_tty_t> tty;
      rc = tty.init(loop, nullptr,
                    [fd](uv_loop_t* l, uv_tty_t* t) { return uv_tty_init(l, t, fd, 0); });
      if (rc == 0) return wrap(std::move(tty));
      break;
    }
    default:
      return make_error(UV_EINVAL, std::string(name) + " must be a pipe, a socket or a terminal");
  }
  return make_error(rc, std::string("cannot use ") + name + ": " + uv_strerror(rc));
}

// Both directions of one relay. Callbacks capture `this`: the relay lives
// until the loop has run the last of them.
class Relay {
 public:
  Relay(std::shared_ptr<ByteStream> in, std::shared_ptr<ByteStream> out,
        std::shared_ptr<ByteStream> daemon)
      : up_{in, daemon}, down_{daemon, out} {}

  int start() {
    for (Direction* d : {&up_, &down_}) {
      int rc = d->from->read_start(ByteStream::Events{
          .on_data = [this, d](std::string_view data) { forward(*d, data); },
          .on_end = [this, d](Status status) { ended(*d, std::move(status)); },
      });
      if (rc < 0) return rc;
    }
    return 0;
  }

  void finish() {
    if (std::exchange(finished_, true)) return;
    for (Direction* d : {&up_, &down_}) {
      d->from->close();
      d->to->close();
    }
  }

 private:
  struct Direction {
    std::shared_ptr<ByteStream> from;
    std::shared_ptr<ByteStream> to;
    size_t in_flight = 0;
    bool paused = false;
  };

  void forward(Direction& d, std::string_view data) {
    size_t size = data.size();
    int rc = d.to->write(std::string(data), [this, &d, size](int status) {
      d.in_flight -= size;
      if (status < 0) return finish();
      if (d.paused && d.in_flight <= kLowWater && !finished_) {
        d.paused = false;
        if (d.from->read_resume() < 0) finish();
      }
    });
    if (rc < 0) return finish();
    d.in_flight += size;
    if (d.in_flight > kHighWater && !d.paused) {
      d.paused = true;
      d.from->read_stop();
    }
  }

  // The peer's end of a direction is passed on once its bytes are out. The
  // ssh side closing its stdin asks the daemon to finish; the daemon
  // closing ends the relay.
  void ended(Direction& d, Status status) {
    if (!status) return finish();
    bool last = &d == &down_;
    int rc = d.to->shutdown([this, last](int) {
      if (last) finish();
    });
    if (rc < 0) finish();
  }

  Direction up_;    // stdin -> daemon
  Direction down_;  // daemon -> stdout
  bool finished_ = false;
};

// Connects `pipe` to the unix socket `path`, running the loop until it is
// done.
int connect_now(uv_loop_t* loop, UvHandle<uv_pipe_t>& pipe, const std::string& path) {
  struct Connect {
    uv_connect_t req;
    int status = 0;
  } connect;
  int rc =
      pipe.init(loop, nullptr, [](uv_loop_t* l, uv_pipe_t* p) { return uv_pipe_init(l, p, 0); });
  if (rc < 0) return rc;
  connect.req.data = &connect;
  uv_pipe_connect(&connect.req, pipe.get(), path.c_str(), [](uv_connect_t* req, int status) {
    static_cast<Connect*>(req->data)->status = status;
  });
  uv_run(loop, UV_RUN_DEFAULT);
  return connect.status;
}

// Relays stdin and stdout to `daemon` until either side is done.
int relay_stdio(uv_loop_t* loop, std::shared_ptr<ByteStream> daemon) {
  auto in = open_stdio(loop, 0, true);
  auto out = open_stdio(loop, 1, false);
  if (!in || !out) {
    std::fprintf(stderr, "intersyncd: %s\n", (!in ? in.error() : out.error()).message.c_str());
    return 1;
  }
  Relay relay(*in, *out, std::move(daemon));
  int status = 0;
  if (int rc = relay.start(); rc < 0) {
    std::fprintf(stderr, "intersyncd: cannot relay: %s\n", uv_strerror(rc));
    status = 1;
    relay.finish();
  }
  uv_run(loop, UV_RUN_DEFAULT);
  // Cancelled writes still call back into the relay: it outlives them.
  relay.finish();
  uv_run(loop, UV_RUN_DEFAULT);
  return status;
}

}  // namespace

int serve_stdio(const Config& config, const std::string& fset) {
  const FilesetConfig* found = nullptr;
  for (const auto& f : config.filesets) {
    if (f.name == fset) found = &f;
  }
  if (!found || found->role != Role::Server) {
    std::fprintf(stderr, "intersyncd: %s\n",
                 (found ? "fileset '" + fset + "' in " + config.file +
                              " is a client; --serve-stdio relays to a server fileset"
                        : "no fileset '" + fset + "' in " + config.file)
                     .c_str());
    return 1;
  }
  const std::string& path = config.relay_socket;
  uv_loop_t loop;
  uv_loop_init(&loop);
  int exit_status = 1;
  {
    UvHandle<uv_pipe_t> pipe;
    int rc = connect_now(&loop, pipe, path);
    if (rc < 0) {
      std::fprintf(stderr,
                   "intersyncd: cannot reach the running daemon for fileset '%s' at its relay "
                   "socket %s: %s (is intersyncd running?)\n",
                   fset.c_str(), path.c_str(), uv_strerror(rc));
    } else {
      exit_status = relay_stdio(&loop, UvStream::adopt(std::move(pipe), path));
    }
  }
  uv_run(&loop, UV_RUN_DEFAULT);  // close callbacks
  uv_loop_close(&loop);
  return exit_status;
}

}  // namespace intersync
