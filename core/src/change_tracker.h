// Turns file-system activity under a fileset root into journal records. A
// backend says *that* something happened at a path; the tracker compares the
// file on disk with the index and journals *what* changed (MKDIR, CREATE +
// CLOSE + CONTENT, SYMLINK, SETATTR, RENAME, UNLINK, RMDIR), updating the
// index as it goes. Because every decision is "disk versus index", duplicate
// or stale events are harmless, a rescan is the same code as an event, and
// the daemon's own writes (already in the index) produce nothing: that is
// the echo suppression.
//
// Work is a FIFO of items processed on the loop in bounded slices; hashing
// of large files goes to the thread pool. Records of one slice are made
// durable together (one fdatasync) before they are announced, and the index
// commits with them the journal head it now reflects (journal_adoption.h).
#pragma once

#include <sys/stat.h>
#include <uv.h>

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "file_index.h"
#include "intersync/backend.h"
#include "intersync/uv_timer.h"
#include "journal.h"
#include "path_util.h"

namespace intersync {

class ChangeTracker {
 public:
  struct Options {
    std::string name;  // fileset name, for logs
    // Files larger than this are hashed on the thread pool.
    uint64_t inline_hash_limit = 256 * 1024;
    // A file reported Modified but not Closed is examined after this quiet time.
    uint64_t modified_quiet_ms = 1000;
    // A write-back client: each record carries in `prevrec` the server
    // version of the entry it changes (its base), and index versions stay
    // the server's record numbers.
    bool client = false;
  };

  ChangeTracker(uv_loop_t* loop, Options options, const SafeRoot& root, FileIndex& index,
                Journal& journal, std::function<bool(std::string_view, bool)> ignored);
  ~ChangeTracker();

  // Called after records were made durable and indexed.
  void on_committed(std::function<void()> callback) { committed_ = std::move(callback); }
  // Asked before a file's new content is journaled as a local change: a
  // version number means the bytes are a server record's that the daemon
  // wrote before a crash kept it from indexing them; they are indexed as
  // that version, not journaled.
  void on_unknown_content(
      std::function<std::optional<uint32_t>(const std::string&, const Hash&)> f) {
    server_content_ = std::move(f);
  }
  // Calls `done` once everything added so far is journaled and durable.
  void when_durable(std::function<void()> done);

  void add_events(std::vector<ChangeEvent>&& events);
  void rescan(const std::string& rel_dir, const std::string& reason);
  // Journals whatever changed at `path` right now (hashing inline), and
  // makes it durable: the server calls it before judging a client's record
  // about that path, so a local change is never overwritten unseen.
  void reconcile_now(const std::string& path);
  // While paused, events queue up and nothing is journaled (a client
  // applying the server's records must not see its own writes half done).
  void pause();
  void resume();
  bool idle() const { return queue_.empty() && !hashing_ && deferred_.empty(); }
  size_t pending() const { return queue_.size() + deferred_.size(); }
  const std::string& last_error() const { return last_error_; }

 public:
  struct HashResult;

 private:
  struct Item {
    enum class Kind { Reconcile, Rename, Rescan } kind;
    std::string path, to;
  };
  void push(Item item, bool front = false);
  void defer(const std::string& path, uint64_t delay_ms);
  void arm_deferred();
  void schedule();
  void run_slice();
  void commit();
  void notify_durable();
  void process(const Item& item);
  void reconcile(const std::string& path);
  void rename(const std::string& from, const std::string& to);
  // Where `path` is on disk now, after the renames still queued.
  std::string where_now(const std::string& path) const;
  void push_after_renames(Item item);
  void rescan_tree(const std::string& dir);
  void journal_new(const std::string& path, const struct stat& st);
  void journal_removal(const std::string& path);
  void journal_file_content(const std::string& path, const struct stat& st, bool created);
  void finish_hash(std::unique_ptr<HashResult> r);
  bool append(KmlRecord& rec);
  // The version an entry has after `rec` changed it (see Options::client).
  uint32_t version_after(const KmlRecord& rec, uint32_t before) const;
  bool stat_path(const std::string& path, struct stat* st) const;

  uv_loop_t* loop_;
  Options options_;
  const SafeRoot& root_;
  FileIndex& index_;
  Journal& journal_;
  std::function<bool(std::string_view, bool)> ignored_;
  std::function<void()> committed_;
  std::vector<std::function<void()>> durable_waiters_;
  std::function<std::optional<uint32_t>(const std::string&, const Hash&)> server_content_;

  std::deque<Item> queue_;
  std::set<std::string> queued_;               // paths with a Reconcile item in queue_
  std::multiset<std::string> rename_targets_;  // `to` of the Rename items in queue_
  std::map<std::string, uint64_t> deferred_;   // path -> due time (ms), Modified files
  // Known paths found missing along with their directory, deferred once
  // (see reconcile()).
  std::set<std::string> waited_for_parent_;
  UvTimer slice_timer_;
  UvTimer deferred_timer_;
  bool hashing_ = false;
  bool paused_ = false;
  bool force_inline_ = false;
  bool dirty_ = false;  // records appended since the last commit
  std::string last_error_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace intersync
