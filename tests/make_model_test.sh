#!/usr/bin/env bash
# Checks the random-weight model maker: determinism, seeds, dtypes, sharding,
# the 2024 layout, and that every written file is a valid safetensors file.
#   make_model_test.sh <make_model binary> <scratch dir>
set -u
MAKE_MODEL=${1:?usage: make_model_test.sh <make_model> <scratch dir>}
SCRATCH=${2:?usage: make_model_test.sh <make_model> <scratch dir>}
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH"

passed=0
failed=0
ok() { echo "PASS: $1"; passed=$((passed + 1)); }
bad() { echo "FAIL: $1"; failed=$((failed + 1)); }
check() {  # check <description> <command...>
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}

sums() {  # sha256 of the files of a model dir, one line per file
  (cd "$1" && sha256sum config.json tokenizer.json model.safetensors 2>/dev/null)
}

# Validates a model directory; extra args: expected dtype, expected layout.
validate() {
  python3 - "$@" <<'EOF'
import json, os, struct, sys
d, dtype, layout = sys.argv[1], sys.argv[2], sys.argv[3]
size = {"F32": 4, "F16": 2, "BF16": 2}
def fail(msg):
    print("  invalid:", msg); sys.exit(1)
cfg = json.load(open(os.path.join(d, "config.json")))
if cfg.get("architectures") != ["HfMoondream"] or cfg.get("model_type") != "moondream1":
    fail("config.json header")
c = cfg["config"]
for sec in ("text", "vision", "region", "tokenizer"):
    if sec not in c: fail("config lacks " + sec)
idx_path = os.path.join(d, "model.safetensors.index.json")
if os.path.exists(idx_path):
    idx = json.load(open(idx_path))
    files = sorted(set(idx["weight_map"].values()))
else:
    idx, files = None, ["model.safetensors"]
tensors = {}
total = 0
for fn in files:
    p = os.path.join(d, fn)
    fsize = os.path.getsize(p)
    with open(p, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n % 8 or 8 + n > fsize: fail(fn + ": header length")
        h = json.loads(f.read(n))
    if h.pop("__metadata__", None) != {"format": "pt"}: fail(fn + ": metadata")
    spans = []
    for name, t in h.items():
        if t["dtype"] != dtype: fail(f"{name}: dtype {t['dtype']}")
        b, e = t["data_offsets"]
        cnt = 1
        for s in t["shape"]: cnt *= s
        if e - b != cnt * size[dtype]: fail(f"{name}: size vs shape")
        spans.append((b, e, name))
        if name in tensors: fail(name + " twice")
        tensors[name] = (fn, t["shape"])
        if idx is not None and idx["weight_map"].get(name) != fn: fail(name + ": index says otherwise")
        total += e - b
    spans.sort()
    pos = 0
    for b, e, name in spans:
        if b != pos: fail(f"{fn}: {name} not contiguous")
        pos = e
    if 8 + n + pos != fsize: fail(fn + ": data length vs file size")
    if [s[2] for s in spans] != sorted(s[2] for s in spans): fail(fn + ": not in sorted order")
if idx is not None:
    if set(idx["weight_map"]) != set(tensors): fail("index does not cover every tensor")
    if idx["metadata"]["total_size"] != total: fail("index total_size")
# Expected names and a few shapes.
t, v, r = c["text"], c["vision"], c["region"]
E, D = v["enc_dim"], t["dim"]
hd = D // t["n_heads"]
if layout == "2025":
    exp = {"model.vision.patch_emb.weight": [E, v["enc_patch_size"] ** 2 * 3],
           "model.vision.pos_emb": [1, (v["crop_size"] // v["enc_patch_size"]) ** 2, E],
           "model.text.wte": [t["vocab_size"], D],
           "model.text.blocks.0.attn.qkv.weight": [(t["n_heads"] + 2 * t["n_kv_heads"]) * hd, D],
           "model.text.lm_head.bias": [t["vocab_size"]],
           "model.region.coord_features": [1, r["coord_feat_dim"] // 2],
           "model.region.size_features": [2, r["size_feat_dim"] // 2],
           "model.region.size_decoder.fc2.weight": [r["size_out_dim"], r["inner_dim"]]}
else:
    exp = {"vision_encoder.encoder.model.visual.patch_embed.linear.weight": [E, v["enc_patch_size"] ** 2 * 3],
           "text_model.transformer.embd.wte.weight": [t["vocab_size"], D],
           "text_model.transformer.h.1.mixer.Wqkv.weight": [(t["n_heads"] + 2 * t["n_kv_heads"]) * hd, D],
           "text_model.lm_head.linear.bias": [t["vocab_size"]],
           "region_model.coordinate_features.weight": [r["coord_feat_dim"] // 2, 1],
           "region_model.size_features.weight": [r["size_feat_dim"] // 2, 2]}
for name, shape in exp.items():
    if name not in tensors: fail("missing " + name)
    if tensors[name][1] != shape: fail(f"{name}: shape {tensors[name][1]} != {shape}")
# vision: 12 per block + patch_emb 2, pos_emb 1, post_ln 2, proj_mlp 4;
# text: 10 per block + wte 1, post_ln 2, lm_head 2; region: 14.
n_expected = 12 * v["enc_n_layers"] + 9 + 10 * t["n_layers"] + 5 + 14
if len(tensors) != n_expected: fail(f"{len(tensors)} tensors, expected {n_expected}")
EOF
}

# Prints the first bytes of one tensor in hex: tensor_head <dir> <file> <name>
tensor_head() {
  python3 - "$@" <<'EOF'
import json, struct, sys, os
d, fn, name = sys.argv[1:4]
with open(os.path.join(d, fn), "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    h = json.loads(f.read(n))
    b, e = h[name]["data_offsets"]
    f.seek(8 + n + b)
    print(f.read(min(64, e - b)).hex())
EOF
}

# 1. Same seed twice -> byte-identical files.
"$MAKE_MODEL" --preset tiny --out "$SCRATCH/a" --seed 7 >/dev/null || bad "tiny seed 7 (a) runs"
"$MAKE_MODEL" --preset tiny --out "$SCRATCH/b" --seed 7 >/dev/null || bad "tiny seed 7 (b) runs"
check "tiny bf16 is valid" validate "$SCRATCH/a" BF16 2025
if [ -n "$(sums "$SCRATCH/a")" ] && [ "$(sums "$SCRATCH/a" | wc -l)" = 3 ] &&
   [ "$(sums "$SCRATCH/a")" = "$(sums "$SCRATCH/b")" ]; then
  ok "same seed gives identical config.json, tokenizer.json, model.safetensors"
else
  bad "same seed gives identical config.json, tokenizer.json, model.safetensors"
fi

# 2. Different seed -> different weights, same config.
"$MAKE_MODEL" --preset tiny --out "$SCRATCH/c" --seed 8 --no-tokenizer >/dev/null || bad "tiny seed 8 runs"
check "different seed gives same config" cmp -s "$SCRATCH/a/config.json" "$SCRATCH/c/config.json"
if ! cmp -s "$SCRATCH/a/model.safetensors" "$SCRATCH/c/model.safetensors" &&
   [ "$(tensor_head "$SCRATCH/a" model.safetensors model.text.wte)" != \
     "$(tensor_head "$SCRATCH/c" model.safetensors model.text.wte)" ]; then
  ok "different seed gives different weights"
else
  bad "different seed gives different weights"
fi
check "--no-tokenizer writes no tokenizer.json" test ! -e "$SCRATCH/c/tokenizer.json"

# 3. Other dtypes.
for dt in f32 f16; do
  DT=$(echo "$dt" | tr a-z A-Z)
  if "$MAKE_MODEL" --preset tiny --out "$SCRATCH/$dt" --seed 7 --dtype $dt --no-tokenizer >/dev/null; then
    check "--dtype $dt is valid" validate "$SCRATCH/$dt" "$DT" 2025
  else
    bad "--dtype $dt runs"
  fi
done
# The three dtypes hold the same values (bf16/f16 = rounded f32).
check "bf16/f16 are the rounded f32 values" python3 - "$SCRATCH" <<'EOF'
import json, struct, sys, os
s = sys.argv[1]
def load(d, name):
    with open(os.path.join(s, d, "model.safetensors"), "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8)); h = json.loads(f.read(n))
        b, e = h[name]["data_offsets"]; f.seek(8 + n + b); return f.read(e - b)
for name in ("model.text.wte", "model.vision.blocks.1.mlp.fc2.weight", "model.text.lm_head.bias"):
    f32 = struct.unpack(f"<{len(load('f32', name)) // 4}f", load("f32", name))
    bf = load("a", name); f16 = load("f16", name)
    for i, x in enumerate(f32[:5000]):
        # bf16 round to nearest even
        u = struct.unpack("<I", struct.pack("<f", x))[0]
        exp_bf = ((u + 0x7fff + ((u >> 16) & 1)) >> 16) & 0xffff
        if struct.unpack_from("<H", bf, 2 * i)[0] != exp_bf: print("bf16 mismatch", name, i); sys.exit(1)
        if struct.unpack_from("<e", f16, 2 * i)[0] != struct.unpack("<e", struct.pack("<e", x))[0]:
            print("f16 mismatch", name, i, x); sys.exit(1)
f32 = struct.unpack("<51200f", load("f32", "model.text.lm_head.bias"))
if not all(v == -1000.0 for v in f32[50257:]) or not all(abs(v) < 1 for v in f32[:50257]):
    print("lm_head bias"); sys.exit(1)
EOF

# 4. Shards.
if "$MAKE_MODEL" --preset tiny --out "$SCRATCH/sh" --seed 7 --shards 3 --no-tokenizer >/dev/null; then
  check "--shards 3 is valid" validate "$SCRATCH/sh" BF16 2025
  check "--shards 3 writes 3 shard files" test "$(ls "$SCRATCH/sh" | grep -c '^model-0000[123]-of-00003\.safetensors$')" = 3
  check "--shards 3 writes no model.safetensors" test ! -e "$SCRATCH/sh/model.safetensors"
  f=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['weight_map']['model.text.wte'])" "$SCRATCH/sh/model.safetensors.index.json")
  check "sharding does not change values" test "$(tensor_head "$SCRATCH/sh" "$f" model.text.wte)" = \
    "$(tensor_head "$SCRATCH/a" model.safetensors model.text.wte)"
else
  bad "--shards 3 runs"
fi

# 5. 2024 layout (and ._orig_mod).
if "$MAKE_MODEL" --preset tiny --out "$SCRATCH/l24" --seed 7 --layout 2024 --no-tokenizer >/dev/null; then
  check "--layout 2024 is valid" validate "$SCRATCH/l24" BF16 2024
  check "2024 layout holds the same values" test "$(tensor_head "$SCRATCH/l24" model.safetensors text_model.transformer.embd.wte.weight)" = \
    "$(tensor_head "$SCRATCH/a" model.safetensors model.text.wte)"
  check "2024 layout stores the region features transposed" python3 - "$SCRATCH" <<'PYEOF'
import json, struct, sys, os
def load(path, name):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8)); h = json.loads(f.read(n))
        b, e = h[name]["data_offsets"]; f.seek(8 + n + b)
        return h[name]["shape"], struct.unpack(f"<{(e - b) // 2}H", f.read(e - b))
s = sys.argv[1]
for new, old in (("model.region.coord_features", "region_model.coordinate_features.weight"),
                 ("model.region.size_features", "region_model.size_features.weight")):
    (r, c), a = load(os.path.join(s, "a", "model.safetensors"), new)
    shape, b = load(os.path.join(s, "l24", "model.safetensors"), old)
    if shape != [c, r] or any(a[i * c + j] != b[j * r + i] for i in range(r) for j in range(c)):
        sys.exit(1)
PYEOF
else
  bad "--layout 2024 runs"
fi
if "$MAKE_MODEL" --preset tiny --out "$SCRATCH/om" --layout 2024 --orig-mod --no-tokenizer >/dev/null; then
  check "--orig-mod names" python3 -c "
import json, struct, sys
f = open(sys.argv[1], 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n)); h.pop('__metadata__')
sys.exit(0 if 'vision_encoder._orig_mod.encoder.model.visual.pos_embed' in h and all('._orig_mod.' in k for k in h) else 1)" \
    "$SCRATCH/om/model.safetensors"
else
  bad "--orig-mod runs"
fi

# 6. Errors: one line on stderr, exit code 1.
errcheck() {
  local what=$1
  shift
  "$MAKE_MODEL" "$@" >/dev/null 2>"$SCRATCH/err"
  local rc=$?
  if [ $rc = 1 ] && [ "$(wc -l <"$SCRATCH/err")" = 1 ]; then ok "$what"; else bad "$what (rc $rc: $(cat "$SCRATCH/err"))"; fi
}
errcheck "bad preset is an error" --preset huge --out "$SCRATCH/e1"
errcheck "bad dtype is an error" --preset tiny --out "$SCRATCH/e2" --dtype int8
errcheck "missing --out is an error" --preset tiny
errcheck "missing gpt2 files is an error" --preset tiny --out "$SCRATCH/e3" --gpt2-dir "$SCRATCH/nowhere"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
