// Scalar bf16 / fp16 / float8_e4m3fn conversions, written from the format definitions and
// matching torch 2.13's c10 conversions bit for bit (checked against torch itself).
#include "schemes/float_formats.h"

#include <array>
#include <cstring>

namespace quench {

namespace {

constexpr uint32_t kF32SignMask = 0x80000000u;
constexpr uint32_t kF32AbsMask = 0x7FFFFFFFu;
constexpr uint32_t kF32InfBits = 0x7F800000u;  // exponent all ones, mantissa 0

}  // namespace

// IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits; subnormals m * 2^-24.
float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t mant = h & 0x3FFu;
  if (exp == 0x1F) {  // Inf (mant == 0) or NaN; keep the payload in the top mantissa bits.
    return BitsToF32(sign | kF32InfBits | (mant << 13));
  }
  if (exp == 0) {  // zero or subnormal: m * 2^-24, exact in f32.
    const float mag = static_cast<float>(mant) * BitsToF32((127u - 24u) << 23);
    return sign ? -mag : mag;
  }
  // Normal: rebias the exponent 15 -> 127, widen the mantissa 10 -> 23 bits.
  return BitsToF32(sign | ((exp + 127u - 15u) << 23) | (mant << 13));
}

// Round to nearest, ties to even; overflow (|f| >= 65520, the midpoint of 65504 and 2^16)
// gives Inf; NaN gives the quiet NaN 0x7E00 with f's sign (c10::detail::fp16_ieee_from_fp32).
uint16_t F32ToF16(float f) {
  const uint32_t bits = F32ToBits(f);
  const uint16_t sign = static_cast<uint16_t>((bits & kF32SignMask) >> 16);
  const uint32_t abs = bits & kF32AbsMask;
  if (abs > kF32InfBits) return sign | 0x7E00u;
  const int32_t exp = static_cast<int32_t>(abs >> 23) - 127;  // unbiased f32 exponent
  if (exp >= 16) return sign | 0x7C00u;                        // >= 2^16 (and Inf): Inf
  if (exp >= -14) {
    // Normal f16 range [2^-14, 2^16): keep 10 of the 23 mantissa bits, RNE on the 13
    // dropped bits. A carry out of the mantissa bumps the exponent; from 65504 it reaches
    // 0x7C00 = Inf, which is RNE's overflow.
    const uint32_t lsb = (abs >> 13) & 1u;
    const uint32_t rounded = (abs + 0xFFFu + lsb) >> 13;  // f32 exponent/mantissa >> 13
    return sign | static_cast<uint16_t>(rounded - ((127u - 15u) << 10));
  }
  // Below 2^-14: the result is a subnormal multiple of 2^-24 (or 0 / the min normal after
  // rounding up). Shift the full significand (implicit 1 included) so that bit 0 has weight
  // 2^-24, rounding the bits shifted out to nearest even.
  if (exp < -25) return sign;  // < 2^-25 = half the smallest subnormal: rounds to 0
  const uint32_t significand = (abs & 0x7FFFFFu) | 0x800000u;  // value = sig * 2^(exp-23)
  const uint32_t shift = static_cast<uint32_t>(-1 - exp);      // (exp-23) - (-24) < 0
  // shift is in [14, 24]; sig * 2^(exp-23) / 2^-24 = sig >> shift.
  const uint32_t kept = significand >> shift;
  const uint32_t rest = significand & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  const bool round_up = rest > half || (rest == half && (kept & 1u));
  return sign | static_cast<uint16_t>(kept + (round_up ? 1u : 0u));
}

// float8_e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no Inf; S.1111.111 is NaN;
// subnormals (exponent 0) are m * 2^-9; max finite 0x7E = 1.75 * 2^8 = 448.
float E4M3ToF32(uint8_t code) {
  const bool negative = (code & 0x80u) != 0;
  const uint32_t exp = (code >> 3) & 0xFu;
  const uint32_t mant = code & 0x7u;
  float mag;
  if (exp == 0xF && mant == 0x7) {
    return BitsToF32((negative ? kF32SignMask : 0u) | 0x7FC00000u);
  } else if (exp == 0) {
    mag = static_cast<float>(mant) * BitsToF32((127u - 9u) << 23);  // m * 2^-9
  } else {
    mag = BitsToF32(((exp + 127u - 7u) << 23) | (mant << 20));  // 1.m * 2^(e-7)
  }
  return negative ? -mag : mag;
}

const float* E4M3Values() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) t[static_cast<size_t>(c)] = E4M3ToF32(static_cast<uint8_t>(c));
    return t;
  }();
  return table.data();
}

// c10::detail::fp8e4m3fn_from_fp32_value as shipped in torch 2.13.0
// (torch/headeronly/util/Float8_e4m3fn.h). Note: this release SATURATES: finite values
// >= 480 and +-Inf give +-448 (0x7E), and values in (464, 480) that round up onto the NaN
// code also give 448. Only NaN gives NaN (0x7F | sign). Earlier c10 releases returned NaN
// for |f| >= 480.
uint8_t F32ToE4M3(float f) {
  constexpr uint32_t kFp8Max = 1087u << 20;        // 480.0f, first value past 0x7E
  constexpr uint32_t kDenormMask = 141u << 23;     // 2^14: (127-7) + (23-3) + 1
  constexpr uint32_t kMinNormal = 121u << 23;      // 2^-6, smallest e4m3 normal
  uint32_t f_bits = F32ToBits(f);
  const uint32_t sign = f_bits & kF32SignMask;
  f_bits ^= sign;
  uint8_t result;
  if (f_bits >= kFp8Max) {
    // NaN stays NaN; finite overflow and Inf saturate to the max finite value.
    result = f_bits > kF32InfBits ? 0x7F : 0x7E;
  } else if (f_bits < kMinNormal) {
    // Subnormal range: adding 2^14 leaves an f32 whose ulp is 2^-9 (the e4m3 subnormal
    // step), so the FPU's round-to-nearest-even places the code in the low mantissa bits.
    f_bits = F32ToBits(BitsToF32(f_bits) + BitsToF32(kDenormMask));
    result = static_cast<uint8_t>(f_bits - kDenormMask);
  } else {
    // Normal range: rebias the exponent (127 -> 7) and round the 20 dropped mantissa bits
    // to nearest even (bias 0x7FFFF plus the lowest kept bit), then take bits 20..27.
    const uint32_t mant_odd = (f_bits >> 20) & 1u;
    f_bits += (static_cast<uint32_t>(7 - 127) << 23) + 0x7FFFFu;
    f_bits += mant_odd;
    result = static_cast<uint8_t>(f_bits >> 20);
    if (result == 0x7F) result = 0x7E;  // a carry onto the NaN code saturates to 448
  }
  return result | static_cast<uint8_t>(sign >> 24);
}

float ElementToF32(const uint8_t* p, DType d, size_t i) {
  if (d == DType::kF32) {
    uint32_t bits;
    std::memcpy(&bits, p + 4 * i, 4);
    return BitsToF32(bits);
  }
  uint16_t bits;
  std::memcpy(&bits, p + 2 * i, 2);
  return d == DType::kBF16 ? BF16ToF32(bits) : F16ToF32(bits);
}

}  // namespace quench
