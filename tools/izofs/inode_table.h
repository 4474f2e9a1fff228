// The inodes izofs has told the kernel about. Each holds an O_PATH
// descriptor of its backing object, and its address is its FUSE node id (the
// root's is FUSE_ROOT_ID). Lookups of one backing object (device, inode
// number) share one Inode, counted as the kernel counts them; forget()
// drops an Inode with its last lookup.
//
// The kernel forgets inodes only under memory pressure, while izofs cannot
// hold more descriptors than its open-file limit. So each Inode also
// remembers the name it was last looked up by and when it was last used:
// least_recently_used() names the entries to invalidate so that the kernel
// forgets them (see Izofs::reclaim_inodes).
//
// With kernel passthrough, an Inode that has been opened also holds the
// backing id the kernel knows its backing file by, until it is forgotten
// or repointed: every open of one FUSE inode must name the same backing
// file while another is open (fs/fuse/iomode.c refuses a second one), and
// the kernel looks the id up only after izofs answered the OPEN.
#pragma once

#include <fuse_lowlevel.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "unique_fd.h"

namespace izofs {

class OpenFile;

class Inode {
 public:
  Inode() = default;
  Inode(const Inode&) = delete;
  Inode& operator=(const Inode&) = delete;
  ~Inode() { intersync::UniqueFd closing(fd()); }

  // The O_PATH descriptor of the backing object.
  int fd() const { return fd_.load(std::memory_order_acquire); }
  // Its backing id for passthrough opens, 0 until one is set.
  int32_t backing_id() const { return backing_id_.load(std::memory_order_acquire); }
  // Sets the backing id when none is set yet: false when another was.
  bool set_backing_id(int32_t id) {
    int32_t none = 0;
    return backing_id_.compare_exchange_strong(none, id, std::memory_order_acq_rel);
  }
  // Its handles whose writes izofs does not see (passthrough), guarded by
  // the Izofs.
  std::vector<OpenFile*> unseen_writers;

 private:
  friend class InodeTable;
  std::atomic<int> fd_{-1};
  std::atomic<int32_t> backing_id_{0};
  std::atomic<uint64_t> last_use_{0};
  // The entry the kernel last looked it up by (guarded by the table mutex).
  fuse_ino_t parent_ = 0;
  std::string name_;
  // Descriptors this Inode held before a repoint(): another thread may
  // still be using one, so they are closed only with the Inode.
  std::vector<intersync::UniqueFd> retired_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
  uint64_t lookups_ = 0;
};

class InodeTable {
 public:
  // `root` is an O_PATH descriptor of the backing directory;
  // `close_backing` releases the backing id of an Inode forgotten or
  // repointed.
  InodeTable(intersync::UniqueFd root, const struct stat& st,
             std::function<void(int32_t backing_id)> close_backing);
  ~InodeTable();
  InodeTable(const InodeTable&) = delete;
  InodeTable& operator=(const InodeTable&) = delete;

  Inode& root() { return root_; }
  // The Inode of a node id, marked as used now.
  Inode& at(fuse_ino_t id) {
    Inode& inode =
        id == FUSE_ROOT_ID ? root_ : *reinterpret_cast<Inode*>(static_cast<uintptr_t>(id));
    inode.last_use_.store(use_clock_.fetch_add(1, std::memory_order_relaxed),
                          std::memory_order_relaxed);
    return inode;
  }
  fuse_ino_t id_of(Inode& inode) {
    return &inode == &root_ ? FUSE_ROOT_ID : reinterpret_cast<uintptr_t>(&inode);
  }

  // Counts one more lookup, as `name` in directory `parent`, of the object
  // `fd` (an O_PATH descriptor, taken over) refers to, and returns its
  // Inode, found or new.
  Inode& remember(intersync::UniqueFd fd, const struct stat& st, fuse_ino_t parent,
                  std::string_view name);
  // The object `st` describes is now `name` in `parent` (it was renamed).
  void renamed(const struct stat& st, fuse_ino_t parent, std::string_view name);
  size_t size() const { return size_.load(std::memory_order_relaxed); }
  // The entries by which the kernel knows the `count` least recently used
  // inodes.
  struct EntryName {
    fuse_ino_t parent;
    std::string name;
  };
  std::vector<EntryName> least_recently_used(size_t count);
  // Drops `lookups` lookups; the Inode goes with its last one.
  void forget(Inode& inode, uint64_t lookups);
  // Points `inode` at another backing object `fd` (O_PATH, taken over):
  // the fetched file that the replicator renamed over a placeholder.
  void repoint(Inode& inode, intersync::UniqueFd fd, const struct stat& st);

 private:
  struct Key {
    dev_t dev;
    ino_t ino;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const { return std::hash<ino_t>()(k.ino) ^ (k.dev << 1); }
  };

  void drop_backing_id(Inode& inode);

  const std::function<void(int32_t)> close_backing_;
  std::atomic<uint64_t> use_clock_{1};
  std::atomic<size_t> size_{0};  // owned_.size(), readable without the mutex
  std::mutex mutex_;
  Inode root_;
  std::unordered_set<Inode*> owned_;                 // every Inode but the root
  std::unordered_map<Key, Inode*, KeyHash> by_key_;  // the one a lookup finds
};

}  // namespace izofs
