// The imatrix_mse kernels' certified search (see imatrix_mse_kernel.h): per group, f32 sums
// with a rigorous bound on the definition's value, the definition's own sums only where the
// bound cannot decide. Compiled once per target through foreach_target.

// The definition rounds every f32 product and difference; GCC contracts a * b - c into an
// FMA in C++ mode wherever the target has one (the AVX2 / AVX-512 targets), so contraction
// is switched off for this whole file.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/calib/imatrix_mse_certified.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"
#include "calib/imatrix_mse-inl.h"
#include "calib/imatrix_mse_decide.h"

HWY_BEFORE_NAMESPACE();
namespace quench::calib::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// MXFP4's term of bf16 weights at a power-of-two scale s = 2^j with 2^-100 <= s <= 2^100
// (every E8M0 scale the search does not send to the definition, SC), from r = 1 / s (exact):
//  - x / s is x r exactly, a value with x's 8 significant bits, so the definition's RNE_bf16
//    of it changes nothing, unless the product leaves f32's normal range: below 2^-126 E2M1
//    gives 0 whether rounded first or not (|v| < 0.25 either way); beyond f32's range both
//    are +-Inf, clamped to 6;
//  - an E2M1 value times s is exact (at most 3 significant bits; 0.5 s >= 2^-101, 6 s <
//    2^103), so the definition's RNE_bf16 of dq changes nothing either;
//  - dq has x's sign or is 0 (s > 0, and cast_to_fp4 is odd: its magnitude is that of |v|),
//    so |dq - x| = ||dq| - |x|| exactly, and the term needs no signs.
// TermOf's E2M1 rounding (E2M1Magnitude) otherwise; 19 operations per vector against its 30.
template <int N>
HWY_INLINE VF TermMxPow2(DF df, VF x, VF im, VF s, VF r) {
  const VF ax = hn::Abs(x);
  const VF q = E2M1Magnitude(df, hn::Min(hn::Mul(ax, r), hn::Set(df, 6.0f)));
  const VF d = hn::Abs(hn::Sub(hn::Mul(q, s), ax));
  VF e = hn::Mul(d, d);
  if constexpr (N == 3) e = hn::Mul(e, d);
  return hn::Mul(e, im);
}

// One step's terms, Term or (Tab) TermTable with the step's code table; for bf16 the
// quotient from the scale's reciprocal (QuotientBf16: steps whose scale it does not cover
// go to the scalar definition, SC); (Pow2) MXFP4's of bf16 weights, TermMxPow2.
template <DType D, int M, int N, bool Tab, bool Pow2 = false>
struct StepTermT {
  VF s, r, zp, lo, hi, table;
  StepTermT(DF df, const Block& b, float s_, float r_, float zp_, VF lo_, VF hi_)
      : s(hn::Set(df, s_)), r(hn::Set(df, r_)), zp(hn::Set(df, zp_)), lo(lo_), hi(hi_) {
    if constexpr (Tab) table = CodeTable<D, M>(df, b, s, zp);
  }
  // The same step again, from what Save stored (the table to rebuild no more): kSaved floats,
  // vector-aligned, the table first.
  static constexpr size_t kSaved = (hn::MaxLanes(DF()) + 3 + hn::MaxLanes(DF()) - 1) /
                                   hn::MaxLanes(DF()) * hn::MaxLanes(DF());
  StepTermT(DF df, const float* saved, VF lo_, VF hi_)
      : s(hn::Set(df, saved[hn::Lanes(df)])), r(hn::Set(df, saved[hn::Lanes(df) + 1])),
        zp(hn::Set(df, saved[hn::Lanes(df) + 2])), lo(lo_), hi(hi_) {
    if constexpr (Tab) table = hn::Load(df, saved);
  }
  void Save(DF df, float* saved) const {
    if constexpr (Tab) hn::Store(table, df, saved);
    saved[hn::Lanes(df)] = hn::GetLane(s);
    saved[hn::Lanes(df) + 1] = hn::GetLane(r);
    saved[hn::Lanes(df) + 2] = hn::GetLane(zp);
  }
  HWY_INLINE VF operator()(VF x, VF im) const {
    const DF df;
    if constexpr (Pow2) return TermMxPow2<N>(df, x, im, s, r);
    const VF v = D == DType::kBF16 ? QuotientBf16(df, x, r) : Quotient<D>(df, x, s);
    if constexpr (Tab) return TermTableOf<D, M, N>(df, v, x, im, zp, lo, hi, table);
    return TermOf<D, M, N>(df, v, x, im, s, zp, lo, hi);
  }
};

// Up to 32 steps (LastStep < 32), padded to whole vectors.
constexpr size_t kMaxSteps = 64;

// The element's weight in the ordering heuristic: x^8 * imp (clipping errors grow with |x|
// and count with imp; the eighth power, which favours the large |x| the shrunken steps clip,
// rules out more steps by one term and by the first vector than |x|^3 * imp did, for the
// same four operations). Any order and any element give a valid bound, so a NaN key
// (0 * Inf), an underflow to 0 or an overflow to Inf needs no care: a lane or element it
// leaves chosen is as valid as any other.
HWY_INLINE VF Key(VF x, VF im) {
  const VF x2 = hn::Mul(x, x), x4 = hn::Mul(x2, x2);
  return hn::Mul(hn::Mul(x4, x4), im);
}

// The certified search (imatrix_mse_kernel.h): per group, lanes along its elements, the same
// f32 terms as the definition summed in f32 in any order, with a bound on what the
// definition's value can be; the definition's own sum only where the bound cannot decide.
// Bound: for n nonnegative terms with exact sum S, any f32 summation order gives P with
// |P - S| <= (n - 1) u S / (1 - (n - 1) u), u = 2^-24; the definition's f64 sum in element
// order is within (n - 1) 2^-53 S of S and its f32 rounding within 2^-24 of that (normal
// range). So E (the definition's value) lies in [P (1 - m), P (1 + m)] with m = (n + 2) 2^-23
// (twice what these add up to, which also covers the rounding of the double products
// below), and any partial f32 sum P_c of some of the terms gives E >= P_c (1 - m).
// Also E >= t for each single term t, exactly: the f64 partial sums of nonnegative terms
// never fall below any term added (rounding is monotone; an f32 term is an f64 value), and
// rounding to f32 is monotone too.
// Each group keeps its best as an interval [blo, bhi] around the definition's best value:
//   t >= bhi or P_c (1 - m) >= bhi -> E >= best: not an improvement (stop summing);
//   P (1 + m) < blo                 -> E < best: an improvement, best in [P (1 - m), P (1 + m)];
//   otherwise (a near tie)          -> the definition's sums of this step and of the best
//                                      step, compared exactly (ErrorF32, the earlier kept).
// Equal parameters give equal errors: such a step is not an improvement. The masks and
// improved bits are the definition's; best is its value when b.exact_best.
// Where the work goes (the bench's int4 g128 and NVFP4 groups): the few improving steps
// (2.9 and 1.9 per group) need every term; the others are decided from as few terms as
// possible, with as few data-dependent branches as possible (a mispredicted one costs about
// a vector of terms). Per group:
//  - the element of largest key (x^8 * imp), its term at every step at once (lanes across
//    steps): after the first step's full sum, that one term rules out ~3/4 of the steps
//    (those that clip it hard), all at once (`live`: the best only decreases);
//  - the group reordered so that its first vector holds each lane's element of largest
//    key; the live steps' first vectors together (independent sums that overlap), which rule
//    out most of the rest;
//  - the remaining steps, from their second vector on, summed to the end, all of them before
//    any decision (a further partial check measured slower; a decision between two sums, a
//    branch the predictor cannot learn, threw away the work in flight), then decided in
//    step order.
// On the bench's int4 g128 groups: 43.7 vectors of terms per group, of which the improving
// steps' full sums are 21.8; 2.65 against 5.0 ns per weight before the certified search
// (quench-imatrix-bench; bench/README.md "imatrix_mse: where the search's time goes").
template <DType D, int M, int N, bool Tab, bool Pow2 = false>
void SearchCertified(const Block& b) {
  using StepTerm = StepTermT<D, M, N, Tab, Pow2>;
  const DF df;
  const size_t L = hn::Lanes(df), n = b.group, nv = n / L;
  const size_t ng = b.cols / n, groups = b.rows * ng;
  const size_t steps = static_cast<size_t>(b.i1 - b.i0 + 1);
  const size_t kp = (steps + L - 1) / L * L;
  HWY_ALIGN float P[kMaxSteps], S[kMaxSteps], R[kMaxSteps], Z[kMaxSteps], TOP[kMaxSteps];
  uint8_t SC[kMaxSteps] = {};
  bool sc_set = false;  // some SC[k] may be set (cleared before a group that needs none)
  for (size_t k = 0; k < kp; ++k) {  // p = 1 - i / grid (padding lanes: 1, never read)
    P[k] = k < steps ? StepFactor(b.i0 + static_cast<int>(k), b.grid) : 1.0f;
  }
  thread_local std::vector<float> ones;
  if (b.imp == nullptr && ones.size() < n) ones.assign(n, 1.0f);
  // The group reordered (nv > 1): each lane's element of largest key first.
  float* const xs = nv > 1 ? Scratch(0, n) : nullptr;
  float* const is = nv > 1 ? Scratch(1, n) : nullptr;
  const double m = static_cast<double>(n + 2) * 0x1p-23;
  const double lo_f = 1.0 - m, hi_f = 1.0 + m;
  const VF qlo = hn::Set(df, static_cast<float>(b.layout.qmin));
  const VF qhi = hn::Set(df, static_cast<float>(b.layout.qmax));
  const bool mxfp4 = b.format == ImatrixFormat::kMxfp4;
  uint32_t any = 0;
  for (size_t g = 0; g < groups; ++g) {
    const float* xg = b.x + g * n;
    const float* ig = b.imp == nullptr ? nullptr : b.imp + (g % ng) * n;
    const float* im = ig == nullptr ? ones.data() : ig;
    // Min, max, and per lane the element of largest key (its vector in `at`).
    const VF x0 = hn::LoadU(df, xg), i0 = hn::LoadU(df, im);
    VF mn = x0, mx = x0, top = Key(x0, i0), sx = x0, si = i0, at = hn::Zero(df);
    for (size_t v = 1; v < nv; ++v) {
      const VF xv = hn::LoadU(df, xg + v * L), iv = hn::LoadU(df, im + v * L);
      mn = hn::Min(mn, xv);
      mx = hn::Max(mx, xv);
      const VF kv = Key(xv, iv);
      const auto more = hn::Gt(kv, top);
      top = hn::IfThenElse(more, kv, top);
      sx = hn::IfThenElse(more, xv, sx);
      si = hn::IfThenElse(more, iv, si);
      at = hn::IfThenElse(more, hn::Set(df, static_cast<float>(v)), at);
    }
    const float* xo = xg;  // the order the steps' sums take
    const float* io = im;
    if (nv > 1) {
      hn::Store(sx, df, xs);
      hn::Store(si, df, is);
      for (size_t v = 1; v < nv; ++v) {
        const auto moved = hn::Eq(at, hn::Set(df, static_cast<float>(v)));
        hn::Store(hn::IfThenElse(moved, x0, hn::LoadU(df, xg + v * L)), df, xs + v * L);
        hn::Store(hn::IfThenElse(moved, i0, hn::LoadU(df, im + v * L)), df, is + v * L);
      }
      xo = xs;
      io = is;
    }
    float m0 = hn::GetLane(hn::MinOfLanes(df, mn)), M0 = hn::GetLane(hn::MaxOfLanes(df, mx));
    if (b.expand != 1.0) {  // as MakeTiles
      m0 = Expanded(m0, b.expand, b.dtype);
      M0 = Expanded(M0, b.expand, b.dtype);
    }
    // Every step's parameters, lanes across steps (the operations StepArrays does across
    // groups); MXFP4's E8M0 scale of f16 weights scalar.
    if (M == kFp4 && mxfp4 && D == DType::kF16) {
      for (size_t k = 0; k < kp; ++k) {
        if (k >= steps) {  // padding lanes (never read)
          S[k] = 1.0f;
          Z[k] = 0.0f;
          continue;
        }
        float smn, smx;
        StepRange(m0, M0, b.i0 + static_cast<int>(k), b.grid, 1.0, b.dtype, &smn, &smx);
        const StepParams sp = ParamsOf(b, smn, smx);
        S[k] = sp.scale;
        R[k] = 1.0f / sp.scale;
        Z[k] = sp.zp;
        SC[k] = !std::isfinite(sp.scale) || (D == DType::kBF16 && !ReciprocalScale(sp.scale));
      }
    } else {
      auto recip_ok = hn::Eq(hn::Zero(df), hn::Zero(df));
      for (size_t k = 0; k < kp; k += L) {
        const VF vp = hn::Load(df, P + k);
        VF vs, vz;
        StepParamsVec<D, M>(b, mxfp4, hn::Mul(vp, hn::Set(df, m0)), hn::Mul(vp, hn::Set(df, M0)),
                            &vs, &vz);
        hn::Store(vs, df, S + k);
        hn::Store(hn::Div(hn::Set(df, 1.0f), vs), df, R + k);
        hn::Store(vz, df, Z + k);
        if constexpr (D == DType::kBF16) {
          recip_ok = hn::And(recip_ok, hn::And(hn::Ge(vs, hn::Set(df, 0x1p-100f)),
                                               hn::Le(vs, hn::Set(df, 0x1p100f))));
        }
      }
      // Only an asymmetric range (mx - mn) and MXFP4's power of two (2^128) can overflow D;
      // the other scales are finite. bf16 terms take the quotient from the scale's
      // reciprocal where QuotientBf16 holds: every step but in groups of absurd magnitude,
      // so checked lane-wise first (for bf16 that check covers MXFP4's Inf too).
      const bool all_recip = D != DType::kBF16 || hn::AllTrue(df, recip_ok);
      if (M == kIntAsym || (mxfp4 && D != DType::kBF16) || !all_recip) {
        for (size_t k = 0; k < steps; ++k) {
          SC[k] = ((M == kIntAsym || mxfp4) && !std::isfinite(S[k])) ||
                  (D == DType::kBF16 && !ReciprocalScale(S[k]));
        }
        sc_set = true;
      } else if (sc_set) {
        std::fill_n(SC, kMaxSteps, uint8_t{0});
        sc_set = false;
      }
    }
    // The group's element of largest key (a lane of the first reordered vector): its term
    // at every step.
    intptr_t lane = hn::FindFirstTrue(df, hn::Eq(top, hn::MaxOfLanes(df, top)));
    if (lane < 0) lane = 0;
    const float tx = nv > 1 ? xs[lane] : xg[lane], ti = nv > 1 ? is[lane] : im[lane];
    for (size_t k = 0; k < kp; k += L) {
      hn::Store(Term<D, M, N>(df, hn::Set(df, tx), hn::Set(df, ti), hn::Load(df, S + k),
                              hn::Load(df, Z + k), qlo, qhi),
                df, TOP + k);
    }
    auto exact_of = [&](size_t k) {
      return ErrorF32(GroupErrorScalar(b, xg, ig, n, {S[k], Z[k]}));
    };
    CertifiedBest best;
    best.blo = best.bhi = b.best[g];
    // Step k's decision; p: its full f32 sum when have_p (else summed here; acc0, when given:
    // the step's first vector of terms, already computed).
    auto step = [&](size_t k, bool have_p, double p, const float* acc0) {
      const uint32_t bit = 1u << (b.i0 + static_cast<int>(k));
      if (!SC[k]) {
        if (best.bk != SIZE_MAX && S[k] == S[best.bk] && Z[k] == Z[best.bk]) {
          return;  // the best step's parameters: the same error, and the earlier stays
        }
        if (TOP[k] >= best.bhi) return;  // one term at or above the best already
        if (!have_p) {
          const StepTerm st(df, b, S[k], R[k], Z[k], qlo, qhi);
          VF acc = acc0 != nullptr ? hn::Load(df, acc0) : hn::Zero(df);
          for (size_t v = acc0 != nullptr ? 1 : 0; v < nv; ++v) {
            acc = hn::Add(acc, st(hn::LoadU(df, xo + v * L), hn::LoadU(df, io + v * L)));
          }
          p = hn::GetLane(hn::SumOfLanes(df, acc));
        }
      }
      DecideStep(best, k, bit, !SC[k], p, lo_f, hi_f, exact_of);
    };
    step(0, false, 0.0, nullptr);
    // The steps that may still improve: one term below the best after the first step (the
    // best only decreases), and those only the definition takes. Deciding them in a row
    // after this filter, not each in turn, spares a mispredicted branch per step.
    // A step with the previous step's parameters (bit for bit) has that step's error, the
    // definition being a function of the group and (s, zp) alone, and the best is at most
    // that error by then: never strictly below it, so it never improves (MXFP4's power-of-two
    // scales repeat over about four steps in a row at the default grid).
    uint32_t live = 0;
    for (size_t k = 1; k < steps; ++k) {
      const bool repeat = std::bit_cast<uint32_t>(S[k]) == std::bit_cast<uint32_t>(S[k - 1]) &&
                          std::bit_cast<uint32_t>(Z[k]) == std::bit_cast<uint32_t>(Z[k - 1]);
      live |= static_cast<uint32_t>(!repeat && (!(TOP[k] >= best.bhi) || SC[k])) << k;
    }
    if (nv == 1) {
      // One vector per step: the live steps' sums together (independent work that
      // overlaps), then their decisions in step order.
      double PS[kMaxSteps];
      for (uint32_t m = live; m != 0; m &= m - 1) {
        const size_t k = static_cast<size_t>(__builtin_ctz(m));
        if (SC[k]) continue;
        const StepTerm st(df, b, S[k], R[k], Z[k], qlo, qhi);
        PS[k] = hn::GetLane(hn::SumOfLanes(df, st(hn::LoadU(df, xg), hn::LoadU(df, im))));
      }
      for (uint32_t m = live; m != 0; m &= m - 1) {
        const size_t k = static_cast<size_t>(__builtin_ctz(m));
        step(k, !SC[k], PS[k], nullptr);
      }
    } else {
      // The live steps' first vectors (each lane's element of largest key) together, then
      // the steps those do not rule out, in step order, from their second vector on.
      HWY_ALIGN float acc0[kMaxSteps * hn::MaxLanes(DF())];
      HWY_ALIGN float saved[kMaxSteps * StepTerm::kSaved];  // StepTerm::Save per step
      uint32_t live2 = 0;
      for (uint32_t m = live; m != 0; m &= m - 1) {
        const size_t k = static_cast<size_t>(__builtin_ctz(m));
        if (SC[k]) {
          live2 |= 1u << k;
          continue;
        }
        const StepTerm st(df, b, S[k], R[k], Z[k], qlo, qhi);
        st.Save(df, saved + k * StepTerm::kSaved);
        const VF a = st(hn::LoadU(df, xo), hn::LoadU(df, io));
        hn::Store(a, df, acc0 + k * L);
        const double pc = hn::GetLane(hn::SumOfLanes(df, a));
        live2 |= static_cast<uint32_t>(!(Certifiable(pc) && pc * lo_f >= best.bhi)) << k;
      }
      // Their sums to the end, all before any decision: a decision is a data-dependent
      // branch, and one mispredicted between two sums threw away the work in flight (a step
      // a later best would rule out by its one term is summed needlessly: 0.1 per group on
      // the bench, against 4 summed).
      double PS[kMaxSteps];
      for (uint32_t m = live2; m != 0; m &= m - 1) {
        const size_t k = static_cast<size_t>(__builtin_ctz(m));
        if (SC[k]) continue;
        const StepTerm st(df, saved + k * StepTerm::kSaved, qlo, qhi);
        VF acc = hn::Load(df, acc0 + k * L);
        for (size_t v = 1; v < nv; ++v) {
          acc = hn::Add(acc, st(hn::LoadU(df, xo + v * L), hn::LoadU(df, io + v * L)));
        }
        PS[k] = hn::GetLane(hn::SumOfLanes(df, acc));
      }
      for (uint32_t m = live2; m != 0; m &= m - 1) {
        const size_t k = static_cast<size_t>(__builtin_ctz(m));
        step(k, !SC[k], PS[k], nullptr);
      }
    }
    if (b.exact_best && !best.exact) best.blo = exact_of(best.bk);
    b.best[g] = best.blo;
    b.masks[g] |= best.mask;
    any |= best.mask;
  }
  *b.improved |= any;
}

template <DType D, int M, int N>
struct SearchCertifiedF {
  static void Run(const Block& b) {
    // Int codes of at most 16 values through a table where one vector holds them.
    if constexpr (M != kFp4 && kTableTarget) {
      if (b.layout.qmax - b.layout.qmin < 16) return SearchCertified<D, M, N, true>(b);
    }
    // MXFP4's power-of-two scales of bf16 weights: TermMxPow2.
    if constexpr (M == kFp4 && D == DType::kBF16) {
      if (b.format == ImatrixFormat::kMxfp4) return SearchCertified<D, M, N, false, true>(b);
    }
    SearchCertified<D, M, N, false>(b);
  }
};

bool SearchCertifiedKernel(const Block& b) { return Dispatch<SearchCertifiedF>(b); }

void MxTermsKernel(int norm, const float* x, const float* imp, size_t n, float s, float* out) {
  const DF df;
  const VF vs = hn::Set(df, s), vr = hn::Set(df, 1.0f / s);
  for (size_t i = 0; i < n; i += hn::Lanes(df)) {
    const VF x_ = hn::LoadU(df, x + i), im = hn::LoadU(df, imp + i);
    hn::StoreU(norm == 3 ? TermMxPow2<3>(df, x_, im, vs, vr) : TermMxPow2<2>(df, x_, im, vs, vr),
               df, out + i);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace quench::calib::internal
HWY_AFTER_NAMESPACE();
