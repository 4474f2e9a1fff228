// Lookup counting and the (device, inode) index of izofs's inodes; see
// inode_table.h.
#include "inode_table.h"

namespace izofs {

using intersync::UniqueFd;

InodeTable::InodeTable(UniqueFd root, const struct stat& st,
                       std::function<void(int32_t)> close_backing)
    : close_backing_(std::move(close_backing)) {
  root_.fd_.store(root.release(), std::memory_order_release);
  root_.dev_ = st.st_dev;
  root_.ino_ = st.st_ino;
}

InodeTable::~InodeTable() {
  for (Inode* inode : owned_) delete inode;
}

Inode& InodeTable::remember(UniqueFd fd, const struct stat& st, fuse_ino_t parent,
                            std::string_view name) {
  Key key{st.st_dev, st.st_ino};
  std::lock_guard lock(mutex_);
  if (key == Key{root_.dev_, root_.ino_}) return root_;
  auto [it, added] = by_key_.try_emplace(key, nullptr);
  Inode& inode = added ? **owned_.insert(new Inode).first : *it->second;
  if (added) {
    size_.store(owned_.size(), std::memory_order_relaxed);
    it->second = &inode;
    inode.fd_.store(fd.release(), std::memory_order_release);
    inode.dev_ = st.st_dev;
    inode.ino_ = st.st_ino;
  }
  inode.lookups_++;
  inode.parent_ = parent;
  inode.name_ = name;
  inode.last_use_.store(use_clock_.fetch_add(1, std::memory_order_relaxed),
                        std::memory_order_relaxed);
  return inode;
}

void InodeTable::renamed(const struct stat& st, fuse_ino_t parent, std::string_view name) {
  std::lock_guard lock(mutex_);
  auto it = by_key_.find(Key{st.st_dev, st.st_ino});
  if (it == by_key_.end()) return;
  it->second->parent_ = parent;
  it->second->name_ = name;
}

std::vector<InodeTable::EntryName> InodeTable::least_recently_used(size_t count) {
  std::vector<std::pair<uint64_t, Inode*>> by_use;
  std::lock_guard lock(mutex_);
  by_use.reserve(owned_.size());
  for (Inode* inode : owned_) {
    by_use.emplace_back(inode->last_use_.load(std::memory_order_relaxed), inode);
  }
  count = std::min(count, by_use.size());
  std::partial_sort(by_use.begin(), by_use.begin() + static_cast<ptrdiff_t>(count), by_use.end());
  std::vector<EntryName> names;
  names.reserve(count);
  for (size_t i = 0; i < count; i++) {
    names.push_back({by_use[i].second->parent_, by_use[i].second->name_});
  }
  return names;
}

void InodeTable::forget(Inode& inode, uint64_t lookups) {
  if (&inode == &root_) return;
  std::lock_guard lock(mutex_);
  inode.lookups_ -= std::min(lookups, inode.lookups_);
  if (inode.lookups_ > 0) return;
  auto it = by_key_.find(Key{inode.dev_, inode.ino_});
  if (it != by_key_.end() && it->second == &inode) by_key_.erase(it);
  owned_.erase(&inode);
  size_.store(owned_.size(), std::memory_order_relaxed);
  drop_backing_id(inode);
  delete &inode;
}

void InodeTable::drop_backing_id(Inode& inode) {
  if (int32_t id = inode.backing_id_.exchange(0, std::memory_order_acq_rel); id > 0) {
    close_backing_(id);
  }
}

void InodeTable::repoint(Inode& inode, UniqueFd fd, const struct stat& st) {
  std::lock_guard lock(mutex_);
  auto it = by_key_.find(Key{inode.dev_, inode.ino_});
  if (it != by_key_.end() && it->second == &inode) by_key_.erase(it);
  inode.retired_.emplace_back(inode.fd_.exchange(fd.release(), std::memory_order_acq_rel));
  // Later opens are of another object (unless opens waiting for one fetch
  // repoint it in turn): the kernel must be given its file.
  if (Key{st.st_dev, st.st_ino} != Key{inode.dev_, inode.ino_}) drop_backing_id(inode);
  inode.dev_ = st.st_dev;
  inode.ino_ = st.st_ino;
  // When the kernel already knows the new object under another node id,
  // that one stays the object's entry for lookups; this one still works.
  by_key_.try_emplace(Key{st.st_dev, st.st_ino}, &inode);
}

}  // namespace izofs
