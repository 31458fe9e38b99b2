#!/usr/bin/env bash
# The whole test suite, from a fresh Debian bookworm machine:
#   1. install the Debian (and test-only npm) packages;
#   2. optimised build with warnings as errors, every test;
#   3. the aarch64 suite: cross build, kernel and reference tests under
#      qemu-aarch64 at each ARM feature level (scripts/test-arm64.sh);
#   4. AddressSanitizer + UBSan build, every test again;
#   5. every libFuzzer target for a short while (scripts/fuzz.sh, clang).
# Usage: scripts/test.sh [--no-install] [--no-arm64] [--no-sanitize] [--no-fuzz]
set -euo pipefail
cd "$(dirname "$0")/.."
install=1
sanitize=1
fuzz=1
arm64=1
fuzz_seconds=${MOONDREAM_FUZZ_SECONDS:-25}
for arg in "$@"; do
  case "$arg" in
    --no-install) install=0 ;;
    --no-sanitize) sanitize=0 ;;
    --no-fuzz) fuzz=0 ;;
    --no-arm64) arm64=0 ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done
[ "$install" = 1 ] && bash scripts/install-deps.sh
jobs=$(nproc)
# ctest runs tests side by side, each with an OpenMP pool as wide as the
# machine: idle OpenMP threads must sleep, not spin, or they starve each other.
export OMP_WAIT_POLICY=PASSIVE

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOONDREAM_WERROR=ON
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"

if [ "$arm64" = 1 ] && [ "$(uname -m)" = x86_64 ]; then
  # Reads the test data the x86 run above made (build/testdata). (On an
  # aarch64 machine the build above is the ARM build.)
  bash scripts/test-arm64.sh build
fi

if [ "$sanitize" = 1 ]; then
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOONDREAM_WERROR=ON -DMOONDREAM_SANITIZE=ON
  cmake --build build-asan -j "$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs"
fi

if [ "$fuzz" = 1 ]; then
  # Each fuzz target for a bounded time from the seed corpora; any crash,
  # sanitizer report, leak or timeout fails the run.
  bash scripts/fuzz.sh "$fuzz_seconds"
fi
