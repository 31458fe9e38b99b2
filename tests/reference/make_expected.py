#!/usr/bin/env python3
"""Expected values of the independent PyTorch reference (moondream_ref.py).

    make_expected.py --model DIR --images IMG... --crops-dir CROPSDIR --out OUTDIR
                     [--max-tokens 48] [--query-ids 1867,318,...] [--detect-ids 3797]
                     [--point-ids 3290] [--decode-steps 20] [--threads 2]

For each image NAME (file stem) writes OUTDIR/NAME/:
  crops_pil.u8          uint8 [n,378,378,3] (HWC), the reference's own PIL crops
  features.f32          float32 LE [n,729,enc_dim], vision encoder output
  embeddings.f32        float32 LE [729,dim], projected image embeddings
  prefill_logits.f32    float32 LE [vocab], logits after the caption "normal" prompt
  decode_logits.f32     float32 LE [S,vocab], logits after feeding each of S greedy tokens
  meta.json             tiling, counts, token ids of every task, detect/point results
Every stage after cropping starts from the C++ crops CROPSDIR/NAME.u8 + NAME.json
when present (else from the PIL crops; meta.json "crops_source" says which).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moondream_ref as R  # noqa: E402

QUERY_QUESTION = "What is in this image?"
DEFAULT_QUERY_IDS = [1867, 318, 287, 428, 2939, 30]   # " What is in this image?"
DEFAULT_DETECT_IDS = [3797]                           # " cat"
DEFAULT_POINT_IDS = [3290]                            # " dog"


def id_list(s):
    return [int(t) for t in s.split(",") if t.strip() != ""]


def write_f32(path, t):
    np.ascontiguousarray(t.detach().numpy().astype("<f4")).tofile(path)


def load_cpp_crops(crops_dir, name, crop):
    if not crops_dir:
        return None
    u8 = os.path.join(crops_dir, name + ".u8")
    js = os.path.join(crops_dir, name + ".json")
    if not (os.path.exists(u8) and os.path.exists(js)):
        return None
    with open(js, "r", encoding="utf-8") as f:
        meta = json.load(f)
    n = int(meta["count"])
    th, tw = int(meta["rows"]), int(meta["cols"])
    data = np.fromfile(u8, dtype=np.uint8)
    if data.size != n * crop * crop * 3:
        raise ValueError(f"{u8}: {data.size} bytes, expected {n}x{crop}x{crop}x3")
    if n != 1 + th * tw:
        raise ValueError(f"{js}: count {n} != 1 + rows*cols")
    return data.reshape(n, crop, crop, 3), (th, tw), meta


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--crops-dir", default="")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--decode-steps", type=int, default=20)
    ap.add_argument("--query-ids", type=id_list, default=DEFAULT_QUERY_IDS)
    ap.add_argument("--detect-ids", type=id_list, default=DEFAULT_DETECT_IDS)
    ap.add_argument("--point-ids", type=id_list, default=DEFAULT_POINT_IDS)
    ap.add_argument("--max-objects", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    t0 = time.time()
    m = R.Moondream(a.model, threads=a.threads)
    print(f"loaded model {a.model} in {time.time() - t0:.2f} s", flush=True)
    crop = m.cfg.vision.crop_size
    total = time.time()
    for path in a.images:
        name = os.path.splitext(os.path.basename(path))[0]
        od = os.path.join(a.out, name)
        os.makedirs(od, exist_ok=True)
        times = {}

        t = time.time()
        pil, pil_tiling = m.pil_crops(path)
        pil.tofile(os.path.join(od, "crops_pil.u8"))
        times["pil_crops"] = time.time() - t

        cpp = load_cpp_crops(a.crops_dir, name, crop)
        if cpp is not None:
            crops, tiling, cmeta = cpp
            source = "cpp"
        else:
            crops, tiling, cmeta = pil, pil_tiling, None
            source = "pil"

        t = time.time()
        feats, emb = m.encode_crops(crops, tiling)
        write_f32(os.path.join(od, "features.f32"), feats)
        write_f32(os.path.join(od, "embeddings.f32"), emb)
        times["vision"] = time.time() - t

        t = time.time()
        cache = m.prefix_cache(emb)
        times["prefix"] = time.time() - t

        t = time.time()
        first, rows, fed = m.teacher_forced_logits(
            cache, m.cfg.templates["caption"]["normal"], a.decode_steps)
        write_f32(os.path.join(od, "prefill_logits.f32"), first)
        if rows:
            write_f32(os.path.join(od, "decode_logits.f32"), torch.stack(rows))
        else:
            open(os.path.join(od, "decode_logits.f32"), "wb").close()
        times["logits"] = time.time() - t

        t = time.time()
        kw = {"max_tokens": a.max_tokens, "temperature": 0.0}
        caps = {length: m.caption(cache, length, **kw) for length in ("short", "normal", "long")}
        query = m.query(cache, a.query_ids, **kw)
        times["generate"] = time.time() - t
        t = time.time()
        det = m.detect(cache, a.detect_ids, a.max_objects)
        pts = m.point(cache, a.point_ids, a.max_objects)
        times["regions"] = time.time() - t

        meta = {
            "image": os.path.basename(path),
            "crops_source": source,
            "tiling": [tiling[0], tiling[1]],
            "count": int(crops.shape[0]),
            "pil_tiling": [pil_tiling[0], pil_tiling[1]],
            "pil_count": int(pil.shape[0]),
            "crop_size": crop,
            "enc_dim": m.cfg.vision.enc_dim,
            "dim": m.cfg.text.dim,
            "vocab_size": m.cfg.text.vocab_size,
            "decode_steps": len(rows),
            "decode_tokens": fed,
            "max_tokens": a.max_tokens,
            "caption_short": caps["short"],
            "caption_normal": caps["normal"],
            "caption_long": caps["long"],
            "query_question": QUERY_QUESTION,
            "query_ids": a.query_ids,
            "query": query,
            "detect_object": "cat",
            "detect_ids": a.detect_ids,
            "detect": det,
            "point_object": "dog",
            "point_ids": a.point_ids,
            "point": pts,
            "max_objects": a.max_objects,
        }
        if cmeta is not None:
            meta["cpp_crops_meta"] = cmeta
        with open(os.path.join(od, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        tt = " ".join(f"{k}={v:.2f}s" for k, v in times.items())
        print(f"{name}: crops={source} tiling={tiling[0]}x{tiling[1]} n={crops.shape[0]} "
              f"S={len(rows)} cap={len(caps['normal'])} q={len(query)} det={len(det)} "
              f"pts={len(pts)} | {tt}", flush=True)
    print(f"total {time.time() - total:.2f} s for {len(a.images)} images", flush=True)


if __name__ == "__main__":
    main()
