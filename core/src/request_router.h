// The RequestHandler a transport's listener talks to: it checks the bearer
// token of every request against the fileset's clients before a byte of the
// body is read (constant-time comparison of SHA-256 digests; tokens are
// never stored or logged in clear), remembers which clients are connected,
// and routes /cgi-bin/intersync/<fset>/<endpoint> to that fileset's server.
// Several filesets may share one listener.
#pragma once

#include <chrono>
#include <map>
#include <string>

#include "fileset_server.h"
#include "intersync/transport.h"

namespace intersync {

class RequestRouter : public RequestHandler {
 public:
  void add(FilesetServer* fileset);
  void remove(FilesetServer* fileset);
  bool empty() const { return filesets_.empty(); }

  std::optional<HttpResponseHead> check_head(const HttpRequestHead& head,
                                             const std::string& peer) override;
  void handle(HttpRequest&& request, std::shared_ptr<ResponseWriter> writer) override;

  struct Peer {
    std::string address;
    std::chrono::steady_clock::time_point last_seen;
    unsigned open_requests = 0;
  };
  // Clients seen within the last 90 seconds or with a request open.
  nlohmann::json peers(const std::string& fset) const;

 private:
  // Splits the target; nullopt when it is not under /cgi-bin/intersync/.
  struct Route {
    FilesetServer* fileset = nullptr;
    std::string endpoint;
    ParsedTarget target;
  };
  std::optional<Route> route(const std::string& target) const;
  // The client name for the request's token, "" for auth: none, nullopt if
  // the token is missing or unknown.
  std::optional<std::string> authenticate(const FilesetServer& fs,
                                          const HttpRequestHead& head) const;

  std::map<std::string, FilesetServer*> filesets_;
  std::map<std::string, std::map<std::string, Peer>> peers_;  // fset -> client -> peer
};

}  // namespace intersync
