// The change-backend interface: what a plugin that watches a fileset's files
// (inotify, fanotify, a KML follower) implements, and what core offers it.
// A backend reports *that* something changed at a path; core decides *what*
// changed by comparing the file with its index, so a backend may report too
// much (a duplicate, a create of something that already vanished) but must
// never report too little: when it may have missed events it asks for a
// rescan of the affected directory.
#pragma once

#include <uv.h>

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "intersync/config_node.h"
#include "intersync/result.h"

namespace intersync {

struct ChangeEvent {
  enum class Kind {
    Created,   // a new entry appeared (file, directory, symlink, ...)
    Modified,  // data written, not yet closed
    Closed,    // closed after writing: content is final
    Attrib,    // mode, owner or times changed
    Deleted,   // the entry is gone
    Renamed,   // path -> to_path, inside the fileset
  };
  Kind kind = Kind::Modified;
  std::string path;     // relative to the fileset root, no leading '/', "" = root
  std::string to_path;  // Renamed only
  bool is_dir = false;
};

// Implemented by core, called by the backend on the loop thread.
class BackendHost {
 public:
  virtual ~BackendHost() = default;
  // A batch of events in the order they happened.
  virtual void on_changes(std::vector<ChangeEvent>&& events) = 0;
  // Events under `rel_dir` ("" = everything) may have been lost: core
  // rescans it and compares with the index. `reason` goes to the log.
  virtual void on_rescan(const std::string& rel_dir, const std::string& reason) = 0;
  // Paths core never replicates (.intermezzo/, the daemon's temp files,
  // ignore patterns): a backend need not watch or report them.
  virtual bool ignored(std::string_view rel_path, bool is_dir) const = 0;
  // Calls `done` on the loop thread once every event delivered so far is
  // journaled durably by core. A backend that keeps a position in a log
  // saves it then, so a crash replays changes and never skips one.
  virtual void when_durable(std::function<void()> done) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  // Parses and validates the plugin's own YAML subtree (the fileset key
  // named like the plugin, e.g. `inotify:`); `node.defined()` may be false.
  // Unknown keys are errors that name file, line and column.
  virtual Status configure(const ConfigNode& node) = 0;
  // Starts watching `root` (absolute). Events flow to `host` until stop().
  virtual Status start(uv_loop_t* loop, const std::string& root, BackendHost* host) = 0;
  // Stops watching; releases uv handles asynchronously. Idempotent. The
  // object may be deleted right after stop() returns: handles it still owns
  // must not refer back to it from their close callbacks.
  virtual void stop() = 0;
  // True when the backend, once started, replays every change made while
  // the daemon was stopped (it follows a log that the file system writes,
  // such as izofs's KML): core then skips its start-up scan of the whole
  // tree. Such a backend still calls on_rescan when its log proves
  // incomplete.
  virtual bool replays_changes() const { return false; }
};

}  // namespace intersync
