// libFuzzer target for the path and URL helpers every network or journal
// path goes through: normalize_rel_path() (path_util.h) and the URL codec
// of http_codec.h (url_decode, url_encode_path, parse_target). It checks
// that an accepted path is canonical (relative, no "..", ".", empty or
// over-long component, no NUL) and that normalizing is idempotent, that
// url_decode agrees with a reference decoder written here, and that
// url_encode_path / url_decode round-trip.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "intersync/http_codec.h"
#include "path_util.h"

using namespace intersync;

namespace {

[[noreturn]] void fail(const char* what, std::string_view input) {
  std::fprintf(stderr, "fuzz_path: invariant violated: %s (input of %zu bytes)\n", what,
               input.size());
  std::abort();
}

#define CHECK(cond, input)           \
  do {                               \
    if (!(cond)) fail(#cond, input); \
  } while (0)

// An accepted path must be in the canonical form the rest of the code
// relies on.
void check_canonical(const std::string& p, std::string_view input) {
  CHECK(p.size() <= kMaxPathBytes, input);
  CHECK(p.find('\0') == std::string::npos, input);
  CHECK(p.empty() || (p.front() != '/' && p.back() != '/'), input);
  CHECK(p.find("//") == std::string::npos, input);
  size_t i = 0;
  while (!p.empty() && i <= p.size()) {
    size_t j = p.find('/', i);
    if (j == std::string::npos) j = p.size();
    std::string_view comp(p.data() + i, j - i);
    CHECK(!comp.empty() && comp.size() <= kMaxNameBytes, input);
    CHECK(comp != "." && comp != "..", input);
    i = j + 1;
  }
}

void check_normalize(std::string_view input) {
  Result<std::string> strict = normalize_rel_path(input, false);
  Result<std::string> lenient = normalize_rel_path(input, true);
  if (strict) {
    check_canonical(*strict, input);
    CHECK(lenient.ok() && *lenient == *strict, input);
  } else {
    CHECK(strict.error().code == -EINVAL || strict.error().code == -ENAMETOOLONG, input);
  }
  if (!lenient) {
    // Only a leading slash separates the two modes.
    CHECK(!strict.ok(), input);
    return;
  }
  const std::string& p = *lenient;
  check_canonical(p, input);
  CHECK(p.size() <= input.size(), input);
  bool absolute = !input.empty() && input.front() == '/';
  CHECK(strict.ok() == !absolute, input);
  // Idempotent in both modes.
  Result<std::string> again = normalize_rel_path(p, false);
  CHECK(again.ok() && *again == p, input);
  if (p.size() < kMaxPathBytes) {
    again = normalize_rel_path("/" + p, true);
    CHECK(again.ok() && *again == p, input);
  }

  // The helpers on canonical paths.
  if (!p.empty()) {
    std::string parent = parent_of(p);
    std::string name = base_name(p);
    CHECK(!name.empty() && name.find('/') == std::string::npos, input);
    CHECK(join_rel(parent, name) == p, input);
    CHECK(is_same_or_under(p, parent), input);
    CHECK(is_same_or_under(p, p), input);
    CHECK(!is_same_or_under(parent, p), input);
    if (is_same_or_under(p, ".intermezzo")) CHECK(is_internal_path(p), input);
  }
  CHECK(is_same_or_under(p, ""), input);
  (void)is_internal_path(p);

  // What a client puts in a file/<path> URL comes back unchanged.
  std::string encoded = url_encode_path(p);
  std::optional<std::string> decoded = url_decode(encoded);
  CHECK(decoded && *decoded == p, input);
}

int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// An independent percent-decoder: url_decode must agree with it.
std::optional<std::string> reference_decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    if (s[i] != '%') {
      out += s[i++];
      continue;
    }
    if (s.size() - i < 3 || hex(s[i + 1]) < 0 || hex(s[i + 2]) < 0) return std::nullopt;
    int c = hex(s[i + 1]) * 16 + hex(s[i + 2]);
    if (c == 0) return std::nullopt;
    out += static_cast<char>(c);
    i += 3;
  }
  return out;
}

void check_url(std::string_view input) {
  std::optional<std::string> decoded = url_decode(input);
  std::optional<std::string> expected = reference_decode(input);
  CHECK(decoded.has_value() == expected.has_value(), input);
  if (decoded) CHECK(*decoded == *expected, input);

  std::string encoded = url_encode_path(input);
  for (char c : encoded) CHECK(c > ' ' && c < 0x7f && c != '?' && c != '#', input);
  bool has_nul = input.find('\0') != std::string_view::npos;
  std::optional<std::string> back = url_decode(encoded);
  CHECK(back.has_value() == !has_nul, input);
  if (back) CHECK(*back == input, input);

  std::optional<ParsedTarget> target = parse_target(input);
  if (target) {
    CHECK(target->path == reference_decode(input.substr(0, input.find('?'))), input);
    if (!has_nul) CHECK(target->path.find('\0') == std::string::npos, input);
    for (const auto& [key, value] : target->query) {
      CHECK(target->param(key).has_value(), input);
      (void)value;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  check_normalize(input);
  check_url(input);
  return 0;
}
