#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs the Debian 12 packages gnomon needs to build, test and run, if any are missing.
# Sourced by scripts/quickstart and scripts/test.
set -euo pipefail

GNOMON_PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libfmt-dev libsimdjson-dev libyaml-cpp-dev libcli11-dev libluajit-5.1-dev
  libmosquitto-dev libcpp-httplib-dev libssl-dev libsqlite3-dev librdkafka-dev kcat
  libcurl4-openssl-dev libpq-dev postgresql libmariadb-dev mariadb-server libjemalloc-dev libboost-dev
  zlib1g-dev libgtest-dev libgmock-dev libbenchmark-dev prometheus-cpp-dev
  mosquitto mosquitto-clients curl python3 openssl wrk
  clang libclang-rt-14-dev clang-tidy
)

gnomon_install_deps() {
  local missing=()
  for p in "${GNOMON_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  echo "gnomon: installing ${missing[*]}" >&2
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# The AWS IoT Device SDK tests (tests/integration/sdk_conformance_test.cc) run the SDKs from npm
# with Node.js: Debian's nodejs and npm when there is no node yet, then the packages pinned in
# tests/sdk/package-lock.json (install scripts are not run: the SDK v2's native module ships
# prebuilt in its package).
gnomon_install_sdk_deps() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "gnomon: installing nodejs npm" >&2
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends nodejs npm >/dev/null
  fi
  local installed=tests/sdk/node_modules/.package-lock.json
  if [ ! -f "$installed" ] || [ tests/sdk/package-lock.json -nt "$installed" ]; then
    npm ci --prefix tests/sdk --ignore-scripts --no-audit --no-fund >/dev/null
  fi
}

# gnomon_build DIR [cmake args...]: configure (once) and build with two jobs.
gnomon_build() {
  local dir=$1; shift
  if [ ! -f "$dir/build.ninja" ]; then
    cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  fi
  cmake --build "$dir" -j 2
}
