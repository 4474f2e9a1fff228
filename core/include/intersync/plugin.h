/* The plugin ABI. A plugin is a shared object that exports one C function,
 * intersync_plugin_descriptor(), returning a descriptor: ABI version, build
 * signature, name, kind and factory. The descriptor is plain C so that the
 * loader can read it from any plugin, whatever compiler built it, and refuse
 * a mismatch by name with a clear message instead of crashing.
 *
 * The object the factory returns implements a C++ interface (backend.h or
 * transport.h). That is safe only between builds that share compiler family,
 * C++ library and libuv major version, which is exactly what the build
 * signature records: the loader compares it with its own before it calls
 * the factory (as nginx does with its module signature).
 *
 * Writing a plugin in C++:
 *
 *   class MyTransport : public intersync::Transport { ... };
 *   INTERSYNC_PLUGIN("mytransport", INTERSYNC_PLUGIN_TRANSPORT, MyTransport)
 *
 * and build it as a shared module linked against libintersync. The file is
 * found as <plugin_dir>/<kind>-<name>.so ("transport-mytransport.so").
 */
#pragma once

#include <stdint.h>
#include <uv.h>

#ifdef __cplusplus
// Included before the signature is computed: it defines the C++ library's
// version macros, which must be known wherever this header comes first.
#include <new>
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever the descriptor or an interface in backend.h/transport.h
 * changes incompatibly. */
#define INTERSYNC_PLUGIN_ABI_VERSION 2u

#define INTERSYNC_PLUGIN_BACKEND 1u
#define INTERSYNC_PLUGIN_TRANSPORT 2u

#define INTERSYNC_PLUGIN_SYMBOL "intersync_plugin_descriptor"

#define INTERSYNC_STR2(x) #x
#define INTERSYNC_STR(x) INTERSYNC_STR2(x)

#if defined(__clang__)
#define INTERSYNC_SIG_CC "clang-" INTERSYNC_STR(__clang_major__)
#elif defined(__GNUC__)
#define INTERSYNC_SIG_CC "gcc-" INTERSYNC_STR(__GNUC__)
#else
#define INTERSYNC_SIG_CC "cc-unknown"
#endif

#if defined(_LIBCPP_VERSION)
#define INTERSYNC_SIG_STDLIB "libc++-" INTERSYNC_STR(_LIBCPP_VERSION)
#elif defined(_GLIBCXX_RELEASE)
#define INTERSYNC_SIG_STDLIB "libstdc++-" INTERSYNC_STR(_GLIBCXX_RELEASE)
#else
#define INTERSYNC_SIG_STDLIB "stdlib-unknown"
#endif

/* "gcc-12/libstdc++-12/uv-1": what an object crossing the boundary depends on. */
#define INTERSYNC_BUILD_SIGNATURE \
  INTERSYNC_SIG_CC "/" INTERSYNC_SIG_STDLIB "/uv-" INTERSYNC_STR(UV_VERSION_MAJOR)

typedef struct intersync_plugin_descriptor_t {
  uint32_t abi_version;        /* INTERSYNC_PLUGIN_ABI_VERSION when built */
  const char* build_signature; /* INTERSYNC_BUILD_SIGNATURE when built */
  const char* name;            /* "http", "inotify": unique per kind */
  uint32_t kind;               /* INTERSYNC_PLUGIN_BACKEND or _TRANSPORT */
  /* Returns a new intersync::Backend* or intersync::Transport* (by kind),
   * owned by the caller, who deletes it through the interface's virtual
   * destructor. NULL on failure. */
  void* (*create)(void);
} intersync_plugin_descriptor_t;

typedef const intersync_plugin_descriptor_t* (*intersync_plugin_entry_fn)(void);

#ifdef __cplusplus
}

#define INTERSYNC_PLUGIN(NAME, KIND, CLASS)                                              \
  extern "C" __attribute__((visibility("default"))) const intersync_plugin_descriptor_t* \
  intersync_plugin_descriptor(void) {                                                    \
    static const intersync_plugin_descriptor_t descriptor = {                            \
        INTERSYNC_PLUGIN_ABI_VERSION, INTERSYNC_BUILD_SIGNATURE, NAME, KIND,             \
        []() -> void* { return new (std::nothrow) CLASS(); }};                           \
    return &descriptor;                                                                  \
  }
#endif
