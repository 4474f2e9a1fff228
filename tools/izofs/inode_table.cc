// Lookup counting and the (device, inode) index of izofs's inodes; see
// inode_table.h.
#include "inode_table.h"

namespace izofs {

using intersync::UniqueFd;

InodeTable::InodeTable(UniqueFd root, const struct stat& st) {
  root_.fd_.store(root.release(), std::memory_order_release);
  root_.dev_ = st.st_dev;
  root_.ino_ = st.st_ino;
}

InodeTable::~InodeTable() {
  for (Inode* inode : owned_) delete inode;
}

Inode& InodeTable::remember(UniqueFd fd, const struct stat& st) {
  Key key{st.st_dev, st.st_ino};
  std::lock_guard lock(mutex_);
  if (key == Key{root_.dev_, root_.ino_}) return root_;
  auto [it, added] = by_key_.try_emplace(key, nullptr);
  if (added) {
    it->second = *owned_.insert(new Inode).first;
    it->second->fd_.store(fd.release(), std::memory_order_release);
    it->second->dev_ = st.st_dev;
    it->second->ino_ = st.st_ino;
  }
  it->second->lookups_++;
  return *it->second;
}

void InodeTable::forget(Inode& inode, uint64_t lookups) {
  if (&inode == &root_) return;
  std::lock_guard lock(mutex_);
  inode.lookups_ -= std::min(lookups, inode.lookups_);
  if (inode.lookups_ > 0) return;
  auto it = by_key_.find(Key{inode.dev_, inode.ino_});
  if (it != by_key_.end() && it->second == &inode) by_key_.erase(it);
  owned_.erase(&inode);
  delete &inode;
}

void InodeTable::repoint(Inode& inode, UniqueFd fd, const struct stat& st) {
  std::lock_guard lock(mutex_);
  auto it = by_key_.find(Key{inode.dev_, inode.ino_});
  if (it != by_key_.end() && it->second == &inode) by_key_.erase(it);
  inode.retired_.emplace_back(inode.fd_.exchange(fd.release(), std::memory_order_acq_rel));
  inode.dev_ = st.st_dev;
  inode.ino_ = st.st_ino;
  // When the kernel already knows the new object under another node id,
  // that one stays the object's entry for lookups; this one still works.
  by_key_.try_emplace(Key{st.st_dev, st.st_ino}, &inode);
}

}  // namespace izofs
