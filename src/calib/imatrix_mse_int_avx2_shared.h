// What the AVX2 imatrix_mse int searches share (imatrix_mse_int_avx2.cc for symmetric codes,
// imatrix_mse_int_avx2_asym.cc for asymmetric ones): the target attribute, the batch and
// first-check sizes, lane sums, the batched first checks and the ordering key; and the
// asymmetric parameters, which the asymmetric search and chosen quantization share
// (imatrix_mse_int_avx2_asym_codes.cc). Only for those files (x86-64 with GCC or Clang;
// QUENCH_IMX_AVX2_X86 says whether it is).
#ifndef QUENCH_CALIB_IMATRIX_MSE_INT_AVX2_SHARED_H_
#define QUENCH_CALIB_IMATRIX_MSE_INT_AVX2_SHARED_H_

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>

#include <vector>

#include "calib/imatrix_mse_decide.h"
#include "calib/imatrix_mse_kernel.h"
#include "schemes/avx2.h"
#include "schemes/float_formats.h"
#include "schemes/int_shared.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QUENCH_IMX_AVX2_X86 1
#include <immintrin.h>
// No FMA in the target: nothing can contract the definition's products.
#define QUENCH_IMX_AVX2 __attribute__((target("avx2,bmi,bmi2")))
#endif

namespace quench::calib::internal::imx_avx2 {

// Steps a group's search takes at most (four vectors of step lanes; LastStep < 32).
constexpr size_t kSteps = 32;
// Groups prepared at a time before their decisions (Search): their buffers stay in L1.
constexpr size_t kBatch = 8;
// Vectors of terms in a live step's first check: two (16 elements: the first vector, which
// receives each position's element of largest key, and the next; chosen by measurement
// against 1, 3 and 4: bench/README.md's imatrix sections).
constexpr size_t kFirstVecs = 2;

#ifdef QUENCH_IMX_AVX2_X86

// The sum of a vector's lanes (in any order: the certified bound covers every order).
QUENCH_IMX_AVX2 inline double LaneSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return static_cast<double>(_mm_cvtss_f32(s));
}

// The largest of a vector's signed 32-bit lanes, in every lane.
QUENCH_IMX_AVX2 inline __m256i LaneMaxI32(__m256i v) {
  __m128i m = _mm_max_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0x4E));
  return _mm256_broadcastd_epi32(_mm_max_epi32(m, _mm_shuffle_epi32(m, 0xB1)));
}

// The lane sums of the eight vectors at q, q + 8, .., q + 56 (lane j: vector j's) by a tree
// of horizontal adds (any order: the certified bound covers every order).
QUENCH_IMX_AVX2 inline __m256 LaneSums8(const float* q) {
  const __m256 h01 = _mm256_hadd_ps(_mm256_load_ps(q), _mm256_load_ps(q + 8));
  const __m256 h23 = _mm256_hadd_ps(_mm256_load_ps(q + 16), _mm256_load_ps(q + 24));
  const __m256 h45 = _mm256_hadd_ps(_mm256_load_ps(q + 32), _mm256_load_ps(q + 40));
  const __m256 h67 = _mm256_hadd_ps(_mm256_load_ps(q + 48), _mm256_load_ps(q + 56));
  // Lane j < 4 of q0: vector j's lanes 0-3, lane 4 + j its lanes 4-7; q1 likewise for 4-7.
  const __m256 q0 = _mm256_hadd_ps(h01, h23), q1 = _mm256_hadd_ps(h45, h67);
  return _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20),
                       _mm256_permute2f128_ps(q0, q1, 0x31));
}

// The lane sums of a batch's prelude vectors (acc: step k's of group j at
// acc + 8 (kBatch k + j), zero where not summed), steps 0 .. K, into prep[j].p0 (step 0) and
// prep[j].ps[k]: once per batch rather than one LaneSum after each sum, which left the core
// waiting on the sum's last additions (bench/README.md, branch imx-asym3).
template <size_t K, typename P>
QUENCH_IMX_AVX2 inline void PreSums(const float* acc, P* prep) {
  static_assert(kBatch == 8);
  for (size_t k = 0; k <= K; ++k) {
    alignas(32) float sums[8];
    _mm256_store_ps(sums, LaneSums8(acc + 8 * kBatch * k));
    for (size_t j = 0; j < kBatch; ++j) {
      (k == 0 ? prep[j].p0 : prep[j].ps[k]) = static_cast<double>(sums[j]);
    }
  }
}

// The first check of nl live steps at once: bit i set when the lane sum pc of vector i at
// p + 8 i is Certifiable and pc lo_f >= bhi (the scalar test of the step's decision, which
// then cannot improve). Lane sums eight vectors at a time by a tree of horizontal adds (any
// order: the certified bound covers every order); the vectors up to the next multiple of 8
// are zeroed first.
QUENCH_IMX_AVX2 inline uint32_t FirstRuled(float* p, size_t nl, double lo_f, double bhi) {
  for (size_t i = nl; i % 8 != 0; ++i) _mm256_store_ps(p + 8 * i, _mm256_setzero_ps());
  const __m256d vlo = _mm256_set1_pd(lo_f), vb = _mm256_set1_pd(bhi);
  uint32_t ruled = 0;
  for (size_t i = 0; i < nl; i += 8) {
    const __m256 pc = LaneSums8(p + 8 * i);
    const __m256 cert = _mm256_or_ps(
        _mm256_cmp_ps(pc, _mm256_setzero_ps(), _CMP_EQ_OQ),
        _mm256_and_ps(_mm256_cmp_ps(pc, _mm256_set1_ps(0x1p-100f), _CMP_GE_OQ),
                      _mm256_cmp_ps(pc, _mm256_set1_ps(0x1p100f), _CMP_LE_OQ)));
    const __m256d lo = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(pc)), vlo);
    const __m256d hi = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(pc, 1)), vlo);
    const uint32_t ge =
        static_cast<uint32_t>(_mm256_movemask_pd(_mm256_cmp_pd(lo, vb, _CMP_GE_OQ))) |
        static_cast<uint32_t>(_mm256_movemask_pd(_mm256_cmp_pd(hi, vb, _CMP_GE_OQ))) << 4;
    ruled |= (ge & static_cast<uint32_t>(_mm256_movemask_ps(cert))) << i;
  }
  return ruled;
}

// The element's weight in the ordering heuristic, an integer that grows with x^8 * imp
// (imatrix_mse_certified.cc Key's order, on logarithms): the bf16 pattern of |x| (128 per
// octave) plus the importance's f32 pattern shifted right by 19 (16 per octave, KeyOfImp),
// with no product. Any key gives a valid bound: it only picks which elements go first.
QUENCH_IMX_AVX2 inline __m256i Key(__m256 xa, __m256i ik) {  // xa = |x|
  return _mm256_add_epi32(_mm256_srli_epi32(_mm256_castps_si256(xa), 16), ik);
}

// A group's first pass, per position (mod 8): the largest key so far (top), the vector that
// holds it (at; the first of equal keys) and the largest magnitude's pattern (mag). Made from
// the first vector's |x| and importance keys, then given every vector in order from the first
// (Add); Finite: no Inf or NaN among them (a magnitude's pattern at or above Inf's).
struct TopKeys {
  __m256i top, at, vi, mag;
  QUENCH_IMX_AVX2 TopKeys(__m256 xa0, const int32_t* ik0)
      : top(Key(xa0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ik0)))),
        at(_mm256_setzero_si256()), vi(at), mag(at) {}
  QUENCH_IMX_AVX2 void Add(__m256 xa, const int32_t* ik) {
    const __m256i kv = Key(xa, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ik)));
    const __m256i more = _mm256_cmpgt_epi32(kv, top);
    top = _mm256_max_epi32(top, kv);
    at = _mm256_blendv_epi8(at, vi, more);
    vi = _mm256_add_epi32(vi, _mm256_set1_epi32(1));
    mag = _mm256_max_epi32(mag, _mm256_castps_si256(xa));
  }
  QUENCH_IMX_AVX2 bool Finite() const {
    return _mm256_movemask_ps(_mm256_castsi256_ps(
               _mm256_cmpgt_epi32(mag, _mm256_set1_epi32(0x7F7FFFFF)))) == 0;
  }
};

// An importance's part of Key (imp >= 0 and finite: at most 0x0FEF, so keys stay positive).
inline int32_t KeyOfImp(float imp) {
  return static_cast<int32_t>(std::bit_cast<uint32_t>(imp) >> 19);
}

// A block's fixed inputs, as both AVX2 int searches take them (SetUpBlock): n elements a
// group, nv vectors a group, ng groups a row; the steps (P: their shrink factors, SetUpSteps),
// sv vectors of 8 step lanes that hold them, their bits; the bound's factors; ones where the
// site has no importance; ik: KeyOfImp of each column's importance (1 where there is none).
struct BlockCtx {
  const Block* b;
  size_t n, nv, ng;
  size_t sv;
  uint32_t step_bits;
  double lo_f, hi_f;
  alignas(32) float P[kSteps];
  const float* ones;
  const int32_t* ik;
};

QUENCH_IMX_AVX2 inline void SetUpBlock(const Block& b, BlockCtx* x) {
  x->b = &b;
  x->n = b.group;
  x->nv = x->n / 8;
  x->ng = b.cols / x->n;
  const BlockSteps st = SetUpSteps(b.i0, b.i1, b.grid, x->n, x->P, kSteps);
  x->step_bits = st.step_bits;
  x->sv = static_cast<size_t>(b.i1 - b.i0 + 8) / 8;
  x->lo_f = st.lo_f;
  x->hi_f = st.hi_f;
  x->ones = b.imp == nullptr ? ThreadOnes(x->n) : nullptr;
  // Per thread: one block's columns at a time.
  thread_local std::vector<int32_t> ik;
  ik.resize(b.cols);
  for (size_t j = 0; j < b.cols; ++j) ik[j] = KeyOfImp(b.imp == nullptr ? 1.0f : b.imp[j]);
  x->ik = ik.data();
}

// The term of one element of a symmetric int search (|x| xa, its clamp bound h and importance
// im in every lane) at 8 steps (lanes: their scales s and reciprocals r), as the definition
// computes it: v = RNE_bf16(|x| * r), min(v, h) rounded half to even by adding and subtracting
// magic (1.5 * 2^23), dq = RNE_bf16(q * s), e = |dq - |x||^N * im (the products one at a time).
template <int N>
QUENCH_IMX_AVX2 inline __m256 SymTopTerms(__m256 magic, __m256 absmask, __m256 xa, __m256 h,
                                          __m256 im, __m256 s, __m256 r) {
  using avx2::RoundBf16;
  const __m256 v = RoundBf16(_mm256_mul_ps(xa, r));
  const __m256 q = _mm256_sub_ps(_mm256_add_ps(_mm256_min_ps(v, h), magic), magic);
  const __m256 d = _mm256_and_ps(_mm256_sub_ps(RoundBf16(_mm256_mul_ps(q, s)), xa), absmask);
  __m256 e = _mm256_mul_ps(d, d);
  if constexpr (N == 3) e = _mm256_mul_ps(e, d);
  return _mm256_mul_ps(e, im);
}

// A symmetric int search's group (P: its kernel's Prepared, with amax, top, xa / hv / ie,
// S, R, TOP and sc) gets every step's parameters (lanes across steps, the operations of
// imatrix_mse-inl.h ParamsVec) and the one-term bound of its element `top` at every step;
// the group's largest magnitude goes to b.absmax for the quantize stage (IntScalesKept).
// Every step's parameters: calculate_qparams, symmetric, RNE_bf16(max(-mn, mx) /
// (bit_range / 2)), 0 -> eps(bf16), with mn = min(RNE_bf16(p Expanded(m0)), 0) and mx =
// max(RNE_bf16(p Expanded(M0)), 0) (StepRange, m0 and M0 the group's min and max); the
// steps whose scale QuotientBf16 does not cover (groups of absurd magnitude) only by the
// definition (sc). RNE_bf16, Expanded and the products with p >= 0 are odd and monotone, so
// max(-mn, mx) = RNE_bf16(p * Expanded(a)) with a = max(-m0, M0, 0) = max |x|, the largest
// magnitude pattern of the pass (no min or max of the signed values): one product per step.
// The quotient by bit_range / 2 (h) as a product by f32(1 / h): h = (qmax - qmin) / 2 is a
// bf16 value (the int4 and int8 kernels' layouts: 1 .. 7.5, 15.5, 31.5, 63.5, 127.5) and so
// is the dividend, so QuotientBf16's argument (imatrix_mse-inl.h) puts the quotient away from
// every bf16 midpoint, and RNE_bf16 of the product is RNE_bf16 of the quotient; checked for
// every finite bf16 dividend >= 0 and every such h, subnormals included
// (test_imatrix_int_avx2.cc). A division a vector was ~a quarter of the prelude's
// parameter work (bench/README.md, branch imx-int4s).
template <int N, class P>
QUENCH_IMX_AVX2 inline void SymPrepareSteps(const BlockCtx& x, __m256 magic, __m256 absmask,
                                            size_t gi, P* out) {
  using avx2::RoundBf16;
  const Block& b = *x.b;
  const __m256 zero = _mm256_setzero_ps();
  float a = out->amax;
  if (b.absmax != nullptr) b.absmax[gi] = a;
  if (b.expand != 1.0) a = Expanded(a, b.expand, b.dtype);  // as MakeTiles
  const __m256 inv_half =
      _mm256_set1_ps(1.0f / (static_cast<float>(b.layout.qmax - b.layout.qmin) / 2.0f));
  const __m256 amax = _mm256_set1_ps(a);
  uint32_t recip_ok = 0;
  for (size_t h = 0; h < x.sv; ++h) {
    const __m256 pos = RoundBf16(_mm256_mul_ps(_mm256_load_ps(x.P + 8 * h), amax));
    __m256 s = RoundBf16(_mm256_mul_ps(pos, inv_half));
    s = _mm256_blendv_ps(s, _mm256_set1_ps(intq::internal::ScaleEps(DType::kBF16)),
                         _mm256_cmp_ps(s, zero, _CMP_EQ_OQ));
    _mm256_store_ps(out->S + 8 * h, s);
    _mm256_store_ps(out->R + 8 * h, _mm256_div_ps(_mm256_set1_ps(1.0f), s));
    const __m256 ok = _mm256_and_ps(_mm256_cmp_ps(s, _mm256_set1_ps(0x1p-100f), _CMP_GE_OQ),
                                    _mm256_cmp_ps(s, _mm256_set1_ps(0x1p100f), _CMP_LE_OQ));
    recip_ok |= static_cast<uint32_t>(_mm256_movemask_ps(ok)) << (8 * h);
  }
  out->sc = ~recip_ok & x.step_bits;
  const int lane = out->top;
  const __m256 tx = _mm256_set1_ps(out->xa[lane]);
  const __m256 th = _mm256_set1_ps(out->hv[lane]);
  const __m256 tim = _mm256_set1_ps(out->ie[lane]);
  for (size_t h = 0; h < x.sv; ++h) {
    _mm256_store_ps(out->TOP + 8 * h,
                    SymTopTerms<N>(magic, absmask, tx, th, tim, _mm256_load_ps(out->S + 8 * h),
                                   _mm256_load_ps(out->R + 8 * h)));
  }
}

// Group gi's values (n elements a group), eight at a time: from the block's f32 copy, or its
// bf16 rows widened (a bf16 value is the upper half of its f32 bits).
struct GroupRows {
  const float* xg;
  const uint16_t* rg;
  GroupRows(const Block& b, size_t gi, size_t n)
      : xg(b.raw != nullptr ? nullptr : b.x + gi * n),
        rg(b.raw == nullptr ? nullptr : reinterpret_cast<const uint16_t*>(b.raw) + gi * n) {}
  QUENCH_IMX_AVX2 __m256 Load(size_t v) const {
    if (rg == nullptr) return _mm256_loadu_ps(xg + v * 8);
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rg + v * 8));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
};

// Groups g .. g + count - 1 of the block's rows (those below `groups`) asked into the cache
// ahead of their pass: the search reads them once, after a batch's worth of work on the
// groups before them, and the pass waited on those loads (bench/README.md, branch
// imx-int4s).
QUENCH_IMX_AVX2 inline void PrefetchGroups(const Block& b, size_t g, size_t count, size_t n,
                                           size_t groups) {
  if (g >= groups) return;
  const size_t end = std::min(g + count, groups);
  const char* p = b.raw != nullptr ? reinterpret_cast<const char*>(b.raw + 2 * g * n)
                                   : reinterpret_cast<const char*>(b.x + g * n);
  const size_t bytes = (end - g) * n * (b.raw != nullptr ? 2 : 4);
  // PREFETCHT0 by asm: GCC 12 emitted no instruction for _mm_prefetch / __builtin_prefetch
  // in these kernels' translation units (checked with -S).
  for (size_t o = 0; o < bytes; o += 64) asm volatile("prefetcht0 %0" : : "m"(p[o]));
}

// A prepared group's steps as DecideGroup reads them: each step's scale S and zero point Z
// (Z nullptr: symmetric, every zero point 0), its one-term bound TOP, the steps only the
// definition takes (sc), step 0's f32 sum p0 and the group's first column; and optionally
// steps 1 .. j summed already (pre: their bits, none only the definition's; ps[k]: step k's
// f32 sum, in any order of its terms, which the bound covers).
struct GroupSteps {
  const float* S;
  const float* Z;
  const float* TOP;
  uint32_t sc;
  double p0;
  size_t col;
  uint32_t pre = 0;
  const double* ps = nullptr;
};

// Group gi's decisions (imatrix_mse_certified.cc's SearchCertified, its steps in the same
// order with the same decisions), for both AVX2 int searches: step 0; the steps its best
// leaves by their one term, decided by their first kFirstVecs vectors of terms
// (first_vecs(k): step k's, an __m256 of partial sums); the rest summed to the end
// (sum_rest(mask, acc0, PS): PS[k] for each step k of mask, from acc0 + 8 k, the first
// vectors' sums), all before any decision, then decided in step order. n: elements a group;
// step_bits, sv: the block's steps and vectors of steps; lo_f, hi_f: the bound's factors.
template <class FirstVecs, class SumRest>
QUENCH_IMX_AVX2 inline uint32_t DecideGroup(const Block& b, size_t gi, size_t n,
                                            uint32_t step_bits, size_t sv, double lo_f,
                                            double hi_f, const GroupSteps& g,
                                            FirstVecs&& first_vecs, SumRest&& sum_rest) {
  const float* xg = b.raw != nullptr ? nullptr : b.x + gi * n;
  const float* ig = b.imp == nullptr ? nullptr : b.imp + g.col;
  const uint32_t sc = g.sc;
  // The definition's sum, in element order; from bf16 rows the group is widened into a
  // per-thread buffer the first time a decision needs it (near ties are rare).
  thread_local std::vector<float> wide;
  auto exact_of = [&](size_t k) {
    if (xg == nullptr) {
      wide.resize(n);
      const uint16_t* rg = reinterpret_cast<const uint16_t*>(b.raw) + gi * n;
      for (size_t j = 0; j < n; ++j) wide[j] = BF16ToF32(rg[j]);
      xg = wide.data();
    }
    return ErrorF32(GroupErrorScalar(b, xg, ig, n, {g.S[k], g.Z == nullptr ? 0.0f : g.Z[k]}));
  };
  CertifiedBest best;
  best.blo = best.bhi = b.best[gi];
  // Step k's decision from its full f32 sum p (imatrix_mse_certified.cc's step).
  auto step = [&](size_t k, double p) {
    const uint32_t bit = 1u << (b.i0 + static_cast<int>(k));
    const bool certify = !(sc >> k & 1u);
    if (certify) {
      if (best.bk != SIZE_MAX && g.S[k] == g.S[best.bk] &&
          (g.Z == nullptr || g.Z[k] == g.Z[best.bk])) {
        return;  // the best step's parameters: the same error, and the earlier stays
      }
      if (g.TOP[k] >= best.bhi) return;  // one term at or above the best already
    }
    DecideStep(best, k, bit, certify, p, lo_f, hi_f, exact_of);
  };

  // Step 0, then the steps summed already (steps 1 .. j, in order): step() is the definition's
  // decision from a step's f32 sum, whoever summed it.
  step(0, g.p0);
  for (uint32_t lm = g.pre; lm != 0; lm &= lm - 1) {
    const size_t k = static_cast<size_t>(__builtin_ctz(lm));
    step(k, g.ps[k]);
  }
  const uint32_t pre = g.pre | 1u;
  // The later steps that may still improve: one term below the best after those (the best
  // only decreases; t >= bhi exactly when t >= CeilF32(bhi)), and those only the definition
  // takes.
  const __m256 tb = _mm256_set1_ps(CeilF32(best.bhi));
  uint32_t ruled = 0;
  for (size_t h = 0; h < sv; ++h) {
    ruled |= static_cast<uint32_t>(_mm256_movemask_ps(
                 _mm256_cmp_ps(_mm256_load_ps(g.TOP + 8 * h), tb, _CMP_GE_OQ)))
             << (8 * h);
  }
  const uint32_t live = ((~ruled | sc) & step_bits) & ~pre;
  alignas(32) float acc0[kSteps * 8];
  // The live steps' first vectors (in step order also at fc, for their lane sums eight at a
  // time: FirstRuled).
  alignas(32) float fc[kSteps * 8];
  const uint32_t live_c = live & ~sc;
  size_t nl = 0;
  for (uint32_t lm = live_c; lm != 0; lm &= lm - 1, ++nl) {
    const size_t k = static_cast<size_t>(__builtin_ctz(lm));
    const __m256 a = first_vecs(k);
    _mm256_store_ps(acc0 + 8 * k, a);
    _mm256_store_ps(fc + 8 * nl, a);
  }
  // Those the first vectors rule out (bit i: the i-th live step); the others deposited back
  // at their steps' bits (PDEP), with the steps only the definition takes.
  const uint32_t ruled_c = FirstRuled(fc, nl, lo_f, best.bhi);
  const uint32_t live2 = (live & sc) | _pdep_u32(~ruled_c, live_c);
  double PS[kSteps];
  sum_rest(live2 & ~sc, acc0, PS);
  for (uint32_t lm = live2; lm != 0; lm &= lm - 1) {
    const size_t k = static_cast<size_t>(__builtin_ctz(lm));
    step(k, sc >> k & 1u ? 0.0 : PS[k]);
  }
  if (b.exact_best && !best.exact) best.blo = exact_of(best.bk);
  b.best[gi] = best.blo;
  b.masks[gi] |= best.mask;
  return best.mask;
}

// calculate_qparams, asymmetric, of bf16 weights, lane by lane (imatrix_mse-inl.h ParamsVec's
// operations; intq::internal::ComputeParams), from each lane's step range mn, mx (bf16
// values): lo = min(mn, 0), hi = max(mx, 0); s = RNE_bf16(RNE_bf16(hi - lo) / bit_range);
// zp = RNE_bf16(qmin - RNE_bf16(lo / s)) with the unguarded s, clamped to [qmin, qmax] unless
// NaN, rounded half to even (NaN -> 0); then s = 0 -> eps(bf16); and r = f32(1 / s) of the
// guarded s. A zero's sign may differ from ComputeParams' (std::min / std::max keep their
// first argument): no parameter sees it (ParamsVec's comment). (Why two divisions and not
// products with reciprocals: bench/README.md, branch imx-asym.)
struct AsymConsts {
  __m256 range, qlo, qhi;
};

QUENCH_IMX_AVX2 inline AsymConsts MakeAsymConsts(int qmin, int qmax) {
  return {_mm256_set1_ps(static_cast<float>(qmax - qmin)),
          _mm256_set1_ps(static_cast<float>(qmin)), _mm256_set1_ps(static_cast<float>(qmax))};
}

QUENCH_IMX_AVX2 inline void AsymParams(const AsymConsts& k, __m256 mn, __m256 mx, __m256* s_out,
                                       __m256* r_out, __m256* z_out) {
  using avx2::RoundBf16;
  const __m256 zero = _mm256_setzero_ps();
  const __m256 lo = _mm256_min_ps(mn, zero), hi = _mm256_max_ps(mx, zero);
  const __m256 s = RoundBf16(_mm256_div_ps(RoundBf16(_mm256_sub_ps(hi, lo)), k.range));
  const __m256 zq = RoundBf16(_mm256_sub_ps(k.qlo, RoundBf16(_mm256_div_ps(lo, s))));
  const __m256 magic = _mm256_set1_ps(12582912.0f);  // RoundInt: |zq| <= 8 after the clamp
  const __m256 zc = _mm256_sub_ps(
      _mm256_add_ps(_mm256_min_ps(_mm256_max_ps(zq, k.qlo), k.qhi), magic), magic);
  *z_out = _mm256_andnot_ps(_mm256_cmp_ps(zq, zq, _CMP_UNORD_Q), zc);
  const __m256 guarded =
      _mm256_blendv_ps(s, _mm256_set1_ps(intq::internal::ScaleEps(DType::kBF16)),
                       _mm256_cmp_ps(s, zero, _CMP_EQ_OQ));
  *s_out = guarded;
  *r_out = _mm256_div_ps(_mm256_set1_ps(1.0f), guarded);
}

#endif  // QUENCH_IMX_AVX2_X86

}  // namespace quench::calib::internal::imx_avx2

#endif  // QUENCH_CALIB_IMATRIX_MSE_INT_AVX2_SHARED_H_
