// Scalar steps of the FP8 definition (fp8.cc) shared by its reference, its kernels and GPTQ's
// FP8 sweep (calib/gptq_float.cc); compiled once, outside Highway's per-target namespaces.
#ifndef QUENCH_SCHEMES_FP8_SHARED_H_
#define QUENCH_SCHEMES_FP8_SHARED_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "quench/dtype.h"
#include "schemes/float_formats.h"

namespace quench::fp8::internal {

// float8_e4m3fn's largest finite value (torch.finfo(float8_e4m3fn).max); the symmetric range
// is [-448, 448], so bit_range / 2 = 896 / 2 = 448 (calculate_range / calculate_qparams).
inline constexpr float kE4M3Max = 448.0f;

// Rounds an f32 value to the nearest value of dtype d, ties to even (RNE_D in the spec).
inline float RoundToDType(float f, DType d) {
  switch (d) {
    case DType::kBF16: return BF16ToF32(F32ToBF16(f));
    case DType::kF16: return F16ToF32(F32ToF16(f));
    default: return f;
  }
}

// torch.finfo(D).eps: the zero-scale replacement of calculate_qparams (CT >= 0.13).
inline float ScaleEps(DType d) {
  switch (d) {
    case DType::kBF16: return 0.0078125f;        // 2^-7
    case DType::kF16: return 0.0009765625f;      // 2^-10
    default: return 1.1920928955078125e-07f;     // 2^-23
  }
}

// scale = RNE_D(amax / 448) with the division in f32; an exact 0 becomes eps(D).
inline float ScaleFromAmax(float amax, DType d) {
  const float scale = RoundToDType(amax / kE4M3Max, d);
  return scale == 0.0f ? ScaleEps(d) : scale;
}

// Writes `scale` (already a value of D) in D's little-endian encoding.
inline void StoreScale(uint8_t* dst, float scale, DType d) {
  if (d == DType::kF32) {
    const uint32_t bits = F32ToBits(scale);
    std::memcpy(dst, &bits, 4);
  } else {
    const uint16_t bits = d == DType::kBF16 ? F32ToBF16(scale) : F32ToF16(scale);
    std::memcpy(dst, &bits, 2);
  }
}

inline size_t CeilDiv(size_t a, size_t b) { return (a + b - 1) / b; }

// True when, for this scale, RNE_bf16(RN_f32(x * RN_f32(1 / scale))) equals
// RNE_bf16(RN_f32(x / scale)) for every bf16 x, so a kernel may multiply by the reciprocal
// (one multiply) instead of dividing (an f32 division is several times slower). The proof,
// for a scale that is a normal bf16 value with a normal reciprocal:
//  - x = a * 2^p and scale = b * 2^q with integers 1 <= a, b <= 255 (8-bit significands,
//    subnormal x included). A bf16 rounding boundary (midpoint) of Q = x / scale in
//    [2^e, 2^(e+1)) is M = c * 2^(e-8) with c odd, 2^8 < c < 2^9, and
//    Q - M = 2^(e-8) * (a * 2^n - c * b) / b with the integer n = p - q - e + 8 >= 1
//    (Q = (a / b) * 2^(p-q) with a / b >= 1/255 gives p - q > e - 8). So Q is either
//    exactly M or at least 2^(e-8) / 255 away from it: relatively, more than 2^-17. Exactly
//    M would need a * 2^n = c * b, so a's odd part would be c times b's, above 255.
//  - Both RN_f32(x / scale) and RN_f32(x * RN_f32(1 / scale)) are within a relative 2^-23
//    of Q (one and two roundings of 2^-24), far inside that distance, so they lie between
//    the same two midpoints and round to the same bf16 value, as long as they are normal.
//  - When they are not (|Q| < 2^-126), both round to bf16 values below 2^-126, far below
//    half of e4m3's smallest subnormal (2^-10): the code is 0 with x's sign either way.
//  - |Q| <= 449 for a row's own scale; a larger Q (a per-tensor scale) saturates e4m3 the
//    same way on both sides, since bf16 rounding above 448 is covered by the same argument.
// For f16 (11-bit significands) and f32 the distance bound is no larger than the rounding
// error, so those keep the division. tests/test_fp8.cc checks every bf16 x against every
// bf16 scale significand at several exponents, and the subnormal-scale fallback.
inline bool ReciprocalIsExact(float scale, DType d) {
  if (d != DType::kBF16) return false;
  const uint32_t bits = F32ToBits(scale);
  // A bf16 value (low half zero), positive, in [2^-126, 2^126): normal, reciprocal normal.
  return (bits & 0xFFFFu) == 0 && bits >= 0x00800000u && bits < 0x7E800000u;
}

}  // namespace quench::fp8::internal
#endif  // QUENCH_SCHEMES_FP8_SHARED_H_
