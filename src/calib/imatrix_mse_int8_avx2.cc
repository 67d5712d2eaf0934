// The imatrix_mse certified search for symmetric 5- to 8-bit int codes of bf16 weights on AVX2
// (imatrix_mse_int8_avx2.h). The search is imatrix_mse_certified.cc's, step for step and
// decision for decision (its comment has the bound and why each rule is exact), in the
// batched shape of the int4 kernel (imatrix_mse_int_avx2.cc, whose shared pieces it uses:
// imatrix_mse_int_avx2_shared.h); what differs is dq, which 8-bit codes cannot look up in a
// table of eight. Per 8 elements, from each element's |x| and its clamp bound h (qmax for
// x >= 0, -qmin for x < 0), both stored once per group:
//  - by symmetry the term of x is the term of |x| with the bound h: RNE_bf16, the clamp and
//    round half to even are odd functions, r > 0, so q(x) = -q(|x|) for x < 0, clamped at -qmin
//    instead of qmax; dq = RNE_bf16(q * s) is odd in q; |dq - x| = |dq(|x|) - |x||;
//  - t = |x| * r with r = f32(1 / s): RNE_bf16(t) is the definition's RNE_bf16(x / s)
//    (QuotientBf16 in imatrix_mse-inl.h has the proof for 2^-100 <= s <= 2^100; other steps go
//    to the definition);
//  - c = min(t, h) before the bf16 rounding: RNE_bf16 is monotone and h is a bf16 value (127,
//    128, 2^(b-1) and 2^(b-1) - 1 have at most 7 significant bits), so min(RNE_bf16(t), h) =
//    RNE_bf16(min(t, h)) (the definition clamps after it);
//  - RNE_bf16(c) by rounding c's bits half up: (bits + 0x8000) with the low 16 bits cleared.
//    Half up and half to even differ only on a midpoint between two bf16 values, and c is
//    never one: h is a bf16 value, and t is within 2^-22 relative of x / s, which
//    QuotientBf16's proof puts more than 2^-17 relative from every midpoint (for
//    |x / s| < 2^-120 every rounding gives the code 0);
//  - q: round half to even by adding and subtracting 1.5 * 2^23 (imatrix_mse-inl.h RoundInt;
//    0 <= v <= 128 < 2^22);
//  - y = q * s is exact: q is an integer in [0, 128] (at most 7 significant bits, or 128 =
//    2^7) and s a bf16 value (8 significant bits), so the product has at most 15 significant
//    bits; s in [2^-100, 2^100] keeps it in f32's normal range (or 0 for q = 0);
//  - dq = RNE_bf16(y), which the definition needs (q * s can be a bf16 midpoint, e.g.
//    3 * 1.0078125 = 3.0234375): C = 2^(E + 16) for y in [2^E, 2^(E+1)), built from y's
//    exponent field plus 16 (for y = 0, C = 2^-111), then (y + C) - C. y + C lies in
//    [2^(E+16), 2^(E+17)), where f32's ulp 2^(E-7) is bf16's ulp at y, so f32's RNE of the sum
//    is C plus y rounded to nearest on bf16's grid; the sum's tie to even is y's (C is an even
//    multiple of that ulp: 2^23 of them), and the rounded sum stays below 2^(E+17) (y + C <=
//    2^(E+16) + 2^(E+1)), so the subtraction is exact: dq = RNE_bf16(y), a carry into the next
//    binade included. E + 16 <= 124: C is finite. 4 operations against RoundBf16's 5;
//  - e = ((d * d) * |d|) * imp (norm 3) or (d * d) * imp with d = dq - |x|, the definition's
//    f32 products one at a time (d * d = |d| * |d|; no contraction, switched off below, and no
//    FMA in the target).
// 16 vector operations per 8 elements for norm 3 (14 for norm 2) against about 21 in the
// Highway AVX2 kernel, which also reads an f32 copy of the block instead of the raw rows.

// The definition rounds every product and difference: no contraction into FMAs.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "calib/imatrix_mse_int8_avx2.h"

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "calib/imatrix_mse_decide.h"
#include "calib/imatrix_mse_int_avx2.h"
#include "calib/imatrix_mse_int_avx2_shared.h"
#include "calib/imatrix_mse_int_bf16.h"
#include "schemes/avx2.h"
#include "schemes/cpu_x86.h"
#include "schemes/float_formats.h"
#include "schemes/int_shared.h"

namespace quench::calib::internal {
namespace {

cpu::KernelSwitch g_enabled;

using imx_avx2::kSteps;

}  // namespace

void SetInt8Avx2Enabled(bool enabled) { g_enabled.Set(enabled); }

bool Int8Avx2Enabled() { return g_enabled.on(); }

bool Int8Avx2Handles(const Block& b) {
  if (!Int8Avx2Enabled() || !IntAvx2Enabled() || !IntAvx2Available() || IntBf16Handles(b)) {
    return false;
  }
  return b.format == ImatrixFormat::kInt && b.dtype == DType::kBF16 && b.symmetric &&
         (b.norm == 3.0 || b.norm == 2.0) && b.layout.bits >= 5 && b.layout.bits <= 8 &&
         b.layout.qmin == -(1 << (b.layout.bits - 1)) &&
         b.layout.qmax == (1 << (b.layout.bits - 1)) - 1 && b.group % 32 == 0 &&
         b.group <= (size_t{1} << 20) && b.i0 >= 0 && b.i1 < static_cast<int>(kSteps) &&
         b.i0 <= b.i1;
}

#ifdef QUENCH_IMX_AVX2_X86
namespace {

using quench::avx2::RoundBf16;  // c10's RNE_bf16 of f32 lanes
using imx_avx2::DecideGroup;
using imx_avx2::kBatch;
using imx_avx2::kFirstVecs;
using imx_avx2::LaneMaxI32;
using imx_avx2::LaneSum;

// The constants of a block's terms.
struct Consts {
  __m256 magic;       // 1.5 * 2^23
  __m256i half;       // half of bf16's ulp in f32's bits (0x8000)
  __m256i hi16;       // bf16's bits of an f32 (0xFFFF0000)
  __m256i expmask;    // f32's exponent field
  __m256i exp16;      // 16 in the exponent field (C = 2^(E + 16))
  __m256 absmask;     // all but the sign bit
  __m256 hpos, hneg;  // the clamp bounds qmax (x >= 0) and -qmin (x < 0)
};

QUENCH_IMX_AVX2 inline Consts MakeConsts(const Block& b) {
  Consts c;
  c.magic = _mm256_set1_ps(12582912.0f);
  c.half = _mm256_set1_epi32(0x8000);
  c.hi16 = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  c.expmask = _mm256_set1_epi32(0x7F800000);
  c.exp16 = _mm256_set1_epi32(16 << 23);
  c.absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  c.hpos = _mm256_set1_ps(static_cast<float>(b.layout.qmax));
  c.hneg = _mm256_set1_ps(static_cast<float>(-b.layout.qmin));
  return c;
}

// The terms of 8 elements from their |x| (xa), clamp bounds (hv) and importance (im) at the
// step with scale s and reciprocal r (the file comment has why each operation is the
// definition's).
template <int N>
QUENCH_IMX_AVX2 inline __m256 Terms8(const Consts& c, __m256 xa, __m256 hv, __m256 im,
                                     __m256 s, __m256 r) {
  const __m256 cl = _mm256_min_ps(_mm256_mul_ps(xa, r), hv);
  const __m256 v = _mm256_castsi256_ps(
      _mm256_and_si256(_mm256_add_epi32(_mm256_castps_si256(cl), c.half), c.hi16));
  const __m256 q = _mm256_sub_ps(_mm256_add_ps(v, c.magic), c.magic);
  const __m256 y = _mm256_mul_ps(q, s);
  const __m256 big = _mm256_castsi256_ps(
      _mm256_add_epi32(_mm256_and_si256(_mm256_castps_si256(y), c.expmask), c.exp16));
  const __m256 dq = _mm256_sub_ps(_mm256_add_ps(y, big), big);
  const __m256 d = _mm256_sub_ps(dq, xa);
  __m256 e = _mm256_mul_ps(d, d);
  if constexpr (N == 3) e = _mm256_mul_ps(e, _mm256_and_ps(d, c.absmask));
  return _mm256_mul_ps(e, im);
}

// One element's term at 8 steps: imx_avx2::SymTopTerms with this block's constants.
template <int N>
QUENCH_IMX_AVX2 inline __m256 TopTerms(const Consts& c, __m256 xa, __m256 h, __m256 im,
                                       __m256 s, __m256 r) {
  return imx_avx2::SymTopTerms<N>(c.magic, c.absmask, xa, h, im, s, r);
}

// One group as Prepare leaves it for Decide (imatrix_mse_int_avx2.cc's Prepared): its |x|,
// clamp bounds and importance reordered (each of the first 8 positions holding the element of
// largest magnitude among the elements at that position mod 8); every step's scale S and
// reciprocal R, the steps only the definition takes (sc), the term of an element of largest
// magnitude at every step (TOP), and step 0's f32 sum (p0, when summed).
struct Prepared {
  alignas(32) float S[kSteps];
  alignas(32) float R[kSteps];
  alignas(32) float TOP[kSteps];
  float* xa;
  float* hv;
  float* ie;
  uint32_t sc;
  float amax;  // the group's largest magnitude
  float top1;  // step 1's one-term bound (PrepareFirst)
  bool fast;   // PrepareFirst's conditions hold
  int top;     // the position of an element of largest magnitude
  double p0;
  size_t col;   // the group's first column
  bool finite;  // no Inf or NaN (else nothing below the first pass is set)
};

// The search's fixed inputs and constants.
struct Ctx : imx_avx2::BlockCtx {
  Consts c;
};

// A step's f32 sum of terms over vectors v0..nv of a prepared group, added to acc (two
// accumulators: any order is covered by the bound).
template <int N>
QUENCH_IMX_AVX2 inline __m256 SumVecs(const Ctx& x, const Prepared& g, __m256 s, __m256 r,
                                      size_t v0, __m256 acc) {
  __m256 acc1 = _mm256_setzero_ps();
  size_t v = v0;
  for (; v + 2 <= x.nv; v += 2) {
    const size_t o = 8 * v;
    acc = _mm256_add_ps(acc, Terms8<N>(x.c, _mm256_load_ps(g.xa + o), _mm256_load_ps(g.hv + o),
                                       _mm256_load_ps(g.ie + o), s, r));
    acc1 = _mm256_add_ps(
        acc1, Terms8<N>(x.c, _mm256_load_ps(g.xa + o + 8), _mm256_load_ps(g.hv + o + 8),
                        _mm256_load_ps(g.ie + o + 8), s, r));
  }
  for (; v < x.nv; ++v) {
    const size_t o = 8 * v;
    acc = _mm256_add_ps(acc, Terms8<N>(x.c, _mm256_load_ps(g.xa + o), _mm256_load_ps(g.hv + o),
                                       _mm256_load_ps(g.ie + o), s, r));
  }
  return _mm256_add_ps(acc, acc1);
}

// Group gi's prelude in three parts, each run for every group of a batch before the next
// (Search), as imatrix_mse_int_avx2.cc's. PreparePass: one pass that stores the group as |x|,
// bounds and importance and finds the largest magnitude (its range; Inf or NaN) and each
// position's element of largest magnitude, which is then swapped into the first vector.
QUENCH_IMX_AVX2 inline void PreparePass(const Ctx& x, size_t gi, Prepared* out) {
  const Block& b = *x.b;
  const size_t nv = x.nv;
  const imx_avx2::GroupRows rows(b, gi, x.n);
  const float* im = b.imp == nullptr ? x.ones : b.imp + out->col;
  const Consts& c = x.c;
  // The ordering key is the magnitude's pattern alone (not imatrix_mse_int_avx2.cc's Key with
  // the importance): the one-term bound then comes from an element of largest magnitude,
  // which every step after the first clips, and which rules out more steps of 8-bit codes than
  // the element of largest |x|^8 imp (bench/README.md, branch imx-w8).
  __m256i at = _mm256_setzero_si256(), vi = at, mag = at;
  const __m256i one = _mm256_set1_epi32(1);
  for (size_t v = 0; v < nv; ++v) {
    const __m256 xv = rows.Load(v), iv = _mm256_loadu_ps(im + v * 8);
    const __m256 xa = _mm256_and_ps(xv, c.absmask);
    const __m256i kv = _mm256_castps_si256(xa);
    at = _mm256_blendv_epi8(at, vi, _mm256_cmpgt_epi32(kv, mag));
    mag = _mm256_max_epi32(mag, kv);
    vi = _mm256_add_epi32(vi, one);
    _mm256_store_ps(out->xa + 8 * v, xa);
    _mm256_store_ps(out->hv + 8 * v, _mm256_blendv_ps(c.hpos, c.hneg, xv));
    _mm256_store_ps(out->ie + 8 * v, iv);
  }
  // Inf or NaN: a magnitude's pattern above the largest finite one.
  out->finite = _mm256_movemask_ps(_mm256_castsi256_ps(
                    _mm256_cmpgt_epi32(mag, _mm256_set1_epi32(0x7F7FFFFF)))) == 0;
  if (!out->finite) return;
  // Each position's element of largest magnitude swapped into the first vector.
  alignas(32) int32_t at_of[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(at_of), at);
  for (size_t p = 0; p < 8; ++p) {
    const size_t j = 8 * static_cast<size_t>(at_of[p]) + p;
    std::swap(out->xa[p], out->xa[j]);
    std::swap(out->hv[p], out->hv[j]);
    std::swap(out->ie[p], out->ie[j]);
  }
  const __m256i mag_max = LaneMaxI32(mag);
  out->amax = std::bit_cast<float>(_mm256_cvtsi256_si32(mag_max));
  // An element of largest magnitude: a position of the first reordered vector.
  out->top = __builtin_ctz(static_cast<uint32_t>(_mm256_movemask_ps(
                               _mm256_castsi256_ps(_mm256_cmpeq_epi32(mag, mag_max)))) |
                           0x100u);
}

// PrepareSteps: every step's parameters and the one-term bound at every step
// (imx_avx2::SymPrepareSteps, which has why one product a step gives the scale).
template <int N>
QUENCH_IMX_AVX2 inline void PrepareSteps(const Ctx& x, size_t gi, Prepared* out) {
  imx_avx2::SymPrepareSteps<N>(x, x.c.magic, x.c.absmask, gi, out);
}

// PrepareFirst: the parameters of steps 0, 1 and the last (L) only, step 0's one-term bound
// TOP[0] and step 1's (top1), and whether the group is "fast": then every step's scale is in
// [2^-100, 2^100] (sc = 0) and TOP[k] >= top1 for every step k >= 1, so that top1 alone can
// rule out every later step (DecideFast); other groups take PrepareSteps. Why:
//  - the scales are monotone: s_k = RNE_bf16(RNE_bf16(P_k A) / half_range) with P_k decreasing
//    in k and every operation monotone, so the unguarded s_0 >= s_1 >= s_k >= s_L for k >= 1;
//    with the unguarded s_L > 0 no guard (0 -> eps) applies, and S_0 <= 2^100, S_L >= 2^-100
//    put every S_k in range;
//  - the element of the bound (x = its |x|, bound h, importance) clips at step 1 (q_1 = h) and
//    dq_1 = RNE_bf16(h S_1) <= x: for k >= 1, S_k <= S_1 gives R_k = f32(1 / S_k) >= R_1 and
//    RNE_bf16(x R_k) >= RNE_bf16(x R_1), so q_k >= q_1 = h (monotone clamp and roundings) and
//    q_k = h; dq_k = RNE_bf16(h S_k) <= dq_1 <= x, so d_k = x - dq_k >= d_1 >= 0 and the term
//    (products of nonnegative f32 values, rounded monotonically) TOP[k] >= TOP[1].
template <int N>
QUENCH_IMX_AVX2 inline void PrepareFirst(const Ctx& x, size_t gi, Prepared* out) {
  const Block& b = *x.b;
  const Consts& c = x.c;
  float a = out->amax;
  if (b.absmax != nullptr) b.absmax[gi] = a;
  if (b.expand != 1.0) a = Expanded(a, b.expand, b.dtype);  // as MakeTiles
  const size_t last = static_cast<size_t>(b.i1 - b.i0);
  const __m256 half_range =
      _mm256_set1_ps(static_cast<float>(b.layout.qmax - b.layout.qmin) / 2.0f);
  // Lanes: steps 0, 1 (step 0 again where there is none) and L.
  const __m256 pv = _mm256_setr_ps(x.P[0], x.P[last >= 1 ? 1 : 0], x.P[last], x.P[0], x.P[0],
                                   x.P[0], x.P[0], x.P[0]);
  const __m256 pos = RoundBf16(_mm256_mul_ps(pv, _mm256_set1_ps(a)));
  const __m256 raw = RoundBf16(_mm256_div_ps(pos, half_range));
  const __m256 s =
      _mm256_blendv_ps(raw, _mm256_set1_ps(intq::internal::ScaleEps(DType::kBF16)),
                       _mm256_cmp_ps(raw, _mm256_setzero_ps(), _CMP_EQ_OQ));
  const __m256 r = _mm256_div_ps(_mm256_set1_ps(1.0f), s);
  alignas(32) float sv[8], rv[8], rawv[8], tv[8];
  _mm256_store_ps(sv, s);
  _mm256_store_ps(rv, r);
  _mm256_store_ps(rawv, raw);
  const int lane = out->top;
  const float tx = out->xa[lane], th = out->hv[lane];
  const __m256 vx = _mm256_set1_ps(tx), vh = _mm256_set1_ps(th);
  _mm256_store_ps(tv, TopTerms<N>(c, vx, vh, _mm256_set1_ps(out->ie[lane]), s, r));
  out->S[0] = sv[0];
  out->R[0] = rv[0];
  out->TOP[0] = tv[0];
  out->top1 = tv[1];
  out->sc = sv[0] >= 0x1p-100f && sv[0] <= 0x1p100f ? 0u : 1u;  // step 0's bit only
  // Step 1's code and dq for the element of the bound, as TopTerms computes them.
  const float v1 = _mm256_cvtss_f32(RoundBf16(_mm256_set1_ps(tx * rv[1])));
  const float q1 = (std::min(v1, th) + 12582912.0f) - 12582912.0f;
  const float dq1 = _mm256_cvtss_f32(RoundBf16(_mm256_set1_ps(q1 * sv[1])));
  out->fast = last >= 1 && rawv[2] > 0.0f && sv[2] >= 0x1p-100f && sv[0] <= 0x1p100f &&
              q1 == th && dq1 <= tx;
}

// DecideFast: DecideCommon for a fast group (PrepareFirst), top1 standing for every later
// step's one-term bound (each is at least top1); 0 where it does not decide.
QUENCH_IMX_AVX2 inline uint32_t DecideFast(const Ctx& x, size_t gi, const Prepared& g) {
  const Block& b = *x.b;
  const double best = b.best[gi];
  const double p0 = g.p0;
  if (!g.fast || g.TOP[0] >= best || !Certifiable(p0) || !(p0 * x.hi_f < best) ||
      (b.exact_best && p0 != 0.0) || !(g.top1 >= CeilF32(p0 * x.hi_f))) {
    return 0;
  }
  const uint32_t bit = 1u << b.i0;
  b.best[gi] = p0 * x.lo_f;
  b.masks[gi] |= bit;
  return bit;
}

// PrepareStep0: step 0's sum (its decision comes first in Decide).
template <int N>
QUENCH_IMX_AVX2 inline void PrepareStep0(const Ctx& x, size_t gi, Prepared* out) {
  out->p0 = 0.0;
  if (!(out->sc & 1u) && !(out->TOP[0] >= x.b->best[gi])) {
    out->p0 = LaneSum(SumVecs<N>(x, *out, _mm256_set1_ps(out->S[0]),
                                 _mm256_set1_ps(out->R[0]), 0, _mm256_setzero_ps()));
  }
}

// Group gi's decisions (DecideGroup: imatrix_mse_certified.cc's SearchCertified, its steps in
// the same order with the same decisions).
template <int N>
QUENCH_IMX_AVX2 inline uint32_t Decide(const Ctx& x, size_t gi, const Prepared& g) {
  auto first_vecs = [&](size_t k) {
    const __m256 s = _mm256_set1_ps(g.S[k]), r = _mm256_set1_ps(g.R[k]);
    __m256 a = Terms8<N>(x.c, _mm256_load_ps(g.xa), _mm256_load_ps(g.hv),
                         _mm256_load_ps(g.ie), s, r);
    for (size_t v = 1; v < kFirstVecs; ++v) {
      a = _mm256_add_ps(a, Terms8<N>(x.c, _mm256_load_ps(g.xa + 8 * v),
                                     _mm256_load_ps(g.hv + 8 * v),
                                     _mm256_load_ps(g.ie + 8 * v), s, r));
    }
    return a;
  };
  auto sum_rest = [&](uint32_t mask, const float* acc0, double* PS) {
    for (uint32_t lm = mask; lm != 0; lm &= lm - 1) {
      const size_t k = static_cast<size_t>(__builtin_ctz(lm));
      PS[k] = LaneSum(SumVecs<N>(x, g, _mm256_set1_ps(g.S[k]), _mm256_set1_ps(g.R[k]),
                                 kFirstVecs, _mm256_load_ps(acc0 + 8 * k)));
    }
  };
  return DecideGroup(*x.b, gi, x.n, x.step_bits, x.sv, x.lo_f, x.hi_f,
                     {g.S, nullptr, g.TOP, g.sc, g.p0, g.col}, first_vecs, sum_rest);
}

// The common decision (most groups): DecideGroup's for a group whose step 0 improves by its
// bound and whose later steps its one-term bounds all rule out; 0 (nothing set) for any other
// group, which Decide then takes. Step 0 is certified (sc's bit clear), its one term is below
// the best before it (else step(0) returns at once), p0 is Certifiable and p0 hi_f < best, so
// DecideStep improves it: blo = p0 lo_f, bhi = p0 hi_f. No later step is only the definition's
// (sc) and each has TOP[k] >= CeilF32(bhi), i.e. TOP[k] >= bhi, so DecideGroup's live set is
// empty; and without exact_best (or with p0 = 0, exact) the best stays p0 lo_f.
QUENCH_IMX_AVX2 inline uint32_t DecideCommon(const Ctx& x, size_t gi, const Prepared& g) {
  const Block& b = *x.b;
  const double best = b.best[gi];
  const double p0 = g.p0;
  if ((g.sc & x.step_bits) != 0 || g.TOP[0] >= best || !Certifiable(p0) ||
      !(p0 * x.hi_f < best) || (b.exact_best && p0 != 0.0)) {
    return 0;
  }
  const __m256 tb = _mm256_set1_ps(CeilF32(p0 * x.hi_f));
  uint32_t ruled = 0;
  for (size_t h = 0; h < x.sv; ++h) {
    ruled |= static_cast<uint32_t>(_mm256_movemask_ps(
                 _mm256_cmp_ps(_mm256_load_ps(g.TOP + 8 * h), tb, _CMP_GE_OQ)))
             << (8 * h);
  }
  if (((~ruled & x.step_bits) & ~1u) != 0) return 0;
  const uint32_t bit = 1u << b.i0;
  b.best[gi] = p0 * x.lo_f;
  b.masks[gi] |= bit;
  return bit;
}

// The search over the block's groups, kBatch at a time: every group of a batch prepared
// (independent, branch-free work that overlaps), then each decided. False at a group with an
// Inf or NaN.
template <int N>
QUENCH_IMX_AVX2 bool Search(const Block& b) {
  Ctx x;
  imx_avx2::SetUpBlock(b, &x);
  x.c = MakeConsts(b);
  const size_t groups = b.rows * x.ng;
  float* const buf = ThreadScratch(3 * kBatch * x.n);
  Prepared prep[kBatch];
  for (size_t j = 0; j < kBatch; ++j) {
    prep[j].xa = buf + 3 * j * x.n;
    prep[j].hv = prep[j].xa + x.n;
    prep[j].ie = prep[j].hv + x.n;
  }
  uint32_t any = 0;
  size_t gc = 0;
  for (size_t g0 = 0; g0 < groups; g0 += kBatch) {
    const size_t nb = std::min(kBatch, groups - g0);
    for (size_t j = 0; j < nb; ++j) {
      prep[j].col = gc * x.n;  // (g0 + j) % ng groups into the row, with no division
      gc = gc + 1 == x.ng ? 0 : gc + 1;
      PreparePass(x, g0 + j, &prep[j]);
    }
    imx_avx2::PrefetchGroups(b, g0 + kBatch, kBatch, x.n, groups);
    bool finite = true;
    for (size_t j = 0; j < nb; ++j) finite &= prep[j].finite;
    if (!finite) return false;
    for (size_t j = 0; j < nb; ++j) PrepareFirst<N>(x, g0 + j, &prep[j]);
    for (size_t j = 0; j < nb; ++j) PrepareStep0<N>(x, g0 + j, &prep[j]);
    for (size_t j = 0; j < nb; ++j) {
      uint32_t bits = DecideFast(x, g0 + j, prep[j]);
      if (bits == 0) {
        // Every step's parameters and bounds (step 0's as PrepareFirst left them, p0 too).
        PrepareSteps<N>(x, g0 + j, &prep[j]);
        bits = DecideCommon(x, g0 + j, prep[j]);
        if (bits == 0) bits = Decide<N>(x, g0 + j, prep[j]);
      }
      any |= bits;
    }
  }
  *b.improved |= any;
  return true;
}

template <int N>
QUENCH_IMX_AVX2 void Terms(const Block& b, float scale, const float* x, const float* imp,
                           size_t n, float* terms) {
  const Consts c = MakeConsts(b);
  const __m256 s = _mm256_set1_ps(scale), r = _mm256_set1_ps(1.0f / scale);
  for (size_t j = 0; j < n; j += 8) {
    const __m256 xv = _mm256_loadu_ps(x + j);
    _mm256_storeu_ps(terms + j, Terms8<N>(c, _mm256_and_ps(xv, c.absmask),
                                          _mm256_blendv_ps(c.hpos, c.hneg, xv),
                                          _mm256_loadu_ps(imp + j), s, r));
  }
}

}  // namespace
#endif  // QUENCH_IMX_AVX2_X86

bool Int8Avx2Terms(const Block& b, float scale, const float* x, const float* imp, size_t n,
                   float* terms) {
  if (!Int8Avx2Handles(b) || n % 8 != 0 || !(scale >= 0x1p-100f && scale <= 0x1p100f)) {
    return false;
  }
#ifdef QUENCH_IMX_AVX2_X86
  b.norm == 3.0 ? Terms<3>(b, scale, x, imp, n, terms) : Terms<2>(b, scale, x, imp, n, terms);
  return true;
#else
  (void)x;
  (void)imp;
  (void)terms;
  return false;
#endif
}

bool SearchInt8Avx2(const Block& b) {
#ifdef QUENCH_IMX_AVX2_X86
  return b.norm == 3.0 ? Search<3>(b) : Search<2>(b);
#else
  (void)b;
  return false;
#endif
}

}  // namespace quench::calib::internal
