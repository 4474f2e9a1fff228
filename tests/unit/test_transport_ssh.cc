// Tests for the "ssh" transport plugin: its settings and the ssh command
// line word by word, and its connections (SshStream, SshConnector) with
// /bin/sh standing in for ssh, so that no sshd is needed here: a child that
// echoes, one that fails as ssh does, and one that answers an HTTP request
// through core's HTTP client. The real sshd is in tests/integration.
#include <signal.h>
#include <uv.h>

#include <catch2/catch.hpp>
#include <memory>
#include <string>
#include <vector>

#include "intersync/config_node.h"
#include "intersync/http_client.h"
#include "intersync/plugin.h"
#include "intersync/transport.h"
#include "ssh_command.h"
#include "ssh_stream.h"
#include "test_loop.h"

extern "C" const intersync_plugin_descriptor_t* intersync_plugin_descriptor(void);

using namespace intersync;
using namespace intersync::ssh;
using Words = std::vector<std::string>;

namespace {

// Writing to a child that exited fails with EPIPE where intersyncd runs,
// which ignores SIGPIPE; so must this test.
const bool kSigpipeIgnored = signal(SIGPIPE, SIG_IGN) != SIG_ERR;

ConfigNode node(const std::string& yaml, const std::string& file = "/etc/intersync/client.yaml") {
  return ConfigNode(YAML::Load(yaml), file, "'ssh' settings of fileset 'docs'");
}

ClientTarget target(std::string host, uint16_t port = kUnnamedPort, std::string user = "") {
  ClientTarget t;
  t.host = std::move(host);
  t.port = port;
  t.user = std::move(user);
  t.fileset = "docs";
  return t;
}

std::unique_ptr<Transport> make_transport() {
  const intersync_plugin_descriptor_t* descriptor = intersync_plugin_descriptor();
  REQUIRE(descriptor->abi_version == INTERSYNC_PLUGIN_ABI_VERSION);
  REQUIRE(std::string(descriptor->name) == "ssh");
  REQUIRE(descriptor->kind == INTERSYNC_PLUGIN_TRANSPORT);
  return std::unique_ptr<Transport>(static_cast<Transport*>(descriptor->create()));
}

// What a stream delivered.
struct Collected {
  std::string data;
  std::optional<Status> end;

  ByteStream::Events events() {
    return {.on_data = [this](std::string_view piece) { data.append(piece); },
            .on_end = [this](Status status) { end = std::move(status); }};
  }
};

// Child processes the loop still waits for: one is reaped only once it
// exited.
int children(TestLoop& loop) {
  int count = 0;
  uv_walk(
      loop.get(),
      [](uv_handle_t* handle, void* n) {
        if (handle->type == UV_PROCESS) ++*static_cast<int*>(n);
      },
      &count);
  return count;
}

std::shared_ptr<ByteStream> open_stream(TestLoop& loop, SshConnector& connector) {
  std::shared_ptr<ByteStream> stream;
  bool failed = false;
  auto attempt = connector.connect([&](Result<std::shared_ptr<ByteStream>> result) {
    if (result) {
      stream = *result;
    } else {
      failed = true;
    }
  });
  REQUIRE(attempt.ok());
  REQUIRE(loop.run_until([&] { return stream || failed; }));
  REQUIRE(stream);
  return stream;
}

}  // namespace

TEST_CASE("the ssh command line with the defaults") {
  CHECK(ssh_command_line(SshSettings(), target("fs.example.org")) ==
        Words{"ssh", "-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o",
              "ConnectTimeout=5", "--", "fs.example.org",
              "intersyncd --serve-stdio --fset docs -c /etc/intersync.yaml"});
  CHECK(ssh_endpoint(SshSettings(), target("fs.example.org")) == "fs.example.org");
}

TEST_CASE("the ssh command line with every setting") {
  auto settings =
      parse_ssh_settings(node("identity_file: keys/id_ed25519\n"
                              "known_hosts: /var/lib/intersync/known_hosts\n"
                              "remote_config: /srv/intersync config.yaml\n"
                              "remote_command: sudo -n /usr/sbin/intersyncd\n"
                              "options: [ServerAliveInterval=15, Compression=yes]\n"));
  if (!settings) FAIL(settings.error().message);
  ClientTarget t = target("127.0.0.1", 2222, "sync");
  t.connect_timeout_ms = 2500;
  CHECK(ssh_command_line(*settings, t) ==
        Words{"ssh",
              "-T",
              "-o",
              "BatchMode=yes",
              "-p",
              "2222",
              "-i",
              "/etc/intersync/keys/id_ed25519",
              "-o",
              "IdentitiesOnly=yes",
              "-o",
              "UserKnownHostsFile=/var/lib/intersync/known_hosts",
              "-o",
              "StrictHostKeyChecking=yes",
              "-o",
              "ServerAliveInterval=15",
              "-o",
              "Compression=yes",
              "-o",
              "ConnectTimeout=3",
              "--",
              "sync@127.0.0.1",
              "sudo -n /usr/sbin/intersyncd --serve-stdio --fset docs -c '/srv/intersync "
              "config.yaml'"});
  CHECK(ssh_endpoint(*settings, t) == "sync@127.0.0.1:2222");
}

TEST_CASE("the ssh port: the setting, else the server's unless unnamed") {
  SshSettings settings;
  CHECK_FALSE(ssh_port(settings, target("h")));
  CHECK(ssh_port(settings, target("h", 2222)) == 2222);
  settings.port = 22;
  CHECK(ssh_port(settings, target("h", 2222)) == 22);
  // An IPv6 server loses its brackets for ssh and keeps them in messages.
  ClientTarget v6 = target("[::1]", 2222, "root");
  Words argv = ssh_command_line(SshSettings(), v6);
  CHECK(argv[argv.size() - 2] == "root@::1");
  CHECK(ssh_endpoint(SshSettings(), v6) == "root@[::1]:2222");
}

TEST_CASE("words for the remote shell are quoted") {
  CHECK(shell_quote("docs") == "docs");
  CHECK(shell_quote("/etc/intersync.yaml") == "/etc/intersync.yaml");
  CHECK(shell_quote("") == "''");
  CHECK(shell_quote("a b") == "'a b'");
  CHECK(shell_quote("it's") == "'it'\\''s'");
  CHECK(shell_quote("$(reboot)") == "'$(reboot)'");
}

TEST_CASE("ssh settings are checked") {
  auto error_of = [](const std::string& yaml) {
    auto settings = parse_ssh_settings(node(yaml));
    REQUIRE_FALSE(settings.ok());
    return settings.error().message;
  };
  CHECK(error_of("identity: x").find("unknown key 'identity'") != std::string::npos);
  CHECK(error_of("port: 0").find("1 to 65535") != std::string::npos);
  CHECK(error_of("options: ServerAliveInterval=15").find("must be a list") != std::string::npos);
  CHECK(error_of("options: [-oProxyCommand=x]").find("as -o takes it") != std::string::npos);
  CHECK(error_of("remote_command: ''").find("one non-empty line") != std::string::npos);
  CHECK(error_of("port: 22\nport: 23").find("appears twice") != std::string::npos);
  CHECK(error_of("identity: x").find("/etc/intersync/client.yaml:1:1: ") == 0);
  auto defaults = parse_ssh_settings(ConfigNode());
  REQUIRE(defaults.ok());
  CHECK(defaults->remote_config == "/etc/intersync.yaml");
  CHECK(defaults->remote_command == "intersyncd");

  auto transport = make_transport();
  CHECK(transport->configure(ConfigNode()).ok());
  CHECK_FALSE(transport->configure(node("port: 70000")).ok());
}

TEST_CASE("the ssh transport does not listen") {
  TestLoop loop;
  auto transport = make_transport();
  auto bound = transport->listen(loop.get(), "0.0.0.0", 370, nullptr);
  REQUIRE_FALSE(bound.ok());
  CHECK(bound.error().message.find("client-only") != std::string::npos);
  CHECK(bound.error().message.find("--serve-stdio") != std::string::npos);
}

TEST_CASE("an ssh child is a byte stream both ways") {
  TestLoop loop;
  SshConnector connector(loop.get(), {"/bin/sh", "-c", "cat"}, "test@host");
  auto stream = open_stream(loop, connector);
  CHECK(stream->peer() == "ssh test@host");
  Collected got;
  REQUIRE(stream->read_start(got.events()) == 0);
  int written = 1;
  REQUIRE(stream->write(std::string(300000, 'x'), [&](int status) { written = status; }) == 0);
  REQUIRE(loop.run_until([&] { return got.data.size() == 300000; }));
  CHECK(written == 0);
  // Pausing stops delivery; what cat sends meanwhile waits in the pipe.
  stream->read_stop();
  REQUIRE(stream->write("more", nullptr) == 0);
  REQUIRE(stream->shutdown(nullptr) == 0);
  bool waited = false;
  loop.after(100, [&] { waited = true; });
  REQUIRE(loop.run_until([&] { return waited; }));
  CHECK(got.data.size() == 300000);
  REQUIRE(stream->read_resume() == 0);
  // cat ends when its stdin does, and exits 0: an orderly end.
  REQUIRE(loop.run_until([&] { return got.end.has_value(); }));
  CHECK(got.end->ok());
  CHECK(got.data.size() == 300004);
  stream->close();
}

TEST_CASE("an ssh that fails ends the stream with its last words") {
  TestLoop loop;
  SshConnector connector(
      loop.get(),
      {"/bin/sh", "-c",
       "echo 'Warning: something' >&2; echo 'root@127.0.0.1: Permission denied (publickey).' >&2; "
       "exit 255"},
      "root@127.0.0.1:2222");
  auto stream = open_stream(loop, connector);
  Collected got;
  REQUIRE(stream->read_start(got.events()) == 0);
  REQUIRE(loop.run_until([&] { return got.end.has_value(); }));
  REQUIRE_FALSE(got.end->ok());
  CHECK(got.end->error().message ==
        "ssh exited with status 255: root@127.0.0.1: Permission denied (publickey).");
}

TEST_CASE("a closed ssh stream terminates its child") {
  TestLoop loop;
  SshConnector connector(loop.get(), {"/bin/sh", "-c", "exec sleep 600"}, "host");
  auto stream = open_stream(loop, connector);
  Collected got;
  REQUIRE(stream->read_start(got.events()) == 0);
  stream->close();
  stream.reset();
  CHECK(children(loop) == 1);
  REQUIRE(loop.run_until([&] { return children(loop) == 0; }));
  CHECK_FALSE(got.end);
}

TEST_CASE("ssh that cannot start is reported at once") {
  TestLoop loop;
  SshConnector connector(loop.get(), {"/nonexistent/ssh"}, "host");
  bool called = false;
  auto attempt = connector.connect([&](Result<std::shared_ptr<ByteStream>>) { called = true; });
  REQUIRE_FALSE(attempt.ok());
  CHECK(attempt.error().message.find("cannot start /nonexistent/ssh") != std::string::npos);
  CHECK_FALSE(called);
}

TEST_CASE("core's HTTP client runs over ssh children") {
  REQUIRE(kSigpipeIgnored);
  TestLoop loop;
  // One request per child: the stand-in answers and exits, as a relay does
  // when the daemon closes.
  const char* script =
      "while IFS= read -r line; do [ \"$line\" = \"$(printf '\\r')\" ] && break; done; "
      "printf 'HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\nConnection: close\\r\\n\\r\\nhello'";
  auto connector =
      std::make_shared<SshConnector>(loop.get(), Words{"/bin/sh", "-c", script}, "test@host");
  ClientTarget t = target("127.0.0.1");
  HttpClientSession session(loop.get(), t, connector);
  for (int i = 0; i < 2; ++i) {
    std::string body;
    std::optional<Status> done;
    HttpRequestHead head;
    head.method = "GET";
    head.target = "/cgi-bin/intersync/docs/info";
    session.send(head, "",
                 {.on_body = [&](std::string_view piece) { body.append(piece); },
                  .on_done = [&](Status status) { done = std::move(status); }});
    REQUIRE(loop.run_until([&] { return done.has_value(); }));
    INFO(done->error().message);
    CHECK(done->ok());
    CHECK(body == "hello");
  }

  // A child that dies is a lost connection, named as ssh's.
  auto dying = std::make_shared<SshConnector>(
      loop.get(),
      Words{"/bin/sh", "-c",
            "echo 'ssh: connect to host h port 22: Connection refused' "
            ">&2; exit 255"},
      "h");
  HttpClientSession lost(loop.get(), t, dying);
  std::optional<Status> done;
  HttpRequestHead head;
  head.method = "GET";
  head.target = "/";
  lost.send(head, "", {.on_done = [&](Status status) { done = std::move(status); }});
  REQUIRE(loop.run_until([&] { return done.has_value(); }));
  REQUIRE_FALSE(done->ok());
  CHECK(done->error().message ==
        "ssh: lost the connection to h: ssh exited with status 255: ssh: connect to host h port "
        "22: Connection refused");
  session.close();
  lost.close();
  REQUIRE(loop.run_until([&] { return children(loop) == 0; }));
}
