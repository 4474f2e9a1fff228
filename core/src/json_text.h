// JSON text of a value whose strings may hold file names from disk or from
// a client's records, which need not be UTF-8: nlohmann::json::dump() would
// throw on them; here an invalid byte becomes U+FFFD.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace intersync {

inline std::string json_text(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace intersync
