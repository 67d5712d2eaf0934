// AutoAWQ group tables (awq_table.h): the definition, and the same 16 entries in one AVX-512
// vector: lanes q - z as f32, times the scale (exact), VCVTPS2PH with round to nearest even
// (IEEE binary16: subnormal results kept, overflow to Inf; no input is an f32 subnormal, a
// product being 0 or at least 2^-24), back to f32 (exact), then RNE to BF16 on the bits (no
// NaN: a finite scale times a finite code), low and high bytes apart.
#include "schemes/awq_table.h"

#include <cmath>

#include "schemes/avx512bf16.h"  // QUENCH_AVX512BF16, Available
#include "schemes/float_formats.h"

namespace quench {

bool AwqGroupTableScalar(uint16_t scale, int zero, uint8_t* table) {
  const float s = F16ToF32(scale);
  bool finite = true;
  for (int q = 0; q < 16; ++q) {
    const float v = F16ToF32(F32ToF16(static_cast<float>(q - zero) * s));
    if (!std::isfinite(v)) finite = false;
    const uint16_t h = F32ToBF16(v);
    table[q] = static_cast<uint8_t>(h);
    table[16 + q] = static_cast<uint8_t>(h >> 8);
  }
  return finite;
}

#ifdef QUENCH_AVX512BF16_X86
// GCC 12's AVX-512 headers trip -Wuninitialized on their own _mm512_undefined_*() where, as
// here, every input is known (avx512bf16.h silences the "maybe" form for every kernel).
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
namespace {

QUENCH_AVX512BF16 bool TableAvx512(uint16_t scale, int zero, uint8_t* table) {
  const __m512i q = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512 a = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, _mm512_set1_epi32(zero)));
  const __m512 s = _mm512_cvtph_ps(_mm256_set1_epi16(static_cast<short>(scale)));
  const __m256i h16 =
      _mm512_cvtps_ph(_mm512_mul_ps(a, s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512i u = _mm512_castps_si512(_mm512_cvtph_ps(h16));
  // RNE to BF16: add 0x7FFF plus the lowest kept bit, keep the high half.
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i b = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(table), _mm512_cvtepi32_epi8(b));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(table + 16),
                   _mm512_cvtepi32_epi8(_mm512_srli_epi32(b, 8)));
  // Inf (a finite scale gives no NaN): exponent bits all set in the f16 results.
  const __mmask16 inf = _mm512_cmpeq_epi32_mask(
      _mm512_and_si512(u, _mm512_set1_epi32(0x7F800000)), _mm512_set1_epi32(0x7F800000));
  return inf == 0;
}

}  // namespace
#endif  // QUENCH_AVX512BF16_X86

bool AwqGroupTable(uint16_t scale, int zero, uint8_t* table) {
#ifdef QUENCH_AVX512BF16_X86
  // A NaN or Inf scale (refused when reading, ReadAwq) goes through the definition.
  if (avx512bf16::Available() && (scale & 0x7C00u) != 0x7C00u) {
    return TableAvx512(scale, zero, table);
  }
#endif
  return AwqGroupTableScalar(scale, zero, table);
}

}  // namespace quench
