// Tests of the clean-up of abandoned uploads: only `up-*` files untouched
// for longer than the age go, complete or partial; fresh uploads, the
// client's own staging and downloads stay; a missing directory is an error
// naming it.
#include <fcntl.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <string>

#include "temp_dir.h"
#include "upload_staging.h"

namespace {

namespace fs = std::filesystem;
using intersync::kAbandonedUploadAge;
using intersync::remove_abandoned_uploads;

// Writes `bytes` bytes to dir/name, last modified `age_s` seconds ago.
void staged(const std::string& dir, const std::string& name, size_t bytes, time_t age_s) {
  std::string path = dir + "/" + name;
  std::ofstream(path) << std::string(bytes, 'x');
  struct timespec times[2] = {{time(nullptr) - age_s, 0}, {time(nullptr) - age_s, 0}};
  REQUIRE(utimensat(AT_FDCWD, path.c_str(), times, 0) == 0);
}

}  // namespace

TEST_CASE("uploads untouched for longer than the age are removed, nothing else") {
  TempDir tmp;
  const time_t day = 24 * 3600;
  staged(tmp.path(), "up-aaaa", 100, day + 60);     // complete, abandoned
  staged(tmp.path(), "up-bbbb.part", 30, 3 * day);  // partial, abandoned
  staged(tmp.path(), "up-cccc", 7, 60);             // complete, recent
  staged(tmp.path(), "up-dddd.part", 5, day - 60);  // partial, still within a day
  staged(tmp.path(), "w-eeee", 9, 3 * day);         // not an upload
  staged(tmp.path(), "0123abcd.part", 9, 3 * day);  // a download being resumed

  auto removed = remove_abandoned_uploads(tmp.path(), kAbandonedUploadAge);
  REQUIRE(removed.ok());
  CHECK(removed->files == 2);
  CHECK(removed->bytes == 130);
  CHECK_FALSE(fs::exists(tmp.path() + "/up-aaaa"));
  CHECK_FALSE(fs::exists(tmp.path() + "/up-bbbb.part"));
  for (const char* kept : {"up-cccc", "up-dddd.part", "w-eeee", "0123abcd.part"}) {
    INFO(kept);
    CHECK(fs::exists(tmp.path() + "/" + kept));
  }

  auto again = remove_abandoned_uploads(tmp.path(), kAbandonedUploadAge);
  REQUIRE(again.ok());
  CHECK(again->files == 0);
}

TEST_CASE("a staging directory that cannot be read is an error naming it") {
  TempDir tmp;
  auto removed = remove_abandoned_uploads(tmp.path() + "/missing", kAbandonedUploadAge);
  REQUIRE_FALSE(removed.ok());
  CHECK(removed.error().message.find(tmp.path() + "/missing") != std::string::npos);
}
