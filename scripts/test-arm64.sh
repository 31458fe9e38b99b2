#!/usr/bin/env bash
# The aarch64 suite: cross-builds the engine for arm64 with Debian's
# g++-aarch64-linux-gnu (cmake/aarch64-linux-gnu.cmake, against the sysroot
# scripts/arm64-sysroot.sh unpacks) and runs under qemu-aarch64:
#   - the kernel tests (gemv_test, ops_test) at each ARM feature level:
#     -cpu cortex-a72 (plain NEON: the "neon" tables), -cpu max (dotprod,
#     i8mm and the rest: the "i8mm" tables, and the "dotprod" ones below
#     them, which the tests force in turn), and MOONDREAM_ISA=generic (the
#     portable loops); each run checks which level the CPU got;
#   - every test image's crops against the x86 build's;
#   - the tiny-model reference test (engine_ref_test: features, logits,
#     greedy tokens, detect and point against the PyTorch reference);
#   - one CLI caption, which must equal the x86 build's;
#   - a second build without oneDNN (the engine's own GEMMs): the kernel
#     tests, the reference test and the caption on plain NEON.
# Reads the test data the x86 build made (build/testdata: run scripts/test.sh
# or ctest in build first). Usage: scripts/test-arm64.sh [X86_BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
x86_build=$(realpath "${1:-build}")
testdata="$x86_build/testdata"
if [ ! -f "$testdata/models/tiny/config.json" ]; then
  echo "test-arm64: no test data in $testdata (run the x86 suite first)" >&2
  exit 1
fi
sysroot=$(realpath -m build-arm64/sysroot)
bash scripts/arm64-sysroot.sh "$sysroot"
jobs=$(nproc)
cmake -S . -B build-arm64/build -G Ninja -DCMAKE_TOOLCHAIN_FILE="$PWD/cmake/aarch64-linux-gnu.cmake" \
  -DMOONDREAM_ARM64_SYSROOT="$sysroot" -DCMAKE_BUILD_TYPE=Release -DMOONDREAM_WERROR=ON \
  -DMOONDREAM_EXTERNAL_TESTDATA="$testdata" >/dev/null
cmake --build build-arm64/build -j "$jobs" --target gemv_test ops_test engine_ref_test dump_crops moondream
bin=build-arm64/build
export OMP_WAIT_POLICY=PASSIVE
log=build-arm64/last.log
run() {  # run CPU [ENV=VALUE ...] COMMAND ARGS...: the summary, or all of it on failure
  local cpu=$1
  shift
  echo "== -cpu $cpu: $*"
  if env "$@" >"$log" 2>&1; then
    tail -n 2 "$log"
  else
    cat "$log"
    echo "test-arm64: failed under qemu -cpu $cpu: $*" >&2
    exit 1
  fi
}
arm() { echo qemu-aarch64 -L "$sysroot" -cpu "$1"; }
for cpu_isa in cortex-a72:neon max:i8mm; do
  cpu=${cpu_isa%%:*}
  isa=${cpu_isa##*:}
  for t in gemv_test ops_test; do
    # shellcheck disable=SC2046
    run "$cpu" MOONDREAM_EXPECT_BEST_ISA="$isa" $(arm "$cpu") "$bin/tests/$t"
  done
done
# shellcheck disable=SC2046
run max MOONDREAM_ISA=generic $(arm max) "$bin/tests/gemv_test"
# shellcheck disable=SC2046
run max MOONDREAM_ISA=generic $(arm max) "$bin/tests/ops_test"
# Crops against the x86 build's. Under qemu-user libvips' run-time
# generated vector code (liborc) computes wrong pixels or faults (a black
# global crop for the 4000x3000 JPEG; SIGSEGV in vips_executor_run when one
# process resamples many images), so the emulated runs take libvips' C path
# (VIPS_NOVECTOR=1), which agrees with the vector path to a few levels
# (measured: max 5, mean <= 0.14). The reference test below then starts from
# the x86 build's dumped crops, as the PyTorch reference does.
for image in "$testdata"/images/*; do
  name=$(basename "${image%.*}")
  VIPS_NOVECTOR=1 qemu-aarch64 -L "$sysroot" -cpu max "$bin/tests/dump_crops" "$image" "build-arm64/crops_$name" \
    >/dev/null
  /usr/bin/python3 - "build-arm64/crops_$name.u8" "$testdata/crops/$name.u8" "$name" <<'PY'
import sys
import numpy as np
a = np.fromfile(sys.argv[1], np.uint8).astype(np.int16)
b = np.fromfile(sys.argv[2], np.uint8).astype(np.int16)
if a.shape != b.shape:
    sys.exit(f"test-arm64: {sys.argv[3]}: {a.size} crop bytes, the x86 build has {b.size}")
d = np.abs(a - b)
if d.max() > 6 or d.mean() > 0.25:
    sys.exit(f"test-arm64: {sys.argv[3]}: crops differ from the x86 build's by max {d.max()}, mean {d.mean():.3f}")
PY
done
echo "== crops of $(ls "$testdata"/images | wc -l) images within 6 levels (mean 0.25) of the x86 build's"
# shellcheck disable=SC2046
run max MOONDREAM_REF_CROPS_FROM_TESTDATA=1 $(arm max) "$bin/tests/engine_ref_test"
# One caption from the CLI, token for token the x86 build's (a 378x378
# image: no resampling, so no libvips vector code under qemu).
args=(caption --model "$testdata/models/tiny" --image "$testdata/images/square_378.png" --length short
  --temperature 0 --max-tokens 12 --json)
answer() { /usr/bin/python3 -c 'import json, sys; r = json.load(sys.stdin); print(r["tokens"], r["caption"])'; }
want=$("$x86_build/moondream" "${args[@]}" | answer)
got=$(qemu-aarch64 -L "$sysroot" -cpu max "$bin/moondream" "${args[@]}" | answer)
echo "== CLI caption: $got"
if [ "$got" != "$want" ]; then
  echo "test-arm64: the aarch64 caption differs from the x86 one: $want" >&2
  exit 1
fi
# Without oneDNN (-DMOONDREAM_ONEDNN=OFF: the engine's own GEMMs,
# src/tensor/gemm.cpp): the kernel tests at both levels and, on plain NEON
# (no fused int8 kernels: every int8 and fp32 product on those GEMMs), the
# reference test and the caption again.
own=build-arm64/build-own
cmake -S . -B "$own" -G Ninja -DCMAKE_TOOLCHAIN_FILE="$PWD/cmake/aarch64-linux-gnu.cmake" \
  -DMOONDREAM_ARM64_SYSROOT="$sysroot" -DCMAKE_BUILD_TYPE=Release -DMOONDREAM_WERROR=ON -DMOONDREAM_ONEDNN=OFF \
  -DMOONDREAM_EXTERNAL_TESTDATA="$testdata" >/dev/null
cmake --build "$own" -j "$jobs" --target gemv_test ops_test engine_ref_test moondream
for binary in "$own/moondream" "$own/tests/ops_test"; do
  if aarch64-linux-gnu-readelf -d "$binary" | grep -q 'libdnnl'; then
    echo "test-arm64: $binary links oneDNN in the build without it" >&2
    exit 1
  fi
done
for cpu_isa in cortex-a72:neon max:i8mm; do
  cpu=${cpu_isa%%:*}
  isa=${cpu_isa##*:}
  # shellcheck disable=SC2046
  run "$cpu" MOONDREAM_EXPECT_BEST_ISA="$isa" $(arm "$cpu") "$own/tests/ops_test"
done
# shellcheck disable=SC2046
run cortex-a72 MOONDREAM_REF_CROPS_FROM_TESTDATA=1 $(arm cortex-a72) "$own/tests/engine_ref_test"
got=$(qemu-aarch64 -L "$sysroot" -cpu cortex-a72 "$own/moondream" "${args[@]}" | answer)
echo "== CLI caption without oneDNN, plain NEON: $got"
if [ "$got" != "$want" ]; then
  echo "test-arm64: the caption without oneDNN differs from the x86 one: $want" >&2
  exit 1
fi
echo "test-arm64: passed"
