// Scalar conversions between float32 and the 16-bit weight types, rounding
// to nearest even (the rounding every SIMD conversion of this library uses,
// so that scalar and vector paths agree bit for bit on converted values).
//
// Thread-safe; no allocation; O(1).
#ifndef SPARSE_MLP_PLATFORM_FLOAT16_H_
#define SPARSE_MLP_PLATFORM_FLOAT16_H_

#include <cstdint>
#include <cstring>

namespace sparse_mlp {

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline float BFloat16ToFloat(uint16_t b) { return BitsFloat(uint32_t{b} << 16); }

// NaN stays NaN (quiet); everything else rounds to nearest even.
inline uint16_t FloatToBFloat16(float f) {
  const uint32_t u = FloatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline float Float16ToFloat(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa x 2^-24, exact in float
    return BitsFloat(FloatBits(static_cast<float>(mantissa) * 5.9604644775390625e-8f) | sign);
  }
  if (exponent == 31) return BitsFloat(sign | 0x7f800000u | (mantissa << 13));
  return BitsFloat(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

// Overflow goes to infinity, as in vcvtps2ph with round-to-nearest-even.
inline uint16_t FloatToFloat16(float f) {
  uint32_t u = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u >= 0x47800000u) {  // >= 65536, inf or NaN
    return sign | (u > 0x7f800000u ? 0x7e00u : 0x7c00u);
  }
  if (u < 0x38800000u) {  // below the smallest normal half: round in float
    const float magic = 0.5f;  // adds 2^-1, so the half ulp 2^-24 is the float ulp
    const uint32_t r = FloatBits(BitsFloat(u) + magic) - FloatBits(magic);
    return static_cast<uint16_t>(sign | r);
  }
  const uint32_t odd = (u >> 13) & 1u;
  u += 0xc8000fffu + odd;  // rebias the exponent by -112 and round
  return static_cast<uint16_t>(sign | (u >> 13));
}

}  // namespace sparse_mlp

#endif  // SPARSE_MLP_PLATFORM_FLOAT16_H_
