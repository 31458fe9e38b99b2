#!/usr/bin/env python3
"""Writes the deterministic test images into OUTDIR.

    gen_images.py OUTDIR

square_378.png      378x378 RGB, photo-like
tiny_1x1.png        1x1 RGB
strip_1x500.webp    1 wide x 500 tall, lossless WebP
photo_640x480.jpg   640x480, JPEG quality 90
solid_1000x700.png  1000x700, one solid colour
photo_4000x3000.jpg 4000x3000, JPEG quality 85
wide_1600x300.webp  1600x300, lossy WebP
rgba_500x400.png    500x400 RGBA with varying alpha
grey_300x900.png    300 wide x 900 tall, mode L
"""
import os
import sys

import numpy as np
from PIL import Image


def photo(w, h, seed):
    """Photo-like RGB uint8 [h,w,3]: smooth gradients + a few shapes + noise."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    img = np.empty((h, w, 3), dtype=np.float32)
    for c in range(3):
        a, b, ph, fr = rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0), rng.uniform(0, 6.28), \
            rng.uniform(1.0, 4.0)
        img[..., c] = 255.0 * (0.35 * a * x + 0.35 * b * y
                               + 0.3 * (0.5 + 0.5 * np.sin(fr * 6.28 * (x + 0.7 * y) + ph)))
    # shapes (coordinates in the unit square, so the picture is scale-independent)
    for _ in range(6):
        col = rng.uniform(0, 255, 3).astype(np.float32)
        cx, cy = rng.uniform(0.1, 0.9, 2)
        if rng.uniform() < 0.5:
            r = rng.uniform(0.05, 0.2)
            m = ((x - cx) * w) ** 2 + ((y - cy) * h) ** 2 < (r * min(w, h)) ** 2
        else:
            hw, hh = rng.uniform(0.05, 0.25, 2)
            m = (np.abs(x - cx) < hw) & (np.abs(y - cy) < hh)
        img[m] = 0.3 * img[m] + 0.7 * col
    img += rng.normal(0.0, 6.0, size=(h, w, 1)).astype(np.float32)  # luminance noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gen_images.py OUTDIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    p = lambda n: os.path.join(out, n)

    Image.fromarray(photo(378, 378, 1)).save(p("square_378.png"))
    Image.fromarray(np.array([[[200, 40, 90]]], dtype=np.uint8)).save(p("tiny_1x1.png"))
    Image.fromarray(photo(1, 500, 3)).save(p("strip_1x500.webp"), lossless=True)
    Image.fromarray(photo(640, 480, 4)).save(p("photo_640x480.jpg"), quality=90)
    Image.fromarray(np.full((700, 1000, 3), (30, 140, 210), dtype=np.uint8)).save(
        p("solid_1000x700.png"))
    Image.fromarray(photo(4000, 3000, 6)).save(p("photo_4000x3000.jpg"), quality=85)
    Image.fromarray(photo(1600, 300, 7)).save(p("wide_1600x300.webp"), quality=80)
    rgb = photo(500, 400, 8)
    yy, xx = np.mgrid[0:400, 0:500]
    alpha = np.clip(255.0 * (0.5 + 0.5 * np.sin(xx / 37.0) * np.cos(yy / 23.0)), 0, 255)
    alpha[:40, :] = 0                      # a fully transparent band
    alpha[-40:, :] = 255                   # and a fully opaque one
    rgba = np.dstack([rgb, alpha.astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(p("rgba_500x400.png"))
    grey = photo(300, 900, 9).mean(axis=2).round().astype(np.uint8)
    Image.fromarray(grey, "L").save(p("grey_300x900.png"))


if __name__ == "__main__":
    main()
