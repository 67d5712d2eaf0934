// The MXFP4 AVX2 imatrix_mse search's per-group preparation (imatrix_mse_mx_avx2.cc has the
// search, its decisions and why each rule is exact): the term of 8 elements at a power-of-two
// scale, a group's |x| and importance as the batch stores them (Prepared), the E8M0 scale of
// each lane, a step's sum over a group, the first pass, the reordering of the elements of
// largest key, and the scales and one-term bounds at every step (PrepareSteps) or at the
// distinct scales (PrepareFirst). Only for imatrix_mse_mx_avx2.cc (x86-64 with GCC or Clang,
// QUENCH_IMX_AVX2_X86); that file switches FP contraction off before including it.
//
// Terms, per 8 elements, from each element's |x| and importance, stored once per group, at a
// power-of-two scale s in [2^-100, 2^100] (imatrix_mse_certified.cc TermMxPow2 has why the
// definition's roundings of x / s and of dq change nothing there, and why |dq - x| = ||dq| -
// |x||):
//  - a = min(|x| r, 6): |x| r is |x| / s exactly in f32's normal range; below 2^-126 E2M1
//    gives 0 from either, beyond f32's range both clamp to 6;
//  - E2M1's magnitude of a (grid 0.5 below 2, 1 below 4, 2 up to 6, ties to even) as
//    q = (a + C) - C with C = 2^(max(E, 0) + 22), E the exponent of a (a's pattern's exponent
//    field, at least 1.0's): a + C lies in [C, 2C) (a <= 6 < C), where f32's ulp is
//    2^(max(E, 0) - 1), the grid's spacing at a; the addition rounds a to that grid to nearest
//    with ties to an even multiple of the spacing, which is E2M1's tie to an even mantissa
//    (the multiple's parity is the E2M1 mantissa bit; below 1 the multiple is the code);
//    a rounded up to 2^(E + 1) is still C + 2^(E + 1) exactly; and (a + C) - C is exact
//    (Sterbenz). 5 operations against E2M1Magnitude's 9;
//  - dq = q s exact, d = |dq - |x||, e = ((d d) d) imp or (d d) imp, the definition's f32
//    products one at a time (no contraction: the including file switches it off; no FMA in the
//    target).
// 13 vector operations per 8 elements for norm 3, against 19 (TermMxPow2).

#ifndef QUENCH_CALIB_IMATRIX_MSE_MX_AVX2_PREPARE_H_
#define QUENCH_CALIB_IMATRIX_MSE_MX_AVX2_PREPARE_H_

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "calib/imatrix_mse_int_avx2_shared.h"
#include "calib/imatrix_mse_kernel.h"
#include "schemes/avx2.h"
#include "schemes/fp4_shared.h"

#ifdef QUENCH_IMX_AVX2_X86
namespace quench::calib::internal::imx_mx {

using imx_avx2::kSteps;
using imx_avx2::LaneMaxI32;
using imx_avx2::LaneSum;
using quench::avx2::RoundBf16;  // c10's RNE_bf16 of f32 lanes

// The constants of a block's terms.
struct Consts {
  __m256 six;
  __m256i expo;    // f32's exponent field
  __m256i one;     // 1.0's pattern (the smallest exponent field C takes)
  __m256i c22;     // 22 in the exponent field
  __m256 absmask;  // all but the sign bit
};

QUENCH_IMX_AVX2 inline Consts MakeConsts() {
  return {_mm256_set1_ps(6.0f), _mm256_set1_epi32(0x7F800000), _mm256_set1_epi32(0x3F800000),
          _mm256_set1_epi32(22 << 23), _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF))};
}

// The terms of 8 elements from their |x| (xa) and importance (im) at the power-of-two scale
// s with reciprocal r, per lane (the file comment has why each operation is the
// definition's).
template <int N>
QUENCH_IMX_AVX2 inline __m256 Terms8(const Consts& c, __m256 xa, __m256 im, __m256 s,
                                     __m256 r) {
  const __m256 a = _mm256_min_ps(_mm256_mul_ps(xa, r), c.six);
  const __m256 big = _mm256_castsi256_ps(_mm256_add_epi32(
      _mm256_max_epi32(_mm256_and_si256(_mm256_castps_si256(a), c.expo), c.one), c.c22));
  const __m256 q = _mm256_sub_ps(_mm256_add_ps(a, big), big);
  const __m256 d = _mm256_and_ps(_mm256_sub_ps(_mm256_mul_ps(q, s), xa), c.absmask);
  __m256 e = _mm256_mul_ps(d, d);
  if constexpr (N == 3) e = _mm256_mul_ps(e, d);
  return _mm256_mul_ps(e, im);
}

// One group as the batch leaves it for its decisions: its |x| and importance in element
// order, and per position mod 8 the vector of its element of largest key (at; Reorder moves
// those into the first vector when a scale needs its first vectors summed); PrepareFirst's
// (or Batch's) first and last scales and one-term bounds at the distinct scales, and step
// 0's f32 sum p0; for DecideSteps only (groups that are not fast), every step's scale S and
// reciprocal R, the steps only the definition takes (sc) and the term of the element of
// largest key at every step (TOP; +Inf at a repeated scale).
struct Prepared {
  alignas(32) float S[kSteps];
  alignas(32) float R[kSteps];
  alignas(32) float TOP[kSteps];
  float* xa;
  float* ie;
  uint32_t sc;
  float amax;  // the group's largest magnitude
  float tx, ti;  // its element of largest key: |x| and importance
  alignas(32) int32_t at[8];
  bool reordered;  // Reorder has run
  // PrepareFirst: lane j of TJ the one-term bound at scale 2^-j s_0 (s_0: the first step's);
  // jmask the lanes 1..J of the scales the later steps take (fast: every step's scale is
  // s_0 2^-j for some j <= J <= 7, all in [2^-100, 2^100]); a: the largest magnitude
  // expanded.
  alignas(32) float TJ[8];
  uint32_t jmask;
  uint32_t s0;  // s_0's pattern (fast)
  bool fast;
  float a;
  double p0;
  size_t col;   // the group's first column
  bool finite;  // no Inf or NaN (else nothing below the first pass is set)
};

struct Ctx : imx_avx2::BlockCtx {
  Consts c;
  __m256 p_ends;  // lanes 0 and 1: the first and last steps' factors (the rest 1)
};

// fp4::Mxfp4GroupScale of each lane's pos (a bf16 value >= 0), as its f32 pattern
// (imatrix_mse-inl.h MxScaleVec's operations).
QUENCH_IMX_AVX2 inline __m256i MxScaleBits(__m256 pos) {
  const __m256i zero = _mm256_setzero_si256(), i255 = _mm256_set1_epi32(255);
  const __m256i p_exp = _mm256_srli_epi32(
      _mm256_add_epi32(_mm256_castps_si256(pos), _mm256_set1_epi32(1 << 21)), 23);
  __m256i e = _mm256_min_epi32(
      _mm256_max_epi32(_mm256_sub_epi32(p_exp, _mm256_set1_epi32(fp4::internal::kMxFp4Offset)),
                       zero),
      i255);
  e = _mm256_blendv_epi8(e, zero, _mm256_cmpeq_epi32(p_exp, zero));
  e = _mm256_blendv_epi8(e, i255, _mm256_cmpeq_epi32(p_exp, i255));
  return _mm256_blendv_epi8(_mm256_slli_epi32(e, 23), _mm256_set1_epi32(0x00400000),
                            _mm256_cmpeq_epi32(e, zero));
}

// A step's f32 sum of terms over vectors v0..nv of a prepared group, added to acc (two
// accumulators: any order is covered by the bound). NV: nv when known at compile time (4:
// MXFP4's groups of 32, which the loops then unroll), else 0.
template <int N, size_t NV>
QUENCH_IMX_AVX2 inline __m256 SumVecsN(const Ctx& x, const Prepared& g, __m256 s, __m256 r,
                                       size_t v0, __m256 acc) {
  const size_t nv = NV != 0 ? NV : x.nv;
  __m256 acc1 = _mm256_setzero_ps();
  size_t v = v0;
  for (; v + 2 <= nv; v += 2) {
    const size_t o = 8 * v;
    acc = _mm256_add_ps(
        acc, Terms8<N>(x.c, _mm256_load_ps(g.xa + o), _mm256_load_ps(g.ie + o), s, r));
    acc1 = _mm256_add_ps(
        acc1, Terms8<N>(x.c, _mm256_load_ps(g.xa + o + 8), _mm256_load_ps(g.ie + o + 8), s, r));
  }
  for (; v < nv; ++v) {
    const size_t o = 8 * v;
    acc = _mm256_add_ps(
        acc, Terms8<N>(x.c, _mm256_load_ps(g.xa + o), _mm256_load_ps(g.ie + o), s, r));
  }
  return _mm256_add_ps(acc, acc1);
}

template <int N>
QUENCH_IMX_AVX2 inline __m256 SumVecs(const Ctx& x, const Prepared& g, __m256 s, __m256 r,
                                      size_t v0, __m256 acc) {
  return x.nv == 4 ? SumVecsN<N, 4>(x, g, s, r, v0, acc) : SumVecsN<N, 0>(x, g, s, r, v0, acc);
}

// PassCore: one pass that stores the group as |x| and importance, and per lane (position
// mod 8) the largest magnitude pattern (mag), the largest key (top) and the vector of the
// element that has it (out->at); out->finite: no Inf or NaN. NV as for SumVecsN.
template <size_t NV>
QUENCH_IMX_AVX2 inline void PassCoreN(const Ctx& x, size_t gi, Prepared* out, __m256i* mag_out,
                                      __m256i* top_out) {
  const Block& b = *x.b;
  const size_t nv = NV != 0 ? NV : x.nv;
  const imx_avx2::GroupRows rows(b, gi, x.n);
  const size_t col = out->col;
  const float* im = b.imp == nullptr ? x.ones : b.imp + col;
  const int32_t* ik = x.ik + col;
  const Consts& c = x.c;
  imx_avx2::TopKeys tk(_mm256_and_ps(rows.Load(0), c.absmask), ik);
  for (size_t v = 0; v < nv; ++v) {
    const __m256 xa = _mm256_and_ps(rows.Load(v), c.absmask);
    tk.Add(xa, ik + v * 8);
    _mm256_store_ps(out->xa + 8 * v, xa);
    _mm256_store_ps(out->ie + 8 * v, _mm256_loadu_ps(im + v * 8));
  }
  out->finite = tk.Finite();
  _mm256_store_si256(reinterpret_cast<__m256i*>(out->at), tk.at);
  out->reordered = false;
  *mag_out = tk.mag;
  *top_out = tk.top;
}

QUENCH_IMX_AVX2 inline void PassCore(const Ctx& x, size_t gi, Prepared* out, __m256i* mag_out,
                                     __m256i* top_out) {
  x.nv == 4 ? PassCoreN<4>(x, gi, out, mag_out, top_out)
            : PassCoreN<0>(x, gi, out, mag_out, top_out);
}

// PreparePass: PassCore, then the group's largest magnitude and its element of largest key
// (the first lane of the largest key).
QUENCH_IMX_AVX2 inline void PreparePass(const Ctx& x, size_t gi, Prepared* out) {
  __m256i mag, top;
  PassCore(x, gi, out, &mag, &top);
  if (!out->finite) return;
  out->amax = std::bit_cast<float>(_mm256_cvtsi256_si32(LaneMaxI32(mag)));
  const uint32_t at_top = static_cast<uint32_t>(
      _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(top, LaneMaxI32(top)))));
  const int p = __builtin_ctz(at_top | 0x100u) & 7;
  const size_t e = 8 * static_cast<size_t>(out->at[p]) + static_cast<size_t>(p);
  out->tx = out->xa[e];
  out->ti = out->ie[e];
}

// Each position's element of largest key swapped into the first vector (once; only groups
// with a scale left after the one-term bounds sum first vectors, and there the order makes
// those vectors rule out more; step 0's sum, in element order, is as valid in any order).
// In registers: the first vector by a gather, each later vector's lanes whose element moved
// receive the first vector's; whole-vector stores (a vector load after scalar stores into
// it waits for them).
QUENCH_IMX_AVX2 inline void Reorder(size_t nv, Prepared* g) {
  if (g->reordered) return;
  const __m256i at = _mm256_load_si256(reinterpret_cast<const __m256i*>(g->at));
  const __m256i idx = _mm256_add_epi32(_mm256_slli_epi32(at, 3),
                                       _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const __m256 x0 = _mm256_load_ps(g->xa), i0 = _mm256_load_ps(g->ie);
  const __m256 fx = _mm256_i32gather_ps(g->xa, idx, 4), fi = _mm256_i32gather_ps(g->ie, idx, 4);
  for (size_t v = 1; v < nv; ++v) {
    const __m256 moved = _mm256_castsi256_ps(
        _mm256_cmpeq_epi32(at, _mm256_set1_epi32(static_cast<int>(v))));
    _mm256_store_ps(g->xa + 8 * v, _mm256_blendv_ps(_mm256_load_ps(g->xa + 8 * v), x0, moved));
    _mm256_store_ps(g->ie + 8 * v, _mm256_blendv_ps(_mm256_load_ps(g->ie + 8 * v), i0, moved));
  }
  _mm256_store_ps(g->xa, fx);
  _mm256_store_ps(g->ie, fi);
  g->reordered = true;
}

// PrepareSteps: every step's scale and reciprocal (lanes across steps; the file comment), the
// steps only the definition takes, and the one-term bound at every step (+Inf at a step
// whose scale repeats the previous step's).
template <int N>
QUENCH_IMX_AVX2 inline void PrepareSteps(const Ctx& x, size_t gi, Prepared* out) {
  const Block& b = *x.b;
  const Consts& c = x.c;
  (void)b;
  (void)gi;
  const __m256 amax = _mm256_set1_ps(out->a);
  // The group's element of largest key, for its term at every step.
  const __m256 tx = _mm256_set1_ps(out->tx);
  const __m256 tim = _mm256_set1_ps(out->ti);
  const __m256 inf = _mm256_set1_ps(INFINITY);
  // Each lane's previous step's scale pattern (lane 0: the previous vector's lane 7, -1 for
  // step 0, which never repeats), by a rotation in registers: a reload of the stored
  // scales at an offset of one lane would wait on two stores it cannot forward from.
  const __m256i rot = _mm256_setr_epi32(7, 0, 1, 2, 3, 4, 5, 6);
  __m256i prev_rot = _mm256_set1_epi32(-1);
  uint32_t recip_ok = 0;
  for (size_t h = 0; h < x.sv; ++h) {
    const __m256i sb =
        MxScaleBits(RoundBf16(_mm256_mul_ps(_mm256_load_ps(x.P + 8 * h), amax)));
    const __m256 s = _mm256_castsi256_ps(sb);
    // 1 / s for the powers of two in [2^-100, 2^100] (the other lanes are never read).
    const __m256 r = _mm256_castsi256_ps(_mm256_sub_epi32(_mm256_set1_epi32(254 << 23), sb));
    _mm256_store_ps(out->S + 8 * h, s);
    _mm256_store_ps(out->R + 8 * h, r);
    const __m256 ok = _mm256_and_ps(_mm256_cmp_ps(s, _mm256_set1_ps(0x1p-100f), _CMP_GE_OQ),
                                    _mm256_cmp_ps(s, _mm256_set1_ps(0x1p100f), _CMP_LE_OQ));
    recip_ok |= static_cast<uint32_t>(_mm256_movemask_ps(ok)) << (8 * h);
    // The one-term bound, +Inf where the scale's pattern equals the previous step's.
    const __m256i cur_rot = _mm256_permutevar8x32_epi32(sb, rot);
    const __m256i prev = _mm256_blend_epi32(cur_rot, prev_rot, 1);
    prev_rot = cur_rot;
    const __m256 t = Terms8<N>(c, tx, tim, s, r);
    _mm256_store_ps(out->TOP + 8 * h,
                    _mm256_blendv_ps(t, inf, _mm256_castsi256_ps(_mm256_cmpeq_epi32(sb, prev))));
  }
  out->sc = ~recip_ok & x.step_bits;
}

// PrepareFirst: the first and last steps' scales s_0, s_L (the steps between take the
// powers of two from s_0 down to s_L: the scale is monotone in p); where both are in
// [2^-100, 2^100] and s_L >= 2^-7 s_0 (fast), the one-term bound at s_0 2^-j for j = 0..7 in
// one vector (TJ, the terms TOP has at the steps of those scales) and step 0's sum (p0) when
// that bound leaves it. The other groups are prepared step by step in Decide (PrepareSteps).
template <int N>
QUENCH_IMX_AVX2 inline void PrepareFirst(const Ctx& x, size_t gi, Prepared* out) {
  const Block& b = *x.b;
  float a = out->amax;
  if (b.absmax != nullptr) b.absmax[gi] = a;  // for the chosen ranges (ChosenPos)
  if (b.expand != 1.0) a = Expanded(a, b.expand, b.dtype);  // as MakeTiles
  out->a = a;
  const __m256i sb = MxScaleBits(RoundBf16(_mm256_mul_ps(x.p_ends, _mm256_set1_ps(a))));
  const uint32_t s0 = static_cast<uint32_t>(_mm256_cvtsi256_si32(sb));
  const uint32_t sl = static_cast<uint32_t>(_mm256_extract_epi32(sb, 1));
  const uint32_t lo = std::bit_cast<uint32_t>(0x1p-100f), hi = std::bit_cast<uint32_t>(0x1p100f);
  const uint32_t span = (s0 - sl) >> 23;  // J (s_L <= s_0, both powers of two in range)
  out->fast = s0 >= lo && s0 <= hi && sl >= lo && sl <= hi && span <= 7;
  out->p0 = 0.0;
  if (!out->fast) return;
  out->jmask = ((2u << span) - 1u) & ~1u;
  out->s0 = s0;
  const __m256i j23 = _mm256_setr_epi32(0, 1 << 23, 2 << 23, 3 << 23, 4 << 23, 5 << 23, 6 << 23,
                                        7 << 23);
  // Lanes j > J: patterns below s_L's, possibly not scales at all; never read.
  const __m256i sj = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(s0)), j23);
  const __m256 rj =
      _mm256_castsi256_ps(_mm256_sub_epi32(_mm256_set1_epi32(254 << 23), sj));
  const __m256 tj = Terms8<N>(x.c, _mm256_set1_ps(out->tx), _mm256_set1_ps(out->ti),
                              _mm256_castsi256_ps(sj), rj);
  _mm256_store_ps(out->TJ, tj);
  if (!(_mm256_cvtss_f32(tj) >= b.best[gi])) {
    const __m256i sv = _mm256_set1_epi32(static_cast<int>(s0));
    out->p0 = LaneSum(SumVecs<N>(
        x, *out, _mm256_castsi256_ps(sv),
        _mm256_castsi256_ps(_mm256_sub_epi32(_mm256_set1_epi32(254 << 23), sv)), 0,
        _mm256_setzero_ps()));
  }
}

// PrepareStep0: step 0's sum (its decision comes first in DecideGroup), for DecideSteps.
template <int N>
QUENCH_IMX_AVX2 inline void PrepareStep0(const Ctx& x, size_t gi, Prepared* out) {
  out->p0 = 0.0;
  if (!(out->sc & 1u) && !(out->TOP[0] >= x.b->best[gi])) {
    out->p0 = LaneSum(SumVecs<N>(x, *out, _mm256_set1_ps(out->S[0]), _mm256_set1_ps(out->R[0]), 0,
                                 _mm256_setzero_ps()));
  }
}

}  // namespace quench::calib::internal::imx_mx
#endif  // QUENCH_IMX_AVX2_X86

#endif  // QUENCH_CALIB_IMATRIX_MSE_MX_AVX2_PREPARE_H_
