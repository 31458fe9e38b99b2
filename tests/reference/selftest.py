#!/usr/bin/env python3
"""Self-checks of moondream_ref.py against hand-worked values and naive loops.

    /usr/bin/python3 selftest.py        -> prints "N passed, M failed"; exit 1 on failure
"""
import json
import math
import os
import struct
import sys
import tempfile
import traceback
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moondream_ref as R  # noqa: E402

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def close(a, b, tol, what=""):
    d = float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max())
    assert d <= tol, f"{what}: max abs diff {d} > {tol}"


# ---------------------------------------------------------------- mask

@test
def attention_mask_values():
    P = 5
    m = R.attention_mask(list(range(8)), 8, P)
    assert m.shape == (8, 8) and m.dtype == torch.bool
    for q in range(8):
        for k in range(8):
            want = (k < P) if q < P else (k <= q)
            assert bool(m[q, k]) == want, (q, k)
    # a query block starting after the prefix (as in decoding)
    m = R.attention_mask([6, 7], 8, P)
    assert m.shape == (2, 8)
    assert m[0].tolist() == [True] * 7 + [False]
    assert m[1].tolist() == [True] * 8
    # the real prefix: 730 bidirectional, then causal
    m = R.attention_mask(list(range(733)), 733, 730)
    assert bool(m[0, 729]) and not bool(m[0, 730]) and not bool(m[729, 730])
    assert bool(m[730, 730]) and not bool(m[730, 731]) and bool(m[732, 0])
    assert int(m.sum()) == 730 * 730 + 731 + 732 + 733


# ---------------------------------------------------------------- rotary

@test
def rotary_matches_naive_pair_loop():
    g = torch.Generator().manual_seed(3)
    H, T, hd = 3, 5, 64
    x = torch.randn(H, T, hd, generator=g, dtype=torch.float64).float()
    pos = [0, 1, 7, 729, 1500]
    cos, sin = R.rotary_tables(32, pos)
    y = R.apply_rotary(x, cos, sin, 32)
    ref = x.clone().double()
    for h in range(H):
        for t, p in enumerate(pos):
            for i in range(16):
                f = 10000.0 ** (-2.0 * i / 32)
                c, s = math.cos(p * f), math.sin(p * f)
                a, b = float(x[h, t, i]), float(x[h, t, i + 16])
                ref[h, t, i] = a * c - b * s
                ref[h, t, i + 16] = a * s + b * c
    close(y, ref.float(), 2e-6, "rotary")
    assert torch.equal(y[..., 32:], x[..., 32:])
    # position 0 is the identity
    assert torch.equal(y[:, 0], x[:, 0])


# ---------------------------------------------------------------- tiling

@test
def select_tiling_table():
    # (h, w) are the image size minus 112; worked by hand from docs/MODEL.md section 4.2
    table = [
        ((100, 100), (1, 1)),
        ((266, 1000), (1, 1)),       # h <= 266
        ((1000, 266), (1, 1)),       # w <= 266
        ((267, 267), (3, 3)),        # min 2x2; floor(sqrt(12)) = 3 each
        ((368, 528), (2, 4)),        # 640x480 photo
        ((588, 888), (3, 4)),        # 1000x700: th 2 -> min_h 3
        ((2888, 3888), (2, 4)),      # 4000x3000: 11*15 > 12, r = sqrt(12/165)
        ((800, 3000), (2, 6)),       # 4*12 > 12, r = 0.5
        ((300, 1300), (2, 6)),       # th 1->2, tw 7; 14 > 12, tw > th: tw = 12 // 2
        ((1300, 300), (6, 2)),       # mirrored: th = 12 // 2
        ((400, 400), (3, 3)),
        ((188, 1488), (1, 1)),       # 300x1600 wide strip: h <= 266
        ((267, 10000), (1, 15)),     # 2*38 > 12: floor(2r) = 0 -> 1, floor(38r) = 15
    ]
    for (h, w), want in table:
        got = R.select_tiling(h, w, 266, 12)
        assert got == want, f"select_tiling({h},{w}) = {got}, want {want}"


# ---------------------------------------------------------------- pooling / merge

@test
def adaptive_pool_semantics():
    g = torch.Generator().manual_seed(5)
    for n_h, n_w in [(27, 27), (46, 84), (65, 65), (84, 46), (30, 103), (27, 236)]:
        x = torch.randn(1, 3, n_h, n_w, generator=g)
        got = F.adaptive_avg_pool2d(x, (27, 27))
        ref = torch.zeros(1, 3, 27, 27, dtype=torch.float64)
        for oy in range(27):
            y0, y1 = (oy * n_h) // 27, -((-(oy + 1) * n_h) // 27)
            for ox in range(27):
                x0, x1 = (ox * n_w) // 27, -((-(ox + 1) * n_w) // 27)
                ref[0, :, oy, ox] = x[0, :, y0:y1, x0:x1].double().mean(dim=(1, 2))
        close(got, ref.float(), 1e-5, f"pool {n_h}x{n_w}")


class _Stub:
    """A Moondream without weights, for the pure-geometry methods."""
    def __init__(self, cfg):
        self.cfg = cfg


@test
def reconstruct_layout():
    m = _Stub(R.Config({}))
    for th, tw in [(1, 1), (2, 3), (3, 1), (3, 4)]:
        # feature value encodes (tile, r, c)
        local = torch.zeros(th * tw, 27, 27, 3)
        for t in range(th * tw):
            local[t, :, :, 0] = t
            local[t, :, :, 1] = torch.arange(27)[:, None]
            local[t, :, :, 2] = torch.arange(27)[None, :]
        grid = R.Moondream.reconstruct(m, local.reshape(th * tw, 729, 3), (th, tw))
        assert grid.shape == (th * 19 + 8, tw * 19 + 8, 3)
        for Y in range(grid.shape[0]):
            i = min(max((Y - 4) // 19, 0), th - 1) if th > 1 else 0
            for X in range(grid.shape[1]):
                j = min(max((X - 4) // 19, 0), tw - 1) if tw > 1 else 0
                want = (i * tw + j, Y - 19 * i, X - 19 * j)
                got = tuple(int(v) for v in grid[Y, X])
                assert got == want, f"{th}x{tw} cell ({Y},{X}): {got} != {want}"


@test
def patch_layout():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 378, 378, generator=g)
    p = R.patchify(x, 14)
    assert p.shape == (2, 729, 588)
    for n, r, c in [(0, 0, 0), (1, 0, 26), (0, 13, 5), (1, 26, 26)]:
        want = torch.tensor([float(x[n, ch, r * 14 + y, c * 14 + xx])
                             for ch in range(3) for y in range(14) for xx in range(14)])
        assert torch.equal(p[n, r * 27 + c], want), (n, r, c)


# ---------------------------------------------------------------- sampling

@test
def top_p_hand_examples():
    p = torch.tensor([0.1, 0.5, 0.15, 0.25])
    # sorted 0.5, 0.25, 0.15, 0.1; mass before: 0, 0.5, 0.75, 0.9
    close(R.top_p_filter(p, 0.3), [0, 1, 0, 0], 1e-7, "top_p 0.3")
    close(R.top_p_filter(p, 0.6), [0, 2 / 3, 0, 1 / 3], 1e-6, "top_p 0.6")
    close(R.top_p_filter(p, 0.8), [0, 0.5 / 0.9, 0.15 / 0.9, 0.25 / 0.9], 1e-6, "top_p 0.8")
    close(R.top_p_filter(p, 1.0), p, 1e-6, "top_p 1")
    # a token whose preceding mass equals top_p exactly is kept ("already exceeds")
    q = torch.tensor([0.125, 0.5, 0.375])      # mass before: 0.5 -> 0, 0.375 -> 0.5 (kept)
    close(R.top_p_filter(q, 0.5), [0.0, 4 / 7, 3 / 7], 1e-6, "top_p boundary")
    # sampling only ever draws from the nucleus, deterministically per seed
    logits = torch.log(p)
    g1 = torch.Generator().manual_seed(7)
    draws = [R.pick_token(logits, 1.0, 0.6, g1) for _ in range(200)]
    assert set(draws) == {1, 3}, set(draws)
    g2 = torch.Generator().manual_seed(7)
    assert draws == [R.pick_token(logits, 1.0, 0.6, g2) for _ in range(200)]
    assert R.pick_token(torch.tensor([0.0, 3.0, 2.9]), 0, 0.3) == 1


# ---------------------------------------------------------------- bf16 normalisation

def _bf16_round(v):
    """Exact round-to-nearest-even of a Fraction to bfloat16 (8 significant bits)."""
    if v == 0:
        return Fraction(0)
    sgn = -1 if v < 0 else 1
    a = abs(v)
    e = math.floor(math.log2(a))
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    ulp = Fraction(2) ** (e - 7)
    q = a / ulp
    fl = math.floor(q)
    rem = q - fl
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2 == 1):
        fl += 1
    return sgn * fl * ulp


@test
def bf16_normalisation():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    got = R.normalize_bf16(x)
    assert got.shape == (1, 3, 16, 16) and got.dtype == torch.float32
    flat = got[0, 0].reshape(-1)
    assert torch.equal(got[0, 0], got[0, 2])
    worst = 0.0
    for i in range(256):
        want = _bf16_round(_bf16_round(Fraction(i, 255)) - Fraction(1, 2)) * 2
        assert float(flat[i]) == float(want), f"{i}: {float(flat[i])} != {float(want)}"
        worst = max(worst, abs(float(want) - (i / 255 - 0.5) / 0.5))
    assert 1e-3 < worst < 1e-2, worst     # docs/MODEL.md section 4.6: "off by up to about 4e-3"
    # channels first: pixel (y=0,x=1) of channel c
    y = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    y[0, 0, 1] = [0, 255, 128]
    n = R.normalize_bf16(y)
    assert [float(n[0, c, 0, 1]) for c in range(3)] == [-1.0, 1.0, float(flat[128])]


# ---------------------------------------------------------------- weights / model

MICRO = {
    "text": {"dim": 32, "ff_dim": 48, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1,
             "vocab_size": 51200, "max_context": 800},
    "vision": {"enc_dim": 16, "enc_n_layers": 1, "enc_ff_dim": 24, "enc_n_heads": 2,
               "proj_inner_dim": 40, "proj_out_dim": 32},
    "region": {"dim": 32, "coord_feat_dim": 16, "coord_out_dim": 64, "size_feat_dim": 16,
               "size_out_dim": 128, "inner_dim": 40},
}


def _micro_weights(cfg, seed=11):
    rng = np.random.default_rng(seed)
    out = {}
    for k, shp in R.expected_shapes(cfg).items():
        a = rng.standard_normal(shp) * (0.3 if len(shp) == 2 else 0.05)
        if k.endswith(".weight") and len(shp) == 1:
            a = 1.0 + a
        a = a.astype(np.float32)
        # bf16-representable, so every storage dtype holds the same values
        a = ((a.view(np.uint32) >> 16) << 16).view(np.float32)
        out[k] = a
    return out


def _write_st(path, tensors, dtype):
    hdr, blobs, off = {}, [], 0
    for name, a in tensors.items():
        if dtype == "BF16":
            b = (a.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        elif dtype == "F16":
            b = a.astype("<f2").tobytes()
        else:
            b = a.astype("<f4").tobytes()
        hdr[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hdr["__metadata__"] = {"format": "pt"}
    h = json.dumps(hdr).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def _name_2024(k):
    for old, new in R._FIXED_2024:
        if k.startswith(new):
            return old + k[len(new):]
    stack, _, idx, rest = k.split(".", 3)
    parts = R._VPART if stack == "vision" else R._TPART
    for old, new in parts.items():
        if rest.startswith(new):
            base = ("vision_encoder.encoder.model.visual.blocks" if stack == "vision"
                    else "text_model.transformer.h")
            return f"{base}.{idx}.{old}{rest[len(new):]}"
    raise KeyError(k)


_TMP = tempfile.TemporaryDirectory()


def _micro_dir(layout="2025", dtype="F32", shards=1, orig_mod=False, sub=None):
    d = os.path.join(_TMP.name, sub or f"{layout}_{dtype}_{shards}_{orig_mod}")
    if os.path.exists(d):
        return d
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"architectures": ["HfMoondream"], "config": MICRO}, f)
    cfg = R.Config(MICRO)
    w = _micro_weights(cfg)
    named = {}
    for k, a in w.items():
        if layout == "2025":
            n = "model." + k
        else:
            n = _name_2024(k)
            if k in R._TRANSPOSED_2024:
                a = np.ascontiguousarray(a.T)
        if orig_mod:
            head, _, tail = n.partition(".")
            n = head + "._orig_mod." + tail
        named[n] = a
    names = sorted(named)
    if shards == 1:
        _write_st(os.path.join(d, "model.safetensors"), named, dtype)
    else:
        wm = {}
        for s in range(shards):
            fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: named[n] for n in names[s::shards]}
            _write_st(os.path.join(d, fn), part, dtype)
            wm.update({n: fn for n in part})
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": wm}, f)
    return d


@test
def config_defaults_and_overrides():
    c = R.Config({})
    assert (c.text.dim, c.text.n_layers, c.text.prefix_attn, c.vision.enc_dim,
            c.vision.max_crops, c.region.coord_out_dim) == (2048, 24, 730, 1152, 12, 1024)
    assert c.templates["caption"]["normal"] == [198, 198, 24334, 1159, 25]
    d = os.path.join(_TMP.name, "cfg")
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"config": {"text": {"dim": 64}, "tokenizer": {"templates": {
            "detect": {"prefix": [1, 2], "suffix": [3]}}}}}, f)
    c = R.load_config(d)
    assert c.text.dim == 64 and c.text.ff_dim == 8192
    assert c.templates["detect"] == {"prefix": [1, 2], "suffix": [3]}
    assert c.templates["point"]["suffix"] == [628]
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"architectures": ["HfMoondream"], "config": {}}, f)
    assert R.load_config(d).text.dim == 2048


@test
def weights_all_layouts_and_dtypes_agree():
    base = R.load_weights(_micro_dir())
    cfg = R.Config(MICRO)
    R.check_weights(base, cfg)
    ref = _micro_weights(cfg)
    for k, a in ref.items():
        assert np.array_equal(base[k].numpy(), a), k
    for kw in [dict(dtype="BF16"), dict(dtype="F16"), dict(layout="2024", dtype="BF16"),
               dict(layout="2024", dtype="F32", shards=3), dict(dtype="BF16", shards=2,
                                                               orig_mod=True),
               dict(layout="2024", dtype="BF16", orig_mod=True)]:
        w = R.load_weights(_micro_dir(**kw))
        assert set(w) == set(base), kw
        for k in base:
            if kw.get("dtype") == "F16":
                close(w[k], base[k], 2e-3 * float(base[k].abs().max()) + 1e-6, k)
            else:
                assert torch.equal(w[k], base[k]), (kw, k)


@test
def safetensors_validation():
    d = os.path.join(_TMP.name, "bad")
    os.makedirs(d)
    p = os.path.join(d, "x.safetensors")
    a = np.ones((2, 3), np.float32)
    _write_st(p, {"a": a}, "F32")
    assert R.read_safetensors(p)["a"].shape == (2, 3)
    raw = open(p, "rb").read()
    for bad in [raw[:-4], struct.pack("<Q", 1 << 40) + raw[8:]]:
        open(p, "wb").write(bad)
        try:
            R.read_safetensors(p)
            raise AssertionError("accepted a bad file")
        except (ValueError, json.JSONDecodeError, UnicodeDecodeError):
            pass


def _micro_model():
    return R.Moondream(_micro_dir(), threads=1)


def _naive_text(m, x):
    """Independent full-sequence text forward: explicit per-head loops, naive rotary."""
    t, w = m.cfg.text, m.w
    T = x.shape[0]
    hd = t.dim // t.n_heads
    rot = hd // 2
    rep = t.n_heads // t.n_kv_heads
    ang = torch.tensor([[p * 10000.0 ** (-2.0 * i / rot) for i in range(rot // 2)]
                        for p in range(T)], dtype=torch.float64)
    c, s = torch.cos(ang), torch.sin(ang)

    def rope(v):
        v = v.double().clone()
        a, b = v[:, :rot // 2].clone(), v[:, rot // 2:rot].clone()
        v[:, :rot // 2] = a * c - b * s
        v[:, rot // 2:rot] = a * s + b * c
        return v

    x = x.double()
    for L in range(t.n_layers):
        g = lambda n: w[f"text.blocks.{L}.{n}"].double()
        h = F.layer_norm(x, (t.dim,), g("ln.weight"), g("ln.bias"), 1e-5)
        qkv = h @ g("attn.qkv.weight").T + g("attn.qkv.bias")
        heads = []
        for hh in range(t.n_heads):
            kv = hh // rep
            q = rope(qkv[:, hh * hd:(hh + 1) * hd])
            k = rope(qkv[:, (t.n_heads + kv) * hd:(t.n_heads + kv + 1) * hd])
            v = qkv[:, (t.n_heads + t.n_kv_heads + kv) * hd:
                    (t.n_heads + t.n_kv_heads + kv + 1) * hd]
            sc = (q @ k.T) / math.sqrt(hd)
            for i in range(T):
                for j in range(T):
                    if not (j <= i or (i < t.prefix_attn and j < t.prefix_attn)):
                        sc[i, j] = -math.inf
            heads.append(torch.softmax(sc, -1) @ v)
        a = torch.cat(heads, -1) @ g("attn.proj.weight").T + g("attn.proj.bias")
        f1 = h @ g("mlp.fc1.weight").T + g("mlp.fc1.bias")
        f1 = 0.5 * f1 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (f1 + 0.044715 * f1 ** 3)))
        x = x + a + f1 @ g("mlp.fc2.weight").T + g("mlp.fc2.bias")
    return x.float()


@test
def text_forward_matches_naive_and_incremental():
    m = _micro_model()
    m.cfg.text.prefix_attn = 6          # small prefix so the naive loop stays quick
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, 32, generator=g)
    ref = _naive_text(m, x)
    cache = R.KVCache(2, 1, 800, 16)
    full = m.forward(x, cache)
    close(full, ref, 2e-5, "forward vs naive")
    cache = R.KVCache(2, 1, 800, 16)
    parts = [m.forward(x[:6], cache)] + [m.forward(x[i:i + 1], cache) for i in range(6, 10)]
    close(torch.cat(parts), ref, 2e-5, "incremental vs naive")
    assert cache.length == 10
    # bidirectional prefix: position 0 depends on position 5 but not on 6
    for pos, changes in [(5, True), (6, False)]:
        y = x.clone()
        y[pos] += 10.0
        out = m.forward(y, R.KVCache(2, 1, 800, 16))
        d = float((out[0] - full[0]).abs().max())
        assert (d > 1e-7) == changes, (pos, d)     # masked: exactly unchanged
    m.cfg.text.prefix_attn = 730


@test
def vision_projection_and_tasks_run():
    m = _micro_model()
    rng = np.random.default_rng(4)
    crops = rng.integers(0, 256, size=(7, 378, 378, 3), dtype=np.uint8)
    feats, emb = m.encode_crops(crops, (2, 3))
    assert feats.shape == (7, 729, 16) and emb.shape == (729, 32)
    # a crop's features do not depend on the other crops of the batch
    f1 = m.vision_encoder(crops[3:4])
    close(f1[0], feats[3], 1e-5, "per-crop independence")
    # 1x1 tiling: the pooled grid is the local crop itself
    f2, e2 = m.encode_crops(crops[:2], (1, 1))
    x = torch.cat([f2[0], f2[1]], -1)
    close(e2, R.mlp(x, m.w, "vision.proj_mlp"), 1e-5, "1x1 projection")
    cache = m.prefix_cache(emb)
    assert cache.length == 730
    cap = m.caption(cache, "short", max_tokens=5)
    assert len(cap) <= 5 and 50256 not in cap and cache.length == 730
    # greedy generation = argmax of the teacher-forced logits
    first, rows, fed = m.teacher_forced_logits(cache, m.cfg.templates["caption"]["short"], 4)
    assert fed[:len(cap)] == cap[:len(fed)]
    # decode steps: 3 forward steps per detected object, 2 per point
    calls = []
    orig = m.forward
    m.forward = lambda x, c: (calls.append(x.shape[0]), orig(x, c))[1]
    det = m.detect(cache, [5], max_objects=3)
    assert calls[0] == 4 + 1 + 1 and calls[1:] == [1] * (3 * len(det)), calls
    calls.clear()
    pts = m.point(cache, [5], max_objects=3)
    assert calls[1:] == [1] * (2 * len(pts)), calls
    m.forward = orig
    for o in det:
        assert o["x_min"] <= o["x_max"] and o["y_min"] <= o["y_max"]
    for p in pts:
        assert 0 <= p["x"] < 1 and 0 <= p["y"] < 1


@test
def fourier_and_size_decoding():
    m = _micro_model()
    F_ = torch.tensor([[0.5, -1.0, 2.0]])
    f = m.fourier([0.25], F_)
    ang = [2 * math.pi * 0.25 * v for v in (0.5, -1.0, 2.0)]
    close(f, [math.cos(a) for a in ang] + [math.sin(a) for a in ang], 1e-6, "fourier")
    F2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f = m.fourier([0.1, 0.3], F2)
    close(f, [math.cos(0.2 * math.pi), math.cos(0.6 * math.pi),
              math.sin(0.2 * math.pi), math.sin(0.6 * math.pi)], 1e-6, "fourier 2d")
    # size bins: bin 0 -> 2^-10, bin n-1 -> 1
    w = dict(m.w)
    n = m.cfg.region.size_out_dim // 2
    b = torch.full((2 * n,), -5.0)
    b[0] = 5.0            # w: bin 0
    b[n + n - 1] = 5.0    # h: last bin
    m.w = dict(w)
    m.w["region.size_decoder.fc2.weight"] = torch.zeros_like(w["region.size_decoder.fc2.weight"])
    m.w["region.size_decoder.fc2.bias"] = b
    sw, sh = m.decode_size(torch.zeros(32))
    assert sw == 2.0 ** -10 and sh == 1.0, (sw, sh)
    m.w = w


def main():
    torch.set_num_threads(2)
    passed = failed = 0
    for fn in TESTS:
        try:
            fn()
            passed += 1
            print(f"ok   {fn.__name__}")
        except Exception:
            failed += 1
            print(f"FAIL {fn.__name__}")
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
