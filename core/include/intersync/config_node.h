// Helpers for reading a YAML subtree with errors that name the file, line and
// column. Core uses them for its own keys and hands each plugin its subtree
// with the same helpers, so that every part of the configuration reports
// mistakes the same way ("intersync.yaml:12:5: unknown key 'listn' in
// fileset 'docs'").
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include "intersync/result.h"

namespace intersync {

class ConfigNode {
 public:
  ConfigNode() = default;
  ConfigNode(YAML::Node node, std::string file, std::string what)
      : node_(std::move(node)), file_(std::move(file)), what_(std::move(what)) {}

  const YAML::Node& yaml() const { return node_; }
  const std::string& file() const { return file_; }
  const std::string& what() const { return what_; }  // "fileset 'docs'"
  bool defined() const { return node_.IsDefined() && !node_.IsNull(); }

  // "file:line:col: " for this node, or for its key `key` when present.
  std::string where() const;
  std::string where(std::string_view key) const;
  Error error(std::string_view message) const;  // -EINVAL, prefixed with where()
  Error error_at(std::string_view key, std::string_view message) const;

  // Requires a mapping whose keys are all in `allowed`.
  Status expect_map(std::initializer_list<std::string_view> allowed) const;

  bool has(std::string_view key) const;
  ConfigNode child(std::string_view key, std::string what) const;

  // Scalars with type checks; `fallback` when the key is absent.
  Result<std::string> get_string(std::string_view key) const;  // required
  Result<std::string> get_string(std::string_view key, std::string fallback) const;
  Result<bool> get_bool(std::string_view key, bool fallback) const;
  Result<int64_t> get_int(std::string_view key, int64_t fallback, int64_t min, int64_t max) const;

 private:
  YAML::Node node_;
  std::string file_;
  std::string what_;
};

}  // namespace intersync
