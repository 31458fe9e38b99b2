// dtype conversions, SafetensorsFile validation and WeightStore loading
// (single file, sharded, 2024-08-26 layout names).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "tensor/dtype.h"
#include "tensor/error.h"
#include "tensor/file_map.h"
#include "tensor/safetensors.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using md::DType;

namespace {

// ------------------------------------------------------------------ helpers

uint32_t fbits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float bitsf(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Reference half -> float straight from the IEEE 754 definition.
double ref_half(uint16_t h) {
  const int sign = (h >> 15) & 1;
  const int e = (h >> 10) & 0x1f;
  const int m = h & 0x3ff;
  double v;
  if (e == 0)
    v = std::ldexp(double(m), -24);
  else if (e == 31)
    v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else
    v = std::ldexp(double(1024 + m), e - 25);
  return sign ? -v : v;
}

// Reference float -> half value (as a double), round to nearest even.
double ref_round_to_half(float f) {
  const double x = std::fabs(double(f));
  if (std::isinf(x)) return std::copysign(INFINITY, f);
  if (x == 0) return std::copysign(0.0, f);
  int e;
  std::frexp(x, &e);                                   // x = m * 2^e, m in [0.5, 1)
  int ulp_exp = std::max(e - 11, -24);                 // 11 significant bits; subnormal ulp 2^-24
  double q = std::nearbyint(std::ldexp(x, -ulp_exp));  // default rounding: ties to even
  double r = std::ldexp(q, ulp_exp);
  if (r >= 65520.0 || r > 65504.0) r = INFINITY;
  return std::copysign(r, f);
}

// Writes a little-endian u64.
void put_u64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(char((v >> (8 * i)) & 0xff));
}

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(out.good()) << p;
}

// Raw safetensors: explicit header text and data bytes.
void write_raw(const fs::path& p, const std::string& header, const std::string& data) {
  std::string s;
  put_u64(s, header.size());
  s += header;
  s += data;
  write_file(p, s);
}

struct Tensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

template <class T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

std::string f32_bytes(const std::vector<float>& v) { return bytes_of(v); }
std::string f16_bytes(const std::vector<float>& v) {
  std::vector<uint16_t> h;
  for (float f : v) h.push_back(md::f32_to_f16(f));
  return bytes_of(h);
}
std::string bf16_bytes(const std::vector<float>& v) {
  std::vector<uint16_t> h;
  for (float f : v) h.push_back(md::f32_to_bf16(f));
  return bytes_of(h);
}

Tensor f32(const std::string& name, std::vector<int64_t> shape, std::vector<float> vals = {}) {
  size_t n = 1;
  for (auto d : shape) n *= size_t(d);
  if (vals.empty())
    for (size_t i = 0; i < n; ++i) vals.push_back(float(i) * 0.5f);
  return {name, "F32", shape, f32_bytes(vals)};
}

// A well-formed safetensors file; the header is padded to 8 bytes.
void write_st(const fs::path& p, const std::vector<Tensor>& ts, const json& metadata = nullptr) {
  json h = json::object();
  std::string data;
  for (const Tensor& t : ts) {
    h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  if (!metadata.is_null()) h["__metadata__"] = metadata;
  std::string text = h.dump();
  while (text.size() % 8) text.push_back(' ');
  write_raw(p, text, data);
}

std::vector<float> to_f32(const md::TensorView& t) {
  std::vector<float> out(t.numel());
  md::convert_to_f32(t.dtype, t.data, out.data(), out.size());
  return out;
}

// Runs f, expecting md::Error; returns its message ("" and a failure if none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const md::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected md::Error, got other exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected md::Error, nothing thrown";
  return "";
}

#define EXPECT_ERROR_HAS(expr, ...)                                                         \
  do {                                                                                      \
    const std::string msg_ = error_of([&] { (void)(expr); });                               \
    for (const std::string& sub_ : std::vector<std::string>{__VA_ARGS__})                   \
      EXPECT_NE(msg_.find(sub_), std::string::npos) << "'" << sub_ << "' not in: " << msg_; \
    EXPECT_EQ(msg_.find('\n'), std::string::npos) << "multi-line message: " << msg_;        \
  } while (0)

class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("md_st_" + std::to_string(getpid()) + "_" + info->test_suite_name() + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path path(const std::string& name) const { return dir_ / name; }
  std::string dir() const { return dir_.string(); }
  fs::path dir_;
};

// ---------------------------------------------------------------- dtypes

TEST(DType, NamesSizesParse) {
  EXPECT_EQ(md::dtype_size(DType::F32), 4u);
  EXPECT_EQ(md::dtype_size(DType::F16), 2u);
  EXPECT_EQ(md::dtype_size(DType::BF16), 2u);
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    DType back;
    ASSERT_TRUE(md::parse_dtype(md::dtype_name(t), &back));
    EXPECT_EQ(back, t);
  }
  EXPECT_EQ(md::dtype_name(DType::BF16), "BF16");
  DType d = DType::F32;
  for (const char* bad : {"F64", "I64", "U8", "BOOL", "f32", "", "F8_E4M3", "BF16 "})
    EXPECT_FALSE(md::parse_dtype(bad, &d)) << bad;
}

TEST(DType, F16ToF32ExhaustiveVsReference) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float got = md::f16_to_f32(uint16_t(h));
    const double want = ref_half(uint16_t(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << h;
      // Sign and payload preserved (payload moves up by 13 bits).
      EXPECT_EQ(fbits(got), ((h & 0x8000u) << 16) | 0x7f800000u | ((h & 0x3ffu) << 13)) << std::hex << h;
    } else {
      ASSERT_EQ(double(got), want) << std::hex << h;
      ASSERT_EQ(std::signbit(got), bool(h & 0x8000)) << std::hex << h;
    }
  }
  // convert_to_f32 agrees with the scalar function on the whole table, from an
  // unaligned source.
  std::vector<uint8_t> buf(2 * 65536 + 1);
  for (uint32_t h = 0; h < 65536; ++h) std::memcpy(buf.data() + 1 + 2 * h, &h, 2);
  std::vector<float> out(65536);
  md::convert_to_f32(DType::F16, buf.data() + 1, out.data(), out.size());
  for (uint32_t h = 0; h < 65536; ++h) ASSERT_EQ(fbits(out[h]), fbits(md::f16_to_f32(uint16_t(h)))) << std::hex << h;
}

TEST(DType, F32ToF16RoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = md::f16_to_f32(uint16_t(h));
    const uint16_t back = md::f32_to_f16(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(md::f16_to_f32(back))) << std::hex << h;
      EXPECT_EQ(back & 0x8000, h & 0x8000) << std::hex << h;
      EXPECT_TRUE(back & 0x0200) << "NaN not quiet " << std::hex << h;
    } else {
      ASSERT_EQ(back, h) << std::hex << h;
    }
  }
}

TEST(DType, F32ToF16TiesToEvenAtEveryMidpoint) {
  // Between every pair of adjacent non-negative finite halves (and between the
  // largest half and 2^16, which is infinity): the midpoint rounds to the even
  // one, one float ulp either side rounds to the nearer one.
  for (uint32_t a = 0; a < 0x7c00; ++a) {
    const uint32_t b = a + 1;
    const double lo = ref_half(uint16_t(a));
    const double hi = b == 0x7c00 ? 65536.0 : ref_half(uint16_t(b));
    const float mid = float((lo + hi) / 2);  // exact: needs 12 significant bits
    ASSERT_EQ(double(mid), (lo + hi) / 2);
    const uint16_t even = (a & 1) ? uint16_t(b) : uint16_t(a);
    ASSERT_EQ(md::f32_to_f16(mid), even) << std::hex << a;
    ASSERT_EQ(md::f32_to_f16(-mid), even | 0x8000) << std::hex << a;
    ASSERT_EQ(md::f32_to_f16(std::nextafter(mid, 0.0f)), a) << std::hex << a;
    ASSERT_EQ(md::f32_to_f16(std::nextafter(mid, INFINITY)), b) << std::hex << a;
  }
}

TEST(DType, F32ToF16SpecialsAndRandomVsReference) {
  EXPECT_EQ(md::f32_to_f16(0.0f), 0x0000);
  EXPECT_EQ(md::f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(md::f32_to_f16(INFINITY), 0x7c00);
  EXPECT_EQ(md::f32_to_f16(-INFINITY), 0xfc00);
  EXPECT_EQ(md::f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(md::f32_to_f16(65519.99f), 0x7bff);
  EXPECT_EQ(md::f32_to_f16(65520.0f), 0x7c00);
  EXPECT_EQ(md::f32_to_f16(1e10f), 0x7c00);
  EXPECT_EQ(md::f32_to_f16(-1e38f), 0xfc00);
  EXPECT_EQ(md::f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(md::f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie -> even (zero)
  EXPECT_EQ(md::f32_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(md::f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);                        // 1.5 ulp tie -> 2
  EXPECT_EQ(md::f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);                        // smallest normal
  EXPECT_EQ(md::f32_to_f16(std::nextafter(std::ldexp(1.0f, -14), 0.0f)), 0x0400);  // rounds up into normal
  EXPECT_EQ(md::f32_to_f16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(md::f32_to_f16(-std::numeric_limits<float>::denorm_min()), 0x8000);
  EXPECT_EQ(md::f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(md::f32_to_f16(-2.0f), 0xc000);
  // NaNs stay NaN (even one whose payload lives only in the low bits), sign kept.
  for (uint32_t nb : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu, 0xffc00000u}) {
    const uint16_t h = md::f32_to_f16(bitsf(nb));
    EXPECT_EQ(h & 0x7c00, 0x7c00) << std::hex << nb;
    EXPECT_NE(h & 0x03ff, 0) << std::hex << nb;
    EXPECT_EQ(bool(h & 0x8000), bool(nb & 0x80000000u)) << std::hex << nb;
  }

  std::mt19937 rng(1234);
  std::uniform_int_distribution<uint32_t> any;
  std::uniform_int_distribution<uint32_t> near_range(0x33000000u, 0x47800000u);  // ~2^-25 .. 2^16
  for (int i = 0; i < 2'000'000; ++i) {
    uint32_t bits = (i & 1) ? any(rng) : (near_range(rng) | (any(rng) & 0x80000000u));
    const float f = bitsf(bits);
    if (std::isnan(f)) continue;
    const double want = ref_round_to_half(f);
    const float got = md::f16_to_f32(md::f32_to_f16(f));
    ASSERT_EQ(double(got), want) << std::hex << bits;
    ASSERT_EQ(std::signbit(got), std::signbit(f)) << std::hex << bits;
  }
}

TEST(DType, BF16Conversions) {
  EXPECT_EQ(md::f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(md::bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(md::bf16_to_f32(0xc000), -2.0f);
  EXPECT_TRUE(std::isinf(md::bf16_to_f32(0x7f80)));
  EXPECT_TRUE(std::isnan(md::bf16_to_f32(0x7fc0)));
  // Ties to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
  EXPECT_EQ(md::f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(md::f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(md::bf16_to_f32(md::f32_to_bf16(bitsf(0x7f800001u)))));
  // convert_to_f32 over every bf16 value, unaligned, odd length.
  std::vector<uint8_t> buf(2 * 65536 + 1);
  for (uint32_t h = 0; h < 65536; ++h) std::memcpy(buf.data() + 1 + 2 * h, &h, 2);
  for (size_t n : {size_t(65536), size_t(65535), size_t(17), size_t(3), size_t(0)}) {
    std::vector<float> out(n + 1, 42.0f);
    md::convert_to_f32(DType::BF16, buf.data() + 1, out.data(), n);
    for (uint32_t h = 0; h < n; ++h) ASSERT_EQ(fbits(out[h]), h << 16) << std::hex << h;
    EXPECT_EQ(out[n], 42.0f);  // no overrun
  }
}

TEST(DType, ConvertF32AndOddLengths) {
  std::vector<float> src(37);
  for (size_t i = 0; i < src.size(); ++i) src[i] = float(i) - 10.25f;
  std::vector<uint8_t> buf(src.size() * 4 + 3);
  std::memcpy(buf.data() + 3, src.data(), src.size() * 4);
  std::vector<float> out(src.size());
  md::convert_to_f32(DType::F32, buf.data() + 3, out.data(), out.size());
  EXPECT_EQ(out, src);
  for (size_t n : {size_t(0), size_t(1), size_t(15), size_t(16), size_t(17), size_t(33)}) {
    std::vector<uint16_t> h(n);
    for (size_t i = 0; i < n; ++i) h[i] = md::f32_to_f16(float(i) * 0.75f - 3.0f);
    std::vector<float> o(n + 1, 7.0f);
    md::convert_to_f32(DType::F16, h.data(), o.data(), n);
    for (size_t i = 0; i < n; ++i) EXPECT_EQ(o[i], float(i) * 0.75f - 3.0f);
    EXPECT_EQ(o[n], 7.0f);
  }
}

// ------------------------------------------------------- SafetensorsFile

using Safetensors = TempDir;

TEST_F(Safetensors, RoundTripAllDtypesAndMetadata) {
  const std::vector<float> a{1.5f, -2.25f, 0.0f, 3e-5f, 65504.0f, -1e-7f};
  const std::vector<float> b{0.5f, -1.0f, 2.0f, 1000.0f};
  const std::vector<float> c{1.0f, -3.5f, 1e30f, -0.0078125f};
  const fs::path p = path("m.safetensors");
  write_st(p,
           {{"a32", "F32", {2, 3}, f32_bytes(a)},
            {"b16", "F16", {4}, f16_bytes(b)},
            {"cbf", "BF16", {2, 1, 2}, bf16_bytes(c)},
            {"scalar", "F32", {}, f32_bytes({7.0f})},
            {"empty", "F16", {0, 5}, ""}},
           {{"format", "pt"}, {"note", "hello"}});
  auto f = md::SafetensorsFile::open(p.string());
  EXPECT_EQ(f->path(), p.string());
  ASSERT_EQ(f->tensors().size(), 5u);
  const auto& ta = f->tensors().at("a32");
  EXPECT_EQ(ta.dtype, DType::F32);
  EXPECT_EQ(ta.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ta.nbytes, 24u);
  EXPECT_EQ(ta.numel(), 6u);
  EXPECT_EQ(ta.file, p.string());
  EXPECT_EQ(ta.name, "a32");
  EXPECT_EQ(to_f32(ta), a);
  const auto& tb = f->tensors().at("b16");
  EXPECT_EQ(tb.dtype, DType::F16);
  EXPECT_EQ(to_f32(tb), b);
  const auto& tc = f->tensors().at("cbf");
  EXPECT_EQ(tc.dtype, DType::BF16);
  EXPECT_EQ(tc.shape, (std::vector<int64_t>{2, 1, 2}));
  std::vector<float> want_c;
  for (float x : c) want_c.push_back(md::round_bf16(x));
  EXPECT_EQ(to_f32(tc), want_c);
  EXPECT_EQ(f->tensors().at("scalar").numel(), 1u);
  EXPECT_EQ(to_f32(f->tensors().at("scalar")), std::vector<float>{7.0f});
  EXPECT_EQ(f->tensors().at("empty").numel(), 0u);
  EXPECT_EQ(f->tensors().at("empty").nbytes, 0u);
  ASSERT_EQ(f->metadata().size(), 2u);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->metadata().at("note"), "hello");
}

// The views are into the file mapping: they lie inside a mapping of this file
// in /proc/self/maps, at the offsets the header gives.
TEST_F(Safetensors, ViewsPointIntoTheMapping) {
  const fs::path p = path("m.safetensors");
  std::vector<float> big(4096);
  for (size_t i = 0; i < big.size(); ++i) big[i] = float(i);
  write_st(p, {f32("first", {3}), {"second", "F32", {4096}, f32_bytes(big)}, f32("third", {5})});
  auto f = md::SafetensorsFile::open(p.string());
  const auto& t1 = f->tensors().at("first");
  const auto& t2 = f->tensors().at("second");
  const auto& t3 = f->tensors().at("third");
  EXPECT_EQ(t2.data - t1.data, 12);
  EXPECT_EQ(t3.data - t2.data, 4096 * 4);
  EXPECT_EQ(to_f32(t2), big);

  std::ifstream maps("/proc/self/maps");
  ASSERT_TRUE(maps.good());
  const std::string canon = fs::canonical(p).string();
  bool found = false;
  std::string line;
  while (std::getline(maps, line)) {
    if (line.size() < canon.size() || line.compare(line.size() - canon.size(), canon.size(), canon) != 0) continue;
    uintptr_t lo = 0, hi = 0;
    ASSERT_EQ(std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi), 2) << line;
    const auto a = reinterpret_cast<uintptr_t>(t1.data);
    const auto b = reinterpret_cast<uintptr_t>(t3.data + t3.nbytes);
    if (a >= lo && b <= hi) found = true;
    EXPECT_EQ(line.find("r--p"), line.find(' ') + 1) << "expected a private read-only mapping: " << line;
  }
  EXPECT_TRUE(found) << "tensor data is not inside a mapping of " << canon;
  // Unmapped when the file object goes away.
  f.reset();
  std::ifstream maps2("/proc/self/maps");
  while (std::getline(maps2, line)) EXPECT_EQ(line.find(canon), std::string::npos) << line;
}

// Weight files are mapped at a 2 MiB boundary with the huge-page advice (the
// decode step streams them: md::map_file_readonly), and the mapping holds the
// file's bytes; unmapping frees the whole range.
TEST_F(Safetensors, MappedAtAHugePageBoundaryWithTheAdvice) {
  const fs::path p = path("m.safetensors");
  std::vector<float> big(300000);
  for (size_t i = 0; i < big.size(); ++i) big[i] = float(i % 977);
  write_st(p, {{"w", "F32", {300000}, f32_bytes(big)}});
  auto f = md::SafetensorsFile::open(p.string());
  const auto& t = f->tensors().at("w");
  EXPECT_EQ(to_f32(t), big);
  std::ifstream maps("/proc/self/maps");
  ASSERT_TRUE(maps.good());
  const std::string canon = fs::canonical(p).string();
  uintptr_t start = 0;
  std::string line;
  while (std::getline(maps, line)) {
    if (line.find(canon) == std::string::npos) continue;
    uintptr_t lo = 0, hi = 0;
    ASSERT_EQ(std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi), 2) << line;
    if (reinterpret_cast<uintptr_t>(t.data) >= lo && reinterpret_cast<uintptr_t>(t.data) < hi) start = lo;
  }
  ASSERT_NE(start, 0u) << "no mapping of " << canon;
  EXPECT_EQ(start % (uintptr_t(2) << 20), 0u) << std::hex << start;
  // The advice exists wherever the kernel has transparent huge pages.
  if (fs::exists("/sys/kernel/mm/transparent_hugepage/enabled")) {
    EXPECT_TRUE(md::mapping_has_hugepage_advice(t.data));
  }
  EXPECT_FALSE(md::mapping_has_hugepage_advice(big.data())) << "heap memory carries no advice of ours";

  // map_file_readonly directly: the bytes, the alignment, errors.
  const int fd = ::open(p.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  const size_t size = size_t(fs::file_size(p));
  const void* m = md::map_file_readonly(fd, size);
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(m) % (uintptr_t(2) << 20), 0u);
  std::ifstream in(p, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_EQ(bytes.size(), size);
  EXPECT_EQ(std::memcmp(m, bytes.data(), size), 0);
  EXPECT_EQ(md::map_file_readonly(fd, 0), nullptr);
  ::close(fd);
  md::unmap_file(m, size);
  EXPECT_EQ(md::map_file_readonly(-1, size), nullptr);
}

TEST_F(Safetensors, TruncatedFile) {
  const fs::path p = path("short.safetensors");
  write_file(p, "abcde");
  EXPECT_ERROR_HAS(md::SafetensorsFile::open(p.string()), p.string(), "truncated: 5 bytes, no header");
  write_file(p, "");
  EXPECT_ERROR_HAS(md::SafetensorsFile::open(p.string()), p.string(), "truncated: 0 bytes");
}

TEST_F(Safetensors, HeaderLongerThanFile) {
  const fs::path p = path("h.safetensors");
  std::string s;
  put_u64(s, 1000);
  s += "{}";
  write_file(p, s);
  EXPECT_ERROR_HAS(md::SafetensorsFile::open(p.string()), p.string(), "header length 1000 exceeds file size");
  // A random 8-byte prefix (e.g. not a safetensors file at all).
  write_file(p, std::string("\xff\xff\xff\xff\xff\xff\xff\xff{}", 10));
  EXPECT_ERROR_HAS(md::SafetensorsFile::open(p.string()), p.string(), "exceeds file size");
  // Truncated inside the data section.
  write_st(p, {f32("x", {16})});
  fs::resize_file(p, fs::file_size(p) - 4);
  EXPECT_ERROR_HAS(md::SafetensorsFile::open(p.string()), p.string(), "'x'", "out of range");
}

TEST_F(Safetensors, AbsurdHeaderLength) {
  // A sparse file big enough to hold a 150 MB header: refused before parsing.
  const fs::path p = path("huge.safetensors");
  std::string s;
  put_u64(s, 150'000'000);
  write_file(p, s);
  fs::resize_file(p, 8 + 150'000'000);
  EXPECT_ERROR_HAS(md::SafetensorsFile::open(p.string()), p.string(), "header length 150000000", "implausibly large");
}

TEST_F(Safetensors, BadHeaderJson) {
  const fs::path p = path("j.safetensors");
  write_raw(p, "{\"a\": [1,", "");
  EXPECT_ERROR_HAS(md::SafetensorsFile::open(p.string()), p.string(), "invalid JSON", "column");
  write_raw(p, "[1,2,3]", "");
  EXPECT_ERROR_HAS(md::SafetensorsFile::open(p.string()), p.string(), "not a JSON object");
  write_raw(p, std::string("{\"a\"\n: \x01}"), "");
  EXPECT_ERROR_HAS(md::SafetensorsFile::open(p.string()), p.string(), "invalid JSON");
  write_raw(p,
            "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
            "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
            std::string(8, '\0'));
  EXPECT_ERROR_HAS(md::SafetensorsFile::open(p.string()), p.string(), "'x' twice");
}

TEST_F(Safetensors, MalformedEntries) {
  const fs::path p = path("e.safetensors");
  const std::string data(64, '\0');
  auto check = [&](const std::string& entry, std::vector<std::string> subs) {
    write_raw(p, "{\"t.w\":" + entry + "}", data);
    subs.push_back(p.string());
    const std::string msg = error_of([&] { md::SafetensorsFile::open(p.string()); });
    for (const auto& s : subs) EXPECT_NE(msg.find(s), std::string::npos) << entry << " -> " << msg;
  };
  check("5", {"'t.w'", "not a JSON object"});
  check(R"({"shape":[1],"data_offsets":[0,4]})", {"'t.w'", "missing \"dtype\""});
  check(R"({"dtype":"F32","data_offsets":[0,4]})", {"'t.w'", "missing \"shape\""});
  check(R"({"dtype":"F32","shape":[1]})", {"'t.w'", "missing \"data_offsets\""});
  check(R"({"dtype":32,"shape":[1],"data_offsets":[0,4]})", {"'t.w'", "\"dtype\" is not a string"});
  check(R"({"dtype":"F32","shape":"1","data_offsets":[0,4]})", {"'t.w'", "\"shape\" is not an array"});
  check(R"({"dtype":"F32","shape":[1],"data_offsets":[0]})", {"'t.w'", "data_offsets"});
  check(R"({"dtype":"F32","shape":[1],"data_offsets":{"a":1}})", {"'t.w'", "data_offsets"});
  check(R"({"dtype":"F32","shape":[1.5],"data_offsets":[0,4]})", {"'t.w'", "non-integer dimension"});
  check(R"({"dtype":"F32","shape":[-1],"data_offsets":[0,4]})", {"'t.w'", "negative dimension"});
  check(R"({"dtype":"F32","shape":[1],"data_offsets":[-4,0]})", {"'t.w'", "not non-negative integers"});
  check(R"({"dtype":"F32","shape":[1],"data_offsets":[0,"4"]})", {"'t.w'", "not non-negative integers"});
  check(R"({"dtype":"F64","shape":[1],"data_offsets":[0,8]})", {"'t.w'", "unsupported dtype 'F64'"});
  check(R"({"dtype":"I64","shape":[1],"data_offsets":[0,8]})", {"'t.w'", "unsupported dtype 'I64'"});
  check(R"({"dtype":"F32","shape":[2,3],"data_offsets":[0,20]})", {"'t.w'", "[2,3]", "24 bytes", "span 20 bytes"});
  check(R"({"dtype":"BF16","shape":[3],"data_offsets":[0,4]})", {"'t.w'", "6 bytes", "span 4 bytes"});
  check(R"({"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]})", {"'t.w'", "too large"});
  check(R"({"dtype":"F32","shape":[4],"data_offsets":[56,72]})", {"'t.w'", "[56,72] out of range", "64 bytes"});
  check(R"({"dtype":"F32","shape":[0],"data_offsets":[65,65]})", {"'t.w'", "out of range"});
  check(R"({"dtype":"F32","shape":[1],"data_offsets":[8,4]})", {"'t.w'", "begin > end"});
  check(R"({"dtype":"F32","shape":[1],"data_offsets":[18446744073709551615,4]})", {"'t.w'", "begin > end"});
}

TEST_F(Safetensors, OverlappingTensors) {
  const fs::path p = path("o.safetensors");
  const std::string data(64, '\0');
  write_raw(p,
            R"({"b":{"dtype":"F32","shape":[4],"data_offsets":[16,32]},)"
            R"("a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
            R"("c":{"dtype":"F32","shape":[2],"data_offsets":[28,36]}})",
            data);
  EXPECT_ERROR_HAS(md::SafetensorsFile::open(p.string()), p.string(), "'b'", "'c'", "overlap");
  // One tensor inside another, not adjacent to it in begin order.
  write_raw(p,
            R"({"big":{"dtype":"F32","shape":[16],"data_offsets":[0,64]},)"
            R"("x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
            R"("y":{"dtype":"F32","shape":[1],"data_offsets":[40,44]}})",
            data);
  EXPECT_ERROR_HAS(md::SafetensorsFile::open(p.string()), p.string(), "overlap");
  // Adjacent and empty tensors are fine; gaps too.
  write_raw(p,
            R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
            R"("e":{"dtype":"F32","shape":[0],"data_offsets":[8,8]},)"
            R"("b":{"dtype":"F16","shape":[8],"data_offsets":[16,32]},)"
            R"("c":{"dtype":"F32","shape":[2],"data_offsets":[40,48]}})",
            data);
  EXPECT_EQ(md::SafetensorsFile::open(p.string())->tensors().size(), 4u);
}

TEST_F(Safetensors, Metadata) {
  const fs::path p = path("md.safetensors");
  write_raw(p, R"({"__metadata__":{"format":"pt","n":3}})", "");
  EXPECT_ERROR_HAS(md::SafetensorsFile::open(p.string()), p.string(), "__metadata__", "'n'", "not a string");
  write_raw(p, R"({"__metadata__":[1]})", "");
  EXPECT_ERROR_HAS(md::SafetensorsFile::open(p.string()), p.string(), "__metadata__");
  write_raw(p, R"({"__metadata__":{"format":"pt"}})", "");
  auto f = md::SafetensorsFile::open(p.string());
  EXPECT_TRUE(f->tensors().empty());
  EXPECT_EQ(f->metadata().at("format"), "pt");
}

TEST_F(Safetensors, NotAFile) {
  EXPECT_ERROR_HAS(md::SafetensorsFile::open(path("nope.safetensors").string()), "nope.safetensors", "cannot open");
  EXPECT_ERROR_HAS(md::SafetensorsFile::open(dir()), dir(), "not a regular file");
}

// ------------------------------------------------------------ WeightStore

using Weights = TempDir;

TEST_F(Weights, SingleFile2025Layout) {
  write_st(path("model.safetensors"),
           {f32("model.text.wte", {4, 2}), f32("model.text.blocks.0.ln.weight", {2}),
            f32("model.region.coord_features", {1, 4}), f32("model.vision.pos_emb", {1, 2, 3})});
  md::WeightStore ws = md::WeightStore::open(dir());
  EXPECT_EQ(ws.dir(), dir());
  EXPECT_EQ(ws.names(), (std::vector<std::string>{"region.coord_features", "text.blocks.0.ln.weight", "text.wte",
                                                  "vision.pos_emb"}));
  EXPECT_TRUE(ws.has("text.wte"));
  EXPECT_FALSE(ws.has("model.text.wte"));
  EXPECT_EQ(ws.total_bytes(), (8 + 2 + 4 + 6) * 4u);
  const auto& t = ws.get("text.wte", {4, 2});
  EXPECT_EQ(t.name, "text.wte");
  EXPECT_EQ(to_f32(t), (std::vector<float>{0, 0.5f, 1, 1.5f, 2, 2.5f, 3, 3.5f}));
  EXPECT_EQ(t.file, path("model.safetensors").string());

  EXPECT_ERROR_HAS(ws.get("text.lm_head.weight", {4, 2}), "missing tensor 'text.lm_head.weight' in " + dir());
  EXPECT_ERROR_HAS(ws.get("text.wte", {2, 4}), path("model.safetensors").string(),
                   "tensor 'text.wte' has shape [4,2], expected [2,4]");
  EXPECT_ERROR_HAS(ws.get("vision.pos_emb", {2, 3}), "has shape [1,2,3], expected [2,3]");

  // The store can be moved around (views stay valid).
  auto shared = std::make_shared<md::WeightStore>(std::move(ws));
  EXPECT_EQ(to_f32(shared->get("text.wte", {4, 2}))[7], 3.5f);
}

TEST_F(Weights, NoModelFiles) {
  EXPECT_ERROR_HAS(md::WeightStore::open(dir()), "no model.safetensors or model.safetensors.index.json in " + dir());
  EXPECT_ERROR_HAS(md::WeightStore::open(path("missing").string()), "no model.safetensors", "missing");
}

TEST_F(Weights, ErrorsInTheFileNameIt) {
  write_raw(path("model.safetensors"), R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "abc");
  EXPECT_ERROR_HAS(md::WeightStore::open(dir()), path("model.safetensors").string(), "out of range");
}

void write_index(const fs::path& p, const json& weight_map) {
  json j = {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
  write_file(p, j.dump(2));
}

TEST_F(Weights, Sharded) {
  write_st(path("model-00001-of-00002.safetensors"),
           {f32("model.text.wte", {3, 2}), f32("model.text.post_ln.weight", {2})});
  write_st(
      path("model-00002-of-00002.safetensors"),
      {{"model.text.post_ln.bias", "BF16", {2}, bf16_bytes({1.0f, -1.0f})}, f32("model.text.lm_head.weight", {3, 2})});
  write_index(path("model.safetensors.index.json"),
              {{"model.text.wte", "model-00001-of-00002.safetensors"},
               {"model.text.post_ln.weight", "model-00001-of-00002.safetensors"},
               {"model.text.post_ln.bias", "model-00002-of-00002.safetensors"},
               {"model.text.lm_head.weight", "model-00002-of-00002.safetensors"}});
  // A stray single-file model next to the index is ignored: the index wins.
  write_st(path("model.safetensors"), {f32("model.text.wte", {9, 9})});
  md::WeightStore ws = md::WeightStore::open(dir());
  EXPECT_EQ(ws.names().size(), 4u);
  EXPECT_EQ(ws.get("text.wte", {3, 2}).file, path("model-00001-of-00002.safetensors").string());
  const auto& b = ws.get("text.post_ln.bias", {2});
  EXPECT_EQ(b.file, path("model-00002-of-00002.safetensors").string());
  EXPECT_EQ(b.dtype, DType::BF16);
  EXPECT_EQ(to_f32(b), (std::vector<float>{1.0f, -1.0f}));
  EXPECT_EQ(ws.total_bytes(), (6 + 2 + 6) * 4u + 2 * 2u);
}

TEST_F(Weights, ShardedErrors) {
  const fs::path idx = path("model.safetensors.index.json");
  const std::string s1 = "model-00001-of-00002.safetensors", s2 = "model-00002-of-00002.safetensors";
  write_st(path(s1), {f32("model.a", {2})});
  write_st(path(s2), {f32("model.b", {2})});

  // Shard missing.
  write_index(idx, {{"model.a", s1}, {"model.c", "model-00003-of-00003.safetensors"}});
  EXPECT_ERROR_HAS(md::WeightStore::open(dir()), idx.string(), "model-00003-of-00003.safetensors", "missing");
  // Tensor listed in a shard that lacks it.
  write_index(idx, {{"model.a", s1}, {"model.b", s1}});
  EXPECT_ERROR_HAS(md::WeightStore::open(dir()), idx.string(), "'model.b'", s1, "does not contain it");
  // Shard names must be plain file names.
  for (const std::string bad : {"../model.safetensors", "sub/x.safetensors", "/etc/passwd", "..", "", "a\\b"}) {
    write_index(idx, {{"model.a", bad}});
    EXPECT_ERROR_HAS(md::WeightStore::open(dir()), idx.string(), "not a plain file name");
  }
  // Bad index JSON / structure.
  write_file(idx, "{\"weight_map\": {\"model.a\": ");
  EXPECT_ERROR_HAS(md::WeightStore::open(dir()), idx.string(), "invalid JSON");
  write_file(idx, "[]");
  EXPECT_ERROR_HAS(md::WeightStore::open(dir()), idx.string(), "not a JSON object");
  write_file(idx, R"({"metadata":{}})");
  EXPECT_ERROR_HAS(md::WeightStore::open(dir()), idx.string(), "bad index", "weight_map");
  write_file(idx, R"({"weight_map":[]})");
  EXPECT_ERROR_HAS(md::WeightStore::open(dir()), idx.string(), "bad index", "weight_map");
  write_file(idx, R"({"weight_map":{"model.a":1}})");
  EXPECT_ERROR_HAS(md::WeightStore::open(dir()), idx.string(), "bad index", "'model.a'", "not a string");
  // Same canonical tensor in two shards.
  write_st(path(s2), {f32("model.b", {2}), f32("a", {2})});
  write_index(idx, {{"model.a", s1}, {"model.b", s2}});
  EXPECT_ERROR_HAS(md::WeightStore::open(dir()), path(s2).string(), "duplicates 'a'", path(s1).string());
  // A broken shard is reported under its own name.
  write_raw(path(s2), "{", "");
  EXPECT_ERROR_HAS(md::WeightStore::open(dir()), path(s2).string(), "invalid JSON");
}

TEST_F(Weights, Legacy2024LayoutAndOrigMod) {
  const std::vector<float> coord{1, 2, 3, 4, 5, 6, 7, 8};        // [8,1] -> [1,8]
  const std::vector<float> size{1, 2, 3, 4, 5, 6, 7, 8, 9, 10};  // [5,2] -> [2,5]
  const std::vector<std::pair<std::string, std::string>> renames = {
      {"vision_encoder.encoder.model.visual.patch_embed.linear.weight", "vision.patch_emb.weight"},
      {"vision_encoder.encoder.model.visual.patch_embed.linear.bias", "vision.patch_emb.bias"},
      {"vision_encoder.encoder.model.visual.pos_embed", "vision.pos_emb"},
      {"vision_encoder.encoder.model.visual.blocks.0.norm1.weight", "vision.blocks.0.ln1.weight"},
      {"vision_encoder.encoder.model.visual.blocks.0.norm1.bias", "vision.blocks.0.ln1.bias"},
      {"vision_encoder.encoder.model.visual.blocks.0.norm2.weight", "vision.blocks.0.ln2.weight"},
      {"vision_encoder.encoder.model.visual.blocks.12.attn.qkv.weight", "vision.blocks.12.attn.qkv.weight"},
      {"vision_encoder.encoder.model.visual.blocks.0.attn.proj.bias", "vision.blocks.0.attn.proj.bias"},
      {"vision_encoder.encoder.model.visual.blocks.0.mlp.fc1.weight", "vision.blocks.0.mlp.fc1.weight"},
      {"vision_encoder.encoder.model.visual.blocks.0.mlp.fc2.bias", "vision.blocks.0.mlp.fc2.bias"},
      {"vision_encoder.encoder.model.visual.norm.weight", "vision.post_ln.weight"},
      {"vision_encoder.encoder.model.visual.norm.bias", "vision.post_ln.bias"},
      {"vision_encoder.projection.mlp.fc1.weight", "vision.proj_mlp.fc1.weight"},
      {"vision_encoder.projection.mlp.fc2.bias", "vision.proj_mlp.fc2.bias"},
      {"text_model.transformer.embd.wte.weight", "text.wte"},
      {"text_model.transformer.h.0.ln.weight", "text.blocks.0.ln.weight"},
      {"text_model.transformer.h.0.ln.bias", "text.blocks.0.ln.bias"},
      {"text_model.transformer.h.3.mixer.Wqkv.weight", "text.blocks.3.attn.qkv.weight"},
      {"text_model.transformer.h.3.mixer.Wqkv.bias", "text.blocks.3.attn.qkv.bias"},
      {"text_model.transformer.h.0.mixer.out_proj.weight", "text.blocks.0.attn.proj.weight"},
      {"text_model.transformer.h.0.mlp.fc1.weight", "text.blocks.0.mlp.fc1.weight"},
      {"text_model.transformer.h.0.mlp.fc2.bias", "text.blocks.0.mlp.fc2.bias"},
      {"text_model.lm_head.ln.weight", "text.post_ln.weight"},
      {"text_model.lm_head.ln.bias", "text.post_ln.bias"},
      {"text_model.lm_head.linear.weight", "text.lm_head.weight"},
      {"text_model.lm_head.linear.bias", "text.lm_head.bias"},
      {"region_model.coordinate_encoder.weight", "region.coord_encoder.weight"},
      {"region_model.coordinate_encoder.bias", "region.coord_encoder.bias"},
      {"region_model.coordinate_decoder.fc1.weight", "region.coord_decoder.fc1.weight"},
      {"region_model.coordinate_decoder.fc2.bias", "region.coord_decoder.fc2.bias"},
      {"region_model.size_encoder.weight", "region.size_encoder.weight"},
      {"region_model.size_decoder.fc1.weight", "region.size_decoder.fc1.weight"},
      {"region_model.size_decoder.fc2.bias", "region.size_decoder.fc2.bias"},
      // Stray torch.compile segments anywhere, and an unknown tensor.
      {"text_model.transformer.h.1._orig_mod.mixer.Wqkv.weight", "text.blocks.1.attn.qkv.weight"},
      {"_orig_mod.vision_encoder.projection.mlp.fc1.bias", "vision.proj_mlp.fc1.bias"},
      {"model._orig_mod.text.blocks.7.ln.weight", "text.blocks.7.ln.weight"},
      {"something.extra", "something.extra"},
  };
  std::vector<Tensor> ts;
  for (size_t i = 0; i < renames.size(); ++i)
    ts.push_back(f32(renames[i].first, {int64_t(i + 1)}, std::vector<float>(i + 1, float(i))));
  ts.push_back({"region_model.coordinate_features.weight", "F32", {8, 1}, f32_bytes(coord)});
  ts.push_back({"region_model.size_features.weight", "BF16", {5, 2}, bf16_bytes(size)});
  write_st(path("model.safetensors"), ts);

  md::WeightStore ws = md::WeightStore::open(dir());
  EXPECT_EQ(ws.names().size(), renames.size() + 2);
  for (size_t i = 0; i < renames.size(); ++i) {
    const auto& t = ws.get(renames[i].second, {int64_t(i + 1)});
    EXPECT_EQ(t.name, renames[i].second);
    EXPECT_EQ(to_f32(t), std::vector<float>(i + 1, float(i))) << renames[i].first;
  }
  const auto& cf = ws.get("region.coord_features", {1, 8});
  EXPECT_EQ(cf.dtype, DType::F32);
  EXPECT_EQ(cf.nbytes, 32u);
  EXPECT_EQ(to_f32(cf), coord);
  const auto& sf = ws.get("region.size_features", {2, 5});
  EXPECT_EQ(sf.dtype, DType::BF16);
  EXPECT_EQ(sf.nbytes, 20u);
  // Row r of [5,2] is (2r+1, 2r+2); transposed: row 0 odd numbers, row 1 even.
  EXPECT_EQ(to_f32(sf), (std::vector<float>{1, 3, 5, 7, 9, 2, 4, 6, 8, 10}));
  EXPECT_ERROR_HAS(ws.get("region.size_features", {5, 2}), "has shape [2,5], expected [5,2]");
  EXPECT_EQ(ws.total_bytes(), [&] {
    size_t n = 0;
    for (size_t i = 0; i < renames.size(); ++i) n += (i + 1) * 4;
    return n + 32 + 20;
  }());
}

TEST_F(Weights, LegacyFeaturesMustBe2D) {
  write_st(path("model.safetensors"), {f32("region_model.size_features.weight", {4})});
  EXPECT_ERROR_HAS(md::WeightStore::open(dir()), path("model.safetensors").string(),
                   "'region_model.size_features.weight'", "expected 2 dimensions");
}

TEST_F(Weights, DuplicateCanonicalNamesInOneFile) {
  write_st(path("model.safetensors"), {f32("model.text.wte", {2}), f32("text_model.transformer.embd.wte.weight", {2})});
  EXPECT_ERROR_HAS(md::WeightStore::open(dir()), path("model.safetensors").string(), "duplicates 'text.wte'");
}

}  // namespace
