// The server's half of write-back: it takes a client's journal records
// (each carrying, in its `prevrec` field, the server version the change was
// based on), decides per record whether it applies cleanly or conflicts,
// applies it with the RecordApplier, journals the result under a new server
// record number and answers, per record, accepted / conflict / superseded.
//
// A conflict never stops anything and never loses a byte: the fileset's
// policy picks which version keeps the name, and the other is kept beside it
// as NAME.conflict-<host>-<UTC time>[.ext], journaled like any file. An
// update always wins over a delete. When the answer leaves a client's copy
// different from the server's, the server journals the winner again, so the
// client converges by applying the journal as usual.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "change_tracker.h"
#include "config.h"
#include "file_index.h"
#include "fileset_dir.h"
#include "intersync/kml.h"
#include "journal.h"
#include "path_util.h"

namespace intersync {

struct ConflictEntry {
  std::string path;    // the name both sides changed
  std::string copy;    // where the losing version is kept ("" if none)
  std::string kind;    // "update/update", "update/delete", ...
  std::string client;  // who reintegrated
  std::string winner;  // "server" or "client"
  uint64_t time = 0;   // unix seconds
};

class Reintegrator {
 public:
  Reintegrator(const FilesetConfig& config, const SafeRoot& root, FileIndex& index,
               Journal& journal, ChangeTracker& tracker, const FilesetDir& dir);

  // Applies `records` from `client` (host name for conflict copies). Returns
  // the JSON answer: {"results": [{"recno", "result", "server_recno",
  // "detail", "copy"}...]}. Journal and index are durable when it returns.
  // `replica` names the client's copy of the fileset (its uuid; may be
  // empty): clients sharing a token are still told apart.
  nlohmann::json reintegrate(std::vector<KmlRecord> records, const std::string& client,
                             const std::string& host, const std::string& replica);

  const std::vector<ConflictEntry>& conflicts() const { return conflicts_; }
  void load_conflicts();

 private:
  struct Outcome {
    std::string result = "accepted";
    uint32_t server_recno = 0;
    std::string detail, copy;
  };
  Outcome apply_one(std::vector<KmlRecord>& recs, size_t i, const std::string& client,
                    const std::string& host);
  // `again`: judged a second time, the path having been created here
  // while the first attempt applied it.
  Outcome content(KmlRecord& r, const std::string& client, const std::string& host,
                  bool again = false);
  Outcome symlink(KmlRecord& r, const std::string& client, const std::string& host);
  Outcome unlink(KmlRecord& r, const std::string& client);
  Outcome rmdir(KmlRecord& r, const std::string& client);
  Outcome rename(KmlRecord& r, const std::string& client);
  Outcome setattr(KmlRecord& r, const std::string& client);
  Outcome simple(KmlRecord& r);

  // Applies one record to the tree; false (and logs) if it could not.
  bool apply_record(KmlRecord r, std::string* why);
  // Journals the current state of `path` as the server's (CREATE when
  // `created`, CLOSE + CONTENT for files, MKDIR, SYMLINK) and returns the
  // last record number.
  uint32_t journal_state(const std::string& path, bool created);
  uint32_t journal_tree(const std::string& path);
  uint32_t journal_record(KmlRecord r);
  std::string conflict_copy_name(const std::string& path, const std::string& host) const;
  void note_conflict(ConflictEntry c);
  bool have_upload(const Hash& id) const;
  // True if the entry's current version came from this client's own record
  // with the same base: a later local change journaled before the client
  // heard back about the earlier one is its successor, not a conflict.
  bool successor(const std::string& path, const std::string& client, uint32_t base) const;
  bool base_ok(const FileState* cur, const std::string& path, const std::string& client,
               uint32_t base) const;
  // Notes that the client's record with base `base` made version `version`
  // of `path` (0: it deleted it); kept in the index, so that a server
  // restart does not turn a successor into a conflict.
  void produced(const std::string& path, const std::string& client, uint32_t base,
                uint32_t version);

  const FilesetConfig& config_;
  const SafeRoot& root_;
  FileIndex& index_;
  Journal& journal_;
  ChangeTracker& tracker_;
  const FilesetDir& dir_;
  std::vector<ConflictEntry> conflicts_;
  // path -> the client record that made its current version.
  struct Producer {
    std::string client;
    uint32_t base = 0;
    uint32_t version = 0;
  };
  std::map<std::string, Producer> produced_;
  std::string replica_;  // of the reintegration under way
  // The client and replica a produced version is attributed to.
  std::string producer_id(const std::string& client) const {
    return replica_.empty() ? client : client + "/" + replica_;
  }
};

}  // namespace intersync
