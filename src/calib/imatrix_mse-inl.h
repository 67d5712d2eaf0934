// Per-target pieces the imatrix_mse kernels share (see imatrix_mse_kernel.h): one element's
// term, the block's groups in tiles, each step's per-group parameters, and the dispatch over
// dtype, mode and norm; and the per-target entry points of the two searches, each compiled in
// its own file (imatrix_mse_tiles.cc, imatrix_mse_certified.cc; imatrix_mse_kernel.cc
// dispatches between them).
//
// Highway "-inl.h" convention: include after hwy/highway.h, once per target (the toggled
// include guard below), from inside a file compiled through foreach_target.

// The definition rounds every f32 product and difference: no contraction into FMAs here
// either (each including file switches it off too, before its first include).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#if defined(QUENCH_CALIB_IMATRIX_MSE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QUENCH_CALIB_IMATRIX_MSE_INL_H_
#undef QUENCH_CALIB_IMATRIX_MSE_INL_H_
#else
#define QUENCH_CALIB_IMATRIX_MSE_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>  // std::integral_constant

#include "calib/imatrix_mse_kernel.h"
#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"
#include "schemes/fp4_shared.h"
#include "schemes/rounding-inl.h"

HWY_BEFORE_NAMESPACE();
namespace quench::calib::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace rd = quench::HWY_NAMESPACE::rounding;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;
#if HWY_TARGET == HWY_SCALAR
using DD = hn::Rebind<double, DF>;  // one lane: one f64 accumulator
#else
using DH = hn::Half<DF>;
using DD = hn::Repartition<double, DF>;  // half the lanes: two f64 accumulators
#endif
using VD = hn::Vec<DD>;

enum Mode { kIntSym = 0, kIntAsym = 1, kFp4 = 2 };

// Round half to even of |v| <= 2^22: adding 1.5 * 2^23 leaves an f32 whose ulp is 1, so the
// FPU's RNE addition rounds v to an integer, and subtracting it back is exact. Equal to
// torch.round / rint there (the sign of a zero result aside, which no error sees: dq is a
// product with it, and |dq - x| drops the sign). Used on every target: Highway's scalar
// Round adds 0.5, which rounds 0.49999997 up.
HWY_INLINE VF RoundInt(DF df, VF v) {
  const VF magic = hn::Set(df, 12582912.0f);
  return hn::Sub(hn::Add(v, magic), magic);
}

// The quotient the definition rounds first, RNE_D(x / s).
template <DType D>
HWY_INLINE VF Quotient(DF df, VF x, VF s) {
  return rd::RoundToDType<D>(df, hn::Div(x, s));
}

// The same quotient for D = bf16 from r = f32(1 / s): RNE_bf16(x * r) == RNE_bf16(x / s) for
// bf16 values x and s with 2^-100 <= s <= 2^100 (the callers send other scales to the scalar
// definition). Proof: y = x / s = (a / b) 2^E with integer mantissas 1 <= a <= 255 and
// 128 <= b <= 255 (s normal). RNE_bf16 of two nearby reals differs only if a bf16 midpoint
// M = m 2^F (m an odd integer in [257, 511]) lies between them or on one. If E >= F,
// a 2^E - b m 2^F is a multiple of 2^F and not 0 (else the odd part of a would be the odd
// part of b times m >= 257 > 255), so |y - M| >= 2^F / b > 2^-17 M; if E < F, M >= 257 2^F
// > 128 y. f32(1 / s) is within 2^-24 of 1 / s, x * r within 2^-24 of that product, and
// f32(x / s) within 2^-24 of y (all normal wherever the result depends on the value: for
// |y| < 2^-120 every path gives the code 0 or E2M1's 0, for |y| > 2^20 both clamp), so
// f32(x * r), f32(x / s) and y lie within 2^-22 relative of one another with no midpoint
// between them: the same bf16 value, so the same code, dq and term. A multiply instead of a
// division: the division's latency was most of a term's dependency chain. And since f32(x * r)
// is never a midpoint there, rounding its magnitude half up (add 0x8000 to the pattern, drop
// the low 16 bits: two operations for RNE's five) gives the same value; outside that range
// the result stays below 2^-120 (code 0) or above 2^20 (clamped), and +-Inf stays +-Inf.
// tests/test_imatrix_kernel checks every pair of mantissas.
HWY_INLINE VF QuotientBf16(DF df, VF x, VF r) {
  const hn::RebindToUnsigned<DF> du;
  const auto bits = hn::Add(hn::BitCast(du, hn::Mul(x, r)), hn::Set(du, 0x8000u));
  return hn::BitCast(df, hn::And(bits, hn::Set(du, 0xFFFF0000u)));
}

// Scales for which QuotientBf16 holds.
inline bool ReciprocalScale(float s) { return s >= 0x1p-100f && s <= 0x1p100f; }

// cast_to_fp4's magnitude of |v| <= 6 (a, clamped): E2M1 rounds it to nearest even on a grid
// of 0.5 below 2, 1 below 4, 2 up to 6 (the table's <= / < thresholds are exactly those
// ties). Powers of two: both products are exact.
HWY_INLINE VF E2M1Magnitude(DF df, VF a) {
  const auto lt2 = hn::Lt(a, hn::Set(df, 2.0f)), lt4 = hn::Lt(a, hn::Set(df, 4.0f));
  const VF inv = hn::IfThenElse(lt2, hn::Set(df, 2.0f),
                                hn::IfThenElse(lt4, hn::Set(df, 1.0f), hn::Set(df, 0.5f)));
  const VF step = hn::IfThenElse(lt2, hn::Set(df, 0.5f),
                                 hn::IfThenElse(lt4, hn::Set(df, 1.0f), hn::Set(df, 2.0f)));
  return hn::Mul(RoundInt(df, hn::Mul(a, inv)), step);
}

// One element's term e = |dq - x|^norm * imp (the definition in imatrix_mse_kernel.h), from
// the rounded quotient v = Quotient(x, s).
template <DType D, int M, int N>
HWY_INLINE VF TermOf(DF df, VF v, VF x, VF im, VF s, VF zp, VF lo, VF hi) {
  VF dq;
  if constexpr (M == kFp4) {
    // cast_to_fp4 of clamp(v, -6, 6), signed as v.
    const VF r = E2M1Magnitude(df, hn::Min(hn::Abs(v), hn::Set(df, 6.0f)));
    dq = rd::RoundToDType<D>(df, hn::Mul(hn::CopySign(r, v), s));
  } else {
    if constexpr (M == kIntAsym) v = rd::RoundToDType<D>(df, hn::Add(v, zp));
    const VF q = RoundInt(df, hn::Min(hn::Max(v, lo), hi));
    dq = rd::RoundToDType<D>(df, hn::Mul(M == kIntAsym ? hn::Sub(q, zp) : q, s));
  }
  const VF d = hn::Abs(hn::Sub(dq, x));
  VF e = hn::Mul(d, d);
  if constexpr (N == 3) e = hn::Mul(e, d);
  return hn::Mul(e, im);
}

template <DType D, int M, int N>
HWY_INLINE VF Term(DF df, VF x, VF im, VF s, VF zp, VF lo, VF hi) {
  return TermOf<D, M, N>(df, Quotient<D>(df, x, s), x, im, s, zp, lo, hi);
}

// Whether this target takes int codes through a table of their dequantized values: one
// vector holds the 16 codes of a 4-bit (or narrower) range.
constexpr bool kTableTarget = hn::MaxLanes(DF()) == 16;

// Step parameters s, zp as a table of dq = RNE_D((q - zp) * s) (RNE_D(q * s) symmetric),
// lane l holding the code q of [qmin, qmax] with q = l mod 16 (ranges of at most 16 codes;
// the lanes of no code hold some value never read). The products Term would form, code by
// code, so TermTable's dq equals Term's bit for bit.
template <DType D, int M>
HWY_INLINE VF CodeTable(DF df, const Block& b, VF s, VF zp) {
  const hn::RebindToSigned<DF> di;
  const auto l = hn::Iota(di, 0);
  const auto qmin = hn::Set(di, b.layout.qmin);
  // q = qmin + ((l - qmin) mod 16)
  const auto q = hn::ConvertTo(df, hn::Add(qmin, hn::And(hn::Sub(l, qmin), hn::Set(di, 15))));
  return rd::RoundToDType<D>(df, hn::Mul(M == kIntAsym ? hn::Sub(q, zp) : q, s));
}

// Term for int codes through CodeTable (kTableTarget only), from the rounded quotient v:
// the clamped quotient plus 1.5 * 2^23 is RoundInt's first addition, whose low bits hold the
// code (mod 16 is all the table lookup reads); dq is then the table's entry instead of a
// product and a rounding.
template <DType D, int M, int N>
HWY_INLINE VF TermTableOf(DF df, VF v, VF x, VF im, VF zp, VF lo, VF hi, VF table) {
  const hn::RebindToSigned<DF> di;
  if constexpr (M == kIntAsym) v = rd::RoundToDType<D>(df, hn::Add(v, zp));
  const VF biased = hn::Add(hn::Min(hn::Max(v, lo), hi), hn::Set(df, 12582912.0f));
  const auto idx = hn::And(hn::BitCast(di, biased), hn::Set(di, 15));
  const VF dq = hn::TableLookupLanes(table, hn::IndicesFromVec(df, idx));
  const VF d = hn::Abs(hn::Sub(dq, x));
  VF e = hn::Mul(d, d);
  if constexpr (N == 3) e = hn::Mul(e, d);
  return hn::Mul(e, im);
}

// The block's groups in tiles of L (lane l of tile t: group t * L + l), element-major; the
// importance tiles (their pattern repeats every `period` tiles, as the groups' columns do);
// each group's min and max; and for the bound, the term of each group's element of largest
// |x|^3 * imp (x and imp of that element). Buffers are kept per thread and reused: fresh
// pages for every block cost more than the search.
struct Tiles {
  size_t n = 0, groups = 0, L = 0, tiles = 0, period = 0;
  float* x = nullptr;
  float* imp = nullptr;
  float* kx = nullptr;
  float* kimp = nullptr;
  float* m0 = nullptr;
  float* M0 = nullptr;
  const float* Imp(size_t tile) const { return imp + (tile % period) * n * L; }
};

// A per-thread aligned buffer of at least n floats (one set per target, shared by the
// searches: inline, so every file including this one has the same buffers).
inline float* Scratch(int which, size_t n) {
  thread_local hwy::AlignedFreeUniquePtr<float[]> buf[8];
  thread_local size_t size[8] = {};
  if (size[which] < n) {
    buf[which] = hwy::AllocateAligned<float>(n);
    size[which] = n;
  }
  return buf[which].get();
}

// Step parameters lane-wise (int, NVFP4), from each lane's p * min and p * max (f32
// products, rounded to D here): calculate_qparams' operations as ParamsOf does them (a zero
// may differ in sign where the scalar std::min / std::max keep their first argument, which no
// parameter sees: a zero range gives scale 0 -> eps and zp 0 either way, and is otherwise
// added to, or divided by, a nonzero value). Zero scales become finfo(D).eps.
template <DType D, int M>
HWY_INLINE void ParamsVec(const Block& b, VF pm0, VF pM0, VF* scale_out, VF* zp_out) {
  const DF df;
  const auto zero = hn::Zero(df);
  const auto mn = rd::RoundToDType<D>(df, pm0);
  const auto mx = rd::RoundToDType<D>(df, pM0);
  const float range = static_cast<float>(b.layout.qmax - b.layout.qmin);
  VF scale, z = zero;
  if constexpr (M == kFp4) {
    // NVFP4: RNE_D(pos / 6), zero guard eps.
    const auto pos = hn::Max(hn::Abs(hn::Min(mn, zero)), hn::Abs(hn::Max(mx, zero)));
    scale = rd::RoundToDType<D>(df, hn::Div(pos, hn::Set(df, 6.0f)));
  } else {
    const auto lo = hn::Min(mn, zero), hi = hn::Max(mx, zero);
    if constexpr (M == kIntSym) {
      // calculate_qparams, symmetric: RNE_D(max(-mn, mx) / (bit_range / 2)).
      scale = rd::RoundToDType<D>(df, hn::Div(hn::Max(hn::Neg(lo), hi), hn::Set(df, range / 2.0f)));
    } else {
      // Asymmetric: RNE_D(RNE_D(mx - mn) / bit_range); zp = RNE_D(qmin - RNE_D(mn / s))
      // with the unguarded scale, clamped unless NaN, rounded (NaN -> 0).
      const auto qmin = hn::Set(df, static_cast<float>(b.layout.qmin));
      const auto qmax = hn::Set(df, static_cast<float>(b.layout.qmax));
      scale = rd::RoundToDType<D>(df, hn::Div(rd::RoundToDType<D>(df, hn::Sub(hi, lo)),
                                              hn::Set(df, range)));
      const auto q =
          rd::RoundToDType<D>(df, hn::Sub(qmin, rd::RoundToDType<D>(df, hn::Div(lo, scale))));
      const auto clamped = RoundInt(df, hn::Min(hn::Max(q, qmin), qmax));
      z = hn::IfThenZeroElse(hn::IsNaN(q), clamped);
    }
  }
  *scale_out = hn::IfThenElse(hn::Eq(scale, zero), hn::Set(df, intq::internal::ScaleEps(b.dtype)),
                              scale);
  *zp_out = z;
}

// MXFP4's search scale lane-wise (fp4::Mxfp4GroupScale, i.e. fp4_shared.h MxScaleFor of
// pos = max(|min(mn, 0)|, |max(mx, 0)|)) for D = bf16 or f32, from each lane's p * min and
// p * max (f32 products, rounded to D here, as ParamsVec). Those two D share f32's exponent
// field, so MxScaleFor's operations on D's pattern are these on f32's:
//  - round_to_power_2 adds 2^(mant_D - 2) to D's pattern and keeps sign and exponent: pos is a
//    value of D, and bf16's pattern is the top half of f32's, so both add 2^21 to the f32
//    pattern; p_exp is the sum's bits 23 and up (pos >= 0 and finite: the blocks searched hold
//    no Inf or NaN, so p_exp <= 255);
//  - e = 0 for p_exp = 0, 255 for p_exp = 255, else clamp(p_exp - kMxFp4Offset, 0, 255)
//    (127 + floor(log2 p) - offset: f32's and bf16's bias is 127);
//  - scale 2^(e - 127) as an f32 pattern: e << 23 (e = 255: +Inf, as ldexp(1, 128)), and for
//    e = 0 the subnormal 2^-127 (0x00400000), which both D hold exactly: RNE_D leaves every
//    one of these, and none is 0 (no zero guard). f16 keeps the scalar ParamsOf.
template <DType D>
HWY_INLINE VF MxScaleVec(VF pm0, VF pM0) {
  static_assert(D != DType::kF16, "f16's exponent field differs: scalar ParamsOf");
  const DF df;
  const hn::RebindToSigned<DF> di;
  const auto zero = hn::Zero(df);
  const auto mn = rd::RoundToDType<D>(df, pm0);
  const auto mx = rd::RoundToDType<D>(df, pM0);
  const auto pos = hn::Max(hn::Abs(hn::Min(mn, zero)), hn::Abs(hn::Max(mx, zero)));
  const auto p_exp = hn::ShiftRight<23>(hn::Add(hn::BitCast(di, pos), hn::Set(di, 1 << 21)));
  const auto i0 = hn::Zero(di), i255 = hn::Set(di, 255);
  auto e = hn::Min(hn::Max(hn::Sub(p_exp, hn::Set(di, fp4::internal::kMxFp4Offset)), i0), i255);
  e = hn::IfThenElse(hn::Eq(p_exp, i0), i0, hn::IfThenElse(hn::Eq(p_exp, i255), i255, e));
  return hn::BitCast(df, hn::IfThenElse(hn::Eq(e, i0), hn::Set(di, 0x00400000),
                                        hn::ShiftLeft<23>(e)));
}

// A step's parameters lane-wise from p * min and p * max: MxScaleVec for MXFP4 (`mxfp4`,
// not f16), ParamsVec otherwise.
template <DType D, int M>
HWY_INLINE void StepParamsVec(const Block& b, bool mxfp4, VF pm0, VF pM0, VF* scale, VF* zp) {
  if constexpr (M == kFp4 && D != DType::kF16) {
    if (mxfp4) {
      *scale = MxScaleVec<D>(pm0, pM0);
      *zp = hn::Zero(DF());
      return;
    }
  }
  ParamsVec<D, M>(b, pm0, pM0, scale, zp);
}

// Per-tile parameter arrays for step i (lanes past the block's groups: scale 1, zp 0);
// groups whose scale is not finite are left to the scalar definition (flag set). Int and
// NVFP4 lane-wise (ParamsVec), MXFP4 too (MxScaleVec) but for f16 weights.
template <DType D, int M>
void StepArrays(const Block& b, const Tiles& t, int i, float* s, float* zp, uint8_t* scalar) {
  const size_t padded = t.tiles * t.L;
  const bool mxfp4 = M == kFp4 && b.format == ImatrixFormat::kMxfp4;
  if (mxfp4 && D == DType::kF16) {
    for (size_t g = 0; g < padded; ++g) {
      if (g >= t.groups) {
        s[g] = 1.0f;
        zp[g] = 0.0f;
        scalar[g] = 0;
        continue;
      }
      float mn, mx;
      StepRange(t.m0[g], t.M0[g], i, b.grid, /*expand=*/1.0, b.dtype, &mn, &mx);  // expanded
      const StepParams p = ParamsOf(b, mn, mx);
      s[g] = p.scale;
      zp[g] = p.zp;
      scalar[g] = std::isfinite(p.scale) ? 0 : 1;
    }
    return;
  }
  const DF df;
  const float p = StepFactor(i, b.grid);
  const auto vp = hn::Set(df, p);
  for (size_t g = 0; g < padded; g += t.L) {
    hn::Vec<DF> scale, z;
    StepParamsVec<D, M>(b, mxfp4, hn::Mul(vp, hn::Load(df, t.m0 + g)),
                        hn::Mul(vp, hn::Load(df, t.M0 + g)), &scale, &z);
    hn::Store(scale, df, s + g);
    hn::Store(z, df, zp + g);
    // Only an asymmetric range (mx - mn) and MXFP4's power of two (2^128) can overflow D; the
    // other scales are finite.
    for (size_t l = 0; (M == kIntAsym || mxfp4) && l < t.L; ++l) {
      scalar[g + l] = !std::isfinite(s[g + l]);
    }
  }
  if (M != kIntAsym && !mxfp4) std::fill_n(scalar, padded, uint8_t{0});
  for (size_t g = t.groups; g < padded; ++g) {
    s[g] = 1.0f;
    zp[g] = 0.0f;
    scalar[g] = 0;
  }
}

// Dispatch over dtype, mode and norm (the kernels take norm 2 and 3; others go scalar).
template <template <DType, int, int> class F, class... Args>
bool Dispatch(const Block& b, Args... args) {
  const int mode = b.format != ImatrixFormat::kInt ? kFp4 : b.symmetric ? kIntSym : kIntAsym;
  const int norm = b.norm == 3.0 ? 3 : b.norm == 2.0 ? 2 : 0;
  if (norm == 0) return false;
  auto by_norm = [&](auto d_tag, auto m_tag) {
    constexpr DType D = decltype(d_tag)::value;
    constexpr int M = decltype(m_tag)::value;
    if (norm == 3) {
      F<D, M, 3>::Run(b, args...);
    } else {
      F<D, M, 2>::Run(b, args...);
    }
  };
  auto by_mode = [&](auto d_tag) {
    if (mode == kFp4) {
      by_norm(d_tag, std::integral_constant<int, kFp4>());
    } else if (mode == kIntSym) {
      by_norm(d_tag, std::integral_constant<int, kIntSym>());
    } else {
      by_norm(d_tag, std::integral_constant<int, kIntAsym>());
    }
  };
  switch (b.dtype) {
    case DType::kBF16: by_mode(std::integral_constant<DType, DType::kBF16>()); break;
    case DType::kF16: by_mode(std::integral_constant<DType, DType::kF16>()); break;
    case DType::kF32: by_mode(std::integral_constant<DType, DType::kF32>()); break;
    default: return false;
  }
  return true;
}

// The per-target entry points (false on parameters the kernels do not take).
bool SearchTilesKernel(const Block& b);      // imatrix_mse_tiles.cc
bool ErrorsTilesKernel(const Block& b, const StepParams* params, const double* bound,
                       double* err);        // imatrix_mse_tiles.cc (GroupErrorsKernel)
bool SearchCertifiedKernel(const Block& b);  // imatrix_mse_certified.cc
void MxTermsKernel(int norm, const float* x, const float* imp, size_t n, float s,
                   float* out);  // imatrix_mse_certified.cc (MxTermsForTest)
bool SearchFp4GroupsKernel(const Block& b);  // imatrix_mse_fp4_groups.cc (NVFP4's 16)
// Whether this target's SearchFp4GroupsKernel reads raw bf16 rows (Fp4GroupsRawHandles):
// the 8- and 16-lane targets (AVX2, AVX-512), the ones measured and tested for it.
bool Fp4GroupsRawTarget();  // imatrix_mse_fp4_groups.cc
void Fp4TermsKernel(DType d, int norm, int form, const float* ax, const float* imp, size_t n,
                    float s, float* out);  // imatrix_mse_fp4_groups.cc (Fp4TermsForTest)

}  // namespace HWY_NAMESPACE
}  // namespace quench::calib::internal
HWY_AFTER_NAMESPACE();

#endif  // QUENCH_CALIB_IMATRIX_MSE_INL_H_
