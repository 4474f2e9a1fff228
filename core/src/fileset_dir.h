// The fileset's own directory inside its root, `.intermezzo/<fset>/`, as the
// original laid it out: `kml` (the journal), `last_rcvd`, `ROOT` (symlink to
// the fileset root), plus `uuid` (this fileset's identity: the server's
// record numbers are only meaningful together with it) and `tmp/` (partial
// downloads, resumable). It is never journaled and never replicated.
//
// On an izofs mount the file system itself writes `kml`, as the original
// kernel module did, and a backend follows it; the daemon then keeps its
// replication journal (the record numbers it serves) in `sync.kml`.
#pragma once

#include <string>

#include "intersync/result.h"

namespace intersync {

struct FilesetDir {
  std::string dir;        // <root>/.intermezzo/<fset>
  std::string kml;        // dir/kml, or dir/sync.kml on izofs
  bool izofs = false;     // the root is an izofs mount of this fileset
  std::string last_rcvd;  // dir/last_rcvd
  std::string tmp;        // dir/tmp
  std::string uuid;       // text form
};

// Creates what is missing (idempotent) and reads or makes the uuid.
Result<FilesetDir> prepare_fileset_dir(const std::string& root, const std::string& fset);

// Tells the izofs under `dir` that this process is the fileset's replicator:
// its own writes are not journaled and never wait for data on demand, and
// izofs asks for absent content on `control_socket`. No-op off izofs.
Status register_replicator(const FilesetDir& dir, const std::string& root,
                           const std::string& control_socket);

}  // namespace intersync
