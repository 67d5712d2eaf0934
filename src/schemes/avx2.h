// What the hand-written AVX2 kernels (fp8_bf16_avx2.cc, int4_bf16_avx2.cc, nvfp4_bf16_avx2.cc,
// fp8_source_avx2*.cc, calib/imatrix_mse_int_avx2*.cc) share: bf16's rounding of f32 lanes.
// Each file keeps its own target attribute (they differ: FMA where a kernel wants it, none
// where the definition's products must not contract); these helpers need AVX2 only, a subset
// of every one of them, so they inline into all. Include from those kernel files only.
#ifndef QUENCH_SCHEMES_AVX2_H_
#define QUENCH_SCHEMES_AVX2_H_

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

namespace quench::avx2 {

// c10's round_to_nearest_even of non-NaN f32 bit patterns in 32-bit lanes (int_shared.h's
// RoundToDType for bf16): bits + 0x7FFF + the kept lowest bit, the bf16 result in the high
// halves; the low halves are left as the sum leaves them.
__attribute__((target("avx2"))) inline __m256i RoundBf16Hi(__m256i bits) {
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  return _mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb));
}

// The same as f32 values (low halves cleared): NaN stays NaN, +-Inf stays +-Inf.
__attribute__((target("avx2"))) inline __m256 RoundBf16(__m256 v) {
  return _mm256_castsi256_ps(_mm256_and_si256(RoundBf16Hi(_mm256_castps_si256(v)),
                                              _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

}  // namespace quench::avx2

#endif  // x86-64 with GCC or Clang
#endif  // QUENCH_SCHEMES_AVX2_H_
