// mkizofs: prepares a directory to hold an InterMezzo fileset. It creates
// DIR/.intermezzo/FSET/ with the ROOT symlink, an empty kml and last_rcvd,
// and a `uuid` file naming the fileset, which is how the daemon tells
// filesets apart. Running it again is safe: what exists is left alone and
// said so, and only what is missing is created.
#include <fmt/format.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstring>
#include <string>

#include "fileset_dir.h"

int main(int argc, char** argv) {
  CLI::App app{"Prepares DIR to hold the InterMezzo fileset FSET (DIR/.intermezzo/FSET/)."};
  std::string fset;
  std::string dir;
  app.add_option("-r,--fileset", fset, "Name of the fileset")->required();
  app.add_option("DIR", dir, "Root directory of the fileset")->required();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (!intersync::valid_fileset_name(fset)) {
    fmt::print(stderr, "mkizofs: \"{}\" is not a fileset name (no '/', not . or ..)\n", fset);
    return 2;
  }
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    fmt::print(stderr, "mkizofs: {}: {}\n", dir, strerror(errno));
    return 1;
  }
  if (!S_ISDIR(st.st_mode)) {
    fmt::print(stderr, "mkizofs: {}: not a directory\n", dir);
    return 1;
  }

  intersync::FilesetLayout layout = intersync::make_fileset_layout(dir, fset);
  bool failed = false;
  for (const auto& step : layout.steps) {
    if (!step.created.ok()) {
      fmt::print(stderr, "mkizofs: {}\n", step.created.error().message);
      failed = true;
    } else {
      fmt::print("{}: {}\n", step.path, step.created.value() ? "created" : "exists, left alone");
    }
  }
  if (!layout.synced.ok()) {
    fmt::print(stderr, "mkizofs: {}\n", layout.synced.error().message);
    failed = true;
  }
  if (failed) return 1;
  if (!layout.uuid.ok()) {
    fmt::print(stderr, "mkizofs: {}\n", layout.uuid.error().message);
    return 1;
  }
  fmt::print("fileset {} in {}: uuid {}\n", fset, dir, *layout.uuid);
  return 0;
}
