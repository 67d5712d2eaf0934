// The chosen quantization's row helpers for bf16 rows with asymmetric int4 codes on AVX2
// (imatrix_mse_int_avx2_asym.h): each group's min and max, its chosen scale and zero point,
// and its packed codes, read from the raw bf16 row (no f32 copy), as
// imatrix_mse_int_avx2_codes.cc does for symmetric codes.

// The definition rounds every product and difference: no contraction into FMAs.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <cstddef>
#include <cstdint>
#include <limits>

#include "calib/imatrix_mse_int_avx2.h"
#include "calib/imatrix_mse_int_avx2_asym.h"
#include "calib/imatrix_mse_int_avx2_shared.h"
#include "calib/imatrix_mse_kernel.h"
#include "schemes/avx2.h"
#include "schemes/int_shared.h"

namespace quench::calib::internal {

namespace {
// IntAvx2AsymChosenParams' definition for groups k0..n-1: StepRange at the group's step,
// ComputeParams asymmetric, the scale's bf16 pattern at dst + 2 k.
void ParamsScalar(const float* m0, const float* M0, const uint8_t* steps, size_t k0, size_t n,
                  int grid, double expand, const intq::internal::Layout& l,
                  intq::internal::GroupParams* p, uint8_t* dst) {
  for (size_t k = k0; k < n; ++k) {
    float mn, mx;
    StepRange(m0[k], M0[k], steps[k], grid, expand, DType::kBF16, &mn, &mx);
    p[k] = intq::internal::ComputeParams(mn, mx, l, false, DType::kBF16);
    intq::internal::StoreScale(dst + 2 * k, p[k].scale, DType::kBF16);
  }
}
}  // namespace

#ifdef QUENCH_IMX_AVX2_X86
namespace {

// The codes q of 8 f32 values x (int32 lanes, -8 <= q <= 7) at scale s and zero point zp,
// with the search's operations
// (imatrix_mse_int_avx2_asym.cc says why each is the definition's): t = x * r with
// r = f32(1 / s) (kRecip) or x / s; clamped to [qmin - zp, qmax - zp] before its bf16
// rounding (those are bf16 integers, and RNE_bf16(RNE_bf16(t) + zp) is monotone in t and
// equal to qmin and qmax there, so the definition's clamp after it changes nothing more);
// RNE_bf16(c) by rounding the magnitude's bits half up where t is x * r, never a midpoint, and
// by (c + M) - M with M of c's sign and exponent where t is x / s; + zp; RNE_bf16 again
// (y may be a midpoint) in the search's product form, then VCVTPS2DQ (half to even).
template <bool kRecip>
QUENCH_IMX_AVX2 inline __m256i Codes8(__m256 x, __m256 by, __m256 zp, __m256 lo, __m256 hi) {
  const __m256i signexp = _mm256_set1_epi32(static_cast<int>(0xFF800000u));
  const __m256i up16 = _mm256_set1_epi32(0x08400000);
  auto rne = [&](__m256 v) {
    const __m256 m = _mm256_castsi256_ps(
        _mm256_add_epi32(_mm256_and_si256(_mm256_castps_si256(v), signexp), up16));
    return _mm256_sub_ps(_mm256_add_ps(v, m), m);
  };
  const __m256 t = kRecip ? _mm256_mul_ps(x, by) : _mm256_div_ps(x, by);
  const __m256 c = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
  __m256 u;
  if constexpr (kRecip) {
    u = _mm256_castsi256_ps(_mm256_and_si256(
        _mm256_add_epi32(_mm256_castps_si256(c), _mm256_set1_epi32(0x8000)),
        _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
  } else {
    u = rne(c);
  }
  // y = u + zp lies in [qmin, qmax] (within [-8, 7]), where the search's product form of the
  // second rounding gives RNE_bf16(y)'s code (imatrix_mse_int_avx2_asym.cc).
  const __m256 y = _mm256_add_ps(u, zp);
  return _mm256_cvtps_epi32(_mm256_sub_ps(_mm256_mul_ps(y, _mm256_set1_ps(65537.0f)),
                                          _mm256_mul_ps(y, _mm256_set1_ps(65536.0f))));
}

// One group's n elements (a multiple of 64) at src into n / 2 packed bytes at dst, as
// imatrix_mse_int_avx2_codes.cc's Group packs them (the even element in the low nibble).
template <bool kRecip>
QUENCH_IMX_AVX2 inline void Group(const uint8_t* src, size_t n, __m256 by, __m256 zp,
                                  __m256 lo, __m256 hi, uint8_t* dst) {
  const __m256i nib = _mm256_set1_epi32(15);
  const __m256i hi_half = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (size_t i = 0; i < n; i += 64) {
    __m256i w[4];
    for (int h = 0; h < 4; ++h) {
      const __m256i x =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * i + 32 * h));
      const __m256i e =
          Codes8<kRecip>(_mm256_castsi256_ps(_mm256_slli_epi32(x, 16)), by, zp, lo, hi);
      const __m256i o =
          Codes8<kRecip>(_mm256_castsi256_ps(_mm256_and_si256(x, hi_half)), by, zp, lo, hi);
      // 16 o + (e mod 16), in [-128, 127]: a signed byte whose nibbles are o mod 16 and e mod
      // 16 (packed below with signed saturation, which leaves it unchanged).
      w[h] = _mm256_or_si256(_mm256_and_si256(e, nib), _mm256_slli_epi32(o, 4));
    }
    // Each nibble holds q mod 16: q + 8's is that with its top bit flipped.
    const __m256i b = _mm256_xor_si256(_mm256_packs_epi16(_mm256_packs_epi32(w[0], w[1]),
                                                          _mm256_packs_epi32(w[2], w[3])),
                                       _mm256_set1_epi8(static_cast<char>(0x88)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i / 2),
                        _mm256_permutevar8x32_epi32(b, order));
  }
}

QUENCH_IMX_AVX2 void CodesImpl(const uint8_t* row, size_t n, size_t group, int qmin, int qmax,
                               const intq::internal::GroupParams* p, uint8_t* dst) {
  for (size_t g = 0; g * group < n; ++g) {
    const float s = p[g].scale, z = static_cast<float>(p[g].zp);
    const __m256 zp = _mm256_set1_ps(z);
    const __m256 lo = _mm256_set1_ps(static_cast<float>(qmin) - z);
    const __m256 hi = _mm256_set1_ps(static_cast<float>(qmax) - z);
    const uint8_t* src = row + 2 * g * group;
    uint8_t* out = dst + g * group / 2;
    // RNE_bf16(x * f32(1 / s)) == RNE_bf16(x / s) for bf16 x and s in [2^-100, 2^100]
    // (imatrix_mse-inl.h QuotientBf16; the chosen scales are bf16 values).
    if (s >= 0x1p-100f && s <= 0x1p100f) {
      Group<true>(src, group, _mm256_set1_ps(1.0f / s), zp, lo, hi, out);
    } else {
      Group<false>(src, group, _mm256_set1_ps(s), zp, lo, hi, out);
    }
  }
}

// Each group's min and max of a raw bf16 row: the elements widened to f32 (even ones shifted
// into the high half, odd ones masked), MINPS / MAXPS (exact on finite values, up to the sign
// of a zero, which no parameter sees: imatrix_mse-inl.h ParamsVec); false when a magnitude's
// pattern (unsigned 16-bit maximum with the sign cleared) is at or beyond Inf's.
QUENCH_IMX_AVX2 bool MinMaxImpl(const uint8_t* row, size_t n_groups, size_t group, float* mn,
                                float* mx) {
  const __m256i hi_half = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m256i mag_bits = _mm256_set1_epi16(0x7FFF);
  __m256i mag = _mm256_setzero_si256();
  for (size_t g = 0; g < n_groups; ++g) {
    const uint8_t* p = row + 2 * g * group;
    __m256 lo = _mm256_set1_ps(std::numeric_limits<float>::infinity());
    __m256 hi = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    for (size_t i = 0; i < 2 * group; i += 32) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
      mag = _mm256_max_epu16(mag, _mm256_and_si256(x, mag_bits));
      const __m256 e = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
      const __m256 o = _mm256_castsi256_ps(_mm256_and_si256(x, hi_half));
      lo = _mm256_min_ps(lo, _mm256_min_ps(e, o));
      hi = _mm256_max_ps(hi, _mm256_max_ps(e, o));
    }
    __m128 l = _mm_min_ps(_mm256_castps256_ps128(lo), _mm256_extractf128_ps(lo, 1));
    l = _mm_min_ps(l, _mm_movehl_ps(l, l));
    mn[g] = _mm_cvtss_f32(_mm_min_ss(l, _mm_movehdup_ps(l)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(hi), _mm256_extractf128_ps(hi, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    mx[g] = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
  }
  // No element at or beyond Inf's magnitude pattern 0x7F80 (Inf, NaN).
  const __m256i over = _mm256_cmpeq_epi16(_mm256_max_epu16(mag, _mm256_set1_epi16(0x7F80)), mag);
  return _mm256_testz_si256(over, over) != 0;
}

// Eight groups' chosen parameters per vector: StepRange lane by lane (p = f32(1 - i / grid)
// by a gather from the steps' table, Expanded: RNE_bf16(v * f32(expand)), then RNE_bf16(p
// v)) and the search's AsymParams (imatrix_mse_int_avx2_shared.h: ComputeParams, asymmetric);
// the groups past the last multiple of 8 by the scalar code itself.
QUENCH_IMX_AVX2 void ParamsImpl(const float* m0, const float* M0, const uint8_t* steps,
                                size_t n, int grid, double expand,
                                const intq::internal::Layout& l,
                                intq::internal::GroupParams* p, uint8_t* dst) {
  using avx2::RoundBf16;
  alignas(32) float table[32];
  for (int i = 0; i < 32; ++i) table[i] = StepFactor(i, grid);
  const __m256 e = _mm256_set1_ps(static_cast<float>(expand));
  const imx_avx2::AsymConsts k = imx_avx2::MakeAsymConsts(l.qmin, l.qmax);
  size_t g = 0;
  for (; g + 8 <= n; g += 8) {
    const __m256i idx = _mm256_cvtepu8_epi32(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(steps + g)));
    const __m256 pv =
        _mm256_i32gather_ps(table, _mm256_and_si256(idx, _mm256_set1_epi32(31)), 4);
    const __m256 a = RoundBf16(_mm256_mul_ps(_mm256_loadu_ps(m0 + g), e));
    const __m256 b = RoundBf16(_mm256_mul_ps(_mm256_loadu_ps(M0 + g), e));
    __m256 s, r, z;
    imx_avx2::AsymParams(k, RoundBf16(_mm256_mul_ps(pv, a)), RoundBf16(_mm256_mul_ps(pv, b)), &s,
                         &r, &z);
    alignas(32) float sv[8], zv[8];
    _mm256_store_ps(sv, s);
    _mm256_store_ps(zv, z);
    for (size_t j = 0; j < 8; ++j) {
      p[g + j] = {sv[j], static_cast<int>(zv[j])};
      intq::internal::StoreScale(dst + 2 * (g + j), sv[j], DType::kBF16);
    }
  }
  ParamsScalar(m0, M0, steps, g, n, grid, expand, l, p, dst);
}

}  // namespace
#endif  // QUENCH_IMX_AVX2_X86

bool IntAvx2AsymCodesHandle(size_t group, size_t n) {
  return IntAvx2Enabled() && IntAvx2Available() && group % 64 == 0 && n % group == 0;
}

bool IntAvx2RowMinMax(const uint8_t* row, size_t n_groups, size_t group, float* mn,
                      float* mx) {
#ifdef QUENCH_IMX_AVX2_X86
  return MinMaxImpl(row, n_groups, group, mn, mx);
#else
  (void)row, (void)n_groups, (void)group, (void)mn, (void)mx;
  return false;
#endif
}

void IntAvx2AsymChosenParams(const float* m0, const float* M0, const uint8_t* steps, size_t n,
                             int grid, double expand, const intq::internal::Layout& l,
                             intq::internal::GroupParams* p, uint8_t* dst) {
#ifdef QUENCH_IMX_AVX2_X86
  ParamsImpl(m0, M0, steps, n, grid, expand, l, p, dst);
#else
  ParamsScalar(m0, M0, steps, 0, n, grid, expand, l, p, dst);
#endif
}

void IntAvx2AsymCodes4(const uint8_t* row, size_t n, size_t group,
                       const intq::internal::GroupParams* p, uint8_t* dst) {
#ifdef QUENCH_IMX_AVX2_X86
  CodesImpl(row, n, group, -8, 7, p, dst);
#else
  (void)row, (void)n, (void)group, (void)p, (void)dst;
#endif
}

}  // namespace quench::calib::internal
