// Reintegration of a client's records on the server; see reintegrator.h.
#include "reintegrator.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <ctime>

#include "intersync/log.h"
#include "journal_adoption.h"
#include "json_text.h"
#include "protocol.h"
#include "record_applier.h"

namespace intersync {
namespace {

std::string safe_host(const std::string& host) {
  std::string out;
  for (char c : host.substr(0, 64)) {
    out.push_back(
        (isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-') ? c : '_');
  }
  return out.empty() ? "unknown" : out;
}

// The path a record is about, for base checks and local flushing.
std::string primary_path(const KmlRecord& r) {
  if (r.opcode == KmlOp::Rename || r.opcode == KmlOp::Link) return r.src;
  return r.path;
}

}  // namespace

Reintegrator::Reintegrator(const FilesetConfig& config, const SafeRoot& root, FileIndex& index,
                           Journal& journal, ChangeTracker& tracker, const FilesetDir& dir)
    : config_(config),
      root_(root),
      index_(index),
      journal_(journal),
      tracker_(tracker),
      dir_(dir) {}

namespace {
constexpr std::string_view kProducedKey = "produced:";
}  // namespace

void Reintegrator::load_conflicts() {
  produced_.clear();
  for (const auto& [key, value] : index_.meta_with_prefix(kProducedKey)) {
    Producer p;
    char client[128] = "";
    if (sscanf(value.c_str(), "%u %u %127s", &p.version, &p.base, client) == 3) {
      p.client = client;
      produced_[key.substr(kProducedKey.size())] = p;
    }
  }
  conflicts_.clear();
  auto text = index_.meta("conflicts");
  if (!text) return;
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (!j.is_array()) return;
  for (const auto& c : j) {
    conflicts_.push_back({c.value("path", ""), c.value("copy", ""), c.value("kind", ""),
                          c.value("client", ""), c.value("winner", ""), c.value("time", 0ull)});
  }
}

void Reintegrator::note_conflict(ConflictEntry c) {
  log_warn("fileset '{}': conflict ({}) on {} with {}: {} version kept{}", config_.name, c.kind,
           c.path, c.client, c.winner, c.copy.empty() ? "" : ", the other as " + c.copy);
  conflicts_.push_back(std::move(c));
  nlohmann::json j = nlohmann::json::array();
  for (const auto& e : conflicts_) {
    j.push_back({{"path", e.path},
                 {"copy", e.copy},
                 {"kind", e.kind},
                 {"client", e.client},
                 {"winner", e.winner},
                 {"time", e.time}});
  }
  index_.set_meta("conflicts", json_text(j));
}

std::string Reintegrator::conflict_copy_name(const std::string& path,
                                             const std::string& host) const {
  char stamp[32];
  time_t now = time(nullptr);
  strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", gmtime(&now));
  std::string dir = parent_of(path), name = base_name(path);
  size_t dot = name.rfind('.');
  std::string stem = name, ext;
  if (dot != std::string::npos && dot > 0) {
    stem = name.substr(0, dot);
    ext = name.substr(dot);
  }
  std::string base = stem + ".conflict-" + safe_host(host) + "-" + stamp;
  std::string candidate = join_rel(dir, base + ext);
  for (int n = 2; index_.find(candidate); ++n) {
    candidate = join_rel(dir, base + "-" + std::to_string(n) + ext);
  }
  return candidate;
}

bool Reintegrator::successor(const std::string& path, const std::string& client,
                             uint32_t base) const {
  auto it = produced_.find(path);
  if (it == produced_.end() || it->second.client != producer_id(client) || it->second.base != base)
    return false;
  const FileState* cur = index_.find(path);
  return cur ? cur->version == it->second.version : it->second.version == 0;
}

bool Reintegrator::base_ok(const FileState* cur, const std::string& path, const std::string& client,
                           uint32_t base) const {
  return cur->version == base || successor(path, client, base);
}

void Reintegrator::produced(const std::string& path, const std::string& client, uint32_t base,
                            uint32_t version) {
  std::string who = producer_id(client);
  index_.set_meta(std::string(kProducedKey) + path,
                  std::to_string(version) + " " + std::to_string(base) + " " + who);
  produced_[path] = {std::move(who), base, version};
}

bool Reintegrator::have_upload(const Hash& id) const {
  struct stat st;
  return ::stat((dir_.tmp + "/up-" + hash_hex(id)).c_str(), &st) == 0;
}

bool Reintegrator::apply_record(KmlRecord r, std::string* why) {
  RecordApplier applier(root_, index_, dir_.tmp, config_.name);
  if (Status s = applier.open(); !s) {
    *why = s.error().message;
    return false;
  }
  // A file a user here creates while a client's record is applied is
  // never replaced: it is journaled and judged (see content()).
  applier.keep_unknown_entries();
  ContentSources sources;
  if (r.opcode == KmlOp::Content && have_upload(r.hash)) {
    sources.staged[r.hash] = "up-" + hash_hex(r.hash);
  }
  std::vector<KmlRecord> one{std::move(r)};
  if (!applier.apply(one, 0, sources, why)) return false;
  if (applier.skipped() > 0) {
    *why = "could not be applied here";
    return false;
  }
  return true;
}

uint32_t Reintegrator::journal_record(KmlRecord r) {
  r.recno = 0;
  r.time = 0;
  r.prevrec = 0;
  if (auto off = journal_.append(r); !off) {
    log_error("fileset '{}': journal append failed: {}", config_.name, off.error().message);
    return 0;
  }
  return r.recno;
}

uint32_t Reintegrator::journal_state(const std::string& path, bool created) {
  const FileState* st = index_.find(path);
  if (!st) return 0;
  FileState fs = *st;
  KmlRecord r;
  r.path = path;
  r.uid = fs.uid;
  r.gid = fs.gid;
  r.v_obj_new = version_of(fs);
  uint32_t last = 0;
  switch (fs.type) {
    case FileType::Dir:
      r.opcode = KmlOp::Mkdir;
      r.mode = S_IFDIR | fs.mode;
      last = journal_record(r);
      break;
    case FileType::Symlink:
      r.opcode = KmlOp::Symlink;
      r.target = fs.target;
      last = journal_record(r);
      break;
    case FileType::File: {
      if (created) {
        KmlRecord c = r;
        c.opcode = KmlOp::Create;
        c.mode = S_IFREG | fs.mode;
        journal_record(c);
      }
      KmlRecord close = r;
      close.opcode = KmlOp::Close;
      close.path = path;
      close.ino = fs.ino;
      journal_record(close);
      KmlRecord content = r;
      content.opcode = KmlOp::Content;
      content.size = fs.size;
      content.mode = S_IFREG | fs.mode;
      content.nchunks = fs.nchunks;
      content.hash = fs.content_id;
      last = journal_record(content);
      break;
    }
  }
  if (last) {
    fs.version = last;
    index_.put(path, fs);
  }
  return last;
}

uint32_t Reintegrator::journal_tree(const std::string& path) {
  uint32_t last = journal_state(path, true);
  for (const auto& p : index_.paths_under(path)) last = journal_state(p, true);
  return last;
}

nlohmann::json Reintegrator::reintegrate(std::vector<KmlRecord> records, const std::string& client,
                                         const std::string& host, const std::string& replica) {
  replica_ = replica;
  nlohmann::json results = nlohmann::json::array();
  for (size_t i = 0; i < records.size(); ++i) {
    uint32_t local = records[i].recno;
    Outcome o;
    std::string why;
    if (!record_paths_ok(records[i], &why)) {
      o.result = "refused";
      o.detail = why;
      log_warn("fileset '{}': refused record {} from {}: {}", config_.name, local, client, why);
    } else {
      o = apply_one(records, i, client, host);
    }
    log_debug("fileset '{}': {} record {} {} {} (base {}): {} {} {}", config_.name, client, local,
              kml_op_name(records[i].opcode), primary_path(records[i]), records[i].prevrec,
              o.result, o.server_recno, o.detail);
    nlohmann::json result{
        {"recno", local},     {"result", o.result}, {"server_recno", o.server_recno},
        {"detail", o.detail}, {"copy", o.copy},     {"path", primary_path(records[i])}};
    if (records[i].opcode == KmlOp::Rename) result["target"] = records[i].target;
    // Whose version the path holds now: the client takes it as its base
    // only when it is its own.
    if (o.result == "conflict" && !conflicts_.empty()) result["winner"] = conflicts_.back().winner;
    results.push_back(std::move(result));
  }
  // Acknowledged only once durable.
  if (Status s = commit_journal_and_index(journal_, index_); !s) {
    log_error("fileset '{}': {}", config_.name, s.error().message);
    if (!journal_.all_durable()) return {{"error", s.error().message}};
  }
  return {{"results", results}};
}

Reintegrator::Outcome Reintegrator::apply_one(std::vector<KmlRecord>& recs, size_t i,
                                              const std::string& client, const std::string& host) {
  KmlRecord& r = recs[i];
  // Whatever the server's own users did to these paths is journaled first,
  // so that it takes part in the comparison below.
  tracker_.reconcile_now(primary_path(r));
  if (r.opcode == KmlOp::Rename) tracker_.reconcile_now(r.target);
  switch (r.opcode) {
    case KmlOp::Create: {
      // A client writes CREATE, CLOSE, CONTENT: the CONTENT decides.
      for (size_t j = i + 1; j < recs.size() && j <= i + 2; ++j) {
        if (recs[j].opcode == KmlOp::Content && recs[j].path == r.path) return {};
      }
      if (index_.find(r.path)) return {};
      return simple(r);
    }
    case KmlOp::Close:
    case KmlOp::Noop:
      return {};
    case KmlOp::Content:
      return content(r, client, host);
    case KmlOp::Symlink:
      return symlink(r, client, host);
    case KmlOp::Mkdir: {
      const FileState* cur = index_.find(r.path);
      if (cur && cur->type == FileType::Dir) return {"accepted", cur->version, "", ""};
      if (cur) {
        note_conflict({r.path, "", "create/create", client, "server", uint64_t(time(nullptr))});
        return {"conflict", cur->version, "a file of that name exists on the server", ""};
      }
      return simple(r);
    }
    case KmlOp::Unlink:
      return unlink(r, client);
    case KmlOp::Rmdir:
      return rmdir(r, client);
    case KmlOp::Rename:
      return rename(r, client);
    case KmlOp::Setattr:
      return setattr(r, client);
    default:
      return {"refused", 0, std::string("opcode ") + kml_op_name(r.opcode) + " is not reintegrated",
              ""};
  }
}

Reintegrator::Outcome Reintegrator::simple(KmlRecord& r) {
  std::string why;
  bool created = !index_.find(r.path);
  if (!apply_record(r, &why)) return {"superseded", 0, why, ""};
  return {"accepted", journal_state(r.path, created), "", ""};
}

Reintegrator::Outcome Reintegrator::content(KmlRecord& r, const std::string& client,
                                            const std::string& host, bool again) {
  const FileState* cur = index_.find(r.path);
  uint32_t base = r.prevrec;
  if (cur && cur->type == FileType::File && cur->content_id == r.hash) {
    return {"accepted", cur->version, "identical content", ""};
  }
  // The bytes come from an upload, or from a file here that has them (a
  // conflict copy of an earlier attempt, a copy under another name).
  bool needs_bytes = r.size > 0;
  if (needs_bytes && !have_upload(r.hash) && !index_.path_of_content(r.hash)) {
    return {"superseded", 0, protocol::kNotUploaded, ""};
  }
  bool clean = cur ? (cur->type == FileType::File && base_ok(cur, r.path, client, base)) : true;
  if (clean) {
    // Also a file the server deleted meanwhile (cur == null, base != 0): an
    // update wins over a delete, so the client's version comes back.
    bool created = !cur;
    bool restored = !cur && base != 0 && !successor(r.path, client, base);
    std::string why;
    if (!apply_record(r, &why)) {
      if (!again) {
        // A user here created, wrote or removed the file since
        // reconcile_now() looked (the applier never replaces such a
        // change): it is journaled now, and both versions are judged again.
        tracker_.reconcile_now(r.path);
        return content(r, client, host, true);
      }
      return {"superseded", 0, why, ""};
    }
    uint32_t version = journal_state(r.path, created);
    produced(r.path, client, base, version);
    if (restored) {
      note_conflict({r.path, "", "update/delete", client, "client", uint64_t(time(nullptr))});
      return {"conflict", version, "restored: updated after a delete", ""};
    }
    return {"accepted", version, "", ""};
  }
  // Both sides changed it.
  std::string kind = base == 0 ? "create/create" : "update/update";
  bool client_wins = false;
  switch (config_.conflict) {
    case ConflictPolicy::ServerWins:
    case ConflictPolicy::KeepBoth:
      client_wins = false;
      break;
    case ConflictPolicy::ClientWins:
      client_wins = true;
      break;
    case ConflictPolicy::NewestWins:
      client_wins =
          int64_t(r.v_obj_new.mtime_sec) * 1000000000 + r.v_obj_new.mtime_nsec > cur->mtime_ns;
      break;
  }
  std::string copy = conflict_copy_name(r.path, host);
  std::string why;
  if (client_wins) {
    // The server's version moves aside, the client's takes the name.
    KmlRecord mv;
    mv.opcode = KmlOp::Rename;
    mv.src = r.path;
    mv.target = copy;
    if (!apply_record(mv, &why)) return {"superseded", 0, why, ""};
    journal_record(mv);
    journal_state(copy, false);
    if (!apply_record(r, &why)) return {"superseded", 0, why, ""};
    uint32_t recno = journal_state(r.path, true);
    note_conflict({r.path, copy, kind, client, "client", uint64_t(time(nullptr))});
    return {"conflict", recno, "client version kept; server version moved aside", copy};
  }
  // The client's version is kept under the copy name; the server's stays,
  // and is journaled again so the client takes it back.
  KmlRecord aside = r;
  aside.path = copy;
  if (!apply_record(aside, &why)) return {"superseded", 0, why, ""};
  journal_state(copy, true);
  uint32_t recno = journal_state(r.path, false);
  note_conflict({r.path, copy, kind, client, "server", uint64_t(time(nullptr))});
  return {"conflict", recno, "server version kept; client version kept beside it", copy};
}

Reintegrator::Outcome Reintegrator::symlink(KmlRecord& r, const std::string& client,
                                            const std::string& host) {
  const FileState* cur = index_.find(r.path);
  if (cur && cur->type == FileType::Symlink && cur->target == r.target) {
    return {"accepted", cur->version, "identical link", ""};
  }
  if (!cur) return simple(r);
  std::string copy = conflict_copy_name(r.path, host);
  KmlRecord aside = r;
  aside.path = copy;
  std::string why;
  if (!apply_record(aside, &why)) return {"superseded", 0, why, ""};
  journal_state(copy, true);
  uint32_t recno = journal_state(r.path, false);
  note_conflict({r.path, copy, "create/create", client, "server", uint64_t(time(nullptr))});
  return {"conflict", recno, "server entry kept; client link kept beside it", copy};
}

Reintegrator::Outcome Reintegrator::unlink(KmlRecord& r, const std::string& client) {
  const FileState* cur = index_.find(r.path);
  if (!cur) return {"accepted", 0, "already gone", ""};
  if (!base_ok(cur, r.path, client, r.prevrec)) {
    // Deleted there, changed here: the change wins and goes back.
    note_conflict({r.path, "", "delete/update", client, "server", uint64_t(time(nullptr))});
    return {"conflict", journal_state(r.path, true), "kept: changed on the server after the base",
            ""};
  }
  std::string why;
  if (!apply_record(r, &why)) return {"superseded", 0, why, ""};
  uint32_t recno = journal_record(r);
  produced(r.path, client, r.prevrec, 0);
  return {"accepted", recno, "", ""};
}

Reintegrator::Outcome Reintegrator::rmdir(KmlRecord& r, const std::string& client) {
  const FileState* cur = index_.find(r.path);
  if (!cur) return {"accepted", 0, "already gone", ""};
  if (!index_.paths_under(r.path).empty()) {
    // Entries were created in it meanwhile: the directory stays, with all
    // of it journaled again so the deleting client gets it back.
    note_conflict({r.path, "", "delete/create-inside", client, "server", uint64_t(time(nullptr))});
    return {"conflict", journal_tree(r.path), "kept: it holds entries the client did not know", ""};
  }
  std::string why;
  if (!apply_record(r, &why)) return {"superseded", 0, why, ""};
  return {"accepted", journal_record(r), "", ""};
}

Reintegrator::Outcome Reintegrator::rename(KmlRecord& r, const std::string& client) {
  const FileState* src = index_.find(r.src);
  const FileState* tgt = index_.find(r.target);
  if (!src) {
    if (tgt) return {"accepted", tgt->version, "already renamed", ""};
    // Gone on the server (deleted or renamed there): the client sends its
    // object again as a new one.
    note_conflict({r.src, r.target, "rename/delete", client, "client", uint64_t(time(nullptr))});
    return {"resend", 0, "the source is gone on the server", ""};
  }
  if (tgt && !(tgt->type == FileType::Dir && src->type == FileType::Dir &&
               index_.paths_under(r.target).empty())) {
    // Something else took the target name meanwhile: both stay; the client
    // sends its object again under the target name, where it meets the
    // usual create/create handling, and gets the source back.
    note_conflict({r.target, "", "rename/create", client, "server", uint64_t(time(nullptr))});
    journal_tree(r.src);
    return {"resend", 0, "the target name is taken on the server", ""};
  }
  std::string why;
  if (!apply_record(r, &why)) return {"superseded", 0, why, ""};
  uint32_t recno = journal_record(r);
  if (const FileState* moved = index_.find(r.target)) {
    FileState fs = *moved;
    fs.version = recno;
    index_.put(r.target, fs);
  }
  // The client's index keeps the moved entry's base version.
  produced(r.target, client, r.prevrec, recno);
  return {"accepted", recno, "", ""};
}

Reintegrator::Outcome Reintegrator::setattr(KmlRecord& r, const std::string& client) {
  const FileState* cur = index_.find(r.path);
  if (!cur) return {"superseded", 0, "not on the server", ""};
  if (!base_ok(cur, r.path, client, r.prevrec) && config_.conflict == ConflictPolicy::ServerWins) {
    note_conflict({r.path, "", "attributes", client, "server", uint64_t(time(nullptr))});
    return {"conflict", journal_state(r.path, false), "server attributes kept", ""};
  }
  std::string why;
  if (!apply_record(r, &why)) return {"superseded", 0, why, ""};
  uint32_t recno = journal_record(r);
  if (const FileState* now = index_.find(r.path)) {
    FileState fs = *now;
    fs.version = recno;
    index_.put(r.path, fs);
  }
  produced(r.path, client, r.prevrec, recno);
  return {"accepted", recno, "", ""};
}

}  // namespace intersync
