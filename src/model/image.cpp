// Image bytes → RGB pixels → overlapping crops (docs/MODEL.md section 4).
//
// Decoding and resampling use libvips, as the official implementation does
// when pyvips is installed. Notes on fidelity to the official pipeline
// (PIL `Image.open(...).convert("RGB")` → numpy → `overlap_crop_image`):
//   * Only JPEG, PNG and WebP are accepted; the format is decided from the
//     magic bytes here and only that format's libvips loader is run.
//   * Alpha is dropped, not blended (PIL convert("RGB") does the same).
//   * 16-bit samples keep their high byte (libvips cast with shift = v >> 8),
//     which is what PIL does for 16-bit RGB/RGBA/LA PNGs. (PIL opens 16-bit
//     grey PNGs as mode "I;16" and clips them to 255 on convert("RGB"); we
//     take the high byte there too, a deliberate and saner deviation.)
//   * CMYK JPEGs are converted with PIL's naive formula
//     (R = (255−K) − round(C·(255−K)/255), likewise G from M, B from Y);
//     embedded ICC profiles are ignored, as PIL's convert("RGB") ignores them.
//     libvips un-inverts Adobe CMYK on load, as PIL does.
//   * EXIF orientation is applied (vips_autorot), as docs/MODEL.md section 4.1 asks.
//   * Resizing is pyvips' `image.resize(target_w / W, vscale=target_h / H)`
//     on the 8-bit 3-band image, the default kernel (Lanczos-3) and the
//     libvips version installed here.
#include "model/image.h"

#include <glib.h>
#include <vips/vips8>
#include <webp/decode.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <new>

#include "tensor/dtype.h"
#include "tensor/error.h"

namespace md {
namespace {

using vips::VError;
using vips::VImage;

void ensure_vips() {
  static std::once_flag once;
  static bool ok = false;
  std::call_once(once, [] {
    if (VIPS_INIT("moondream") != 0) {
      vips_error_clear();
      return;
    }
    // No operation cache: we load from caller-owned memory, and caching
    // would only keep large images alive.
    vips_cache_set_max(0);
    vips_cache_set_max_mem(0);
    vips_cache_set_max_files(0);
    // Only the three loaders we call may run: every other libvips loader
    // (TIFF, GIF, SVG, PDF, HEIF, ImageMagick, matrix, raw, ...) is blocked
    // process-wide, so no path through libvips can parse another format.
    vips_block_untrusted_set(TRUE);
    vips_operation_block_set("VipsForeignLoad", TRUE);
    for (const char* name : {"VipsForeignLoadJpegBuffer", "VipsForeignLoadPngBuffer", "VipsForeignLoadWebpBuffer"})
      vips_operation_block_set(name, FALSE);
    // libvips logs decode problems as GLib warnings on stderr; they reach
    // the caller as md::Error instead.
    if (!std::getenv("MOONDREAM_VIPS_WARNINGS"))
      g_log_set_handler(
          "VIPS", G_LOG_LEVEL_WARNING, [](const gchar*, GLogLevelFlags, const gchar*, gpointer) {}, nullptr);
    // A few threads are plenty for crops; inference owns the cores.
    if (!std::getenv("VIPS_CONCURRENCY")) vips_concurrency_set(2);
    ok = true;
  });
  if (!ok) throw Error("image: cannot initialise libvips");
}

enum class Format { Jpeg, Png, Webp };

const char* format_name(Format f) {
  switch (f) {
    case Format::Jpeg: return "JPEG";
    case Format::Png: return "PNG";
    case Format::Webp: return "WebP";
  }
  return "?";
}

bool sniff(std::span<const uint8_t> b, Format* out) {
  static const uint8_t png[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  if (b.size() >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff) {
    *out = Format::Jpeg;
    return true;
  }
  if (b.size() >= 8 && std::memcmp(b.data(), png, 8) == 0) {
    *out = Format::Png;
    return true;
  }
  if (b.size() >= 12 && std::memcmp(b.data(), "RIFF", 4) == 0 && std::memcmp(b.data() + 8, "WEBP", 4) == 0) {
    *out = Format::Webp;
    return true;
  }
  return false;
}

// Width and height from the file's own header, for the formats whose libvips
// header load allocates by the declared size: libvips' WebP loader allocates
// (calloc) the whole width×height×4 canvas while reading the header, so a
// 44-byte WebP declaring 12131×9070 costs 440 MB before any pixel check.
// PNG's IHDR is read too (cheap). False when the header gives no size.
bool declared_size(Format fmt, std::span<const uint8_t> b, uint64_t* w, uint64_t* h) {
  auto be32 = [&](size_t i) {
    return (uint32_t(b[i]) << 24) | (uint32_t(b[i + 1]) << 16) | (uint32_t(b[i + 2]) << 8) | uint32_t(b[i + 3]);
  };
  if (fmt == Format::Png) {
    if (b.size() < 24 || std::memcmp(b.data() + 12, "IHDR", 4) != 0) return false;
    *w = be32(16);
    *h = be32(20);
    return true;
  }
  if (fmt == Format::Webp) {
    WebPBitstreamFeatures f;
    if (WebPGetFeatures(b.data(), b.size(), &f) != VP8_STATUS_OK) return false;
    *w = uint64_t(std::max(f.width, 0));
    *h = uint64_t(std::max(f.height, 0));
    return true;
  }
  return false;
}

std::string too_many_pixels(uint64_t width, uint64_t height, uint64_t max_pixels) {
  return "image: " + std::to_string(width) + "×" + std::to_string(height) + " pixels exceeds the limit of " +
         std::to_string(max_pixels);
}

// The first line of a libvips error message, for appending to ours. The
// libvips error buffer is process-wide and VError does not clear it.
std::string vips_detail(const VError& e) {
  vips_error_clear();
  std::string s = e.what();
  size_t nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\r' || s.back() == '.')) s.pop_back();
  return s.empty() ? std::string() : " (" + s + ")";
}

struct GFreeDeleter {
  void operator()(void* p) const { g_free(p); }
};
using VipsBuffer = std::unique_ptr<uint8_t, GFreeDeleter>;

VipsBuffer write_to_memory(const VImage& img, size_t expected) {
  size_t size = 0;
  VipsBuffer buf(static_cast<uint8_t*>(img.write_to_memory(&size)));
  if (!buf || size != expected) throw VError("unexpected buffer size from libvips");
  return buf;
}

struct Resized {
  int width = 0;
  int height = 0;
  VipsBuffer pixels;  // width*height*3
};

// pyvips: vips_image.resize(scale_x, vscale=scale_y) with the default kernel.
Resized vips_resize_rgb(const RgbImage& image, int target_w, int target_h) {
  const double scale_x = double(target_w) / double(image.width);
  const double scale_y = double(target_h) / double(image.height);
  try {
    VImage src = VImage::new_from_memory(const_cast<uint8_t*>(image.pixels.data()), image.pixels.size(), image.width,
                                         image.height, 3, VIPS_FORMAT_UCHAR);
    VImage out = src.resize(scale_x, VImage::option()->set("vscale", scale_y));
    if (out.bands() != 3 || out.format() != VIPS_FORMAT_UCHAR) throw VError("resize changed the pixel format");
    Resized r;
    r.width = out.width();
    r.height = out.height();
    r.pixels = write_to_memory(out, size_t(r.width) * r.height * 3);
    return r;
  } catch (const VError& e) {
    throw Error("image: resizing " + std::to_string(image.width) + "×" + std::to_string(image.height) + " to " +
                std::to_string(target_w) + "×" + std::to_string(target_h) + " failed" + vips_detail(e));
  }
}

void to_rgb(const uint8_t* src, int bands, bool cmyk, size_t n, uint8_t* dst) {
  if (cmyk) {
    // PIL cmyk2rgb: nk − MULDIV255(c, nk), MULDIV255 rounding a·b/255.
    auto muldiv255 = [](int a, int b) {
      int t = a * b + 128;
      return ((t >> 8) + t) >> 8;
    };
    for (size_t i = 0; i < n; ++i, src += bands, dst += 3) {
      int nk = 255 - src[3];
      for (int c = 0; c < 3; ++c) dst[c] = uint8_t(std::clamp(nk - muldiv255(src[c], nk), 0, 255));
    }
  } else if (bands <= 2) {  // grey, grey + alpha
    for (size_t i = 0; i < n; ++i, src += bands, dst += 3) dst[0] = dst[1] = dst[2] = src[0];
  } else {  // RGB, RGBA (alpha dropped)
    for (size_t i = 0; i < n; ++i, src += bands, dst += 3) {
      dst[0] = src[0];
      dst[1] = src[1];
      dst[2] = src[2];
    }
  }
}

}  // namespace

RgbImage decode_image(std::span<const uint8_t> bytes, uint64_t max_pixels) {
  if (bytes.empty()) throw Error("image: empty input");
  Format fmt;
  if (!sniff(bytes, &fmt)) throw Error("image: not a JPEG, PNG or WebP file");
  ensure_vips();
  const std::string name = format_name(fmt);
  if (uint64_t w = 0, h = 0; max_pixels > 0 && declared_size(fmt, bytes, &w, &h) && w * h > max_pixels)
    throw Error(too_many_pixels(w, h, max_pixels));

  // The blob borrows the caller's bytes; everything below finishes with them
  // before returning.
  VipsBlob* blob = vips_blob_new(nullptr, bytes.data(), bytes.size());
  std::unique_ptr<VipsBlob, void (*)(VipsBlob*)> blob_ref(blob, [](VipsBlob* b) { vips_area_unref(VIPS_AREA(b)); });

  // Header only: libvips loaders read pixels lazily, on first access.
  VImage img;
  vips_error_clear();
  try {
    auto opts = [&] {
      return VImage::option()->set("access", int(VIPS_ACCESS_SEQUENTIAL))->set("fail_on", int(VIPS_FAIL_ON_ERROR));
    };
    switch (fmt) {
      case Format::Jpeg: img = VImage::jpegload_buffer(blob, opts()); break;
      case Format::Png: img = VImage::pngload_buffer(blob, opts()); break;
      case Format::Webp: img = VImage::webpload_buffer(blob, opts()); break;
    }
  } catch (const VError& e) {
    throw Error("image: truncated or corrupt " + name + " header" + vips_detail(e));
  }

  const int width = img.width(), height = img.height(), bands = img.bands();
  if (width <= 0 || height <= 0 || bands <= 0) throw Error("image: " + name + " header describes no pixels");
  const uint64_t npix = uint64_t(width) * uint64_t(height);
  if (max_pixels > 0 && npix > max_pixels) throw Error(too_many_pixels(uint64_t(width), uint64_t(height), max_pixels));

  int orientation = 1;
  if (img.get_typeof(VIPS_META_ORIENTATION) != 0) {
    try {
      orientation = img.get_int(VIPS_META_ORIENTATION);
    } catch (const VError&) {
      orientation = 1;
    }
  }
  const bool cmyk = bands >= 4 && (img.interpretation() == VIPS_INTERPRETATION_CMYK || fmt == Format::Jpeg);

  RgbImage out;
  out.width = width;
  out.height = height;
  try {
    out.pixels.resize(npix * 3);
  } catch (const std::bad_alloc&) {
    throw Error("image: " + std::to_string(width) + "×" + std::to_string(height) + " pixels: out of memory");
  }
  try {
    VImage u8 = img;
    if (u8.format() == VIPS_FORMAT_USHORT)
      u8 = u8.cast(VIPS_FORMAT_UCHAR, VImage::option()->set("shift", true));  // v >> 8
    else if (u8.format() != VIPS_FORMAT_UCHAR)
      u8 = u8.cast(VIPS_FORMAT_UCHAR);
    // The whole decode happens here; a truncated or corrupt file fails it.
    VipsBuffer raw = write_to_memory(u8, npix * size_t(bands));
    to_rgb(raw.get(), bands, cmyk, npix, out.pixels.data());
  } catch (const VError& e) {
    throw Error("image: truncated or corrupt " + name + " data" + vips_detail(e));
  }

  if (orientation >= 2 && orientation <= 8) {
    try {
      VImage m = VImage::new_from_memory(out.pixels.data(), out.pixels.size(), width, height, 3, VIPS_FORMAT_UCHAR);
      m.set(VIPS_META_ORIENTATION, orientation);
      VImage rot = m.autorot();
      RgbImage r;
      r.width = rot.width();
      r.height = rot.height();
      r.pixels.resize(size_t(r.width) * r.height * 3);
      VipsBuffer buf = write_to_memory(rot, r.pixels.size());
      std::memcpy(r.pixels.data(), buf.get(), r.pixels.size());
      out = std::move(r);
    } catch (const VError& e) {
      throw Error("image: applying EXIF orientation failed" + vips_detail(e));
    }
  }
  return out;
}

RgbImage load_image_file(const std::string& path, uint64_t max_pixels) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("image: cannot open " + path + ": " + std::strerror(errno));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) throw Error("image: cannot read " + path);
  try {
    return decode_image(bytes, max_pixels);
  } catch (const Error& e) {
    std::string msg = e.what();
    if (msg.rfind("image: ", 0) == 0) msg = "image: " + path + ": " + msg.substr(7);
    throw Error(msg);
  }
}

Tiling select_tiling(int height, int width, int crop_size, int max_crops) {
  // Transcription of the official select_tiling (docs/MODEL.md section 4.2). Python's
  // math.ceil(a / b) on ints equals integer ceiling for these magnitudes;
  // the square roots and floors are done in double as Python does.
  if (height <= crop_size || width <= crop_size) return {1, 1};
  const long long h = height, w = width, cs = crop_size, mc = max_crops;
  const long long min_h = (h + cs - 1) / cs;
  const long long min_w = (w + cs - 1) / cs;
  if (min_h * min_w > mc) {
    const double ratio = std::sqrt(double(mc) / double(min_h * min_w));
    return {int(std::max(1.0, std::floor(double(min_h) * ratio))),
            int(std::max(1.0, std::floor(double(min_w) * ratio)))};
  }
  long long th = (long long)std::floor(std::sqrt(double(mc * h) / double(w)));
  long long tw = (long long)std::floor(std::sqrt(double(mc * w) / double(h)));
  th = std::max(th, min_h);
  tw = std::max(tw, min_w);
  if (th * tw > mc) {
    if (tw > th)
      tw = mc / th;
    else
      th = mc / tw;
  }
  return {int(std::max(1LL, th)), int(std::max(1LL, tw))};
}

namespace detail {

void extract_window(const uint8_t* src, int src_w, int src_h, int y0, int x0, int size, uint8_t* out) {
  // numpy: crop = image[y0:min(y0+size,H), x0:min(x0+size,W)] written into a
  // zeroed size×size crop at the top-left.
  std::memset(out, 0, size_t(size) * size * 3);
  const int y_end = std::min(y0 + size, src_h), x_end = std::min(x0 + size, src_w);
  if (y0 < 0 || x0 < 0 || y_end <= y0 || x_end <= x0) return;
  const size_t row_bytes = size_t(x_end - x0) * 3;
  for (int y = y0; y < y_end; ++y)
    std::memcpy(out + size_t(y - y0) * size * 3, src + (size_t(y) * src_w + x0) * 3, row_bytes);
}

}  // namespace detail

Crops make_crops(const RgbImage& image, const CropParams& params) {
  if (image.width <= 0 || image.height <= 0 || image.pixels.size() != size_t(image.width) * image.height * 3)
    throw Error("image: make_crops needs a non-empty RGB image");
  if (params.crop_size <= 0 || params.patch_size <= 0 || params.overlap_margin < 0 || params.max_crops < 1)
    throw Error("image: invalid crop parameters");
  const int margin = params.patch_size * params.overlap_margin;
  const int total_margin = 2 * margin;
  const int crop_patches = params.crop_size / params.patch_size;
  const int window = (crop_patches - 2 * params.overlap_margin) * params.patch_size;
  if (window <= 0) throw Error("image: overlap margin leaves no crop window");
  ensure_vips();

  Crops c;
  c.crop_size = params.crop_size;
  c.tiling = select_tiling(image.height - total_margin, image.width - total_margin, window, params.max_crops);
  c.count = 1 + c.tiling.rows * c.tiling.cols;
  const int cs = params.crop_size;
  const size_t crop_bytes = size_t(cs) * cs * 3;
  c.pixels.assign(size_t(c.count) * crop_bytes, 0);

  // Local crops: resize to the tiling's size, then windows (padding with
  // zeros only if libvips' output came out smaller than asked).
  const int target_h = c.tiling.rows * window + total_margin;
  const int target_w = c.tiling.cols * window + total_margin;
  {
    Resized r = vips_resize_rgb(image, target_w, target_h);
    for (int i = 0; i < c.tiling.rows; ++i)
      for (int j = 0; j < c.tiling.cols; ++j)
        detail::extract_window(r.pixels.get(), r.width, r.height, i * window, j * window, cs,
                               c.pixels.data() + size_t(1 + i * c.tiling.cols + j) * crop_bytes);
  }
  // Global crop: the whole image squashed to crop_size × crop_size.
  {
    Resized g = vips_resize_rgb(image, cs, cs);
    detail::extract_window(g.pixels.get(), g.width, g.height, 0, 0, cs, c.pixels.data());
  }
  return c;
}

void normalize_crop(const uint8_t* hwc, int size, float* chw_out) {
  // torch: uint8 → bf16 (exact), .div_(255.0) (fp32 math, rounded to bf16),
  // .sub_(0.5) (rounded to bf16), .div_(0.5) (exact doubling).
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int v = 0; v < 256; ++v) {
      float a = round_bf16(float(v) / 255.0f);
      float b = round_bf16(a - 0.5f);
      t[v] = round_bf16(b / 0.5f);
    }
    return t;
  }();
  const size_t plane = size_t(size) * size;
  for (size_t p = 0; p < plane; ++p) {
    const uint8_t* px = hwc + p * 3;
    chw_out[p] = table[px[0]];
    chw_out[plane + p] = table[px[1]];
    chw_out[2 * plane + p] = table[px[2]];
  }
}

}  // namespace md
