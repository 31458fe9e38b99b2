#pragma once
// Image bytes → RGB pixels → overlapping 378×378 crops (docs/MODEL.md section 4).
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace md {

// 8-bit RGB, row-major, interleaved (HWC).
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;  // width*height*3
};

// Decodes JPEG, PNG or WebP bytes: EXIF orientation applied; alpha dropped
// (as PIL's convert("RGB") does, which the official code calls); grey, CMYK
// and 16-bit inputs become 8-bit RGB.
// `max_pixels` refuses larger images before decoding them (0 = no limit).
// Throws md::Error ("image: not a JPEG, PNG or WebP file", …).
RgbImage decode_image(std::span<const uint8_t> bytes, uint64_t max_pixels = 0);
RgbImage load_image_file(const std::string& path, uint64_t max_pixels = 0);

struct Tiling {
  int rows = 1;
  int cols = 1;
};

// docs/MODEL.md section 4.2, verbatim.
Tiling select_tiling(int height, int width, int crop_size, int max_crops);

struct CropParams {
  int crop_size = 378;
  int patch_size = 14;
  int overlap_margin = 4;
  int max_crops = 12;
};

struct Crops {
  Tiling tiling;
  int crop_size = 378;
  int count = 0;                // 1 (global) + rows*cols
  std::vector<uint8_t> pixels;  // count × crop_size × crop_size × 3 (HWC); crop 0 is global
  const uint8_t* crop(int i) const { return pixels.data() + size_t(i) * crop_size * crop_size * 3; }
};

// Global crop + local overlapping crops, Lanczos-3 resampling with libvips as
// the official implementation does.
Crops make_crops(const RgbImage& image, const CropParams& params);

// One HWC uint8 crop → CHW floats, normalised in bfloat16 steps as
// docs/MODEL.md section 4.6 says: bf16(bf16(x/255) − 0.5)·2.
void normalize_crop(const uint8_t* hwc, int size, float* chw_out);

namespace detail {
// numpy-style window copy used for the local crops: out (size×size×3) is
// zeroed, then src[y0:min(y0+size,H), x0:min(x0+size,W)] is written at its
// top-left. Exposed for tests.
void extract_window(const uint8_t* src, int src_w, int src_h, int y0, int x0, int size, uint8_t* out);
}  // namespace detail

}  // namespace md
