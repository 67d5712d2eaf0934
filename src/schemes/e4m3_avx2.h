// NVFP4 group scale codes on AVX2, shared by the bf16 kernel (nvfp4_bf16_avx2.cc) and the
// FP8-source one (fp8_source_avx2_nvfp4.cc), whose callers differ only in how they make t.
#ifndef QUENCH_SCHEMES_E4M3_AVX2_H_
#define QUENCH_SCHEMES_E4M3_AVX2_H_

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <cstdint>

#include "schemes/fp4_shared.h"  // kE4M3Max, kE4M3Eighth

namespace quench::fp4::avx2 {

// The last steps of Nvfp4ScaleCode (fp4_shared.h) on 8 f32 lanes, t = RNE_bf16(amax / 6) >=
// +0 and gs > 0: u = min(gs * t, 448) (u >= +0, so the lower clamp is idle), then F32ToE4M3
// (float_formats.cc) of u: below 2^-6 the FPU's RNE of u + 2^14 leaves the subnormal code in
// the low bits; from 2^-6 up the exponent is rebiased and the 20 dropped mantissa bits rounded
// to nearest even (u <= 448 never reaches the NaN code); a code of 0 becomes 0.125's (the zero
// guard). The codes are in the low byte of each 32-bit lane, the rest 0.
__attribute__((target("avx2"))) inline __m256i GuardedScaleCodes8(__m256 t, __m256 gs) {
  const __m256 u = _mm256_min_ps(_mm256_mul_ps(gs, t), _mm256_set1_ps(internal::kE4M3Max));
  const __m256i bits = _mm256_castps_si256(u);
  const __m256i sub = _mm256_sub_epi32(
      _mm256_castps_si256(_mm256_add_ps(u, _mm256_set1_ps(16384.0f))),  // 2^14
      _mm256_set1_epi32(141 << 23));
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 20), _mm256_set1_epi32(1));
  const __m256i normal = _mm256_srli_epi32(
      _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(static_cast<int>(
                                                  (uint32_t{7} - 127u) * (1u << 23) + 0x7FFFFu))),
                       odd),
      20);
  // u < 2^-6 (bits < 121 << 23, both non-negative as int32): the subnormal codes.
  __m256i code = _mm256_blendv_epi8(normal, sub,
                                    _mm256_cmpgt_epi32(_mm256_set1_epi32(121 << 23), bits));
  code = _mm256_and_si256(code, _mm256_set1_epi32(0xFF));
  return _mm256_blendv_epi8(code, _mm256_set1_epi32(internal::kE4M3Eighth),
                            _mm256_cmpeq_epi32(code, _mm256_setzero_si256()));
}

}  // namespace quench::fp4::avx2

#endif  // x86-64 with GCC or Clang
#endif  // QUENCH_SCHEMES_E4M3_AVX2_H_
