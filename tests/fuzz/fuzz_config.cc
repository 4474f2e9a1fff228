// libFuzzer target for the daemon's configuration loader: load_config()
// (config.h) on arbitrary YAML, written to a file in a private temporary
// directory for each run, plus parse_host_port() on the raw input. A
// configuration that loads must satisfy what the daemon relies on without
// checking again (absolute paths, valid and unique names, a server with
// either clients or auth: none, lowercase hex token digests ...); one that
// does not load must say where, as "FILE:..." .
//
// load_config reads token_file, which the input names: inputs that name a
// device, a FIFO, /proc, /sys or a large file are skipped (reading
// /dev/zero never ends), since that is the operator's business, not a bug.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "config.h"
#include "fuzz_check.h"
#include "intersync/log.h"

using namespace intersync;

namespace {

struct Setup {
  std::string dir;
  std::string file;
};

std::string g_dir;  // removed at exit

void remove_dir() {
  std::error_code ec;
  if (!g_dir.empty()) std::filesystem::remove_all(g_dir, ec);
}

const Setup& setup() {
  static const Setup s = [] {
    log_setup(LogSink::Stderr, LogLevel::Error);
    std::string tmpl = (std::filesystem::temp_directory_path() / "fuzz_config.XXXXXX").string();
    if (!mkdtemp(tmpl.data())) fail("mkdtemp");
    g_dir = tmpl;
    std::atexit(remove_dir);
    Setup st{tmpl, tmpl + "/intersync.yaml"};
    // The token the seed configurations name (relative to the config file).
    int fd = open((st.dir + "/client.token").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, "secret-token\n", 13) != 13) fail("cannot write client.token");
    close(fd);
    return st;
  }();
  return s;
}

bool safe_to_read(const std::string& path) {
  if (path.empty() || path.size() >= PATH_MAX || path.find('\0') != std::string::npos) {
    return true;
  }
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return true;  // missing: an error, quickly
  if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) return false;
  if (st.st_size > (1 << 20)) return false;
  char real[PATH_MAX];
  if (!realpath(path.c_str(), real)) return false;
  std::string_view r(real);
  for (std::string_view bad : {"/proc/", "/sys/", "/dev/", "/run/"}) {
    if (r.substr(0, bad.size()) == bad) return false;
  }
  return true;
}

// Every scalar could be a token_file: each must name nothing risky to read.
// Also refuses documents whose alias graph is too big to walk.
bool input_is_safe(const std::string& text, const std::string& dir) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception&) {
    return true;  // load_config fails the same way before reading anything
  }
  std::vector<YAML::Node> stack{root};
  size_t budget = 20000;
  while (!stack.empty()) {
    if (budget-- == 0) return false;
    YAML::Node n = stack.back();
    stack.pop_back();
    if (n.IsScalar()) {
      const std::string& s = n.Scalar();
      if (!safe_to_read(s) ||
          (s.empty() || s.front() != '/' ? !safe_to_read(dir + "/" + s) : false)) {
        return false;
      }
    } else if (n.IsSequence()) {
      for (const auto& item : n) stack.push_back(item);
    } else if (n.IsMap()) {
      for (const auto& kv : n) {
        stack.push_back(kv.first);
        stack.push_back(kv.second);
      }
    }
  }
  return true;
}

bool valid_name(std::string_view s) {
  return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](char c) {
    return isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

bool valid_plugin_name(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

bool absolute(std::string_view s) {
  return !s.empty() && s.front() == '/';
}

void check_config(const Config& cfg, const std::string& file) {
  CHECK(cfg.file == file);
  CHECK(absolute(cfg.state_dir), cfg.state_dir);
  CHECK(absolute(cfg.pid_file), cfg.pid_file);
  CHECK(absolute(cfg.control_socket), cfg.control_socket);
  for (const auto& d : cfg.plugin_dirs) CHECK(absolute(d), d);
  CHECK(!cfg.filesets.empty());
  std::set<std::string> names;
  for (const FilesetConfig& f : cfg.filesets) {
    CHECK(valid_name(f.name), f.name);
    CHECK(names.insert(f.name).second, "duplicate fileset " + f.name);
    CHECK(absolute(f.path), f.path);
    CHECK(valid_plugin_name(f.backend), f.backend);
    CHECK(valid_plugin_name(f.transport), f.transport);
    (void)role_name(f.role);
    (void)conflict_policy_name(f.conflict);
    if (f.role == Role::Server) {
      CHECK(f.auth_none != !f.clients.empty(), f.name);
      std::set<std::string> clients;
      for (const ClientEntry& c : f.clients) {
        CHECK(valid_name(c.name), c.name);
        CHECK(clients.insert(c.name).second, "duplicate client " + c.name);
        CHECK(c.token_sha256.size() == 64, c.token_sha256);
        CHECK(std::all_of(c.token_sha256.begin(), c.token_sha256.end(),
                          [](char ch) { return isdigit(ch) || (ch >= 'a' && ch <= 'f'); }),
              c.token_sha256);
      }
      CHECK(f.token.empty() && f.server_host.empty());
    } else {
      CHECK(f.clients.empty());
      CHECK(!f.server_host.empty());
      if (f.auth_none) {
        CHECK(f.token.empty());
      } else {
        CHECK(!f.token.empty());
        CHECK(
            std::all_of(f.token.begin(), f.token.end(), [](char c) { return c > ' ' && c < 0x7f; }),
            "token with a control character");
      }
    }
  }
}

void check_host_port(std::string_view s) {
  auto hp = parse_host_port(s, 370);
  if (!hp) {
    CHECK(!hp.error().message.empty());
    return;
  }
  CHECK(!hp->first.empty());
  CHECK(hp->first.size() <= s.size());
  // The host goes to inet_pton / getaddrinfo and into logs: printable
  // ASCII only, no NUL to cut it short.
  CHECK(std::all_of(hp->first.begin(), hp->first.end(), [](char c) { return c > ' ' && c < 0x7f; }),
        "host '" + hp->first + "'");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Setup& s = setup();
  std::string text(reinterpret_cast<const char*>(data), size);
  check_host_port(text);
  if (!input_is_safe(text, s.dir)) return -1;  // not added to the corpus

  int fd = open(s.file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) fail("cannot write the configuration file");
  for (size_t done = 0; done < size;) {
    ssize_t n = write(fd, text.data() + done, size - done);
    if (n <= 0) fail("cannot write the configuration file");
    done += static_cast<size_t>(n);
  }
  close(fd);

  Result<Config> cfg = load_config(s.file);
  if (cfg) {
    check_config(*cfg, s.file);
  } else {
    CHECK(cfg.error().code < 0);
    CHECK(cfg.error().message.rfind(s.file, 0) == 0, cfg.error().message);
  }
  return 0;
}
