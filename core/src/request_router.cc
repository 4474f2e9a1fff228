// Authentication and routing of protocol requests; see request_router.h.
#include "request_router.h"

#include <openssl/crypto.h>

#include "intersync/log.h"
#include "protocol.h"

namespace intersync {
namespace {

HttpResponseHead error_head(int status, const std::string& reason) {
  HttpResponseHead h;
  h.status = status;
  h.headers.set("Content-Type", "text/plain; charset=utf-8");
  h.headers.set("X-Intersync-Error", reason);
  if (status == 401) h.headers.set("WWW-Authenticate", "Bearer realm=\"intersync\"");
  h.content_length = 0;
  h.keep_alive = false;
  return h;
}

}  // namespace

void RequestRouter::add(FilesetServer* fileset) {
  filesets_[fileset->config().name] = fileset;
}

void RequestRouter::remove(FilesetServer* fileset) {
  filesets_.erase(fileset->config().name);
  peers_.erase(fileset->config().name);
}

std::optional<RequestRouter::Route> RequestRouter::route(const std::string& target) const {
  auto parsed = parse_target(target);
  if (!parsed) return std::nullopt;
  std::string_view path = parsed->path;
  if (path.substr(0, protocol::kUrlPrefix.size()) != protocol::kUrlPrefix) return std::nullopt;
  path.remove_prefix(protocol::kUrlPrefix.size());
  size_t slash = path.find('/');
  std::string fset(path.substr(0, slash));
  auto it = filesets_.find(fset);
  if (it == filesets_.end()) return std::nullopt;
  Route r;
  r.fileset = it->second;
  r.endpoint =
      slash == std::string_view::npos ? std::string() : std::string(path.substr(slash + 1));
  r.target = std::move(*parsed);
  return r;
}

std::optional<std::string> RequestRouter::authenticate(const FilesetServer& fs,
                                                       const HttpRequestHead& head) const {
  const FilesetConfig& c = fs.config();
  if (c.auth_none) return std::string();
  auto auth = head.headers.get("Authorization");
  if (!auth || auth->substr(0, 7) != "Bearer ") return std::nullopt;
  std::string digest = hash_hex(sha256(auth->substr(7)));
  // Compare with every client, always all of them, so that the time taken
  // says nothing about which digest came close.
  std::optional<std::string> found;
  for (const auto& client : c.clients) {
    if (client.token_sha256.size() == digest.size() &&
        CRYPTO_memcmp(client.token_sha256.data(), digest.data(), digest.size()) == 0) {
      found = client.name;
    }
  }
  return found;
}

std::optional<HttpResponseHead> RequestRouter::check_head(const HttpRequestHead& head,
                                                          const std::string& peer) {
  auto r = route(head.target);
  if (!r) return error_head(404, "no such fileset");
  auto client = authenticate(*r->fileset, head);
  if (!client) {
    log_warn("fileset '{}': refused a request from {}: {} bearer token", r->fileset->config().name,
             peer, head.headers.get("Authorization") ? "unknown" : "no");
    return error_head(401, "a valid bearer token is required");
  }
  return std::nullopt;
}

void RequestRouter::handle(HttpRequest&& request, std::shared_ptr<ResponseWriter> writer) {
  auto r = route(request.head.target);
  auto client = r ? authenticate(*r->fileset, request.head) : std::nullopt;
  if (!r || !client) {
    // check_head already answered these; a transport that skipped it still
    // gets the same refusal.
    return respond(*writer, r ? 401 : 404, r ? "unauthorized\n" : "no such fileset\n");
  }
  std::string fset = r->fileset->config().name;
  std::string name = client->empty() ? request.peer : *client;
  Peer& p = peers_[fset][name];
  p.address = request.peer;
  p.last_seen = std::chrono::steady_clock::now();
  ++p.open_requests;
  // The count drops when the response ends or the peer goes away.
  auto done = [this, fset, name] {
    auto fit = peers_.find(fset);
    if (fit == peers_.end()) return;
    auto pit = fit->second.find(name);
    if (pit == fit->second.end()) return;
    if (pit->second.open_requests > 0) --pit->second.open_requests;
    pit->second.last_seen = std::chrono::steady_clock::now();
  };
  // Wraps the writer to learn when the response is over, however it ends.
  struct EndWatch : ResponseWriter {
    std::shared_ptr<ResponseWriter> inner;
    std::function<void()> done;
    std::vector<std::function<void()>> abort_callbacks;
    void finished() {
      if (auto d = std::exchange(done, nullptr)) d();
    }
    void send_head(HttpResponseHead h) override { inner->send_head(std::move(h)); }
    void write(std::string d, std::function<void()> f) override {
      inner->write(std::move(d), std::move(f));
    }
    void end() override {
      inner->end();
      finished();
    }
    void abort() override {
      inner->abort();
      finished();
    }
    bool closed() const override { return inner->closed(); }
    void on_abort(std::function<void()> cb) override { abort_callbacks.push_back(std::move(cb)); }
    std::string peer() const override { return inner->peer(); }
  };
  auto watch = std::make_shared<EndWatch>();
  watch->inner = std::move(writer);
  watch->done = done;
  watch->inner->on_abort([weak = std::weak_ptr<EndWatch>(watch)] {
    auto w = weak.lock();
    if (!w) return;
    w->finished();
    for (auto& cb : std::exchange(w->abort_callbacks, {})) cb();
  });
  r->fileset->handle(r->endpoint, r->target, std::move(request), watch, name);
}

nlohmann::json RequestRouter::peers(const std::string& fset) const {
  nlohmann::json out = nlohmann::json::array();
  auto it = peers_.find(fset);
  if (it == peers_.end()) return out;
  auto now = std::chrono::steady_clock::now();
  for (const auto& [name, p] : it->second) {
    auto idle = std::chrono::duration_cast<std::chrono::seconds>(now - p.last_seen).count();
    if (p.open_requests == 0 && idle > 90) continue;
    out.push_back({{"name", name}, {"address", p.address}, {"idle_seconds", idle}});
  }
  return out;
}

}  // namespace intersync
