// izofs: the InterMezzo filter, revived as a FUSE 3 file system. The
// original kernel module sat between the VFS and the file system holding a
// fileset and journaled every change into the fileset's KML; izofs does the
// same from user space. It mounts a backing directory (the fileset root)
// at a mount point, passes every request through to it, and appends a
// KML 1.2 record for each change before answering, for the intersync
// daemon to serve to the fileset's clients. The daemon registers itself as
// the replicator so that its own work is not journaled, and fetches the
// content of placeholder files when someone opens one (data on demand).
//
// File data does not pass through izofs when the kernel can do without it
// (FUSE passthrough, Linux 6.9 and later, izofs running as root): the
// kernel then reads, writes and maps the backing files itself, at about
// the backing file system's speed, and izofs journals a CLOSE when a file
// opened for writing has changed by the time it is closed. Otherwise, or
// with -o no_passthrough, READ and WRITE requests come to izofs, which
// splices them to and from the backing files. izofs says at the start which
// of the two it does.
//
//   izofs -o fileset=FSET[,fetch_timeout=SECS][,no_passthrough] BACKING MOUNTPOINT [FUSE options]
//   mount -t fuse.izofs BACKING MOUNTPOINT -o fileset=FSET      (izofs on PATH)
//
// The file system itself is in izofs_fs.*, passthrough on libfuse 3.14 in
// kernel_passthrough.*; this file parses the command line, prepares
// BACKING/.intermezzo/FSET/ as mkizofs does, mounts (with a wider
// readahead when root) and runs the FUSE session until it is unmounted.
#include <fmt/format.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "fileset_dir.h"
#include "intersync/log.h"
#include "intersync_build_config.h"
#include "izofs_fs.h"

namespace {

// What izofs takes from the command line beyond FUSE's own options.
struct CommandLine {
  char* fileset = nullptr;
  unsigned fetch_timeout = 60;
  int no_passthrough = 0;
  char* backing = nullptr;
};

const struct fuse_opt kOptions[] = {
    {"fileset=%s", offsetof(CommandLine, fileset), 0},
    {"fetch_timeout=%u", offsetof(CommandLine, fetch_timeout), 0},
    {"no_passthrough", offsetof(CommandLine, no_passthrough), 1},
    FUSE_OPT_END,
};

// The first non-option argument is BACKING; the second, MOUNTPOINT, is
// left for fuse_parse_cmdline.
int take_backing(void* data, const char* arg, int key, struct fuse_args*) {
  auto* cl = static_cast<CommandLine*>(data);
  if (key == FUSE_OPT_KEY_NONOPT && !cl->backing) {
    cl->backing = strdup(arg);
    return 0;
  }
  return 1;
}

void usage(const char* program) {
  fmt::print(
      "usage: {} -o fileset=FSET[,fetch_timeout=SECS][,no_passthrough] BACKING MOUNTPOINT "
      "[options]\n"
      "Mounts BACKING at MOUNTPOINT and journals every change made through the mount in\n"
      "BACKING/.intermezzo/FSET/kml (created as mkizofs does when missing).\n\n"
      "    -o fileset=FSET        the fileset (required)\n"
      "    -o fetch_timeout=SECS  how long an open waits for the replicator to fetch a\n"
      "                           placeholder's content (default 60)\n"
      "    -o no_passthrough      file data through izofs even where the kernel could\n"
      "                           read and write the backing files itself\n\n",
      program);
}

int refuse(const std::string& message) {
  fmt::print(stderr, "izofs: {}\n", message);
  return 1;
}

// Every inode the kernel has looked up holds a descriptor until the kernel
// forgets it, so izofs takes as many as it may: all of fs.nr_open when it
// runs as root, the hard limit otherwise.
void raise_open_file_limit() {
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  rlim_t nr_open = 0;
  if (FILE* f = fopen("/proc/sys/fs/nr_open", "r")) {
    unsigned long long n = 0;
    if (fscanf(f, "%llu", &n) == 1) nr_open = static_cast<rlim_t>(n);
    fclose(f);
  }
  if (geteuid() == 0 && nr_open > limit.rlim_max) limit.rlim_max = nr_open;
  limit.rlim_cur = limit.rlim_max;
  setrlimit(RLIMIT_NOFILE, &limit);
}

// A mount point as /proc/self/mountinfo writes it: a space, tab, newline
// or backslash as \ooo.
std::string unescape_mount_point(const std::string& field) {
  std::string path;
  for (size_t i = 0; i < field.size(); i++) {
    if (field[i] == '\\' && field.size() - i > 3) {
      path += static_cast<char>((field[i + 1] - '0') * 64 + (field[i + 2] - '0') * 8 +
                                (field[i + 3] - '0'));
      i += 3;
    } else {
      path += field[i];
    }
  }
  return path;
}

// The kernel reads ahead 128 KiB at a time in a FUSE mount, and lowers
// whatever izofs asks for at INIT to that. Root may raise it in sysfs,
// under the mount's device number, before izofs answers INIT: then reads
// come kRequestBytes at a time.
void widen_readahead(const char* mountpoint) {
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string line, device;
  while (std::getline(mountinfo, line)) {
    // ID PARENT MAJOR:MINOR ROOT MOUNT_POINT ...; of several mounts on one
    // point, the last is on top.
    std::istringstream fields(line);
    std::string id, parent, dev, root, point;
    if (fields >> id >> parent >> dev >> root >> point &&
        unescape_mount_point(point) == mountpoint) {
      device = dev;
    }
  }
  if (device.empty()) return;
  std::ofstream setting("/sys/class/bdi/" + device + "/read_ahead_kb");
  setting << izofs::kRequestBytes / 1024 << std::flush;
  if (!setting) {
    intersync::log_debug("izofs: readahead left at the kernel's default: {} not writable",
                         "/sys/class/bdi/" + device + "/read_ahead_kb");
  }
}

// Arguments for fuse_session_new: FUSE's own plus what izofs always wants.
// The kernel checks permissions (izofs itself runs as whoever mounted, for
// every caller); /proc/mounts shows BACKING with type fuse.izofs.
void add_mount_options(struct fuse_args* args, const std::string& backing) {
  char* options = nullptr;
  fuse_opt_add_opt(&options, "default_permissions");
  fuse_opt_add_opt(&options, "subtype=izofs");
  fuse_opt_add_opt_escaped(&options, ("fsname=" + backing).c_str());
  fuse_opt_add_arg(args, "-o");
  fuse_opt_add_arg(args, options);
  free(options);
}

int run_session(struct fuse_session* se, const fuse_cmdline_opts& opts) {
  if (opts.singlethread) return fuse_session_loop(se);
  struct fuse_loop_config* config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(config, static_cast<unsigned>(opts.clone_fd));
  // UINT_MAX: not given; libfuse's default then applies.
  if (opts.max_idle_threads != UINT_MAX) {
    fuse_loop_cfg_set_idle_threads(config, opts.max_idle_threads);
  }
  fuse_loop_cfg_set_max_threads(config, opts.max_threads);
  int rc = fuse_session_loop_mt(se, config);
  fuse_loop_cfg_destroy(config);
  return rc;
}

int mount_and_serve(struct fuse_args* args, const fuse_cmdline_opts& opts, const CommandLine& cl) {
  if (!cl.fileset) return refuse("missing -o fileset=FSET");
  if (!intersync::valid_fileset_name(cl.fileset)) {
    return refuse(fmt::format("\"{}\" is not a fileset name (no '/', not . or ..)", cl.fileset));
  }
  if (!cl.backing) return refuse("missing BACKING (the directory to mount)");
  if (!opts.mountpoint) return refuse("missing MOUNTPOINT");
  char backing[PATH_MAX];
  if (!realpath(cl.backing, backing))
    return refuse(fmt::format("{}: {}", cl.backing, strerror(errno)));
  struct stat st;
  if (stat(backing, &st) != 0 || !S_ISDIR(st.st_mode)) {
    return refuse(fmt::format("{}: not a directory", cl.backing));
  }
  intersync::FilesetLayout layout = intersync::make_fileset_layout(backing, cl.fileset);
  if (const intersync::Error* err = layout.first_error()) return refuse(err->message);

  // Modes come from the callers, with their umask already applied.
  umask(0);
  raise_open_file_limit();
  intersync::log_setup(opts.foreground ? intersync::LogSink::Stderr : intersync::LogSink::Syslog,
                       opts.debug ? intersync::LogLevel::Debug : intersync::LogLevel::Info,
                       "izofs");
  izofs::IzofsConfig config;
  config.fileset = cl.fileset;
  config.backing = backing;
  config.kml = std::string(backing) + "/.intermezzo/" + cl.fileset + "/kml";
  config.fetch_timeout = std::chrono::seconds(cl.fetch_timeout);
  config.passthrough = !cl.no_passthrough;
  auto fs = izofs::Izofs::create(config);
  if (!fs.ok()) return refuse(fs.error().message);

  add_mount_options(args, backing);
  struct fuse_session* se =
      fuse_session_new(args, &izofs::Izofs::operations(), sizeof(fuse_lowlevel_ops), fs->get());
  if (!se) return 1;  // libfuse said why
  int rc = 1;
  if (fuse_set_signal_handlers(se) == 0) {
    if (fuse_session_mount(se, opts.mountpoint) == 0) {
      // From the first request (INIT) on, on the /dev/fuse descriptor the
      // mount opened (libfuse closes it as before).
      if (int err = (*fs)->take_session_io(se); err != 0) {
        refuse(fmt::format("the FUSE session's I/O for passthrough: {}", strerror(-err)));
      } else {
        widen_readahead(opts.mountpoint);
        fuse_daemonize(opts.foreground);
        (*fs)->start(se);
        rc = run_session(se, opts) == 0 ? 0 : 1;
        if (intersync::Status stopped = (*fs)->stop(); !stopped.ok()) {
          intersync::log_error("izofs: {}", stopped.error().message);
          rc = 1;
        }
      }
      fuse_session_unmount(se);
    }
    fuse_remove_signal_handlers(se);
  }
  fuse_session_destroy(se);
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
  CommandLine cl;
  struct fuse_cmdline_opts opts = {};
  int rc;
  if (fuse_opt_parse(&args, &cl, kOptions, take_backing) != 0 ||
      fuse_parse_cmdline(&args, &opts) != 0) {
    rc = 2;
  } else if (opts.show_help) {
    usage(argv[0]);
    fuse_cmdline_help();
    fuse_lowlevel_help();
    rc = 0;
  } else if (opts.show_version) {
    fmt::print("izofs (intersync) {}\n", INTERSYNC_VERSION);
    fflush(stdout);  // libfuse's lines come from fusermount3 too
    fuse_lowlevel_version();
    rc = 0;
  } else {
    rc = mount_and_serve(&args, opts, cl);
  }
  free(opts.mountpoint);
  free(cl.fileset);
  free(cl.backing);
  fuse_opt_free_args(&args);
  return rc;
}
