"""Independent pure-PyTorch (fp32) reference of the Moondream2 contract
(docs: docs/MODEL.md).

Written from the contract only. Everything runs in float32 except the image
normalisation, which follows the contract's bfloat16 steps.

Main entry points:
    load_config(model_dir) -> Config
    load_weights(model_dir) -> {canonical 2025 name (no "model."): torch.Tensor fp32}
    Moondream(model_dir)
        .pil_crops(path) -> (uint8 ndarray [n,378,378,3], (th, tw))
        .encode_crops(crops_u8, (th, tw)) -> (features [n,729,E], embeddings [729,D])
        .prefix_cache(embeddings) -> KV cache at position 730
        .caption / .query / .detect / .point
        revision 2025-06-21 ("starmie", docs/REVISIONS.md): .reasoning_query,
        spatial references, .text_cache (no image), .gaze
"""
import json
import math
import os
import re
import struct

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------- config

DEFAULTS = {
    "text": {"dim": 2048, "ff_dim": 8192, "n_layers": 24, "n_heads": 32, "n_kv_heads": 32,
             "vocab_size": 51200, "max_context": 2048, "prefix_attn": 730},
    "vision": {"enc_dim": 1152, "enc_patch_size": 14, "enc_n_layers": 27, "enc_ff_dim": 4304,
               "enc_n_heads": 16, "crop_size": 378, "in_channels": 3, "max_crops": 12,
               "overlap_margin": 4, "proj_inner_dim": 8192, "proj_out_dim": 2048},
    "region": {"dim": 2048, "coord_feat_dim": 256, "coord_out_dim": 1024, "size_feat_dim": 512,
               "size_out_dim": 2048, "inner_dim": 8192},
    "tokenizer": {"bos_id": 50256, "eos_id": 50256},
}

DEFAULT_TEMPLATES = {
    "caption": {"short": [198, 198, 16438, 8305, 25],
                "normal": [198, 198, 24334, 1159, 25],
                "long": [198, 198, 14617, 8305, 25]},
    "query": {"prefix": [198, 198, 24361, 25], "suffix": [198, 198, 33706, 25]},
    "detect": {"prefix": [198, 198, 47504, 25], "suffix": [628]},
    "point": {"prefix": [198, 198, 12727, 25], "suffix": [628]},
}


# Revision 2025-06-21 (starmie tokenizer): control ids and templates.
STARMIE_IDS = {"bos_id": 0, "eos_id": 0, "answer_id": 3, "thinking_id": 4, "coord_id": 5,
               "size_id": 6, "start_ground_points_id": 7, "end_ground_id": 9}
STARMIE_TEMPLATES = {
    "caption": {"short": [1, 32708, 2, 12492, 3], "normal": [1, 32708, 2, 6382, 3],
                "long": [1, 32708, 2, 4059, 3]},
    "query": {"prefix": [1, 15381, 2], "suffix": [3]},
    "detect": {"prefix": [1, 7235, 476, 2], "suffix": [3]},
    "point": {"prefix": [1, 2581, 2], "suffix": [3]},
}


class Section:
    def __init__(self, d):
        self.__dict__.update(d)

    def get(self, key, default=None):
        return self.__dict__.get(key, default)


class Config:
    def __init__(self, inner=None, starmie=False):
        inner = inner or {}
        self.starmie = starmie
        for sec, defaults in DEFAULTS.items():
            d = dict(defaults)
            if sec == "tokenizer" and starmie:
                d = dict(STARMIE_IDS)
            given = inner.get(sec) or {}
            for k, v in given.items():
                if k in d:
                    d[k] = v
            setattr(self, sec, Section(d))
        # templates: tokenizer.templates.{caption:{short,normal,long}, query:{prefix,suffix}, ...}
        t = json.loads(json.dumps(STARMIE_TEMPLATES if starmie else DEFAULT_TEMPLATES))
        given = (inner.get("tokenizer") or {}).get("templates") or {}
        for task, parts in given.items():
            if task in t and isinstance(parts, dict):
                for k, v in parts.items():
                    if v is not None:
                        t[task][k] = list(v)
        self.templates = t


def is_starmie(model_dir, inner):
    """Revision 2025-06-21: the remote code names the starmie tokenizer repo,
    or the config's tokenizer section says bos_id 0."""
    code = os.path.join(model_dir, "moondream.py")
    if os.path.exists(code):
        with open(code, "r", encoding="utf-8", errors="replace") as f:
            if "moondream/starmie-v1" in f.read():
                return True
    return (inner.get("tokenizer") or {}).get("bos_id") == 0


def load_config(model_dir):
    path = os.path.join(model_dir, "config.json")
    j = {}
    if os.path.exists(path):
        with open(path, "r", encoding="utf-8") as f:
            j = json.load(f)
    if "config" in j and isinstance(j["config"], dict):
        inner = j["config"]
    elif any(k in j for k in ("text", "vision", "region", "tokenizer")):
        inner = j
    else:
        inner = {}
    return Config(inner, is_starmie(model_dir, inner))


# ---------------------------------------------------------------- safetensors

def _bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path):
    """Returns {name: np.float32 array}. Validates the header against the file."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: header length {n} exceeds file size {len(data)}")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    body = len(data) - base
    sizes = {"BF16": 2, "F16": 2, "F32": 4}
    out = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        shape = list(info["shape"])
        b, e = info["data_offsets"]
        if dt not in sizes:
            raise ValueError(f"{path}: {name}: unsupported dtype {dt}")
        if not (0 <= b <= e <= body):
            raise ValueError(f"{path}: {name}: offsets out of range")
        count = int(np.prod(shape)) if shape else 1
        if count * sizes[dt] != e - b:
            raise ValueError(f"{path}: {name}: shape/dtype do not match byte length")
        spans.append((b, e, name))
        raw = np.frombuffer(data, dtype=np.uint8, count=e - b, offset=base + b)
        if dt == "BF16":
            arr = _bf16_to_f32(raw.view("<u2"))
        elif dt == "F16":
            arr = raw.view("<f2").astype(np.float32)
        else:
            arr = raw.view("<f4").astype(np.float32)
        out[name] = arr.reshape(shape)
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError(f"{path}: tensors {n0} and {n1} overlap")
    return out


# ---------------------------------------------------------------- names

_FIXED_2024 = [
    ("vision_encoder.encoder.model.visual.patch_embed.linear.", "vision.patch_emb."),
    ("vision_encoder.encoder.model.visual.pos_embed", "vision.pos_emb"),
    ("vision_encoder.encoder.model.visual.norm.", "vision.post_ln."),
    ("vision_encoder.projection.mlp.", "vision.proj_mlp."),
    ("text_model.transformer.embd.wte.weight", "text.wte"),
    ("text_model.lm_head.ln.", "text.post_ln."),
    ("text_model.lm_head.linear.", "text.lm_head."),
    ("region_model.coordinate_features.weight", "region.coord_features"),
    ("region_model.coordinate_encoder.", "region.coord_encoder."),
    ("region_model.coordinate_decoder.", "region.coord_decoder."),
    ("region_model.size_features.weight", "region.size_features"),
    ("region_model.size_encoder.", "region.size_encoder."),
    ("region_model.size_decoder.", "region.size_decoder."),
]
_VBLOCK_2024 = re.compile(r"^vision_encoder\.encoder\.model\.visual\.blocks\.(\d+)\.(.*)$")
_TBLOCK_2024 = re.compile(r"^text_model\.transformer\.h\.(\d+)\.(.*)$")
_VPART = {"norm1.": "ln1.", "norm2.": "ln2.", "attn.": "attn.", "mlp.": "mlp."}
_TPART = {"ln.": "ln.", "mixer.Wqkv.": "attn.qkv.", "mixer.out_proj.": "attn.proj.",
          "mlp.": "mlp."}
_TRANSPOSED_2024 = {"region.coord_features", "region.size_features"}


def canonical_name(name):
    """Stored name -> (canonical 2025 name without 'model.', transposed?)."""
    s = name.replace("._orig_mod", "")
    if s.startswith("_orig_mod."):
        s = s[len("_orig_mod."):]
    if s.startswith("model."):
        s = s[len("model."):]
    for a, b in _FIXED_2024:
        if s.startswith(a):
            c = b + s[len(a):]
            return c, c in _TRANSPOSED_2024
    for rx, parts, stack in ((_VBLOCK_2024, _VPART, "vision"), (_TBLOCK_2024, _TPART, "text")):
        m = rx.match(s)
        if m:
            rest = m.group(2)
            for a, b in parts.items():
                if rest.startswith(a):
                    return f"{stack}.blocks.{m.group(1)}.{b}{rest[len(a):]}", False
            raise ValueError(f"unknown tensor {name}")
    return s, False


def load_weights(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, "r", encoding="utf-8") as f:
            wm = json.load(f)["weight_map"]
        files = sorted(set(wm.values()))
    else:
        files = ["model.safetensors"]
    raw = {}
    for fn in files:
        for k, v in read_safetensors(os.path.join(model_dir, fn)).items():
            if k in raw:
                raise ValueError(f"duplicate tensor {k}")
            raw[k] = v
    w = {}
    for k, v in raw.items():
        c, tr = canonical_name(k)
        if tr:
            v = np.ascontiguousarray(v.T)
        if c in w:
            raise ValueError(f"duplicate canonical tensor {c}")
        w[c] = torch.from_numpy(np.array(v, dtype=np.float32, copy=True))
    return w


def expected_shapes(cfg):
    t, v, r = cfg.text, cfg.vision, cfg.region
    hd = t.dim // t.n_heads
    E, D = v.enc_dim, t.dim
    P = v.enc_patch_size
    g = v.crop_size // P
    s = {}

    def lin(name, i, o):
        s[name + ".weight"] = [o, i]
        s[name + ".bias"] = [o]

    def ln(name, d):
        s[name + ".weight"] = [d]
        s[name + ".bias"] = [d]

    lin("vision.patch_emb", P * P * v.in_channels, E)
    s["vision.pos_emb"] = [1, g * g, E]
    for i in range(v.enc_n_layers):
        b = f"vision.blocks.{i}"
        ln(b + ".ln1", E)
        ln(b + ".ln2", E)
        lin(b + ".attn.qkv", E, 3 * E)
        lin(b + ".attn.proj", E, E)
        lin(b + ".mlp.fc1", E, v.enc_ff_dim)
        lin(b + ".mlp.fc2", v.enc_ff_dim, E)
    ln("vision.post_ln", E)
    lin("vision.proj_mlp.fc1", 2 * E, v.proj_inner_dim)
    lin("vision.proj_mlp.fc2", v.proj_inner_dim, v.proj_out_dim)
    s["text.wte"] = [t.vocab_size, D]
    for i in range(t.n_layers):
        b = f"text.blocks.{i}"
        ln(b + ".ln", D)
        lin(b + ".attn.qkv", D, (t.n_heads + 2 * t.n_kv_heads) * hd)
        lin(b + ".attn.proj", D, D)
        lin(b + ".mlp.fc1", D, t.ff_dim)
        lin(b + ".mlp.fc2", t.ff_dim, D)
    ln("text.post_ln", D)
    lin("text.lm_head", D, t.vocab_size)
    s["region.coord_features"] = [1, r.coord_feat_dim // 2]
    lin("region.coord_encoder", r.coord_feat_dim, r.dim)
    lin("region.coord_decoder.fc1", r.dim, r.inner_dim)
    lin("region.coord_decoder.fc2", r.inner_dim, r.coord_out_dim)
    s["region.size_features"] = [2, r.size_feat_dim // 2]
    lin("region.size_encoder", r.size_feat_dim, r.dim)
    lin("region.size_decoder.fc1", r.dim, r.inner_dim)
    lin("region.size_decoder.fc2", r.inner_dim, r.size_out_dim)
    return s


def check_weights(w, cfg):
    exp = expected_shapes(cfg)
    missing = [k for k in exp if k not in w]
    if missing:
        raise ValueError(f"missing tensors: {missing[:5]}")
    for k, shp in exp.items():
        if list(w[k].shape) != shp:
            raise ValueError(f"{k}: shape {list(w[k].shape)} != expected {shp}")


# ---------------------------------------------------------------- image -> crops

def select_tiling(h, w, window, max_crops):
    if h <= window or w <= window:
        return (1, 1)
    min_h = -(-h // window)
    min_w = -(-w // window)
    if min_h * min_w > max_crops:
        r = math.sqrt(max_crops / (min_h * min_w))
        return (max(1, int(math.floor(min_h * r))), max(1, int(math.floor(min_w * r))))
    th = int(math.floor(math.sqrt(max_crops * h / w)))
    tw = int(math.floor(math.sqrt(max_crops * w / h)))
    th = max(th, min_h)
    tw = max(tw, min_w)
    if th * tw > max_crops:
        if tw > th:
            tw = max_crops // th
        else:
            th = max_crops // tw
    return (max(1, th), max(1, tw))


def load_rgb(path):
    from PIL import Image, ImageOps
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def pil_crops(img, vcfg):
    """img: PIL RGB image. Returns (uint8 [n,crop,crop,3], (th, tw))."""
    from PIL import Image
    P, C, M = vcfg.enc_patch_size, vcfg.crop_size, vcfg.overlap_margin
    g = C // P
    margin = P * M
    window = (g - 2 * M) * P
    W, H = img.size
    th, tw = select_tiling(H - 2 * margin, W - 2 * margin, window, vcfg.max_crops)
    n = 1 + th * tw
    out = np.zeros((n, C, C, 3), dtype=np.uint8)
    out[0] = np.asarray(img.resize((C, C), Image.LANCZOS), dtype=np.uint8)
    rw, rh = tw * window + 2 * margin, th * window + 2 * margin
    big = np.asarray(img.resize((rw, rh), Image.LANCZOS), dtype=np.uint8)
    for i in range(th):
        for j in range(tw):
            y0, x0 = i * window, j * window
            piece = big[y0:y0 + C, x0:x0 + C]
            out[1 + i * tw + j, :piece.shape[0], :piece.shape[1]] = piece
    return out, (th, tw)


def normalize_bf16(crops_u8):
    """uint8 [n,H,W,C] -> fp32 [n,C,H,W], via the contract's bf16 steps."""
    x = torch.from_numpy(np.ascontiguousarray(crops_u8)).permute(0, 3, 1, 2)
    x = x.to(torch.bfloat16)
    x = x / 255.0           # rounded to bf16
    x = x - 0.5             # rounded to bf16
    x = x * 2.0             # exact
    return x.float().contiguous()


def patchify(x, P):
    """[n,C,S,S] -> [n,(S/P)^2,C*P*P]: patches row-major, each laid out [channel][row][col]."""
    n, C, S, _ = x.shape
    g = S // P
    return x.reshape(n, C, g, P, g, P).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, C * P * P)


# ---------------------------------------------------------------- layers

def linear(x, w, prefix):
    return F.linear(x, w[prefix + ".weight"], w[prefix + ".bias"])


def layer_norm(x, w, prefix):
    g = w[prefix + ".weight"]
    return F.layer_norm(x, (g.shape[0],), g, w[prefix + ".bias"], eps=1e-5)


def gelu(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def mlp(x, w, prefix):
    return linear(gelu(linear(x, w, prefix + ".fc1")), w, prefix + ".fc2")


# ---------------------------------------------------------------- rotary / mask

def rotary_tables(rot_dim, positions):
    """cos, sin [T, rot_dim/2] for the given absolute positions."""
    half = rot_dim // 2
    i = torch.arange(half, dtype=torch.float64)
    f = torch.pow(torch.tensor(10000.0, dtype=torch.float64), -2.0 * i / rot_dim)
    ang = torch.as_tensor(positions, dtype=torch.float64)[:, None] * f[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rotary(x, cos, sin, rot_dim):
    """x [H, T, hd]; rotate pairs (i, i+rot_dim/2) for i < rot_dim/2."""
    half = rot_dim // 2
    a = x[..., :half]
    b = x[..., half:rot_dim]
    ra = a * cos - b * sin
    rb = a * sin + b * cos
    return torch.cat([ra, rb, x[..., rot_dim:]], dim=-1)


def attention_mask(q_pos, k_len, prefix):
    """bool [Tq, Tk]: True = may attend. q_pos: absolute positions of queries."""
    q = torch.as_tensor(q_pos, dtype=torch.long)[:, None]
    k = torch.arange(k_len, dtype=torch.long)[None, :]
    return (k <= q) | ((q < prefix) & (k < prefix))


def sdpa(q, k, v, mask=None):
    """q [H,Tq,d], k,v [H,Tk,d]; mask bool [Tq,Tk]."""
    s = torch.matmul(q, k.transpose(-1, -2))
    s.mul_(1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        s.masked_fill_(~mask, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v)


# ---------------------------------------------------------------- sampling

def top_p_filter(probs, top_p):
    """probs [V] (sums to 1). Returns renormalised probs with the nucleus kept."""
    p, idx = torch.sort(probs, descending=True)
    before = torch.cumsum(p, 0) - p      # mass strictly before each token
    p = torch.where(before > top_p, torch.zeros_like(p), p)
    p = p / p.sum()
    out = torch.zeros_like(probs)
    out[idx] = p
    return out


def pick_token(logits, temperature, top_p, generator=None):
    if temperature == 0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits / temperature, dim=-1)
    probs = top_p_filter(probs, top_p)
    return int(torch.multinomial(probs, 1, generator=generator).item())


# ---------------------------------------------------------------- model

class KVCache:
    """Per layer k (after rotary) and v, [n_kv_heads, max_context, head_dim],
    valid up to `length`."""

    def __init__(self, n_layers, n_kv, max_context, head_dim):
        self.k = [torch.zeros(n_kv, max_context, head_dim) for _ in range(n_layers)]
        self.v = [torch.zeros(n_kv, max_context, head_dim) for _ in range(n_layers)]
        self.length = 0
        self.prefix = None  # bidirectional prefix length; None = the config's (an image), 0 = none

    def clone(self):
        c = KVCache.__new__(KVCache)
        c.k = [t.clone() for t in self.k]
        c.v = [t.clone() for t in self.v]
        c.length = self.length
        c.prefix = self.prefix
        return c


class Moondream:
    def __init__(self, model_dir, threads=2):
        # `threads` for the batched work (vision, prefill); single-token steps run on
        # one thread: their ops are so small that a second thread only adds overhead
        # (and, on a loaded machine, a lot of it).
        self.threads = threads
        torch.set_num_threads(threads)
        self.cfg = load_config(model_dir)
        self.w = load_weights(model_dir)
        check_weights(self.w, self.cfg)
        t = self.cfg.text
        self.head_dim = t.dim // t.n_heads
        self.rot_dim = self.head_dim // 2

    # ---- vision
    def pil_crops(self, path):
        return pil_crops(load_rgb(path), self.cfg.vision)

    @torch.no_grad()
    def vision_encoder(self, crops_u8):
        v, w = self.cfg.vision, self.w
        torch.set_num_threads(self.threads)
        P = v.enc_patch_size
        g = v.crop_size // P
        x = patchify(normalize_bf16(crops_u8), P)               # [n,729,588]
        n = x.shape[0]
        x = linear(x, w, "vision.patch_emb") + w["vision.pos_emb"]
        E, H = v.enc_dim, v.enc_n_heads
        hd = E // H
        for i in range(v.enc_n_layers):
            b = f"vision.blocks.{i}"
            h = layer_norm(x, w, b + ".ln1")
            qkv = linear(h, w, b + ".attn.qkv")
            q, k, vv = qkv.split(E, dim=-1)
            q = q.reshape(n, -1, H, hd).transpose(1, 2)
            k = k.reshape(n, -1, H, hd).transpose(1, 2)
            vv = vv.reshape(n, -1, H, hd).transpose(1, 2)
            # one crop at a time: keeps the [H,729,729] scores cache-sized
            a = torch.stack([sdpa(q[c], k[c], vv[c]) for c in range(n)])
            a = a.transpose(1, 2).reshape(n, -1, E)
            x = x + linear(a, w, b + ".attn.proj")
            x = x + mlp(layer_norm(x, w, b + ".ln2"), w, b + ".mlp")
        return layer_norm(x, w, "vision.post_ln")                # [n,729,E]

    def reconstruct(self, local, tiling):
        """local [th*tw, g*g, E] -> grid [(th*(g-2M))+2M, ..., E]."""
        v = self.cfg.vision
        th, tw = tiling
        g = v.crop_size // v.enc_patch_size
        M = v.overlap_margin
        step = g - 2 * M
        E = local.shape[-1]
        grid = torch.zeros(th * step + 2 * M, tw * step + 2 * M, E)
        tiles = local.reshape(th, tw, g, g, E)
        for i in range(th):
            r0, r1 = (0 if i == 0 else M), (g if i == th - 1 else g - M)
            for j in range(tw):
                c0, c1 = (0 if j == 0 else M), (g if j == tw - 1 else g - M)
                grid[i * step + r0:i * step + r1, j * step + c0:j * step + c1] = \
                    tiles[i, j, r0:r1, c0:c1]
        return grid

    @torch.no_grad()
    def project(self, features, tiling):
        v = self.cfg.vision
        g = v.crop_size // v.enc_patch_size
        th, tw = tiling
        if features.shape[0] != 1 + th * tw:
            raise ValueError("crop count does not match tiling")
        glob = features[0]
        grid = self.reconstruct(features[1:], tiling)           # [Hg,Wg,E]
        pooled = F.adaptive_avg_pool2d(grid.permute(2, 0, 1).unsqueeze(0), (g, g))
        pooled = pooled[0].permute(1, 2, 0).reshape(g * g, -1)
        x = torch.cat([glob, pooled], dim=-1)
        return mlp(x, self.w, "vision.proj_mlp")

    @torch.no_grad()
    def encode_crops(self, crops_u8, tiling):
        feats = self.vision_encoder(crops_u8)
        return feats, self.project(feats, tiling)

    # ---- text
    def embed(self, ids):
        return self.w["text.wte"][torch.as_tensor(ids, dtype=torch.long)]

    @torch.no_grad()
    def forward(self, x, cache):
        """x [T, dim] input embeddings at positions cache.length...; returns hidden
        states [T, dim] BEFORE post LN; appends to cache."""
        t, w = self.cfg.text, self.w
        T = x.shape[0]
        p0 = cache.length
        torch.set_num_threads(self.threads if T > 8 else 1)
        if p0 + T > t.max_context:
            raise ValueError(f"context overflow: {p0 + T} > {t.max_context}")
        pos = list(range(p0, p0 + T))
        cos, sin = rotary_tables(self.rot_dim, pos)
        mask = attention_mask(pos, p0 + T, t.prefix_attn if cache.prefix is None else cache.prefix)
        hd, H, KV = self.head_dim, t.n_heads, t.n_kv_heads
        for i in range(t.n_layers):
            b = f"text.blocks.{i}"
            h = layer_norm(x, w, b + ".ln")
            qkv = linear(h, w, b + ".attn.qkv")
            q = qkv[:, :H * hd].reshape(T, H, hd).transpose(0, 1)
            k = qkv[:, H * hd:(H + KV) * hd].reshape(T, KV, hd).transpose(0, 1)
            v = qkv[:, (H + KV) * hd:].reshape(T, KV, hd).transpose(0, 1)
            q = apply_rotary(q, cos, sin, self.rot_dim)
            k = apply_rotary(k, cos, sin, self.rot_dim)
            cache.k[i][:, p0:p0 + T] = k
            cache.v[i][:, p0:p0 + T] = v
            k = cache.k[i][:, :p0 + T]
            v = cache.v[i][:, :p0 + T]
            if KV != H:
                rep = H // KV
                k = k.repeat_interleave(rep, dim=0)
                v = v.repeat_interleave(rep, dim=0)
            a = sdpa(q, k, v, mask).transpose(0, 1).reshape(T, H * hd)
            x = x + linear(a, w, b + ".attn.proj") + mlp(h, w, b + ".mlp")
        cache.length = p0 + T
        return x

    def logits(self, hidden_last):
        return linear(layer_norm(hidden_last, self.w, "text.post_ln"), self.w, "text.lm_head")

    @torch.no_grad()
    def prefix_cache(self, embeddings):
        t = self.cfg.text
        cache = KVCache(t.n_layers, t.n_kv_heads, t.max_context, self.head_dim)
        x = torch.cat([self.embed([self.cfg.tokenizer.bos_id]), embeddings], dim=0)
        self.forward(x, cache)
        return cache

    # ---- tasks
    def text_cache(self):
        """An empty cache for a question without an image: positions from 0,
        purely causal."""
        t = self.cfg.text
        c = KVCache(t.n_layers, t.n_kv_heads, t.max_context, self.head_dim)
        c.prefix = 0
        return c

    def prompt_embeddings(self, ids, refs=()):
        """wte of each id, except the spatial-reference placeholders: the k-th
        coord id gets coord_encoder(fourier(v_k)) (v: a point's x, y, a box's
        centre), the j-th size id size_encoder(fourier([w_j, h_j]))."""
        tk = self.cfg.tokenizer
        coords, sizes = [], []
        for r in refs:
            if len(r) == 2:
                coords += [r[0], r[1]]
            else:
                coords += [(r[0] + r[2]) / 2, (r[1] + r[3]) / 2]
                sizes.append([r[2] - r[0], r[3] - r[1]])
        rows, ci, si = [], 0, 0
        for i in ids:
            if refs and i == tk.coord_id and ci < len(coords):
                rows.append(self.encode_coord(coords[ci])); ci += 1
            elif refs and i == tk.size_id and si < len(sizes):
                rows.append(self.encode_size(sizes[si])); si += 1
            else:
                rows.append(self.embed([i])[0])
        return torch.stack(rows)

    @staticmethod
    def spatial_ids(refs, coord_id, size_id):
        out = []
        for r in refs:
            out += [coord_id, coord_id] if len(r) == 2 else [coord_id, coord_id, size_id]
        return out

    @torch.no_grad()
    def _answer(self, cache, h_last, max_tokens, temperature, top_p, gen):
        """The answer loop from the prompt's last hidden state: stop at eos;
        starmie era: the answer id is banned after the first token."""
        eos, ans = self.cfg.tokenizer.eos_id, self.cfg.tokenizer.get("answer_id")
        out = []
        h = h_last
        while len(out) < max_tokens:
            lg = self.logits(h)
            if self.cfg.starmie and out:
                lg = lg.clone()
                lg[ans] = float("-inf")
            tok = pick_token(lg, temperature, top_p, gen)
            if tok == eos:
                break
            out.append(tok)
            if len(out) >= max_tokens:
                break
            h = self.forward(self.embed([tok]), cache)[-1]
        return out

    @torch.no_grad()
    def generate(self, cache, prompt, max_tokens=768, temperature=0.0, top_p=0.3, seed=None, refs=()):
        cache = cache.clone()
        gen = None
        if temperature != 0:
            gen = torch.Generator()
            gen.manual_seed(0 if seed is None else seed)
        h = self.forward(self.prompt_embeddings(prompt, refs), cache)
        return self._answer(cache, h[-1], max_tokens, temperature, top_p, gen)

    def caption(self, cache, length="normal", **kw):
        return self.generate(cache, self.cfg.templates["caption"][length], **kw)

    def query_prompt(self, question_ids, refs=(), reasoning=False, text_only=False):
        t, tk = self.cfg.templates["query"], self.cfg.tokenizer
        if not self.cfg.starmie:
            return t["prefix"] + list(question_ids) + t["suffix"]
        p = t["prefix"] + self.spatial_ids(refs, tk.coord_id, tk.size_id) + list(question_ids) + t["suffix"]
        p += [tk.thinking_id] if reasoning else list(t["suffix"])  # the suffix twice: [3, 3]
        return ([tk.bos_id] if text_only else []) + p

    def query(self, cache, question_ids, refs=(), text_only=False, **kw):
        return self.generate(cache, self.query_prompt(question_ids, refs, False, text_only), refs=refs, **kw)

    @torch.no_grad()
    def reasoning_query(self, cache, question_ids, refs=(), text_only=False, max_tokens=768,
                        answer_max_tokens=768):
        """Grounded reasoning, greedy: returns (chunks [{ids, coords}], reasoning
        token ids, answer ids)."""
        tk = self.cfg.tokenizer
        cache = cache.clone()
        prompt = self.query_prompt(question_ids, refs, True, text_only)
        h = self.forward(self.prompt_embeddings(prompt, refs), cache)[-1]
        tok = int(torch.argmax(self.logits(h)).item())
        chunks = [{"ids": [], "coords": []}]
        ids = []
        while tok != tk.answer_id and len(ids) < max_tokens:
            if tok in (tk.start_ground_points_id, tk.end_ground_id):
                chunks.append({"ids": [], "coords": []})
            chunks[-1]["ids"].append(tok)
            ids.append(tok)
            if tok == tk.coord_id:
                c = self.decode_coord(h)
                chunks[-1]["coords"].append(c)
                emb = self.encode_coord(c)
            else:
                emb = self.embed([tok])[0]
            h = self.forward(emb[None, :], cache)[-1]
            lg = self.logits(h).clone()
            lg[tk.eos_id] = float("-inf")
            lg[tk.size_id] = float("-inf")
            tok = int(torch.argmax(lg).item())
        h = self.forward(self.embed(self.cfg.templates["query"]["suffix"]), cache)[-1]
        answer = self._answer(cache, h, answer_max_tokens, 0.0, 0.3, None)
        return chunks, ids, answer

    # region helpers
    def fourier(self, v, feats):
        f = 2.0 * math.pi * (torch.as_tensor(v, dtype=torch.float32).reshape(1, -1) @ feats)
        return torch.cat([torch.cos(f), torch.sin(f)], dim=-1).reshape(-1)

    def decode_coord(self, h):
        logits = mlp(h, self.w, "region.coord_decoder")
        return int(torch.argmax(logits).item()) / logits.shape[-1]

    def encode_coord(self, c):
        return linear(self.fourier([c], self.w["region.coord_features"]), self.w,
                      "region.coord_encoder")

    def decode_size(self, h):
        s = mlp(h, self.w, "region.size_decoder").reshape(2, -1)
        n = s.shape[-1]
        bw = int(torch.argmax(s[0]).item())
        bh = int(torch.argmax(s[1]).item())
        return 2.0 ** (bw / (n - 1) * 10.0 - 10.0), 2.0 ** (bh / (n - 1) * 10.0 - 10.0)

    def encode_size(self, wh):
        return linear(self.fourier(wh, self.w["region.size_features"]), self.w,
                      "region.size_encoder")

    @torch.no_grad()
    def _regions(self, cache, prompt, with_size, max_objects=50, refs=(), prompt_emb=None):
        cache = cache.clone()
        eos = self.cfg.tokenizer.eos_id
        x0 = prompt_emb if prompt_emb is not None else self.prompt_embeddings(prompt, refs)
        h = self.forward(x0, cache)[-1]
        tok = int(torch.argmax(self.logits(h)).item())
        objs = []
        while tok != eos and len(objs) < max_objects:
            x = self.decode_coord(h)
            h = self.forward(self.encode_coord(x)[None, :], cache)[-1]
            y = self.decode_coord(h)
            h = self.forward(self.encode_coord(y)[None, :], cache)[-1]
            if with_size:
                sw, sh = self.decode_size(h)
                h = self.forward(self.encode_size([sw, sh])[None, :], cache)[-1]
                objs.append({"x_min": x - sw / 2, "y_min": y - sh / 2,
                             "x_max": x + sw / 2, "y_max": y + sh / 2})
            else:
                objs.append({"x": x, "y": y})
            tok = int(torch.argmax(self.logits(h)).item())
        return objs

    def detect(self, cache, object_ids, max_objects=50):
        t = self.cfg.templates["detect"]
        return self._regions(cache, t["prefix"] + list(object_ids) + t["suffix"], True, max_objects)

    def point(self, cache, object_ids, max_objects=50, refs=()):
        t, tk = self.cfg.templates["point"], self.cfg.tokenizer
        sp = self.spatial_ids(refs, tk.coord_id, tk.size_id) if refs else []
        return self._regions(cache, t["prefix"] + sp + list(object_ids) + t["suffix"], False,
                             max_objects, refs)

    def gaze(self, cache, eye, gaze_ids, before_ids=(), after_ids=()):
        """Where the person at `eye` looks: one point or None. Starmie era:
        point "gaze" with the eye as a spatial reference, first result.
        Older: the official detect_gaze prompt (before text, the eye's x and y
        coordinate embeddings, after text), then at most one point."""
        if self.cfg.starmie:
            pts = self.point(cache, gaze_ids, 1, refs=[list(eye)])
            return pts[0] if pts else None
        emb = torch.cat([self.embed(list(before_ids)), self.encode_coord(eye[0])[None, :],
                         self.encode_coord(eye[1])[None, :], self.embed(list(after_ids))])
        pts = self._regions(cache, None, False, 1, prompt_emb=emb)
        return pts[0] if pts else None

    @torch.no_grad()
    def teacher_forced_logits(self, cache, prompt, steps):
        """Logits after the prompt, then after each of up to `steps` greedy tokens
        fed back (stopping before eos). Returns (prefill_logits, [step logits], tokens fed)."""
        cache = cache.clone()
        eos = self.cfg.tokenizer.eos_id
        h = self.forward(self.embed(prompt), cache)
        first = self.logits(h[-1])
        cur = first
        rows, fed = [], []
        for _ in range(steps):
            tok = int(torch.argmax(cur).item())
            if tok == eos:
                break
            fed.append(tok)
            h = self.forward(self.embed([tok]), cache)
            cur = self.logits(h[-1])
            rows.append(cur)
        return first, rows, fed
