// The imatrix_mse certified search for symmetric int codes of bf16 weights with AVX-512 BF16
// (imatrix_mse_int_bf16.h). The search is imatrix_mse_certified.cc's, step for step and
// decision for decision (its comment has the bound and why each rule is exact); what differs
// is how a vector of terms is computed. Per 32 elements (a pair of f32 vectors A, B):
//  - x * r with r = f32(1 / s), both halves rounded to bf16 by one VCVTNE2PS2BF16: the
//    definition's RNE_bf16(x / s) (QuotientBf16 in imatrix_mse-inl.h has the proof for
//    2^-100 <= s <= 2^100; other steps go to the definition). The instruction takes subnormal
//    inputs as 0 and flushes subnormal results: such a quotient is below 2^-126 and its code
//    is 0 either way;
//  - the clamp to [qmin, qmax] on the bf16 bit patterns (16-bit lanes): for a sign-magnitude
//    pattern, an unsigned min against qmin's pattern (qmin < 0) limits the negative values'
//    magnitude and leaves the positive ones (below 0x8000); a signed min against qmax's
//    (qmax > 0) limits the positive values and leaves the negative ones (negative as int16).
//    The bounds are integers, so clamping before the rounding is the definition's order;
//  - round half to even by VDPBF16PS: acc + v * 1 + v' * 0 with acc = 1.5 * 2^23 (products of
//    bf16 values are exact, the one by 0 adds nothing), rounded to f32: on [2^23, 2^24) the
//    ulp is 1, so the sum is 1.5 * 2^23 + round(v) (imatrix_mse-inl.h RoundInt), and its low
//    4 bits are q mod 16. One instruction takes each pair's even element, one its odd: lane
//    i of the first holds element 2i of the pair (A's 2i for i < 8, else B's 2i - 16), the
//    second element 2i + 1; the group's x and importance are stored once per group in that
//    order (PairOrder) for the differences;
//  - dq from the step's table of RNE_bf16(q * s) by VPERMPS on those low 4 bits (CodeTable);
//  - e = ((d * d) * d) * imp (norm 3) or (d * d) * imp with d = |dq - x|, the definition's f32
//    products one at a time (no contraction: switched off below).
// 21 vector operations per 32 elements against about 38 in the Highway kernel.

// The definition rounds every product and difference: no contraction into FMAs (GCC contracts
// the intrinsics' vector arithmetic too).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "calib/imatrix_mse_int_bf16.h"

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "calib/imatrix_mse_decide.h"
#include "schemes/avx512bf16.h"  // QUENCH_AVX512BF16, Available, Switch
#include "schemes/int_shared.h"

// GCC 12's AVX-512 headers trip -Wuninitialized on their own _mm512_undefined_*() in the
// lane reductions (avx512bf16.h silences the -Wmaybe- form).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace quench::calib::internal {
namespace {

avx512bf16::Switch g_enabled;

// Steps a group's search takes at most (two vectors of step lanes; LastStep < 32).
constexpr size_t kSteps = 32;

}  // namespace

void SetIntBf16Enabled(bool enabled) { g_enabled.Set(enabled); }

bool IntBf16Enabled() { return g_enabled.on(); }

bool IntBf16Handles(const Block& b) {
  if (!g_enabled.on() || !avx512bf16::Available()) return false;
  return b.format == ImatrixFormat::kInt && b.dtype == DType::kBF16 && b.symmetric &&
         (b.norm == 3.0 || b.norm == 2.0) && b.layout.qmin < 0 && b.layout.qmax > 0 &&
         b.layout.qmax - b.layout.qmin < 16 && b.group % 32 == 0 &&
         b.group <= (size_t{1} << 20) && b.i0 >= 0 && b.i1 < static_cast<int>(kSteps) &&
         b.i0 <= b.i1;
}

#ifdef QUENCH_AVX512BF16_X86
namespace {

using avx512bf16::RoundBf16;

// The constants of a block's terms.
struct Consts {
  __m512 magic;       // 1.5 * 2^23
  __m512bh even, odd;  // bf16 pairs (1, 0) and (0, 1)
  __m512i lo16, hi16;  // qmin's and qmax's bf16 patterns in every 16-bit lane
  __m512 codes;        // lane l: the code q = qmin + ((l - qmin) mod 16), as f32
};

QUENCH_AVX512BF16 inline Consts MakeConsts(const Block& b) {
  Consts c;
  c.magic = _mm512_set1_ps(12582912.0f);
  c.even = (__m512bh)_mm512_set1_epi32(0x00003F80);
  c.odd = (__m512bh)_mm512_set1_epi32(0x3F800000);
  auto pattern = [](int q) {
    const float f = static_cast<float>(q);  // |q| <= 8: exact in bf16
    uint32_t u;
    __builtin_memcpy(&u, &f, 4);
    return static_cast<short>(u >> 16);
  };
  c.lo16 = _mm512_set1_epi16(pattern(b.layout.qmin));
  c.hi16 = _mm512_set1_epi16(pattern(b.layout.qmax));
  const __m512i l = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i qmin = _mm512_set1_epi32(b.layout.qmin);
  c.codes = _mm512_cvtepi32_ps(_mm512_add_epi32(
      qmin, _mm512_and_si512(_mm512_sub_epi32(l, qmin), _mm512_set1_epi32(15))));
  return c;
}

// The step's table: lane l holds RNE_bf16(q * s) for the code q = l mod 16 (CodeTable).
QUENCH_AVX512BF16 inline __m512 Table(const Consts& c, float s) {
  return RoundBf16(_mm512_mul_ps(c.codes, _mm512_set1_ps(s)));
}

// The terms of 32 elements: a their x in the group's stored order (quotients), xe and ie
// their x and importance in PairOrder (the first 16 the even lanes', then the odd ones');
// the even lanes' terms to *ee, the odd ones' to *eo.
template <int N>
QUENCH_AVX512BF16 inline void PairTermsEO(const Consts& c, const float* a, const float* xe,
                                          const float* ie, __m512 r, __m512 table, __m512* ee,
                                          __m512* eo) {
  const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_mul_ps(_mm512_loadu_ps(a + 16), r),
                                         _mm512_mul_ps(_mm512_loadu_ps(a), r));
  __m512i vi = (__m512i)v;
  vi = _mm512_min_epi16(_mm512_min_epu16(vi, c.lo16), c.hi16);
  const __m512bh vc = (__m512bh)vi;
  const __m512i qe = _mm512_castps_si512(_mm512_dpbf16_ps(c.magic, vc, c.even));
  const __m512i qo = _mm512_castps_si512(_mm512_dpbf16_ps(c.magic, vc, c.odd));
  const __m512 de = _mm512_abs_ps(
      _mm512_sub_ps(_mm512_permutexvar_ps(qe, table), _mm512_loadu_ps(xe)));
  const __m512 dd = _mm512_abs_ps(
      _mm512_sub_ps(_mm512_permutexvar_ps(qo, table), _mm512_loadu_ps(xe + 16)));
  __m512 e = _mm512_mul_ps(de, de), o = _mm512_mul_ps(dd, dd);
  if constexpr (N == 3) {
    e = _mm512_mul_ps(e, de);
    o = _mm512_mul_ps(o, dd);
  }
  *ee = _mm512_mul_ps(e, _mm512_loadu_ps(ie));
  *eo = _mm512_mul_ps(o, _mm512_loadu_ps(ie + 16));
}

// The same, the 16 lanes' sums of two terms each.
template <int N>
QUENCH_AVX512BF16 inline __m512 PairTerms(const Consts& c, const float* a, const float* xe,
                                          const float* ie, __m512 r, __m512 table) {
  __m512 ee, eo;
  PairTermsEO<N>(c, a, xe, ie, r, table, &ee, &eo);
  return _mm512_add_ps(ee, eo);
}

// PairOrder of 32 values at a (even elements, then odd ones) to out.
QUENCH_AVX512BF16 inline void ToPairOrder(const float* a, float* out) {
  const __m512i pick_e =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i pick_o = _mm512_add_epi32(pick_e, _mm512_set1_epi32(1));
  const __m512 x = _mm512_loadu_ps(a), y = _mm512_loadu_ps(a + 16);
  _mm512_storeu_ps(out, _mm512_permutex2var_ps(x, pick_e, y));
  _mm512_storeu_ps(out + 16, _mm512_permutex2var_ps(x, pick_o, y));
}

// Sum of a vector's lanes in f32 (any order: the certified bound covers every order).
QUENCH_AVX512BF16 inline double LaneSum(__m512 v) {
  return static_cast<double>(_mm512_reduce_add_ps(v));
}

// The element's weight in the ordering heuristic, x^8 * imp (imatrix_mse_certified.cc Key:
// the eighth power favours the large |x| that the shrunken steps clip). Any key gives a
// valid bound: it only picks which elements go first.
QUENCH_AVX512BF16 inline __m512 Key(__m512 x, __m512 im) {
  const __m512 x2 = _mm512_mul_ps(x, x), x4 = _mm512_mul_ps(x2, x2);
  return _mm512_mul_ps(_mm512_mul_ps(x4, x4), im);
}

// One element's term (x, imp in every lane) at 16 steps (lanes: their scales s and
// reciprocals r), as the definition computes it: v = RNE_bf16(x * r) (= RNE_bf16(x / s) for
// the steps the search sums: QuotientBf16), clamped, rounded half to even by 1.5 * 2^23,
// dq = RNE_bf16(q * s).
template <int N>
QUENCH_AVX512BF16 inline __m512 TopTerms(const Consts& c, __m512 x, __m512 im, __m512 s,
                                         __m512 r, __m512 lo, __m512 hi) {
  const __m512 v = RoundBf16(_mm512_mul_ps(x, r));
  const __m512 q =
      _mm512_sub_ps(_mm512_add_ps(_mm512_min_ps(_mm512_max_ps(v, lo), hi), c.magic), c.magic);
  const __m512 d = _mm512_abs_ps(_mm512_sub_ps(RoundBf16(_mm512_mul_ps(q, s)), x));
  __m512 e = _mm512_mul_ps(d, d);
  if constexpr (N == 3) e = _mm512_mul_ps(e, d);
  return _mm512_mul_ps(e, im);
}

// Groups prepared at a time before their decisions (Search): their buffers stay in L1.
constexpr size_t kBatch = 8;

// One group as Prepare leaves it for Decide: its x reordered (each lane's element of largest
// key in the first vector) for the quotients (qa) and in PairOrder (xe) with its importance
// (ie); every step's scale S and reciprocal R, the steps only the definition takes (sc), the
// term of the element of largest key at every step (TOP), and step 0's f32 sum (p0, when
// summed).
struct Prepared {
  alignas(64) float S[kSteps];
  alignas(64) float R[kSteps];
  alignas(64) float TOP[kSteps];
  float* qa;
  float* xe;
  float* ie;
  uint32_t sc;
  double p0;
  bool finite;  // no Inf or NaN (else nothing past the first pass is set)
};

// The search's fixed inputs and constants.
struct Ctx {
  const Block* b;
  Consts c;
  size_t n, nv, np, ng;
  uint32_t step_bits;
  double lo_f, hi_f;
  alignas(64) float P[kSteps];
  const float* ones;
};

// The steps' table and first-terms sum of step k (scale s, reciprocal r) over pairs p0..np.
template <int N>
QUENCH_AVX512BF16 inline __m512 SumPairs(const Ctx& x, const Prepared& g, __m512 table,
                                         __m512 r, size_t p0, __m512 acc) {
  for (size_t p = p0; p < x.np; ++p) {
    acc = _mm512_add_ps(acc, PairTerms<N>(x.c, g.qa + 32 * p, g.xe + 32 * p, g.ie + 32 * p,
                                          r, table));
  }
  return acc;
}

// Group gi's prelude, with no data-dependent branch but the step-0 guard (so that the
// groups of a batch overlap): min, max and each lane's element of largest key in one pass;
// the group reordered and in PairOrder; every step's parameters (lanes across steps, the
// operations of imatrix_mse-inl.h ParamsVec); the one-term bound at every step; step 0's sum.
template <int N>
QUENCH_AVX512BF16 inline void Prepare(const Ctx& x, size_t gi, Prepared* out) {
  const Block& b = *x.b;
  const size_t nv = x.nv;
  const float* xg = b.raw != nullptr ? nullptr : b.x + gi * x.n;
  const uint16_t* rg = b.raw == nullptr ? nullptr
                                        : reinterpret_cast<const uint16_t*>(b.raw) + gi * x.n;
  // Vector v of the group: from the f32 copy, or the bf16 rows widened (a bf16 value is the
  // upper half of its f32 bits).
  auto load_x = [&](size_t v) {
    if (rg == nullptr) return _mm512_loadu_ps(xg + v * 16);
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rg + v * 16));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  };
  const float* im = b.imp == nullptr ? x.ones : b.imp + (gi % x.ng) * x.n;
  const __m512 zero = _mm512_setzero_ps();
  const __m512i pick_e =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i pick_o = _mm512_add_epi32(pick_e, _mm512_set1_epi32(1));
  // Per lane the element of largest key (its vector in `at`) and the largest magnitude.
  const __m512 x0 = load_x(0), i0 = _mm512_loadu_ps(im);
  __m512 top = Key(x0, i0), sx = x0, si = i0;
  __m512i at = _mm512_setzero_si512();
  // The largest magnitude's pattern: at or above Inf's for an Inf or NaN. The rows are read
  // only here, so SearchSteps runs no AllFinite before this kernel.
  const __m512i abs_bits = _mm512_set1_epi32(0x7FFFFFFF);
  __m512i amax = _mm512_and_si512(_mm512_castps_si512(x0), abs_bits);
  for (size_t v = 1; v < nv; ++v) {
    const __m512 xv = load_x(v), iv = _mm512_loadu_ps(im + v * 16);
    amax = _mm512_max_epu32(amax, _mm512_and_si512(_mm512_castps_si512(xv), abs_bits));
    const __m512 kv = Key(xv, iv);
    const __mmask16 more = _mm512_cmp_ps_mask(kv, top, _CMP_GT_OQ);
    top = _mm512_mask_mov_ps(top, more, kv);
    sx = _mm512_mask_mov_ps(sx, more, xv);
    si = _mm512_mask_mov_ps(si, more, iv);
    at = _mm512_mask_mov_epi32(at, more, _mm512_set1_epi32(static_cast<int>(v)));
  }
  const uint32_t amax_bits = _mm512_reduce_max_epu32(amax);
  out->finite = amax_bits < 0x7F800000u;
  if (!out->finite) return;
  // The group's largest magnitude for the quantize stage (IntScalesKept): the pattern of
  // max |x| (the largest magnitude pattern of finite values is that of the largest value).
  if (b.absmax != nullptr) b.absmax[gi] = std::bit_cast<float>(amax_bits);
  // The group reordered (vector 0: each lane's element of largest key, which moves to
  // vector `at`), its x to qa, and x and importance in PairOrder to xe, ie.
  for (size_t p = 0; p < x.np; ++p) {
    __m512 xab[2], iab[2];
    for (size_t h = 0; h < 2; ++h) {
      const size_t v = 2 * p + h;
      if (v == 0) {
        xab[h] = sx;
        iab[h] = si;
      } else {
        const __mmask16 moved =
            _mm512_cmpeq_epi32_mask(at, _mm512_set1_epi32(static_cast<int>(v)));
        xab[h] = _mm512_mask_mov_ps(load_x(v), moved, x0);
        iab[h] = _mm512_mask_mov_ps(_mm512_loadu_ps(im + v * 16), moved, i0);
      }
    }
    _mm512_store_ps(out->qa + 32 * p, xab[0]);
    _mm512_store_ps(out->qa + 32 * p + 16, xab[1]);
    _mm512_store_ps(out->xe + 32 * p, _mm512_permutex2var_ps(xab[0], pick_e, xab[1]));
    _mm512_store_ps(out->xe + 32 * p + 16, _mm512_permutex2var_ps(xab[0], pick_o, xab[1]));
    _mm512_store_ps(out->ie + 32 * p, _mm512_permutex2var_ps(iab[0], pick_e, iab[1]));
    _mm512_store_ps(out->ie + 32 * p + 16, _mm512_permutex2var_ps(iab[0], pick_o, iab[1]));
  }
  // Every step's parameters: calculate_qparams, symmetric, RNE_bf16(max(-mn, mx) /
  // (bit_range / 2)), 0 -> eps(bf16), with mn = min(RNE_bf16(p Expanded(m0)), 0) and mx =
  // max(RNE_bf16(p Expanded(M0)), 0) (StepRange, m0 and M0 the group's min and max); the
  // steps whose scale QuotientBf16 does not cover (groups of absurd magnitude) only by the
  // definition (sc). RNE_bf16, Expanded and the products with p >= 0 are odd and monotone,
  // so max(-mn, mx) = RNE_bf16(p * Expanded(a)) with a = max(-m0, M0, 0) = max |x| (up to
  // the sign of a zero, which becomes eps either way), as imatrix_mse_int_avx2_shared.h
  // SymPrepareSteps takes it: one product a step, no min or max of the signed values.
  float a = std::bit_cast<float>(amax_bits);
  if (b.expand != 1.0) a = Expanded(a, b.expand, b.dtype);  // as MakeTiles
  const __m512 half_range =
      _mm512_set1_ps(static_cast<float>(b.layout.qmax - b.layout.qmin) / 2.0f);
  __mmask16 recip_ok[2];
  for (size_t h = 0; h < 2; ++h) {
    const __m512 vp = _mm512_load_ps(x.P + 16 * h);
    __m512 s = RoundBf16(
        _mm512_div_ps(RoundBf16(_mm512_mul_ps(vp, _mm512_set1_ps(a))), half_range));
    s = _mm512_mask_mov_ps(s, _mm512_cmp_ps_mask(s, zero, _CMP_EQ_OQ),
                           _mm512_set1_ps(intq::internal::ScaleEps(DType::kBF16)));
    _mm512_store_ps(out->S + 16 * h, s);
    _mm512_store_ps(out->R + 16 * h, _mm512_div_ps(_mm512_set1_ps(1.0f), s));
    recip_ok[h] = _mm512_cmp_ps_mask(s, _mm512_set1_ps(0x1p-100f), _CMP_GE_OQ) &
                  _mm512_cmp_ps_mask(s, _mm512_set1_ps(0x1p100f), _CMP_LE_OQ);
  }
  out->sc = ~(static_cast<uint32_t>(recip_ok[0]) | static_cast<uint32_t>(recip_ok[1]) << 16) &
            x.step_bits;
  // The group's element of largest key (a lane of the first reordered vector): its term at
  // every step.
  const __mmask16 at_top =
      _mm512_cmp_ps_mask(top, _mm512_set1_ps(_mm512_reduce_max_ps(top)), _CMP_EQ_OQ);
  const int lane = at_top == 0 ? 0 : __builtin_ctz(at_top);
  const __m512 tx = _mm512_set1_ps(out->qa[lane]);  // qa's first vector is sx
  alignas(64) float top_i[16];
  _mm512_store_ps(top_i, si);
  const __m512 tim = _mm512_set1_ps(top_i[lane]);
  const __m512 qlo = _mm512_set1_ps(static_cast<float>(b.layout.qmin));
  const __m512 qhi = _mm512_set1_ps(static_cast<float>(b.layout.qmax));
  for (size_t h = 0; h < 2; ++h) {
    _mm512_store_ps(out->TOP + 16 * h,
                    TopTerms<N>(x.c, tx, tim, _mm512_load_ps(out->S + 16 * h),
                                _mm512_load_ps(out->R + 16 * h), qlo, qhi));
  }
  // Step 0's sum (its decision comes first in Decide).
  out->p0 = 0.0;
  if (!(out->sc & 1u) && !(out->TOP[0] >= b.best[gi])) {
    out->p0 = LaneSum(SumPairs<N>(x, *out, Table(x.c, out->S[0]), _mm512_set1_ps(out->R[0]), 0,
                                  zero));
  }
}

// Group gi's decisions (imatrix_mse_certified.cc's SearchCertified<bf16, kIntSym, N, table>,
// its steps in the same order with the same decisions): step 0; the steps its best leaves by
// their one term, decided by their first 32 terms; the rest summed to the end, all before any
// decision, then decided in step order.
template <int N>
QUENCH_AVX512BF16 inline uint32_t Decide(const Ctx& x, size_t gi, const Prepared& g) {
  const Block& b = *x.b;
  const float* xg = b.raw != nullptr ? nullptr : b.x + gi * x.n;
  const float* ig = b.imp == nullptr ? nullptr : b.imp + (gi % x.ng) * x.n;
  const double lo_f = x.lo_f, hi_f = x.hi_f;
  const uint32_t sc = g.sc;
  alignas(64) float TBL[kSteps * 16];
  // The definition's sum, in element order; from bf16 rows the group is widened into a
  // per-thread buffer the first time a decision needs it (near ties are rare).
  thread_local std::vector<float> wide;
  auto exact_of = [&](size_t k) {
    if (xg == nullptr) {
      wide.resize(x.n);
      const uint16_t* rg = reinterpret_cast<const uint16_t*>(b.raw) + gi * x.n;
      for (size_t j = 0; j < x.n; ++j) wide[j] = BF16ToF32(rg[j]);
      xg = wide.data();
    }
    return ErrorF32(GroupErrorScalar(b, xg, ig, x.n, {g.S[k], 0.0f}));
  };
  CertifiedBest best;
  best.blo = best.bhi = b.best[gi];
  // Step k's decision from its full f32 sum p (imatrix_mse_certified.cc's step).
  auto step = [&](size_t k, double p) {
    const uint32_t bit = 1u << (b.i0 + static_cast<int>(k));
    const bool certify = !(sc >> k & 1u);
    if (certify) {
      if (best.bk != SIZE_MAX && g.S[k] == g.S[best.bk]) {
        return;  // the best step's parameters: the same error, and the earlier stays
      }
      if (g.TOP[k] >= best.bhi) return;  // one term at or above the best already
    }
    DecideStep(best, k, bit, certify, p, lo_f, hi_f, exact_of);
  };

  step(0, g.p0);
  // The steps that may still improve: one term below the best after the first step (the
  // best only decreases; t >= bhi exactly when t >= CeilF32(bhi)), and those only the
  // definition takes.
  const __m512 tb = _mm512_set1_ps(CeilF32(best.bhi));
  const uint32_t ruled =
      static_cast<uint32_t>(_mm512_cmp_ps_mask(_mm512_load_ps(g.TOP), tb, _CMP_GE_OQ)) |
      static_cast<uint32_t>(_mm512_cmp_ps_mask(_mm512_load_ps(g.TOP + 16), tb, _CMP_GE_OQ))
          << 16;
  const uint32_t live = ((~ruled | sc) & x.step_bits) & ~1u;
  // Their first 32 terms together, then the steps those do not rule out summed to the end,
  // all before any decision, then decided in step order.
  alignas(64) float acc0[kSteps * 16];
  uint32_t live2 = 0;
  for (uint32_t lm = live; lm != 0; lm &= lm - 1) {
    const size_t k = static_cast<size_t>(__builtin_ctz(lm));
    if (sc >> k & 1u) {
      live2 |= 1u << k;
      continue;
    }
    const __m512 t = Table(x.c, g.S[k]);
    _mm512_store_ps(TBL + 16 * k, t);
    const __m512 a = PairTerms<N>(x.c, g.qa, g.xe, g.ie, _mm512_set1_ps(g.R[k]), t);
    _mm512_store_ps(acc0 + 16 * k, a);
    const double pc = LaneSum(a);
    live2 |= static_cast<uint32_t>(!(Certifiable(pc) && pc * lo_f >= best.bhi)) << k;
  }
  double PS[kSteps];
  for (uint32_t lm = live2 & ~sc; lm != 0; lm &= lm - 1) {
    const size_t k = static_cast<size_t>(__builtin_ctz(lm));
    PS[k] = LaneSum(SumPairs<N>(x, g, _mm512_load_ps(TBL + 16 * k), _mm512_set1_ps(g.R[k]), 1,
                                _mm512_load_ps(acc0 + 16 * k)));
  }
  for (uint32_t lm = live2; lm != 0; lm &= lm - 1) {
    const size_t k = static_cast<size_t>(__builtin_ctz(lm));
    step(k, sc >> k & 1u ? 0.0 : PS[k]);
  }
  if (b.exact_best && !best.exact) best.blo = exact_of(best.bk);
  b.best[gi] = best.blo;
  b.masks[gi] |= best.mask;
  return best.mask;
}

// The search over the block's groups, kBatch at a time: every group of a batch prepared
// (independent, branch-free work that overlaps), then each decided.
template <int N>
QUENCH_AVX512BF16 bool Search(const Block& b) {
  Ctx x;
  x.b = &b;
  x.c = MakeConsts(b);
  x.n = b.group;
  x.nv = x.n / 16;
  x.np = x.n / 32;
  x.ng = b.cols / x.n;
  const size_t groups = b.rows * x.ng;
  const BlockSteps st = SetUpSteps(b.i0, b.i1, b.grid, x.n, x.P, kSteps);
  x.step_bits = st.step_bits;
  x.lo_f = st.lo_f;
  x.hi_f = st.hi_f;
  x.ones = b.imp == nullptr ? ThreadOnes(x.n) : nullptr;
  float* const buf = ThreadScratch(3 * kBatch * x.n);
  Prepared prep[kBatch];
  for (size_t j = 0; j < kBatch; ++j) {
    prep[j].qa = buf + 3 * j * x.n;
    prep[j].xe = prep[j].qa + x.n;
    prep[j].ie = prep[j].xe + x.n;
  }
  uint32_t any = 0;
  for (size_t g0 = 0; g0 < groups; g0 += kBatch) {
    const size_t nb = std::min(kBatch, groups - g0);
    bool finite = true;
    for (size_t j = 0; j < nb; ++j) {
      Prepare<N>(x, g0 + j, &prep[j]);
      finite &= prep[j].finite;
    }
    if (!finite) return false;
    for (size_t j = 0; j < nb; ++j) any |= Decide<N>(x, g0 + j, prep[j]);
  }
  *b.improved |= any;
  return true;
}

template <int N>
QUENCH_AVX512BF16 void Terms(const Block& b, float scale, const float* x, const float* imp,
                             size_t n, float* terms) {
  const Consts c = MakeConsts(b);
  const __m512 table = Table(c, scale), r = _mm512_set1_ps(1.0f / scale);
  alignas(64) float xe[32], ie[32], te[32];
  for (size_t j = 0; j < n; j += 32) {
    ToPairOrder(x + j, xe);
    ToPairOrder(imp + j, ie);
    __m512 ee, eo;
    PairTermsEO<N>(c, x + j, xe, ie, r, table, &ee, &eo);
    _mm512_store_ps(te, ee);
    _mm512_store_ps(te + 16, eo);
    for (size_t i = 0; i < 16; ++i) {  // back to element order
      terms[j + 2 * i] = te[i];
      terms[j + 2 * i + 1] = te[16 + i];
    }
  }
}

}  // namespace
#endif  // QUENCH_AVX512BF16_X86

bool IntBf16Terms(const Block& b, float scale, const float* x, const float* imp, size_t n,
                  float* terms) {
  if (!IntBf16Handles(b) || n % 32 != 0 || !(scale >= 0x1p-100f && scale <= 0x1p100f)) {
    return false;
  }
#ifdef QUENCH_AVX512BF16_X86
  if (b.norm == 3.0) {
    Terms<3>(b, scale, x, imp, n, terms);
  } else {
    Terms<2>(b, scale, x, imp, n, terms);
  }
  return true;
#else
  (void)terms;
  return false;
#endif
}

bool SearchIntBf16(const Block& b) {
#ifdef QUENCH_AVX512BF16_X86
  return b.norm == 3.0 ? Search<3>(b) : Search<2>(b);
#else
  (void)b;
  return false;
#endif
}

}  // namespace quench::calib::internal
