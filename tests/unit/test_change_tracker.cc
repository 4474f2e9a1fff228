// Tests of the change tracker on a real directory and loop: what it
// journals when the events of quick successive renames and removals reach
// it one by one, each after the disk has already moved on (as inotify
// delivers them on a busy machine). A rename must stay a rename, so that no
// content travels again.
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "change_tracker.h"
#include "temp_dir.h"
#include "test_loop.h"

namespace {

namespace fs = std::filesystem;
using namespace intersync;

// A server fileset: root, index, journal and the tracker over them.
struct Fixture {
  TempDir tmp;
  std::string root = tmp.path() + "/root";
  TestLoop loop;
  SafeRoot safe;
  FileIndex index;
  Journal journal;
  std::unique_ptr<ChangeTracker> tracker;
  uint32_t mark = 0;

  Fixture() {
    fs::create_directory(root);
    REQUIRE(safe.open(root).ok());
    REQUIRE(index.open(tmp.path() + "/index.db").ok());
    REQUIRE(journal.open(tmp.path() + "/kml").ok());
    tracker =
        std::make_unique<ChangeTracker>(loop.get(), ChangeTracker::Options{"docs"}, safe, index,
                                        journal, [](std::string_view, bool) { return false; });
  }

  void write(const std::string& rel, size_t bytes) {
    std::ofstream(root + "/" + rel, std::ios::binary) << std::string(bytes, 'x');
  }
  void settle() {
    REQUIRE(loop.run_until([&] { return tracker->idle(); }));
  }
  // The tree as it is now, journaled from a start-up rescan; later calls of
  // journaled() return only what came after.
  void start() {
    tracker->rescan("", "test start");
    settle();
    mark = journal.head();
  }
  void event(ChangeEvent::Kind kind, const std::string& path, const std::string& to = {}) {
    ChangeEvent ev;
    ev.kind = kind;
    ev.path = path;
    ev.to_path = to;
    tracker->add_events({ev});
  }
  // Lets the tracker handle what it was given, but not wait out any delay.
  void handle_queued() { uv_run(loop.get(), UV_RUN_NOWAIT); }
  std::vector<std::string> journaled() {
    auto recs = journal.records_after(mark);
    REQUIRE(recs.ok());
    std::vector<std::string> out;
    for (const auto& r : *recs) {
      std::string what = kml_op_name(r.opcode);
      if (r.opcode == KmlOp::Rename) {
        what += " " + r.src + " " + r.target;
      } else if (r.opcode == KmlOp::Unlink || r.opcode == KmlOp::Rmdir) {
        what += " " + join_rel(r.dir, r.name);
      } else {
        what += " " + r.path;
      }
      out.push_back(what);
    }
    return out;
  }
};

// big/data.bin journaled, then renamed to big/renamed.bin and big to moved,
// before the tracker hears of either.
void rename_file_then_its_directory(Fixture& f) {
  fs::create_directory(f.root + "/big");
  f.write("big/data.bin", 1 << 20);
  f.start();
  fs::rename(f.root + "/big/data.bin", f.root + "/big/renamed.bin");
  fs::rename(f.root + "/big", f.root + "/moved");
}

TEST_CASE("a file renamed, then its directory, each event seen after both moves") {
  Fixture f;
  rename_file_then_its_directory(f);

  f.event(ChangeEvent::Kind::Renamed, "big/data.bin", "big/renamed.bin");
  f.handle_queued();
  // Its new name is gone already (the directory moved on), yet the rename is
  // what happened.
  CHECK(f.journaled() == std::vector<std::string>{"RENAME big/data.bin big/renamed.bin"});

  f.event(ChangeEvent::Kind::Renamed, "big", "moved");
  f.settle();
  CHECK(f.journaled() ==
        std::vector<std::string>{"RENAME big/data.bin big/renamed.bin", "RENAME big moved"});
  REQUIRE(f.index.find("moved/renamed.bin") != nullptr);
  CHECK(f.index.find("big/data.bin") == nullptr);
  CHECK(f.index.find("big") == nullptr);
}

TEST_CASE("the same two renames reported together") {
  Fixture f;
  rename_file_then_its_directory(f);
  ChangeEvent first, second;
  first.kind = second.kind = ChangeEvent::Kind::Renamed;
  first.path = "big/data.bin";
  first.to_path = "big/renamed.bin";
  second.path = "big";
  second.to_path = "moved";
  f.tracker->add_events({first, second});
  f.settle();
  CHECK(f.journaled() ==
        std::vector<std::string>{"RENAME big/data.bin big/renamed.bin", "RENAME big moved"});
}

TEST_CASE("a file renamed and then removed with its directory") {
  Fixture f;
  fs::create_directory(f.root + "/big");
  f.write("big/data.bin", 4096);
  f.start();
  fs::rename(f.root + "/big/data.bin", f.root + "/big/renamed.bin");
  fs::remove_all(f.root + "/big");

  f.event(ChangeEvent::Kind::Renamed, "big/data.bin", "big/renamed.bin");
  f.handle_queued();
  f.event(ChangeEvent::Kind::Deleted, "big/renamed.bin");
  f.event(ChangeEvent::Kind::Deleted, "big");
  f.settle();
  CHECK(f.journaled() == std::vector<std::string>{"RENAME big/data.bin big/renamed.bin",
                                                  "UNLINK big/renamed.bin", "RMDIR big"});
  CHECK(f.index.find("big") == nullptr);
  CHECK(f.index.find("big/renamed.bin") == nullptr);
}

TEST_CASE("a file renamed away and back before either event is seen") {
  Fixture f;
  f.write("a.txt", 100);
  f.start();
  fs::rename(f.root + "/a.txt", f.root + "/b.txt");
  fs::rename(f.root + "/b.txt", f.root + "/a.txt");

  f.event(ChangeEvent::Kind::Renamed, "a.txt", "b.txt");
  f.handle_queued();
  f.event(ChangeEvent::Kind::Renamed, "b.txt", "a.txt");
  f.settle();
  CHECK(f.journaled() == std::vector<std::string>{"RENAME a.txt b.txt", "RENAME b.txt a.txt"});
  CHECK(f.index.find("a.txt") != nullptr);
  CHECK(f.index.find("b.txt") == nullptr);
}

TEST_CASE("a rename from an unknown name is journaled as what the disk holds") {
  Fixture f;
  f.start();
  f.write("new.txt", 100);
  f.event(ChangeEvent::Kind::Renamed, "never-seen.txt", "new.txt");
  f.settle();
  CHECK(f.journaled() ==
        std::vector<std::string>{"CREATE new.txt", "CLOSE new.txt", "CONTENT new.txt"});
}

}  // namespace
