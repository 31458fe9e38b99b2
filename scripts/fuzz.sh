#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan, build-fuzz/) and runs
# each one, starting from the seed corpus in fuzz/corpus/<target>/.
#   scripts/fuzz.sh                 # 60 s per target
#   scripts/fuzz.sh 25              # CI: 25 s per target
#   scripts/fuzz.sh --runs 1000000  # until each target ran 1,000,000 inputs
#   scripts/fuzz.sh 600 image requests   # only these targets
# The growing corpus is kept in build-fuzz/corpus/<target>/ (runs continue
# from it), logs in build-fuzz/logs/, crashing inputs in
# build-fuzz/artifacts/<target>/. Exits 1 if any target found something.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=60
runs=""
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    [0-9]*) seconds="$1"; shift ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DMOONDREAM_FUZZ=ON -DMOONDREAM_TESTS=OFF >/dev/null
cmake --build build-fuzz -j "${FUZZ_BUILD_JOBS:-$(nproc)}" --target fuzz_all

if [ ${#targets[@]} -eq 0 ]; then
  for d in fuzz/corpus/*/; do targets+=("$(basename "$d")"); done
fi
# Small quarantine and short allocation stacks: libvips allocates a lot.
export ASAN_OPTIONS="${ASAN_OPTIONS:-quarantine_size_mb=16:malloc_context_size=8:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
mkdir -p build-fuzz/logs
failed=0
printf '%-16s %12s %8s %s\n' target executions seconds result
for t in "${targets[@]}"; do
  bin=build-fuzz/fuzz/fuzz_$t
  [ -x "$bin" ] || { echo "no fuzz target $t" >&2; exit 2; }
  work=build-fuzz/corpus/$t
  art=build-fuzz/artifacts/$t
  mkdir -p "$work" "$art"
  args=(-timeout=20 -rss_limit_mb=3072 -print_final_stats=1 -artifact_prefix="$art/")
  case "$t" in
    model_config|tokenizer_json|server_config|requests) args+=(-dict=fuzz/json.dict) ;;
    # The image target's pixel limit is 16,384: any single allocation over
    # 64 MB means something allocated by a declared size before the check.
    image) args+=(-malloc_limit_mb=64) ;;
  esac
  if [ -n "$runs" ]; then args+=(-runs="$runs"); else args+=(-max_total_time="$seconds"); fi
  log=build-fuzz/logs/$t.log
  start=$(date +%s)
  if "$bin" "${args[@]}" "$work" "fuzz/corpus/$t" >"$log" 2>&1; then
    result="no finding"
  else
    result="FINDING (see $log and $art/)"
    failed=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  printf '%-16s %12s %8s %s\n' "$t" "${execs:-?}" "$(( $(date +%s) - start ))" "$result"
done
exit $failed
