// The byte relay behind `intersyncd --serve-stdio`: stdin and stdout become
// ByteStreams (pipes, a socket or a terminal, whatever sshd handed over),
// the daemon's listener a third, and each direction forwards what it reads
// with back-pressure: past a high-water mark of unwritten bytes, reading
// stops until the other side has taken them.
#include "stdio_relay.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "intersync/net_address.h"
#include "intersync/uv_handle.h"
#include "intersync/uv_stream.h"

namespace intersync {
namespace {

constexpr size_t kHighWater = 1 << 20;
constexpr size_t kLowWater = 256 << 10;
constexpr int kControlTimeoutSeconds = 10;

// A listener on a wildcard address is reached on loopback: the relay runs
// on the daemon's machine.
std::string local_host(const std::string& listen_host) {
  std::string host = strip_brackets(listen_host);
  if (host.empty() || host == "0.0.0.0" || host == "localhost") return "127.0.0.1";
  if (host == "::") return "::1";
  return host;
}

// Asks the daemon's control socket which address the fileset's listener
// was bound to.
Result<std::string> bound_listener(const Config& config, const std::string& fset) {
  std::string socket_path = config.control_socket;
  auto unreachable = [&](const std::string& why) {
    return make_error(-ECONNREFUSED, "fileset '" + fset + "' listens on port 0, and the daemon's " +
                                         "control socket " + socket_path + " cannot tell the " +
                                         "port: " + why + " (is intersyncd running?)");
  };
  sockaddr_un addr{};
  if (socket_path.size() >= sizeof addr.sun_path) return unreachable("path too long");
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return unreachable(std::strerror(errno));
  timeval timeout{kControlTimeoutSeconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  std::string reply;
  std::string request = "{\"cmd\":\"status\"}\n";
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    int err = errno;
    ::close(fd);
    return unreachable(std::strerror(err));
  }
  char buf[4096];
  while (reply.find('\n') == std::string::npos) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    reply.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  auto status = nlohmann::json::parse(reply, nullptr, false);
  if (status.is_discarded() || !status.contains("filesets")) return unreachable("no status");
  for (const auto& f : status["filesets"]) {
    if (f.value("name", "") == fset && f.contains("listen") && f["listen"].is_string()) {
      return f["listen"].get<std::string>();
    }
  }
  return unreachable("the daemon does not serve it");
}

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

// Connects `tcp` to `addr`, running the loop until it is done.
int connect_now(uv_loop_t* loop, UvHandle<uv_tcp_t>& tcp, const sockaddr* addr) {
  struct Connect {
    uv_connect_t req;
    int status = 0;
  } connect;
  int rc = tcp.init(loop, nullptr, uv_tcp_init);
  if (rc < 0) return rc;
  connect.req.data = &connect;
  rc = uv_tcp_connect(&connect.req, tcp.get(), addr, [](uv_connect_t* req, int status) {
    static_cast<Connect*>(req->data)->status = status;
  });
  if (rc < 0) return rc;
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

Result<std::pair<std::string, uint16_t>> stdio_relay_target(const Config& config,
                                                            const std::string& fset) {
  const FilesetConfig* found = nullptr;
  for (const auto& f : config.filesets) {
    if (f.name == fset) found = &f;
  }
  if (!found) return make_error(-ENOENT, "no fileset '" + fset + "' in " + config.file);
  if (found->role != Role::Server) {
    return make_error(-EINVAL, "fileset '" + fset + "' in " + config.file +
                                   " is a client; --serve-stdio relays to a server fileset");
  }
  if (found->listen_port != 0) {
    return std::pair{local_host(found->listen_host), found->listen_port};
  }
  auto bound = bound_listener(config, fset);
  if (!bound) return bound.error();
  auto host_port = parse_host_port(*bound, 0);
  if (!host_port || host_port->second == 0) {
    return make_error(-EPROTO, "the daemon reports fileset '" + fset + "' listening on '" + *bound +
                                   "', which is not host:port");
  }
  return std::pair{local_host(host_port->first), host_port->second};
}

int serve_stdio(const Config& config, const std::string& fset) {
  auto target = stdio_relay_target(config, fset);
  if (!target) {
    std::fprintf(stderr, "intersyncd: %s\n", target.error().message.c_str());
    return 1;
  }
  std::string where = format_endpoint(target->first, target->second);
  sockaddr_storage addr{};
  if (uv_ip4_addr(target->first.c_str(), target->second, reinterpret_cast<sockaddr_in*>(&addr)) !=
          0 &&
      uv_ip6_addr(target->first.c_str(), target->second, reinterpret_cast<sockaddr_in6*>(&addr)) !=
          0) {
    std::fprintf(stderr, "intersyncd: fileset '%s' listens on %s, which is not an IP address\n",
                 fset.c_str(), where.c_str());
    return 1;
  }

  uv_loop_t loop;
  uv_loop_init(&loop);
  int exit_status = 1;
  {
    UvHandle<uv_tcp_t> tcp;
    int rc = connect_now(&loop, tcp, reinterpret_cast<sockaddr*>(&addr));
    if (rc < 0) {
      std::fprintf(stderr,
                   "intersyncd: cannot reach the running daemon's listener for fileset '%s' at "
                   "%s: %s (is intersyncd running?)\n",
                   fset.c_str(), where.c_str(), uv_strerror(rc));
    } else {
      exit_status = relay_stdio(&loop, UvStream::adopt(std::move(tcp), where));
    }
  }
  uv_run(&loop, UV_RUN_DEFAULT);  // close callbacks
  uv_loop_close(&loop);
  return exit_status;
}

}  // namespace intersync
