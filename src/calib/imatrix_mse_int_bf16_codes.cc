// The imatrix_mse chosen quantization of bf16 rows into packed symmetric int4 codes with
// AVX-512 BF16 (imatrix_mse_int_bf16.h): each group's min and max and its codes straight from
// the raw bf16 row, with no f32 copy. The codes are int4_bf16.cc's pass 2 (its header says
// why each step is the definition's) with one change: the imatrix scales are shrunk, so
// |x / s| is not bounded by 7.53 and the quotients are clamped to [-8, 7] on their bf16 bit
// patterns before the rounding (imatrix_mse_int_bf16.cc has the clamp's argument), after
// which the low byte of 1.5 * 2^23 + 8 + round(v) is the code plus 8, in [0, 15].

// No contraction into FMAs: the definition rounds every product.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <bit>
#include <cstdint>

#include "calib/imatrix_mse_int_bf16.h"
#include "schemes/avx512bf16.h"  // QUENCH_AVX512BF16, Available

namespace quench::calib::internal {

bool IntBf16CodesHandle(size_t group, size_t n) {
  return IntBf16Enabled() && avx512bf16::Available() && group % 64 == 0 && n % group == 0;
}

#ifdef QUENCH_AVX512BF16_X86
namespace {

// The min and max of n bf16 elements at p (n a multiple of 32) as f32 values; false for an
// Inf or NaN. Bit patterns become signed keys that order like the values (the magnitude bits
// flipped under a set sign bit: int4_bf16.cc's GroupMinMax, without its fold with 0).
QUENCH_AVX512BF16 inline bool MinMax(const uint8_t* p, size_t n, float* mn, float* mx) {
  const __m512i mag = _mm512_set1_epi16(0x7FFF);
  auto key = [&](__m512i x) {
    return _mm512_xor_si512(x, _mm512_and_si512(_mm512_srai_epi16(x, 15), mag));
  };
  __m512i lo = key(_mm512_loadu_si512(p)), hi = lo;
  for (size_t i = 64; i < 2 * n; i += 64) {
    const __m512i k = key(_mm512_loadu_si512(p + i));
    lo = _mm512_min_epi16(lo, k);
    hi = _mm512_max_epi16(hi, k);
  }
  // Signed 16-bit lanes to 32-bit: the low halves by a shift pair, the high by one shift.
  const int32_t kmin = _mm512_reduce_min_epi32(_mm512_min_epi32(
      _mm512_srai_epi32(_mm512_slli_epi32(lo, 16), 16), _mm512_srai_epi32(lo, 16)));
  const int32_t kmax = _mm512_reduce_max_epi32(_mm512_max_epi32(
      _mm512_srai_epi32(_mm512_slli_epi32(hi, 16), 16), _mm512_srai_epi32(hi, 16)));
  if (kmax >= 0x7F80 || kmin <= -1 - 0x7F80) return false;  // beyond +-Inf's keys
  auto value = [](int32_t k) {
    const uint32_t bits =
        k >= 0 ? static_cast<uint32_t>(k) : 0x8000u | static_cast<uint32_t>(-1 - k);
    return std::bit_cast<float>(bits << 16);
  };
  *mn = value(kmin);
  *mx = value(kmax);
  return true;
}

// int4_bf16.cc's PairIndex: output byte k < 16 is pair k of the first 32 elements, k in
// [16, 32) pair k - 16 of the next 32, from the lanes the two VDPBF16PS results hold them in.
QUENCH_AVX512BF16 inline __m512i PairIndex() {
  static constexpr uint8_t kLane[16] = {0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15};
  alignas(64) uint8_t idx[64] = {};
  for (int k = 0; k < 16; ++k) {
    idx[k] = static_cast<uint8_t>(4 * kLane[k]);
    idx[16 + k] = static_cast<uint8_t>(64 + 4 * kLane[k]);
  }
  return _mm512_load_si512(idx);
}

// One group's n elements (a multiple of 64) at src into n / 2 packed bytes at dst: per 32
// elements, widened to f32 by interleaving zero words, times r (kRecip) or divided by s,
// rounded to bf16 by one VCVTNE2PS2BF16, clamped on the patterns, rounded to integers plus
// 8 by two VDPBF16PS; VPERMT2B gathers each half's even and odd codes, a shift and an or
// pack them (the even element in the low nibble, pack_to_int32's order).
template <bool kRecip>
QUENCH_AVX512BF16 inline void Group(const uint8_t* src, size_t n, __m512 by, __m512i idx,
                                    uint8_t* dst) {
  const __m512i zero = _mm512_setzero_si512();
  const __m512 magic = _mm512_set1_ps(12582920.0f);  // 1.5 * 2^23 + 8
  const __m512bh pick_even = (__m512bh)_mm512_set1_epi32(0x00003F80);
  const __m512bh pick_odd = (__m512bh)_mm512_set1_epi32(0x3F800000);
  const __m512i lo16 = _mm512_set1_epi16(static_cast<short>(0xC100));  // -8.0
  const __m512i hi16 = _mm512_set1_epi16(0x40E0);                      // 7.0
  for (size_t i = 0; i < n; i += 64) {
    __m512i even[2], odd[2];
    for (int h = 0; h < 2; ++h) {
      const __m512i x = _mm512_loadu_si512(src + 2 * i + 64 * h);
      const __m512 lo = _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, x));
      const __m512 hi = _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, x));
      const __m512 yp = kRecip ? _mm512_mul_ps(lo, by) : _mm512_div_ps(lo, by);
      const __m512 yq = kRecip ? _mm512_mul_ps(hi, by) : _mm512_div_ps(hi, by);
      __m512i v = (__m512i)_mm512_cvtne2ps_pbh(yq, yp);
      v = _mm512_min_epi16(_mm512_min_epu16(v, lo16), hi16);
      even[h] = _mm512_castps_si512(_mm512_dpbf16_ps(magic, (__m512bh)v, pick_even));
      odd[h] = _mm512_castps_si512(_mm512_dpbf16_ps(magic, (__m512bh)v, pick_odd));
    }
    const __m256i e = _mm512_castsi512_si256(_mm512_permutex2var_epi8(even[0], idx, even[1]));
    const __m256i o = _mm512_castsi512_si256(_mm512_permutex2var_epi8(odd[0], idx, odd[1]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i / 2),
                        _mm256_or_si256(e, _mm256_slli_epi16(o, 4)));
  }
}

QUENCH_AVX512BF16 bool MinMaxImpl(const uint8_t* row, size_t n_groups, size_t group, float* mn,
                                  float* mx) {
  for (size_t g = 0; g < n_groups; ++g) {
    if (!MinMax(row + 2 * g * group, group, &mn[g], &mx[g])) return false;
  }
  return true;
}

QUENCH_AVX512BF16 void CodesImpl(const uint8_t* row, size_t n, size_t group,
                                 const intq::internal::GroupParams* p, uint8_t* dst) {
  const __m512i idx = PairIndex();
  for (size_t g = 0; g * group < n; ++g) {
    const float s = p[g].scale;
    const uint8_t* src = row + 2 * g * group;
    uint8_t* out = dst + g * group / 2;
    // RNE_bf16(x * f32(1 / s)) == RNE_bf16(x / s) for bf16 x and s in [2^-100, 2^100]
    // (imatrix_mse-inl.h QuotientBf16; the chosen scales are bf16 values).
    if (s >= 0x1p-100f && s <= 0x1p100f) {
      Group<true>(src, group, _mm512_set1_ps(1.0f / s), idx, out);
    } else {
      Group<false>(src, group, _mm512_set1_ps(s), idx, out);
    }
  }
}

}  // namespace
#endif  // QUENCH_AVX512BF16_X86

bool IntBf16RowMinMax(const uint8_t* row, size_t n_groups, size_t group, float* mn,
                      float* mx) {
#ifdef QUENCH_AVX512BF16_X86
  return MinMaxImpl(row, n_groups, group, mn, mx);
#else
  (void)row, (void)n_groups, (void)group, (void)mn, (void)mx;
  return false;
#endif
}

void IntBf16Codes4(const uint8_t* row, size_t n, size_t group,
                   const intq::internal::GroupParams* p, uint8_t* dst) {
#ifdef QUENCH_AVX512BF16_X86
  CodesImpl(row, n, group, p, dst);
#else
  (void)row, (void)n, (void)group, (void)p, (void)dst;
#endif
}

}  // namespace quench::calib::internal
