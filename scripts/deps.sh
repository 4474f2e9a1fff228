#!/usr/bin/env bash
# Installs the Debian packages intersync builds, tests and benchmarks with.
# Idempotent: apt is touched only when something is missing. Sourced or run
# by scripts/build, scripts/test and scripts/demo; each package's reason is
# in the README's dependency table.
set -euo pipefail

packages=(
  # build
  meson ninja-build g++ pkg-config
  # libraries
  libuv1-dev node-llhttp libyaml-cpp-dev uuid-dev libsqlite3-dev libssl-dev
  nlohmann-json3-dev libcli11-dev libfmt-dev libspdlog-dev
  # tests
  catch2 python3 python3-pytest iproute2 procps openssl strace
  # sanitizer runtime and fuzzing
  clang libclang-rt-14-dev llvm
  # peers the tests and the benchmark start for real
  rsync openssh-server openssh-client lighttpd
  # the benchmark's other replicators, run side by side with intersync (bench/run)
  unison lsyncd syncthing
  # izofs, the FUSE file system that journals every change (issue #4)
  libfuse3-dev fuse3 attr
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "deps: missing Debian packages (run as root to install): ${missing[*]}" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # The services these packages bring are started by the tests themselves,
  # on loopback and on ports of their own; never by the package's scripts.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  rm -f /usr/sbin/policy-rc.d
fi
