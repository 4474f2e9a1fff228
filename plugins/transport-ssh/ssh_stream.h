// One connection of the ssh transport: an ssh child process whose stdout
// and stdin are the ByteStream core's HTTP client reads and writes, and
// whose stderr goes to the log line by line. The stream ends once ssh has
// exited and its output is read; an ssh that failed (exit status 255:
// refused, host key unknown, authentication failed) ends it with an error
// quoting ssh's last words.
#pragma once

#include <uv.h>

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "intersync/byte_stream.h"
#include "intersync/http_client.h"
#include "intersync/uv_handle.h"
#include "intersync/uv_stream.h"

namespace intersync::ssh {

class SshStream final : public ByteStream, public std::enable_shared_from_this<SshStream> {
 public:
  // Starts `argv` (argv[0] looked up in PATH). `endpoint` names the server
  // in logs.
  static Result<std::shared_ptr<SshStream>> spawn(uv_loop_t* loop,
                                                  const std::vector<std::string>& argv,
                                                  std::string endpoint);
  ~SshStream() override;
  SshStream(const SshStream&) = delete;
  SshStream& operator=(const SshStream&) = delete;

  int read_start(Events events) override;
  void read_stop() override { io_->read_stop(); }
  int read_resume() override { return io_->read_resume(); }
  int write(std::string data, Done done) override { return io_->write(std::move(data), done); }
  // Closes ssh's stdin: the remote side sees EOF.
  int shutdown(Done done) override { return io_->shutdown(std::move(done)); }
  // Closes the pipes and asks ssh to terminate; it is reaped when it exits.
  void close() override;
  std::string peer() const override { return "ssh " + endpoint_; }

 private:
  struct Child;

  explicit SshStream(std::string endpoint) : endpoint_(std::move(endpoint)) {}
  static void on_exit(uv_process_t* process, int64_t status, int signal);
  void stderr_data(std::string_view data);
  void stderr_line(std::string line);
  void exited(int64_t status, int signal);
  void maybe_end();
  void end();

  std::string endpoint_;
  Child* child_ = nullptr;            // until ssh exits; freed in its close callback
  std::shared_ptr<UvStream> io_;      // ssh's stdout (read) and stdin (write)
  std::shared_ptr<UvStream> stderr_;  // ssh's stderr
  UvHandle<uv_timer_t> stderr_grace_;
  Events events_;
  std::string stderr_partial_;
  std::deque<std::string> stderr_tail_;  // ssh's last lines, for the error
  std::optional<Status> stdout_end_;
  std::optional<std::string> exit_;  // "ssh exited with status 255", once it exited
  bool exit_ok_ = false;
  bool stderr_ended_ = false;
  bool ended_ = false;
  bool closed_ = false;
};

// Opens ssh connections: each connect() starts one ssh child.
class SshConnector final : public StreamConnector {
 public:
  SshConnector(uv_loop_t* loop, std::vector<std::string> argv, std::string endpoint)
      : loop_(loop), argv_(std::move(argv)), endpoint_(std::move(endpoint)) {}

  Result<std::unique_ptr<ConnectAttempt>> connect(Done done) override;
  std::string label() const override { return "ssh"; }
  std::string endpoint() const override { return endpoint_; }

 private:
  uv_loop_t* loop_;
  std::vector<std::string> argv_;
  std::string endpoint_;
};

}  // namespace intersync::ssh
