// Scalar definitions of the narrow float formats the schemes produce or round through:
// bf16, fp16 and E4M3 (float8_e4m3fn), each with round-to-nearest-even exactly as torch's
// c10 conversions do. These are the reference the Highway kernels are tested against.
#ifndef QUENCH_SCHEMES_FLOAT_FORMATS_H_
#define QUENCH_SCHEMES_FLOAT_FORMATS_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "quench/dtype.h"

namespace quench {

// Inline: the kernels call these once per row or tile, where rows can be short (128 columns
// in MoE experts), so a call each would be a visible share of the row's work.
inline float BitsToF32(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint32_t F32ToBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

// bf16 <-> f32. F32ToBF16 rounds to nearest even; NaN becomes 0x7FC0 (c10::BFloat16).
// bf16 is the upper half of an f32: 1 sign, 8 exponent, 7 mantissa bits.
inline float BF16ToF32(uint16_t h) { return BitsToF32(static_cast<uint32_t>(h) << 16); }

// c10::detail::round_to_nearest_even: NaN -> 0x7FC0; otherwise drop the low 16 bits with
// round-half-to-even by adding 0x7FFF plus the lowest kept bit. Carries propagate into the
// exponent, which is exactly RNE's step into the next binade (and to Inf on overflow); f32
// subnormals round the same way because bf16 subnormals are their upper halves.
inline uint16_t F32ToBF16(float f) {
  const uint32_t bits = F32ToBits(f);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  const uint32_t lsb = (bits >> 16) & 1u;
  return static_cast<uint16_t>((bits + 0x7FFFu + lsb) >> 16);
}

// IEEE binary16 <-> f32, round to nearest even, overflow to Inf (c10::Half).
float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);

// float8_e4m3fn: no infinities, 0x7F/0xFF are NaN, max 448. Encoding follows torch 2.13's
// c10 conversion: RNE; finite values beyond the largest code and +-Inf saturate to +-448
// (0x7E|sign); only NaN gives 0x7F|sign.
float E4M3ToF32(uint8_t code);
uint8_t F32ToE4M3(float f);
// E4M3ToF32 of every code, indexed by the code (256 values, made once): for decoders that
// take a code per element.
const float* E4M3Values();

// Element i of a run of weight dtype d (BF16, F16 or F32) at p, as an exact f32; p may be
// unaligned (a memory-mapped file), so the bits are copied out.
float ElementToF32(const uint8_t* p, DType d, size_t i);

}  // namespace quench

#endif  // QUENCH_SCHEMES_FLOAT_FORMATS_H_
