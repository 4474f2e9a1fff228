// intersyncd: the InterMezzo fileset replication daemon. One process, one
// libuv loop, every fileset of the configuration file given with -c.
//
//   intersyncd -c /etc/intersync.yaml            run in the foreground
//   intersyncd -c /etc/intersync.yaml --daemon   detach once started
//   intersyncd -c /etc/intersync.yaml --check    validate and exit
//   intersyncd -c /etc/intersync.yaml --serve-stdio --fset docs
//                                                relay stdin/stdout to the running
//                                                daemon (what ssh clients start)
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>

#include "config.h"
#include "daemon.h"
#include "intersync/log.h"
#include "stdio_relay.h"

using namespace intersync;

namespace {

// Forks; the parent waits until the child reports that it started (one byte
// on a pipe) and exits 0, or 1 if the child failed. The child detaches.
int daemonize(int* ready_fd) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid > 0) {
    close(fds[1]);
    char c;
    ssize_t n = read(fds[0], &c, 1);
    _exit(n == 1 ? 0 : 1);
  }
  close(fds[0]);
  setsid();
  int null = open("/dev/null", O_RDWR);
  if (null >= 0) {
    dup2(null, 0);
    dup2(null, 1);
    close(null);
  }
  *ready_fd = fds[1];
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"intersyncd: replicates InterMezzo filesets between a server and its clients"};
  std::string config_file = "/etc/intersync.yaml";
  bool detach = false, check = false;
  app.add_option("-c,--config", config_file, "configuration file")->capture_default_str();
  app.add_flag("--daemon", detach, "detach once started and write the pid file");
  app.add_flag("--check", check, "validate the configuration and its plugins, then exit");
  bool stdio = false;
  std::string fset;
  auto* stdio_flag = app.add_flag("--serve-stdio", stdio,
                                  "relay stdin and stdout to the running daemon's listener for "
                                  "--fset: the remote end of the ssh transport");
  auto* fset_option = app.add_option("--fset", fset, "the server fileset --serve-stdio relays to");
  stdio_flag->needs(fset_option)->excludes("--daemon")->excludes("--check");
  fset_option->needs(stdio_flag);
  CLI11_PARSE(app, argc, argv);
  // A peer that went away (a socket, an ssh child's pipe, ssh's end of
  // --serve-stdio) must make a write fail with EPIPE, not kill the daemon.
  signal(SIGPIPE, SIG_IGN);

  auto config = load_config(config_file);
  if (!config) {
    std::fprintf(stderr, "intersyncd: %s\n", config.error().message.c_str());
    return 1;
  }
  // stdout carries the protocol: every message goes to stderr, which ssh
  // hands back to the client's log.
  if (stdio) return serve_stdio(*config, fset);
  if (check) {
    if (Status s = Daemon::check(*config); !s) {
      std::fprintf(stderr, "intersyncd: %s\n", s.error().message.c_str());
      return 1;
    }
    std::printf("%s: configuration OK (%zu fileset%s)\n", config_file.c_str(),
                config->filesets.size(), config->filesets.size() == 1 ? "" : "s");
    return 0;
  }
  int ready_fd = -1;
  if (detach && daemonize(&ready_fd) != 0) {
    std::perror("intersyncd: cannot detach");
    return 1;
  }
  // A detached daemon logs to syslog unless told otherwise: its stderr is
  // kept only for messages before the loop starts.
  log_setup(detach && config->log_sink == LogSink::Stderr ? LogSink::Syslog : config->log_sink,
            config->log_level);
  Daemon daemon(std::move(*config));
  return daemon.run([ready_fd] {
    if (ready_fd >= 0) {
      (void)!write(ready_fd, "1", 1);
      close(ready_fd);
      int null = open("/dev/null", O_RDWR);
      if (null >= 0) {
        dup2(null, 2);
        close(null);
      }
    }
  });
}
