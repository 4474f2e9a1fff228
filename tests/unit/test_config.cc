// Tests for load_config() and ConfigNode: every configuration file is written
// to a fresh temporary directory, loaded for real, and each mistake must come
// back as "FILE:LINE:COL: message" with the position an operator would look at.
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>
#include <string>

#include "config.h"
#include "intersync/config_node.h"

using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using intersync::Config;
using intersync::ConfigNode;
using intersync::ConflictPolicy;
using intersync::load_config;
using intersync::parse_host_port;
using intersync::Role;

namespace {

namespace fs = std::filesystem;

const std::string kHashA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const std::string kHashB = "60303AE22B998861BCE3B28F33EEC1BE758A213C86C93C076DBE9F558C11C752";

// A directory under /tmp removed with everything in it when the test ends.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "test_config.XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() { fs::remove_all(path_); }

  std::string write(const std::string& name, const std::string& text, mode_t mode = 0600) const {
    fs::path p = path_ / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
    REQUIRE(chmod(p.c_str(), mode) == 0);
    return p.string();
  }
  std::string path(const std::string& name = "") const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

// Loads `yaml` from <tmp>/intersync.yaml and returns the error message,
// failing the test if it loaded.
std::string load_error(const TempDir& dir, const std::string& yaml) {
  auto cfg = load_config(dir.write("intersync.yaml", yaml));
  REQUIRE_FALSE(cfg.ok());
  CHECK(cfg.error().code == -EINVAL);
  return cfg.error().message;
}

std::string sha256_hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  REQUIRE(EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) == 1);
  std::ostringstream hex;
  for (unsigned int i = 0; i < len; ++i)
    hex << std::hex << std::setw(2) << std::setfill('0') << int(md[i]);
  return hex.str();
}

Config load_ok(const TempDir& dir, const std::string& yaml) {
  auto cfg = load_config(dir.write("intersync.yaml", yaml));
  INFO((cfg.ok() ? std::string() : cfg.error().message));
  REQUIRE(cfg.ok());
  return *cfg;
}

// A minimal valid server entry, for tests about other keys.
const std::string kServerHead =
    "filesets:\n"
    "  - name: docs\n"
    "    path: /srv/docs\n"
    "    role: server\n";

}  // namespace

TEST_CASE("a full server configuration loads with every field", "[config]") {
  TempDir dir;
  Config cfg = load_ok(dir, R"(# server
state_dir: /var/intermezzo-3
plugin_dir: /opt/is/plugins
log: syslog
log_level: debug
pid_file: /run/intersyncd.pid
control_socket: /run/intersync.sock
filesets:
  - name: docs
    path: /srv/docs
    role: server
    backend: kml
    transport: ssh
    listen: 127.0.0.1:3700
    conflict: keep-both
    clients:
      - name: laptop
        token_sha256: )" + kHashA +
                                R"(
      - name: desk.top-2
        token_sha256: )" + kHashB +
                                R"(
  - name: media
    path: /srv/media
    role: server
    listen: "[::1]:0"
    auth: none
    conflict: newest-wins
)");
  CHECK(cfg.file == dir.path("intersync.yaml"));
  CHECK(cfg.state_dir == "/var/intermezzo-3");
  CHECK(cfg.plugin_dirs == std::vector<std::string>{"/opt/is/plugins"});
  CHECK(cfg.log_sink == intersync::LogSink::Syslog);
  CHECK(cfg.log_level == intersync::LogLevel::Debug);
  CHECK(cfg.pid_file == "/run/intersyncd.pid");
  CHECK(cfg.control_socket == "/run/intersync.sock");
  REQUIRE(cfg.filesets.size() == 2);

  const auto& docs = cfg.filesets[0];
  CHECK(docs.name == "docs");
  CHECK(docs.path == "/srv/docs");
  CHECK(docs.role == Role::Server);
  CHECK(docs.backend == "kml");
  CHECK(docs.transport == "ssh");
  CHECK(docs.listen_host == "127.0.0.1");
  CHECK(docs.listen_port == 3700);
  CHECK(docs.conflict == ConflictPolicy::KeepBoth);
  CHECK_FALSE(docs.auth_none);
  REQUIRE(docs.clients.size() == 2);
  CHECK(docs.clients[0].name == "laptop");
  CHECK(docs.clients[0].token_sha256 == kHashA);
  CHECK(docs.clients[1].name == "desk.top-2");
  // Hashes are compared as text, so they are stored in one case.
  CHECK(docs.clients[1].token_sha256 ==
        "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752");
  CHECK(docs.node.where() == dir.path("intersync.yaml") + ":9:5: ");

  const auto& media = cfg.filesets[1];
  CHECK(media.name == "media");
  CHECK(media.backend == "inotify");
  CHECK(media.transport == "http");
  CHECK(media.listen_host == "::1");
  CHECK(media.listen_port == 0);
  CHECK(media.auth_none);
  CHECK(media.clients.empty());
  CHECK(media.conflict == ConflictPolicy::NewestWins);
}

TEST_CASE("a full client configuration loads with every field", "[config]") {
  TempDir dir;
  std::string token = dir.write("tokens/docs.token", "s3cret-token  \n\n");
  Config cfg = load_ok(dir, R"(filesets:
  - name: docs
    path: /home/me/docs
    role: client
    backend: inotify
    transport: ssh
    server: alice@files.example.org:2222
    token_file: )" + token + R"(
    write_back: true
    conflict: client-wins
  - name: open
    path: /home/me/open
    role: client
    server: "[2001:db8::1]"
    auth: none
)");
  REQUIRE(cfg.filesets.size() == 2);
  const auto& docs = cfg.filesets[0];
  CHECK(docs.role == Role::Client);
  CHECK(docs.path == "/home/me/docs");
  CHECK(docs.transport == "ssh");
  CHECK(docs.server_user == "alice");
  CHECK(docs.server_host == "files.example.org");
  CHECK(docs.server_port == 2222);
  CHECK(docs.token_file == token);
  CHECK(docs.token == "s3cret-token");
  CHECK(docs.write_back);
  CHECK(docs.conflict == ConflictPolicy::ClientWins);
  CHECK_FALSE(docs.auth_none);

  const auto& open = cfg.filesets[1];
  CHECK(open.server_user.empty());
  CHECK(open.server_host == "2001:db8::1");
  CHECK(open.server_port == 370);
  CHECK(open.auth_none);
  CHECK(open.token_file.empty());
  CHECK(open.token.empty());
  CHECK_FALSE(open.write_back);
  CHECK(open.conflict == ConflictPolicy::ServerWins);
}

TEST_CASE("defaults fill what a minimal configuration leaves out", "[config]") {
  TempDir dir;
  Config cfg = load_ok(dir, kServerHead + "    auth: none\n");
  CHECK(cfg.state_dir == "/var/intermezzo-0");
  CHECK(cfg.plugin_dirs.empty());
  CHECK(cfg.log_sink == intersync::LogSink::Stderr);
  CHECK(cfg.log_level == intersync::LogLevel::Info);
  CHECK(cfg.pid_file == "/var/intermezzo-0/intersyncd.pid");
  CHECK(cfg.control_socket == "/var/intermezzo-0/control.sock");
  REQUIRE(cfg.filesets.size() == 1);
  const auto& f = cfg.filesets[0];
  CHECK(f.backend == "inotify");
  CHECK(f.transport == "http");
  CHECK(f.listen_host == "0.0.0.0");
  CHECK(f.listen_port == 370);
  CHECK(f.conflict == ConflictPolicy::ServerWins);

  SECTION("pid file and socket follow state_dir") {
    Config moved =
        load_ok(dir, "state_dir: /var/intermezzo-1\n" + kServerHead + "    auth: none\n");
    CHECK(moved.pid_file == "/var/intermezzo-1/intersyncd.pid");
    CHECK(moved.control_socket == "/var/intermezzo-1/control.sock");
  }
  SECTION("a listen address without a port gets 370") {
    Config c = load_ok(dir, kServerHead + "    auth: none\n    listen: 10.0.0.1\n");
    CHECK(c.filesets[0].listen_host == "10.0.0.1");
    CHECK(c.filesets[0].listen_port == 370);
  }
}

TEST_CASE("plugin_dir takes a string or a list of absolute paths", "[config]") {
  TempDir dir;
  Config cfg =
      load_ok(dir, "plugin_dir: [/a/plugins, /b/plugins]\n" + kServerHead + "    auth: none\n");
  CHECK(cfg.plugin_dirs == std::vector<std::string>{"/a/plugins", "/b/plugins"});

  std::string f = dir.path("intersync.yaml");
  CHECK(load_error(dir, "plugin_dir: [/a, lib/plugins]\n" + kServerHead + "    auth: none\n") ==
        f + ":1:18: each entry of 'plugin_dir' must be an absolute path");
  CHECK(load_error(dir, "plugin_dir: plugins\n" + kServerHead + "    auth: none\n") ==
        f + ":1:1: 'plugin_dir' in the top level must be an absolute path, not 'plugins'");
}

TEST_CASE("unknown keys are named with their file, line and column", "[config]") {
  TempDir dir;
  std::string f = dir.path("intersync.yaml");
  SECTION("at the top level") {
    CHECK(load_error(dir, "log: stderr\nstat_dir: /var/x\n" + kServerHead) ==
          f + ":2:1: unknown key 'stat_dir' in the top level");
  }
  SECTION("inside a fileset") {
    CHECK(load_error(dir, R"(log: stderr
filesets:
  - name: docs
    path: /srv/docs
    role: server
    auth: none
    listn: 0.0.0.0:370
)") == f + ":7:5: unknown key 'listn' in fileset 'docs'");
  }
  SECTION("inside a client entry") {
    CHECK(load_error(dir, kServerHead + "    clients:\n      - name: a\n        token: x\n") ==
          f + ":7:9: unknown key 'token' in a client of fileset 'docs'");
  }
  SECTION("a typo of a required key is reported as unknown, not as missing") {
    CHECK(load_error(dir, "filesets:\n  - nmae: docs\n    path: /srv\n    role: server\n") ==
          f + ":2:5: unknown key 'nmae' in fileset #1");
  }
  SECTION("a key given twice") {
    CHECK(load_error(dir, kServerHead + "    auth: none\n    path: /srv/other\n") ==
          f + ":6:5: key 'path' appears twice in fileset 'docs'");
    CHECK(load_error(dir, "log: stderr\nlog: syslog\n" + kServerHead) ==
          f + ":2:1: key 'log' appears twice in the top level");
  }
}

TEST_CASE("a key of the other role is an error naming key and role", "[config]") {
  TempDir dir;
  std::string f = dir.path("intersync.yaml");
  CHECK(load_error(dir, kServerHead + "    auth: none\n    write_back: true\n") ==
        f + ":6:5: 'write_back' is a client key, but fileset 'docs' is a server");
  CHECK(load_error(dir, R"(filesets:
  - name: docs
    path: /home/docs
    role: client
    server: files
    auth: none
    listen: 0.0.0.0:370
)") == f + ":7:5: 'listen' is a server key, but fileset 'docs' is a client");
}

TEST_CASE("wrong types are errors at the value's line and column", "[config]") {
  TempDir dir;
  std::string f = dir.path("intersync.yaml");
  SECTION("a list where a string is expected") {
    CHECK(load_error(dir, "filesets:\n  - name: [a, b]\n    path: /srv\n    role: server\n") ==
          f + ":2:11: 'name' in fileset #1 must be a string, not a list");
  }
  SECTION("a key with no value") {
    CHECK(load_error(dir, "state_dir:\n" + kServerHead) ==
          f + ":1:1: 'state_dir' in the top level has no value: it must be a string");
  }
  SECTION("a port that is not a number") {
    CHECK(load_error(dir, kServerHead + "    auth: none\n    listen: 0.0.0.0:yes\n") ==
          f + ":6:5: 'listen' in fileset 'docs': port 'yes' must be a number from 0 to 65535");
  }
  SECTION("a port above 65535") {
    CHECK_THAT(load_error(dir, kServerHead + "    auth: none\n    listen: host:65536\n"),
               StartsWith(f + ":6:5: ") && Contains("port '65536'"));
  }
  SECTION("yes is not a YAML boolean") {
    CHECK(load_error(dir, R"(filesets:
  - name: docs
    path: /home/docs
    role: client
    server: files
    auth: none
    write_back: yes
)") == f + ":7:17: 'write_back' in fileset 'docs' must be true or false");
  }
  SECTION("filesets must be a list") {
    CHECK(load_error(dir, "filesets:\n  name: docs\n") ==
          f + ":2:3: 'filesets' must be a list of filesets");
  }
  SECTION("a fileset must be a mapping") {
    CHECK(load_error(dir, "filesets:\n  - docs\n") ==
          f + ":2:5: fileset #1 must be a mapping with name, path and role");
  }
  SECTION("clients must be a list") {
    CHECK(load_error(dir, kServerHead + "    clients: laptop\n") ==
          f + ":5:14: 'clients' in fileset 'docs' must be a list of {name, token_sha256}");
  }
  SECTION("the document must be a mapping") {
    CHECK(load_error(dir, "- a\n- b\n") ==
          f + ":1:1: the configuration must be a mapping with a 'filesets' list");
    CHECK_THAT(load_error(dir, ""), StartsWith(f + ": ") && Contains("must be a mapping"));
  }
}

TEST_CASE("missing required keys are named", "[config]") {
  TempDir dir;
  std::string f = dir.path("intersync.yaml");
  CHECK(load_error(dir, "filesets:\n  - path: /srv\n    role: server\n") ==
        f + ":2:5: missing key 'name' in fileset #1");
  CHECK(load_error(dir, "filesets:\n  - name: docs\n    role: server\n") ==
        f + ":2:5: missing key 'path' in fileset 'docs'");
  CHECK(load_error(dir, "filesets:\n  - name: docs\n    path: /srv\n") ==
        f + ":2:5: missing key 'role' in fileset 'docs'");
  CHECK(load_error(dir, "filesets:\n  - name: docs\n    path: /srv\n    role: client\n") ==
        f + ":2:5: missing key 'server' in fileset 'docs'");
  CHECK(load_error(dir, "log: stderr\n") ==
        f + ":1:1: missing key 'filesets': list at least one fileset");
  CHECK(load_error(dir, "filesets: []\n") ==
        f + ":1:11: 'filesets' is empty: list at least one fileset");
  CHECK(load_error(dir,
                   "filesets:\n  - name: docs\n    path: /srv\n    role: client\n"
                   "    server: files\n") ==
        f + ":2:5: fileset 'docs' has no token_file: name the file holding its token, or say "
            "auth: none");
}

TEST_CASE("bad values are rejected", "[config]") {
  TempDir dir;
  std::string f = dir.path("intersync.yaml");
  CHECK(load_error(dir, "filesets:\n  - name: docs\n    path: /srv\n    role: master\n") ==
        f + ":4:5: 'role' in fileset 'docs' must be one of server, client, not 'master'");
  CHECK(load_error(dir, "filesets:\n  - name: docs\n    path: srv/docs\n    role: server\n") ==
        f + ":3:5: 'path' in fileset 'docs' must be an absolute path, not 'srv/docs'");
  CHECK(load_error(dir, "filesets:\n  - name: my docs\n    path: /srv\n    role: server\n") ==
        f + ":2:5: fileset name 'my docs' must be 1 to 64 letters, digits, '.', '_' or '-'");
  CHECK(load_error(dir, "log_level: loud\n" + kServerHead) ==
        f + ":1:1: 'log_level' in the top level must be one of debug, info, warn, error, not "
            "'loud'");
  CHECK(load_error(dir, "log: file\n" + kServerHead) ==
        f + ":1:1: 'log' in the top level must be one of stderr, syslog, not 'file'");
  CHECK(load_error(dir, kServerHead + "    auth: none\n    conflict: mine\n") ==
        f + ":6:5: 'conflict' in fileset 'docs' must be one of server-wins, client-wins, "
            "newest-wins, keep-both, not 'mine'");
  CHECK(load_error(dir, kServerHead + "    auth: none\n    backend: Inotify\n") ==
        f + ":6:5: backend 'Inotify' in fileset 'docs' must be lowercase letters, digits, '_' "
            "or '-'");
  CHECK(load_error(dir, kServerHead + "    auth: token\n") ==
        f + ":5:5: 'auth' in fileset 'docs' can only be 'none', not 'token'; leave it out to "
            "require tokens");
  CHECK_THAT(load_error(dir, kServerHead + "    auth: none\n    listen: 370\n"),
             StartsWith(f + ":6:5: ") && Contains("write host:port"));
  CHECK_THAT(load_error(dir, "state_dir: var/is\n" + kServerHead),
             StartsWith(f + ":1:1: ") && Contains("absolute path"));
  CHECK_THAT(load_error(dir, R"(filesets:
  - name: docs
    path: /home/docs
    role: client
    server: "@files"
    auth: none
)"),
             StartsWith(f + ":5:5: ") && Contains("empty user"));
}

TEST_CASE("client entries of a server are checked", "[config]") {
  TempDir dir;
  std::string f = dir.path("intersync.yaml");
  CHECK(
      load_error(dir, kServerHead + "    clients:\n      - name: a\n        token_sha256: abc\n") ==
      f + ":7:9: 'token_sha256' of client 'a' of fileset 'docs' must be 64 hex digits (sha256sum "
          "of the token)");
  CHECK(load_error(dir, kServerHead + "    clients:\n      - name: a\n        token_sha256: " +
                            kHashA + "\n      - name: a\n        token_sha256: " + kHashB + "\n") ==
        f + ":8:9: client 'a' appears twice in fileset 'docs'");
  CHECK(load_error(dir, kServerHead + "    clients:\n      - token_sha256: " + kHashA + "\n") ==
        f + ":6:9: missing key 'name' in a client of fileset 'docs'");
}

TEST_CASE("a syntax error names its line and column", "[config]") {
  TempDir dir;
  std::string f = dir.path("intersync.yaml");
  SECTION("an unclosed bracket") {
    CHECK_THAT(load_error(dir, "plugin_dir: [/a, /b\n" + kServerHead),
               StartsWith(f + ":2:9: ") && Contains("end of sequence flow"));
  }
  SECTION("bad indentation") {
    CHECK_THAT(load_error(dir, "filesets:\n  - name: docs\n    path: /srv\n   role: server\n"),
               StartsWith(f + ":4:4: "));
  }
  SECTION("a tab used for indentation") {
    CHECK_THAT(load_error(dir, "filesets:\n\t- name: docs\n"), StartsWith(f + ":2:"));
  }
}

TEST_CASE("a file that cannot be read is named with strerror", "[config]") {
  TempDir dir;
  auto cfg = load_config(dir.path("nowhere.yaml"));
  REQUIRE_FALSE(cfg.ok());
  CHECK(cfg.error().code == -ENOENT);
  CHECK(cfg.error().message == dir.path("nowhere.yaml") + ": No such file or directory");
}

TEST_CASE("token_file is resolved, read and checked", "[config]") {
  TempDir dir;
  std::string f = dir.path("intersync.yaml");
  auto client = [](const std::string& token_line) {
    return "filesets:\n  - name: docs\n    path: /home/docs\n    role: client\n"
           "    server: files\n" +
           token_line;
  };
  SECTION("a relative path is relative to the YAML file's directory") {
    dir.write("keys/docs.token", "abc123\n");
    Config cfg = load_ok(dir, client("    token_file: keys/docs.token\n"));
    CHECK(cfg.filesets[0].token_file == dir.path("keys/docs.token"));
    CHECK(cfg.filesets[0].token == "abc123");
  }
  SECTION("a missing token file is named with its key's position and strerror") {
    auto cfg = load_config(dir.write("intersync.yaml", client("    token_file: none.token\n")));
    REQUIRE_FALSE(cfg.ok());
    CHECK(cfg.error().code == -ENOENT);
    CHECK(cfg.error().message == f + ":6:5: cannot read token_file '" + dir.path("none.token") +
                                     "' of fileset 'docs': No such file or directory");
  }
  SECTION("a token file that is a directory cannot be read") {
    fs::create_directories(dir.path("tokdir"));
    auto cfg = load_config(dir.write("intersync.yaml", client("    token_file: tokdir\n")));
    REQUIRE_FALSE(cfg.ok());
    CHECK(cfg.error().code == -EISDIR);
    CHECK_THAT(cfg.error().message, StartsWith(f + ":6:5: ") && Contains("Is a directory"));
  }
  SECTION("an empty token file") {
    dir.write("empty.token", " \n");
    CHECK(load_error(dir, client("    token_file: empty.token\n")) ==
          f + ":6:5: token_file '" + dir.path("empty.token") +
              "' of fileset 'docs' holds no token");
  }
  SECTION("a token with a line break inside") {
    dir.write("two.token", "abc\ndef\n");
    CHECK_THAT(load_error(dir, client("    token_file: two.token\n")),
               StartsWith(f + ":6:5: ") && Contains("printable"));
  }
  SECTION("a world-readable token file still loads (with a warning)") {
    dir.write("open.token", "abc\n", 0644);
    Config cfg = load_ok(dir, client("    token_file: open.token\n"));
    CHECK(cfg.filesets[0].token == "abc");
  }
  SECTION("auth: none and token_file exclude each other") {
    dir.write("docs.token", "abc\n");
    CHECK(load_error(dir, client("    auth: none\n    token_file: docs.token\n")) ==
          f + ":7:5: fileset 'docs' says auth: none but has a token_file");
  }
}

TEST_CASE("a server needs clients or auth: none", "[config]") {
  TempDir dir;
  std::string f = dir.path("intersync.yaml");
  CHECK(load_error(dir, kServerHead) ==
        f + ":2:5: fileset 'docs' has no clients: list clients with token_sha256, or say auth: "
            "none");
  CHECK(load_error(dir, kServerHead + "    clients: []\n") ==
        f + ":2:5: fileset 'docs' has no clients: list clients with token_sha256, or say auth: "
            "none");
  CHECK(load_error(dir, kServerHead +
                            "    auth: none\n    clients:\n      - name: a\n"
                            "        token_sha256: " +
                            kHashA + "\n") ==
        f + ":5:5: fileset 'docs' says auth: none but lists clients; remove one");
  Config cfg = load_ok(dir, kServerHead + "    auth: none\n");
  CHECK(cfg.filesets[0].auth_none);
}

TEST_CASE("fileset names are unique, listeners may be shared", "[config]") {
  TempDir dir;
  std::string f = dir.path("intersync.yaml");
  CHECK(load_error(dir, kServerHead + "    auth: none\n" +
                            "  - name: docs\n    path: /srv/b\n    role: server\n") ==
        f + ":6:5: fileset 'docs' is defined twice (first at " + f + ":2:5)");
  Config cfg = load_ok(dir, kServerHead + "    auth: none\n    listen: 0.0.0.0:3700\n" +
                                "  - name: more\n    path: /srv/b\n    role: server\n"
                                "    auth: none\n    listen: 0.0.0.0:3700\n");
  REQUIRE(cfg.filesets.size() == 2);
  CHECK(cfg.filesets[0].listen_port == cfg.filesets[1].listen_port);
}

TEST_CASE("plugin subtrees are kept for the plugin, not validated by core", "[config]") {
  TempDir dir;
  std::string f = dir.path("intersync.yaml");
  Config cfg = load_ok(dir, kServerHead + R"(    auth: none
    backend: kml
    kml:
      anything: [1, 2]
      whatever: {deep: true}
)");
  const auto& fset = cfg.filesets[0];
  REQUIRE(fset.backend_node.defined());
  CHECK(fset.backend_node.yaml().IsMap());
  CHECK(fset.backend_node.has("anything"));
  CHECK(fset.backend_node.what() == "'kml' settings of fileset 'docs'");
  // The plugin rejects what it does not know, with the same positions.
  auto st = fset.backend_node.expect_map({"whatever"});
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().message ==
        f + ":8:7: unknown key 'anything' in 'kml' settings of fileset 'docs'");

  // An absent subtree is undefined, but still points at its fileset.
  CHECK_FALSE(fset.transport_node.defined());
  CHECK(fset.transport_node.expect_map({}).ok());
  auto missing = fset.transport_node.get_string("port");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message ==
        f + ":2:5: missing key 'port' in 'http' settings of fileset 'docs'");

  SECTION("a subtree of a plugin not in use is an unknown key") {
    CHECK(load_error(dir, kServerHead + "    auth: none\n    ssh: {port: 22}\n") ==
          f + ":6:5: unknown key 'ssh' in fileset 'docs'");
  }
  SECTION("a plugin cannot be named like a core key") {
    CHECK_THAT(load_error(dir, kServerHead + "    auth: none\n    transport: server\n"),
               StartsWith(f + ":6:5: ") && Contains("has the name of a fileset key"));
  }
}

TEST_CASE("ConfigNode reads typed values with positions", "[config_node]") {
  YAML::Node root = YAML::Load(
      "port: 8080\n"
      "neg: -3\n"
      "big: 70000\n"
      "word: yes\n"
      "quoted: \"12\"\n"
      "flag: false\n"
      "list: [a]\n"
      "sub:\n"
      "  x: 1\n");
  ConfigNode n(root, "p.yaml", "'http' settings of fileset 'docs'");
  CHECK(n.defined());
  CHECK(n.where() == "p.yaml:1:1: ");
  CHECK(n.where("flag") == "p.yaml:6:1: ");
  CHECK(n.where("absent") == "p.yaml:1:1: ");
  CHECK(n.error_at("sub", "oops").message == "p.yaml:8:1: oops");
  CHECK(n.error("oops").code == -EINVAL);

  CHECK(*n.get_int("port", 0, 0, 65535) == 8080);
  CHECK(*n.get_int("neg", 0, -10, 10) == -3);
  CHECK(*n.get_int("absent", 42, 0, 100) == 42);
  CHECK(
      n.get_int("big", 0, 0, 65535).error().message ==
      "p.yaml:3:6: 'big' in 'http' settings of fileset 'docs' must be an integer from 0 to 65535");
  CHECK_FALSE(n.get_int("word", 0, 0, 65535).ok());
  CHECK_FALSE(n.get_int("quoted", 0, 0, 65535).ok());
  CHECK(n.get_int("list", 0, 0, 9).error().message ==
        "p.yaml:7:7: 'list' in 'http' settings of fileset 'docs' must be an integer from 0 to 9, "
        "not a list");

  CHECK(*n.get_bool("flag", true) == false);
  CHECK(*n.get_bool("absent", true) == true);
  CHECK(n.get_bool("word", false).error().message ==
        "p.yaml:4:7: 'word' in 'http' settings of fileset 'docs' must be true or false");

  CHECK(*n.get_string("quoted") == "12");
  CHECK(*n.get_string("absent", "dflt") == "dflt");
  CHECK(n.get_string("sub").error().message ==
        "p.yaml:9:3: 'sub' in 'http' settings of fileset 'docs' must be a string, not a mapping");

  ConfigNode sub = n.child("sub", "sub of http");
  CHECK(sub.defined());
  CHECK(sub.where() == "p.yaml:9:3: ");
  CHECK(sub.expect_map({"x"}).ok());
  CHECK(sub.expect_map({"y"}).error().message == "p.yaml:9:3: unknown key 'x' in sub of http");
  CHECK(n.child("list", "list").expect_map({}).error().message ==
        "p.yaml:7:7: list must be a mapping, not a list");

  ConfigNode absent = n.child("nothing", "nothing");
  CHECK_FALSE(absent.defined());
  CHECK_FALSE(absent.has("x"));
  CHECK(absent.expect_map({"x"}).ok());
  CHECK(*absent.get_int("x", 7, 0, 9) == 7);
  CHECK(absent.get_string("x").error().message == "p.yaml:1:1: missing key 'x' in nothing");

  // Getters on a scalar report that a mapping was expected instead of
  // throwing, as YAML::Node::operator[] would.
  ConfigNode scalar = n.child("port", "port");
  CHECK(scalar.get_string("x").error().message ==
        "p.yaml:1:7: port must be a mapping, not a scalar");
  CHECK_FALSE(scalar.get_bool("x", false).ok());

  ConfigNode empty;
  CHECK_FALSE(empty.defined());
  CHECK(empty.where().empty());
}

TEST_CASE("parse_host_port", "[config]") {
  using P = std::pair<std::string, uint16_t>;
  CHECK(*parse_host_port("example.org:80", 370) == P{"example.org", 80});
  CHECK(*parse_host_port("example.org", 370) == P{"example.org", 370});
  CHECK(*parse_host_port("127.0.0.1:0", 370) == P{"127.0.0.1", 0});
  CHECK(*parse_host_port("0.0.0.0:65535", 370) == P{"0.0.0.0", 65535});
  CHECK(*parse_host_port("[::1]:8080", 370) == P{"::1", 8080});
  CHECK(*parse_host_port("[::]", 370) == P{"::", 370});
  CHECK(*parse_host_port("[::]:0", 370) == P{"::", 0});
  CHECK(*parse_host_port("[fe80::1%eth0]:370", 1) == P{"fe80::1%eth0", 370});
  CHECK(*parse_host_port("my_host-1.lan:22", 370) == P{"my_host-1.lan", 22});

  CHECK_FALSE(parse_host_port("", 370).ok());
  CHECK_FALSE(parse_host_port("host:", 370).ok());
  CHECK_FALSE(parse_host_port(":370", 370).ok());
  CHECK_FALSE(parse_host_port("host:65536", 370).ok());
  CHECK_FALSE(parse_host_port("host:99999999999", 370).ok());
  CHECK_FALSE(parse_host_port("host:-1", 370).ok());
  CHECK_FALSE(parse_host_port("host:+80", 370).ok());
  CHECK_FALSE(parse_host_port("host:yes", 370).ok());
  CHECK_FALSE(parse_host_port("host name:80", 370).ok());
  CHECK_FALSE(parse_host_port("370", 370).ok());
  CHECK_FALSE(parse_host_port("[::1", 370).ok());
  CHECK_FALSE(parse_host_port("[::1]80", 370).ok());
  CHECK_FALSE(parse_host_port("[]:80", 370).ok());
  CHECK_FALSE(parse_host_port("[example.org]:80", 370).ok());
  CHECK_THAT(parse_host_port("::1", 370).error().message, Contains("[::1]:370"));
  CHECK(parse_host_port("h:yes", 370).error().message ==
        "port 'yes' must be a number from 0 to 65535");
}

TEST_CASE("role and conflict policy names", "[config]") {
  CHECK(std::string(intersync::role_name(Role::Server)) == "server");
  CHECK(std::string(intersync::role_name(Role::Client)) == "client");
  CHECK(std::string(intersync::conflict_policy_name(ConflictPolicy::ServerWins)) == "server-wins");
  CHECK(std::string(intersync::conflict_policy_name(ConflictPolicy::ClientWins)) == "client-wins");
  CHECK(std::string(intersync::conflict_policy_name(ConflictPolicy::NewestWins)) == "newest-wins");
  CHECK(std::string(intersync::conflict_policy_name(ConflictPolicy::KeepBoth)) == "keep-both");
}

TEST_CASE("the example configurations in etc/ load as shipped", "[config]") {
  std::string etc = std::string(INTERSYNC_SOURCE_ROOT) + "/etc/";
  auto server = load_config(etc + "intersync-server.yaml");
  INFO((server.ok() ? std::string() : server.error().message));
  REQUIRE(server.ok());
  REQUIRE_FALSE(server->filesets.empty());
  CHECK(server->filesets[0].role == Role::Server);

  auto client = load_config(etc + "intersync-client.yaml");
  INFO((client.ok() ? std::string() : client.error().message));
  REQUIRE(client.ok());
  REQUIRE_FALSE(client->filesets.empty());
  const auto& c = client->filesets[0];
  CHECK(c.role == Role::Client);
  CHECK(c.token_file == etc + "example.token");

  // The server example must accept the client example's token.
  const auto& s = server->filesets[0];
  REQUIRE_FALSE(s.clients.empty());
  CHECK(s.name == c.name);
  CHECK(c.token == "EXAMPLE-TOKEN-not-a-secret-replace-me-0123456789");
  CHECK(s.clients[0].token_sha256 == sha256_hex(c.token));
}
