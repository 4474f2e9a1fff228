// Data on demand. A regular backing file carrying the xattr
// `user.intersync.absent` (its value: the content id) is a placeholder whose
// size and mtime are right but whose content has not been fetched. Before
// anyone but the replicator opens one, izofs asks the replicator over its
// control socket (a unix stream socket) with one JSON line
//     {"cmd":"fetch","fileset":"FSET","path":"rel/path"}
// and waits for one JSON line back; {"ok":true} means the replicator has
// renamed the fetched file over the placeholder. doc/IZOFS.md has the
// whole contract.
//
// Each exchange runs on a thread of its own, so the FUSE worker that
// received the open goes back to serving other requests meanwhile.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "intersync/result.h"
#include "unique_fd.h"

namespace izofs {

inline constexpr char kAbsentXattr[] = "user.intersync.absent";

class ContentFetcher {
 public:
  ContentFetcher(std::string fileset, std::chrono::seconds timeout);
  ~ContentFetcher();
  ContentFetcher(const ContentFetcher&) = delete;
  ContentFetcher& operator=(const ContentFetcher&) = delete;

  // Asks the replicator listening on `socket` to fetch `path` (relative to
  // the fileset root), then runs `done` on the exchange's thread with the
  // outcome: ok, or an error saying what went wrong.
  void fetch(const std::string& socket, const std::string& path,
             std::function<void(intersync::Status)> done);
  // Ends the exchanges still waiting (their `done` sees an error) and joins
  // every thread. Later fetches fail at once.
  void stop();

 private:
  intersync::Status exchange(const std::string& socket, const std::string& path);
  void join_finished_locked();

  const std::string fileset_;
  const std::chrono::seconds timeout_;
  intersync::UniqueFd stop_event_;  // eventfd, readable once stop() has begun
  std::mutex mutex_;
  bool stopped_ = false;
  uint64_t next_id_ = 0;
  std::map<uint64_t, std::thread> threads_;
  std::vector<uint64_t> finished_;  // threads done with their work, to join
};

}  // namespace izofs
