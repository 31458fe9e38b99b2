// Image pipeline: decoding (formats, colour, orientation, errors), tiling,
// crops and normalisation (docs/MODEL.md section 4).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vips/vips8>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "model/image.h"
#include "tensor/error.h"

using vips::VImage;

namespace {

// ---------------------------------------------------------------- helpers

void vips_ready() {
  static bool done = [] {
    if (VIPS_INIT("image_test") != 0) std::abort();
    vips_cache_set_max(0);
    return true;
  }();
  (void)done;
}

// Keeps the pixel buffer alive alongside the VImage made from it.
struct MemImage {
  std::vector<uint8_t> data;
  VImage img;
};

MemImage make_u8(int w, int h, int bands, const std::vector<uint8_t>& px, VipsInterpretation interp) {
  vips_ready();
  MemImage m;
  m.data = px;
  EXPECT_EQ(m.data.size(), size_t(w) * h * bands);
  m.img = VImage::new_from_memory(m.data.data(), m.data.size(), w, h, bands, VIPS_FORMAT_UCHAR)
              .copy(VImage::option()->set("interpretation", int(interp)));
  return m;
}

std::vector<uint8_t> blob_bytes(VipsBlob* blob) {
  size_t n = 0;
  const void* p = vips_blob_get(blob, &n);
  std::vector<uint8_t> out(static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
  vips_area_unref(VIPS_AREA(blob));
  return out;
}

std::vector<uint8_t> png_of(const VImage& img) { return blob_bytes(img.pngsave_buffer()); }
std::vector<uint8_t> jpeg_of(const VImage& img, int q = 100) {
  return blob_bytes(img.jpegsave_buffer(VImage::option()->set("Q", q)));
}

// Solid-colour RGB image.
md::RgbImage solid(int w, int h, uint8_t r, uint8_t g, uint8_t b) {
  md::RgbImage img;
  img.width = w;
  img.height = h;
  img.pixels.resize(size_t(w) * h * 3);
  for (size_t i = 0; i < img.pixels.size(); i += 3) {
    img.pixels[i] = r;
    img.pixels[i + 1] = g;
    img.pixels[i + 2] = b;
  }
  return img;
}

md::RgbImage noise(int w, int h, unsigned seed) {
  md::RgbImage img;
  img.width = w;
  img.height = h;
  img.pixels.resize(size_t(w) * h * 3);
  std::mt19937 rng(seed);
  for (auto& v : img.pixels) v = uint8_t(rng());
  return img;
}

const uint8_t* px(const md::RgbImage& img, int x, int y) { return img.pixels.data() + (size_t(y) * img.width + x) * 3; }

// ---- hand-made PNGs (stored deflate blocks; no zlib needed)

uint32_t crc32(const uint8_t* p, size_t n, uint32_t crc = 0) {
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

void put32(std::vector<uint8_t>& v, uint32_t x) {
  v.push_back(uint8_t(x >> 24));
  v.push_back(uint8_t(x >> 16));
  v.push_back(uint8_t(x >> 8));
  v.push_back(uint8_t(x));
}

void chunk(std::vector<uint8_t>& png, const char* type, const std::vector<uint8_t>& data) {
  put32(png, uint32_t(data.size()));
  std::vector<uint8_t> td(type, type + 4);
  td.insert(td.end(), data.begin(), data.end());
  png.insert(png.end(), td.begin(), td.end());
  put32(png, crc32(td.data(), td.size()));
}

std::vector<uint8_t> zlib_stored(const std::vector<uint8_t>& raw) {
  std::vector<uint8_t> z = {0x78, 0x01};
  size_t pos = 0;
  do {
    size_t n = std::min<size_t>(65535, raw.size() - pos);
    bool last = pos + n == raw.size();
    z.push_back(last ? 1 : 0);
    z.push_back(uint8_t(n));
    z.push_back(uint8_t(n >> 8));
    z.push_back(uint8_t(~n));
    z.push_back(uint8_t(~n >> 8));
    z.insert(z.end(), raw.begin() + pos, raw.begin() + pos + n);
    pos += n;
  } while (pos < raw.size());
  uint32_t a = 1, b = 0;
  for (uint8_t c : raw) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  put32(z, (b << 16) | a);
  return z;
}

std::vector<uint8_t> ihdr(uint32_t w, uint32_t h, uint8_t depth, uint8_t colour_type) {
  std::vector<uint8_t> d;
  put32(d, w);
  put32(d, h);
  d.insert(d.end(), {depth, colour_type, 0, 0, 0});
  return d;
}

const std::vector<uint8_t> kPngSig = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};

// A PNG from already-packed scanlines (each `stride` bytes, filter none).
std::vector<uint8_t> raw_png(int w, int h, uint8_t depth, uint8_t colour_type, int stride,
                             const std::vector<uint8_t>& packed, const std::vector<uint8_t>& plte = {},
                             const std::vector<uint8_t>& trns = {}) {
  std::vector<uint8_t> png = kPngSig;
  chunk(png, "IHDR", ihdr(w, h, depth, colour_type));
  if (!plte.empty()) chunk(png, "PLTE", plte);
  if (!trns.empty()) chunk(png, "tRNS", trns);
  std::vector<uint8_t> raw;
  for (int y = 0; y < h; ++y) {
    raw.push_back(0);  // filter: none
    raw.insert(raw.end(), packed.begin() + size_t(y) * stride, packed.begin() + size_t(y + 1) * stride);
  }
  chunk(png, "IDAT", zlib_stored(raw));
  chunk(png, "IEND", {});
  return png;
}

// 8-bit palette PNG: `index` is h rows of w palette indices.
std::vector<uint8_t> palette_png(int w, int h, const std::vector<uint8_t>& plte, const std::vector<uint8_t>& trns,
                                 const std::vector<uint8_t>& index) {
  return raw_png(w, h, 8, 3, w, index, plte, trns);
}

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() / ("md_image_test_" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

void write_file(const std::filesystem::path& p, const std::vector<uint8_t>& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

std::string error_of(const std::vector<uint8_t>& bytes, uint64_t max_pixels = 0) {
  try {
    md::decode_image(bytes, max_pixels);
  } catch (const md::Error& e) {
    return e.what();
  }
  return "(no error)";
}

bool one_line(const std::string& s) { return s.find('\n') == std::string::npos; }

// ---------------------------------------------------------- select_tiling

// The official Python select_tiling, transcribed independently: Python's
// `/` on ints is a correctly rounded double division; math.ceil/floor/sqrt
// as in libm.
std::pair<int, int> tiling_reference(int height, int width, int crop_size, int max_crops) {
  if (height <= crop_size || width <= crop_size) return {1, 1};
  double min_h = std::ceil(double(height) / double(crop_size));
  double min_w = std::ceil(double(width) / double(crop_size));
  if (min_h * min_w > max_crops) {
    double ratio = std::sqrt(double(max_crops) / (min_h * min_w));
    return {int(std::max(1.0, std::floor(min_h * ratio))), int(std::max(1.0, std::floor(min_w * ratio)))};
  }
  double h_tiles = std::floor(std::sqrt(double(max_crops) * height / width));
  double w_tiles = std::floor(std::sqrt(double(max_crops) * width / height));
  h_tiles = std::max(h_tiles, min_h);
  w_tiles = std::max(w_tiles, min_w);
  if (h_tiles * w_tiles > max_crops) {
    if (w_tiles > h_tiles)
      w_tiles = std::floor(double(max_crops) / h_tiles);
    else
      h_tiles = std::floor(double(max_crops) / w_tiles);
  }
  return {int(std::max(1.0, h_tiles)), int(std::max(1.0, w_tiles))};
}

TEST(SelectTiling, HandChecked) {
  struct Case {
    int h, w, max_crops, rows, cols;
  } cases[] = {
      {368, 528, 12, 2, 4},    // 640×480 after the 112 px margins
      {2888, 3888, 12, 2, 4},  // 4000×3000: too many minimum tiles → proportional
      {266, 266, 12, 1, 1},   {266, 5000, 12, 1, 1}, {5000, 266, 12, 1, 1},
      {267, 267, 12, 3, 3},   {1000, 267, 12, 6, 2}, {5000, 5000, 12, 3, 3},
      {300, 5000, 12, 1, 10}, {600, 900, 12, 3, 4},  {-111, -111, 12, 1, 1},
      {-111, 5000, 12, 1, 1}, {388, 1888, 12, 1, 6}, {1888, 388, 12, 6, 1},
      {1000, 1000, 1, 1, 1},  {1000, 1000, 2, 1, 1}, {1000, 600, 6, 2, 2},
      {2000, 700, 9, 4, 1},   {532, 800, 12, 2, 4},  {798, 798, 12, 3, 3},
      {267, 1099, 12, 2, 6},  {267, 1138, 12, 2, 6},  // th·tw > max_crops branch
      {297, 1887, 1, 1, 2},                           // the official formula can exceed max_crops (max(1, ·))
  };
  for (const Case& c : cases) {
    md::Tiling t = md::select_tiling(c.h, c.w, 266, c.max_crops);
    EXPECT_EQ(t.rows, c.rows) << c.h << "×" << c.w << " max " << c.max_crops;
    EXPECT_EQ(t.cols, c.cols) << c.h << "×" << c.w << " max " << c.max_crops;
  }
}

TEST(SelectTiling, MatchesFormulaOnFullGrid) {
  // Every (h, w) in [-111, 5000]² for the default max_crops.
  long mismatches = 0;
  for (int h = -111; h <= 5000; ++h)
    for (int w = -111; w <= 5000; ++w) {
      md::Tiling t = md::select_tiling(h, w, 266, 12);
      auto ref = tiling_reference(h, w, 266, 12);
      if (t.rows != ref.first || t.cols != ref.second) {
        if (++mismatches < 10) ADD_FAILURE() << h << "×" << w;
      }
    }
  EXPECT_EQ(mismatches, 0);
}

TEST(SelectTiling, MatchesFormulaOtherParameters) {
  long checked = 0;
  for (int max_crops : {1, 2, 3, 4, 5, 6, 8, 9, 10, 16, 24, 36, 100})
    for (int crop : {266, 100, 378})
      for (int h = 1; h <= 8000; h += 37)
        for (int w = 1; w <= 8000; w += 41) {
          md::Tiling t = md::select_tiling(h, w, crop, max_crops);
          auto ref = tiling_reference(h, w, crop, max_crops);
          ASSERT_EQ(t.rows, ref.first) << h << "×" << w << " crop " << crop << " max " << max_crops;
          ASSERT_EQ(t.cols, ref.second) << h << "×" << w << " crop " << crop << " max " << max_crops;
          ++checked;
        }
  EXPECT_GT(checked, 100000);
}

// ------------------------------------------------------------------ crops

// What the official does with pyvips, done here directly: resize with
// scale = target / size on each axis.
VImage resize_like_official(const md::RgbImage& img, int target_w, int target_h) {
  vips_ready();
  VImage src = VImage::new_from_memory(const_cast<uint8_t*>(img.pixels.data()), img.pixels.size(), img.width,
                                       img.height, 3, VIPS_FORMAT_UCHAR);
  return src.resize(double(target_w) / img.width, VImage::option()->set("vscale", double(target_h) / img.height));
}

std::vector<uint8_t> pixels_of(const VImage& img) {
  size_t n = 0;
  void* p = img.write_to_memory(&n);
  std::vector<uint8_t> out(static_cast<uint8_t*>(p), static_cast<uint8_t*>(p) + n);
  g_free(p);
  return out;
}

void expect_solid(const md::Crops& c, int i, uint8_t r, uint8_t g, uint8_t b) {
  const uint8_t* p = c.crop(i);
  long bad = 0;
  for (int k = 0; k < c.crop_size * c.crop_size; ++k)
    if (p[3 * k] != r || p[3 * k + 1] != g || p[3 * k + 2] != b) ++bad;
  EXPECT_EQ(bad, 0) << "crop " << i;
}

TEST(Crops, Square378IsOneTile) {
  md::RgbImage img = noise(378, 378, 1);
  md::Crops c = md::make_crops(img, {});
  EXPECT_EQ(c.tiling.rows, 1);
  EXPECT_EQ(c.tiling.cols, 1);
  EXPECT_EQ(c.count, 2);
  EXPECT_EQ(c.crop_size, 378);
  ASSERT_EQ(c.pixels.size(), size_t(2) * 378 * 378 * 3);
  // Scale 1 on both axes: both crops are the image itself.
  EXPECT_EQ(std::memcmp(c.crop(0), img.pixels.data(), img.pixels.size()), 0);
  EXPECT_EQ(std::memcmp(c.crop(1), img.pixels.data(), img.pixels.size()), 0);
}

TEST(Crops, TinyImages) {
  for (auto [w, h] : {std::pair{1, 1}, std::pair{1, 500}, std::pair{500, 1}, std::pair{2, 3}, std::pair{377, 1}}) {
    md::RgbImage img = solid(w, h, 10, 200, 30);
    md::Crops c = md::make_crops(img, {});
    EXPECT_EQ(c.tiling.rows, 1) << w << "×" << h;
    EXPECT_EQ(c.tiling.cols, 1) << w << "×" << h;
    ASSERT_EQ(c.count, 2);
    expect_solid(c, 0, 10, 200, 30);
    expect_solid(c, 1, 10, 200, 30);
  }
  // A 1-pixel-wide gradient: every column of the upsampled crop is the same.
  md::RgbImage grad;
  grad.width = 1;
  grad.height = 500;
  for (int y = 0; y < 500; ++y) grad.pixels.insert(grad.pixels.end(), {uint8_t(y / 2), 0, 255});
  md::Crops c = md::make_crops(grad, {});
  ASSERT_EQ(c.count, 2);
  for (int i = 0; i < 2; ++i)
    for (int y = 0; y < 378; ++y)
      for (int x = 1; x < 378; ++x)
        ASSERT_EQ(std::memcmp(c.crop(i) + (y * 378 + x) * 3, c.crop(i) + y * 378 * 3, 3), 0);
  EXPECT_LT(c.crop(0)[0], 10);                 // top ≈ 0
  EXPECT_GT(c.crop(0)[(377 * 378) * 3], 240);  // bottom ≈ 249
}

TEST(Crops, Landscape640x480) {
  md::RgbImage img = noise(640, 480, 7);
  md::Crops c = md::make_crops(img, {});
  // Tiling on (480 − 112, 640 − 112) = (368, 528).
  EXPECT_EQ(c.tiling.rows, 2);
  EXPECT_EQ(c.tiling.cols, 4);
  ASSERT_EQ(c.count, 9);
  ASSERT_EQ(c.pixels.size(), size_t(9) * 378 * 378 * 3);

  // Local crops: windows at (i·266, j·266) of the image resized to
  // (2·266 + 112) × (4·266 + 112) = 644 × 1176 (h × w), row-major.
  VImage resized = resize_like_official(img, 1176, 644);
  ASSERT_EQ(resized.width(), 1176);
  ASSERT_EQ(resized.height(), 644);
  std::vector<uint8_t> r = pixels_of(resized);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j) {
      const uint8_t* crop = c.crop(1 + i * 4 + j);
      for (int y = 0; y < 378; ++y)
        ASSERT_EQ(std::memcmp(crop + y * 378 * 3, r.data() + ((i * 266 + y) * 1176 + j * 266) * 3, 378 * 3), 0)
            << "tile " << i << "," << j << " row " << y;
    }
  // Global crop: the whole image squashed to 378×378.
  std::vector<uint8_t> g = pixels_of(resize_like_official(img, 378, 378));
  ASSERT_EQ(g.size(), size_t(378) * 378 * 3);
  EXPECT_EQ(std::memcmp(c.crop(0), g.data(), g.size()), 0);
}

TEST(Crops, Large4000x3000) {
  md::RgbImage img = solid(4000, 3000, 0, 128, 255);
  // A marker in the bottom-right corner must land in the last tile only.
  for (int y = 2900; y < 3000; ++y)
    for (int x = 3900; x < 4000; ++x) {
      uint8_t* p = img.pixels.data() + (size_t(y) * 4000 + x) * 3;
      p[0] = 255, p[1] = 0, p[2] = 0;
    }
  md::Crops c = md::make_crops(img, {});
  // (2888, 3888): 11×15 minimum tiles > 12 → proportional (2, 4).
  EXPECT_EQ(c.tiling.rows, 2);
  EXPECT_EQ(c.tiling.cols, 4);
  ASSERT_EQ(c.count, 9);
  for (int i = 1; i < 8; ++i) expect_solid(c, i, 0, 128, 255);
  const uint8_t* last = c.crop(8);
  const uint8_t* corner = last + (377 * 378 + 377) * 3;
  EXPECT_EQ(corner[0], 255);
  EXPECT_EQ(corner[1], 0);
  EXPECT_EQ(corner[2], 0);
  const uint8_t* origin = last;
  EXPECT_EQ(origin[0], 0);
  EXPECT_EQ(origin[2], 255);
}

TEST(Crops, GlobalCropOfSolidColourIsThatColour) {
  for (auto [w, h] :
       {std::pair{640, 480}, std::pair{100, 1000}, std::pair{3000, 200}, std::pair{379, 377}, std::pair{1234, 567}}) {
    md::RgbImage img = solid(w, h, 12, 34, 250);
    md::Crops c = md::make_crops(img, {});
    expect_solid(c, 0, 12, 34, 250);
    for (int i = 1; i < c.count; ++i) expect_solid(c, i, 12, 34, 250);
  }
}

TEST(Crops, VipsResizeHitsTargetSizes) {
  // The official writes the resized arrays into the crops by slicing, so a
  // libvips rounding slip would show up as padding or cropping. Check that
  // libvips reaches the target on many sizes.
  vips_ready();
  std::vector<uint8_t> line(5000 * 2 * 3, 100);
  for (int n = 1; n <= 5000; n += (n < 600 ? 1 : 7)) {
    VImage src = VImage::new_from_memory(line.data(), size_t(n) * 2 * 3, n, 2, 3, VIPS_FORMAT_UCHAR);
    for (int target : {378, 644, 910, 1176, 3304}) {
      VImage out = src.resize(double(target) / n, VImage::option()->set("vscale", 1.0));
      ASSERT_EQ(out.width(), target) << n << " → " << target;
    }
  }
}

TEST(Crops, WindowsPadWithZerosPastTheEdge) {
  // 5×4 source, 3×3 windows.
  std::vector<uint8_t> src(5 * 4 * 3);
  for (size_t i = 0; i < src.size(); ++i) src[i] = uint8_t(i + 1);
  std::vector<uint8_t> out(3 * 3 * 3, 0xAA);
  md::detail::extract_window(src.data(), 5, 4, 2, 3, 3, out.data());
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 3; ++x)
      for (int ch = 0; ch < 3; ++ch) {
        int sy = 2 + y, sx = 3 + x;
        uint8_t want = (sy < 4 && sx < 5) ? src[(sy * 5 + sx) * 3 + ch] : 0;
        EXPECT_EQ(out[(y * 3 + x) * 3 + ch], want) << y << "," << x;
      }
  // Entirely inside: a plain copy.
  md::detail::extract_window(src.data(), 5, 4, 1, 1, 3, out.data());
  EXPECT_EQ(out[0], src[(1 * 5 + 1) * 3]);
  EXPECT_EQ(out[26], src[(3 * 5 + 3) * 3 + 2]);
}

TEST(Crops, CustomParameters) {
  // margin 2 patches of 14, crop 378: window = (27 − 4)·14 = 322.
  md::CropParams p;
  p.overlap_margin = 2;
  p.max_crops = 4;
  md::RgbImage img = solid(1000, 700, 1, 2, 3);
  md::Crops c = md::make_crops(img, p);
  md::Tiling t = md::select_tiling(700 - 56, 1000 - 56, 322, 4);
  EXPECT_EQ(c.tiling.rows, t.rows);
  EXPECT_EQ(c.tiling.cols, t.cols);
  EXPECT_EQ(c.count, 1 + t.rows * t.cols);
  for (int i = 0; i < c.count; ++i) expect_solid(c, i, 1, 2, 3);
  p.max_crops = 0;
  EXPECT_THROW(md::make_crops(img, p), md::Error);
  EXPECT_THROW(md::make_crops(md::RgbImage{}, {}), md::Error);
}

// ------------------------------------------------------------- decoding

TEST(Decode, PngRgbRoundTrip) {
  md::RgbImage ref = noise(37, 23, 3);
  MemImage m = make_u8(37, 23, 3, ref.pixels, VIPS_INTERPRETATION_sRGB);
  md::RgbImage got = md::decode_image(png_of(m.img));
  EXPECT_EQ(got.width, 37);
  EXPECT_EQ(got.height, 23);
  EXPECT_EQ(got.pixels, ref.pixels);
}

TEST(Decode, RgbaDropsAlpha) {
  std::vector<uint8_t> rgba;
  std::vector<uint8_t> rgb;
  std::mt19937 rng(5);
  for (int i = 0; i < 16 * 9; ++i) {
    uint8_t r = rng(), g = rng(), b = rng(), a = uint8_t(i % 3 == 0 ? 0 : rng());
    rgba.insert(rgba.end(), {r, g, b, a});
    rgb.insert(rgb.end(), {r, g, b});
  }
  MemImage m = make_u8(16, 9, 4, rgba, VIPS_INTERPRETATION_sRGB);
  md::RgbImage got = md::decode_image(png_of(m.img));
  EXPECT_EQ(got.width, 16);
  EXPECT_EQ(got.height, 9);
  EXPECT_EQ(got.pixels, rgb);

  // Lossless WebP with alpha, too.
  auto webp = blob_bytes(m.img.webpsave_buffer(VImage::option()->set("lossless", true)));
  md::RgbImage w = md::decode_image(webp);
  EXPECT_EQ(w.width, 16);
  EXPECT_EQ(w.height, 9);
  // libwebp may rewrite the colour of fully transparent pixels; compare the rest.
  for (int i = 0; i < 16 * 9; ++i)
    if (rgba[i * 4 + 3] != 0) {
      EXPECT_EQ(std::memcmp(&w.pixels[i * 3], &rgb[i * 3], 3), 0) << i;
    }
}

TEST(Decode, WebpRgbLossless) {
  md::RgbImage ref = noise(20, 30, 11);
  MemImage m = make_u8(20, 30, 3, ref.pixels, VIPS_INTERPRETATION_sRGB);
  auto webp = blob_bytes(m.img.webpsave_buffer(VImage::option()->set("lossless", true)));
  md::RgbImage got = md::decode_image(webp);
  EXPECT_EQ(got.width, 20);
  EXPECT_EQ(got.height, 30);
  EXPECT_EQ(got.pixels, ref.pixels);
}

TEST(Decode, GreyBecomesRgb) {
  std::vector<uint8_t> grey(11 * 7);
  for (size_t i = 0; i < grey.size(); ++i) grey[i] = uint8_t(i * 3);
  MemImage m = make_u8(11, 7, 1, grey, VIPS_INTERPRETATION_B_W);
  md::RgbImage got = md::decode_image(png_of(m.img));
  ASSERT_EQ(got.pixels.size(), grey.size() * 3);
  for (size_t i = 0; i < grey.size(); ++i)
    for (int c = 0; c < 3; ++c) EXPECT_EQ(got.pixels[i * 3 + c], grey[i]);

  // Grey + alpha: alpha dropped.
  std::vector<uint8_t> ga;
  for (size_t i = 0; i < grey.size(); ++i) ga.insert(ga.end(), {grey[i], uint8_t(255 - i)});
  MemImage m2 = make_u8(11, 7, 2, ga, VIPS_INTERPRETATION_B_W);
  md::RgbImage got2 = md::decode_image(png_of(m2.img));
  for (size_t i = 0; i < grey.size(); ++i)
    for (int c = 0; c < 3; ++c) EXPECT_EQ(got2.pixels[i * 3 + c], grey[i]);

  // Grey JPEG: one band, replicated.
  MemImage flat = make_u8(16, 16, 1, std::vector<uint8_t>(256, 77), VIPS_INTERPRETATION_B_W);
  md::RgbImage got3 = md::decode_image(jpeg_of(flat.img));
  ASSERT_EQ(got3.width, 16);
  for (size_t i = 0; i < got3.pixels.size(); ++i) EXPECT_NEAR(got3.pixels[i], 77, 1);
}

TEST(Decode, SixteenBitKeepsHighByte) {
  vips_ready();
  const int w = 6, h = 5;
  std::vector<uint16_t> rgb16(w * h * 3);
  for (size_t i = 0; i < rgb16.size(); ++i) rgb16[i] = uint16_t(i * 2203 + 0x00ff);
  VImage img = VImage::new_from_memory(rgb16.data(), rgb16.size() * 2, w, h, 3, VIPS_FORMAT_USHORT)
                   .copy(VImage::option()->set("interpretation", int(VIPS_INTERPRETATION_RGB16)));
  auto png = png_of(img);
  ASSERT_EQ(png[24], 16);  // IHDR bit depth
  md::RgbImage got = md::decode_image(png);
  ASSERT_EQ(got.pixels.size(), rgb16.size());
  for (size_t i = 0; i < rgb16.size(); ++i) EXPECT_EQ(got.pixels[i], rgb16[i] >> 8) << i;

  std::vector<uint16_t> g16(w * h);
  for (size_t i = 0; i < g16.size(); ++i) g16[i] = uint16_t(i * 2111 + 0x80);
  VImage grey = VImage::new_from_memory(g16.data(), g16.size() * 2, w, h, 1, VIPS_FORMAT_USHORT)
                    .copy(VImage::option()->set("interpretation", int(VIPS_INTERPRETATION_GREY16)));
  auto gpng = png_of(grey);
  ASSERT_EQ(gpng[24], 16);
  md::RgbImage gg = md::decode_image(gpng);
  for (size_t i = 0; i < g16.size(); ++i)
    for (int c = 0; c < 3; ++c) EXPECT_EQ(gg.pixels[i * 3 + c], g16[i] >> 8) << i;

  // 16-bit RGBA: alpha dropped after the same reduction.
  std::vector<uint16_t> rgba16(w * h * 4);
  for (size_t i = 0; i < rgba16.size(); ++i) rgba16[i] = uint16_t(i * 977 + 3);
  VImage rgba = VImage::new_from_memory(rgba16.data(), rgba16.size() * 2, w, h, 4, VIPS_FORMAT_USHORT)
                    .copy(VImage::option()->set("interpretation", int(VIPS_INTERPRETATION_RGB16)));
  md::RgbImage ga = md::decode_image(png_of(rgba));
  for (int i = 0; i < w * h; ++i)
    for (int c = 0; c < 3; ++c) EXPECT_EQ(ga.pixels[i * 3 + c], rgba16[i * 4 + c] >> 8);
}

TEST(Decode, PalettePngBecomesRgb) {
  std::vector<uint8_t> plte = {255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30};
  std::vector<uint8_t> index = {0, 1, 2, 3, 3, 2, 1, 0};
  auto check = [&](const md::RgbImage& got) {
    ASSERT_EQ(got.width, 4);
    ASSERT_EQ(got.height, 2);
    for (int i = 0; i < 8; ++i) EXPECT_EQ(std::memcmp(&got.pixels[i * 3], &plte[index[i] * 3], 3), 0) << i;
  };
  check(md::decode_image(palette_png(4, 2, plte, {}, index)));
  // With transparency: alpha dropped, palette colours kept.
  check(md::decode_image(palette_png(4, 2, plte, {0, 128}, index)));
}

TEST(Decode, LowBitDepthPngsAreScaled) {
  // Grey at 1, 2 and 4 bits: PIL (modes "1", "L;2", "L;4") and libpng both
  // scale to the full 0..255 range.
  {
    // 1 bit, 8×1: 10110010
    md::RgbImage g = md::decode_image(raw_png(8, 1, 1, 0, 1, {0xb2}));
    const int bits[8] = {1, 0, 1, 1, 0, 0, 1, 0};
    for (int x = 0; x < 8; ++x)
      for (int c = 0; c < 3; ++c) EXPECT_EQ(g.pixels[x * 3 + c], bits[x] * 255) << x;
  }
  {
    // 2 bits, 4×1: values 0 1 2 3 → 0 85 170 255
    md::RgbImage g = md::decode_image(raw_png(4, 1, 2, 0, 1, {0x1b}));
    for (int x = 0; x < 4; ++x)
      for (int c = 0; c < 3; ++c) EXPECT_EQ(g.pixels[x * 3 + c], x * 85) << x;
  }
  {
    // 4 bits, 4×1: values 0 5 10 15 → ×17
    md::RgbImage g = md::decode_image(raw_png(4, 1, 4, 0, 2, {0x05, 0xaf}));
    const int v[4] = {0, 5, 10, 15};
    for (int x = 0; x < 4; ++x)
      for (int c = 0; c < 3; ++c) EXPECT_EQ(g.pixels[x * 3 + c], v[x] * 17) << x;
  }
  {
    // 4-bit palette, 4×1: indices 2 0 1 2.
    std::vector<uint8_t> plte = {1, 2, 3, 40, 50, 60, 200, 210, 220};
    md::RgbImage g = md::decode_image(raw_png(4, 1, 4, 3, 2, {0x20, 0x12}, plte));
    const int idx[4] = {2, 0, 1, 2};
    for (int x = 0; x < 4; ++x) EXPECT_EQ(std::memcmp(&g.pixels[x * 3], &plte[idx[x] * 3], 3), 0) << x;
  }
}

TEST(Decode, CmykJpegUsesPilConversion) {
  struct Case {
    uint8_t c, m, y, k;
  } cases[] = {{0, 255, 255, 0}, {0, 0, 0, 0}, {0, 0, 0, 255}, {50, 100, 150, 30}, {200, 10, 90, 120}};
  auto pil = [](int v, int k) {
    int nk = 255 - k;
    int t = v * nk + 128;
    return nk - (((t >> 8) + t) >> 8);
  };
  for (const Case& cs : cases) {
    std::vector<uint8_t> cmyk;
    for (int i = 0; i < 16 * 16; ++i) cmyk.insert(cmyk.end(), {cs.c, cs.m, cs.y, cs.k});
    MemImage m = make_u8(16, 16, 4, cmyk, VIPS_INTERPRETATION_CMYK);
    auto jpeg = jpeg_of(m.img);
    md::RgbImage got = md::decode_image(jpeg);
    ASSERT_EQ(got.width, 16);
    ASSERT_EQ(got.height, 16);
    const uint8_t* p = px(got, 8, 8);
    EXPECT_NEAR(p[0], pil(cs.c, cs.k), 2) << int(cs.c) << "," << int(cs.m) << "," << int(cs.y) << "," << int(cs.k);
    EXPECT_NEAR(p[1], pil(cs.m, cs.k), 2);
    EXPECT_NEAR(p[2], pil(cs.y, cs.k), 2);
  }
}

// JPEG of a 64×32 (w×h) image whose top-left 32×16 quadrant is red and the
// rest green, tagged with an EXIF orientation.
std::vector<uint8_t> oriented_jpeg(int orientation) {
  std::vector<uint8_t> rgb;
  for (int y = 0; y < 32; ++y)
    for (int x = 0; x < 64; ++x) {
      bool red = x < 32 && y < 16;
      rgb.insert(rgb.end(), {uint8_t(red ? 255 : 0), uint8_t(red ? 0 : 255), 0});
    }
  MemImage m = make_u8(64, 32, 3, rgb, VIPS_INTERPRETATION_sRGB);
  VImage tagged = m.img.copy();
  tagged.set(VIPS_META_ORIENTATION, orientation);
  return jpeg_of(tagged);
}

TEST(Decode, ExifOrientation6RotatesClockwise) {
  auto jpeg = oriented_jpeg(6);
  // The tag made it into the file (vips writes it from "orientation").
  VImage header = VImage::new_from_buffer(jpeg.data(), jpeg.size(), "");
  ASSERT_EQ(header.get_int(VIPS_META_ORIENTATION), 6);
  md::RgbImage got = md::decode_image(jpeg);
  EXPECT_EQ(got.width, 32);
  EXPECT_EQ(got.height, 64);
  // Rotated 90° clockwise: the red quadrant is now top-right (x ≥ 16, y < 32).
  EXPECT_GT(px(got, 24, 8)[0], 200);
  EXPECT_LT(px(got, 24, 8)[1], 60);
  EXPECT_LT(px(got, 8, 8)[0], 60);
  EXPECT_LT(px(got, 24, 48)[0], 60);
  EXPECT_LT(px(got, 8, 48)[0], 60);
}

TEST(Decode, ExifOrientationAllEight) {
  // Where the original top-left quadrant ends up: 0 TL, 1 TR, 2 BR, 3 BL.
  const int corner[9] = {0, 0, 1, 2, 3, 0, 1, 2, 3};
  for (int o = 1; o <= 8; ++o) {
    md::RgbImage got = md::decode_image(oriented_jpeg(o));
    const bool swapped = o >= 5;
    EXPECT_EQ(got.width, swapped ? 32 : 64) << "orientation " << o;
    EXPECT_EQ(got.height, swapped ? 64 : 32) << "orientation " << o;
    const int qw = got.width / 4, qh = got.height / 4;  // centres of the quadrants
    const int cx[4] = {qw, 3 * qw, 3 * qw, qw}, cy[4] = {qh, qh, 3 * qh, 3 * qh};
    for (int q = 0; q < 4; ++q) {
      bool red = px(got, cx[q], cy[q])[0] > 200;
      EXPECT_EQ(red, q == corner[o]) << "orientation " << o << " quadrant " << q;
    }
  }
}

TEST(Decode, LoadImageFile) {
  TempDir dir;
  md::RgbImage ref = noise(9, 4, 2);
  MemImage m = make_u8(9, 4, 3, ref.pixels, VIPS_INTERPRETATION_sRGB);
  write_file(dir.path / "a.png", png_of(m.img));
  md::RgbImage got = md::load_image_file((dir.path / "a.png").string());
  EXPECT_EQ(got.pixels, ref.pixels);
  try {
    md::load_image_file((dir.path / "missing.png").string());
    FAIL() << "no error";
  } catch (const md::Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.png"), std::string::npos) << e.what();
  }
  write_file(dir.path / "empty.jpg", {});
  try {
    md::load_image_file((dir.path / "empty.jpg").string());
    FAIL() << "no error";
  } catch (const md::Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("empty.jpg"), std::string::npos) << msg;
    EXPECT_NE(msg.find("empty input"), std::string::npos) << msg;
  }
}

// ----------------------------------------------------------------- errors

TEST(DecodeErrors, EmptyAndUnknown) {
  EXPECT_EQ(error_of({}), "image: empty input");
  std::mt19937 rng(9);
  std::vector<uint8_t> junk(1000);
  for (auto& b : junk) b = uint8_t(rng());
  junk[0] = 0x12;
  EXPECT_EQ(error_of(junk), "image: not a JPEG, PNG or WebP file");
  EXPECT_EQ(error_of({0xff}), "image: not a JPEG, PNG or WebP file");
  EXPECT_EQ(error_of({0xff, 0xd8}), "image: not a JPEG, PNG or WebP file");
}

TEST(DecodeErrors, OtherFormatsRefused) {
  // A valid 1×1 GIF.
  std::vector<uint8_t> gif = {0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0xff, 0xff,
                              0xff, 0x00, 0x00, 0x00, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00,
                              0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b};
  EXPECT_EQ(error_of(gif), "image: not a JPEG, PNG or WebP file");
  // Real TIFF made by vips, and other formats' magic bytes.
  MemImage m = make_u8(4, 4, 3, std::vector<uint8_t>(48, 9), VIPS_INTERPRETATION_sRGB);
  EXPECT_EQ(error_of(blob_bytes(m.img.tiffsave_buffer())), "image: not a JPEG, PNG or WebP file");
  using namespace std::string_literals;
  for (const std::string& s :
       {"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"/>"s, "<?xml version=\"1.0\"?><svg/>"s,
        "%PDF-1.4\n"s, "BM\x36\0\0\0\0\0\0\0"s, "P6\n1 1\n255\nabc"s, "RIFF\x10\0\0\0WAVEfmt "s,
        "\0\0\0\x0cjP  \r\n\x87\n"s, "II*\0\x08\0\0\0"s, "MM\0*\0\0\0\x08"s, "\xff\xd8"s})
    EXPECT_EQ(error_of(std::vector<uint8_t>(s.begin(), s.end())), "image: not a JPEG, PNG or WebP file") << s;
}

TEST(DecodeErrors, OtherLibvipsLoadersAreBlocked) {
  // Once the image pipeline has started libvips, only the JPEG, PNG and WebP
  // buffer loaders can run in the process: a TIFF (or GIF, SVG, PDF, ...)
  // cannot be parsed through any libvips entry point.
  MemImage m = make_u8(4, 4, 3, std::vector<uint8_t>(48, 9), VIPS_INTERPRETATION_sRGB);
  const auto png = png_of(m.img);
  ASSERT_NO_THROW(md::decode_image(png));
  const auto tiff = blob_bytes(m.img.tiffsave_buffer());
  EXPECT_THROW(VImage::new_from_buffer(tiff.data(), tiff.size(), ""), vips::VError);
  vips_error_clear();
  EXPECT_NO_THROW(VImage::new_from_buffer(png.data(), png.size(), ""));
}

TEST(DecodeErrors, TruncatedOrCorrupt) {
  md::RgbImage ref = noise(200, 150, 4);
  MemImage m = make_u8(200, 150, 3, ref.pixels, VIPS_INTERPRETATION_sRGB);
  auto jpeg = jpeg_of(m.img, 90);
  auto png = png_of(m.img);
  ASSERT_NO_THROW(md::decode_image(jpeg));
  ASSERT_NO_THROW(md::decode_image(png));

  for (double frac : {0.3, 0.6, 0.9}) {
    std::vector<uint8_t> tj(jpeg.begin(), jpeg.begin() + long(jpeg.size() * frac));
    std::string e = error_of(tj);
    EXPECT_EQ(e.rfind("image: truncated or corrupt JPEG data", 0), 0u) << e;
    EXPECT_TRUE(one_line(e)) << e;
    std::vector<uint8_t> tp(png.begin(), png.begin() + long(png.size() * frac));
    e = error_of(tp);
    EXPECT_EQ(e.rfind("image: truncated or corrupt PNG data", 0), 0u) << e;
    EXPECT_TRUE(one_line(e)) << e;
  }
  // Magic bytes followed by garbage.
  std::vector<uint8_t> fake = {0xff, 0xd8, 0xff, 0xe0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  std::string e = error_of(fake);
  EXPECT_EQ(e.rfind("image: ", 0), 0u) << e;
  EXPECT_NE(e.find("JPEG"), std::string::npos) << e;
  EXPECT_TRUE(one_line(e)) << e;
  std::vector<uint8_t> fakepng = kPngSig;
  fakepng.insert(fakepng.end(), {0, 0, 0, 13, 'I', 'H', 'D', 'R', 0, 0});
  e = error_of(fakepng);
  EXPECT_NE(e.find("PNG"), std::string::npos) << e;
  // RIFF....WEBP with nothing after.
  std::vector<uint8_t> fakewebp = {'R', 'I', 'F', 'F', 4, 0, 0, 0, 'W', 'E', 'B', 'P'};
  e = error_of(fakewebp);
  EXPECT_NE(e.find("WebP"), std::string::npos) << e;
}

TEST(DecodeErrors, HugeHeaderRefusedBeforeDecoding) {
  // A hand-made PNG claiming 50000×50000 RGB with a few KB of pixel data.
  std::vector<uint8_t> png = kPngSig;
  chunk(png, "IHDR", ihdr(50000, 50000, 8, 2));
  std::vector<uint8_t> row(1 + 50000 * 3 / 64, 0);
  chunk(png, "IDAT", zlib_stored(row));
  chunk(png, "IEND", {});
  ASSERT_LT(png.size(), 10000u);
  auto t0 = std::chrono::steady_clock::now();
  std::string e = error_of(png, 100'000'000);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(e, "image: 50000×50000 pixels exceeds the limit of 100000000");
  EXPECT_LT(ms, 2000);
  // Exactly at the limit is allowed (then it fails as truncated data).
  std::vector<uint8_t> small = kPngSig;
  chunk(small, "IHDR", ihdr(100, 100, 8, 2));
  chunk(small, "IDAT", zlib_stored(std::vector<uint8_t>(10, 0)));
  chunk(small, "IEND", {});
  e = error_of(small, 10000);
  EXPECT_EQ(e.rfind("image: truncated or corrupt PNG data", 0), 0u) << e;
  e = error_of(small, 9999);
  EXPECT_EQ(e, "image: 100×100 pixels exceeds the limit of 9999");
}

TEST(DecodeErrors, HugeWebpCanvasRefusedBeforeLibvipsAllocatesIt) {
  // Found by fuzz_image: a 44-byte lossy WebP declaring 12131×9070. libvips'
  // WebP header load callocs the whole 440 MB canvas, so the size must be
  // read (libwebp) and refused before libvips sees the file.
  const std::vector<uint8_t> webp = {0x52, 0x49, 0x46, 0x46, 0x24, 0x00, 0x00, 0x00, 0x57, 0x45, 0x42,
                                     0x50, 0x56, 0x50, 0x38, 0x20, 0x18, 0x00, 0x00, 0x00, 0x30, 0x01,
                                     0x00, 0x9d, 0x01, 0x2a, 0x63, 0x6f, 0x6e, 0x63, 0x63, 0x2f, 0x6e,
                                     0x63, 0x01, 0x40, 0x26, 0x25, 0xa4, 0xfe, 0xfd, 0x20, 0x50, 0x00};
  const std::string want = "image: 12131×9070 pixels exceeds the limit of 1000000";
  EXPECT_EQ(error_of(webp, 1'000'000), want);
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "the address-space check needs a build without AddressSanitizer";
#else
  // In a child whose address space has room for 300 MB more, the refusal
  // still comes from our check, not from a failed 440 MB allocation.
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    long pages = 0;
    if (FILE* f = std::fopen("/proc/self/statm", "r")) {
      if (std::fscanf(f, "%ld", &pages) != 1) pages = 0;
      std::fclose(f);
    }
    const rlim_t cap = rlim_t(pages) * rlim_t(sysconf(_SC_PAGESIZE)) + (300ull << 20);
    rlimit rl{cap, cap};
    if (pages == 0 || setrlimit(RLIMIT_AS, &rl) != 0) _exit(2);
    _exit(error_of(webp, 1'000'000) == want ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
#endif
}

// ------------------------------------------------------------ normalise

// Round a double to bfloat16 (8 significant bits, ties to even), written
// independently of md::round_bf16.
double bf16_ref(double v) {
  if (v == 0) return v;
  int exp;
  double m = std::frexp(v, &exp);     // v = m·2^exp, 0.5 ≤ |m| < 1
  double scaled = std::ldexp(m, 8);   // 8 significant bits
  double r = std::nearbyint(scaled);  // default rounding: ties to even
  return std::ldexp(r, exp - 8);
}

TEST(Normalize, AllByteValues) {
  // One 16×16 crop holding all 256 values in R, reversed in G, shifted in B.
  const int n = 16;
  std::vector<uint8_t> hwc(n * n * 3);
  for (int i = 0; i < n * n; ++i) {
    hwc[i * 3] = uint8_t(i);
    hwc[i * 3 + 1] = uint8_t(255 - i);
    hwc[i * 3 + 2] = uint8_t(i + 77);
  }
  std::vector<float> chw(n * n * 3, -99.f);
  md::normalize_crop(hwc.data(), n, chw.data());
  int differs_from_fp32 = 0;
  for (int i = 0; i < n * n; ++i)
    for (int c = 0; c < 3; ++c) {
      uint8_t x = hwc[i * 3 + c];
      // torch: bf16(x) exact; div_(255) in fp32 then to bf16; sub_(0.5) → bf16; div_(0.5) exact.
      double a = bf16_ref(double(float(x) / 255.0f));
      double b = bf16_ref(a - 0.5);
      double want = b * 2.0;
      // Rounding the exact quotient gives the same bf16 (no double-rounding case).
      EXPECT_EQ(bf16_ref(double(x) / 255.0), a) << int(x);
      ASSERT_EQ(chw[c * n * n + i], float(want)) << "value " << int(x) << " channel " << c;
      if (std::fabs(want - (x / 255.0 - 0.5) / 0.5) > 1e-6) ++differs_from_fp32;
    }
  EXPECT_EQ(chw[0], -1.0f);
  EXPECT_EQ(chw[255], 1.0f);  // R channel, x = 255
  EXPECT_GT(differs_from_fp32, 0);
  // A few hand-checked values: x = 1 → 1/255 → bf16 0.00392151 → −0.49609375 → −0.9921875.
  EXPECT_EQ(chw[1], -0.9921875f);
  // x = 128 → 0.50196 → bf16 0.50390625 → 0.00390625 → 0.0078125.
  EXPECT_EQ(chw[128], 0.0078125f);
}

// --------------------------------------------------------------- tool

TEST(DumpCrops, WritesCropsAndJson) {
  std::filesystem::path tool = std::filesystem::path(MOONDREAM_BINARY_DIR) / "tests" / "dump_crops";
  if (!std::filesystem::exists(tool)) GTEST_SKIP() << "dump_crops not built";
  TempDir dir;
  md::RgbImage ref = noise(640, 480, 8);
  MemImage m = make_u8(640, 480, 3, ref.pixels, VIPS_INTERPRETATION_sRGB);
  write_file(dir.path / "in.png", png_of(m.img));
  std::string cmd = "'" + tool.string() + "' '" + (dir.path / "in.png").string() + "' '" + (dir.path / "out").string() +
                    "' --max-crops 6";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  md::CropParams p;
  p.max_crops = 6;
  md::Crops c = md::make_crops(ref, p);
  std::ifstream u8(dir.path / "out.u8", std::ios::binary);
  std::vector<uint8_t> got((std::istreambuf_iterator<char>(u8)), std::istreambuf_iterator<char>());
  EXPECT_EQ(got, c.pixels);
  std::ifstream js(dir.path / "out.json");
  std::string text((std::istreambuf_iterator<char>(js)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("\"rows\": " + std::to_string(c.tiling.rows)), std::string::npos) << text;
  EXPECT_NE(text.find("\"cols\": " + std::to_string(c.tiling.cols)), std::string::npos) << text;
  EXPECT_NE(text.find("\"count\": " + std::to_string(c.count)), std::string::npos) << text;
  EXPECT_NE(text.find("\"width\": 640"), std::string::npos) << text;
  EXPECT_NE(text.find("\"height\": 480"), std::string::npos) << text;
}

}  // namespace
