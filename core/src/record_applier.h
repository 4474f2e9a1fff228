// Applies journal records to a fileset's tree: the one place that turns a
// KML record into file-system operations. Clients use it for the server's
// records, the server for the records a client reintegrates. Every
// operation goes through a SafeRoot (no path leaves the root, no symlink is
// followed), every file is written in the staging directory and renamed
// into place, and every operation is idempotent, so a batch replayed after
// a crash converges to the same tree. The index follows each change.
#pragma once

#include <sys/stat.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "chunker.h"
#include "file_index.h"
#include "intersync/kml.h"
#include "path_util.h"

namespace intersync {

// Where the bytes of CONTENT records come from, by content id: small
// contents held in memory, larger ones as files in the staging directory.
// Both are verified against the content id before use.
struct ContentSources {
  std::map<Hash, std::string> small;
  std::map<Hash, std::string> staged;  // content id -> file name in the staging directory
  // Manifests of staged files computed as their bytes were written (see
  // StagedDownload), so that they need not be read back.
  std::map<Hash, Manifest> hashed;
  // A client's batch: `requested` are the contents asked of the server for
  // it. One that is in none of the sources and no longer here either (the
  // local copy it was to come from went away in this batch) is not
  // skipped: the applier stops and names it in `refetch`, to be asked of
  // the server.
  bool can_refetch = false;
  // Small contents already written to staging files, by record index (see
  // RecordApplier::prestage); what the batch does not use is removed by
  // RecordApplier::discard_prestaged.
  struct Prestaged {
    std::string name;  // in the staging directory
    struct stat st;    // its state, mode and mtime set
    std::string chunks;
  };
  std::map<size_t, Prestaged> prestaged;
  std::set<Hash> requested;
  std::optional<Hash> refetch;
  // Data on demand: a content not fetched becomes a placeholder (see
  // is_placeholder) rather than being looked for.
  bool on_demand = false;
};

// Data on demand (izofs): a regular file whose content has not been
// fetched is a placeholder: sparse, with its real size, mode and mtime, and
// the extended attribute kAbsentXattr holding its content id in hex. izofs
// asks the daemon for the content when a user first opens it.
inline constexpr const char* kAbsentXattr = "user.intersync.absent";
bool is_placeholder(int dirfd, const std::string& name);

// Checks and canonicalises the paths a record names, as every path from the
// network must be; UNLINK/RMDIR get `path` = dir/name.
bool record_paths_ok(KmlRecord& r, std::string* why);

// Names of temporary files in the staging directory, and of its
// subdirectories where RecordApplier::prestage writes (p0, p1, ...).
std::string staging_name();
inline constexpr const char* kStagingPrefix = "w-";
inline constexpr const char* kPrestageDirPrefix = "p";

class RecordApplier {
 public:
  RecordApplier(const SafeRoot& root, FileIndex& index, std::string staging_dir, std::string fset);
  ~RecordApplier();

  Status open();
  // Applies recs[i] (its neighbours are looked at to skip needless work).
  // False with *err when the batch must stop (a full disk, an I/O error);
  // a record that cannot apply because later records settle it is skipped
  // and counted.
  bool apply(std::vector<KmlRecord>& recs, size_t i, ContentSources& sources, std::string* err);
  size_t skipped() const;
  // Turns the file at `path`, whose bytes match the index, back into a
  // placeholder (data on demand: evict). False with *why when it does not
  // (not a file, changed here since the index saw it).
  bool make_placeholder(const std::string& path, std::string* why);
  // Writes the small contents of `recs` to staging files on `threads`
  // threads at once, into sources.prestaged: the slow part of applying
  // many small files, done in parallel; apply() then only renames them
  // into place, in order.
  void prestage(const std::vector<KmlRecord>& recs, ContentSources& sources, unsigned threads);
  void discard_prestaged(ContentSources& sources);
  // Paths the applier must leave alone (a client's changes not yet
  // reintegrated); also makes it keep files changed locally meanwhile.
  void protect(std::function<bool(const std::string&)> predicate);
  // Where local users write too: never replaces a file or link the index
  // does not know (a local user may have just created it), nor a known
  // file written or removed here since the index saw it. renameat2 closes
  // the gap between looking and renaming: RENAME_NOREPLACE for unknown
  // entries; RENAME_EXCHANGE for known files, with the displaced file
  // checked and put back if it changed. Such a record is skipped.
  void keep_unknown_entries();
  const std::string& staging_dir() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace intersync
