// The fetch exchange with the replicator's control socket; see
// content_fetcher.h.
#include "content_fetcher.h"

#include <fmt/format.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstring>
#include <nlohmann/json.hpp>

namespace izofs {

using intersync::Error;
using intersync::Status;
using intersync::UniqueFd;
using Clock = std::chrono::steady_clock;

namespace {

constexpr size_t kMaxReplyBytes = 64 * 1024;

Error socket_error(const std::string& socket, const char* what) {
  return intersync::errno_error(fmt::format("{} {}: {}", what, socket, strerror(errno)));
}

}  // namespace

ContentFetcher::ContentFetcher(std::string fileset, std::chrono::seconds timeout)
    : fileset_(std::move(fileset)),
      timeout_(timeout),
      stop_event_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

ContentFetcher::~ContentFetcher() {
  stop();
}

void ContentFetcher::fetch(const std::string& socket, const std::string& path,
                           std::function<void(Status)> done) {
  std::lock_guard lock(mutex_);
  join_finished_locked();
  if (stopped_) {
    done(Error{-ESHUTDOWN, "izofs is unmounting"});
    return;
  }
  uint64_t id = next_id_++;
  // The thread cannot record itself as finished before this returns: that
  // takes the mutex held here.
  threads_[id] = std::thread([this, id, socket, path, done = std::move(done)] {
    done(exchange(socket, path));
    std::lock_guard lock(mutex_);
    finished_.push_back(id);
  });
}

void ContentFetcher::stop() {
  std::map<uint64_t, std::thread> running;
  {
    std::lock_guard lock(mutex_);
    if (stopped_) return;
    stopped_ = true;
    running.swap(threads_);
    finished_.clear();
  }
  uint64_t one = 1;
  if (stop_event_.valid()) (void)!write(stop_event_.get(), &one, sizeof one);
  for (auto& [id, thread] : running) thread.join();
}

void ContentFetcher::join_finished_locked() {
  for (uint64_t id : finished_) {
    auto it = threads_.find(id);
    it->second.join();
    threads_.erase(it);
  }
  finished_.clear();
}

Status ContentFetcher::exchange(const std::string& socket, const std::string& path) {
  const auto deadline = Clock::now() + timeout_;
  struct sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (socket.size() >= sizeof addr.sun_path) {
    return Error{-ENAMETOOLONG, "control socket path too long: " + socket};
  }
  memcpy(addr.sun_path, socket.c_str(), socket.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return socket_error(socket, "socket for");
  // Connecting and sending block at most for the whole timeout.
  struct timeval tv = {static_cast<time_t>(timeout_.count()), 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(fd.get(), reinterpret_cast<struct sockaddr*>(&addr), sizeof addr) != 0) {
    return socket_error(socket, "connect to");
  }
  std::string request =
      nlohmann::json{{"cmd", "fetch"}, {"fileset", fileset_}, {"path", path}}.dump() + "\n";
  if (send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    return socket_error(socket, "send to");
  }

  std::string reply;
  while (reply.find('\n') == std::string::npos) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      return Error{-ETIMEDOUT,
                   fmt::format("no answer from {} within {} s", socket, timeout_.count())};
    }
    struct pollfd polled[2] = {{fd.get(), POLLIN, 0}, {stop_event_.get(), POLLIN, 0}};
    int n = poll(polled, 2, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return socket_error(socket, "waiting for");
    if (polled[1].revents != 0) return Error{-ESHUTDOWN, "izofs is unmounting"};
    if (polled[0].revents == 0) continue;
    char buf[4096];
    ssize_t got = recv(fd.get(), buf, sizeof buf, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return socket_error(socket, "reading from");
    if (got == 0) return Error{-ECONNRESET, socket + " closed the connection without an answer"};
    reply.append(buf, static_cast<size_t>(got));
    if (reply.size() > kMaxReplyBytes) return Error{-EPROTO, socket + ": answer too long"};
  }
  reply.resize(reply.find('\n'));
  auto answer = nlohmann::json::parse(reply, nullptr, false);
  if (answer.is_object() && answer.value("ok", nlohmann::json()) == true) return Status::Ok();
  return Error{-EIO, fmt::format("the replicator answered {}", reply)};
}

}  // namespace izofs
