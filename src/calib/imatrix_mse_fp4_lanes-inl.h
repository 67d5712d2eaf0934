// Lane shuffles of the NVFP4 groups search (imatrix_mse_fp4_groups.cc): a full tile's groups
// transposed into lanes (8 x 8 on AVX2, 16 x 16 on AVX-512) instead of gathered, the live
// pairs' sums of lanes by a transposition tree, and the 8-lane listing's table of set bits.
// Every result is exact (moves and f32 sums of lanes in some order, which the search's bound
// allows: imatrix_mse_fp4_groups.cc).
//
// Highway "-inl.h" convention: include after calib/imatrix_mse_fp4_terms-inl.h (kMaxL), once
// per target (the toggled include guard below), from inside a file compiled through
// foreach_target.

#if defined(QUENCH_CALIB_IMATRIX_MSE_FP4_LANES_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QUENCH_CALIB_IMATRIX_MSE_FP4_LANES_INL_H_
#undef QUENCH_CALIB_IMATRIX_MSE_FP4_LANES_INL_H_
#else
#define QUENCH_CALIB_IMATRIX_MSE_FP4_LANES_INL_H_
#endif

#include <array>
#include <cstddef>
#include <cstdint>

#include "hwy/highway.h"
#include "calib/imatrix_mse-inl.h"
#include "calib/imatrix_mse_fp4_terms-inl.h"

HWY_BEFORE_NAMESPACE();
namespace quench::calib::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// For 8 lanes: entry m lists the lanes of the set bits of m in ascending order, one per
// nibble from the lowest (the remaining nibbles are 0). Highway's Compress on AVX2 keeps its
// own 1 KiB table of this kind as a local constexpr array, which GCC copies onto the stack on
// every call (a `rep movsq` of 1 KiB per step and tile); this one has static storage.
constexpr std::array<uint32_t, 256> MakeLaneNibbles() {
  std::array<uint32_t, 256> t{};
  for (uint32_t m = 0; m < 256; ++m) {
    uint32_t v = 0, n = 0;
    for (uint32_t l = 0; l < 8; ++l) {
      if ((m >> l) & 1) v |= l << (4 * n++);
    }
    t[m] = v;
  }
  return t;
}
alignas(64) constexpr std::array<uint32_t, 256> kLaneNibbles = MakeLaneNibbles();
alignas(32) constexpr uint32_t kNibbleShifts[8] = {0, 4, 8, 12, 16, 20, 24, 28};

// Transposes the 8 x 8 matrix whose rows are r[0..7] (8 lanes only): lane l of c[j] is lane
// j of r[l].
#if HWY_TARGET != HWY_SCALAR  // (no interleaves there; only 8-lane targets call it)
HWY_INLINE void Transpose8(DF df, const VF* r, VF* c) {
  const hn::Repartition<double, DF> dd;
  VF t[8];
  for (size_t i = 0; i < 8; i += 2) {
    t[i] = hn::InterleaveLower(df, r[i], r[i + 1]);      // r_i0 r_i+1,0 r_i1 r_i+1,1 | (4, 5)
    t[i + 1] = hn::InterleaveUpper(df, r[i], r[i + 1]);  // (2, 3) | (6, 7)
  }
  VF u[8];
  for (size_t h = 0; h < 8; h += 4) {  // rows h..h+3, four at a time
    const auto a = hn::BitCast(dd, t[h]), b = hn::BitCast(dd, t[h + 1]);
    const auto e = hn::BitCast(dd, t[h + 2]), f = hn::BitCast(dd, t[h + 3]);
    u[h] = hn::BitCast(df, hn::InterleaveLower(dd, a, e));      // column 0 | 4
    u[h + 1] = hn::BitCast(df, hn::InterleaveUpper(dd, a, e));  // 1 | 5
    u[h + 2] = hn::BitCast(df, hn::InterleaveLower(dd, b, f));  // 2 | 6
    u[h + 3] = hn::BitCast(df, hn::InterleaveUpper(dd, b, f));  // 3 | 7
  }
  for (size_t j = 0; j < 4; ++j) {
    c[j] = hn::ConcatLowerLower(df, u[4 + j], u[j]);
    c[j + 4] = hn::ConcatUpperUpper(df, u[4 + j], u[j]);
  }
}
#endif

// Transposes the 16 x 16 matrix whose rows are r[0..15] (16 lanes, AVX-512 only): lane l of
// c[j] is lane j of r[l]. Within each 128-bit block first (the 4 x 4 transposes of rows
// 4q..4q+3: u[4q + c]'s block k holds column 4k + c of those rows), then the blocks: c[4k + c]
// gathers block k of u[c], u[4 + c], u[8 + c], u[12 + c] by two block shuffles.
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
constexpr bool kTransposeTile = true;  // full tiles transposed (8 or 16 lanes)
HWY_INLINE void Transpose16(DF df, const VF* r, VF* c) {
  const hn::Repartition<double, DF> dd;
  VF t[16], u[16];
  for (size_t i = 0; i < 16; i += 2) {
    t[i] = hn::InterleaveLower(df, r[i], r[i + 1]);      // per block: r_i0 r_i+1,0 r_i1 r_i+1,1
    t[i + 1] = hn::InterleaveUpper(df, r[i], r[i + 1]);  // r_i2 r_i+1,2 r_i3 r_i+1,3
  }
  for (size_t q = 0; q < 16; q += 4) {
    const auto a = hn::BitCast(dd, t[q]), b = hn::BitCast(dd, t[q + 1]);
    const auto e = hn::BitCast(dd, t[q + 2]), f = hn::BitCast(dd, t[q + 3]);
    u[q] = hn::BitCast(df, hn::InterleaveLower(dd, a, e));      // column 4k of rows q..q+3
    u[q + 1] = hn::BitCast(df, hn::InterleaveUpper(dd, a, e));  // 4k + 1
    u[q + 2] = hn::BitCast(df, hn::InterleaveLower(dd, b, f));  // 4k + 2
    u[q + 3] = hn::BitCast(df, hn::InterleaveUpper(dd, b, f));  // 4k + 3
  }
  for (size_t j = 0; j < 4; ++j) {
    const __m512 a = u[j].raw, b = u[4 + j].raw, e = u[8 + j].raw, f = u[12 + j].raw;
    const __m512 ab_lo = _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0));  // a0 a1 b0 b1
    const __m512 ab_hi = _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2));  // a2 a3 b2 b3
    const __m512 ef_lo = _mm512_shuffle_f32x4(e, f, _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 ef_hi = _mm512_shuffle_f32x4(e, f, _MM_SHUFFLE(3, 2, 3, 2));
    c[j] = VF{_mm512_shuffle_f32x4(ab_lo, ef_lo, _MM_SHUFFLE(2, 0, 2, 0))};       // block 0
    c[4 + j] = VF{_mm512_shuffle_f32x4(ab_lo, ef_lo, _MM_SHUFFLE(3, 1, 3, 1))};   // 1
    c[8 + j] = VF{_mm512_shuffle_f32x4(ab_hi, ef_hi, _MM_SHUFFLE(2, 0, 2, 0))};   // 2
    c[12 + j] = VF{_mm512_shuffle_f32x4(ab_hi, ef_hi, _MM_SHUFFLE(3, 1, 3, 1))};  // 3
  }
}
#else
constexpr bool kTransposeTile = kMaxL == 8;
#endif

#if HWY_TARGET != HWY_SCALAR
// The first two levels of SumsOfLanes' trees, within 128-bit blocks (no cross-block permute):
// c[i]'s block k, lane j is the sum of block k's lanes of v[4i + j] (n = 8 or 16 vectors,
// n / 4 results). Each level adds two vectors' interleaved halves.
HWY_INLINE void BlockSums(DF df, const VF* v, size_t n, VF* c) {
  const hn::Repartition<double, DF> dd;
  for (size_t i = 0; i < n / 4; ++i) {
    VF a[2];  // lane l of a[h] (per block): lanes {l / 2, l / 2 + 2} of v[4i + 2h + l % 2]
    for (size_t h = 0; h < 2; ++h) {
      const VF x = v[4 * i + 2 * h], y = v[4 * i + 2 * h + 1];
      a[h] = hn::Add(hn::InterleaveLower(df, x, y), hn::InterleaveUpper(df, x, y));
    }
    const auto x = hn::BitCast(dd, a[0]), y = hn::BitCast(dd, a[1]);
    c[i] = hn::Add(hn::BitCast(df, hn::InterleaveLower(dd, x, y)),
                   hn::BitCast(df, hn::InterleaveUpper(dd, x, y)));
  }
}
#endif

// Lane i of the result: the sum of v[i]'s lanes (in some order), for L vectors v[0..L-1]
// (a transposition tree: each level adds the even and odd lanes of two vectors, halving the
// count; v is overwritten).
HWY_INLINE VF SumsOfLanes(DF df, VF* v, size_t L) {
#if HWY_TARGET != HWY_SCALAR
  if constexpr (kMaxL == 8) {
    // With 8 lanes: BlockSums, then the two blocks added.
    VF c[2];
    BlockSums(df, v, 8, c);
    return hn::Add(hn::ConcatLowerLower(df, c[1], c[0]), hn::ConcatUpperUpper(df, c[1], c[0]));
  }
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
  if constexpr (kMaxL == 16) {
    // With 16 lanes: BlockSums, then the blocks' sums by two levels of block shuffles (block
    // i, lane j of the result: v[4i + j]'s sum). No two-source lane permutes.
    VF c[4];
    BlockSums(df, v, 16, c);
    __m512 e[2];
    for (size_t h = 0; h < 2; ++h) {  // blocks: c0 b0+b2, c0 b1+b3, c1 b0+b2, c1 b1+b3
      const __m512 x = c[2 * h].raw, y = c[2 * h + 1].raw;
      e[h] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    return VF{_mm512_add_ps(_mm512_shuffle_f32x4(e[0], e[1], _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_f32x4(e[0], e[1], _MM_SHUFFLE(3, 1, 3, 1)))};
  }
#endif
  for (size_t c = L; c > 1; c /= 2) {
    for (size_t i = 0; i < c / 2; ++i) {
      v[i] = hn::Add(hn::ConcatEven(df, v[2 * i + 1], v[2 * i]),
                     hn::ConcatOdd(df, v[2 * i + 1], v[2 * i]));
    }
  }
#else
  (void)df;
  (void)L;
#endif
  return v[0];
}

}  // namespace HWY_NAMESPACE
}  // namespace quench::calib::internal
HWY_AFTER_NAMESPACE();

#endif  // QUENCH_CALIB_IMATRIX_MSE_FP4_LANES_INL_H_
