// Finds, loads and checks plugins. A plugin is loaded with uv_dlopen only
// when a fileset names it, from <dir>/<kind>-<name>.so in the configured
// plugin directories or, when none are configured, from the build tree (for
// a binary run from it) or the install directory. Before its factory is ever
// called the descriptor is checked: ABI version, build signature, kind and
// name, and a name already registered by another file is refused. Every
// refusal names the file and both values.
#pragma once

#include <uv.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "intersync/backend.h"
#include "intersync/plugin.h"
#include "intersync/result.h"
#include "intersync/transport.h"

namespace intersync {

struct LoadedPlugin {
  std::string file;
  std::string name;
  uint32_t kind = 0;
  const intersync_plugin_descriptor_t* descriptor = nullptr;
};

const char* plugin_kind_name(uint32_t kind);  // "backend", "transport"

class PluginRegistry {
 public:
  // `dirs` empty: the built-in search path (see default_search_dirs()).
  explicit PluginRegistry(std::vector<std::string> dirs = {});
  ~PluginRegistry();
  PluginRegistry(const PluginRegistry&) = delete;
  PluginRegistry& operator=(const PluginRegistry&) = delete;

  // Loads one file and registers its descriptor. `expected_kind`/`name`
  // (when non-zero/non-empty) must match what the descriptor says.
  Result<const LoadedPlugin*> load_file(const std::string& path, uint32_t expected_kind = 0,
                                        const std::string& expected_name = {});
  // Returns the registered plugin or finds its file and loads it.
  Result<const LoadedPlugin*> find_or_load(uint32_t kind, const std::string& name);

  Result<std::unique_ptr<Backend>> create_backend(const std::string& name);
  Result<std::unique_ptr<Transport>> create_transport(const std::string& name);

  const std::vector<std::string>& search_dirs() const { return dirs_; }
  static std::vector<std::string> default_search_dirs();

 private:
  struct Library;
  std::vector<std::string> dirs_;
  std::vector<std::unique_ptr<Library>> libraries_;
  std::map<std::pair<uint32_t, std::string>, LoadedPlugin> registered_;
};

}  // namespace intersync
