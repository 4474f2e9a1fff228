// Journal + index consistency after a crash; see journal_adoption.h.
#include "journal_adoption.h"

#include <fcntl.h>
#include <sys/stat.h>

#include "chunker.h"
#include "intersync/log.h"

namespace intersync {
namespace {

int64_t ns_of(uint32_t sec, uint32_t nsec) {
  return int64_t(sec) * 1000000000 + nsec;
}

void set_times(FileState& fs, const KmlVersion& v) {
  fs.mtime_ns = ns_of(v.mtime_sec, v.mtime_nsec);
  fs.ctime_ns = ns_of(v.ctime_sec, v.ctime_nsec);
}

FileState created_entry(FileType type, const KmlRecord& r) {
  FileState fs;
  fs.type = type;
  fs.mode = r.mode & 07777;
  fs.uid = r.uid;
  fs.gid = r.gid;
  set_times(fs, r.v_obj_new);
  fs.version = r.recno;
  return fs;
}

void erase_tree(FileIndex& index, const std::string& path) {
  for (const auto& p : index.paths_under(path)) index.erase(p);
  index.erase(path);
}

// Applies one record's effect on the index, as the code that journaled it
// did; false when it does not fit (its entry is missing).
bool adopt_record(FileIndex& index, const KmlRecord& r) {
  const FileState* cur = nullptr;
  switch (r.opcode) {
    case KmlOp::Noop:
      return true;
    case KmlOp::Mkdir:
      index.put(r.path, created_entry(FileType::Dir, r));
      return true;
    case KmlOp::Create:
      index.put(r.path, created_entry(FileType::File, r));
      return true;
    case KmlOp::Symlink: {
      FileState fs = created_entry(FileType::Symlink, r);
      fs.mode = 0777;
      fs.target = r.target;
      index.put(r.path, fs);
      return true;
    }
    case KmlOp::Unlink:
    case KmlOp::Rmdir:
      if (r.name.empty()) return false;  // the root is never removed
      erase_tree(index, join_rel(r.dir, r.name));
      return true;
    case KmlOp::Rename: {
      if (!index.find(r.src)) return false;
      erase_tree(index, r.target);
      index.rename_tree(r.src, r.target);
      FileState moved = *index.find(r.target);
      moved.version = r.recno;
      index.put(r.target, moved);
      return true;
    }
    case KmlOp::Close:
    case KmlOp::Content:
    case KmlOp::Setattr:
      cur = index.find(r.path);
      break;
    default:
      return false;
  }
  if (!cur) return false;
  FileState fs = *cur;
  if (r.opcode == KmlOp::Close) {
    if (fs.type != FileType::File) return false;
    fs.ino = r.ino;
    set_times(fs, r.v_obj_new);
    fs.size = r.v_obj_new.size;
  } else if (r.opcode == KmlOp::Content) {
    if (fs.type != FileType::File) return false;
    fs.content_id = r.hash;
    fs.size = r.size;
    fs.mode = r.mode & 07777;
    fs.nchunks = r.nchunks;
    fs.chunks.clear();  // known once the file is read back
    set_times(fs, r.v_obj_new);
    fs.version = r.recno;
  } else {
    if (r.valid & kAttrMode) fs.mode = r.mode & 07777;
    if (r.valid & kAttrUid) fs.uid = r.uid;
    if (r.valid & kAttrGid) fs.gid = r.gid;
    if (r.valid & kAttrMtime) fs.mtime_ns = ns_of(r.mtime_sec, r.mtime_nsec);
    fs.version = r.recno;
  }
  index.put(r.path, fs);
  return true;
}

// Reads `path` back: true when its bytes and modification time are the
// journal's, with the inode, size, change time and chunk list of the file
// filled in. Mode and owner stay the journal's, so a change made to them
// since is still found by the next comparison with the disk.
bool read_back(const SafeRoot& root, const std::string& path, FileState* fs) {
  auto fd = root.open_beneath(path, O_RDONLY | O_NOFOLLOW);
  if (!fd) return false;
  struct stat st;
  if (fstat(fd->get(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  FileState disk = state_of(st);
  if (disk.mtime_ns != fs->mtime_ns) return false;
  auto m = manifest_of_fd(fd->get());
  if (!m || m->content_id != fs->content_id) return false;
  struct stat after;
  if (fstat(fd->get(), &after) != 0 || state_of(after).mtime_ns != disk.mtime_ns ||
      after.st_size != st.st_size) {
    return false;  // written while read
  }
  fs->ino = disk.ino;
  fs->size = disk.size;
  fs->ctime_ns = disk.ctime_ns;
  fs->nchunks = static_cast<uint32_t>(m->chunks.size());
  fs->chunks = m->chunks.size() > 1 ? pack_chunks(m->chunks) : std::string();
  return true;
}

}  // namespace

Status commit_journal_and_index(Journal& journal, FileIndex& index) {
  if (Status s = journal.sync(); !s) return s;
  index.set_meta(kJournalHeadKey, std::to_string(journal.head()));
  return index.commit();
}

AdoptionReport adopt_journal_tail(const SafeRoot& root, FileIndex& index,
                                  const std::vector<KmlRecord>& records) {
  AdoptionReport report;
  if (records.empty()) return report;
  for (const auto& r : records) {
    if (adopt_record(index, r)) {
      ++report.adopted;
    } else {
      ++report.skipped;
      log_warn("journal record {} ({} {}) does not fit the index; the tree decides", r.recno,
               kml_op_name(r.opcode), r.path.empty() ? r.src : r.path);
    }
  }
  // On the server an entry's version is the record that last changed it:
  // the files the adopted records changed are those with a version among them.
  uint32_t first = records.front().recno;
  std::vector<std::string> files;
  for (const auto& [path, fs] : index.entries()) {
    if (fs.type == FileType::File && fs.version >= first) files.push_back(path);
  }
  for (const auto& path : files) {
    FileState fs = *index.find(path);
    if (!read_back(root, path, &fs)) {
      fs.ino = 0;
      ++report.unverified;
    }
    index.put(path, fs);
  }
  return report;
}

}  // namespace intersync
