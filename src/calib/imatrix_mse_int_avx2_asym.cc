// The imatrix_mse certified search for asymmetric int codes of bf16 weights on AVX2
// (imatrix_mse_int_avx2_asym.h). The search is imatrix_mse_certified.cc's, step for step and
// decision for decision (its comment has the bound and why each rule is exact), in the
// batched shape of the symmetric AVX2 kernel (imatrix_mse_int_avx2.cc: a one-pass prelude
// that also finds an Inf or NaN, every step's parameters in lanes across steps, the one-term
// bound of the element of largest key, the live steps' first checks together, DecideStep);
// what differs is the term and the parameters. The definition (imatrix_mse_kernel.h,
// intq::internal::QuantizeValue) with scale s and zero point zp:
//   v = RNE_bf16(RNE_bf16(x / s) + zp), q = round half to even of clamp(v, qmin, qmax),
//   dq = RNE_bf16((q - zp) * s).
// Per 8 elements, from x and imp, at a step with r = f32(1 / s):
//  - u = RNE_bf16(x * r) is the definition's RNE_bf16(x / s) (QuotientBf16 in
//    imatrix_mse-inl.h has the proof for 2^-100 <= s <= 2^100; other steps go to the
//    definition), rounded half up on the bits ((bits + 0x8000) & 0xFFFF0000, the magnitude
//    half up): the same proof puts x * r more than 2^-17 relative from every bf16 midpoint
//    where the code depends on it. For |x / s| < 2^-120 both roundings are below 2^-119 in
//    magnitude; u + zp then rounds to zp when zp != 0, and is below 2^-119 (code 0) when
//    zp = 0, whichever u it was. For |x / s| > 2^20 both clamp;
//  - y = u + zp in f32, the definition's addition (its RNE_bf16 follows);
//  - c = clamp(y, qmin, qmax) before that RNE_bf16: qmin and qmax are bf16 values and RNE_bf16
//    is monotone, so clamp(RNE_bf16(y)) = RNE_bf16(clamp(y));
//  - RNE_bf16(c) (RneBf16M, which the step tables and one-term bounds use) by adding and
//    subtracting M = sign(c) 1.5 2^(e + 16), e the exponent of c (c's sign and exponent bits,
//    plus 16 in the exponent field and the top mantissa bit): |c + M| lies in
//    [2^(e + 16), 2^(e + 17)), whose f32 ulp 2^(e - 7) is bf16's ulp in c's binade, so the f32
//    addition rounds c to bf16's grid, ties to even (M is an even multiple of that ulp, so the
//    sum's last bit is the rounded c's), a carry to 2^(e + 1) as RNE_bf16 carries; the
//    subtraction is exact (Sterbenz). A subnormal c (exponent field 0) is rounded to a grid of
//    2^-134 instead of bf16's 2^-133: code 0 either way. Half up would not do here: y is a
//    bf16 midpoint for some u and zp (u = 0.515625, zp = 4: y = 4.515625, RNE_bf16 4.5, code
//    4; half up 4.53125, code 5);
//  - in the terms, the code's RNE_bf16(c) is instead f32(c * 65537) - c * 65536, 3 operations
//    against RneBf16M's 4, equal to it up to values that round to the same code: M' =
//    c * 2^16 is exact and a multiple of G = 2^(e - 7) (bf16's ulp in c's binade), with M' / G
//    c's 24-bit significand; f32(c * 65537) = f32(M' + c) rounds to G's grid while
//    |c| (1 + 2^-16) < 2^(e + 1), ties to even (at a tie c's low 16 bits are 0x8000, so its
//    significand, M' / G, is even and the sum's parity is the rounded c's), and the
//    subtraction is exact (Sterbenz): RNE_bf16(c). Above that (c within 2^-16 relative of
//    2^(e + 1)) the sum rounds to a grid of 2G, near an integer or 0.5 whose code does not
//    change. tests/test_imatrix_int_avx2_asym.cc checks it for every f32 c in [-8, 7] (the
//    code from this form against the bits' RNE_bf16 rounded to an integer);
//  - q = VCVTPS2DQ(RNE_bf16(c)): round half to even in the default rounding mode (which
//    RoundInt's addition relies on too); -8 <= q <= 7;
//  - dq from the step's table of the 16 codes T[q mod 16] = RNE_bf16((q - zp) * s), held as two
//    vectors (codes 0..7 and -8..-1) read by VPERMPS on q's low 3 bits, q's sign choosing
//    (VBLENDVPS). (q - zp) * s is exact in f32 (|q - zp| <= 15 times a bf16 value in
//    [2^-100, 2^100]: at most 12 significant bits), so the table holds the definition's
//    products and roundings;
//  - e = ((d * d) * |d|) * imp (norm 3) or (d * d) * imp with d = dq - x, the definition's f32
//    products one at a time (d * d = |d| * |d|; no contraction, switched off below, and no
//    FMA in the target).
// 19 vector operations per 8 elements for norm 3 (the sum's addition included) against ~30
// in the Highway AVX2 kernel, which rounds with longer sequences and computes dq by a product
// and a third rounding. Steps whose zero point is 0 (a large share of the summed ones:
// bench/README.md, branch imx-asym) skip the addition and the second rounding in their full
// sums (u is a bf16 value already): 15 operations.

// The definition rounds every product and difference: no contraction into FMAs.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "calib/imatrix_mse_int_avx2_asym.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <utility>
#include <vector>

#include "calib/imatrix_mse_decide.h"
#include "calib/imatrix_mse_int_avx2.h"
#include "calib/imatrix_mse_int_avx2_shared.h"
#include "schemes/avx2.h"
#include "schemes/float_formats.h"
#include "schemes/int_shared.h"

namespace quench::calib::internal {

bool IntAvx2AsymHandles(const Block& b) {
  if (!IntAvx2Enabled() || !IntAvx2Available()) return false;
  return b.format == ImatrixFormat::kInt && b.dtype == DType::kBF16 && !b.symmetric &&
         (b.norm == 3.0 || b.norm == 2.0) && b.layout.qmin < 0 && b.layout.qmax > 0 &&
         b.layout.qmin >= -8 && b.layout.qmax <= 7 && b.group % 32 == 0 &&
         b.group <= (size_t{1} << 20) && b.i0 >= 0 &&
         b.i1 < static_cast<int>(imx_avx2::kSteps) && b.i0 <= b.i1;
}

#ifdef QUENCH_IMX_AVX2_X86
namespace {

using quench::avx2::RoundBf16;  // c10's RNE_bf16 of f32 lanes
using imx_avx2::AsymConsts;
using imx_avx2::AsymParams;
using imx_avx2::DecideGroup;
using imx_avx2::KeyOfImp;
using imx_avx2::kBatch;
using imx_avx2::kFirstVecs;
using imx_avx2::kSteps;
using imx_avx2::LaneMaxI32;
using imx_avx2::LaneSum;

// The smallest and the largest of a vector's lanes (finite values).
QUENCH_IMX_AVX2 inline float LaneMin(__m256 v) {
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_min_ss(m, _mm_movehdup_ps(m)));
}
QUENCH_IMX_AVX2 inline float LaneMax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

// The constants of a block's terms.
struct Consts {
  __m256 magic;       // 1.5 * 2^23 (RoundInt)
  __m256i half;       // half of bf16's ulp in f32's bits (0x8000)
  __m256i hi16;       // bf16's bits of an f32 (0xFFFF0000)
  __m256 absmask;     // all but the sign bit
  __m256i signexp;    // an f32's sign and exponent bits (0xFF800000)
  __m256i up16;       // 16 more in the exponent field and the top mantissa bit (0x08400000)
  __m256 qlo, qhi;    // the clamp bounds qmin, qmax
  __m256 codes_lo;    // lane j: the code j (the table's first vector)
  __m256 codes_hi;    // lane j: the code j - 8 (its second)
  __m256 times_65536, times_65537;  // 2^16 and 2^16 + 1 (the code's second rounding)
};

QUENCH_IMX_AVX2 inline Consts MakeConsts(const Block& b) {
  Consts c;
  c.magic = _mm256_set1_ps(12582912.0f);
  c.half = _mm256_set1_epi32(0x8000);
  c.hi16 = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  c.absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  c.signexp = _mm256_set1_epi32(static_cast<int>(0xFF800000u));
  c.up16 = _mm256_set1_epi32(0x08400000);
  c.qlo = _mm256_set1_ps(static_cast<float>(b.layout.qmin));
  c.qhi = _mm256_set1_ps(static_cast<float>(b.layout.qmax));
  c.codes_lo = _mm256_setr_ps(0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f);
  c.codes_hi = _mm256_setr_ps(-8.f, -7.f, -6.f, -5.f, -4.f, -3.f, -2.f, -1.f);
  c.times_65536 = _mm256_set1_ps(65536.0f);
  c.times_65537 = _mm256_set1_ps(65537.0f);
  return c;
}

// RNE_bf16 of f32 lanes v by (v + M) - M, M = sign(v) 1.5 2^(e + 16) (the file comment has
// why): for v = 0 and normal v below 2^111 in magnitude (M's exponent stays finite).
QUENCH_IMX_AVX2 inline __m256 RneBf16M(const Consts& c, __m256 v) {
  const __m256 m = _mm256_castsi256_ps(
      _mm256_add_epi32(_mm256_and_si256(_mm256_castps_si256(v), c.signexp), c.up16));
  return _mm256_sub_ps(_mm256_add_ps(v, m), m);
}

// A step as its terms take it: r = f32(1 / s) and zp in every lane, and the table of dq
// (lo lane j: the code j's RNE_bf16((j - zp) s), hi lane j: the code j - 8's; j - zp is an
// exact small integer in f32, the product exact, the file comment says why).
struct Step {
  __m256 r, zp, lo, hi;
};

QUENCH_IMX_AVX2 inline Step MakeStep(const Consts& c, float s, float r, float zp) {
  const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(zp);
  // |j - zp| <= 15 times s in [2^-100, 2^100]: 0 or normal below 2^104 (RneBf16M).
  return {_mm256_set1_ps(r), vz, RneBf16M(c, _mm256_mul_ps(_mm256_sub_ps(c.codes_lo, vz), vs)),
          RneBf16M(c, _mm256_mul_ps(_mm256_sub_ps(c.codes_hi, vz), vs))};
}

// The terms of 8 elements x with importance im at step st (the file comment has why each
// operation is the definition's; the code's second rounding in its product form). Z0: a
// step whose zero point is 0, where u + zp = u (up to the sign of a zero) is already a bf16
// value, so that neither the addition nor the second rounding changes it: 4 operations fewer.
template <int N, bool Z0 = false>
QUENCH_IMX_AVX2 inline __m256 Terms8(const Consts& c, __m256 x, __m256 im, const Step& st) {
  const __m256i t = _mm256_castps_si256(_mm256_mul_ps(x, st.r));
  const __m256 u = _mm256_castsi256_ps(_mm256_and_si256(_mm256_add_epi32(t, c.half), c.hi16));
  __m256i q;
  if constexpr (Z0) {
    q = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(u, c.qlo), c.qhi));
  } else {
    const __m256 y = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(u, st.zp), c.qlo), c.qhi);
    q = _mm256_cvtps_epi32(
        _mm256_sub_ps(_mm256_mul_ps(y, c.times_65537), _mm256_mul_ps(y, c.times_65536)));
  }
  const __m256 dq = _mm256_blendv_ps(_mm256_permutevar8x32_ps(st.lo, q),
                                     _mm256_permutevar8x32_ps(st.hi, q), _mm256_castsi256_ps(q));
  const __m256 d = _mm256_sub_ps(dq, x);
  __m256 e = _mm256_mul_ps(d, d);
  if constexpr (N == 3) e = _mm256_mul_ps(e, _mm256_and_ps(d, c.absmask));
  return _mm256_mul_ps(e, im);
}

// One element's term (x and imp in every lane) at 8 steps (lanes: their scales s,
// reciprocals r and zero points zp), with Terms8's roundings (the quotient half up, the
// clamp before the second rounding), the code rounded half to even by 1.5 * 2^23 and
// dq = RNE_bf16((q - zp) * s) by RneBf16M from the exact product. Lanes of steps only the
// definition takes (sc) hold some value never read.
template <int N>
QUENCH_IMX_AVX2 inline __m256 TopTerms(const Consts& c, __m256 x, __m256 im, __m256 s,
                                       __m256 r, __m256 zp) {
  const __m256i t = _mm256_castps_si256(_mm256_mul_ps(x, r));
  const __m256 u = _mm256_castsi256_ps(_mm256_and_si256(_mm256_add_epi32(t, c.half), c.hi16));
  const __m256 y = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(u, zp), c.qlo), c.qhi);
  const __m256 q = _mm256_sub_ps(_mm256_add_ps(RneBf16M(c, y), c.magic), c.magic);
  const __m256 dq = RneBf16M(c, _mm256_mul_ps(_mm256_sub_ps(q, zp), s));
  const __m256 d = _mm256_and_ps(_mm256_sub_ps(dq, x), c.absmask);
  __m256 e = _mm256_mul_ps(d, d);
  if constexpr (N == 3) e = _mm256_mul_ps(e, d);
  return _mm256_mul_ps(e, im);
}

// The steps after step 0 summed in the prelude: steps 1 and 2 are summed in full for most
// groups of llama's layer 0 (bench/README.md, branch imx-asym2).
constexpr size_t kPreSteps = 2;

// One group as Prepare leaves it for Decide: its x and importance reordered (each of the
// first 8 positions holding the element of largest key among the elements at that position
// mod 8); every step's scale S, reciprocal R and zero point Z, the steps only the definition
// takes (sc), the term of the element of largest key at every step (TOP), step 0's f32 sum
// (p0, when summed) and steps 1 .. kPreSteps' (pre, ps).
struct Prepared {
  alignas(32) float S[kSteps];
  alignas(32) float R[kSteps];
  alignas(32) float Z[kSteps];
  alignas(32) float TOP[kSteps];
  float* xs;
  float* ie;
  uint32_t sc;
  uint32_t z0;  // the steps whose zero point is 0
  float m0, M0;  // the group's min and max times expand
  int top;       // the position of its element of largest key
  double p0;
  uint32_t pre;              // the steps after 0 summed in the prelude (steps 1 .. kPreSteps)
  double ps[kPreSteps + 1];  // their f32 sums (ps[k]: step k's)
  size_t col;   // the group's first column
  bool finite;  // no Inf or NaN (else nothing below the first pass is set)
};

// The search's fixed inputs and constants.
struct Ctx : imx_avx2::BlockCtx {
  Consts c;
  AsymConsts k;
};

// A step's f32 sum of terms over vectors v0..nv of a prepared group, added to acc (two
// accumulators: any order is covered by the bound).
template <int N, bool Z0>
QUENCH_IMX_AVX2 inline __m256 SumVecs(const Ctx& x, const Prepared& g, const Step& st,
                                      size_t v0, __m256 acc) {
  __m256 acc1 = _mm256_setzero_ps();
  size_t v = v0;
  for (; v + 2 <= x.nv; v += 2) {
    const size_t o = 8 * v;
    acc = _mm256_add_ps(acc,
                        Terms8<N, Z0>(x.c, _mm256_load_ps(g.xs + o), _mm256_load_ps(g.ie + o), st));
    acc1 = _mm256_add_ps(
        acc1, Terms8<N, Z0>(x.c, _mm256_load_ps(g.xs + o + 8), _mm256_load_ps(g.ie + o + 8), st));
  }
  for (; v < x.nv; ++v) {
    const size_t o = 8 * v;
    acc = _mm256_add_ps(acc,
                        Terms8<N, Z0>(x.c, _mm256_load_ps(g.xs + o), _mm256_load_ps(g.ie + o), st));
  }
  return _mm256_add_ps(acc, acc1);
}

// Group gi's prelude in three parts, each run for every group of a batch before the next
// (Search), with no data-dependent branch but the finite and step-0 guards, so that the
// groups' independent work overlaps: the parameters' and one-term bounds' chains of
// roundings and divisions are long, and run a group at a time they left the core waiting.
// PreparePass: one pass that stores the group's x and importance and finds its min and max,
// its largest magnitude pattern (Inf or NaN) and each position's element of largest key,
// which is then swapped into the first vector.
QUENCH_IMX_AVX2 inline void PreparePass(const Ctx& x, size_t gi, Prepared* out) {
  const Block& b = *x.b;
  const size_t nv = x.nv;
  const imx_avx2::GroupRows rows(b, gi, x.n);
  auto load_x = [&](size_t v) { return rows.Load(v); };
  const size_t col = out->col;
  const float* im = b.imp == nullptr ? x.ones : b.imp + col;
  const int32_t* ik = x.ik + col;
  const Consts& c = x.c;
  // One pass: the group stored in element order; its min and max, the largest magnitude
  // pattern (mag), and per position (mod 8) the element of largest key (its vector in `at`).
  const __m256 x0 = load_x(0);
  imx_avx2::TopKeys tk(_mm256_and_ps(x0, c.absmask), ik);
  __m256 mn = x0, mx = x0;
  // The outputs' pointers held here: the vector stores may alias *out as far as the
  // compiler knows, which would reload them every vector.
  float* const oxs = out->xs;
  float* const oie = out->ie;
  for (size_t v = 0; v < nv; ++v) {
    const __m256 xv = load_x(v), iv = _mm256_loadu_ps(im + v * 8);
    tk.Add(_mm256_and_ps(xv, c.absmask), ik + v * 8);
    mn = _mm256_min_ps(mn, xv);
    mx = _mm256_max_ps(mx, xv);
    _mm256_store_ps(oxs + 8 * v, xv);
    _mm256_store_ps(oie + 8 * v, iv);
  }
  // Inf or NaN: a magnitude's pattern at or above Inf's (the rows are read only here; the
  // search returns false for the block, as AllFinite would have). min and max are then
  // exact (no NaN), up to the sign of a zero, which no parameter sees (ParamsVec's comment).
  out->finite = tk.Finite();
  if (!out->finite) return;
  const __m256i top = tk.top;
  // Each position's element of largest key swapped into the first vector.
  alignas(32) int32_t at_of[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(at_of), tk.at);
  for (size_t p = 0; p < 8; ++p) {
    const size_t j = 8 * static_cast<size_t>(at_of[p]) + p;
    std::swap(out->xs[p], out->xs[j]);
    std::swap(out->ie[p], out->ie[j]);
  }
  // The group's min and max times expand (as MakeTiles), and the position of its element of
  // largest key (in the first reordered vector).
  float m0 = LaneMin(mn), M0 = LaneMax(mx);
  if (b.minmax != nullptr) {  // for the quantize stage (IntRangesKept)
    b.minmax[2 * gi] = m0;
    b.minmax[2 * gi + 1] = M0;
  }
  if (b.expand != 1.0) {
    m0 = Expanded(m0, b.expand, b.dtype);
    M0 = Expanded(M0, b.expand, b.dtype);
  }
  out->m0 = m0;
  out->M0 = M0;
  const uint32_t at_top = static_cast<uint32_t>(
      _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(top, LaneMaxI32(top)))));
  out->top = __builtin_ctz(at_top | 0x100u);
}

// PrepareSteps: every step's parameters (AsymParams: calculate_qparams asymmetric) from
// mn = RNE_bf16(p m0), mx = RNE_bf16(p M0) (StepRange), lanes across steps; the steps whose
// scale QuotientBf16 does not cover (an infinite range, groups of absurd magnitude) only by
// the definition (sc); the steps of zero point 0 (z0); the one-term bound at every step.
template <int N>
QUENCH_IMX_AVX2 inline void PrepareSteps(const Ctx& x, Prepared* out) {
  const Consts& c = x.c;
  const __m256 zero = _mm256_setzero_ps();
  const __m256 vm0 = _mm256_set1_ps(out->m0), vM0 = _mm256_set1_ps(out->M0);
  uint32_t recip_ok = 0, z0 = 0;
  for (size_t h = 0; h < x.sv; ++h) {
    const __m256 p = _mm256_load_ps(x.P + 8 * h);
    __m256 s, r, z;
    AsymParams(x.k, RoundBf16(_mm256_mul_ps(p, vm0)), RoundBf16(_mm256_mul_ps(p, vM0)), &s, &r,
               &z);
    _mm256_store_ps(out->S + 8 * h, s);
    _mm256_store_ps(out->R + 8 * h, r);
    _mm256_store_ps(out->Z + 8 * h, z);
    const __m256 ok = _mm256_and_ps(_mm256_cmp_ps(s, _mm256_set1_ps(0x1p-100f), _CMP_GE_OQ),
                                    _mm256_cmp_ps(s, _mm256_set1_ps(0x1p100f), _CMP_LE_OQ));
    recip_ok |= static_cast<uint32_t>(_mm256_movemask_ps(ok)) << (8 * h);
    z0 |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(z, zero, _CMP_EQ_OQ)))
          << (8 * h);
  }
  out->sc = ~recip_ok & x.step_bits;
  out->z0 = z0;
  const __m256 tx = _mm256_set1_ps(out->xs[out->top]);
  const __m256 tim = _mm256_set1_ps(out->ie[out->top]);
  for (size_t h = 0; h < x.sv; ++h) {
    _mm256_store_ps(out->TOP + 8 * h,
                    TopTerms<N>(c, tx, tim, _mm256_load_ps(out->S + 8 * h),
                                _mm256_load_ps(out->R + 8 * h), _mm256_load_ps(out->Z + 8 * h)));
  }
}

// PrepareStep0: step 0's sum (its decision comes first in Decide), unless only the
// definition takes it or its one term already rules it out; then steps 1 .. kPreSteps' sums
// in order, up to the first step that is not the block's, only the definition's, or ruled out
// by its one term against the best before step 0 (then also against every later best: the
// best only decreases), which Decide then takes as any other step. Summed here, in the
// batch's branch-free work, and decided before the other steps' one-term checks, which are
// then made against their best (DecideGroup's pre). Each step's vector of partial sums goes
// to acc + 8 kBatch k (zero where not summed), lane-summed for the whole batch by PreSums: a
// lane sum a vector at a time after each sum left the core waiting on the sum's last
// additions (bench/README.md, branch imx-asym3).
template <int N>
QUENCH_IMX_AVX2 inline void PrepareStep0(const Ctx& x, size_t gi, Prepared* out,
                                         float* acc) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 a = zero;
  if (!(out->sc & 1u) && !(out->TOP[0] >= x.b->best[gi])) {
    const Step st = MakeStep(x.c, out->S[0], out->R[0], out->Z[0]);
    a = out->Z[0] == 0.0f ? SumVecs<N, true>(x, *out, st, 0, zero)
                          : SumVecs<N, false>(x, *out, st, 0, zero);
  }
  _mm256_store_ps(acc, a);
  out->pre = 0;
  size_t k = 1;
  for (; k <= kPreSteps; ++k) {
    if (!(x.step_bits >> k & 1u) || (out->sc >> k & 1u) || out->TOP[k] >= x.b->best[gi]) break;
    const Step st = MakeStep(x.c, out->S[k], out->R[k], out->Z[k]);
    _mm256_store_ps(acc + 8 * kBatch * k, out->Z[k] == 0.0f
                                             ? SumVecs<N, true>(x, *out, st, 0, zero)
                                             : SumVecs<N, false>(x, *out, st, 0, zero));
    out->pre |= 1u << k;
  }
  for (; k <= kPreSteps; ++k) _mm256_store_ps(acc + 8 * kBatch * k, zero);  // not summed
}

// Group gi's decisions (DecideGroup: imatrix_mse_certified.cc's SearchCertified<bf16,
// kIntAsym, N>, its steps in the same order with the same decisions), with the steps whose
// zero point is 0 summed in a loop of their own (no branch per step).
template <int N>
QUENCH_IMX_AVX2 inline uint32_t Decide(const Ctx& x, size_t gi, const Prepared& g) {
  Step tbl[kSteps];
  auto first_vecs = [&](size_t k) {
    tbl[k] = MakeStep(x.c, g.S[k], g.R[k], g.Z[k]);
    __m256 a = Terms8<N>(x.c, _mm256_load_ps(g.xs), _mm256_load_ps(g.ie), tbl[k]);
    for (size_t v = 1; v < kFirstVecs; ++v) {
      a = _mm256_add_ps(a, Terms8<N>(x.c, _mm256_load_ps(g.xs + 8 * v),
                                     _mm256_load_ps(g.ie + 8 * v), tbl[k]));
    }
    return a;
  };
  auto sum_rest = [&](uint32_t mask, const float* acc0, double* PS) {
    for (uint32_t lm = mask & ~g.z0; lm != 0; lm &= lm - 1) {
      const size_t k = static_cast<size_t>(__builtin_ctz(lm));
      PS[k] = LaneSum(
          SumVecs<N, false>(x, g, tbl[k], kFirstVecs, _mm256_load_ps(acc0 + 8 * k)));
    }
    for (uint32_t lm = mask & g.z0; lm != 0; lm &= lm - 1) {
      const size_t k = static_cast<size_t>(__builtin_ctz(lm));
      PS[k] = LaneSum(
          SumVecs<N, true>(x, g, tbl[k], kFirstVecs, _mm256_load_ps(acc0 + 8 * k)));
    }
  };
  return DecideGroup(*x.b, gi, x.n, x.step_bits, x.sv, x.lo_f, x.hi_f,
                     {g.S, g.Z, g.TOP, g.sc, g.p0, g.col, g.pre, g.ps}, first_vecs, sum_rest);
}

// The search over the block's groups, kBatch at a time: every group of a batch prepared
// (independent, branch-free work that overlaps), then each decided. False at a group with an
// Inf or NaN.
template <int N>
QUENCH_IMX_AVX2 bool Search(const Block& b) {
  Ctx x;
  imx_avx2::SetUpBlock(b, &x);
  x.c = MakeConsts(b);
  x.k = imx_avx2::MakeAsymConsts(b.layout.qmin, b.layout.qmax);
  const size_t groups = b.rows * x.ng;
  float* const buf = ThreadScratch(2 * kBatch * x.n);
  Prepared prep[kBatch];
  for (size_t j = 0; j < kBatch; ++j) {
    prep[j].xs = buf + 2 * j * x.n;
    prep[j].ie = prep[j].xs + x.n;
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
    for (size_t j = 0; j < nb; ++j) PrepareSteps<N>(x, &prep[j]);
    alignas(32) float acc[8 * kBatch * (kPreSteps + 1)];
    for (size_t j = 0; j < nb; ++j) PrepareStep0<N>(x, g0 + j, &prep[j], acc + 8 * j);
    for (size_t j = nb; j < kBatch; ++j) {
      for (size_t k = 0; k <= kPreSteps; ++k) {
        _mm256_store_ps(acc + 8 * (kBatch * k + j), _mm256_setzero_ps());
      }
    }
    imx_avx2::PreSums<kPreSteps>(acc, prep);
    for (size_t j = 0; j < nb; ++j) any |= Decide<N>(x, g0 + j, prep[j]);
  }
  *b.improved |= any;
  return true;
}

template <int N, bool Z0>
QUENCH_IMX_AVX2 void Terms(const Block& b, float scale, float zp, const float* x,
                           const float* imp, size_t n, float* terms) {
  const Consts c = MakeConsts(b);
  const Step st = MakeStep(c, scale, 1.0f / scale, zp);
  for (size_t j = 0; j < n; j += 8) {
    _mm256_storeu_ps(terms + j,
                     Terms8<N, Z0>(c, _mm256_loadu_ps(x + j), _mm256_loadu_ps(imp + j), st));
  }
}

}  // namespace
#endif  // QUENCH_IMX_AVX2_X86

bool IntAvx2AsymTerms(const Block& b, float scale, float zp, bool zero_form, const float* x,
                      const float* imp, size_t n, float* terms) {
  if (!IntAvx2AsymHandles(b) || n % 8 != 0 || !(scale >= 0x1p-100f && scale <= 0x1p100f) ||
      !(zp >= static_cast<float>(b.layout.qmin) && zp <= static_cast<float>(b.layout.qmax)) ||
      zp != static_cast<float>(static_cast<int>(zp)) || (zero_form && zp != 0.0f)) {
    return false;
  }
#ifdef QUENCH_IMX_AVX2_X86
  if (b.norm == 3.0) {
    zero_form ? Terms<3, true>(b, scale, zp, x, imp, n, terms)
              : Terms<3, false>(b, scale, zp, x, imp, n, terms);
  } else {
    zero_form ? Terms<2, true>(b, scale, zp, x, imp, n, terms)
              : Terms<2, false>(b, scale, zp, x, imp, n, terms);
  }
  return true;
#else
  (void)x;
  (void)imp;
  (void)terms;
  return false;
#endif
}

bool SearchIntAvx2Asym(const Block& b) {
#ifdef QUENCH_IMX_AVX2_X86
  return b.norm == 3.0 ? Search<3>(b) : Search<2>(b);
#else
  (void)b;
  return false;
#endif
}

}  // namespace quench::calib::internal
