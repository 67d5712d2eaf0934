// The quantization error under column scales (AWQ's per-row error and loss): the scalar
// definition and the BF16 Highway kernel (see int_scaled_error.h), compiled once per target
// through Highway's foreach_target skeleton.
//
// The definition, per row and candidate s (f64 per column), as the reference computes it in
// torch for a BF16 weight (RNE(y): y rounded to BF16, ties to even):
//   ws[c]   = RNE(f32(w[c] * s[c]))                  weight * scales, stored in the weight
//   per group of columns: mn, mx = min, max of ws; scale, zp = calculate_qparams(mn, mx)
//   v       = round_half_even(clamp(RNE(RNE(ws / scale) + zp), qmin, qmax))  (symmetric: no zp)
//   deq     = RNE((v - zp) * scale)                  _dequantize
//   back    = RNE(f32(deq / s[c]))                   / scales, promoted to f64, back to BF16
//   dW[c]   = w[c] - back                            (f64)
//   loss    = sum_c h[c] * dW[c]^2 in f64, as ScaledDot4 orders it.
// Every product or quotient of an f32 and an f64 is taken in f64 and rounded to f32 once.
#include "schemes/int_scaled_error.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <type_traits>

// No a * b + c may become one fused operation: the definition rounds every product (the
// loss's acc + (e * e) * h is fused into an FMA on AVX2 otherwise; tests/test_awq_kernel.cc).
#pragma GCC optimize("fp-contract=off")

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/schemes/int_scaled_error.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "schemes/int_scaled-inl.h"  // hn, rd, iq; GroupParamsInRange

HWY_BEFORE_NAMESPACE();
namespace quench::intq {
namespace HWY_NAMESPACE {

// One row, vectors of N = 4 or 8 f64 lanes (AVX2, AVX-512) and as many f32 lanes (half a
// register on AVX-512, which Zen 4 executes at full rate). Without NaN selects: with finite
// weights, scales s in [2^-20, 2^20] (the caller's precondition: ScaledKernelScales) and
// group scales in [2^-90, 2^90] (checked per group), no operation below can produce a NaN
// (no 0/0, inf - inf or 0 * inf before the loss), so RNE's bit arithmetic is exact on every
// lane.
#if HWY_TARGET == HWY_SCALAR
template <bool kLoss, class D64>
HWY_INLINE bool ScaledRow(D64, const uint16_t*, const double*, const double*, const double*,
                    const iq::Layout&, bool, float*, double*) {
  return false;  // one lane: the scalar definition
}
#else
template <bool kLoss, class D64>
HWY_INLINE bool ScaledRow(D64 d64, const uint16_t* w, const double* s, const double* inv,
                    const double* h, const iq::Layout& lay, bool symmetric, float* ws,
                    double* out) {
  constexpr size_t N = hn::MaxLanes(D64());
  if constexpr (N != 4 && N != 8) {
    return false;
  } else {
    const hn::Rebind<float, D64> df;
    const hn::Rebind<uint32_t, D64> du;
    const hn::Rebind<uint16_t, D64> d16;
    // ScaledDot4's four partial sums: lane k sums columns c = k mod 4, in column order.
    using DA = std::conditional_t<N == 8, hn::Half<D64>, D64>;
    const DA da;
    auto acc = hn::Zero(da);
    const size_t group = lay.group;
    if (group % N != 0) return false;
    auto load_w = [&](size_t c) {
      return hn::BitCast(df, hn::ShiftLeft<16>(hn::PromoteTo(du, hn::LoadU(d16, w + c))));
    };
    const auto abs_mask = hn::Set(du, 0x7FFFFFFFu);
    const hn::RebindToSigned<D64> di64;
    const auto low29 = hn::Set(di64, (int64_t{1} << 29) - 1);
    const auto near_bias = hn::Set(di64, 16 - (int64_t{1} << 28));  // window 2^28 +- 16
    const auto near_width = hn::Set(di64, 33);
    const auto qmin = hn::Set(df, static_cast<float>(lay.qmin));
    const auto qmax = hn::Set(df, static_cast<float>(lay.qmax));
    for (size_t g = 0; g < lay.n_groups; ++g) {
      const size_t c0 = g * group, c1 = c0 + group;
      auto mn = hn::Set(df, HUGE_VALF), mx = hn::Set(df, -HUGE_VALF);
      auto big = hn::Zero(du);
      for (size_t c = c0; c < c1; c += N) {
        const auto p =
            hn::DemoteTo(df, hn::Mul(hn::PromoteTo(d64, load_w(c)), hn::LoadU(d64, s + c)));
        big = hn::Max(big, hn::And(hn::BitCast(du, p), abs_mask));
        const auto r = rd::RoundToDType<DType::kBF16>(df, p);
        hn::StoreU(r, df, ws + c);
        mn = hn::Min(mn, r);
        mx = hn::Max(mx, r);
      }
      // A non-finite product: the scalar definition's NaN handling decides.
      if (hn::GetLane(hn::MaxOfLanes(du, big)) >= 0x7F800000u) return false;
      // min and max are exact whatever the order (a -0 against a +0 gives the same scale and
      // zero point: calculate_qparams takes min(mn, 0) and max(mx, 0) first).
      iq::GroupParams gp;
      if (!GroupParamsInRange(hn::GetLane(hn::MinOfLanes(df, mn)),
                              hn::GetLane(hn::MaxOfLanes(df, mx)), lay, symmetric, &gp)) {
        return false;
      }
      const auto scale = hn::Set(df, gp.scale);
      const auto zp = hn::Set(df, static_cast<float>(gp.zp));
      // v - zp as v + (-zp) with -zp = +0 when zp is 0: the definition's (int)q - zp is an
      // integer, +0 where v rounded to -0.
      const auto neg_zp = hn::Set(df, static_cast<float>(-gp.zp));
      for (size_t c = c0; c < c1; c += N) {
        auto v = rd::RoundToDType<DType::kBF16>(df, hn::Div(hn::LoadU(df, ws + c), scale));
        if (!symmetric) v = rd::RoundToDType<DType::kBF16>(df, hn::Add(v, zp));
        v = hn::Round(hn::Min(hn::Max(v, qmin), qmax));
        const auto deq = rd::RoundToDType<DType::kBF16>(df, hn::Mul(hn::Add(v, neg_zp), scale));
        // deq / s as deq * (1 / s), within 4 f64 ulps of the quotient: the same f32 unless
        // the quotient lies that close to a midpoint of two f32 values (low 29 bits of the
        // f64 near 2^28), where the exact quotient decides (about once in 2^24 lanes).
        const auto dd = hn::PromoteTo(d64, deq);
        auto q = hn::Mul(dd, hn::LoadU(d64, inv + c));
        const auto near = hn::And(hn::Add(hn::BitCast(di64, q), near_bias), low29);
        if (HWY_UNLIKELY(!hn::AllFalse(d64, hn::RebindMask(d64, hn::Lt(near, near_width))))) {
          q = hn::Div(dd, hn::LoadU(d64, s + c));
        }
        const auto back = rd::RoundToDType<DType::kBF16>(df, hn::DemoteTo(df, q));
        const auto e = hn::Sub(hn::PromoteTo(d64, load_w(c)), hn::PromoteTo(d64, back));
        if constexpr (kLoss) {
          const auto t = hn::Mul(hn::Mul(e, e), hn::LoadU(d64, h + c));
          if constexpr (N == 8) {
            acc = hn::Add(acc, hn::LowerHalf(da, t));
            acc = hn::Add(acc, hn::UpperHalf(da, t));
          } else {
            acc = hn::Add(acc, t);
          }
        } else {
          hn::StoreU(e, d64, out + c);
        }
      }
    }
    if constexpr (kLoss) {
      HWY_ALIGN double a[4];
      hn::Store(acc, da, a);
      *out = (a[0] + a[1]) + (a[2] + a[3]);
    }
    return true;
  }
}
#endif  // HWY_TARGET == HWY_SCALAR

bool ScaledRowLossKernel(const uint16_t* w, const double* s, const double* inv, const double* h,
                   const iq::Layout& lay, bool symmetric, float* ws, double* loss) {
  return ScaledRow<true>(hn::ScalableTag<double>(), w, s, inv, h, lay, symmetric, ws, loss);
}

bool ScaledRowErrorKernel(const uint16_t* w, const double* s, const double* inv,
                          const iq::Layout& lay,
                    bool symmetric, float* ws, double* dw) {
  return ScaledRow<false>(hn::ScalableTag<double>(), w, s, inv, nullptr, lay, symmetric, ws, dw);
}

}  // namespace HWY_NAMESPACE
}  // namespace quench::intq
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace quench::intq {

HWY_EXPORT(ScaledRowLossKernel);
HWY_EXPORT(ScaledRowErrorKernel);

namespace iq = internal;

void ScaledErrorRowScalar(const float* w, const double* s, const iq::Layout& lay,
                       const KernelParams& q, DType d, float* ws, double* out) {
  const size_t cols = lay.group * lay.n_groups;
  for (size_t c = 0; c < cols; ++c) {
    // weight.data.copy_(orig * scales): the product in the scales' dtype, stored in D.
    ws[c] = iq::RoundToDType(static_cast<float>(double(w[c]) * s[c]), d);
  }
  for (size_t g = 0; g < lay.n_groups; ++g) {
    const size_t c0 = g * lay.group, c1 = c0 + lay.group;
    float mn = ws[c0], mx = ws[c0];
    for (size_t c = c0; c < c1; ++c) {
      mn = std::min(mn, ws[c]);
      mx = std::max(mx, ws[c]);
    }
    const iq::GroupParams p = iq::ComputeParams(mn, mx, lay, q.symmetric, d);
    for (size_t c = c0; c < c1; ++c) {
      const int qv = iq::QuantizeValue(ws[c], p, lay, q.symmetric, d);
      // _dequantize: (q - zp) * scale in D; then / scales, promoted, and .to(D).
      const float deq = iq::RoundToDType(static_cast<float>(qv - p.zp) * p.scale, d);
      const float back = iq::RoundToDType(static_cast<float>(double(deq) / s[c]), d);
      out[c] = double(w[c]) - double(back);
    }
  }
}

double ScaledDot4(const double* a, const double* b, size_t n) {
  double acc[4] = {0, 0, 0, 0};
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int k = 0; k < 4; ++k) acc[k] += a[i + k] * b[i + k];
  }
  for (; i < n; ++i) acc[0] += a[i] * b[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

bool ScaledKernelScales(const double* s, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (!(s[i] >= 0x1p-20 && s[i] <= 0x1p20)) return false;
  }
  return true;
}

bool Bf16ScaledRowLoss(const uint16_t* w, const double* s, const double* inv, const double* h,
                    const iq::Layout& lay, bool symmetric, float* ws, double* loss) {
  return HWY_DYNAMIC_DISPATCH(ScaledRowLossKernel)(w, s, inv, h, lay, symmetric, ws, loss);
}

bool Bf16ScaledRowError(const uint16_t* w, const double* s, const double* inv,
                        const iq::Layout& lay,
                     bool symmetric, float* ws, double* dw) {
  return HWY_DYNAMIC_DISPATCH(ScaledRowErrorKernel)(w, s, inv, lay, symmetric, ws, dw);
}

}  // namespace quench::intq
#endif  // HWY_ONCE
