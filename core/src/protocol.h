// The wire protocol's vocabulary, shared by the server side (request
// handler), the client side (replicator) and the CGI program. The URL space
// is the one a CGI deployment has: /cgi-bin/intersync/<fset>/<endpoint>.
// See doc/PROTOCOL.md for the endpoints and their bodies.
#pragma once

#include <string>
#include <string_view>

namespace intersync::protocol {

inline constexpr std::string_view kUrlPrefix = "/cgi-bin/intersync/";

inline constexpr const char* kHeaderHead = "X-Intersync-Head";        // server's last recno
inline constexpr const char* kHeaderUuid = "X-Intersync-Uuid";        // fileset uuid
inline constexpr const char* kHeaderContent = "X-Intersync-Content";  // content id (hex)

inline constexpr const char* kKmlMediaType = "application/x-intermezzo-kml";

// Long-polls are answered (empty) after at most this long, well inside any
// client idle timeout.
inline constexpr unsigned kMaxWaitSeconds = 60;
// Files up to this size travel in bulk `contents` requests.
inline constexpr uint64_t kSmallFile = 1 << 20;
// The detail of a reintegrate result "superseded" for a CONTENT record
// whose bytes were not uploaded: the client checks whether it still holds
// that content and, if so, sends it again.
inline constexpr const char* kNotUploaded = "content was not uploaded";
// The most bytes of journal one `kml` answer carries.
inline constexpr uint64_t kMaxKmlResponse = 4 << 20;

inline std::string url(std::string_view fset, std::string_view endpoint) {
  std::string u(kUrlPrefix);
  u.append(fset).append("/").append(endpoint);
  return u;
}

}  // namespace intersync::protocol
