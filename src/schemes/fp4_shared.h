// Scalar steps of the microscaling definitions (fp4.cc) shared by their references, their
// kernels and GPTQ's NVFP4 / MXFP4 sweep (calib/gptq_float.cc); compiled once, outside
// Highway's per-target namespaces.
#ifndef QUENCH_SCHEMES_FP4_SHARED_H_
#define QUENCH_SCHEMES_FP4_SHARED_H_

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "quench/dtype.h"
#include "schemes/float_formats.h"

namespace quench::fp4::internal {

// torch.finfo(float8_e4m3fn).max and the FP4 E2M1 maximum (calculate_range).
inline constexpr float kE4M3Max = 448.0f;
inline constexpr float kFp4Max = 6.0f;
// E4M3 code of 0.125 = eps of the fp8 scale dtype (_get_dtype_eps), the NVFP4 zero guard.
inline constexpr uint8_t kE4M3Eighth = 0x20;
// Exponent offsets floor(log2(type max)) of mxfp_utils._MX_ELEM_OFFSET.
inline constexpr int kMxFp4Offset = 2;
inline constexpr int kMxFp8Offset = 8;
// The stored E8M0 byte when the scale was guarded (1.0) or infinite; see MxScaleFor.
inline constexpr uint8_t kMxUnitExponent = 127;

inline bool IsSupported(DType d) {
  return d == DType::kBF16 || d == DType::kF16 || d == DType::kF32;
}

// Rounds an f32 value to the nearest value of dtype d, ties to even (RNE_D).
inline float RoundToDType(float f, DType d) {
  switch (d) {
    case DType::kBF16: return BF16ToF32(F32ToBF16(f));
    case DType::kF16: return F16ToF32(F32ToF16(f));
    default: return f;
  }
}

// Element i of a run of dtype d at p, as an exact f32.
inline float ElementAt(const uint8_t* p, size_t i, DType d) { return ElementToF32(p, d, i); }

// torch.finfo(D).tiny, the smallest normal: 2^-126 for bf16 and f32, 2^-14 for f16.
inline float Tiny(DType d) { return d == DType::kF16 ? 6.103515625e-05f : 1.17549435e-38f; }

// Max of |x| over n elements (min(mn, 0) / max(mx, 0) then the larger magnitude, as the
// observer and calculate_qparams do); false on NaN or Inf.
inline bool GroupAmax(const uint8_t* p, size_t n, DType d, float* amax) {
  float mn = 0.0f;
  float mx = 0.0f;
  for (size_t i = 0; i < n; ++i) {
    const float x = ElementAt(p, i, d);
    if (!std::isfinite(x)) return false;
    mn = std::min(mn, x);
    mx = std::max(mx, x);
  }
  *amax = std::max(std::fabs(mn), std::fabs(mx));  // fabs: -0 must not survive as amax
  return true;
}

// cast_to_fp4 followed by pack_fp4_to_uint8's index: v is clamped to [-6, 6]
// (round_to_quantized_type_args), its magnitude goes to the nearest E2M1 value with the
// table's tie rules (round half to even code), and the sign nibble bit is signbit of
// |r| * torch.sign(v): set iff v < 0 (torch.sign(-0.0) is +0, so -0 packs as 0x0).
inline uint8_t Fp4Nibble(float v) {
  v = std::min(std::max(v, -kFp4Max), kFp4Max);
  const float a = std::fabs(v);
  uint8_t idx;
  if (a <= 0.25f) {
    idx = 0;  // 0
  } else if (a < 0.75f) {
    idx = 1;  // 0.5
  } else if (a <= 1.25f) {
    idx = 2;  // 1
  } else if (a < 1.75f) {
    idx = 3;  // 1.5
  } else if (a <= 2.5f) {
    idx = 4;  // 2
  } else if (a < 3.5f) {
    idx = 5;  // 3
  } else if (a <= 5.0f) {
    idx = 6;  // 4
  } else {
    idx = 7;  // 6
  }
  return static_cast<uint8_t>(idx | (v < 0.0f ? 0x8 : 0x0));
}

// NVFP4 group scale code (calculate_qparams with a global scale and scale_dtype e4m3):
inline uint8_t Nvfp4ScaleCode(float amax, float gs, DType d) {
  // scale = max_val_pos / (bit_range.to(D) / 2): bit_range 12 -> divisor 6, in D.
  const float t = RoundToDType(amax / kFp4Max, d);
  // global_scale * scales: an f32 [1] tensor times D promotes to f32.
  float u = gs * t;
  // round_to_quantized_type_dtype: clamp to finfo(e4m3) then .to(float8_e4m3fn) (RNE).
  u = std::min(std::max(u, -kE4M3Max), kE4M3Max);
  const uint8_t code = F32ToE4M3(u);
  // Zero guard: a scale exactly 0 becomes the e4m3 eps 0.125.
  return E4M3ToF32(code) == 0.0f ? kE4M3Eighth : code;
}

// MX group scale: the stored E8M0 byte and the scale used for quantizing (a value of D, as
// f32; may be +inf).
struct MxScale {
  uint8_t stored;
  float scale;
};

inline MxScale MxScaleFor(float amax, DType d, int offset) {
  // round_to_power_2 on D's bit pattern: add 1 << (mantissa_D - FP4 mantissa (1) - 1),
  // keep sign and exponent (amax >= 0, so the sign bit is 0).
  uint32_t bits;
  int mant;
  if (d == DType::kBF16) {
    bits = F32ToBF16(amax);
    mant = 7;
  } else if (d == DType::kF16) {
    bits = F32ToF16(amax);
    mant = 10;
  } else {
    bits = F32ToBits(amax);
    mant = 23;
  }
  const int exp_bits = d == DType::kF16 ? 5 : 8;
  const uint32_t sign_exp_mask = ((1u << (exp_bits + 1)) - 1u) << mant;
  const uint32_t p_bits = (bits + (1u << (mant - 2))) & sign_exp_mask;
  const uint32_t p_exp = p_bits >> mant;  // biased exponent of p: 0 (p = 0) .. all ones (inf)
  // generate_mx_scales: 127 + floor(log2(p)) - offset, in D (exact), then
  // round_to_quantized_type_dtype(uint8): clamp to [0, 255], round. log2(0) = -inf -> 0,
  // log2(inf) = inf -> 255.
  int e;
  if (p_exp == 0) {
    e = 0;
  } else if (p_exp == (1u << exp_bits) - 1u) {
    e = 255;
  } else {
    const int bias = (1 << (exp_bits - 1)) - 1;
    e = std::clamp(127 + static_cast<int>(p_exp) - bias - offset, 0, 255);
  }
  // maybe_convert_from_mx_exp: 2.0 ** (e - 127) in f32 (ldexp(1, 128) = inf), then to D.
  float scale = RoundToDType(std::ldexp(1.0f, e - 127), d);
  // Zero guard: the eps of the uint8 scale dtype is 1.
  if (scale == 0.0f) scale = 1.0f;
  // compress_mx_scale: 127 + int32(floor(log2(scale))), then uint8 (keeps the low byte).
  // log2(inf) = inf converts to int32 as INT32_MIN (x86's "integer indefinite"), so an
  // infinite scale stores 127 (observed: torch 2.13 CPU).
  const uint32_t log2_int = std::isinf(scale) ? 0x80000000u
                                              : static_cast<uint32_t>(std::ilogb(scale));
  return {static_cast<uint8_t>(127u + log2_int), scale};
}

inline size_t CeilDiv(size_t a, size_t b) { return (a + b - 1) / b; }

}  // namespace quench::fp4::internal
#endif  // QUENCH_SCHEMES_FP4_SHARED_H_
