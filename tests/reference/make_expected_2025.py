#!/usr/bin/env python3
"""Expected values of the independent PyTorch reference for revision
2025-06-21 (starmie) and for gaze on the older revisions.

    make_expected_2025.py --model DIR --image IMG --crops-dir CROPSDIR --ids IDS.json --out OUT.json
                          [--max-tokens 24]

IDS.json: {"question": [..], "object": [..], "gaze": [..],
           "gaze_before": [..], "gaze_after": [..]} (token ids from npm tokenizers).
Writes one JSON object with the prompt ids and greedy results of every task.
"""
import argparse
import json
import os
import sys

import torch

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_expected as E  # noqa: E402
import moondream_ref as R  # noqa: E402

POINT_REF = [0.25, 0.75]
BOX_REF = [0.1, 0.2, 0.5, 0.9]
EYE = [0.4, 0.3]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--crops-dir", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-tokens", type=int, default=24)
    a = ap.parse_args()
    with open(a.ids) as f:
        ids = json.load(f)
    m = R.Moondream(a.model)
    name = os.path.splitext(os.path.basename(a.image))[0]
    crops, tiling, _ = E.load_cpp_crops(a.crops_dir, name, m.cfg.vision.crop_size)
    _, emb = m.encode_crops(crops, tiling)
    cache = m.prefix_cache(emb)
    kw = {"max_tokens": a.max_tokens, "temperature": 0.0}
    q, obj = ids["question"], ids["object"]
    out = {"image": os.path.basename(a.image), "starmie": m.cfg.starmie, "max_tokens": a.max_tokens,
           "point_ref": POINT_REF, "box_ref": BOX_REF, "eye": EYE}
    if m.cfg.starmie:
        out["caption_normal"] = {"prompt": m.cfg.templates["caption"]["normal"],
                                 "tokens": m.caption(cache, "normal", **kw)}
        out["query"] = {"prompt": m.query_prompt(q), "tokens": m.query(cache, q, **kw)}
        refs = [POINT_REF, BOX_REF]
        out["query_spatial"] = {"prompt": m.query_prompt(q, refs), "tokens": m.query(cache, q, refs=refs, **kw)}
        out["query_text_only"] = {"prompt": m.query_prompt(q, text_only=True),
                                  "tokens": m.query(m.text_cache(), q, text_only=True, **kw)}
        for key, c, text_only in (("reasoning", cache, False), ("reasoning_text_only", m.text_cache(), True)):
            chunks, rtoks, ans = m.reasoning_query(c, q, text_only=text_only, max_tokens=a.max_tokens,
                                                   answer_max_tokens=a.max_tokens)
            out[key] = {"prompt": m.query_prompt(q, reasoning=True, text_only=text_only),
                        "chunks": chunks, "reasoning_tokens": rtoks, "tokens": ans}
        t = m.cfg.templates
        out["detect"] = {"prompt": t["detect"]["prefix"] + obj + t["detect"]["suffix"],
                         "objects": m.detect(cache, obj, 8)}
        out["point"] = {"prompt": t["point"]["prefix"] + obj + t["point"]["suffix"], "points": m.point(cache, obj, 8)}
        out["point_spatial"] = {"prompt": t["point"]["prefix"] + [5, 5] + obj + t["point"]["suffix"],
                                "points": m.point(cache, obj, 8, refs=[POINT_REF])}
        out["gaze"] = {"prompt": t["point"]["prefix"] + [5, 5] + ids["gaze"] + t["point"]["suffix"],
                       "gaze": m.gaze(cache, EYE, ids["gaze"])}
    else:
        out["gaze"] = {"prompt": ids["gaze_before"] + ids["gaze_after"],
                       "gaze": m.gaze(cache, EYE, None, ids["gaze_before"], ids["gaze_after"])}
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    print(f"{a.out}: revision {'2025-06-21' if m.cfg.starmie else 'older'} expected values", flush=True)


if __name__ == "__main__":
    with torch.no_grad():
        main()
