#include "tensor/dtype.h"

#include <cstring>

namespace md {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
  }
  return 0;
}

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
  }
  return "?";
}

bool parse_dtype(std::string_view s, DType* out) {
  DType t;
  if (s == "F32") {
    t = DType::F32;
  } else if (s == "F16") {
    t = DType::F16;
  } else if (s == "BF16") {
    t = DType::BF16;
  } else {
    return false;
  }
  if (out) *out = t;
  return true;
}

namespace {

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Branch-free half -> float (the compiler turns a loop of these into SIMD):
// shifting exponent+mantissa into place and multiplying by 2^112 rebiases the
// exponent for normals and normalises subnormals exactly (the product is
// exact); inf/NaN are selected separately (payload kept, quiet bit included).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  const uint32_t shifted = em << 13;
  const float scaled = bits_f32(shifted) * 0x1p112f;
  const uint32_t finite = f32_bits(scaled);
  const uint32_t special = shifted | 0x7f800000u;
  const uint32_t mask = 0u - uint32_t(em >= 0x7c00u);  // branch-free select
  const uint32_t mag = finite ^ ((finite ^ special) & mask);
  return bits_f32(mag | sign);
}

}  // namespace

float f16_to_f32(uint16_t v) { return half_to_float(v); }

uint16_t f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) {
    // NaN: keep the sign and the top payload bits, force quiet.
    return uint16_t(sign | 0x7e00u | ((x >> 13) & 0x3ffu));
  }
  // 65520 (halfway between 65504, the largest half, and 2^16) and above round
  // to infinity; this also covers infinity itself.
  if (x >= 0x477ff000u) return uint16_t(sign | 0x7c00u);
  if (x < 0x38800000u) {
    // Below 2^-14: result is subnormal (or zero). Adding 0.5 aligns the
    // mantissa so that the FPU performs the round-to-nearest-even shift.
    const float r = bits_f32(x) + 0.5f;
    return uint16_t(sign | (f32_bits(r) - 0x3f000000u));
  }
  // Normal: rebias the exponent and round to nearest even on bit 13.
  const uint32_t odd = (x >> 13) & 1u;
  x += (uint32_t(15 - 127) << 23) + 0xfffu + odd;
  return uint16_t(sign | (x >> 13));
}

namespace {

// Conversion in fixed blocks: the constant-trip inner loop is vectorised even
// at -O2 (GCC's cheap cost model), with no alias checks thanks to __restrict.
// Sources may be unaligned (safetensors offsets need not be even).
constexpr size_t kBlock = 16;

void f16_block_to_f32(const uint8_t* __restrict s, float* __restrict d, size_t n) {
  size_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    uint16_t h[kBlock];
    std::memcpy(h, s + 2 * i, sizeof h);
    for (size_t k = 0; k < kBlock; ++k) d[i + k] = half_to_float(h[k]);
  }
  for (; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, s + 2 * i, 2);
    d[i] = half_to_float(h);
  }
}

void bf16_block_to_f32(const uint8_t* __restrict s, float* __restrict d, size_t n) {
  size_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    uint16_t h[kBlock];
    uint32_t u[kBlock];
    std::memcpy(h, s + 2 * i, sizeof h);
    for (size_t k = 0; k < kBlock; ++k) u[k] = uint32_t(h[k]) << 16;
    std::memcpy(d + i, u, sizeof u);
  }
  for (; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, s + 2 * i, 2);
    const uint32_t bits = uint32_t(h) << 16;
    std::memcpy(d + i, &bits, 4);
  }
}

}  // namespace

void convert_to_f32(DType t, const void* src, float* dst, size_t n) {
  switch (t) {
    case DType::F32:
      if (n) std::memmove(dst, src, n * sizeof(float));
      return;
    case DType::F16: f16_block_to_f32(static_cast<const uint8_t*>(src), dst, n); return;
    case DType::BF16: bf16_block_to_f32(static_cast<const uint8_t*>(src), dst, n); return;
  }
}

}  // namespace md
