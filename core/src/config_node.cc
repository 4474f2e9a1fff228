// ConfigNode: typed, position-aware access to one YAML mapping. Core reads its
// own keys with it and every plugin reads its subtree with it, so that all
// configuration mistakes are reported alike, as "FILE:LINE:COL: message" with
// the 1-based line and column yaml-cpp recorded while parsing.
//
// Nothing here throws: keys are found by walking the mapping instead of with
// YAML::Node::operator[] (which throws on a scalar and creates zombie nodes
// whose Mark() throws), and every node's type is checked before it is read.
#include "intersync/config_node.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <string>
#include <string_view>
#include <vector>

namespace intersync {
namespace {

// The key node and value node of `key` in a mapping; `found` is false when
// the key is absent or the node is not a mapping.
struct Entry {
  YAML::Node key;
  YAML::Node value;
  bool found = false;
};

Entry find_entry(const YAML::Node& map, std::string_view key) {
  if (!map.IsDefined() || !map.IsMap()) return {};
  for (const auto& kv : map) {
    if (kv.first.IsScalar() && kv.first.Scalar() == key) return {kv.first, kv.second, true};
  }
  return {};
}

std::string position(const std::string& file, const YAML::Node& node) {
  YAML::Mark mark = node.IsDefined() ? node.Mark() : YAML::Mark::null_mark();
  if (mark.is_null()) return file.empty() ? std::string() : file + ": ";
  std::string lc = std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1) + ": ";
  return file.empty() ? lc : file + ":" + lc;
}

// An absent subtree still needs a position, so that a plugin reporting a
// missing key in it points at the entry that lacks it. yaml-cpp offers no
// way to give a node a mark other than parsing it, hence a null scalar
// parsed at the parent's line and column.
YAML::Node null_node_at(const YAML::Node& parent) {
  YAML::Mark mark = parent.IsDefined() ? parent.Mark() : YAML::Mark::null_mark();
  if (mark.is_null()) return YAML::Node();
  return YAML::Load(std::string(mark.line, '\n') + std::string(mark.column, ' ') + "~");
}

const char* type_name(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Null:
      return "empty";
    default:
      return "a scalar";
  }
}

// A quoted scalar is a string in YAML, whatever it looks like, so "370" is
// not accepted where a number is expected. yaml-cpp tags plain scalars "?".
bool is_plain_scalar(const YAML::Node& node) {
  return node.IsScalar() && node.Tag() == "?";
}

Error not_a_mapping(const ConfigNode& n) {
  return n.error(n.what() + " must be a mapping, not " + type_name(n.yaml()));
}

// The error for a value of the wrong type, at the value's own position; an
// empty value has none of its own (yaml-cpp marks the next token), so that
// error points at its key.
Error bad_value(const ConfigNode& n, const Entry& e, std::string_view expected) {
  const YAML::Node& value = e.value;
  std::string msg = "'" + e.key.Scalar() + "' in " + n.what();
  msg += value.IsNull() ? " has no value: it must be " : " must be ";
  msg += expected;
  if (!value.IsNull() && !value.IsScalar()) msg += std::string(", not ") + type_name(value);
  return make_error(-EINVAL, position(n.file(), value.IsNull() ? e.key : value) + msg);
}

}  // namespace

std::string ConfigNode::where() const {
  return position(file_, node_);
}

std::string ConfigNode::where(std::string_view key) const {
  Entry e = find_entry(node_, key);
  return e.found ? position(file_, e.key) : where();
}

Error ConfigNode::error(std::string_view message) const {
  return make_error(-EINVAL, where() + std::string(message));
}

Error ConfigNode::error_at(std::string_view key, std::string_view message) const {
  return make_error(-EINVAL, where(key) + std::string(message));
}

Status ConfigNode::expect_map(std::initializer_list<std::string_view> allowed) const {
  if (!defined()) return Status::Ok();
  if (!node_.IsMap()) return not_a_mapping(*this);
  std::vector<std::string> seen;
  for (const auto& kv : node_) {
    std::string here = position(file_, kv.first);
    if (!kv.first.IsScalar()) {
      return make_error(-EINVAL,
                        here + "keys in " + what_ + " must be names, not " + type_name(kv.first));
    }
    const std::string& key = kv.first.Scalar();
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      return make_error(-EINVAL, here + "unknown key '" + key + "' in " + what_);
    }
    // yaml-cpp keeps duplicate keys and lookups see only the first, so a
    // repeated key would silently lose its second value.
    if (std::find(seen.begin(), seen.end(), key) != seen.end()) {
      return make_error(-EINVAL, here + "key '" + key + "' appears twice in " + what_);
    }
    seen.push_back(key);
  }
  return Status::Ok();
}

bool ConfigNode::has(std::string_view key) const {
  return find_entry(node_, key).found;
}

ConfigNode ConfigNode::child(std::string_view key, std::string what) const {
  Entry e = find_entry(node_, key);
  return ConfigNode(e.found ? e.value : null_node_at(node_), file_, std::move(what));
}

Result<std::string> ConfigNode::get_string(std::string_view key) const {
  if (defined() && !node_.IsMap()) return not_a_mapping(*this);
  Entry e = find_entry(node_, key);
  if (!e.found) return error("missing key '" + std::string(key) + "' in " + what_);
  if (!e.value.IsScalar()) return bad_value(*this, e, "a string");
  return e.value.Scalar();
}

Result<std::string> ConfigNode::get_string(std::string_view key, std::string fallback) const {
  if (defined() && !node_.IsMap()) return not_a_mapping(*this);
  if (!has(key)) return fallback;
  return get_string(key);
}

Result<bool> ConfigNode::get_bool(std::string_view key, bool fallback) const {
  if (defined() && !node_.IsMap()) return not_a_mapping(*this);
  Entry e = find_entry(node_, key);
  if (!e.found) return fallback;
  // YAML 1.2 booleans only: yaml-cpp would also take yes/no/on/off, which
  // YAML 1.2 reads as strings and which hide typos such as "flase".
  if (is_plain_scalar(e.value)) {
    const std::string& s = e.value.Scalar();
    if (s == "true" || s == "True" || s == "TRUE") return true;
    if (s == "false" || s == "False" || s == "FALSE") return false;
  }
  return bad_value(*this, e, "true or false");
}

Result<int64_t> ConfigNode::get_int(std::string_view key, int64_t fallback, int64_t min,
                                    int64_t max) const {
  if (defined() && !node_.IsMap()) return not_a_mapping(*this);
  Entry e = find_entry(node_, key);
  if (!e.found) return fallback;
  Error bad =
      bad_value(*this, e, "an integer from " + std::to_string(min) + " to " + std::to_string(max));
  if (!is_plain_scalar(e.value)) return bad;
  const std::string& s = e.value.Scalar();
  int64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size() || v < min || v > max) {
    return bad;
  }
  return v;
}

}  // namespace intersync
