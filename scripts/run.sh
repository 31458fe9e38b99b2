#!/usr/bin/env bash
# One command from a fresh Debian bookworm machine to a running Moondream2:
# installs the packages (first run only), builds the release binaries, then
#   scripts/run.sh caption|query|detect|point [options]   runs one task (CLI)
#   scripts/run.sh [server options]                        starts moondream-server
# Without --model, the CLI uses a tiny random-weight demo model it makes once;
# the server falls back to it (loudly, and /health says so) only when the
# configured hub model cannot be fetched, so a first start always answers.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f build/.deps-installed ]; then
  bash scripts/install-deps.sh
  mkdir -p build && touch build/.deps-installed
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" >/dev/null

demo_model() {
  if [ ! -f build/models/demo-tiny/model.safetensors ]; then
    build/make_model --preset tiny --out build/models/demo-tiny >/dev/null
  fi
}

case "${1:-}" in
  caption|query|detect|point)
    args=("$@")
    if ! printf '%s\n' "$@" | grep -qx -- '--model'; then
      demo_model
      args+=(--model build/models/demo-tiny)
    fi
    exec build/moondream "${args[@]}"
    ;;
  *)
    args=("$@")
    if ! printf '%s\n' "$@" | grep -qE -- '^--(fallback-model|model)$'; then
      demo_model
      args+=(--fallback-model build/models/demo-tiny)
    fi
    if [ -x build/moondream-server ]; then exec build/moondream-server "${args[@]}"; fi
    echo "moondream-server is not built yet; use: scripts/run.sh caption --image PATH [--model DIR]" >&2
    exit 2
    ;;
esac
