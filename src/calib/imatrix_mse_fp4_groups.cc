// The imatrix_mse search for NVFP4's groups of 16 (see imatrix_mse_kernel.h), lanes across
// groups: a tile of L groups (one per lane) runs everything but the few steps that may
// improve with no sum across lanes, and those steps' sums (one vector per (group, step)
// pair, lanes along the group) share one transposition tree per L pairs. Compiled once per
// target through foreach_target.
//
// The decisions are the certified search's (imatrix_mse_certified.cc), lane-wise:
//  - per group its min and max, its element of largest |x| and, among the others, the one
//    of largest |x|^3 * imp (any element gives a valid one-term bound: E >= t exactly for
//    each term t, imatrix_mse_certified.cc; two give TwoTermBound's);
//  - every step's scale (ParamsVec, the operations StepArrays does) and, for the steps
//    after the first two, the largest element's term (clipped to 6 s at nearly every step:
//    Fp4TermLargest), all lanes at once; reciprocals only for the steps summed;
//  - the first two steps' sums, each lane adding its group's 16 terms in f32, and their
//    decisions;
//  - the later steps whose one term is below the best after those two (and whose scale
//    differs from the best step's: equal parameters give an equal error, not an improvement),
//    and then their two-term bound too (computed only for steps with such a lane), are the
//    live (group, step) pairs; their f32 sums, L pairs per transposition tree;
//  - then step by step, lane-wise: rejected when not live, when its scale is the best step's,
//    when its bound t >= bhi or when lo >= bhi; an improvement when hi < blo; otherwise
//    (a near tie, or a sum outside the bound's range) the definition's sums of this step and
//    of the best step compared exactly for that lane (ErrorF32, the earlier kept), as
//    SearchCertified does.
// The bound in f32: with P a group's f32 sum of its n f32 terms (any order), the definition's
// value E lies in [P (1 - m), P (1 + m)], m = (n + 2) 2^-23 (imatrix_mse_certified.cc), for
// P = 0 or 2^-100 <= P <= 2^100. Here lo = f32(P (1 - 2m)) and hi = f32(P (1 + 2m)) (both
// factors exact in f32): each product's rounding is at most 2^-24 relative and the result
// normal, so lo <= P (1 - 2m)(1 + 2^-24) <= P (1 - m) <= E and hi >= P (1 + 2m)(1 - 2^-24)
// >= P (1 + m) >= E. A group keeps [blo, bhi] around its best as SearchCertified does; the
// masks and improved bits are the definition's, best too when Block::exact_best.
// bf16 quotients from the scale's reciprocal (QuotientBf16); a tile in which some step's
// scale is outside its range goes group by group to the scalar definition.

// The definition rounds every f32 product and difference; GCC contracts a * b - c into an
// FMA in C++ mode wherever the target has one (the AVX2 / AVX-512 targets), so contraction
// is switched off for this whole file.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/calib/imatrix_mse_fp4_groups.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "calib/imatrix_mse-inl.h"
#include "calib/imatrix_mse_fp4_terms-inl.h"
#include "calib/imatrix_mse_fp4_lanes-inl.h"

HWY_BEFORE_NAMESPACE();
namespace quench::calib::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace {

constexpr size_t kN = 16;           // NVFP4's group
constexpr size_t kSteps = 32;       // LastStep < 32

// |x|^3 * imp: the ordering heuristic of the one-term bound (imatrix_mse_certified.cc Key).
HWY_INLINE VF KeyOf(VF x, VF im) {
  const VF a = hn::Abs(x);
  return hn::Mul(hn::Mul(hn::Mul(a, a), a), im);
}

// A lower bound of a group's error E (the definition's f32 value) from the terms t1, t2 of
// two of its elements: max(t1, f32(f32(t1 + t2) * (1 - 2^-20))) where 2^-100 <= f32(t1 + t2)
// <= 2^100, t1 otherwise (t1 alone is one: imatrix_mse_certified.cc). The definition's S is
// an f64 sum of its n = 16 nonnegative f32 terms in order, every partial sum 0 or f64-normal,
// so S >= (sum of all terms)(1 - 2^-53)^15 >= (t1 + t2)(1 - 15 2^-53). With y = f32(t1 + t2)
// in that range (normal, far from overflow), y <= (t1 + t2)(1 + 2^-24) and the product rounds
// to at most y (1 - 2^-20)(1 + 2^-24), so the bound is at most
// (t1 + t2)(1 + 2^-24)^2 (1 - 2^-20) < (t1 + t2)(1 - 2^-21) <= S; it is an f32 value, so
// E = f32(S) >= it too (rounding is monotone).
HWY_INLINE VF TwoTermBound(DF df, VF t1, VF t2) {
  const VF y = hn::Add(t1, t2);
  const VF b = hn::Max(t1, hn::Mul(y, hn::Set(df, 1.0f - 0x1p-20f)));
  return hn::IfThenElse(
      hn::And(hn::Ge(y, hn::Set(df, 0x1p-100f)), hn::Le(y, hn::Set(df, 0x1p100f))), b, t1);
}

// Whether the bound holds for an f32 sum P (imatrix_mse_certified.cc Certifiable).
HWY_INLINE MF CertifiableF(DF df, VF p) {
  return hn::Or(hn::Eq(p, hn::Zero(df)),
                hn::And(hn::Ge(p, hn::Set(df, 0x1p-100f)), hn::Le(p, hn::Set(df, 0x1p100f))));
}

// A block's rows are read from b.x (f32), or for bf16 with b.raw set from their bf16
// encoding, widened here (exact: f32's upper half; the values ToF32 would have written), so
// every value the search sees is the same. Then this search also refuses an Inf or NaN
// (*ok = false; the caller's ToF32 refused them otherwise) and writes each group's largest
// magnitude to b.absmax when that is set (GroupAbsMax's value: see ax1 below).
template <DType D, int N>
void SearchFp4Groups(const Block& b, bool* ok) {
  const DF df;
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  using VU = hn::Vec<decltype(du)>;
  const size_t L = hn::Lanes(df), nv = kN / L;
  const size_t ng = b.cols / kN, groups = b.rows * ng;
  const size_t steps = static_cast<size_t>(b.i1 - b.i0 + 1);
  float P[kSteps];
  for (size_t k = 0; k < steps; ++k) {  // p = 1 - i / grid
    P[k] = StepFactor(b.i0 + static_cast<int>(k), b.grid);
  }
  // The steps' p positive and non-increasing (so are each lane's scales, but for the guard).
  bool monotone = steps > 0 && P[0] > 0.0f;
  for (size_t k = 1; k < steps; ++k) monotone = monotone && P[k] > 0.0f && P[k] <= P[k - 1];
  const double m = static_cast<double>(kN + 2) * 0x1p-23;
  const VF lo_c = hn::Set(df, static_cast<float>(1.0 - 2.0 * m));
  const VF hi_c = hn::Set(df, static_cast<float>(1.0 + 2.0 * m));
  const VF zero = hn::Zero(df), one = hn::Set(df, 1.0f);
  // The importance transposed per tile (lane l: the tile's group l), when the tiles' columns
  // repeat every row (ng a multiple of L); otherwise gathered per tile.
  const size_t period = b.imp != nullptr && ng % L == 0 ? ng / L : 0;
  float* const timp = period != 0 ? Scratch(6, ng * kN) : nullptr;
  for (size_t t = 0; t < period; ++t) {
    for (size_t j = 0; j < kN; ++j) {
      for (size_t l = 0; l < L; ++l) timp[(t * kN + j) * L + l] = b.imp[(t * L + l) * kN + j];
    }
  }
  const bool raw = D == DType::kBF16 && b.raw != nullptr;
  // The f32 vector of elements e..e + L - 1 of the block (e a multiple of L; read by the
  // full tiles' transpositions and the raw tiles' widening below).
  [[maybe_unused]] auto load_x = [&](size_t e) {
    if (raw) return rd::LoadF32<DType::kBF16>(df, b.raw + 2 * e);
    return hn::LoadU(df, b.x + e);
  };
  // Group g's 16 values in f32: b.x's, or widened from b.raw into buf.
  auto group_x = [&](size_t g, float* buf) -> const float* {
    if (!raw) return b.x + g * kN;
    for (size_t j = 0; j < kN; ++j) {
      uint16_t h;
      std::memcpy(&h, b.raw + 2 * (g * kN + j), 2);
      const uint32_t u = static_cast<uint32_t>(h) << 16;
      std::memcpy(&buf[j], &u, 4);
    }
    return buf;
  };
  auto exact_of = [&](size_t g, float s) {
    const float* ig = b.imp == nullptr ? nullptr : b.imp + (g % ng) * kN;
    float buf[kN];
    return static_cast<float>(
        ErrorF32(GroupErrorScalar(b, group_x(g, buf), ig, kN, {s, 0.f})));
  };
  HWY_ALIGN float S[kSteps * kMaxL], R[kSteps * kMaxL], TOP[kSteps * kMaxL];
  HWY_ALIGN float PS[kSteps * kMaxL], LIVE[kSteps * kMaxL];
  HWY_ALIGN float st_lo[kMaxL], st_hi[kMaxL], st_s[kMaxL], st_x[kMaxL];
  HWY_ALIGN uint32_t st_m[kMaxL];
  HWY_ALIGN int32_t gx[kMaxL] = {}, gi[kMaxL] = {};
  HWY_ALIGN float sums[kMaxL];
  uint32_t any = 0;
  VU any_v = hn::Zero(du);  // the full tiles' improvements (lane-wise)
  for (size_t g0 = 0; g0 < groups; g0 += L) {
    const size_t cnt = std::min(L, groups - g0);
    // Lane l: group g0 + l (padding lanes repeat the last group; nothing of theirs is kept).
    if (cnt == L && g0 % ng + L <= ng) {  // a full tile within one row
      const auto iota16 = hn::Mul(hn::Iota(di, 0), hn::Set(di, static_cast<int32_t>(kN)));
      hn::Store(hn::Add(iota16, hn::Set(di, static_cast<int32_t>(g0 * kN))), di, gx);
      hn::Store(hn::Add(iota16, hn::Set(di, static_cast<int32_t>((g0 % ng) * kN))), di, gi);
    } else {
      for (size_t l = 0, col = (g0 % ng) * kN; l < L; ++l) {
        const size_t g = std::min(g0 + l, groups - 1);
        gx[l] = static_cast<int32_t>(g * kN);
        gi[l] = static_cast<int32_t>(col);  // (g % ng) * kN
        if (g0 + l + 1 < groups) col = col + kN == b.cols ? 0 : col + kN;
      }
    }
    const auto vgx = hn::Load(di, gx), vgi = hn::Load(di, gi);
    const float* ti = period != 0 ? timp + ((g0 / L) % period) * kN * L : nullptr;
    VF X[kN], I[kN];
    // Lane l's group's values in f32 at tile_x + l * kN (for the live pairs): b.x's, or
    // raw rows widened into xrow (full tiles) or xt (others, below).
    HWY_ALIGN float xrow[kMaxL * kN];
    const float* tile_x = raw ? xrow : b.x + g0 * kN;
#if HWY_TARGET != HWY_SCALAR
    if constexpr (kMaxL == 8) {
      // A full tile's groups are 8 x 16 consecutive values: two transpositions instead of
      // 16 gathers (slow on AVX2 CPUs).
      if (cnt == L) {
        VF r[8];
        for (size_t h = 0; h < kN; h += 8) {
          for (size_t l = 0; l < 8; ++l) {
            r[l] = load_x((g0 + l) * kN + h);
            if (raw) hn::Store(r[l], df, xrow + l * kN + h);
          }
          Transpose8(df, r, X + h);
        }
      }
    }
#endif
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
    if (cnt == L) {  // 16 groups of 16: one 16 x 16 transposition instead of 16 gathers
      VF r[16];
      for (size_t l = 0; l < 16; ++l) {
        r[l] = load_x((g0 + l) * kN);
        if (raw) hn::Store(r[l], df, xrow + l * kN);
      }
      Transpose16(df, r, X);
    }
#endif
    // Raw rows gathered from the tile's groups widened into xt (lane l's group at l * kN).
    HWY_ALIGN float xt[kMaxL * kN];
    const float* xs = b.x;
    auto vgs = vgx;
    if (raw && (!kTransposeTile || cnt != L)) {
      // Each lane's group (from element gx[l], a multiple of kN) widened a vector at a time,
      // in place of ToF32's f32 copy of the block: the targets that read rows raw have 8 or
      // 16 lanes (Fp4GroupsRawTarget), which divide the group's 16.
      HWY_DASSERT(kN % L == 0);
      for (size_t l = 0; l < L; ++l) {
        for (size_t h = 0; h < kN; h += L) {
          hn::Store(load_x(static_cast<size_t>(gx[l]) + h), df, xt + l * kN + h);
        }
      }
      xs = xt;
      tile_x = xt;
      vgs = hn::Mul(hn::Iota(di, 0), hn::Set(di, static_cast<int32_t>(kN)));
    }
    for (size_t j = 0; j < kN; ++j) {
      if (!kTransposeTile || cnt != L) X[j] = hn::GatherIndex(df, xs + j, vgs);
      I[j] = b.imp == nullptr ? one
             : ti != nullptr  ? hn::Load(df, ti + j * L)
                              : hn::GatherIndex(df, b.imp + j, vgi);
    }
    // Min, max, each group's element of largest |x| (the first of equal ones) and its
    // importance, then its element of largest |x|^3 * imp among those of smaller |x| (none
    // when every |x| is equal: x = 0 and imp = 0 stand in, whose term 0 is a lower bound of
    // any element's).
    // The largest |x| by its bit pattern (sign cleared: nonnegative finite floats, +0 for
    // any zero, order as their patterns, so it is GroupAbsMax's max |x_j|), whose value
    // 0x7F800000 or above is also the Inf / NaN test of raw rows.
    VF mn = X[0], mx = X[0], ax1 = hn::Abs(X[0]), im1 = I[0];
    VU ax1u = hn::BitCast(du, ax1);
    for (size_t j = 1; j < kN; ++j) {
      mn = hn::Min(mn, X[j]);
      mx = hn::Max(mx, X[j]);
      const VF ax = hn::Abs(X[j]);
      im1 = hn::IfThenElse(hn::Gt(ax, ax1), I[j], im1);
      ax1u = hn::Max(ax1u, hn::BitCast(du, ax));
      ax1 = hn::BitCast(df, ax1u);
    }
    if (raw && !hn::AllTrue(du, hn::Lt(ax1u, hn::Set(du, 0x7F800000u)))) {
      *ok = false;
      return;
    }
    if (b.absmax != nullptr) {
      if (cnt == L) {
        hn::StoreU(ax1, df, b.absmax + g0);
      } else {
        HWY_ALIGN float a[kMaxL];
        hn::Store(ax1, df, a);
        std::copy_n(a, cnt, b.absmax + g0);
      }
    }
    // That second element searched in two halves, the even and the odd j (two chains of 8
    // dependent selections instead of one of 16), then the larger key of the two (the even
    // half's on equal keys). Which element of a largest key is taken changes no result: any
    // element whose |x| is not the largest gives a valid two-term bound with it.
    VF ax2 = zero, im2 = zero;
    {
      VF top[2] = {hn::Set(df, -1.0f), hn::Set(df, -1.0f)}, a2[2] = {zero, zero};
      VF i2[2] = {zero, zero};
      for (size_t j = 0; j < kN; j += 2) {
        for (size_t h = 0; h < 2; ++h) {
          const VF ax = hn::Abs(X[j + h]), key = KeyOf(X[j + h], I[j + h]);
          const MF more = hn::AndNot(hn::Eq(ax, ax1), hn::Gt(key, top[h]));
          top[h] = hn::IfThenElse(more, key, top[h]);
          a2[h] = hn::IfThenElse(more, ax, a2[h]);
          i2[h] = hn::IfThenElse(more, I[j + h], i2[h]);
        }
      }
      const MF odd = hn::Gt(top[1], top[0]);
      ax2 = hn::IfThenElse(odd, a2[1], a2[0]);
      im2 = hn::IfThenElse(odd, i2[1], i2[0]);
    }
    if (b.expand != 1.0) {  // Expanded: the product in f32, rounded to D
      const VF e = hn::Set(df, static_cast<float>(b.expand));
      mn = rd::RoundToDType<D>(df, hn::Mul(mn, e));
      mx = rd::RoundToDType<D>(df, hn::Mul(mx, e));
    }
    // Every step's scale. The search scale's pos =
    // max(|min(mn, 0)|, max(mx, 0)) is RNE_D(p * max(|m0|, |M0|)) for p > 0 (expand > 0
    // keeps m0 <= M0, RNE_D is monotone and symmetric); bf16's RNE(pos / 6) is
    // RNE(pos * f32(1 / 6)) (QuotientBf16 with s = 6, wherever the scale is at least 2^-100:
    // smaller ones go to the definition below).
    const VF amax = hn::Max(hn::Abs(mn), hn::Abs(mx));
    const VF sixth = hn::Set(df, 1.0f / 6.0f), eps = hn::Set(df, intq::internal::ScaleEps(b.dtype));
    VF smin = hn::Set(df, 0x1p100f), smax = hn::Set(df, 0x1p-100f);  // every step's scales
    // RNE_D(pos / 6), for P[k] > 0; with `pos_round` true by RoundPos (its domain: below).
    auto unguarded_by = [&](size_t k, auto pos_round) {
      const auto rnd = [&](VF v) {
        if constexpr (decltype(pos_round)::value) {
          return RoundPos<D>(df, v);
        } else {
          return rd::RoundToDType<D>(df, v);
        }
      };
      const VF pos = rnd(hn::Mul(hn::Set(df, P[k]), amax));
      return rnd(D == DType::kBF16 ? hn::Mul(pos, sixth) : hn::Div(pos, hn::Set(df, 6.0f)));
    };
    auto unguarded = [&](size_t k) { return unguarded_by(k, std::false_type()); };
    // With the steps' p positive and non-increasing, a lane's unguarded scales never
    // increase (RNE_D is monotone): when the last step's is not 0 in any lane, no step's is,
    // the zero guard never applies, and the first and last steps' are the largest and
    // smallest.
    const VF last = monotone ? unguarded(steps - 1) : zero;
    const bool descending = monotone && hn::AllFalse(df, hn::Eq(last, zero));
    // bf16 maxima 0 or in [2^-60, 2^60] with every p >= 2^-30 (p non-increasing: the last
    // is the smallest): each product p amax and its rounding pos is 0 or in [2^-90, 2^60],
    // pos / 6's product too (>= 2^-93): RoundPos's domain, where it equals RoundToDType.
    const bool pos_round =
        D == DType::kBF16 && descending && P[steps - 1] >= 0x1p-30f &&
        hn::AllTrue(df, hn::Or(hn::Eq(amax, zero), hn::And(hn::Ge(amax, hn::Set(df, 0x1p-60f)),
                                                           hn::Le(amax, hn::Set(df, 0x1p60f)))));
    if (pos_round) {
      for (size_t k = 0; k + 1 < steps; ++k) {
        hn::Store(unguarded_by(k, std::true_type()), df, S + k * L);
      }
    } else if (descending) {
      for (size_t k = 0; k + 1 < steps; ++k) hn::Store(unguarded(k), df, S + k * L);
    }
    if (descending) {
      hn::Store(last, df, S + (steps - 1) * L);
      smax = hn::Load(df, S);
      smin = last;
    } else {
      for (size_t k = 0; k < steps; ++k) {
        const VF vp = hn::Set(df, P[k]);
        VF vs, vz;
        if (P[k] > 0.0f) {
          vs = unguarded(k);
          vs = hn::IfThenElse(hn::Eq(vs, zero), eps, vs);
        } else {
          ParamsVec<D, kFp4>(b, hn::Mul(vp, mn), hn::Mul(vp, mx), &vs, &vz);
        }
        smin = hn::Min(smin, vs);
        smax = hn::Max(smax, vs);
        hn::Store(vs, df, S + k * L);
      }
    }
    // Every later step's one-term bound, from the element of largest |x| (Fp4TermLargest).
    // The first `full` steps are summed for every lane below, where a bound would only skip
    // the decision of a step that cannot improve: they take 0, which rules nothing out (a
    // best of 0 rejects every step by the sums too: no error is below 0).
    const size_t full = std::min<size_t>(steps, 2);
    for (size_t k = 0; k < full; ++k) hn::Store(zero, df, TOP + k * L);
    if (D != DType::kF32 && descending && full < steps &&
        hn::AllTrue(df, hn::Le(hn::Mul(hn::Load(df, S + full * L), hn::Set(df, 5.5f)), ax1))) {
      // Scales non-increasing over the steps (`descending`), so 5.5 s <= 5.5 S[full] <= ax1
      // at every later step (the f32 product is monotone in s): Fp4TermLargest's test holds
      // in every lane of every step, checked once.
      for (size_t k = full; k < steps; ++k) {
        hn::Store(Fp4TermSix<D, N>(df, ax1, im1, hn::Load(df, S + k * L)), df, TOP + k * L);
      }
    } else {
      for (size_t k = full; k < steps; ++k) {
        hn::Store(Fp4TermLargest<D, N>(df, ax1, im1, hn::Load(df, S + k * L)), df,
                  TOP + k * L);
      }
    }
    // Step k's reciprocal f32(1 / s) (bf16 only; the scale itself otherwise) into R, computed
    // for the first step and the steps the one-term bound leaves live.
    auto reciprocal = [&](size_t k) {
      const VF vs = hn::Load(df, S + k * L);
      const VF vr = D == DType::kBF16 ? hn::Div(one, vs) : vs;
      hn::Store(vr, df, R + k * L);
      return vr;
    };
    reciprocal(0);
    if (D == DType::kBF16 && !hn::AllTrue(df, hn::And(hn::Ge(smin, hn::Set(df, 0x1p-100f)),
                                                      hn::Le(smax, hn::Set(df, 0x1p100f))))) {
      // Scales outside QuotientBf16's range (groups of absurd magnitude): the definition.
      for (size_t g = g0; g < g0 + cnt; ++g) {
        float buf[kN];
        Block one_group = b;
        one_group.x = group_x(g, buf);
        one_group.raw = nullptr;
        one_group.absmax = nullptr;
        one_group.fresh = false;
        if (b.fresh) {
          b.best[g] = FLT_MAX;
          b.masks[g] = 0;
        }
        one_group.rows = 1;
        one_group.cols = kN;
        one_group.imp = b.imp == nullptr ? nullptr : b.imp + (g % ng) * kN;
        one_group.best = b.best + g;
        one_group.masks = b.masks + g;
        one_group.improved = &any;
        SearchBlockScalar(one_group);
      }
      continue;
    }
    // Each group's best: an interval [blo, bhi] (exact: blo == bhi == the definition's
    // best), the best step's scale (NaN: from before this call), its improvements.
    VF blo;
#if HWY_TARGET != HWY_SCALAR
    if (b.fresh) {
      blo = hn::Set(df, FLT_MAX);  // best_error's start (Block::fresh)
    } else if (cnt == L) {  // (f32 values: exact)
      const hn::Half<DF> dh;
      const hn::Rebind<double, decltype(dh)> dd;
      blo = hn::Combine(df, hn::DemoteTo(dh, hn::LoadU(dd, b.best + g0 + L / 2)),
                        hn::DemoteTo(dh, hn::LoadU(dd, b.best + g0)));
    } else
#endif
    {
      for (size_t l = 0; l < L; ++l) {
        st_lo[l] =
            b.fresh ? FLT_MAX : static_cast<float>(b.best[std::min(g0 + l, groups - 1)]);
      }
      blo = hn::Load(df, st_lo);
    }
    VF bhi = blo, sbest = hn::Set(df, NAN);
    MF exact = hn::Eq(zero, zero);
    VU mask = hn::Zero(du);
    const MF valid = hn::FirstN(df, cnt);
    // Step k's decision from the f32 sums p of the lanes in `cand`.
    auto decide = [&](size_t k, VF p, MF cand) {
      const VF vs = hn::Load(df, S + k * L), t = hn::Load(df, TOP + k * L);
      const MF skip = hn::Or(hn::Not(cand), hn::Or(hn::Eq(vs, sbest), hn::Ge(t, bhi)));
      const MF cert = CertifiableF(df, p);
      const VF lo = hn::Mul(p, lo_c), hi = hn::Mul(p, hi_c);
      const MF reject = hn::Or(skip, hn::And(cert, hn::Ge(lo, bhi)));
      const MF improve = hn::AndNot(reject, hn::And(cert, hn::Lt(hi, blo)));
      const MF tie = hn::AndNot(reject, hn::Not(improve));
      const uint32_t bit = 1u << (b.i0 + static_cast<int>(k));
      blo = hn::IfThenElse(improve, lo, blo);
      bhi = hn::IfThenElse(improve, hi, bhi);
      sbest = hn::IfThenElse(improve, vs, sbest);
      exact = hn::Or(hn::And(improve, hn::Eq(p, zero)), hn::AndNot(improve, exact));
      mask = hn::IfThenElse(hn::RebindMask(du, improve), hn::Or(mask, hn::Set(du, bit)), mask);
      if (HWY_LIKELY(hn::AllFalse(df, tie))) return;
      // Near ties: the definition's sums, lane by lane.
      hn::Store(blo, df, st_lo);
      hn::Store(bhi, df, st_hi);
      hn::Store(sbest, df, st_s);
      hn::Store(hn::VecFromMask(df, exact), df, st_x);
      hn::Store(mask, du, st_m);
      HWY_ALIGN uint32_t tv[kMaxL];
      hn::Store(hn::VecFromMask(du, hn::RebindMask(du, tie)), du, tv);
      for (size_t l = 0; l < L; ++l) {
        if (tv[l] == 0) continue;
        const size_t g = g0 + l;
        uint32_t xb;
        std::memcpy(&xb, &st_x[l], 4);
        if (xb == 0) {
          st_lo[l] = st_hi[l] = exact_of(g, st_s[l]);
          std::memset(&st_x[l], 0xFF, 4);
        }
        const float e = exact_of(g, S[k * L + l]);
        if (e < st_lo[l]) {
          st_lo[l] = st_hi[l] = e;
          st_s[l] = S[k * L + l];
          st_m[l] |= bit;
        }
      }
      blo = hn::Load(df, st_lo);
      bhi = hn::Load(df, st_hi);
      sbest = hn::Load(df, st_s);
      exact = hn::MaskFromVec(hn::Load(df, st_x));
      mask = hn::Load(du, st_m);
    };
    // The first two steps (where most groups are live and about half improve): each lane
    // sums its group's terms (two chains per step, both steps in one pass over the
    // elements: four independent chains), then both decisions; the later steps' filters
    // then compare against the best of both.
    {
      VF sum[2];
      auto first_steps = [&](auto count) {
        constexpr size_t K = decltype(count)::value;
        VF sk[K], rk[K], s15[K], a0[K], a1[K];
        for (size_t k = 0; k < K; ++k) {
          sk[k] = hn::Load(df, S + k * L);
          rk[k] = k == 0 ? hn::Load(df, R) : reciprocal(k);
          // (scales in range for the two-base form: checked above)
          s15[k] = kLaneTables && D == DType::kBF16 ? OneAndHalf(df, sk[k]) : zero;
          a0[k] = a1[k] = zero;
        }
        auto term = [&](VF ax, VF im, size_t k) {
          if constexpr (kLaneTables && D == DType::kBF16) {
            return Fp4TermTwoBase<N>(df, ax, im, sk[k], rk[k], s15[k]);
          } else {
            return Fp4Term<D, N>(df, ax, im, sk[k], rk[k]);
          }
        };
        for (size_t j = 0; j < kN; j += 2) {
          const VF x0 = hn::Abs(X[j]), x1 = hn::Abs(X[j + 1]);
          for (size_t k = 0; k < K; ++k) {
            a0[k] = hn::Add(a0[k], term(x0, I[j], k));
            a1[k] = hn::Add(a1[k], term(x1, I[j + 1], k));
          }
        }
        for (size_t k = 0; k < K; ++k) sum[k] = hn::Add(a0[k], a1[k]);
      };
      if (full == 2) {
        first_steps(std::integral_constant<size_t, 2>());
      } else {
        first_steps(std::integral_constant<size_t, 1>());  // (steps >= 1)
      }
      for (size_t k = 0; k < full; ++k) decide(k, sum[k], valid);
    }
    // The live pairs of the later steps, listed branch-free (each pair as k * L + l, the
    // index of its step's parameters; L is a power of two), then their sums L at a time.
    HWY_ALIGN int32_t at[kSteps * kMaxL + kMaxL];
    size_t np = 0;
    uint32_t live_steps = 0;
    // First the steps the one term leaves some lane (no branch per step: whether a step has
    // a live lane is hard to predict), then only those steps: the two-term bound
    // (TwoTermBound; TOP keeps it for the decision) and their live pairs.
    uint32_t live1 = 0;
    for (size_t k = full; k < steps; ++k) {
      const MF live = hn::AndNot(hn::Or(hn::Eq(hn::Load(df, S + k * L), sbest),
                                        hn::Ge(hn::Load(df, TOP + k * L), bhi)),
                                 valid);
      hn::Store(hn::VecFromMask(df, live), df, LIVE + k * L);
      live1 |= static_cast<uint32_t>(!hn::AllFalse(df, live)) << k;
    }
    // (Two loops: the bounds' long chains of different steps overlap when no listing
    // depends on them.)
    for (uint32_t ls = live1; ls != 0; ls &= ls - 1) {
      const size_t k = static_cast<size_t>(__builtin_ctz(ls));
      const VF vs = hn::Load(df, S + k * L);
      const VF t = TwoTermBound(df, hn::Load(df, TOP + k * L),
                                Fp4Term<D, N>(df, ax2, im2, vs, reciprocal(k)));
      hn::Store(t, df, TOP + k * L);
      const MF live = hn::AndNot(hn::Ge(t, bhi), hn::MaskFromVec(hn::Load(df, LIVE + k * L)));
      hn::Store(hn::VecFromMask(df, live), df, LIVE + k * L);
      hn::Store(zero, df, PS + k * L);
    }
    for (uint32_t ls = live1; ls != 0; ls &= ls - 1) {
      const size_t k = static_cast<size_t>(__builtin_ctz(ls));
      const auto live_i = hn::RebindMask(di, hn::MaskFromVec(hn::Load(df, LIVE + k * L)));
      const size_t before = np;
      const auto base = hn::Set(di, static_cast<int32_t>(k * L));
      if constexpr (kMaxL == 8) {
        // The live lanes' indices from kLaneNibbles (lanes past the count: don't care).
        uint8_t bits = 0;
        hn::StoreMaskBits(di, live_i, &bits);
        const VU lanes = hn::And(
            hn::Shr(hn::Set(du, kLaneNibbles[bits]), hn::Load(du, kNibbleShifts)),
            hn::Set(du, 0xFu));
        hn::StoreU(hn::Add(hn::BitCast(di, lanes), base), di, at + np);
      } else {
        // (Compress in registers, then a plain store: the memory form is slow on some CPUs.)
        hn::StoreU(hn::Compress(hn::Add(hn::Iota(di, 0), base), live_i), di, at + np);
      }
      np += hn::CountTrue(di, live_i);
      live_steps |= static_cast<uint32_t>(np != before) << k;
    }
    VF vecs[kMaxL];
    for (size_t p0 = 0; p0 < np; p0 += L) {
      const size_t nq = std::min(L, np - p0);
      for (size_t q = nq; q < L; ++q) vecs[q] = zero;
      for (size_t q = 0; q < nq; ++q) {
        const size_t idx = static_cast<size_t>(at[p0 + q]), l = idx & (L - 1);
        const float* xg = tile_x + l * kN;
        const float* ig = b.imp == nullptr ? nullptr : b.imp + gi[l];
        const VF ss = hn::Set(df, S[idx]), rr = hn::Set(df, R[idx]);
        const VF table = kLaneTables ? Fp4Table<D>(df, ss) : zero;
        auto term = [&](size_t v) {
          const VF ax = hn::Abs(hn::LoadU(df, xg + v * L));
          const VF im = ig == nullptr ? one : hn::LoadU(df, ig + v * L);
          if constexpr (kLaneTables) {
            return Fp4TermTable<D, N>(df, ax, im, ss, rr, table);
          } else {
            return Fp4Term<D, N>(df, ax, im, ss, rr);
          }
        };
        VF acc = term(0);
        for (size_t v = 1; v < nv; ++v) acc = hn::Add(acc, term(v));
        vecs[q] = acc;
      }
      hn::Store(SumsOfLanes(df, vecs, L), df, sums);
      for (size_t q = 0; q < nq; ++q) PS[at[p0 + q]] = sums[q];
    }
    for (uint32_t ls = live_steps; ls != 0; ls &= ls - 1) {  // a step no lane sums: no change
      const size_t k = static_cast<size_t>(__builtin_ctz(ls));
      decide(k, hn::Load(df, PS + k * L), hn::MaskFromVec(hn::Load(df, LIVE + k * L)));
    }
#if HWY_TARGET != HWY_SCALAR
    if (cnt == L && (!b.exact_best || hn::AllTrue(df, exact))) {
      // A full tile whose bests need no definition's sum: blo (f32 values) widened to f64.
      const hn::Half<DF> dh;
      const hn::Rebind<double, decltype(dh)> dd;
      hn::StoreU(hn::PromoteTo(dd, hn::LowerHalf(dh, blo)), dd, b.best + g0);
      hn::StoreU(hn::PromoteTo(dd, hn::UpperHalf(dh, blo)), dd, b.best + g0 + L / 2);
      hn::StoreU(b.fresh ? mask : hn::Or(hn::LoadU(du, b.masks + g0), mask), du,
                 b.masks + g0);
      any_v = hn::Or(any_v, mask);
      continue;
    }
#endif
    hn::Store(blo, df, st_lo);
    hn::Store(sbest, df, st_s);
    hn::Store(hn::VecFromMask(df, exact), df, st_x);
    hn::Store(mask, du, st_m);
    for (size_t l = 0; l < cnt; ++l) {
      uint32_t xb;
      std::memcpy(&xb, &st_x[l], 4);
      float best = st_lo[l];
      if (b.exact_best && xb == 0) best = exact_of(g0 + l, st_s[l]);
      b.best[g0 + l] = best;
      b.masks[g0 + l] = (b.fresh ? 0u : b.masks[g0 + l]) | st_m[l];
      any |= st_m[l];
    }
  }
  HWY_ALIGN uint32_t any_l[kMaxL];
  hn::Store(any_v, du, any_l);
  for (size_t l = 0; l < L; ++l) any |= any_l[l];
  *b.improved |= any;
}

}  // namespace

template <DType D, int M, int N>
struct SearchFp4GroupsF {
  static void Run(const Block& b, bool* ok) {
    if constexpr (M == kFp4) SearchFp4Groups<D, N>(b, ok);
  }
};

void Fp4TermsKernel(DType d, int norm, int form, const float* ax, const float* imp, size_t n,
                    float s, float* out) {
  const DF df;
  const size_t L = hn::Lanes(df);
  const VF vs = hn::Set(df, s), vr = hn::Div(hn::Set(df, 1.0f), vs);
  auto run = [&](auto dc, auto nc) {
    constexpr DType D = decltype(dc)::value;
    constexpr int N = decltype(nc)::value;
    const VF tab = kLaneTables ? Fp4Table<D>(df, vs) : vs;
    for (size_t i = 0; i + L <= n; i += L) {
      const VF x = hn::LoadU(df, ax + i), im = hn::LoadU(df, imp + i);
      VF t;
      if (form == 2) {
        t = Fp4TermLargest<D, N>(df, x, im, vs);
      } else if constexpr (kLaneTables) {
        if (form == 3 && D == DType::kBF16) {
          t = Fp4TermTwoBase<N>(df, x, im, vs, vr, OneAndHalf(df, vs));
        } else if (form == 1) {
          t = Fp4TermTable<D, N>(df, x, im, vs, vr, tab);
        } else {
          t = Fp4Term<D, N>(df, x, im, vs, vr);
        }
      } else {
        t = Fp4Term<D, N>(df, x, im, vs, vr);
      }
      hn::StoreU(t, df, out + i);
    }
  };
  auto by_norm = [&](auto dc) {
    if (norm == 3) {
      run(dc, std::integral_constant<int, 3>());
    } else {
      run(dc, std::integral_constant<int, 2>());
    }
  };
  switch (d) {
    case DType::kBF16: by_norm(std::integral_constant<DType, DType::kBF16>()); break;
    case DType::kF16: by_norm(std::integral_constant<DType, DType::kF16>()); break;
    default: by_norm(std::integral_constant<DType, DType::kF32>()); break;
  }
}

bool SearchFp4GroupsKernel(const Block& b) {
  // The gathers' offsets are int32: a larger block takes the certified search.
  if (b.rows * b.cols > size_t{INT32_MAX}) {
    return b.raw == nullptr && SearchCertifiedKernel(b);
  }
  bool ok = true;
  return Dispatch<SearchFp4GroupsF>(b, &ok) && ok;
}

bool Fp4GroupsRawTarget() {
  return (kMaxL == 8 && hn::Lanes(DF()) == 8) || (kMaxL == 16 && hn::Lanes(DF()) == 16);
}

}  // namespace HWY_NAMESPACE
}  // namespace quench::calib::internal
HWY_AFTER_NAMESPACE();
