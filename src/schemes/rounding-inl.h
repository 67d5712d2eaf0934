// Per-target vector helpers shared by the scheme kernels: loading weight elements of dtype D
// (bf16, f16, f32) from unaligned memory as exact f32 lanes, and RNE_D, the round-to-nearest-
// even of an f32 lane to the nearest value of D (what torch does after every reduced-float
// elementwise op on CPU: compute in f32, round once to D). Bit for bit equal to the scalar
// conversions in float_formats.h for every finite input and for +-Inf.
//
// Highway "-inl.h" convention: include after hwy/highway.h, once per target (the toggled
// include guard below), from inside a file compiled through foreach_target.

#if defined(QUENCH_SCHEMES_ROUNDING_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QUENCH_SCHEMES_ROUNDING_INL_H_
#undef QUENCH_SCHEMES_ROUNDING_INL_H_
#else
#define QUENCH_SCHEMES_ROUNDING_INL_H_
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "quench/dtype.h"

HWY_BEFORE_NAMESPACE();
namespace quench {
namespace HWY_NAMESPACE {
namespace rounding {
namespace hn = hwy::HWY_NAMESPACE;

// Raw lane type of a weight dtype and its bit-pattern constants. For sign-magnitude IEEE
// formats, the abs bit patterns of finite values order like their magnitudes; a pattern is
// Inf or NaN exactly when its abs bits are >= kInfBits.
template <DType D>
struct Traits;
template <>
struct Traits<DType::kBF16> {
  using T = uint16_t;
  using S = int16_t;
  static constexpr T kAbsMask = 0x7FFF;
  static constexpr T kInfBits = 0x7F80;
};
template <>
struct Traits<DType::kF16> {
  using T = uint16_t;
  using S = int16_t;
  static constexpr T kAbsMask = 0x7FFF;
  static constexpr T kInfBits = 0x7C00;
};
template <>
struct Traits<DType::kF32> {
  using T = uint32_t;
  using S = int32_t;
  static constexpr T kAbsMask = 0x7FFFFFFF;
  static constexpr T kInfBits = 0x7F800000;
};

// Loads Lanes(df) elements of dtype D at p (unaligned) as exact f32 values.
template <DType D, class DF>
HWY_INLINE hn::Vec<DF> LoadF32(DF df, const uint8_t* p) {
  if constexpr (D == DType::kBF16) {
    // bf16 is the upper half of an f32: widen and shift left by 16.
    const hn::Rebind<uint16_t, DF> d16;
    const hn::RebindToUnsigned<DF> du;
    const auto wide = hn::PromoteTo(du, hn::LoadU(d16, reinterpret_cast<const uint16_t*>(p)));
    return hn::BitCast(df, hn::ShiftLeft<16>(wide));
  } else if constexpr (D == DType::kF16) {
    // binary16 -> binary32 is exact for every finite value (F16C, or Highway's integer
    // emulation, exact for finite inputs; callers refuse Inf/NaN before this pass).
    const hn::Rebind<hwy::float16_t, DF> d16;
    return hn::PromoteTo(df, hn::LoadU(d16, reinterpret_cast<const hwy::float16_t*>(p)));
  } else {
    return hn::LoadU(df, reinterpret_cast<const float*>(p));
  }
}

// RNE_D(v) for non-NaN v, as an f32 value (c10's f32 -> D conversion, then back).
template <DType D, class DF>
HWY_INLINE hn::Vec<DF> RoundToDType(DF df, hn::Vec<DF> v) {
  const hn::RebindToUnsigned<DF> du;
  if constexpr (D == DType::kBF16) {
    // c10 round_to_nearest_even: add 0x7FFF plus the lowest kept bit, drop 16 bits. Valid
    // for every non-NaN pattern, subnormals and Inf included (bf16 keeps f32's exponent);
    // a carry out of the mantissa is RNE's step into the next binade (or to Inf).
    const auto bits = hn::BitCast(du, v);
    const auto lsb = hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1u));
    const auto rounded = hn::Add(bits, hn::Add(hn::Set(du, 0x7FFFu), lsb));
    return hn::BitCast(df, hn::And(rounded, hn::Set(du, 0xFFFF0000u)));
  } else if constexpr (D == DType::kF16) {
    // Normal binary16 range [2^-14, 65520): keep 10 mantissa bits, RNE on the 13 dropped
    // bits (bias 0xFFF plus the lowest kept bit); a carry steps into the next binade.
    const auto bits = hn::BitCast(du, v);
    const auto lsb = hn::And(hn::ShiftRight<13>(bits), hn::Set(du, 1u));
    const auto rounded = hn::Add(bits, hn::Add(hn::Set(du, 0xFFFu), lsb));
    const auto normal = hn::BitCast(df, hn::And(rounded, hn::Set(du, 0xFFFFE000u)));
    // Below 2^-14 the grid is the subnormal step 2^-24: |v| + 0.5 has an f32 ulp of exactly
    // 2^-24 on [0.5, 1), so the FPU's RNE addition rounds |v| onto that grid (ties to an
    // even multiple, as binary16 does); subtracting 0.5 is then exact.
    const auto abs = hn::Abs(v);
    const auto half = hn::Set(df, 0.5f);
    const auto subnormal = hn::CopySignToAbs(hn::Sub(hn::Add(abs, half), half), v);
    // |v| >= 65520 (midpoint of 65504 and 2^16) overflows to Inf under RNE.
    const auto inf = hn::CopySignToAbs(hn::Inf(df), v);
    const auto result =
        hn::IfThenElse(hn::Lt(abs, hn::Set(df, 6.103515625e-05f)), subnormal, normal);  // 2^-14
    return hn::IfThenElse(hn::Ge(abs, hn::Set(df, 65520.0f)), inf, result);
  } else {
    (void)du;
    return v;  // f32 weights: f32 arithmetic is already in D.
  }
}

// c10::detail::fp8e4m3fn_from_fp32_value (torch 2.13) on finite lanes, giving the code in
// the low 8 bits of each u32 lane. It saturates: every |v| > 448 that would not round down
// to 448 gives 0x7E|sign, exactly what clamp(v, -448, 448) followed by the conversion gives,
// so the reference's clamp needs no instruction here. (NaN lanes cannot occur: non-finite
// inputs are refused before this pass and the scale is finite and > 0.)
template <class DF>
HWY_INLINE hn::Vec<hn::RebindToUnsigned<DF>> EncodeE4M3(DF df, hn::Vec<DF> v) {
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;  // for the signed compare below
  const auto bits = hn::BitCast(du, v);
  const auto f = hn::And(bits, hn::Set(du, 0x7FFFFFFFu));  // |v| bits
  // |v| < 2^-6 (below the smallest e4m3 normal): adding 2^14 (141 << 23) leaves an f32
  // with ulp 2^-9, the e4m3 subnormal step, so RNE places the code in the low bits.
  const auto denorm_mask = hn::Set(du, 141u << 23);
  const auto sub = hn::Sub(
      hn::BitCast(du, hn::Add(hn::BitCast(df, f), hn::BitCast(df, denorm_mask))), denorm_mask);
  // Normal range: rebias the exponent 127 -> 7 (adding (7-127) << 23 modulo 2^32) and round
  // the 20 dropped mantissa bits to nearest even (0x7FFFF plus the lowest kept bit).
  const auto mant_odd = hn::And(hn::ShiftRight<20>(f), hn::Set(du, 1u));
  const auto biased = hn::Add(
      hn::Add(f, hn::Set(du, (static_cast<uint32_t>(7 - 127) << 23) + 0x7FFFFu)), mant_odd);
  // Codes past 0x7E (a carry onto the NaN code 0x7F, or |v| >= 480, which gives a larger
  // value of this monotonic expression) saturate to 448 = 0x7E, as torch 2.13's c10 does.
  const auto normal = hn::Min(hn::ShiftRight<20>(biased), hn::Set(du, 0x7Eu));
  const auto is_sub = hn::RebindMask(
      du, hn::Lt(hn::BitCast(di, f), hn::Set(di, static_cast<int32_t>(121u << 23))));
  // The sign bit goes to bit 7 of the code: code | ((bits >> 24) & 0x80).
  return hn::OrAnd(hn::IfThenElse(is_sub, sub, normal), hn::ShiftRight<24>(bits),
                   hn::Set(du, 0x80u));
}

// Asks for the n bytes at p (typically the next row) to be brought into cache while the
// current row is computed. A kernel's passes over a row run from L1/L2; without this, the
// next row's first pass waits on memory with no computation to overlap.
HWY_INLINE void PrefetchBytes(const uint8_t* p, size_t n) {
  for (size_t b = 0; b < n; b += 64) hwy::Prefetch(p + b);
}

// Max of the abs bit patterns of n raw elements at p (unaligned), folded into acc.
// The tail (n not a multiple of the vector) goes through a zero-filled buffer: a zero
// pattern never raises the max, so padding does not change the result.
template <DType D, class DT = hn::ScalableTag<typename Traits<D>::T>>
HWY_INLINE hn::Vec<DT> AbsBitsMax(const uint8_t* p, size_t n, hn::Vec<DT> acc) {
  using T = typename Traits<D>::T;
  const DT dt;
  const size_t lanes = hn::Lanes(dt);
  const T* src = reinterpret_cast<const T*>(p);
  const auto mask = hn::Set(dt, Traits<D>::kAbsMask);
  auto acc1 = hn::Zero(dt);
  auto acc2 = hn::Zero(dt);
  auto acc3 = hn::Zero(dt);
  size_t i = 0;
  if (n >= 4 * lanes) {
    for (; i <= n - 4 * lanes; i += 4 * lanes) {
      acc = hn::Max(acc, hn::And(hn::LoadU(dt, src + i), mask));
      acc1 = hn::Max(acc1, hn::And(hn::LoadU(dt, src + i + lanes), mask));
      acc2 = hn::Max(acc2, hn::And(hn::LoadU(dt, src + i + 2 * lanes), mask));
      acc3 = hn::Max(acc3, hn::And(hn::LoadU(dt, src + i + 3 * lanes), mask));
    }
  }
  for (; i + lanes <= n; i += lanes) {
    acc = hn::Max(acc, hn::And(hn::LoadU(dt, src + i), mask));
  }
  if (i < n) {
    HWY_ALIGN T buf[HWY_MAX_BYTES / sizeof(T)] = {};
    std::memcpy(buf, p + i * sizeof(T), (n - i) * sizeof(T));
    acc = hn::Max(acc, hn::And(hn::Load(dt, buf), mask));
  }
  return hn::Max(hn::Max(acc, acc1), hn::Max(acc2, acc3));
}

// Horizontal max of an abs-bits accumulator (stored and scanned: this runs once per row or
// tile, and avoids MaxOfLanes, which Highway 1.0.3 lacks for u16 on some targets).
template <class DT>
HWY_INLINE hn::TFromD<DT> ReduceMax(DT dt, hn::Vec<DT> v) {
  using T = hn::TFromD<DT>;
  HWY_ALIGN T buf[HWY_MAX_BYTES / sizeof(T)];
  hn::Store(v, dt, buf);
  T m = 0;
  for (size_t k = 0; k < hn::Lanes(dt); ++k) m = std::max(m, buf[k]);
  return m;
}

}  // namespace rounding
// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace quench
HWY_AFTER_NAMESPACE();

#endif  // QUENCH_SCHEMES_ROUNDING_INL_H_
