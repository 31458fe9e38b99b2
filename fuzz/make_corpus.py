#!/usr/bin/python3
"""Writes the seed corpora in fuzz/corpus/ (run once; the files are in git).

Usage: fuzz/make_corpus.py [full-gpt2-tokenizer.json]
The reduced tokenizer (tokenizer_json/gpt2_small.json) is cut from a full
GPT-2 tokenizer.json, e.g. the one `make_model` writes; without one, the
existing file is kept. Images are made with PIL.
"""
import base64
import io
import json
import os
import struct
import sys
import zlib

from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def safetensors(header, data=b""):
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def image_bytes(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


# --- safetensors --------------------------------------------------------------
put("safetensors", "f32_2x2", safetensors({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}},
                                          bytes(range(16))))
put("safetensors", "bf16_meta", safetensors(
    {"__metadata__": {"format": "pt"},
     "model.text.wte": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]},
     "model.vision.x": {"dtype": "F16", "shape": [1, 1], "data_offsets": [6, 8]},
     "empty": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]}}, bytes(8)))
put("safetensors", "empty_header", safetensors({}))
put("safetensors", "overlap", safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                           "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, bytes(8)))

# --- model config.json -----------------------------------------------------------
tiny_cfg = {"config": {
    "text": {"dim": 64, "ff_dim": 256, "n_layers": 2, "vocab_size": 51200, "max_context": 1024, "n_heads": 4,
             "n_kv_heads": 4, "prefix_attn": 730},
    "vision": {"enc_dim": 32, "enc_patch_size": 14, "enc_n_layers": 2, "enc_ff_dim": 64, "enc_n_heads": 2,
               "proj_out_dim": 64, "crop_size": 378, "in_channels": 3, "max_crops": 12, "overlap_margin": 4,
               "proj_inner_dim": 128},
    "region": {"dim": 64, "coord_feat_dim": 256, "coord_out_dim": 1024, "size_feat_dim": 512,
               "size_out_dim": 2048, "inner_dim": 128},
    "tokenizer": {"bos_id": 50256, "eos_id": 50256, "templates": {
        "caption": {"short": [198, 198, 16438, 8305, 25], "normal": [198, 198, 24334, 1159, 25],
                    "long": [198, 198, 14617, 8305, 25]},
        "query": {"prefix": [198, 198, 24361, 25], "suffix": [198, 198, 33706, 25]},
        "detect": {"prefix": [198, 198, 47504, 25], "suffix": [628]},
        "point": {"prefix": [198, 198, 12727, 25], "suffix": [628]}}}}}
put("model_config", "tiny.json", json.dumps(tiny_cfg, indent=1))
put("model_config", "bare.json", json.dumps({"text": {"dim": 128, "n_heads": 8, "n_kv_heads": 2}}))
put("model_config", "empty.json", "{}")
put("model_config", "hf.json", json.dumps({"architectures": ["HfMoondream"], "model_type": "moondream1",
                                             "config": {}, "transformers_version": "4.44.0"}))

# --- tokenizer.json ----------------------------------------------------------------
small_path = os.path.join(ROOT, "tokenizer_json", "gpt2_small.json")
if len(sys.argv) > 1:
    full = json.load(open(sys.argv[1]))
    n_merges = 120
    keep = 256 + n_merges
    vocab = {k: v for k, v in full["model"]["vocab"].items() if v < keep}
    vocab["<|endoftext|>"] = 50256
    full["model"]["vocab"] = vocab
    full["model"]["merges"] = full["model"]["merges"][:n_merges]
    put("tokenizer_json", "gpt2_small.json", json.dumps(full, ensure_ascii=False, separators=(",", ":")))
small = json.load(open(small_path))
tiny = dict(small)
tiny["model"] = dict(small["model"])
tiny["model"]["merges"] = [m.split(" ") for m in small["model"]["merges"][:10]]  # the array form of merges
tiny["model"]["vocab"] = {k: v for k, v in small["model"]["vocab"].items() if v < 266 or v == 50256}
put("tokenizer_json", "gpt2_tiny_array_merges.json", json.dumps(tiny, ensure_ascii=False, separators=(",", ":")))

# --- tokenizer input text ------------------------------------------------------------
for i, s in enumerate([
        "Hello world! The quick brown fox jumps over the lazy dog.",
        "  leading and trailing spaces   \n\n\ttabs\r\n",
        "numbers 12345 3.14159 -7 1,000,000",
        "it's they're we'll I'd you've she'd",
        "caf\u00e9 na\u00efve \u00fcber \u4f60\u597d\u4e16\u754c \U0001f600\U0001f44d\u200d",
        "<|endoftext|>Question: what?<|endoftext|>\n\nAnswer:",
        "\x00\x01\x02 control \x7f",
        "a" * 200]):
    put("tokenizer", "text%d" % i, s)
put("tokenizer", "invalid_utf8", b"\xff\xfe\xc3(\xe2\x82 \xf0\x9f\x98 ok \x80")

# --- images ----------------------------------------------------------------------------
grad = Image.new("RGB", (24, 16))
grad.putdata([(x * 10, y * 15, (x + y) * 6) for y in range(16) for x in range(24)])
put("image", "rgb.jpg", image_bytes(grad, "JPEG", quality=70))
put("image", "rgb_progressive.jpg", image_bytes(grad, "JPEG", quality=50, progressive=True))
put("image", "grey.jpg", image_bytes(grad.convert("L"), "JPEG"))
put("image", "cmyk.jpg", image_bytes(grad.convert("CMYK"), "JPEG"))
exif = Image.Exif()
exif[0x0112] = 6
put("image", "exif6.jpg", image_bytes(grad, "JPEG", exif=exif.tobytes()))
put("image", "rgb.png", image_bytes(grad, "PNG"))
put("image", "rgba.png", image_bytes(grad.convert("RGBA"), "PNG"))
put("image", "grey.png", image_bytes(grad.convert("L"), "PNG"))
put("image", "palette.png", image_bytes(grad.convert("P"), "PNG"))
put("image", "grey16.png", image_bytes(grad.convert("L").convert("I").point(lambda v: v * 256).convert("I;16"), "PNG"))
put("image", "la.png", image_bytes(grad.convert("LA"), "PNG"))
put("image", "lossy.webp", image_bytes(grad, "WEBP", quality=50))
put("image", "lossless.webp", image_bytes(grad.convert("RGBA"), "WEBP", lossless=True))
put("image", "tall_1x40.png", image_bytes(Image.new("RGB", (1, 40), (9, 99, 199)), "PNG"))
put("image", "wide_90x2.png", image_bytes(Image.new("RGB", (90, 2), (200, 20, 2)), "PNG"))
put("image", "one_pixel.webp", image_bytes(Image.new("RGB", (1, 1), (1, 2, 3)), "WEBP"))
# 50000×50000 PNG header with a few bytes of data: refused by the pixel limit.
ihdr = struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
put("image", "bomb.png", b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) +
    png_chunk(b"IDAT", zlib.compress(bytes(3000))) + png_chunk(b"IEND", b""))
put("image", "gif", image_bytes(grad, "GIF"))
put("image", "bmp", image_bytes(grad, "BMP"))
put("image", "tiff", image_bytes(Image.new("RGB", (2, 2)), "TIFF"))
put("image", "svg", '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
put("image", "text", "not an image at all")

# --- image_url values ----------------------------------------------------------------------
png = image_bytes(Image.new("RGB", (2, 2), (5, 6, 7)), "PNG")
b64 = base64.b64encode(png).decode()
put("data_uri", "png_uri", "data:image/png;base64," + b64)
put("data_uri", "jpeg_uri_upper", "DATA:image/jpeg;BASE64," + b64)
put("data_uri", "bare", b64)
put("data_uri", "urlsafe_nopad", base64.urlsafe_b64encode(png).decode().rstrip("="))
put("data_uri", "wrapped", "data:image/webp;base64," + "\n".join(b64[i:i + 20] for i in range(0, len(b64), 20)))
put("data_uri", "not_base64", "data:image/png,rawdata")
put("data_uri", "http", "http://127.0.0.1:8080/cat.png")
put("data_uri", "file", "file:///etc/passwd")
put("data_uri", "ipv6", "::ffff:10.0.0.1")
put("data_uri", "ipv4", "169.254.169.254")

# --- server config ----------------------------------------------------------------------------
for name in ("moondream2", "moondream2_optimized"):
    put("server_config", name + ".json", open(os.path.join(SRC, "configs", name + ".json")).read())
put("server_config", "limits.json", json.dumps({
    "model_path": "/models/m", "max_tokens": 300, "threads": 2,
    "server": {"port": 9000, "backend_port": 0, "api_key": "k", "queue_size": 2, "cors_enabled": True,
               "allow_image_urls": True, "allow_private_image_urls": False},
    "limits": {"max_body_bytes": 4096, "max_image_bytes": 1000, "max_image_pixels": 5000,
               "image_url_timeout_s": 3, "max_objects": 5, "max_images": 2, "request_timeout_s": 10,
               "idle_timeout_s": 3},
    "performance": {"quantization": "int4"}, "device": "cuda", "unknown": 1}))

# --- request bodies ---------------------------------------------------------------------------
img = "data:image/png;base64," + b64
put("requests", "caption.json", json.dumps({"image_url": img, "length": "short", "stream": True,
                                            "settings": {"temperature": 0, "top_p": 0.9, "max_tokens": 20}}))
put("requests", "query.json", json.dumps({"image_url": img, "question": "What is this?", "seed": 7,
                                          "settings": {"max_tokens": 12.0}}))
put("requests", "detect.json", json.dumps({"image_url": img, "object": "cat", "settings": {"max_objects": 3}}))
put("requests", "point.json", json.dumps({"image_url": img, "object": "dog", "max_objects": 2}))
put("requests", "chat.json", json.dumps({
    "model": "moondream2", "temperature": 0, "max_tokens": 64, "stream": True, "stop": ["\n", "."], "n": 1,
    "stream_options": {"include_usage": True},
    "messages": [{"role": "system", "content": "be brief"},
                 {"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                              {"type": "image_url", "image_url": {"url": img}}]},
                 {"role": "assistant", "content": "A square."},
                 {"role": "user", "content": "And its colour?"}]}))
put("requests", "chat_images.json", json.dumps({"messages": [{"role": "user", "content": [
    {"type": "input_image", "image_url": img}, {"type": "image_url", "image_url": {"url": img}},
    {"type": "input_text", "text": ""}]}], "max_completion_tokens": 5, "stop": "x"}))
put("requests", "profile.json", json.dumps({"active_model": "moondream2_optimized"}))
put("requests", "bad.json", '{"image_url": 5, "messages": {}, "settings": [], "active_model": ""}')
