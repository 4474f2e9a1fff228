// Keeps a server's journal and index consistent across a crash. The journal
// is made durable before the index transaction that describes the same
// changes commits (commit_journal_and_index), and that transaction also
// records the journal head it reflects. A crash between the two therefore
// leaves records after the index's journal head that clients may already be
// told about (they are durable and served) but that the index does not know.
// Comparing the tree with the index would journal those changes a second
// time; instead, at start-up, adopt_journal_tail() applies those records'
// effect to the index, as if the transaction had committed, and reads back
// the files they wrote so the index holds what is on disk.
#pragma once

#include <vector>

#include "file_index.h"
#include "intersync/kml.h"
#include "journal.h"
#include "path_util.h"

namespace intersync {

// The index meta key naming the last journal record the index reflects.
inline constexpr const char* kJournalHeadKey = "journal_head";

// Makes the records appended to `journal` durable, then commits `index`
// with kJournalHeadKey set to the journal's head, in one transaction. When
// the journal cannot be made durable the index is not committed (its
// changes stay pending for the next attempt).
Status commit_journal_and_index(Journal& journal, FileIndex& index);

struct AdoptionReport {
  size_t adopted = 0;     // records whose effect is now in the index
  size_t skipped = 0;     // records that did not fit the index (left to the rescan)
  size_t unverified = 0;  // files whose bytes on disk are no longer the journal's
};

// Applies the effect of `records` (server records, in order, all after the
// index's journal head) to `index`: entries created, removed, renamed, their
// attributes, content ids and versions (the record numbers) set as the
// journal says. Then every file they touched is hashed: when its bytes are
// the journal's, its index entry takes the file's stat and chunk list;
// otherwise it changed after the crash and its entry is marked unseen (inode
// 0), so the next comparison with the disk journals that change. Nothing is
// journaled here and the index is not committed.
AdoptionReport adopt_journal_tail(const SafeRoot& root, FileIndex& index,
                                  const std::vector<KmlRecord>& records);

}  // namespace intersync
