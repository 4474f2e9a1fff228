// Tests of the plugin loader against real shared objects: the fixtures in
// tests/fixtures/plugins (a good backend, and plugins broken in one way
// each: ABI version, build signature, missing symbol, duplicate name, wrong
// kind, not an ELF file) laid out as an installed plugin directory, and the
// real plugins of this build found through the default (build-tree) search.
// Every refusal must name the file and both values that disagree.
#include <catch2/catch.hpp>
#include <cerrno>
#include <memory>
#include <string>
#include <vector>

#include "intersync/backend.h"
#include "intersync/plugin.h"
#include "intersync/transport.h"
#include "plugin_loader.h"

#ifndef FIXTURE_PLUGIN_DIR
#error "FIXTURE_PLUGIN_DIR must name the build directory of tests/fixtures/plugins"
#endif

namespace {

using Catch::Matchers::Contains;
using intersync::LoadedPlugin;
using intersync::PluginRegistry;

const std::string kFixtureDir = FIXTURE_PLUGIN_DIR;

std::string fixture(const std::string& file) {
  return kFixtureDir + "/" + file;
}

}  // namespace

TEST_CASE("the good fixture loads from a search dir and creates a working backend") {
  PluginRegistry reg({kFixtureDir});
  REQUIRE(reg.search_dirs() == std::vector<std::string>{kFixtureDir});

  auto p = reg.find_or_load(INTERSYNC_PLUGIN_BACKEND, "fixture");
  REQUIRE(p.ok());
  const LoadedPlugin* plugin = *p;
  CHECK(plugin->file == fixture("backend-fixture.so"));
  CHECK(plugin->name == "fixture");
  CHECK(plugin->kind == INTERSYNC_PLUGIN_BACKEND);
  REQUIRE(plugin->descriptor != nullptr);
  CHECK(plugin->descriptor->abi_version == INTERSYNC_PLUGIN_ABI_VERSION);
  CHECK(std::string(plugin->descriptor->build_signature) == INTERSYNC_BUILD_SIGNATURE);

  // A second lookup returns the registered plugin, not a second load.
  auto again = reg.find_or_load(INTERSYNC_PLUGIN_BACKEND, "fixture");
  REQUIRE(again.ok());
  CHECK(*again == plugin);

  auto backend = reg.create_backend("fixture");
  REQUIRE(backend.ok());
  REQUIRE(*backend != nullptr);
  intersync::Status started = (*backend)->start(nullptr, "/", nullptr);
  CHECK(started.ok());
  (*backend)->stop();
  backend->reset();  // before the registry unloads the library

  // Same name, other kind: a separate namespace, and nothing is found.
  auto transport = reg.create_transport("fixture");
  REQUIRE_FALSE(transport.ok());
  CHECK(transport.error().code == -ENOENT);
}

TEST_CASE("a plugin that includes intersync/plugin.h before any C++ header loads") {
  // INTERSYNC_BUILD_SIGNATURE must not depend on what was included before
  // plugin.h: sorted includes put "intersync/plugin.h" before
  // "intersync/transport.h" (sorted_includes.cc), and the plugin is no less
  // compatible for that.
  CHECK_THAT(INTERSYNC_BUILD_SIGNATURE, !Contains("unknown"));
  PluginRegistry reg({kFixtureDir});
  auto p = reg.find_or_load(INTERSYNC_PLUGIN_TRANSPORT, "sorted");
  INFO((p.ok() ? std::string("loaded") : p.error().message));
  REQUIRE(p.ok());
  CHECK(std::string((*p)->descriptor->build_signature) == INTERSYNC_BUILD_SIGNATURE);
  auto t = reg.create_transport("sorted");
  REQUIRE(t.ok());
  CHECK((*t)->connection_count() == 0);
}

TEST_CASE("a plugin built for another ABI version is refused, naming both versions") {
  PluginRegistry reg({kFixtureDir});
  const std::string path = fixture("backend-abi-next.so");
  auto p = reg.load_file(path, INTERSYNC_PLUGIN_BACKEND);
  REQUIRE_FALSE(p.ok());
  CHECK(p.error().code == -ENOEXEC);
  const std::string& msg = p.error().message;
  CHECK_THAT(msg, Contains(path));
  CHECK_THAT(msg, Contains("ABI version " + std::to_string(INTERSYNC_PLUGIN_ABI_VERSION + 1)));
  CHECK_THAT(msg, Contains("expects " + std::to_string(INTERSYNC_PLUGIN_ABI_VERSION)));

  // Through the search path too, and nothing gets registered.
  auto found = reg.find_or_load(INTERSYNC_PLUGIN_BACKEND, "abi-next");
  REQUIRE_FALSE(found.ok());
  CHECK_THAT(found.error().message, Contains(path));
  CHECK_FALSE(reg.create_backend("abi-next").ok());
}

TEST_CASE("a plugin with a foreign build signature is refused, naming both signatures") {
  PluginRegistry reg({kFixtureDir});
  const std::string path = fixture("backend-badsig.so");
  auto p = reg.load_file(path);
  REQUIRE_FALSE(p.ok());
  CHECK(p.error().code == -ENOEXEC);
  const std::string& msg = p.error().message;
  CHECK_THAT(msg, Contains(path));
  CHECK_THAT(msg, Contains("gcc-1/libstdc++-1/uv-0"));
  CHECK_THAT(msg, Contains(INTERSYNC_BUILD_SIGNATURE));
}

TEST_CASE("a shared object without the descriptor symbol is refused, naming the symbol") {
  PluginRegistry reg({kFixtureDir});
  const std::string path = fixture("backend-nosymbol.so");
  auto p = reg.find_or_load(INTERSYNC_PLUGIN_BACKEND, "nosymbol");
  REQUIRE_FALSE(p.ok());
  CHECK(p.error().code == -ENOEXEC);
  CHECK_THAT(p.error().message, Contains(path));
  CHECK_THAT(p.error().message, Contains(INTERSYNC_PLUGIN_SYMBOL));
  CHECK_THAT(p.error().message, Contains("intersync_plugin_descriptor"));
}

TEST_CASE("a second plugin with a registered name is refused, naming the first file") {
  PluginRegistry reg({kFixtureDir});
  const std::string first = fixture("backend-fixture.so");
  const std::string second = fixture("backend-fixture-dup.so");
  auto a = reg.load_file(first, INTERSYNC_PLUGIN_BACKEND, "fixture");
  REQUIRE(a.ok());

  auto b = reg.load_file(second, INTERSYNC_PLUGIN_BACKEND);
  REQUIRE_FALSE(b.ok());
  CHECK(b.error().code == -EEXIST);
  const std::string& msg = b.error().message;
  CHECK_THAT(msg, Contains(second));
  CHECK_THAT(msg, Contains("'fixture'"));
  CHECK_THAT(msg, Contains("already loaded from " + first));

  // The first registration is untouched.
  auto still = reg.find_or_load(INTERSYNC_PLUGIN_BACKEND, "fixture");
  REQUIRE(still.ok());
  CHECK((*still)->file == first);
}

TEST_CASE("a plugin whose descriptor name differs from its file name is refused") {
  PluginRegistry reg({kFixtureDir});
  // backend-fixture-dup.so calls itself "fixture".
  auto p = reg.find_or_load(INTERSYNC_PLUGIN_BACKEND, "fixture-dup");
  REQUIRE_FALSE(p.ok());
  CHECK(p.error().code == -ENOEXEC);
  CHECK_THAT(p.error().message, Contains(fixture("backend-fixture-dup.so")));
  CHECK_THAT(p.error().message, Contains("'fixture'"));
  CHECK_THAT(p.error().message, Contains("'fixture-dup'"));
}

TEST_CASE("a transport plugin loaded as a backend is refused, naming both kinds") {
  PluginRegistry reg({kFixtureDir});
  const std::string path = fixture("backend-wrongkind.so");
  auto p = reg.find_or_load(INTERSYNC_PLUGIN_BACKEND, "wrongkind");
  REQUIRE_FALSE(p.ok());
  CHECK(p.error().code == -ENOEXEC);
  const std::string& msg = p.error().message;
  CHECK_THAT(msg, Contains(path));
  CHECK_THAT(msg, Contains("transport"));
  CHECK_THAT(msg, Contains("backend"));
  // The refusal left nothing registered: asking again refuses again.
  auto again = reg.create_backend("wrongkind");
  REQUIRE_FALSE(again.ok());
  CHECK_THAT(again.error().message, Contains(path));

  // The kind was the only defect: as a transport it loads (and its factory,
  // which returns NULL, is reported as failing rather than crashing).
  PluginRegistry other({kFixtureDir});
  auto as_transport = other.load_file(path, INTERSYNC_PLUGIN_TRANSPORT, "wrongkind");
  REQUIRE(as_transport.ok());
  CHECK((*as_transport)->kind == INTERSYNC_PLUGIN_TRANSPORT);
  auto t = other.create_transport("wrongkind");
  REQUIRE_FALSE(t.ok());
  CHECK(t.error().code == -ENOMEM);
}

TEST_CASE("a file that is not an ELF object is refused, naming the file") {
  PluginRegistry reg({kFixtureDir});
  const std::string path = fixture("backend-notelf.so");
  auto p = reg.find_or_load(INTERSYNC_PLUGIN_BACKEND, "notelf");
  REQUIRE_FALSE(p.ok());
  CHECK_THAT(p.error().message, Contains(path));
  CHECK_THAT(p.error().message, Contains("cannot load"));
}

TEST_CASE("a missing plugin names every path that was looked at") {
  const std::string missing_dir = kFixtureDir + "/does-not-exist";
  PluginRegistry reg({kFixtureDir, missing_dir});
  auto p = reg.find_or_load(INTERSYNC_PLUGIN_BACKEND, "nope");
  REQUIRE_FALSE(p.ok());
  CHECK(p.error().code == -ENOENT);
  const std::string& msg = p.error().message;
  CHECK_THAT(msg, Contains("'nope'"));
  for (const std::string& dir : {kFixtureDir, missing_dir}) {
    CHECK_THAT(msg, Contains(dir + "/backend-nope.so"));
    CHECK_THAT(msg, Contains(dir + "/backend-nope/backend-nope.so"));
  }

  auto t = reg.create_transport("nope");
  REQUIRE_FALSE(t.ok());
  CHECK_THAT(t.error().message, Contains(kFixtureDir + "/transport-nope.so"));
  CHECK_THAT(t.error().message, Contains(missing_dir + "/transport-nope/transport-nope.so"));
}

TEST_CASE("the real plugins of this build are found through the default search path") {
  const std::string build_plugins = std::string(INTERSYNC_BUILD_DIR) + "/plugins";
  CHECK(PluginRegistry::default_search_dirs() == std::vector<std::string>{build_plugins});
  PluginRegistry reg;
  REQUIRE(reg.search_dirs() == std::vector<std::string>{build_plugins});

  auto inotify = reg.find_or_load(INTERSYNC_PLUGIN_BACKEND, "inotify");
  REQUIRE(inotify.ok());
  CHECK((*inotify)->kind == INTERSYNC_PLUGIN_BACKEND);
  CHECK((*inotify)->name == "inotify");
  CHECK((*inotify)->file == build_plugins + "/backend-inotify/backend-inotify.so");

  auto http = reg.find_or_load(INTERSYNC_PLUGIN_TRANSPORT, "http");
  REQUIRE(http.ok());
  CHECK((*http)->kind == INTERSYNC_PLUGIN_TRANSPORT);
  CHECK((*http)->name == "http");
  CHECK((*http)->file == build_plugins + "/transport-http/transport-http.so");

  // Their factories work; the objects go before the registry unloads them.
  {
    auto backend = reg.create_backend("inotify");
    REQUIRE(backend.ok());
    CHECK(*backend != nullptr);
    auto transport = reg.create_transport("http");
    REQUIRE(transport.ok());
    CHECK(*transport != nullptr);
  }

  // An inotify transport does not exist even though an inotify backend does.
  auto wrong = reg.find_or_load(INTERSYNC_PLUGIN_TRANSPORT, "inotify");
  REQUIRE_FALSE(wrong.ok());
  CHECK_THAT(wrong.error().message,
             Contains(build_plugins + "/transport-inotify/transport-inotify.so"));
}

TEST_CASE("plugin_kind_name names both kinds") {
  CHECK(std::string(intersync::plugin_kind_name(INTERSYNC_PLUGIN_BACKEND)) == "backend");
  CHECK(std::string(intersync::plugin_kind_name(INTERSYNC_PLUGIN_TRANSPORT)) == "transport");
  CHECK(std::string(intersync::plugin_kind_name(7)) == "unknown");
}
