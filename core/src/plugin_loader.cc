// Plugin discovery and descriptor checks; see plugin_loader.h.
#include "plugin_loader.h"

#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstring>

#include "intersync/log.h"
#include "intersync_build_config.h"

namespace intersync {

struct PluginRegistry::Library {
  uv_lib_t lib{};
  bool open = false;
  ~Library() {
    if (open) uv_dlclose(&lib);
  }
};

const char* plugin_kind_name(uint32_t kind) {
  switch (kind) {
    case INTERSYNC_PLUGIN_BACKEND:
      return "backend";
    case INTERSYNC_PLUGIN_TRANSPORT:
      return "transport";
  }
  return "unknown";
}

namespace {

bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string self_exe() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

}  // namespace

PluginRegistry::PluginRegistry(std::vector<std::string> dirs)
    : dirs_(dirs.empty() ? default_search_dirs() : std::move(dirs)) {}

PluginRegistry::~PluginRegistry() = default;

std::vector<std::string> PluginRegistry::default_search_dirs() {
  // A binary run from the build tree uses the plugins built beside it, so
  // tests and the demo never pick up an older installed copy.
  std::string build_root = INTERSYNC_BUILD_ROOT;
  std::string exe = self_exe();
  if (!exe.empty() && exe.compare(0, build_root.size() + 1, build_root + "/") == 0) {
    return {build_root + "/plugins"};
  }
  return {INTERSYNC_PLUGIN_INSTALL_DIR};
}

Result<const LoadedPlugin*> PluginRegistry::load_file(const std::string& path,
                                                      uint32_t expected_kind,
                                                      const std::string& expected_name) {
  auto lib = std::make_unique<Library>();
  if (uv_dlopen(path.c_str(), &lib->lib) != 0) {
    std::string msg = "plugin " + path + ": cannot load: " + uv_dlerror(&lib->lib);
    uv_dlclose(&lib->lib);
    return make_error(-ENOENT, msg);
  }
  lib->open = true;
  void* sym = nullptr;
  if (uv_dlsym(&lib->lib, INTERSYNC_PLUGIN_SYMBOL, &sym) != 0 || sym == nullptr) {
    return make_error(-ENOEXEC, "plugin " + path + ": refused: it does not export " +
                                    INTERSYNC_PLUGIN_SYMBOL + "() (not an intersync plugin?)");
  }
  auto entry = reinterpret_cast<intersync_plugin_entry_fn>(sym);
  const intersync_plugin_descriptor_t* d = entry();
  if (d == nullptr) return make_error(-ENOEXEC, "plugin " + path + ": refused: null descriptor");
  if (d->abi_version != INTERSYNC_PLUGIN_ABI_VERSION) {
    return make_error(-ENOEXEC, "plugin " + path + ": refused: plugin ABI version " +
                                    std::to_string(d->abi_version) + ", intersyncd expects " +
                                    std::to_string(INTERSYNC_PLUGIN_ABI_VERSION));
  }
  const char* sig = d->build_signature ? d->build_signature : "(none)";
  if (std::strcmp(sig, INTERSYNC_BUILD_SIGNATURE) != 0) {
    return make_error(-ENOEXEC, std::string("plugin ") + path + ": refused: built as '" + sig +
                                    "', intersyncd is built as '" + INTERSYNC_BUILD_SIGNATURE +
                                    "'; rebuild the plugin with the same compiler, C++ library "
                                    "and libuv");
  }
  std::string name = d->name ? d->name : "";
  if (name.empty() || d->create == nullptr) {
    return make_error(-ENOEXEC, "plugin " + path + ": refused: descriptor has no name or factory");
  }
  if (d->kind != INTERSYNC_PLUGIN_BACKEND && d->kind != INTERSYNC_PLUGIN_TRANSPORT) {
    return make_error(-ENOEXEC,
                      "plugin " + path + ": refused: unknown kind " + std::to_string(d->kind));
  }
  if (expected_kind != 0 && d->kind != expected_kind) {
    return make_error(-ENOEXEC, "plugin " + path + ": refused: it is a " +
                                    plugin_kind_name(d->kind) + " plugin, a " +
                                    plugin_kind_name(expected_kind) + " was expected");
  }
  if (!expected_name.empty() && name != expected_name) {
    return make_error(-ENOEXEC, "plugin " + path + ": refused: it calls itself '" + name +
                                    "', its file name says '" + expected_name + "'");
  }
  auto key = std::make_pair(d->kind, name);
  if (auto it = registered_.find(key); it != registered_.end()) {
    return make_error(-EEXIST, "plugin " + path + ": refused: duplicate " +
                                   plugin_kind_name(d->kind) + " name '" + name +
                                   "', already loaded from " + it->second.file);
  }
  LoadedPlugin& p = registered_[key];
  p.file = path;
  p.name = name;
  p.kind = d->kind;
  p.descriptor = d;
  libraries_.push_back(std::move(lib));
  log_debug("loaded {} plugin '{}' from {}", plugin_kind_name(d->kind), name, path);
  return &p;
}

Result<const LoadedPlugin*> PluginRegistry::find_or_load(uint32_t kind, const std::string& name) {
  if (auto it = registered_.find({kind, name}); it != registered_.end()) return &it->second;
  std::string file = std::string(plugin_kind_name(kind)) + "-" + name + ".so";
  std::string tried;
  for (const auto& dir : dirs_) {
    // Installed layout: <dir>/<file>; build tree: <dir>/<kind>-<name>/<file>.
    for (const std::string& candidate :
         {dir + "/" + file, dir + "/" + file.substr(0, file.size() - 3) + "/" + file}) {
      if (file_exists(candidate)) return load_file(candidate, kind, name);
      tried += (tried.empty() ? "" : ", ") + candidate;
    }
  }
  return make_error(-ENOENT, std::string("no ") + plugin_kind_name(kind) + " plugin named '" +
                                 name + "' (looked for " + tried + ")");
}

Result<std::unique_ptr<Backend>> PluginRegistry::create_backend(const std::string& name) {
  auto p = find_or_load(INTERSYNC_PLUGIN_BACKEND, name);
  if (!p) return p.error();
  auto* obj = static_cast<Backend*>((*p)->descriptor->create());
  if (!obj) return make_error(-ENOMEM, "backend plugin '" + name + "': factory failed");
  return std::unique_ptr<Backend>(obj);
}

Result<std::unique_ptr<Transport>> PluginRegistry::create_transport(const std::string& name) {
  auto p = find_or_load(INTERSYNC_PLUGIN_TRANSPORT, name);
  if (!p) return p.error();
  auto* obj = static_cast<Transport*>((*p)->descriptor->create());
  if (!obj) return make_error(-ENOMEM, "transport plugin '" + name + "': factory failed");
  return std::unique_ptr<Transport>(obj);
}

}  // namespace intersync
