// The chosen quantization's row helpers for bf16 rows on AVX2 (imatrix_mse_int_avx2.h):
// packed symmetric int4 codes and each group's min and max, read from the raw bf16 row (no
// f32 copy), as imatrix_mse_int_bf16_codes.cc does with AVX-512 BF16.
#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>

#include "calib/imatrix_mse_int_avx2.h"
#include "calib/imatrix_mse_int_bf16.h"
#include "calib/imatrix_mse_kernel.h"
#include "schemes/avx2.h"
#include "schemes/int_shared.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QUENCH_IMX_AVX2_X86 1
#include <immintrin.h>
#define QUENCH_IMX_AVX2 __attribute__((target("avx2,bmi,bmi2")))
#endif

namespace quench::calib::internal {

namespace {
// IntAvx2ChosenScales' definition for groups k0..n-1: StepRange of (-amax, amax) at the
// group's step, ComputeParams' symmetric scale (0 -> eps), its bf16 pattern at dst + 2 k.
void ScalesScalar(const float* amax, const uint8_t* steps, size_t k0, size_t n, int grid,
                  double expand, const intq::internal::Layout& l,
                  intq::internal::GroupParams* p, uint8_t* dst) {
  for (size_t k = k0; k < n; ++k) {
    float mn, mx;
    StepRange(-amax[k], amax[k], steps[k], grid, expand, DType::kBF16, &mn, &mx);
    p[k] = intq::internal::ComputeParams(mn, mx, l, true, DType::kBF16);
    intq::internal::StoreScale(dst + 2 * k, p[k].scale, DType::kBF16);
  }
}
}  // namespace

#ifdef QUENCH_IMX_AVX2_X86
namespace {
// The chosen quantization's rows (IntAvx2RowAbsMax, IntAvx2ChosenScales, IntAvx2Codes4): each
// group's largest magnitude from the raw row, its scale, and its codes with the search's
// operations on signed quotients (imatrix_mse_int_avx2.cc says why each is the definition's):
// c = clamp(t, -8, 7) before the bf16 rounding; RNE_bf16(c) by rounding the magnitude's bits
// half up where t is x * f32(1 / s), never a midpoint, and by (c + C) - C with C of c's sign
// and exponent where t is x / s for scales outside [2^-100, 2^100] (the rounding is odd, so
// that argument holds for c < 0); then the code q by VCVTPS2DQ (round half to even in
// MXCSR's default mode, the definition's rounding of RNE_bf16(c) to an integer).

// The codes q (in [-8, 7]) of 8 f32 values x at scale s: times r = f32(1 / s) (kRecip) or
// divided by s.
template <bool kRecip>
QUENCH_IMX_AVX2 inline __m256i Codes8(__m256 x, __m256 by) {
  const __m256 t = kRecip ? _mm256_mul_ps(x, by) : _mm256_div_ps(x, by);
  const __m256 c = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-8.0f)), _mm256_set1_ps(7.0f));
  __m256 v;
  if constexpr (kRecip) {
    // No quotient x * r is a bf16 midpoint (QuotientBf16's proof), nor are the bounds, so
    // rounding the magnitude half up (sign-magnitude bits + 0x8000, low half cleared) is
    // RNE_bf16 (imatrix_mse_int_avx2.cc's term does the same).
    v = _mm256_castsi256_ps(_mm256_and_si256(
        _mm256_add_epi32(_mm256_castps_si256(c), _mm256_set1_epi32(0x8000)),
        _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
  } else {
    const __m256 big = _mm256_castsi256_ps(
        _mm256_add_epi32(_mm256_and_si256(_mm256_castps_si256(c),
                                          _mm256_set1_epi32(static_cast<int>(0xFF800000u))),
                         _mm256_set1_epi32(0x08400000)));
    v = _mm256_sub_ps(_mm256_add_ps(c, big), big);
  }
  return _mm256_cvtps_epi32(v);
}

// One group's n elements (a multiple of 64) at src into n / 2 packed bytes at dst: per 16
// elements, the even ones shifted into f32's high half and the odd ones masked, their codes
// joined per 32-bit lane into the byte of the pair (the even element's u = q + 8 in the low
// nibble, pack_to_int32's order); four such vectors packed to 32 bytes and put in order.
template <bool kRecip>
QUENCH_IMX_AVX2 inline void Group(const uint8_t* src, size_t n, __m256 by, uint8_t* dst) {
  const __m256i nib = _mm256_set1_epi32(15);
  const __m256i hi_half = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (size_t i = 0; i < n; i += 64) {
    __m256i w[4];
    for (int h = 0; h < 4; ++h) {
      const __m256i x =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * i + 32 * h));
      const __m256i e = Codes8<kRecip>(_mm256_castsi256_ps(_mm256_slli_epi32(x, 16)), by);
      const __m256i o = Codes8<kRecip>(_mm256_castsi256_ps(_mm256_and_si256(x, hi_half)), by);
      // 16 o + (e mod 16), in [-128, 127]: a signed byte whose nibbles are o mod 16 and e mod
      // 16 (packed below with signed saturation, which leaves it unchanged).
      w[h] = _mm256_or_si256(_mm256_and_si256(e, nib), _mm256_slli_epi32(o, 4));
    }
    // Each nibble holds q mod 16: u = q + 8's is that with its top bit flipped.
    const __m256i b = _mm256_xor_si256(_mm256_packs_epi16(_mm256_packs_epi32(w[0], w[1]),
                                                          _mm256_packs_epi32(w[2], w[3])),
                                       _mm256_set1_epi8(static_cast<char>(0x88)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i / 2),
                        _mm256_permutevar8x32_epi32(b, order));
  }
}

// The largest magnitude's bf16 pattern of n bf16 elements at p (n a multiple of 16): the
// patterns with the sign cleared order like the magnitudes as unsigned 16-bit integers; the
// lanes' maximum by PHMINPOSUW on the complements.
QUENCH_IMX_AVX2 inline uint32_t AbsMaxBits(const uint8_t* p, size_t n) {
  const __m256i mag = _mm256_set1_epi16(0x7FFF);
  __m256i m = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), mag);
  for (size_t i = 32; i < 2 * n; i += 32) {
    m = _mm256_max_epu16(
        m, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)), mag));
  }
  const __m128i h = _mm_max_epu16(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
  return 0xFFFFu ^ static_cast<uint32_t>(_mm_extract_epi16(
                       _mm_minpos_epu16(_mm_xor_si128(h, _mm_set1_epi16(-1))), 0));
}

QUENCH_IMX_AVX2 bool AbsMaxImpl(const uint8_t* row, size_t n_groups, size_t group,
                                float* amax) {
  uint32_t top = 0;
  for (size_t g = 0; g < n_groups; ++g) {
    const uint32_t bits = AbsMaxBits(row + 2 * g * group, group);
    top = std::max(top, bits);
    amax[g] = std::bit_cast<float>(bits << 16);
  }
  return top < 0x7F80u;  // no magnitude at or beyond Inf's pattern (Inf, NaN)
}

QUENCH_IMX_AVX2 void CodesImpl(const uint8_t* row, size_t n, size_t group,
                               const intq::internal::GroupParams* p, uint8_t* dst) {
  for (size_t g = 0; g * group < n; ++g) {
    const float s = p[g].scale;
    const uint8_t* src = row + 2 * g * group;
    uint8_t* out = dst + g * group / 2;
    // RNE_bf16(x * f32(1 / s)) == RNE_bf16(x / s) for bf16 x and s in [2^-100, 2^100]
    // (imatrix_mse-inl.h QuotientBf16; the chosen scales are bf16 values).
    if (s >= 0x1p-100f && s <= 0x1p100f) {
      Group<true>(src, group, _mm256_set1_ps(1.0f / s), out);
    } else {
      Group<false>(src, group, _mm256_set1_ps(s), out);
    }
  }
}

// Eight groups' chosen scales per vector (IntAvx2ChosenScales), the operations of StepRange
// and ComputeParams lane by lane on (-amax, amax), which give max(-mn, mx) = RNE_bf16(p *
// Expanded(amax)): p = f32(1 - i / grid) by a gather from the steps' table, Expanded
// (RNE_bf16(v * f32(expand)), no change at expand 1 for bf16 values), RNE_bf16(p * v), its
// quotient by bit_range / 2 rounded to bf16, 0 -> eps; the groups past the last multiple of 8
// by the scalar code itself.
QUENCH_IMX_AVX2 void ScalesImpl(const float* amax, const uint8_t* steps, size_t n, int grid,
                                double expand, const intq::internal::Layout& l,
                                intq::internal::GroupParams* p, uint8_t* dst) {
  alignas(32) float table[32];
  for (int i = 0; i < 32; ++i) table[i] = StepFactor(i, grid);
  const __m256 e = _mm256_set1_ps(static_cast<float>(expand));
  const __m256 half_range = _mm256_set1_ps(static_cast<float>(l.qmax - l.qmin) / 2.0f);
  const __m256 zero = _mm256_setzero_ps();
  const __m256 eps = _mm256_set1_ps(intq::internal::ScaleEps(DType::kBF16));
  size_t k = 0;
  for (; k + 8 <= n; k += 8) {
    const __m256i idx = _mm256_cvtepu8_epi32(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(steps + k)));
    const __m256 pv =
        _mm256_i32gather_ps(table, _mm256_and_si256(idx, _mm256_set1_epi32(31)), 4);
    const __m256 a = avx2::RoundBf16(_mm256_mul_ps(_mm256_loadu_ps(amax + k), e));
    const __m256 pos = avx2::RoundBf16(_mm256_mul_ps(pv, a));
    __m256 s = avx2::RoundBf16(_mm256_div_ps(pos, half_range));
    s = _mm256_blendv_ps(s, eps, _mm256_cmp_ps(s, zero, _CMP_EQ_OQ));
    alignas(32) float sv[8];
    _mm256_store_ps(sv, s);
    for (size_t j = 0; j < 8; ++j) {
      p[k + j] = {sv[j], 0};
      intq::internal::StoreScale(dst + 2 * (k + j), sv[j], DType::kBF16);
    }
  }
  ScalesScalar(amax, steps, k, n, grid, expand, l, p, dst);
}

}  // namespace
#endif  // QUENCH_IMX_AVX2_X86

void IntAvx2ChosenScales(const float* amax, const uint8_t* steps, size_t n, int grid,
                         double expand, const intq::internal::Layout& l,
                         intq::internal::GroupParams* p, uint8_t* dst) {
#ifdef QUENCH_IMX_AVX2_X86
  ScalesImpl(amax, steps, n, grid, expand, l, p, dst);
#else
  ScalesScalar(amax, steps, 0, n, grid, expand, l, p, dst);
#endif
}

bool IntAvx2CodesHandle(size_t group, size_t n) {
  return IntAvx2Enabled() && IntAvx2Available() && !IntBf16CodesHandle(group, n) &&
         group % 64 == 0 && n % group == 0;
}

bool IntAvx2RowAbsMax(const uint8_t* row, size_t n_groups, size_t group, float* amax) {
#ifdef QUENCH_IMX_AVX2_X86
  return AbsMaxImpl(row, n_groups, group, amax);
#else
  (void)row, (void)n_groups, (void)group, (void)amax;
  return false;
#endif
}

void IntAvx2Codes4(const uint8_t* row, size_t n, size_t group,
                   const intq::internal::GroupParams* p, uint8_t* dst) {
#ifdef QUENCH_IMX_AVX2_X86
  CodesImpl(row, n, group, p, dst);
#else
  (void)row, (void)n, (void)group, (void)p, (void)dst;
#endif
}

}  // namespace quench::calib::internal
