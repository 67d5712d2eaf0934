// The imatrix_mse certified search for MXFP4 codes of bf16 weights on AVX2
// (imatrix_mse_mx_avx2.h). The search is imatrix_mse_certified.cc's, decision for decision
// (its comment has the bound and why each rule is exact), in the batched shape of the AVX2
// int search (imatrix_mse_int_avx2.cc); what differs is that it decides a group over its few
// distinct scales rather than over its steps, and how a vector of terms is computed.
//
// Step scales: the definition's s = Mxfp4GroupScale(pos) with pos = max(|min(mn, 0)|,
// max(mx, 0)), mn = RNE_bf16(p Expanded(m0)), mx likewise with M0. RNE_bf16, Expanded and the
// products with p >= 0 are odd and monotone, so pos = RNE_bf16(p Expanded(a)) with a =
// max |x| (imatrix_mse_int_avx2.h IntAvx2ChosenScales has the same argument): one product a
// step. The E8M0 scale of pos by MxScaleVec's operations (imatrix_mse-inl.h, MxScaleBits
// here); the steps whose scale is outside [2^-100, 2^100] (groups of zeros or of absurd
// magnitude) go to the definition. The scale is a power of two there, so r = 1 / s is
// exact, its pattern (254 << 23) - s's pattern.
//
// Distinct scales: s is monotone in p, so over the steps it runs down the powers of two from
// the first step's s_0 to the last's s_L (about 5 of them over the 20 default steps). A step
// whose scale an earlier step had has that step's error (the definition's error is a function
// of the group and s), and by then the best is at most that error: it never improves
// (imatrix_mse_certified.cc, the same rule). So the steps that can improve are each distinct
// scale's first step, in the scales' order, and a group where s_0 and s_L are in range and
// s_L >= 2^-7 s_0 ("fast") is decided over the scales s_j = 2^-j s_0, j = 0..J <= 7: the
// one-term bound of its element of largest key at every s_j is one vector (TJ), step 0's sum
// as usual, and an improvement at s_j is a mask bit at its first step k_j (the number of
// steps with a larger scale).
//
// Shape: groups in batches of 8 (Batch), with lanes across the batch's groups where
// the work is scalar per group (largest magnitudes, elements of largest key, s_0 and s_L,
// step 0's sums and bounds); then per group, most often (most of the bench's groups) the
// common decision: step 0 improves by its bound and TJ rules out every later scale; else
// where TJ leaves only s_1, that scale's full sum (DecideScale1); else the general decision
// over the distinct scales (DecideDistinct: first vectors, then full sums, as DecideGroup);
// groups that are not fast take every step's parameters and DecideGroup (DecideSteps), where
// a repeated scale's one-term bound TOP is +Inf (read as "at or above the best").
//
// Terms, per 8 elements: imatrix_mse_mx_avx2_prepare.h (13 vector operations for norm 3,
// against the definition's 19).

// The definition rounds every product and difference: no contraction into FMAs.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "calib/imatrix_mse_mx_avx2.h"

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "calib/imatrix_mse_decide.h"
#include "calib/imatrix_mse_int_avx2.h"
#include "calib/imatrix_mse_int_avx2_shared.h"
#include "calib/imatrix_mse_mx_avx2_prepare.h"
#include "schemes/avx2.h"
#include "schemes/cpu_x86.h"
#include "schemes/float_formats.h"
#include "schemes/fp4_shared.h"

namespace quench::calib::internal {
namespace {

cpu::KernelSwitch g_enabled;

using imx_avx2::kSteps;

}  // namespace

void SetMxAvx2Enabled(bool enabled) { g_enabled.Set(enabled); }

bool MxAvx2Enabled() { return g_enabled.on(); }

bool MxAvx2Handles(const Block& b) {
  if (!MxAvx2Enabled() || !IntAvx2Available()) return false;
  return b.format == ImatrixFormat::kMxfp4 && b.dtype == DType::kBF16 &&
         (b.norm == 3.0 || b.norm == 2.0) && b.group % 32 == 0 && b.group > 0 &&
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

// The preparation: imatrix_mse_mx_avx2_prepare.h.
using imx_mx::Consts;
using imx_mx::Ctx;
using imx_mx::MakeConsts;
using imx_mx::MxScaleBits;
using imx_mx::Prepared;
using imx_mx::PreparePass;
using imx_mx::PrepareFirst;
using imx_mx::PrepareStep0;
using imx_mx::PrepareSteps;
using imx_mx::Reorder;
using imx_mx::SumVecs;
using imx_mx::Terms8;

// (Defined below, after the decisions that fall back to it.)
template <int N>
QUENCH_IMX_AVX2 inline uint32_t DecideSteps(const Ctx& x, size_t gi, Prepared& g);

// A fast group's step offsets d_k = log2(s_0 / s_k) (0..J) at D (the block's sv vectors of
// steps; lanes past its steps have p = 1, step 0's offset), and the offsets that occur (bit
// j).
QUENCH_IMX_AVX2 inline uint32_t StepOffsets(const Ctx& x, const Prepared& g, int32_t* D) {
  const __m256 av = _mm256_set1_ps(g.a);
  const __m256i s0v = _mm256_set1_epi32(static_cast<int>(g.s0));
  __m256i occv = _mm256_setzero_si256();
  for (size_t h = 0; h < x.sv; ++h) {
    const __m256i sb = MxScaleBits(RoundBf16(_mm256_mul_ps(_mm256_load_ps(x.P + 8 * h), av)));
    const __m256i d = _mm256_srli_epi32(_mm256_sub_epi32(s0v, sb), 23);
    _mm256_store_si256(reinterpret_cast<__m256i*>(D + 8 * h), d);
    occv = _mm256_or_si256(occv, _mm256_sllv_epi32(_mm256_set1_epi32(1), d));
  }
  __m128i o = _mm_or_si128(_mm256_castsi256_si128(occv), _mm256_extracti128_si256(occv, 1));
  o = _mm_or_si128(o, _mm_shuffle_epi32(o, 0x4E));
  o = _mm_or_si128(o, _mm_shuffle_epi32(o, 0xB1));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(o));
}

// The first step with offset j (StepOffsets' D): the number of steps with a smaller one.
QUENCH_IMX_AVX2 inline int FirstStep(const Ctx& x, const int32_t* D, int j) {
  uint32_t before = 0;
  for (size_t h = 0; h < x.sv; ++h) {
    before |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(
                  _mm256_set1_epi32(j),
                  _mm256_load_si256(reinterpret_cast<const __m256i*>(D + 8 * h))))))
              << (8 * h);
  }
  return __builtin_popcount(before & x.step_bits);
}

// DecideDistinct's decisions where step 0 improves by its bound and the one-term bounds leave
// only scale 1 (s_0 / 2), and the caller reads masks only (!exact_best): its full f32 sum p1
// decides it by the bound (the scales from 2 on stay ruled out: the best only decreases), or
// 0 when it cannot (a sum outside the bound's range, a near tie, or an improvement at a scale
// no step takes), for DecideDistinct.
template <int N>
QUENCH_IMX_AVX2 inline uint32_t DecideScale1(const Ctx& x, size_t gi, Prepared& g) {
  const Block& b = *x.b;
  const __m256i s1 = _mm256_set1_epi32(static_cast<int>(g.s0 - (1u << 23)));
  const double p1 = LaneSum(SumVecs<N>(
      x, g, _mm256_castsi256_ps(s1),
      _mm256_castsi256_ps(_mm256_sub_epi32(_mm256_set1_epi32(254 << 23), s1)), 0,
      _mm256_setzero_ps()));
  if (!Certifiable(p1)) return 0;
  const uint32_t bit0 = 1u << b.i0;
  if (p1 * x.lo_f >= g.p0 * x.hi_f) {  // not an improvement
    b.best[gi] = g.p0 * x.lo_f;
    b.masks[gi] |= bit0;
    return bit0;
  }
  if (!(p1 * x.hi_f < g.p0 * x.lo_f)) return 0;  // a near tie
  alignas(32) int32_t D[kSteps];
  if (!(StepOffsets(x, g, D) & 2u)) return 0;
  const uint32_t bits = bit0 | 1u << (b.i0 + FirstStep(x, D, 1));
  b.best[gi] = p1 * x.lo_f;
  b.masks[gi] |= bits;
  return bits;
}

// Group gi's decisions where PrepareFirst found it fast but the common decision did not settle
// it: SearchCertified's (DecideGroup's) rules over its distinct scales s_j = 2^-j s_0 in
// order, which is step order (the scale is monotone in the step), instead of over its
// steps. A step whose scale an earlier step had does not improve (the file comment), so the
// definition's improvements are those of each distinct scale's first step k_j, decided
// against the best of the scales before it: step 0 (its sum p0); the scales that some step
// takes and that their one term TJ[j] leaves, by their first kFirstVecs vectors of terms;
// those these leave summed to the end, then decided in order. The improvements found (bits
// j) are the steps k_j, the number of steps whose scale is larger.
template <int N>
QUENCH_IMX_AVX2 inline uint32_t DecideDistinct(const Ctx& x, size_t gi, Prepared& g) {
  const Block& b = *x.b;
  alignas(32) int32_t D[kSteps];
  const uint32_t occ = StepOffsets(x, g, D) & 0xFEu;
  auto scale_of = [&](size_t j) {
    return std::bit_cast<float>(g.s0 - (static_cast<uint32_t>(j) << 23));
  };
  const float* xg = b.raw != nullptr ? nullptr : b.x + gi * x.n;
  const float* ig = b.imp == nullptr ? nullptr : b.imp + g.col;
  thread_local std::vector<float> wide;
  auto exact_of = [&](size_t j) {
    if (xg == nullptr) {
      wide.resize(x.n);
      const uint16_t* rg = reinterpret_cast<const uint16_t*>(b.raw) + gi * x.n;
      for (size_t i = 0; i < x.n; ++i) wide[i] = BF16ToF32(rg[i]);
      xg = wide.data();
    }
    return ErrorF32(GroupErrorScalar(b, xg, ig, x.n, {scale_of(j), 0.0f}));
  };
  CertifiedBest best;
  best.blo = best.bhi = b.best[gi];
  auto step = [&](size_t j, double p) {
    if (g.TJ[j] >= best.bhi) return;  // one term at or above the best already
    DecideStep(best, j, 1u << j, true, p, x.lo_f, x.hi_f, exact_of);
  };
  step(0, g.p0);
  const uint32_t ruled = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(
      _mm256_load_ps(g.TJ), _mm256_set1_ps(CeilF32(best.bhi)), _CMP_GE_OQ)));
  const uint32_t live = occ & ~ruled;
  double PS[8];
  uint32_t live2 = 0;
  if (live != 0) {
    Reorder(x.nv, &g);
    __m256 acc0[8];
    for (uint32_t m = live; m != 0; m &= m - 1) {
      const size_t j = static_cast<size_t>(__builtin_ctz(m));
      const __m256i sj = _mm256_set1_epi32(static_cast<int>(std::bit_cast<uint32_t>(scale_of(j))));
      const __m256 s = _mm256_castsi256_ps(sj);
      const __m256 r =
          _mm256_castsi256_ps(_mm256_sub_epi32(_mm256_set1_epi32(254 << 23), sj));
      __m256 a = Terms8<N>(x.c, _mm256_load_ps(g.xa), _mm256_load_ps(g.ie), s, r);
      for (size_t v = 1; v < kFirstVecs; ++v) {
        a = _mm256_add_ps(a, Terms8<N>(x.c, _mm256_load_ps(g.xa + 8 * v),
                                       _mm256_load_ps(g.ie + 8 * v), s, r));
      }
      acc0[j] = a;
      const double pc = LaneSum(a);
      live2 |= static_cast<uint32_t>(!(Certifiable(pc) && pc * x.lo_f >= best.bhi)) << j;
    }
    // Their sums to the end, all before any decision (DecideGroup says why).
    for (uint32_t m = live2; m != 0; m &= m - 1) {
      const size_t j = static_cast<size_t>(__builtin_ctz(m));
      const __m256i sj = _mm256_set1_epi32(static_cast<int>(std::bit_cast<uint32_t>(scale_of(j))));
      PS[j] = LaneSum(SumVecs<N>(
          x, g, _mm256_castsi256_ps(sj),
          _mm256_castsi256_ps(_mm256_sub_epi32(_mm256_set1_epi32(254 << 23), sj)), kFirstVecs,
          acc0[j]));
    }
    for (uint32_t m = live2; m != 0; m &= m - 1) {
      const size_t j = static_cast<size_t>(__builtin_ctz(m));
      step(j, PS[j]);
    }
  }
  if (b.exact_best && !best.exact) best.blo = exact_of(best.bk);
  b.best[gi] = best.blo;
  // Scale j's first step: the number of steps with an offset below j.
  uint32_t mask = 0;
  for (uint32_t m = best.mask; m != 0; m &= m - 1) {
    mask |= 1u << (b.i0 + FirstStep(x, D, __builtin_ctz(m)));
  }
  b.masks[gi] |= mask;
  return mask;
}

// A group's decisions in a last, partial batch (PreparePass and PrepareFirst prepared it; a
// full batch's are Batch's, lanes across its groups).
template <int N>
QUENCH_IMX_AVX2 inline uint32_t Decide(const Ctx& x, size_t gi, Prepared& g) {
  const Block& b = *x.b;
  // The common case first, with DecideGroup's rules in its order: step 0 (scale s_0, in
  // range) improves by its bound (not ruled out by its one term, its sum Certifiable and its
  // upper bound below the best); every later step's scale is s_0 2^-j for some j <= J
  // (PrepareFirst): j = 0 repeats step 0's error, which does not improve on itself, and each
  // j >= 1 is ruled out by its one term (TJ[j] >= bhi exactly when TJ[j] >= CeilF32(bhi)).
  // The group's best is then step 0's, known to lie in [p0 lo_f, p0 hi_f]: its lower end
  // where the caller reads masks only, else (a nonzero sum) DecideGroup computes it exactly.
  const double bst = b.best[gi], p0 = g.p0;
  if (g.fast && !(g.TJ[0] >= bst) && Certifiable(p0) && p0 * x.hi_f < bst &&
      (!b.exact_best || p0 == 0.0)) {
    const __m256 tb = _mm256_set1_ps(CeilF32(p0 * x.hi_f));
    const uint32_t ruled = static_cast<uint32_t>(
        _mm256_movemask_ps(_mm256_cmp_ps(_mm256_load_ps(g.TJ), tb, _CMP_GE_OQ)));
    if ((~ruled & g.jmask) == 0) {
      const uint32_t bit = 1u << b.i0;
      b.best[gi] = p0 * x.lo_f;
      b.masks[gi] |= bit;
      return bit;
    }
  }
  return g.fast ? DecideDistinct<N>(x, gi, g) : DecideSteps<N>(x, gi, g);
}

// Group gi's decisions by DecideGroup (imatrix_mse_certified.cc's SearchCertified, its steps
// in the same order with the same decisions) for groups that are not fast: every step's
// parameters and bounds, and step 0's sum.
template <int N>
QUENCH_IMX_AVX2 inline uint32_t DecideSteps(const Ctx& x, size_t gi, Prepared& g) {
  PrepareSteps<N>(x, gi, &g);
  PrepareStep0<N>(x, gi, &g);
  const float* S = g.S;
  auto first_vecs = [&](size_t k) {
    Reorder(x.nv, &g);
    const __m256 s = _mm256_set1_ps(S[k]), r = _mm256_set1_ps(g.R[k]);
    __m256 a = Terms8<N>(x.c, _mm256_load_ps(g.xa), _mm256_load_ps(g.ie), s, r);
    for (size_t v = 1; v < kFirstVecs; ++v) {
      a = _mm256_add_ps(a, Terms8<N>(x.c, _mm256_load_ps(g.xa + 8 * v),
                                     _mm256_load_ps(g.ie + 8 * v), s, r));
    }
    return a;
  };
  auto sum_rest = [&](uint32_t mask, const float* acc0, double* PS) {
    for (uint32_t lm = mask; lm != 0; lm &= lm - 1) {
      const size_t k = static_cast<size_t>(__builtin_ctz(lm));
      PS[k] = LaneSum(SumVecs<N>(x, g, _mm256_set1_ps(S[k]), _mm256_set1_ps(g.R[k]), kFirstVecs,
                                 _mm256_load_ps(acc0 + 8 * k)));
    }
  };
  return DecideGroup(*x.b, gi, x.n, x.step_bits, x.sv, x.lo_f, x.hi_f,
                     {S, nullptr, g.TOP, g.sc, g.p0, g.col}, first_vecs, sum_rest);
}

// Lane j: the largest of vector v[j]'s lanes (signed 32-bit), for 8 vectors at once (a tree
// of unpacks and maxima).
QUENCH_IMX_AVX2 inline __m256i MaxAcross8(const __m256i* v) {
  __m256i t[4];
  for (int j = 0; j < 4; ++j) {
    t[j] = _mm256_max_epi32(_mm256_unpacklo_epi32(v[2 * j], v[2 * j + 1]),
                            _mm256_unpackhi_epi32(v[2 * j], v[2 * j + 1]));
  }
  const __m256i u0 = _mm256_max_epi32(_mm256_unpacklo_epi64(t[0], t[1]),
                                      _mm256_unpackhi_epi64(t[0], t[1]));
  const __m256i u1 = _mm256_max_epi32(_mm256_unpacklo_epi64(t[2], t[3]),
                                      _mm256_unpackhi_epi64(t[2], t[3]));
  return _mm256_max_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),
                          _mm256_permute2x128_si256(u0, u1, 0x31));
}

// Lane j: the f32 sum of vector v[j]'s lanes (in some order: the certified bound covers
// every order), for 8 vectors at once (a tree of horizontal adds, imx_avx2::FirstRuled's).
QUENCH_IMX_AVX2 inline __m256 SumAcross8(const __m256* v) {
  const __m256 h01 = _mm256_hadd_ps(v[0], v[1]), h23 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 h45 = _mm256_hadd_ps(v[4], v[5]), h67 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 q0 = _mm256_hadd_ps(h01, h23), q1 = _mm256_hadd_ps(h45, h67);
  return _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
}

// A full batch (kBatch groups from g0) prepared and decided with lanes across its groups
// where the work is per group and scalar in PreparePass, PrepareFirst and Decide: the
// largest magnitudes, the elements of largest key, the first and last steps' scales, step
// 0's sums and its bound, and the common decision; the same values and decisions (the
// element of largest key: the first lane of the largest key, as PreparePass picks it; step
// 0's sum in another order, which the bound covers). The groups the common decision leaves
// go to DecideSteps. False at a group with an Inf or NaN.
template <int N, size_t NV>
QUENCH_IMX_AVX2 inline bool Batch(const Ctx& x, size_t g0, Prepared* prep, float* buf,
                                  uint32_t* any) {
  static_assert(kBatch == 8, "lanes across the batch's groups");
  const Block& b = *x.b;
  const Consts& c = x.c;
  __m256i mag[8], key[8];
  bool finite = true;
  for (size_t j = 0; j < 8; ++j) {
    PassCoreN<NV>(x, g0 + j, &prep[j], &mag[j], &key[j]);
    finite &= prep[j].finite;
  }
  if (!finite) return false;
  // Each group's largest magnitude, and the lane of its largest key (the first on ties:
  // the key shifted left by 3 with 7 - lane below it).
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i seven = _mm256_set1_epi32(7);
  const __m256i rl = _mm256_sub_epi32(seven, iota);
  for (size_t j = 0; j < 8; ++j) key[j] = _mm256_or_si256(_mm256_slli_epi32(key[j], 3), rl);
  const __m256 amax = _mm256_castsi256_ps(MaxAcross8(mag));
  const __m256i lane = _mm256_sub_epi32(seven, _mm256_and_si256(MaxAcross8(key), seven));
  // Its element: at[lane] of the group's Prepared, then that element of its |x| and
  // importance (group j's at buf + 2 n j, its importance n further).
  constexpr int kStride = static_cast<int>(sizeof(Prepared) / sizeof(int32_t));
  static_assert(sizeof(Prepared) % sizeof(int32_t) == 0);
  const __m256i at = _mm256_i32gather_epi32(
      prep[0].at, _mm256_add_epi32(_mm256_mullo_epi32(iota, _mm256_set1_epi32(kStride)), lane), 4);
  const __m256i e = _mm256_add_epi32(
      _mm256_mullo_epi32(iota, _mm256_set1_epi32(static_cast<int>(2 * x.n))),
      _mm256_add_epi32(_mm256_slli_epi32(at, 3), lane));
  const __m256 tx = _mm256_i32gather_ps(buf, e, 4);
  const __m256 ti = _mm256_i32gather_ps(buf + x.n, e, 4);
  if (b.absmax != nullptr) _mm256_storeu_ps(b.absmax + g0, amax);  // for ChosenPos
  // Expanded (RNE_bf16 of the product with f32(expand)), as PrepareFirst.
  const __m256 a = b.expand == 1.0 ? amax
                                   : RoundBf16(_mm256_mul_ps(
                                         amax, _mm256_set1_ps(static_cast<float>(b.expand))));
  const __m256i s0 = MxScaleBits(RoundBf16(_mm256_mul_ps(_mm256_set1_ps(x.P[0]), a)));
  const __m256i sl =
      MxScaleBits(RoundBf16(_mm256_mul_ps(_mm256_set1_ps(x.P[b.i1 - b.i0]), a)));
  const __m256i lo = _mm256_set1_epi32(std::bit_cast<int32_t>(0x1p-100f));
  const __m256i hi = _mm256_set1_epi32(std::bit_cast<int32_t>(0x1p100f));
  const __m256i span = _mm256_srli_epi32(_mm256_sub_epi32(s0, sl), 23);
  // In range: lo <= pattern <= hi (positive patterns compare as their values).
  const __m256i fast = _mm256_andnot_si256(
      _mm256_or_si256(_mm256_or_si256(_mm256_cmpgt_epi32(lo, s0), _mm256_cmpgt_epi32(s0, hi)),
                      _mm256_or_si256(_mm256_or_si256(_mm256_cmpgt_epi32(lo, sl),
                                                      _mm256_cmpgt_epi32(sl, hi)),
                                      _mm256_cmpgt_epi32(span, seven))),
      _mm256_set1_epi32(-1));
  const __m256i jmask = _mm256_andnot_si256(
      _mm256_set1_epi32(1),
      _mm256_sub_epi32(_mm256_sllv_epi32(_mm256_set1_epi32(2), span), _mm256_set1_epi32(1)));
  const __m256i r0 = _mm256_sub_epi32(_mm256_set1_epi32(254 << 23), s0);
  alignas(32) float txs[8], tis[8], as[8], amaxs[8];
  alignas(32) int32_t s0s[8], r0s[8], fasts[8], jms[8];
  _mm256_store_ps(txs, tx);
  _mm256_store_ps(tis, ti);
  _mm256_store_ps(as, a);
  _mm256_store_ps(amaxs, amax);
  _mm256_store_si256(reinterpret_cast<__m256i*>(s0s), s0);
  _mm256_store_si256(reinterpret_cast<__m256i*>(r0s), r0);
  _mm256_store_si256(reinterpret_cast<__m256i*>(fasts), fast);
  _mm256_store_si256(reinterpret_cast<__m256i*>(jms), jmask);
  // Step 0's sums (every group: a group whose bound rules step 0 out never reads it) and the
  // one-term bounds at s_0 2^-j.
  const __m256i j23 = _mm256_slli_epi32(iota, 23);
  __m256 acc[8];
  for (size_t j = 0; j < 8; ++j) {
    Prepared& g = prep[j];
    g.amax = amaxs[j];
    g.a = as[j];
    g.tx = txs[j];
    g.ti = tis[j];
    g.fast = fasts[j] != 0;
    g.jmask = static_cast<uint32_t>(jms[j]);
    g.s0 = static_cast<uint32_t>(s0s[j]);
    const __m256i sv = _mm256_set1_epi32(s0s[j]);
    acc[j] = SumVecsN<N, NV>(x, g, _mm256_castsi256_ps(sv),
                             _mm256_castsi256_ps(_mm256_set1_epi32(r0s[j])), 0,
                             _mm256_setzero_ps());
    const __m256i sj = _mm256_sub_epi32(sv, j23);
    _mm256_store_ps(g.TJ, Terms8<N>(c, _mm256_set1_ps(g.tx), _mm256_set1_ps(g.ti),
                                    _mm256_castsi256_ps(sj),
                                    _mm256_castsi256_ps(_mm256_sub_epi32(
                                        _mm256_set1_epi32(254 << 23), sj))));
  }
  const __m256 p0 = SumAcross8(acc);
  const __m256 top0 = Terms8<N>(c, tx, ti, _mm256_castsi256_ps(s0), _mm256_castsi256_ps(r0));
  // The common decision (Decide's), lanes across groups: fast, !(TOP0 >= best), p0
  // Certifiable, p0 hi_f < best, and (exact_best) p0 == 0; then CeilF32(p0 hi_f).
  alignas(32) double p0d[8];
  alignas(32) float ceil[8];
  uint32_t cand = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(fast)));
  const __m256 cert = _mm256_or_ps(
      _mm256_cmp_ps(p0, _mm256_setzero_ps(), _CMP_EQ_OQ),
      _mm256_and_ps(_mm256_cmp_ps(p0, _mm256_set1_ps(0x1p-100f), _CMP_GE_OQ),
                    _mm256_cmp_ps(p0, _mm256_set1_ps(0x1p100f), _CMP_LE_OQ)));
  cand &= static_cast<uint32_t>(_mm256_movemask_ps(cert));
  if (b.exact_best) {
    cand &= static_cast<uint32_t>(
        _mm256_movemask_ps(_mm256_cmp_ps(p0, _mm256_setzero_ps(), _CMP_EQ_OQ)));
  }
  const __m256d vhi = _mm256_set1_pd(x.hi_f);
  for (int h = 0; h < 2; ++h) {
    const __m256d pd = _mm256_cvtps_pd(h == 0 ? _mm256_castps256_ps128(p0)
                                              : _mm256_extractf128_ps(p0, 1));
    const __m256d td = _mm256_cvtps_pd(h == 0 ? _mm256_castps256_ps128(top0)
                                              : _mm256_extractf128_ps(top0, 1));
    const __m256d bd = _mm256_loadu_pd(b.best + g0 + 4 * h);
    const __m256d phd = _mm256_mul_pd(pd, vhi);
    const uint32_t ok = static_cast<uint32_t>(_mm256_movemask_pd(_mm256_andnot_pd(
        _mm256_cmp_pd(td, bd, _CMP_GE_OQ), _mm256_cmp_pd(phd, bd, _CMP_LT_OQ))));
    cand &= ok << (4 * h) | ~(15u << (4 * h));
    _mm256_store_pd(p0d + 4 * h, pd);
    // CeilF32: the nearest f32 (cvtpd_ps rounds to nearest even, as static_cast does), one
    // pattern up where it is below (the comparison's all-ones 64-bit lanes, narrowed to 32
    // bits, are -1).
    const __m128 f = _mm256_cvtpd_ps(phd);
    const __m256i below =
        _mm256_castpd_si256(_mm256_cmp_pd(_mm256_cvtps_pd(f), phd, _CMP_LT_OQ));
    const __m128i below32 = _mm256_castsi256_si128(
        _mm256_permutevar8x32_epi32(below, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6)));
    _mm_store_ps(ceil + 4 * h, _mm_castsi128_ps(_mm_sub_epi32(_mm_castps_si128(f), below32)));
  }
  for (size_t j = 0; j < 8; ++j) {
    Prepared& g = prep[j];
    g.p0 = p0d[j];
    uint32_t bits;
    const uint32_t ruled = static_cast<uint32_t>(_mm256_movemask_ps(
        _mm256_cmp_ps(_mm256_load_ps(g.TJ), _mm256_set1_ps(ceil[j]), _CMP_GE_OQ)));
    if ((cand >> j & 1u) && (~ruled & g.jmask) == 0) {
      bits = 1u << b.i0;
      b.best[g0 + j] = p0d[j] * x.lo_f;
      b.masks[g0 + j] |= bits;
    } else {
      bits = 0;
      if ((cand >> j & 1u) && !b.exact_best && (~ruled & g.jmask) == 2u) {
        bits = DecideScale1<N>(x, g0 + j, g);
      }
      if (bits == 0) {
        bits = g.fast ? DecideDistinct<N>(x, g0 + j, g) : DecideSteps<N>(x, g0 + j, g);
      }
    }
    *any |= bits;
  }
  return true;
}

// The search over the block's groups, kBatch at a time: full batches by Batch, a last partial
// one group by group (PreparePass, PrepareFirst, Decide). False at a group with an Inf or
// NaN.
template <int N>
QUENCH_IMX_AVX2 bool Search(const Block& b) {
  Ctx x;
  imx_avx2::SetUpBlock(b, &x);
  x.c = MakeConsts();
  x.p_ends = _mm256_setr_ps(x.P[0], x.P[b.i1 - b.i0], 1.f, 1.f, 1.f, 1.f, 1.f, 1.f);
  const size_t groups = b.rows * x.ng;
  float* const buf = ThreadScratch(2 * kBatch * x.n);
  Prepared prep[kBatch];
  for (size_t j = 0; j < kBatch; ++j) {
    prep[j].xa = buf + 2 * j * x.n;
    prep[j].ie = prep[j].xa + x.n;
  }
  uint32_t any = 0;
  size_t gc = 0;
  for (size_t g0 = 0; g0 < groups; g0 += kBatch) {
    const size_t nb = std::min(kBatch, groups - g0);
    if (nb == kBatch) {
      for (size_t j = 0; j < nb; ++j) {
        prep[j].col = gc * x.n;
        gc = gc + 1 == x.ng ? 0 : gc + 1;
      }
      // (NV 4: MXFP4's groups of 32, the loops unrolled.)
      const bool ok =
          x.nv == 4 ? Batch<N, 4>(x, g0, prep, buf, &any) : Batch<N, 0>(x, g0, prep, buf, &any);
      if (!ok) return false;
      continue;
    }
    for (size_t j = 0; j < nb; ++j) {
      prep[j].col = gc * x.n;  // (g0 + j) % ng groups into the row, with no division
      gc = gc + 1 == x.ng ? 0 : gc + 1;
      PreparePass(x, g0 + j, &prep[j]);
    }
    bool finite = true;
    for (size_t j = 0; j < nb; ++j) finite &= prep[j].finite;
    if (!finite) return false;
    for (size_t j = 0; j < nb; ++j) PrepareFirst<N>(x, g0 + j, &prep[j]);
    for (size_t j = 0; j < nb; ++j) any |= Decide<N>(x, g0 + j, prep[j]);
  }
  *b.improved |= any;
  return true;
}

template <int N>
QUENCH_IMX_AVX2 void Terms(float s, const float* x, const float* imp, size_t n, float* terms) {
  const Consts c = MakeConsts();
  const __m256 vs = _mm256_set1_ps(s), vr = _mm256_set1_ps(1.0f / s);
  for (size_t j = 0; j < n; j += 8) {
    const __m256 xa = _mm256_and_ps(_mm256_loadu_ps(x + j), c.absmask);
    _mm256_storeu_ps(terms + j, Terms8<N>(c, xa, _mm256_loadu_ps(imp + j), vs, vr));
  }
}

}  // namespace
#endif  // QUENCH_IMX_AVX2_X86

bool MxAvx2Terms(int norm, float s, const float* x, const float* imp, size_t n, float* terms) {
  if (!MxAvx2Enabled() || !IntAvx2Available() || n % 8 != 0 || (norm != 2 && norm != 3) ||
      !(s >= 0x1p-100f && s <= 0x1p100f)) {
    return false;
  }
#ifdef QUENCH_IMX_AVX2_X86
  norm == 3 ? Terms<3>(s, x, imp, n, terms) : Terms<2>(s, x, imp, n, terms);
  return true;
#else
  (void)x;
  (void)imp;
  (void)terms;
  return false;
#endif
}

bool SearchMxAvx2(const Block& b) {
#ifdef QUENCH_IMX_AVX2_X86
  return b.norm == 3.0 ? Search<3>(b) : Search<2>(b);
#else
  (void)b;
  return false;
#endif
}

}  // namespace quench::calib::internal
