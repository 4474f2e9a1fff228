// In-memory index with SQLite persistence; see file_index.h.
#include "file_index.h"

#include <sys/stat.h>

#include <cstring>
#include <mutex>

#include "path_util.h"

namespace intersync {
namespace {

struct Stmt {
  sqlite3_stmt* s = nullptr;
  ~Stmt() { sqlite3_finalize(s); }
};

}  // namespace

FileType type_of(const struct stat& st) {
  if (S_ISDIR(st.st_mode)) return FileType::Dir;
  if (S_ISLNK(st.st_mode)) return FileType::Symlink;
  return FileType::File;
}

FileState state_of(const struct stat& st) {
  FileState fs;
  fs.type = type_of(st);
  fs.mode = st.st_mode & 07777;
  fs.uid = st.st_uid;
  fs.gid = st.st_gid;
  fs.size = S_ISDIR(st.st_mode) ? 0 : static_cast<uint64_t>(st.st_size);
  fs.mtime_ns = int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  fs.ctime_ns = int64_t(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
  fs.ino = st.st_ino;
  return fs;
}

FileIndex::~FileIndex() {
  close();
}

void FileIndex::close() {
  if (db_) sqlite3_close(db_);
  db_ = nullptr;
}

Status FileIndex::exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = db_path_ + ": " + (err ? err : "sqlite error");
    sqlite3_free(err);
    return make_error(-EIO, msg);
  }
  return {};
}

Status FileIndex::open(const std::string& db_path) {
  db_path_ = db_path;
  if (sqlite3_open_v2(db_path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
      SQLITE_OK) {
    std::string msg = db_path + ": " + (db_ ? sqlite3_errmsg(db_) : "cannot open");
    close();
    return make_error(-EIO, msg);
  }
  // WAL with synchronous=NORMAL: a commit costs no fsync. The index is
  // rebuilt by a rescan if it ever lags behind the files it describes.
  for (const char* sql :
       {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL",
        "CREATE TABLE IF NOT EXISTS files(path TEXT PRIMARY KEY, type INTEGER, mode INTEGER,"
        " uid INTEGER, gid INTEGER, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,"
        " ino INTEGER, content_id BLOB, chunks BLOB, nchunks INTEGER, target TEXT,"
        " version INTEGER)",
        "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT)"}) {
    if (Status s = exec(sql); !s) return s;
  }
  Stmt q;
  sqlite3_prepare_v2(db_,
                     "SELECT path,type,mode,uid,gid,size,mtime_ns,ctime_ns,ino,content_id,chunks,"
                     "nchunks,target,version FROM files",
                     -1, &q.s, nullptr);
  while (sqlite3_step(q.s) == SQLITE_ROW) {
    FileState st;
    std::string path(reinterpret_cast<const char*>(sqlite3_column_text(q.s, 0)));
    st.type = static_cast<FileType>(sqlite3_column_int(q.s, 1));
    st.mode = static_cast<uint32_t>(sqlite3_column_int64(q.s, 2));
    st.uid = static_cast<uint32_t>(sqlite3_column_int64(q.s, 3));
    st.gid = static_cast<uint32_t>(sqlite3_column_int64(q.s, 4));
    st.size = static_cast<uint64_t>(sqlite3_column_int64(q.s, 5));
    st.mtime_ns = sqlite3_column_int64(q.s, 6);
    st.ctime_ns = sqlite3_column_int64(q.s, 7);
    st.ino = static_cast<uint64_t>(sqlite3_column_int64(q.s, 8));
    if (sqlite3_column_bytes(q.s, 9) == 32) {
      std::memcpy(st.content_id.data(), sqlite3_column_blob(q.s, 9), 32);
    }
    if (int n = sqlite3_column_bytes(q.s, 10); n > 0) {
      st.chunks.assign(static_cast<const char*>(sqlite3_column_blob(q.s, 10)), n);
    }
    st.nchunks = static_cast<uint32_t>(sqlite3_column_int64(q.s, 11));
    if (auto* t = sqlite3_column_text(q.s, 12)) st.target = reinterpret_cast<const char*>(t);
    st.version = static_cast<uint32_t>(sqlite3_column_int64(q.s, 13));
    index_content(path, st);
    entries_.emplace(std::move(path), std::move(st));
  }
  Stmt m;
  sqlite3_prepare_v2(db_, "SELECT key,value FROM meta", -1, &m.s, nullptr);
  while (sqlite3_step(m.s) == SQLITE_ROW) {
    meta_[reinterpret_cast<const char*>(sqlite3_column_text(m.s, 0))] =
        reinterpret_cast<const char*>(sqlite3_column_text(m.s, 1));
  }
  return {};
}

void FileIndex::index_content(const std::string& path, const FileState& st) {
  if (st.type == FileType::File) by_content_[st.content_id].insert(path);
}

void FileIndex::unindex_content(const std::string& path, const FileState& st) {
  if (st.type != FileType::File) return;
  auto it = by_content_.find(st.content_id);
  if (it == by_content_.end()) return;
  it->second.erase(path);
  if (it->second.empty()) by_content_.erase(it);
}

const FileState* FileIndex::find(const std::string& path) const {
  auto it = entries_.find(path);
  return it == entries_.end() ? nullptr : &it->second;
}

void FileIndex::put(const std::string& path, const FileState& st) {
  std::unique_lock lock(change_lock_);
  auto it = entries_.find(path);
  if (it != entries_.end()) {
    unindex_content(path, it->second);
    it->second = st;
  } else {
    entries_.emplace(path, st);
  }
  index_content(path, st);
  dirty_.insert(path);
}

void FileIndex::erase(const std::string& path) {
  std::unique_lock lock(change_lock_);
  auto it = entries_.find(path);
  if (it == entries_.end()) return;
  unindex_content(path, it->second);
  entries_.erase(it);
  dirty_.insert(path);
}

std::vector<std::string> FileIndex::paths_under(const std::string& dir) const {
  std::vector<std::string> out;
  if (dir.empty()) {
    for (const auto& [p, st] : entries_) {
      if (!p.empty()) out.push_back(p);
    }
    return out;
  }
  std::string prefix = dir + "/";
  for (auto it = entries_.lower_bound(prefix);
       it != entries_.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
    out.push_back(it->first);
  }
  return out;
}

void FileIndex::rename_tree(const std::string& from, const std::string& to) {
  std::vector<std::string> moved = paths_under(from);
  moved.insert(moved.begin(), from);
  std::vector<std::pair<std::string, FileState>> states;
  for (const auto& p : moved) {
    if (const FileState* st = find(p)) {
      states.emplace_back(to + p.substr(from.size()), *st);
      erase(p);
    }
  }
  for (auto& [p, st] : states) put(p, st);
}

bool FileIndex::has_content(const std::string& path, const Hash& id) const {
  std::shared_lock lock(change_lock_);
  auto it = entries_.find(path);
  if (it != entries_.end() && it->second.content_id == id) return true;
  auto c = by_content_.find(id);
  return c != by_content_.end() && !c->second.empty();
}

std::optional<std::string> FileIndex::path_of_content(const Hash& id) const {
  auto it = by_content_.find(id);
  if (it == by_content_.end() || it->second.empty()) return std::nullopt;
  return *it->second.begin();
}

std::optional<std::string> FileIndex::meta(const std::string& key) const {
  auto it = meta_.find(key);
  return it == meta_.end() ? std::nullopt : std::optional<std::string>(it->second);
}

std::vector<std::pair<std::string, std::string>> FileIndex::meta_with_prefix(
    std::string_view prefix) const {
  std::vector<std::pair<std::string, std::string>> out;
  for (auto it = meta_.lower_bound(std::string(prefix));
       it != meta_.end() && std::string_view(it->first).starts_with(prefix); ++it) {
    out.push_back(*it);
  }
  return out;
}

void FileIndex::set_meta(const std::string& key, const std::string& value) {
  meta_[key] = value;
  dirty_meta_[key] = value;
}

Status FileIndex::commit() {
  if (!db_ || (dirty_.empty() && dirty_meta_.empty())) return {};
  if (Status s = exec("BEGIN"); !s) return s;
  Stmt ins, del, met;
  sqlite3_prepare_v2(db_,
                     "INSERT OR REPLACE INTO files(path,type,mode,uid,gid,size,mtime_ns,ctime_ns,"
                     "ino,content_id,chunks,nchunks,target,version)"
                     " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                     -1, &ins.s, nullptr);
  sqlite3_prepare_v2(db_, "DELETE FROM files WHERE path=?", -1, &del.s, nullptr);
  sqlite3_prepare_v2(db_, "INSERT OR REPLACE INTO meta(key,value) VALUES(?,?)", -1, &met.s,
                     nullptr);
  bool failed = false;
  for (const auto& path : dirty_) {
    const FileState* st = find(path);
    sqlite3_stmt* s = st ? ins.s : del.s;
    sqlite3_reset(s);
    sqlite3_bind_text(s, 1, path.data(), static_cast<int>(path.size()), SQLITE_STATIC);
    if (st) {
      sqlite3_bind_int(s, 2, static_cast<int>(st->type));
      sqlite3_bind_int64(s, 3, st->mode);
      sqlite3_bind_int64(s, 4, st->uid);
      sqlite3_bind_int64(s, 5, st->gid);
      sqlite3_bind_int64(s, 6, static_cast<int64_t>(st->size));
      sqlite3_bind_int64(s, 7, st->mtime_ns);
      sqlite3_bind_int64(s, 8, st->ctime_ns);
      sqlite3_bind_int64(s, 9, static_cast<int64_t>(st->ino));
      sqlite3_bind_blob(s, 10, st->content_id.data(), 32, SQLITE_STATIC);
      sqlite3_bind_blob(s, 11, st->chunks.data(), static_cast<int>(st->chunks.size()),
                        SQLITE_STATIC);
      sqlite3_bind_int64(s, 12, st->nchunks);
      sqlite3_bind_text(s, 13, st->target.data(), static_cast<int>(st->target.size()),
                        SQLITE_STATIC);
      sqlite3_bind_int64(s, 14, st->version);
    }
    if (sqlite3_step(s) != SQLITE_DONE) failed = true;
  }
  for (const auto& [k, v] : dirty_meta_) {
    sqlite3_reset(met.s);
    sqlite3_bind_text(met.s, 1, k.data(), static_cast<int>(k.size()), SQLITE_STATIC);
    sqlite3_bind_text(met.s, 2, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
    if (sqlite3_step(met.s) != SQLITE_DONE) failed = true;
  }
  if (failed) {
    std::string msg = db_path_ + ": index write failed: " + sqlite3_errmsg(db_);
    (void)exec("ROLLBACK");
    return make_error(-EIO, msg);
  }
  if (Status s = exec("COMMIT"); !s) return s;
  dirty_.clear();
  dirty_meta_.clear();
  return {};
}

}  // namespace intersync
