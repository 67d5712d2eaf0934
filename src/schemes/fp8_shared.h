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

}  // namespace quench::fp8::internal
#endif  // QUENCH_SCHEMES_FP8_SHARED_H_
