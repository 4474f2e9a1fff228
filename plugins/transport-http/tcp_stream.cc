// TCP streams of the http transport. A connect attempt is shared state
// reached by its libuv requests through a weak pointer, so cancelling it
// (the client gave up, or its connect timeout fired) only closes the socket
// and forgets the caller: requests still in flight find nothing to do.
#include "tcp_stream.h"

#include <fmt/format.h>

#include <cstring>
#include <utility>
#include <vector>

#include "intersync/net_address.h"
#include "intersync/uv_handle.h"
#include "intersync/uv_stream.h"

namespace intersync::http {
namespace {

std::shared_ptr<ByteStream> tcp_stream(UvHandle<uv_tcp_t> tcp, std::string fallback_peer) {
  uv_tcp_nodelay(tcp.get(), 1);
  sockaddr_storage addr{};
  int len = sizeof addr;
  std::string peer = std::move(fallback_peer);
  if (uv_tcp_getpeername(tcp.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    peer = format_address(reinterpret_cast<sockaddr*>(&addr));
  }
  return UvStream::adopt(std::move(tcp), std::move(peer));
}

class TcpAttempt : public std::enable_shared_from_this<TcpAttempt> {
 public:
  TcpAttempt(uv_loop_t* loop, std::string host, uint16_t port, std::string endpoint,
             StreamConnector::Done done)
      : loop_(loop),
        host_(std::move(host)),
        port_(port),
        endpoint_(std::move(endpoint)),
        done_(std::move(done)) {}

  int start() {
    auto req = std::make_unique<ResolveReq>();
    req->attempt = weak_from_this();
    req->req.data = req.get();
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    std::string port = std::to_string(port_);
    int rc = uv_getaddrinfo(loop_, &req->req, on_resolved, host_.c_str(), port.c_str(), &hints);
    if (rc < 0) return rc;
    resolve_req_ = &req->req;
    req.release();
    return 0;
  }

  void cancel() {
    done_ = nullptr;
    if (resolve_req_) {
      uv_cancel(reinterpret_cast<uv_req_t*>(resolve_req_));
      resolve_req_ = nullptr;
    }
    tcp_.close();
  }

 private:
  struct ResolveReq {
    uv_getaddrinfo_t req;
    std::weak_ptr<TcpAttempt> attempt;
  };
  struct ConnectReq {
    uv_connect_t req;
    std::weak_ptr<TcpAttempt> attempt;
  };

  static void on_resolved(uv_getaddrinfo_t* raw, int status, addrinfo* res) {
    std::unique_ptr<ResolveReq> req(static_cast<ResolveReq*>(raw->data));
    std::unique_ptr<addrinfo, void (*)(addrinfo*)> list(res, uv_freeaddrinfo);
    auto attempt = req->attempt.lock();
    if (!attempt || !attempt->done_) return;
    attempt->resolve_req_ = nullptr;
    if (status < 0) {
      attempt->fail(status, "cannot resolve");
      return;
    }
    for (addrinfo* ai = res; ai; ai = ai->ai_next) {
      if (ai->ai_addrlen > sizeof(sockaddr_storage)) continue;
      sockaddr_storage addr{};
      std::memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
      attempt->addresses_.push_back(addr);
    }
    attempt->connect_next();
  }

  // Tries the resolved addresses in order ("localhost" may give ::1 first
  // while the server listens on 127.0.0.1 only).
  void connect_next() {
    while (next_address_ < addresses_.size()) {
      const sockaddr_storage& addr = addresses_[next_address_++];
      int rc = tcp_.init(loop_, this, uv_tcp_init);
      if (rc == 0) {
        auto req = std::make_unique<ConnectReq>();
        req->attempt = weak_from_this();
        req->req.data = req.get();
        rc = uv_tcp_connect(&req->req, tcp_.get(), reinterpret_cast<const sockaddr*>(&addr),
                            on_connected);
        if (rc == 0) {
          req.release();
          return;
        }
      }
      last_error_ = rc;
    }
    fail(last_error_, "cannot connect to");
  }

  static void on_connected(uv_connect_t* raw, int status) {
    std::unique_ptr<ConnectReq> req(static_cast<ConnectReq*>(raw->data));
    auto attempt = req->attempt.lock();
    // A request of a socket given up on (its handle closed) ends here.
    if (!attempt || !attempt->done_ || raw->handle != attempt->tcp_.stream()) return;
    if (status < 0) {
      attempt->last_error_ = status;
      attempt->connect_next();
      return;
    }
    attempt->finish(tcp_stream(std::move(attempt->tcp_), attempt->endpoint_));
  }

  void fail(int code, std::string_view what) {
    tcp_.close();
    finish(Error{code, fmt::format("http: {} {}: {}", what, endpoint_, uv_strerror(code))});
  }

  // The caller may destroy the attempt from inside `done`.
  void finish(Result<std::shared_ptr<ByteStream>> result) {
    auto self = shared_from_this();
    auto done = std::move(done_);
    done_ = nullptr;
    if (done) done(std::move(result));
  }

  uv_loop_t* loop_;
  std::string host_;
  uint16_t port_;
  std::string endpoint_;
  StreamConnector::Done done_;
  uv_getaddrinfo_t* resolve_req_ = nullptr;
  std::vector<sockaddr_storage> addresses_;
  size_t next_address_ = 0;
  int last_error_ = UV_EADDRNOTAVAIL;
  UvHandle<uv_tcp_t> tcp_;
};

class TcpAttemptHandle final : public ConnectAttempt {
 public:
  explicit TcpAttemptHandle(std::shared_ptr<TcpAttempt> attempt) : attempt_(std::move(attempt)) {}
  ~TcpAttemptHandle() override { attempt_->cancel(); }

 private:
  std::shared_ptr<TcpAttempt> attempt_;
};

}  // namespace

Result<std::shared_ptr<ByteStream>> accept_tcp(uv_loop_t* loop, uv_stream_t* server) {
  UvHandle<uv_tcp_t> tcp;
  int rc = tcp.init(loop, nullptr, uv_tcp_init);
  if (rc == 0) rc = uv_accept(server, tcp.stream());
  if (rc < 0) return make_error(rc, uv_strerror(rc));
  return tcp_stream(std::move(tcp), "?");
}

TcpConnector::TcpConnector(uv_loop_t* loop, std::string host, uint16_t port)
    : loop_(loop),
      host_(strip_brackets(host)),
      port_(port),
      endpoint_(format_endpoint(host_, port)) {}

Result<std::unique_ptr<ConnectAttempt>> TcpConnector::connect(Done done) {
  auto attempt = std::make_shared<TcpAttempt>(loop_, host_, port_, endpoint_, std::move(done));
  if (int rc = attempt->start(); rc < 0) {
    return make_error(rc, fmt::format("http: cannot resolve {}: {}", endpoint_, uv_strerror(rc)));
  }
  return std::unique_ptr<ConnectAttempt>(std::make_unique<TcpAttemptHandle>(std::move(attempt)));
}

}  // namespace intersync::http
