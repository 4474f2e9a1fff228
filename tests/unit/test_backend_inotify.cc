// Tests of the inotify backend against the real kernel: each test builds a
// tree in a temporary directory, runs the backend (created through its
// plugin descriptor, as the daemon does) on a real uv loop, and checks what
// a fake BackendHost records. Waiting is always on a condition with a
// deadline, never a fixed sleep; to show that something did NOT happen, a
// test makes a later sentinel change and waits for that, since inotify
// delivers events in order.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "intersync/backend.h"
#include "intersync/config_node.h"
#include "intersync/plugin.h"

extern "C" const intersync_plugin_descriptor_t* intersync_plugin_descriptor(void);

namespace {

namespace fs = std::filesystem;
using intersync::ChangeEvent;
using Kind = ChangeEvent::Kind;

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::Created:
      return "Created";
    case Kind::Modified:
      return "Modified";
    case Kind::Closed:
      return "Closed";
    case Kind::Attrib:
      return "Attrib";
    case Kind::Deleted:
      return "Deleted";
    case Kind::Renamed:
      return "Renamed";
  }
  return "?";
}

// Records what the backend reports. Like core, it ignores .intermezzo/.
class FakeHost final : public intersync::BackendHost {
 public:
  void on_changes(std::vector<ChangeEvent>&& batch) override {
    batches.push_back(batch.size());
    for (ChangeEvent& event : batch) events.push_back(std::move(event));
    if (after_batch) after_batch();
  }
  void on_rescan(const std::string& rel_dir, const std::string& reason) override {
    rescans.emplace_back(rel_dir, reason);
  }
  bool ignored(std::string_view rel, bool /*is_dir*/) const override {
    return rel == ".intermezzo" || rel.starts_with(".intermezzo/");
  }
  void when_durable(std::function<void()> done) override { done(); }

  const ChangeEvent* find(Kind kind, std::string_view path) const {
    for (const ChangeEvent& event : events) {
      if (event.kind == kind && event.path == path) return &event;
    }
    return nullptr;
  }
  bool has(Kind kind, std::string_view path) const { return find(kind, path) != nullptr; }
  size_t count(Kind kind, std::string_view path) const {
    size_t n = 0;
    for (const ChangeEvent& event : events) n += event.kind == kind && event.path == path;
    return n;
  }
  std::optional<size_t> index_of(Kind kind, std::string_view path) const {
    for (size_t i = 0; i < events.size(); ++i) {
      if (events[i].kind == kind && events[i].path == path) return i;
    }
    return std::nullopt;
  }
  bool mentions(std::string_view prefix) const {
    for (const ChangeEvent& event : events) {
      if (event.path.starts_with(prefix) || event.to_path.starts_with(prefix)) return true;
    }
    return false;
  }
  size_t rescans_of(std::string_view dir) const {
    size_t n = 0;
    for (const auto& rescan : rescans) n += rescan.first == dir;
    return n;
  }
  // Everything recorded, for the message of a failed check.
  std::string dump() const {
    std::string out;
    for (const ChangeEvent& event : events) {
      out += std::string(kind_name(event.kind)) + " '" + event.path + "'";
      if (event.kind == Kind::Renamed) out += " -> '" + event.to_path + "'";
      out += event.is_dir ? " dir\n" : "\n";
    }
    for (const auto& [dir, reason] : rescans) out += "rescan '" + dir + "': " + reason + "\n";
    return out;
  }

  // Runs after each batch is recorded, as core's reaction would.
  std::function<void()> after_batch;
  std::vector<ChangeEvent> events;
  std::vector<size_t> batches;
  std::vector<std::pair<std::string, std::string>> rescans;
};

void write_file(const fs::path& path, std::string_view data = "data\n") {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  REQUIRE(fd >= 0);
  REQUIRE(::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()));
  REQUIRE(::close(fd) == 0);
}

void rename_path(const fs::path& from, const fs::path& to) {
  INFO(from << " -> " << to << ": " << std::strerror(errno));
  REQUIRE(::rename(from.c_str(), to.c_str()) == 0);
}

// Sets a value under /proc/sys/fs/inotify for the guard's lifetime and puts
// the old one back when it ends, also when a failed REQUIRE unwinds the
// test: these limits are shared by every process of the user.
class SysctlGuard {
 public:
  explicit SysctlGuard(const std::string& name) : path_("/proc/sys/fs/inotify/" + name) {
    std::ifstream in(path_);
    in >> old_;
  }
  ~SysctlGuard() { restore(); }
  SysctlGuard(const SysctlGuard&) = delete;
  SysctlGuard& operator=(const SysctlGuard&) = delete;

  // Returns why the value cannot be set, or "" once it is.
  std::string set(const std::string& value) {
    if (old_.empty()) return path_ + " cannot be read";
    if (!write(value)) return path_ + " is not writable: " + std::strerror(errno);
    changed_ = true;
    return "";
  }
  void restore() {
    if (changed_) write(old_);
    changed_ = false;
  }

 private:
  bool write(const std::string& value) const {
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return false;
    const bool ok = ::write(fd, value.data(), value.size()) == static_cast<ssize_t>(value.size());
    ::close(fd);
    return ok;
  }

  std::string path_;
  std::string old_;
  bool changed_ = false;
};

// A fileset root and an "outside" directory next to it, a loop, the
// backend and the fake host. The destructor stops the backend and runs the
// loop until its handles are closed and freed.
class Fixture {
 public:
  Fixture() {
    char base[] = "/tmp/intersync-inotify-XXXXXX";
    REQUIRE(mkdtemp(base) != nullptr);
    base_ = base;
    fs::create_directory(root());
    fs::create_directory(outside());
    REQUIRE(uv_loop_init(&loop_) == 0);
    const intersync_plugin_descriptor_t* descriptor = intersync_plugin_descriptor();
    REQUIRE(std::string(descriptor->name) == "inotify");
    REQUIRE(descriptor->kind == INTERSYNC_PLUGIN_BACKEND);
    backend_.reset(static_cast<intersync::Backend*>(descriptor->create()));
    REQUIRE(backend_ != nullptr);
  }
  ~Fixture() {
    if (backend_) backend_->stop();
    backend_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
    std::error_code ec;
    fs::remove_all(base_, ec);
  }
  Fixture(const Fixture&) = delete;
  Fixture& operator=(const Fixture&) = delete;

  fs::path root() const { return base_ / "root"; }
  fs::path outside() const { return base_ / "outside"; }
  fs::path at(const std::string& rel) const { return root() / rel; }
  uv_loop_t* loop() { return &loop_; }
  intersync::Backend& backend() { return *backend_; }
  void destroy_backend() { backend_.reset(); }

  void start(const std::string& yaml = "") {
    intersync::ConfigNode node;
    if (!yaml.empty()) node = intersync::ConfigNode(YAML::Load(yaml), "test.yaml", "'inotify'");
    intersync::Status configured = backend_->configure(node);
    INFO(configured.error().message);
    REQUIRE(configured.ok());
    intersync::Status started = backend_->start(&loop_, root().string(), &host);
    INFO(started.error().message);
    REQUIRE(started.ok());
  }

  // Runs the loop until `done` holds or `timeout_ms` passes.
  bool wait_for(const std::function<bool()>& done, uint64_t timeout_ms = 5000) {
    bool expired = false;
    uv_timer_t deadline;
    uv_timer_init(&loop_, &deadline);
    deadline.data = &expired;
    uv_timer_start(
        &deadline, [](uv_timer_t* t) { *static_cast<bool*>(t->data) = true; }, timeout_ms, 0);
    while (!done() && !expired) uv_run(&loop_, UV_RUN_ONCE);
    uv_close(reinterpret_cast<uv_handle_t*>(&deadline), nullptr);
    // One more iteration finishes closing the timer, which lives on this
    // stack frame.
    uv_run(&loop_, UV_RUN_NOWAIT);
    return done();
  }

  // Creates a file and waits until it is reported: everything done before
  // has been reported by then.
  void sync_with(const std::string& sentinel) {
    write_file(at(sentinel));
    INFO(host.dump());
    REQUIRE(wait_for([&] { return host.has(Kind::Closed, sentinel); }));
  }

  FakeHost host;

 private:
  fs::path base_;
  uv_loop_t loop_;
  std::unique_ptr<intersync::Backend> backend_;
};

}  // namespace

TEST_CASE("inotify: configure takes rescan_interval and rejects anything else", "[inotify]") {
  Fixture f;
  auto configure = [&](const std::string& yaml) {
    return f.backend().configure(
        intersync::ConfigNode(YAML::Load(yaml), "test.yaml", "'inotify' settings"));
  };
  CHECK(f.backend().configure(intersync::ConfigNode()).ok());
  CHECK(configure("rescan_interval: 1").ok());
  CHECK(configure("rescan_interval: 86400").ok());

  intersync::Status zero = configure("rescan_interval: 0");
  CHECK_FALSE(zero.ok());
  CHECK(zero.error().message.find("test.yaml:1:") != std::string::npos);
  CHECK_FALSE(configure("rescan_interval: 86401").ok());
  CHECK_FALSE(configure("rescan_interval: soon").ok());

  intersync::Status unknown = configure("rescan_interval: 5\nrescan_intervall: 5");
  CHECK_FALSE(unknown.ok());
  CHECK(unknown.error().message.find("test.yaml:2:1:") != std::string::npos);
  CHECK(unknown.error().message.find("rescan_intervall") != std::string::npos);
}

TEST_CASE("inotify: start refuses a relative or missing root", "[inotify]") {
  Fixture f;
  CHECK_FALSE(f.backend().start(f.loop(), "relative/root", &f.host).ok());
  intersync::Status missing = f.backend().start(f.loop(), (f.root() / "nope").string(), &f.host);
  CHECK_FALSE(missing.ok());
  CHECK(missing.error().code == -ENOENT);
}

TEST_CASE("inotify: create, write and close are reported in order, one batch per read",
          "[inotify]") {
  Fixture f;
  f.start();
  // Written before the loop runs, so that all events wait in the queue and
  // one read() returns them together.
  for (int i = 0; i < 10; ++i) write_file(f.at("f" + std::to_string(i)), "hello\n");
  INFO(f.host.dump());
  REQUIRE(f.wait_for([&] { return f.host.has(Kind::Closed, "f9"); }));
  for (int i = 0; i < 10; ++i) {
    const std::string name = "f" + std::to_string(i);
    auto created = f.host.index_of(Kind::Created, name);
    auto modified = f.host.index_of(Kind::Modified, name);
    auto closed = f.host.index_of(Kind::Closed, name);
    REQUIRE(created);
    REQUIRE(modified);
    REQUIRE(closed);
    CHECK(*created < *modified);
    CHECK(*modified < *closed);
    CHECK_FALSE(f.host.find(Kind::Created, name)->is_dir);
  }
  REQUIRE(f.host.batches.size() == 1);
  CHECK(f.host.batches[0] == f.host.events.size());
}

TEST_CASE("inotify: files created in a new directory before its watch are all reported",
          "[inotify]") {
  Fixture f;
  f.start();
  // Everything happens before the backend sees the first IN_CREATE, so no
  // watch exists below "a" when these files are made.
  fs::create_directories(f.at("a/b/c"));
  write_file(f.at("a/b/c/f"));
  write_file(f.at("a/top"));
  for (int i = 0; i < 20; ++i) {
    const std::string dir = "many/d" + std::to_string(i);
    fs::create_directories(f.at(dir + "/sub"));
    write_file(f.at(dir + "/file"));
    write_file(f.at(dir + "/sub/file"));
  }
  auto all_there = [&] {
    if (!f.host.has(Kind::Created, "a/b/c/f") || !f.host.has(Kind::Created, "a/top")) return false;
    for (int i = 0; i < 20; ++i) {
      const std::string dir = "many/d" + std::to_string(i);
      if (!f.host.has(Kind::Created, dir + "/file") ||
          !f.host.has(Kind::Created, dir + "/sub/file"))
        return false;
    }
    return true;
  };
  INFO(f.host.dump());
  REQUIRE(f.wait_for(all_there));
  for (const char* dir : {"a", "a/b", "a/b/c", "many", "many/d7/sub"}) {
    const ChangeEvent* created = f.host.find(Kind::Created, dir);
    REQUIRE(created != nullptr);
    CHECK(created->is_dir);
  }
  // The new directories are watched from now on.
  write_file(f.at("a/b/c/later"));
  write_file(f.at("many/d19/sub/later"));
  REQUIRE(f.wait_for([&] {
    return f.host.has(Kind::Closed, "a/b/c/later") &&
           f.host.has(Kind::Closed, "many/d19/sub/later");
  }));
  for (const ChangeEvent& event : f.host.events) CHECK(event.path.front() != '/');
}

TEST_CASE("inotify: renaming a file is one Renamed event", "[inotify]") {
  Fixture f;
  fs::create_directory(f.at("dir"));
  write_file(f.at("old"));
  write_file(f.at("dir/inner"));
  f.start();
  rename_path(f.at("old"), f.at("new"));
  rename_path(f.at("dir/inner"), f.at("moved"));
  INFO(f.host.dump());
  REQUIRE(f.wait_for([&] { return f.host.count(Kind::Renamed, "dir/inner") == 1; }));
  const ChangeEvent* renamed = f.host.find(Kind::Renamed, "old");
  REQUIRE(renamed != nullptr);
  CHECK(renamed->to_path == "new");
  CHECK_FALSE(renamed->is_dir);
  CHECK(f.host.find(Kind::Renamed, "dir/inner")->to_path == "moved");
  CHECK(f.host.count(Kind::Renamed, "old") == 1);
  CHECK_FALSE(f.host.has(Kind::Deleted, "old"));
  CHECK_FALSE(f.host.has(Kind::Created, "new"));
  CHECK_FALSE(f.host.has(Kind::Deleted, "dir/inner"));
  CHECK_FALSE(f.host.has(Kind::Created, "moved"));
}

TEST_CASE("inotify: a renamed directory's content is reported under its new path", "[inotify]") {
  Fixture f;
  fs::create_directories(f.at("d/sub/deep"));
  f.start();
  rename_path(f.at("d"), f.at("e"));
  // Created before the backend has seen the rename: the watch on d/sub
  // reports it, and must already map to the new path.
  write_file(f.at("e/sub/x"));
  INFO(f.host.dump());
  REQUIRE(f.wait_for([&] { return f.host.has(Kind::Closed, "e/sub/x"); }));
  const ChangeEvent* renamed = f.host.find(Kind::Renamed, "d");
  REQUIRE(renamed != nullptr);
  CHECK(renamed->to_path == "e");
  CHECK(renamed->is_dir);
  CHECK(f.host.has(Kind::Created, "e/sub/x"));
  CHECK_FALSE(f.host.mentions("d/"));

  write_file(f.at("e/sub/deep/y"));
  REQUIRE(f.wait_for([&] { return f.host.has(Kind::Closed, "e/sub/deep/y"); }));
  CHECK_FALSE(f.host.mentions("d/"));
}

TEST_CASE("inotify: a directory renamed before its creation is handled is still watched",
          "[inotify]") {
  Fixture f;
  f.start();
  // By the time the backend handles IN_CREATE for "fresh", the name is
  // gone; the rename that follows is its first chance to watch it.
  fs::create_directory(f.at("fresh"));
  write_file(f.at("fresh/a"));
  rename_path(f.at("fresh"), f.at("moved"));
  INFO(f.host.dump());
  REQUIRE(f.wait_for([&] { return f.host.has(Kind::Created, "moved/a"); }));
  const ChangeEvent* renamed = f.host.find(Kind::Renamed, "fresh");
  REQUIRE(renamed != nullptr);
  CHECK(renamed->to_path == "moved");
  write_file(f.at("moved/b"));
  REQUIRE(f.wait_for([&] { return f.host.has(Kind::Closed, "moved/b"); }));
}

TEST_CASE("inotify: moving out of the fileset is Deleted and the moved tree goes quiet",
          "[inotify]") {
  Fixture f;
  write_file(f.at("file"));
  fs::create_directories(f.at("dir/sub"));
  f.start();
  rename_path(f.at("file"), f.outside() / "file");
  rename_path(f.at("dir"), f.outside() / "dir");
  INFO(f.host.dump());
  REQUIRE(f.wait_for(
      [&] { return f.host.has(Kind::Deleted, "file") && f.host.has(Kind::Deleted, "dir"); }));
  CHECK(f.host.find(Kind::Deleted, "dir")->is_dir);
  CHECK_FALSE(f.host.find(Kind::Deleted, "file")->is_dir);
  CHECK(f.host.count(Kind::Renamed, "file") == 0);

  // The moved directories are no longer watched.
  write_file(f.outside() / "dir/sub/stray");
  f.sync_with("sentinel");
  CHECK_FALSE(f.host.mentions("dir/"));
}

TEST_CASE("inotify: a directory moved in is reported with all of its content", "[inotify]") {
  Fixture f;
  f.start();
  fs::create_directories(f.outside() / "m/sub/deeper");
  write_file(f.outside() / "m/a");
  write_file(f.outside() / "m/sub/b");
  write_file(f.outside() / "m/sub/deeper/c");
  write_file(f.outside() / "single");
  rename_path(f.outside() / "m", f.at("m"));
  rename_path(f.outside() / "single", f.at("single"));
  auto all_there = [&] {
    for (const char* path :
         {"m", "m/a", "m/sub", "m/sub/b", "m/sub/deeper", "m/sub/deeper/c", "single"}) {
      if (!f.host.has(Kind::Created, path)) return false;
    }
    return true;
  };
  INFO(f.host.dump());
  REQUIRE(f.wait_for(all_there));
  CHECK(f.host.find(Kind::Created, "m")->is_dir);
  CHECK(f.host.find(Kind::Created, "m/sub/deeper")->is_dir);
  CHECK_FALSE(f.host.find(Kind::Created, "m/sub/deeper/c")->is_dir);

  write_file(f.at("m/sub/deeper/new"));
  REQUIRE(f.wait_for([&] { return f.host.has(Kind::Closed, "m/sub/deeper/new"); }));
}

TEST_CASE("inotify: deleting files and directories is Deleted", "[inotify]") {
  Fixture f;
  write_file(f.at("file"));
  fs::create_directories(f.at("dir/sub"));
  write_file(f.at("dir/sub/inner"));
  f.start();
  REQUIRE(::unlink(f.at("file").c_str()) == 0);
  fs::remove_all(f.at("dir"));
  INFO(f.host.dump());
  REQUIRE(f.wait_for([&] { return f.host.has(Kind::Deleted, "dir"); }));
  CHECK_FALSE(f.host.find(Kind::Deleted, "file")->is_dir);
  CHECK(f.host.has(Kind::Deleted, "dir/sub/inner"));
  CHECK(f.host.find(Kind::Deleted, "dir/sub")->is_dir);
  CHECK(f.host.find(Kind::Deleted, "dir")->is_dir);

  // A new directory of the same name is watched afresh.
  fs::create_directory(f.at("dir"));
  write_file(f.at("dir/again"));
  REQUIRE(f.wait_for([&] { return f.host.has(Kind::Created, "dir/again"); }));
}

TEST_CASE("inotify: chmod is Attrib", "[inotify]") {
  Fixture f;
  write_file(f.at("file"));
  fs::create_directory(f.at("dir"));
  f.start();
  REQUIRE(::chmod(f.at("file").c_str(), 0600) == 0);
  REQUIRE(::chmod(f.at("dir").c_str(), 0700) == 0);
  INFO(f.host.dump());
  REQUIRE(f.wait_for(
      [&] { return f.host.has(Kind::Attrib, "file") && f.host.has(Kind::Attrib, "dir"); }));
  CHECK(f.host.find(Kind::Attrib, "dir")->is_dir);
  // The directory's own watch reports the change too; it is reported once.
  f.sync_with("sentinel");
  CHECK(f.host.count(Kind::Attrib, "dir") == 1);
}

TEST_CASE("inotify: the ignored .intermezzo directory produces nothing", "[inotify]") {
  Fixture f;
  fs::create_directories(f.at(".intermezzo/docs"));
  f.start();
  write_file(f.at(".intermezzo/docs/kml"));
  fs::create_directories(f.at(".intermezzo/other/deep"));
  write_file(f.at(".intermezzo/other/deep/file"));
  REQUIRE(::chmod(f.at(".intermezzo").c_str(), 0700) == 0);
  // A file staged inside the ignored directory and renamed into the
  // fileset appears as created.
  write_file(f.at(".intermezzo/docs/staged"));
  rename_path(f.at(".intermezzo/docs/staged"), f.at("visible"));
  f.sync_with("sentinel");
  INFO(f.host.dump());
  CHECK_FALSE(f.host.mentions(".intermezzo"));
  CHECK(f.host.has(Kind::Created, "visible"));
}

TEST_CASE("inotify: a queue overflow asks for a rescan of everything", "[inotify]") {
  Fixture f;
  fs::create_directory(f.at("existing"));
  {
    // The queue length is taken from the sysctl when the instance is
    // created, so it is lowered around start() only.
    SysctlGuard queued("max_queued_events");
    const std::string why = queued.set("16");
    if (!why.empty()) {
      WARN("skipped: " << why);
      return;
    }
    f.start();
  }
  // The queue is full long before the directory changes below, whose
  // events are therefore lost.
  for (int i = 0; i < 100; ++i) write_file(f.at("f" + std::to_string(i)));
  fs::create_directory(f.at("made_during_overflow"));
  rename_path(f.at("existing"), f.at("renamed_during_overflow"));
  INFO(f.host.dump());
  REQUIRE(f.wait_for([&] { return f.host.rescans_of("") > 0; }));
  CHECK_FALSE(f.host.has(Kind::Created, "made_during_overflow"));
  CHECK_FALSE(f.host.has(Kind::Renamed, "existing"));
  // Watching the tree again after the overflow found the new directory
  // and the renamed one's new path.
  write_file(f.at("made_during_overflow/after"));
  write_file(f.at("renamed_during_overflow/after"));
  REQUIRE(f.wait_for([&] {
    return f.host.has(Kind::Closed, "made_during_overflow/after") &&
           f.host.has(Kind::Closed, "renamed_during_overflow/after");
  }));
  CHECK_FALSE(f.host.mentions("existing/"));
}

TEST_CASE("inotify: an unwatched directory is rescanned, periodically until it is watched",
          "[inotify]") {
  Fixture f;
  f.start("rescan_interval: 1");
  {
    // The limit applies to every process of the user, so it is kept low
    // only until the failure has happened. One watch (the root's) is in
    // use, so no new one fits.
    SysctlGuard watches("max_user_watches");
    const std::string why = watches.set("1");
    if (!why.empty()) {
      WARN("skipped: " << why);
      return;
    }
    fs::create_directory(f.at("w"));
    write_file(f.at("w/early"));
    INFO(f.host.dump());
    REQUIRE(f.wait_for([&] { return f.host.rescans_of("w") > 0; }));
    CHECK(f.host.has(Kind::Created, "w"));
  }
  // Within the interval the directory is retried, watched now that the
  // limit is back, and rescanned once more for what it missed meanwhile.
  INFO(f.host.dump());
  REQUIRE(f.wait_for([&] { return f.host.rescans_of("w") > 1; }, 5000));
  write_file(f.at("w/late"));
  REQUIRE(f.wait_for([&] { return f.host.has(Kind::Closed, "w/late"); }));
}

TEST_CASE("inotify: stop is idempotent and leaves no handle behind", "[inotify]") {
  Fixture f;
  f.start();
  write_file(f.at("unread"));
  f.backend().stop();
  f.backend().stop();
  f.destroy_backend();
  // The close callbacks run after the backend is gone.
  CHECK(uv_run(f.loop(), UV_RUN_DEFAULT) == 0);
  CHECK(uv_loop_alive(f.loop()) == 0);
  CHECK(f.host.events.empty());
}

TEST_CASE("inotify: the host may stop the backend from inside on_changes", "[inotify]") {
  Fixture f;
  f.start();
  f.host.after_batch = [&] { f.backend().stop(); };
  // Enough events for several reads, and a pending rename half at the end.
  for (int i = 0; i < 2000; ++i) write_file(f.at("f" + std::to_string(i)));
  write_file(f.at("last"));
  rename_path(f.at("last"), f.outside() / "last");
  REQUIRE(f.wait_for([&] { return !f.host.batches.empty(); }));
  CHECK(f.host.batches.size() == 1);
  f.destroy_backend();
  CHECK(uv_run(f.loop(), UV_RUN_DEFAULT) == 0);
}
