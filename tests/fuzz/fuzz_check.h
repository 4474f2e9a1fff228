// The failure report of the fuzz targets: an invariant that does not hold
// prints "<target>: invariant violated: ..." (what scripts/fuzz looks for)
// and aborts, so that libFuzzer keeps the input.
#pragma once

#include <errno.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

[[noreturn]] inline void fail(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "%s: invariant violated: %s%s%s\n", program_invocation_short_name, what,
               detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

#define CHECK(cond, ...)                                 \
  do {                                                   \
    if (!(cond)) fail(#cond __VA_OPT__(, ) __VA_ARGS__); \
  } while (0)

}  // namespace
