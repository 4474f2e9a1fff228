// The index: what core knows about every entry of a fileset (type, mode,
// size, times, inode, content id and chunk list, symlink target, the record
// that last changed it). It lives in memory as an ordered map, so prefix
// operations (a directory renamed, a subtree deleted) are range walks, and is
// persisted in SQLite (WAL) in the state directory, so a restart neither
// rescans content nor refetches it. A change is made in memory first and
// written by commit() in one transaction per batch.
//
// An Index is used by one thread at a time: the loop, or a thread-pool job
// that the loop waits for.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "chunker.h"
#include "intersync/kml.h"
#include "intersync/result.h"

struct stat;

namespace intersync {

enum class FileType : uint8_t { File = 1, Dir = 2, Symlink = 3 };

struct FileState {
  FileType type = FileType::File;
  uint32_t mode = 0;  // permission bits (07777)
  uint32_t uid = 0, gid = 0;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  uint64_t ino = 0;
  Hash content_id{};
  std::string chunks;  // packed (pack_chunks); empty for a single-chunk file
  uint32_t nchunks = 0;
  std::string target;    // symlink target
  uint32_t version = 0;  // record number that last changed it
};

// The type and attributes stat(2) reports (no content id, no version).
FileType type_of(const struct stat& st);
FileState state_of(const struct stat& st);

// The KML "V" (times and size) of an indexed entry.
inline KmlVersion version_of(const FileState& fs) {
  KmlVersion v;
  v.mtime_sec = static_cast<uint32_t>(fs.mtime_ns / 1000000000);
  v.mtime_nsec = static_cast<uint32_t>(fs.mtime_ns % 1000000000);
  v.ctime_sec = static_cast<uint32_t>(fs.ctime_ns / 1000000000);
  v.ctime_nsec = static_cast<uint32_t>(fs.ctime_ns % 1000000000);
  v.size = fs.size;
  return v;
}

struct HashKey {
  size_t operator()(const Hash& h) const {
    size_t v;
    static_assert(sizeof v <= sizeof h);
    __builtin_memcpy(&v, h.data(), sizeof v);
    return v;
  }
};

class FileIndex {
 public:
  FileIndex() = default;
  ~FileIndex();
  FileIndex(const FileIndex&) = delete;
  FileIndex& operator=(const FileIndex&) = delete;

  // Opens (creating) the database and loads every entry.
  Status open(const std::string& db_path);
  void close();

  const FileState* find(const std::string& path) const;
  void put(const std::string& path, const FileState& st);
  void erase(const std::string& path);
  // Moves `from` and everything beneath it to `to`.
  void rename_tree(const std::string& from, const std::string& to);
  // Paths strictly beneath `dir`, in order (parents before children).
  std::vector<std::string> paths_under(const std::string& dir) const;
  // Some path whose content id is `id`, if any.
  std::optional<std::string> path_of_content(const Hash& id) const;
  // Whether `path`, or any path, holds content `id`. The one reading that
  // may run while another thread changes the index (a client plans its
  // next batch while the last one is applied): put and erase exclude it.
  bool has_content(const std::string& path, const Hash& id) const;

  const std::map<std::string, FileState>& entries() const { return entries_; }
  size_t size() const { return entries_.size(); }

  std::optional<std::string> meta(const std::string& key) const;
  void set_meta(const std::string& key, const std::string& value);
  // Every meta entry whose key starts with `prefix`.
  std::vector<std::pair<std::string, std::string>> meta_with_prefix(std::string_view prefix) const;

  // Writes every change since the last commit in one transaction.
  Status commit();

 private:
  void index_content(const std::string& path, const FileState& st);
  void unindex_content(const std::string& path, const FileState& st);
  Status exec(const char* sql);

  sqlite3* db_ = nullptr;
  std::string db_path_;
  mutable std::shared_mutex change_lock_;  // see has_content
  std::map<std::string, FileState> entries_;
  std::unordered_map<Hash, std::set<std::string>, HashKey> by_content_;
  std::set<std::string> dirty_;  // put or erased since the last commit
  std::map<std::string, std::string> meta_, dirty_meta_;
};

}  // namespace intersync
