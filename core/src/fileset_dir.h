// The fileset's own directory inside its root, `.intermezzo/<fset>/`, as the
// original laid it out: `kml` (the journal), `last_rcvd`, `ROOT` (symlink to
// the fileset root), plus `uuid` (this fileset's identity: the server's
// record numbers are only meaningful together with it) and `tmp/` (partial
// downloads, resumable). It is never journaled and never replicated.
//
// On an izofs mount the file system itself writes `kml`, as the original
// kernel module did, and a backend follows it; the daemon then keeps its
// replication journal (the record numbers it serves) in `sync.kml`. An
// empty `kml.complete` beside `kml` says the log was begun on an empty
// fileset (see kKmlCompleteSuffix).
//
// make_fileset_layout() is what mkizofs does and izofs does at mount time;
// prepare_fileset_dir() is the daemon's.
#pragma once

#include <string>
#include <vector>

#include "intersync/result.h"

namespace intersync {

// A name a fileset can have: not empty, not "." or "..", no '/'.
bool valid_fileset_name(const std::string& name);

// One item of the layout: created (true), or already there and suitable
// (false), or why it could not be made.
struct LayoutStep {
  std::string path;
  Result<bool> created;
};

struct FilesetLayout {
  std::vector<LayoutStep> steps;       // in order; ends early when a directory cannot be made
  Status synced;                       // the new directory entries made durable
  Result<std::string> uuid = Error{};  // read back once everything else succeeded

  // The first thing that went wrong, or nullptr.
  const Error* first_error() const;
};

// Next to a log, `<log>.complete` (empty) says that the log was begun when
// the fileset held nothing, so it records every change ever made through
// the file system that writes it (until it is truncated): a follower with
// no saved position may replay it from its first record instead of
// comparing the whole tree with its index.
inline constexpr char kKmlCompleteSuffix[] = ".complete";

// Creates what is missing of ROOT/.intermezzo/FSET/: the directories, the
// ROOT symlink ("../.."), an empty kml and last_rcvd, and a `uuid` file
// naming the fileset (written to a temporary file and linked into place, so
// it is absent or complete and an existing one is never replaced). When it
// creates the kml in a ROOT that holds nothing else, it also creates
// `kml.complete`; when it creates the kml in a ROOT that does, it removes a
// `kml.complete` left from an earlier log. What exists is left alone;
// something in the way (a file where a directory belongs, ROOT pointing
// elsewhere) is an error naming it. New entries are made durable before it
// returns.
FilesetLayout make_fileset_layout(const std::string& root, const std::string& fset);

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
