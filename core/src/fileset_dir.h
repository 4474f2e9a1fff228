// The fileset's own directory inside its root, `.intermezzo/<fset>/`, as the
// original laid it out: `kml` (the journal), `last_rcvd`, `ROOT` (symlink to
// the fileset root), plus `uuid` (this fileset's identity: the server's
// record numbers are only meaningful together with it) and `tmp/` (partial
// downloads, resumable). It is never journaled and never replicated.
#pragma once

#include <string>

#include "intersync/result.h"

namespace intersync {

struct FilesetDir {
  std::string dir;        // <root>/.intermezzo/<fset>
  std::string kml;        // dir/kml
  std::string last_rcvd;  // dir/last_rcvd
  std::string tmp;        // dir/tmp
  std::string uuid;       // text form
};

// Creates what is missing (idempotent) and reads or makes the uuid.
Result<FilesetDir> prepare_fileset_dir(const std::string& root, const std::string& fset);

}  // namespace intersync
