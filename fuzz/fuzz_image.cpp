// Fuzz target: image bytes → decode (JPEG/PNG/WebP sniffing, libvips loaders,
// pixel limit, EXIF orientation, CMYK/grey/16-bit conversion) → crops
// (tiling, Lanczos resize, windows). Any bytes: images and non-images.
// The pixel limit (16,384) and the crop size are small so each input runs
// fast (no allocation reaches ASan's mmap-backed size classes); the code
// paths are the ones the server runs, where the limit is a config value.
#include <cstdint>
#include <span>

#include "model/image.h"
#include "tensor/error.h"

constexpr uint64_t kMaxPixels = 1u << 14;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Small libvips thread pool: the fuzzer runs one input at a time.
  setenv("VIPS_CONCURRENCY", "1", 0);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  md::RgbImage img;
  try {
    img = md::decode_image(std::span<const uint8_t>(data, size), kMaxPixels);
  } catch (const md::Error&) {
    return 0;
  }
  if (img.width <= 0 || img.height <= 0 || uint64_t(img.width) * img.height > (kMaxPixels) ||
      img.pixels.size() != size_t(img.width) * img.height * 3)
    __builtin_trap();
  md::CropParams p;
  p.crop_size = 42;
  p.patch_size = 14;
  p.overlap_margin = 1;
  p.max_crops = 4;
  try {
    const md::Crops c = md::make_crops(img, p);
    // (The official tiling may exceed max_crops for extreme aspect ratios:
    // a floor() clamped to 1 on the short side; the pixel limit bounds it.)
    if (c.tiling.rows < 1 || c.tiling.cols < 1 || c.count != 1 + c.tiling.rows * c.tiling.cols ||
        c.pixels.size() != size_t(c.count) * p.crop_size * p.crop_size * 3)
      __builtin_trap();
  } catch (const md::Error&) {
  }
  return 0;
}
