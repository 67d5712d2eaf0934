// NVFP4's element rounding as comparisons: for a divisor eff, the bf16 bit patterns at which
// Fp4Nibble(x / eff) changes, so that a table over sorted bf16 values (the FP8-source kernel,
// fp8_source_nvfp4.cc) is filled by integer compares instead of one f32 division per entry.
//
// Why this is exact. Let x >= +0 be a finite bf16 value and eff > 0 an f32 value (finite, or
// +inf), and v = RN(x / eff), the IEEE f32 quotient (round to nearest, ties to even, gradual
// underflow; the default MXCSR, which the definition runs under too).
//  1. Fp4Nibble (fp4_shared.h) clamps v to 6 and takes the E2M1 index of |v| by the chain
//     <= 0.25, < 0.75, <= 1.25, < 1.75, <= 2.5, < 3.5, <= 5; for v >= 0 the index is therefore
//        [v > 0.25] + [v >= 0.75] + [v > 1.25] + [v >= 1.75] + [v > 2.5] + [v >= 3.5] + [v > 5]
//     (the clamp changes no comparison with a threshold <= 5; v = +inf gives 7 either way).
//     The nibble of -x is that index | 8 * [v > 0]: RN(-x / eff) = -v, and the sign bit is set
//     iff -v < 0 (so -0 packs as 0).
//  2. Each threshold t in {0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5} has at most 3 significant
//     bits, so its f32 significand is even and its neighbours' are odd. RN is monotonic, so
//        RN(q) > t   <=>  q > mu+(t) = (t + succ(t)) / 2   (q = mu+ is a tie: to the even t)
//        RN(q) >= t  <=>  q >= mu-(t) = (pred(t) + t) / 2  (q = mu- is a tie: to the even t)
//     for every real q >= 0 (overflow to +inf only happens far above 5). mu+(0) = 2^-150.
//  3. With q = x / eff and eff finite > 0: q > mu <=> x > mu * eff, q >= mu <=> x >= mu * eff.
//     mu has at most 25 significant bits and eff 24, so P = mu * eff has at most 49 and lies in
//     [2^-299, 2^131): the double product is exact. For eff = +inf, v = +0 for every finite x
//     and every predicate is false; P = +inf in double says the same.
//  4. For bf16 x: x > P <=> x > RD_bf16(P) (the largest bf16 value <= P: every larger bf16
//     value exceeds P), and x >= P <=> x >= RU_bf16(P) (the smallest bf16 value >= P, +inf
//     when P is above the largest finite one). RD_bf16(P) = RD_bf16(RD_f32(P)) since bf16
//     values are f32 values (likewise RU), and for non-negative values the order of bf16 bit
//     patterns, read as unsigned integers, is the order of the values.
// So predicate k holds iff bits(x) >= bound[k], with bound = bits(RD_bf16(P)) + 1 for the
// strict predicates and bits(RU_bf16(P)) for the others; a bound of 0x7F80 (the largest
// there is) is met by no finite x. tests/test_fp4_bounds.cc compares the bounds with
// Fp4Nibble(+-x / eff) for every finite bf16 x under divisors across all binades and around every
// decision point.
#ifndef QUENCH_SCHEMES_FP4_BOUNDS_H_
#define QUENCH_SCHEMES_FP4_BOUNDS_H_

#include <algorithm>
#include <cstdint>

#include "schemes/float_formats.h"

namespace quench::fp4::internal {

// bound[0]: v > 0 (the sign of -x's nibble); bound[1..7]: the index steps of item 1, in
// increasing order; the bounds are non-decreasing and at most 0x7F80.
inline void Nvfp4Bounds(float eff, uint16_t bound[8]) {
  // mu+(t) for the strict predicates, mu-(t) for the others (item 2); ulp(t) = 2^(e - 23)
  // for t in [2^e, 2^(e+1)), so a half ulp is 2^(e - 24).
  static constexpr double kMu[8] = {
      0x1p-150,               // > 0
      0.25 + 0x1p-26,         // > 0.25
      0.75 - 0x1p-25,         // >= 0.75
      1.25 + 0x1p-24,         // > 1.25
      1.75 - 0x1p-24,         // >= 1.75
      2.5 + 0x1p-23,          // > 2.5
      3.5 - 0x1p-23,          // >= 3.5
      5.0 + 0x1p-22,          // > 5
  };
  static constexpr bool kStrict[8] = {true, true, false, true, false, true, false, true};
  for (int k = 0; k < 8; ++k) {
    const double p = kMu[k] * static_cast<double>(eff);  // exact (item 3)
    const float f = static_cast<float>(p);               // RN_f32(p), may be 0 or +inf
    uint32_t b = F32ToBits(f);
    if (kStrict[k]) {
      if (static_cast<double>(f) > p) --b;    // RD_f32: f > p > 0, so f > 0 (inf -> max)
      // RD_bf16 truncates; + 1. P = +inf (eff = +inf) gives 0x7F81, kept at 0x7F80: both
      // are met by no finite x, and the bounds stay non-decreasing.
      bound[k] = static_cast<uint16_t>(std::min((b >> 16) + 1, 0x7F80u));
    } else {
      if (static_cast<double>(f) < p) ++b;    // RU_f32: f < p, f finite (max -> inf)
      bound[k] = static_cast<uint16_t>((b + 0xFFFFu) >> 16);  // RU_bf16
    }
  }
}

}  // namespace quench::fp4::internal

#endif  // QUENCH_SCHEMES_FP4_BOUNDS_H_
