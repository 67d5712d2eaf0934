// NVFP4's decision bounds (src/schemes/fp4_bounds.h) against the definition they replace:
// for a divisor eff, bits(x) >= bound[k] must say exactly what Fp4Nibble(x / eff) and
// Fp4Nibble(-x / eff) (fp4_shared.h, the f32 division of the reference) say, for every finite
// bf16 x >= 0 - so for every FP8 value decoded under any block scale. Divisors: every group
// scale code under global scales across the range (the kernel's eff = e4m3(s) / gs), every
// f32 binade including subnormals, +inf and the extremes, and divisors placed on and around
// each decision point (x / eff at, or an ulp either side of, a threshold or a midpoint,
// including the exact tie x / eff = 2^-150).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "quench/dtype.h"
#include "schemes/float_formats.h"
#include "schemes/fp4.h"
#include "schemes/fp4_bounds.h"
#include "schemes/fp4_shared.h"

namespace quench::fp4::internal {
namespace {

// Checks bf16 patterns [lo, hi] (finite, non-negative) under eff; returns how many.
size_t CheckRange(float eff, uint32_t lo, uint32_t hi) {
  uint16_t bound[8];
  Nvfp4Bounds(eff, bound);
  for (int k = 1; k < 8; ++k) REQUIRE(bound[k - 1] <= bound[k]);
  size_t n = 0;
  for (uint32_t bits = lo; bits <= hi; ++bits, ++n) {
    const float x = BF16ToF32(static_cast<uint16_t>(bits));
    uint8_t idx = 0;
    for (int k = 1; k < 8; ++k) idx += bits >= bound[k] ? 1 : 0;
    const uint8_t neg = static_cast<uint8_t>(idx | (bits >= bound[0] ? 8 : 0));
    const uint8_t want_pos = Fp4Nibble(x / eff);
    const uint8_t want_neg = Fp4Nibble(-x / eff);
    if (want_pos != idx || want_neg != neg) {
      CAPTURE(eff);
      CAPTURE(x);
      CAPTURE(bits);
      CHECK(want_pos == idx);
      CHECK(want_neg == neg);
      REQUIRE(false);
    }
  }
  return n;
}

constexpr uint32_t kMaxFinite = 0x7F7F;  // largest finite bf16

}  // namespace

TEST_SUITE("fp4_bounds") {

TEST_CASE("every finite bf16 x under every group scale code and global scale") {
  const float kMin = std::numeric_limits<float>::denorm_min();
  const float kMax = std::numeric_limits<float>::max();
  // Global scales as the pre-pass makes them, and extremes: eff subnormal, eff +inf.
  const std::vector<float> gss = {Nvfp4GlobalScale(3.7f, DType::kBF16),
                                  Nvfp4GlobalScale(0.02f, DType::kBF16),
                                  Nvfp4GlobalScale(448.0f * 0.015625f, DType::kBF16),
                                  Nvfp4GlobalScale(1e-30f, DType::kBF16),
                                  1.0f, 1e-20f, 1e20f, std::ldexp(1.0f, -126), kMin, kMax};
  size_t n = 0;
  for (float gs : gss) {
    for (uint32_t code = 1; code < 0x7F; ++code) {
      n += CheckRange(E4M3ToF32(static_cast<uint8_t>(code)) / gs, 0, kMaxFinite);
    }
  }
  MESSAGE(n << " (x, eff) pairs checked");
}

TEST_CASE("every finite bf16 x under divisors of every f32 binade") {
  std::mt19937 rng(17);
  std::vector<float> effs = {std::numeric_limits<float>::infinity(),
                             std::numeric_limits<float>::max(),
                             std::numeric_limits<float>::denorm_min()};
  for (int e = -149; e <= 127; ++e) {
    effs.push_back(std::ldexp(1.0f, e));
    for (int i = 0; i < 2; ++i) {
      effs.push_back(std::ldexp(1.0f + static_cast<float>(rng() % (1u << 23)) * 0x1p-23f, e));
    }
  }
  size_t n = 0;
  for (float eff : effs) {
    if (eff > 0.f) n += CheckRange(eff, 0, kMaxFinite);
  }
  MESSAGE(n << " (x, eff) pairs checked");
}

TEST_CASE("divisors on and around every decision point") {
  // x / eff at a threshold t, at a midpoint mu (fp4_bounds.h item 2) or within a few ulps of
  // either; each x checked with its bf16 neighbours.
  const double points[] = {0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0,
                           0x1p-150, 0.25 + 0x1p-26, 0.75 - 0x1p-25, 1.25 + 0x1p-24,
                           1.75 - 0x1p-24, 2.5 + 0x1p-23, 3.5 - 0x1p-23, 5.0 + 0x1p-22,
                           6.0, 0x1p-149};
  size_t n = 0;
  for (uint32_t bits = 1; bits <= kMaxFinite; bits += 3) {
    const double x = BF16ToF32(static_cast<uint16_t>(bits));
    for (double p : points) {
      const float eff0 = static_cast<float>(x / p);
      if (!(eff0 > 0.f) || std::isinf(eff0)) continue;
      float eff = eff0;
      for (int i = 0; i < 3; ++i) eff = std::nextafter(eff, 0.f);
      for (int i = 0; i < 7; ++i, eff = std::nextafter(eff, INFINITY)) {
        if (!(eff > 0.f)) continue;
        const uint32_t lo = bits >= 2 ? bits - 2 : 0;
        n += CheckRange(eff, lo, std::min(bits + 2, kMaxFinite));
      }
    }
  }
  // Exact ties at 2^-150 (the one decision point a bf16 x can hit exactly): RN gives +0.
  for (int e = -133; e <= -23; ++e) {
    const float eff = std::ldexp(1.0f, e + 150);
    uint16_t bound[8];
    Nvfp4Bounds(eff, bound);
    const uint16_t xb = static_cast<uint16_t>(F32ToBits(std::ldexp(1.0f, e)) >> 16);
    CHECK(Fp4Nibble(-BF16ToF32(xb) / eff) == 0x0);  // -2^-150 rounds to -0: no sign
    CHECK(xb < bound[0]);
    n += CheckRange(eff, xb - 2, xb + 2u);
  }
  MESSAGE(n << " (x, eff) pairs checked");
}

}  // TEST_SUITE

}  // namespace quench::fp4::internal
