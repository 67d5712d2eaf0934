// The imatrix_mse certified search for symmetric int codes of bf16 weights on AVX2
// (imatrix_mse_int_avx2.h). The search is imatrix_mse_certified.cc's, step for step and
// decision for decision (its comment has the bound and why each rule is exact), in the
// batched shape of the AVX-512 BF16 kernel (imatrix_mse_int_bf16.cc); what differs is how a
// vector of terms is computed. Per 8 elements, from each element's |x| and its clamp bound h
// (qmax for x >= 0, -qmin for x < 0), both stored once per group:
//  - by symmetry the term of x is the term of |x| with the bound h: RNE_bf16, the clamp and
//    round half to even are odd functions, r > 0, so q(x) = -q(|x|) for x < 0, clamped at -qmin
//    instead of qmax; dq = RNE_bf16(q * s) is odd in q; |dq - x| = |T[|q|] - |x||;
//  - t = |x| * r with r = f32(1 / s): RNE_bf16(t) is the definition's RNE_bf16(x / s)
//    (QuotientBf16 in imatrix_mse-inl.h has the proof for 2^-100 <= s <= 2^100; other steps go
//    to the definition);
//  - c = min(t, h) before the bf16 rounding: RNE_bf16 is monotone and h is a bf16 value, so
//    min(RNE_bf16(t), h) = RNE_bf16(min(t, h)) (the definition clamps after it);
//  - RNE_bf16(c) by rounding c's bits half up: (bits + 0x8000) with the low 16 bits cleared
//    (a carry into the exponent is the next binade's bf16 value, as RNE's). Half up and half
//    to even differ only on a midpoint between two bf16 values, and c is never one: the
//    bounds h are bf16 values, and t is within 2^-22 relative of x / s, which QuotientBf16's
//    proof puts more than 2^-17 relative from every midpoint (for |x / s| < 2^-120 every
//    rounding gives the code 0);
//  - round half to even by adding 1.5 * 2^23 (imatrix_mse-inl.h RoundInt): 0 <= v <= 8, so
//    the sum's low 4 bits are |q|;
//  - dq from the step's table T[j] = RNE_bf16(j * s), j = 0..7, by VPERMPS on the low 3 bits
//    of |q|; |q| = 8 (4-bit codes, x < 0) selects RNE_bf16(8 s) by bit 3 (shifted to the sign
//    bit for VBLENDVPS);
//  - e = ((d * d) * |d|) * imp (norm 3) or (d * d) * imp with d = T[|q|] - |x|, the
//    definition's f32 products one at a time (d * d = |d| * |d|; no contraction, switched off
//    below, and no FMA in the target).
// 14 vector operations per 8 elements for norm 3 (12 for norm 2; 2 fewer with 3-bit codes)
// against about 22 in the Highway AVX2 kernel, which computes dq by a product and a second
// bf16 rounding.

// The definition rounds every product and difference: no contraction into FMAs.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "calib/imatrix_mse_int_avx2.h"

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "calib/imatrix_mse_decide.h"
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

void SetIntAvx2Enabled(bool enabled) { g_enabled.Set(enabled); }

bool IntAvx2Enabled() { return g_enabled.on(); }

bool IntAvx2Available() {
#ifdef QUENCH_IMX_AVX2_X86
  return cpu::HasAvx2();
#else
  return false;
#endif
}

bool IntAvx2Handles(const Block& b) {
  if (!IntAvx2Enabled() || !IntAvx2Available() || IntBf16Handles(b)) return false;
  return b.format == ImatrixFormat::kInt && b.dtype == DType::kBF16 && b.symmetric &&
         (b.norm == 3.0 || b.norm == 2.0) && b.layout.qmin < 0 && b.layout.qmax > 0 &&
         b.layout.qmin >= -8 && b.layout.qmax <= 7 && b.group % 32 == 0 &&
         b.group <= (size_t{1} << 20) && b.i0 >= 0 && b.i1 < static_cast<int>(kSteps) &&
         b.i0 <= b.i1;
}

#ifdef QUENCH_IMX_AVX2_X86
namespace {

using quench::avx2::RoundBf16;  // c10's RNE_bf16 of f32 lanes
using imx_avx2::DecideGroup;
using imx_avx2::KeyOfImp;
using imx_avx2::kBatch;
using imx_avx2::kFirstVecs;
using imx_avx2::LaneMaxI32;
using imx_avx2::LaneSum;

// The constants of a block's terms.
struct Consts {
  __m256 magic;    // 1.5 * 2^23
  __m256i half;    // half of bf16's ulp in f32's bits (0x8000)
  __m256i hi16;    // bf16's bits of an f32 (0xFFFF0000)
  __m256 absmask;  // all but the sign bit
  __m256 codes;    // lane j: j, as f32 (the table's codes |q|)
  __m256 hpos, hneg;  // the clamp bounds qmax (x >= 0) and -qmin (x < 0)
  float top_code;     // -qmin, the code of RNE_bf16(top_code * s) (T8)
};

QUENCH_IMX_AVX2 inline Consts MakeConsts(const Block& b) {
  Consts c;
  c.magic = _mm256_set1_ps(12582912.0f);
  c.half = _mm256_set1_epi32(0x8000);
  c.hi16 = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  c.absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  c.codes = _mm256_setr_ps(0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f);
  c.hpos = _mm256_set1_ps(static_cast<float>(b.layout.qmax));
  c.hneg = _mm256_set1_ps(static_cast<float>(-b.layout.qmin));
  c.top_code = static_cast<float>(-b.layout.qmin);
  return c;
}

// A step's table: lanes j = 0..7 hold RNE_bf16(j * s), t8 (every lane) RNE_bf16(-qmin * s)
// (the products imatrix_mse-inl.h CodeTable forms, code by code). -qmin is a power of two
// and s a bf16 value in [2^-100, 2^100] (the steps the kernel certifies), so -qmin * s is
// exact and already a bf16 value.
struct Table {
  __m256 t, t8;
};

QUENCH_IMX_AVX2 inline Table MakeTable(const Consts& c, float s) {
  return {RoundBf16(_mm256_mul_ps(c.codes, _mm256_set1_ps(s))), _mm256_set1_ps(c.top_code * s)};
}

// The terms of 8 elements from their |x| (xa), clamp bounds (hv) and importance (im) at the
// step with reciprocal r and table tab (the file comment has why each operation is the
// definition's). W: 4-bit codes (-qmin = 8, which the table's 3-bit index does not reach).
template <int N, bool W>
QUENCH_IMX_AVX2 inline __m256 Terms8(const Consts& c, __m256 xa, __m256 hv, __m256 im,
                                     __m256 r, const Table& tab) {
  const __m256 cl = _mm256_min_ps(_mm256_mul_ps(xa, r), hv);
  const __m256 v = _mm256_castsi256_ps(
      _mm256_and_si256(_mm256_add_epi32(_mm256_castps_si256(cl), c.half), c.hi16));
  const __m256i q = _mm256_castps_si256(_mm256_add_ps(v, c.magic));
  __m256 dq = _mm256_permutevar8x32_ps(tab.t, q);
  if constexpr (W) {
    dq = _mm256_blendv_ps(dq, tab.t8, _mm256_castsi256_ps(_mm256_slli_epi32(q, 28)));
  }
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

// The steps after step 0 summed in the prelude: steps 1 and 2 are summed in full for most
// groups of llama's layer 0 (bench/README.md, branch imx-asym2).
constexpr size_t kPreSteps = 2;

// One group as Prepare leaves it for Decide: its |x|, clamp bounds and importance reordered
// (each of the first 8 positions holding the element of largest key among the elements at
// that position mod 8); every step's scale S and reciprocal R, the
// steps only the definition takes (sc), the term of the element of largest key at every step
// (TOP), and step 0's f32 sum (p0, when summed), and steps 1 .. kPreSteps' (pre, ps).
struct Prepared {
  alignas(32) float S[kSteps];
  alignas(32) float R[kSteps];
  alignas(32) float TOP[kSteps];
  float* xa;
  float* hv;
  float* ie;
  uint32_t sc;
  float amax;  // the group's largest magnitude
  int top;     // the position of its element of largest key
  double p0;
  uint32_t pre;              // the steps after 0 summed in the prelude (steps 1 .. kPreSteps)
  double ps[kPreSteps + 1];  // their f32 sums (ps[k]: step k's)
  size_t col;   // the group's first column
  bool finite;  // no Inf or NaN (else nothing below the first pass is set)
};

// The search's fixed inputs and constants.
struct Ctx : imx_avx2::BlockCtx {
  Consts c;
};

// A step's f32 sum of terms over vectors v0..nv of a prepared group, added to acc (two
// accumulators: any order is covered by the bound).
template <int N, bool W>
QUENCH_IMX_AVX2 inline __m256 SumVecs(const Ctx& x, const Prepared& g, const Table& tab,
                                      __m256 r, size_t v0, __m256 acc) {
  __m256 acc1 = _mm256_setzero_ps();
  size_t v = v0;
  for (; v + 2 <= x.nv; v += 2) {
    const size_t o = 8 * v;
    acc = _mm256_add_ps(acc, Terms8<N, W>(x.c, _mm256_load_ps(g.xa + o), _mm256_load_ps(g.hv + o),
                                          _mm256_load_ps(g.ie + o), r, tab));
    acc1 = _mm256_add_ps(
        acc1, Terms8<N, W>(x.c, _mm256_load_ps(g.xa + o + 8), _mm256_load_ps(g.hv + o + 8),
                           _mm256_load_ps(g.ie + o + 8), r, tab));
  }
  for (; v < x.nv; ++v) {
    const size_t o = 8 * v;
    acc = _mm256_add_ps(acc, Terms8<N, W>(x.c, _mm256_load_ps(g.xa + o), _mm256_load_ps(g.hv + o),
                                          _mm256_load_ps(g.ie + o), r, tab));
  }
  return _mm256_add_ps(acc, acc1);
}

// Group gi's prelude in three parts, each run for every group of a batch before the next
// (Search), with no data-dependent branch but the finite and step-0 guards, so that the
// groups' independent work overlaps (the parameters' and bounds' chains of roundings and
// divisions are long). PreparePass: one pass that stores the group as |x|, bounds and
// importance and finds the largest magnitude (its range; Inf or NaN) and each position's
// element of largest key, which is then swapped into the first vector.
QUENCH_IMX_AVX2 inline void PreparePass(const Ctx& x, size_t gi, Prepared* out) {
  const Block& b = *x.b;
  const size_t nv = x.nv;
  const imx_avx2::GroupRows rows(b, gi, x.n);
  auto load_x = [&](size_t v) { return rows.Load(v); };
  const size_t col = out->col;
  const float* im = b.imp == nullptr ? x.ones : b.imp + col;
  const int32_t* ik = x.ik + col;
  const Consts& c = x.c;
  // One pass: the group stored as |x|, the clamp bound of x's sign and importance, in
  // element order; the largest magnitude pattern (mag), and per position (mod 8) the element
  // of largest key (its vector in `at`).
  imx_avx2::TopKeys tk(_mm256_and_ps(load_x(0), c.absmask), ik);
  // The outputs' pointers held here: the vector stores may alias *out as far as the
  // compiler knows, which would reload them every vector.
  float* const oxa = out->xa;
  float* const ohv = out->hv;
  float* const oie = out->ie;
  for (size_t v = 0; v < nv; ++v) {
    const __m256 xv = load_x(v), iv = _mm256_loadu_ps(im + v * 8);
    const __m256 xa = _mm256_and_ps(xv, c.absmask);
    tk.Add(xa, ik + v * 8);
    _mm256_store_ps(oxa + 8 * v, xa);
    _mm256_store_ps(ohv + 8 * v, _mm256_blendv_ps(c.hpos, c.hneg, xv));
    _mm256_store_ps(oie + 8 * v, iv);
  }
  // Inf or NaN: a magnitude's pattern at or above Inf's (the rows are read only here; the
  // search returns false for the block, as AllFinite would have).
  out->finite = tk.Finite();
  if (!out->finite) return;
  const __m256i top = tk.top, mag = tk.mag;
  // Each position's element of largest key swapped into the first vector.
  alignas(32) int32_t at_of[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(at_of), tk.at);
  for (size_t p = 0; p < 8; ++p) {
    const size_t j = 8 * static_cast<size_t>(at_of[p]) + p;
    std::swap(out->xa[p], out->xa[j]);
    std::swap(out->hv[p], out->hv[j]);
    std::swap(out->ie[p], out->ie[j]);
  }
  out->amax = std::bit_cast<float>(_mm256_cvtsi256_si32(LaneMaxI32(mag)));
  // The group's element of largest key: a position of the first reordered vector.
  const uint32_t at_top = static_cast<uint32_t>(
      _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(top, LaneMaxI32(top)))));
  out->top = __builtin_ctz(at_top | 0x100u);
}

// PrepareSteps: every step's parameters and the one-term bound at every step
// (imx_avx2::SymPrepareSteps, which has why one product a step gives the scale).
template <int N>
QUENCH_IMX_AVX2 inline void PrepareSteps(const Ctx& x, size_t gi, Prepared* out) {
  imx_avx2::SymPrepareSteps<N>(x, x.c.magic, x.c.absmask, gi, out);
}

// PrepareStep0: step 0's sum (its decision comes first in Decide); then steps 1 .. kPreSteps'
// sums in order, up to the first step that is not the block's, only the definition's, or
// ruled out by its one term against the best before step 0 (then also against every later
// best: the best only decreases), which Decide then takes as any other step. Summed here, in
// the batch's branch-free work, and decided before the other steps' one-term checks, which
// are then made against their best (DecideGroup's pre). Each step's vector of partial sums
// goes to acc + 8 kBatch k (zero where not summed), lane-summed for the whole batch by
// PreSums: a lane sum after each sum leaves the core waiting on the sum's last additions
// (bench/README.md, branches imx-asym3 and imx-int4s).
template <int N, bool W>
QUENCH_IMX_AVX2 inline void PrepareStep0(const Ctx& x, size_t gi, Prepared* out, float* acc) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 a = zero;
  if (!(out->sc & 1u) && !(out->TOP[0] >= x.b->best[gi])) {
    a = SumVecs<N, W>(x, *out, MakeTable(x.c, out->S[0]), _mm256_set1_ps(out->R[0]), 0, zero);
  }
  _mm256_store_ps(acc, a);
  out->pre = 0;
  size_t k = 1;
  for (; k <= kPreSteps; ++k) {
    if (!(x.step_bits >> k & 1u) || (out->sc >> k & 1u) || out->TOP[k] >= x.b->best[gi]) break;
    _mm256_store_ps(acc + 8 * kBatch * k,
                    SumVecs<N, W>(x, *out, MakeTable(x.c, out->S[k]),
                                  _mm256_set1_ps(out->R[k]), 0, zero));
    out->pre |= 1u << k;
  }
  for (; k <= kPreSteps; ++k) _mm256_store_ps(acc + 8 * kBatch * k, zero);  // not summed
}

// Group gi's decisions (DecideGroup: imatrix_mse_certified.cc's SearchCertified<bf16,
// kIntSym, N, table>, its steps in the same order with the same decisions).
template <int N, bool W>
QUENCH_IMX_AVX2 inline uint32_t Decide(const Ctx& x, size_t gi, const Prepared& g) {
  Table tbl[kSteps];
  auto first_vecs = [&](size_t k) {
    tbl[k] = MakeTable(x.c, g.S[k]);
    const __m256 r = _mm256_set1_ps(g.R[k]);
    __m256 a = Terms8<N, W>(x.c, _mm256_load_ps(g.xa), _mm256_load_ps(g.hv),
                            _mm256_load_ps(g.ie), r, tbl[k]);
    for (size_t v = 1; v < kFirstVecs; ++v) {
      a = _mm256_add_ps(a, Terms8<N, W>(x.c, _mm256_load_ps(g.xa + 8 * v),
                                        _mm256_load_ps(g.hv + 8 * v),
                                        _mm256_load_ps(g.ie + 8 * v), r, tbl[k]));
    }
    return a;
  };
  auto sum_rest = [&](uint32_t mask, const float* acc0, double* PS) {
    for (uint32_t lm = mask; lm != 0; lm &= lm - 1) {
      const size_t k = static_cast<size_t>(__builtin_ctz(lm));
      PS[k] = LaneSum(SumVecs<N, W>(x, g, tbl[k], _mm256_set1_ps(g.R[k]), kFirstVecs,
                                    _mm256_load_ps(acc0 + 8 * k)));
    }
  };
  return DecideGroup(*x.b, gi, x.n, x.step_bits, x.sv, x.lo_f, x.hi_f,
                     {g.S, nullptr, g.TOP, g.sc, g.p0, g.col, g.pre, g.ps}, first_vecs, sum_rest);
}

// The search over the block's groups, kBatch at a time: every group of a batch prepared
// (independent, branch-free work that overlaps), then each decided. False at a group with an
// Inf or NaN.
template <int N, bool W>
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
    for (size_t j = 0; j < nb; ++j) PrepareSteps<N>(x, g0 + j, &prep[j]);
    alignas(32) float acc[8 * kBatch * (kPreSteps + 1)];
    for (size_t j = 0; j < nb; ++j) PrepareStep0<N, W>(x, g0 + j, &prep[j], acc + 8 * j);
    for (size_t j = nb; j < kBatch; ++j) {
      for (size_t k = 0; k <= kPreSteps; ++k) {
        _mm256_store_ps(acc + 8 * (kBatch * k + j), _mm256_setzero_ps());
      }
    }
    imx_avx2::PreSums<kPreSteps>(acc, prep);
    for (size_t j = 0; j < nb; ++j) any |= Decide<N, W>(x, g0 + j, prep[j]);
  }
  *b.improved |= any;
  return true;
}

template <int N, bool W>
QUENCH_IMX_AVX2 void Terms(const Block& b, float scale, const float* x, const float* imp,
                           size_t n, float* terms) {
  const Consts c = MakeConsts(b);
  const Table tab = MakeTable(c, scale);
  const __m256 r = _mm256_set1_ps(1.0f / scale);
  for (size_t j = 0; j < n; j += 8) {
    const __m256 xv = _mm256_loadu_ps(x + j);
    _mm256_storeu_ps(terms + j,
                     Terms8<N, W>(c, _mm256_and_ps(xv, c.absmask),
                                  _mm256_blendv_ps(c.hpos, c.hneg, xv),
                                  _mm256_loadu_ps(imp + j), r, tab));
  }
}

}  // namespace
#endif  // QUENCH_IMX_AVX2_X86

bool IntAvx2Terms(const Block& b, float scale, const float* x, const float* imp, size_t n,
                  float* terms) {
  if (!IntAvx2Handles(b) || n % 8 != 0 || !(scale >= 0x1p-100f && scale <= 0x1p100f)) {
    return false;
  }
#ifdef QUENCH_IMX_AVX2_X86
  const bool w = b.layout.qmin == -8;
  if (b.norm == 3.0) {
    w ? Terms<3, true>(b, scale, x, imp, n, terms) : Terms<3, false>(b, scale, x, imp, n, terms);
  } else {
    w ? Terms<2, true>(b, scale, x, imp, n, terms) : Terms<2, false>(b, scale, x, imp, n, terms);
  }
  return true;
#else
  (void)x;
  (void)imp;
  (void)terms;
  return false;
#endif
}

bool SearchIntAvx2(const Block& b) {
#ifdef QUENCH_IMX_AVX2_X86
  const bool w = b.layout.qmin == -8;
  if (b.norm == 3.0) return w ? Search<3, true>(b) : Search<3, false>(b);
  return w ? Search<2, true>(b) : Search<2, false>(b);
#else
  (void)b;
  return false;
#endif
}

}  // namespace quench::calib::internal
