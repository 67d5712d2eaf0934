// Scalar bf16 / fp16 / float8_e4m3fn conversions against values worked out independently
// from each format's definition (sign, biased exponent, mantissa fields).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>

#include "schemes/float_formats.h"

namespace quench {
namespace {

// Value of a binary floating-point pattern with `exp_bits` exponent and `man_bits` mantissa
// bits (IEEE layout, bias 2^(exp_bits-1) - 1), from the definition: subnormals are
// m * 2^(1 - bias - man_bits), normals (1 + m / 2^man_bits) * 2^(e - bias). The all-ones
// exponent is not handled here (callers treat Inf/NaN themselves).
double DefinedValue(uint32_t bits, int exp_bits, int man_bits) {
  const int bias = (1 << (exp_bits - 1)) - 1;
  const bool negative = (bits >> (exp_bits + man_bits)) & 1u;
  const uint32_t e = (bits >> man_bits) & ((1u << exp_bits) - 1u);
  const uint32_t m = bits & ((1u << man_bits) - 1u);
  double v;
  if (e == 0) {
    v = std::ldexp(static_cast<double>(m), 1 - bias - man_bits);
  } else {
    v = std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -man_bits),
                   static_cast<int>(e) - bias);
  }
  return negative ? -v : v;
}

bool SameBits(float a, float b) { return F32ToBits(a) == F32ToBits(b); }

}  // namespace

TEST_SUITE("float_formats") {

TEST_CASE("e4m3 decodes all 256 codes per the format definition") {
  // float8_e4m3fn: 1 sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities;
  // S.1111.111 is NaN; everything else, including exponent 1111, is finite.
  for (int code = 0; code < 256; ++code) {
    const float got = E4M3ToF32(static_cast<uint8_t>(code));
    CAPTURE(code);
    if ((code & 0x7F) == 0x7F) {
      CHECK(std::isnan(got));
      CHECK(std::signbit(got) == ((code & 0x80) != 0));
      continue;
    }
    const double want = DefinedValue(static_cast<uint32_t>(code), 4, 3);
    CHECK(static_cast<double>(got) == want);
    CHECK(std::signbit(got) == ((code & 0x80) != 0));  // 0x80 is -0
  }
  CHECK(E4M3ToF32(0x7E) == 448.0f);              // max finite: 1.75 * 2^8
  CHECK(E4M3ToF32(0x01) == std::ldexp(1.0f, -9));  // min subnormal: 2^-9
  CHECK(E4M3ToF32(0x08) == std::ldexp(1.0f, -6));  // min normal: 2^-6
}

TEST_CASE("e4m3 encode round-trips every finite code") {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7F) == 0x7F) continue;
    CAPTURE(code);
    CHECK(F32ToE4M3(E4M3ToF32(static_cast<uint8_t>(code))) == code);
  }
}

TEST_CASE("e4m3 midpoints between adjacent codes round to the even code") {
  for (int k = 0; k < 0x7E; ++k) {  // adjacent pairs (k, k+1) up to (0x7D, 0x7E)
    const float lo = E4M3ToF32(static_cast<uint8_t>(k));
    const float hi = E4M3ToF32(static_cast<uint8_t>(k + 1));
    const float mid = (lo + hi) / 2;  // exact: needs one more mantissa bit than e4m3 has
    const int even = (k % 2 == 0) ? k : k + 1;
    CAPTURE(k);
    CHECK(F32ToE4M3(mid) == even);
    CHECK(F32ToE4M3(-mid) == (even | 0x80));
    // Just off the midpoint rounds to the nearer code.
    CHECK(F32ToE4M3(std::nextafter(mid, 0.0f)) == k);
    CHECK(F32ToE4M3(std::nextafter(mid, 1000.0f)) == k + 1);
  }
  // Below half the smallest subnormal (2^-10) everything rounds to zero, keeping the sign.
  CHECK(F32ToE4M3(std::ldexp(1.0f, -10)) == 0x00);
  CHECK(F32ToE4M3(-std::ldexp(1.0f, -10)) == 0x80);
  CHECK(F32ToE4M3(std::ldexp(1.0f, -11)) == 0x00);
  CHECK(F32ToE4M3(-0.0f) == 0x80);
}

TEST_CASE("e4m3 out-of-range values saturate (torch 2.13 c10 rule)") {
  // torch 2.13.0's fp8e4m3fn_from_fp32_value saturates: (448, 464] rounds down to 448 (464
  // is the tie of 448 and the NaN code and goes to even 0x7E), (464, 480) would round onto
  // the NaN code and is saturated to 0x7E, and >= 480 and Inf are saturated too. Only NaN
  // maps to NaN (checked against torch.Tensor.to(torch.float8_e4m3fn) on CPU).
  for (float v : {448.0f, 448.5f, 460.0f, 464.0f, 465.0f, 479.99f, 480.0f, 1e6f,
                  std::numeric_limits<float>::max(), std::numeric_limits<float>::infinity()}) {
    CAPTURE(v);
    CHECK(F32ToE4M3(v) == 0x7E);
    CHECK(F32ToE4M3(-v) == 0xFE);
  }
  CHECK(F32ToE4M3(std::numeric_limits<float>::quiet_NaN()) == 0x7F);
  CHECK(F32ToE4M3(-std::numeric_limits<float>::quiet_NaN()) == 0xFF);
}

TEST_CASE("bf16 decode and round-to-nearest-even") {
  // bf16: 1 sign, 8 exponent bits (bias 127), 7 mantissa bits.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint32_t e = (h >> 7) & 0xFF;
    const float f = BF16ToF32(static_cast<uint16_t>(h));
    if (e == 0xFF) {
      CHECK((std::isinf(f) || std::isnan(f)));
      continue;
    }
    CAPTURE(h);
    REQUIRE(static_cast<double>(f) == DefinedValue(h, 8, 7));
    REQUIRE(F32ToBF16(f) == h);  // round trip of every finite value, subnormals and -0 too
  }
  // Ties (exactly half an ulp = 2^-8 at 1.0) go to the even mantissa.
  CHECK(F32ToBF16(1.0f + std::ldexp(1.0f, -8)) == 0x3F80);      // 1 vs 1+2^-7: even is 1
  CHECK(F32ToBF16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3F82);  // 1+2^-7 (odd) vs 1+2^-6
  CHECK(F32ToBF16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)) == 0x3F81);
  CHECK(F32ToBF16(-(1.0f + std::ldexp(1.0f, -8))) == 0xBF80);
  // Subnormals (exponent field 0): one bf16 ulp there is 2^-133.
  CHECK(BF16ToF32(0x0001) == std::ldexp(1.0f, -133));
  CHECK(F32ToBF16(BitsToF32(0x00008000)) == 0x0000);  // tie 0 vs 0x0001: even is 0
  CHECK(F32ToBF16(BitsToF32(0x00018000)) == 0x0002);  // tie 0x0001 vs 0x0002: even is 2
  CHECK(F32ToBF16(BitsToF32(0x00008001)) == 0x0001);
  CHECK(F32ToBF16(BitsToF32(0x007FFFFF)) == 0x0080);  // rounds up into the min normal
  // Overflow: the largest f32 rounds up to Inf; the tie at 0x7F7F8000 goes to even (Inf).
  CHECK(F32ToBF16(std::numeric_limits<float>::max()) == 0x7F80);
  CHECK(F32ToBF16(BitsToF32(0x7F7F7FFF)) == 0x7F7F);
  CHECK(F32ToBF16(std::numeric_limits<float>::quiet_NaN()) == 0x7FC0);
  // Every midpoint of two adjacent positive finite bf16 values (exact in f32) goes to even.
  for (uint32_t h = 0; h < 0x7F7F; ++h) {
    const float mid = BitsToF32((h << 16) | 0x8000u);
    CAPTURE(h);
    REQUIRE(F32ToBF16(mid) == ((h & 1u) ? h + 1 : h));
  }
}

TEST_CASE("f16 decode and round-to-nearest-even") {
  // binary16: 1 sign, 5 exponent bits (bias 15), 10 mantissa bits; max 65504.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint32_t e = (h >> 10) & 0x1F;
    const float f = F16ToF32(static_cast<uint16_t>(h));
    CAPTURE(h);
    if (e == 0x1F) {
      CHECK(((h & 0x3FF) == 0 ? std::isinf(f) : std::isnan(f)));
      continue;
    }
    REQUIRE(static_cast<double>(f) == DefinedValue(h, 5, 10));
    REQUIRE(F32ToF16(f) == h);
  }
  // Ties at 1.0 (half an ulp = 2^-11).
  CHECK(F32ToF16(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);
  CHECK(F32ToF16(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3C02);
  CHECK(F32ToF16(-(1.0f + 3 * std::ldexp(1.0f, -11))) == 0xBC02);
  // Subnormals are multiples of 2^-24.
  CHECK(F16ToF32(0x0001) == std::ldexp(1.0f, -24));
  CHECK(F16ToF32(0x03FF) == 1023 * std::ldexp(1.0f, -24));
  CHECK(F32ToF16(std::ldexp(1.0f, -25)) == 0x0000);      // tie 0 vs 2^-24: even is 0
  CHECK(F32ToF16(-std::ldexp(1.0f, -25)) == 0x8000);
  CHECK(F32ToF16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)) == 0x0001);
  CHECK(F32ToF16(3 * std::ldexp(1.0f, -25)) == 0x0002);  // tie 1 vs 2 ulps: even is 2
  CHECK(F32ToF16(5 * std::ldexp(1.0f, -25)) == 0x0002);  // tie 2 vs 3 ulps: even is 2
  CHECK(F32ToF16(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -25)) == 0x0400);  // into normal
  CHECK(F32ToF16(std::ldexp(1.0f, -26)) == 0x0000);
  CHECK(F32ToF16(std::numeric_limits<float>::denorm_min()) == 0x0000);
  // Overflow: 65504 is the max; 65520 (its midpoint with 2^16) is a tie that goes to Inf.
  CHECK(F32ToF16(65504.0f) == 0x7BFF);
  CHECK(F32ToF16(std::nextafter(65520.0f, 0.0f)) == 0x7BFF);
  CHECK(F32ToF16(65520.0f) == 0x7C00);
  CHECK(F32ToF16(-1e10f) == 0xFC00);
  CHECK(F32ToF16(std::numeric_limits<float>::infinity()) == 0x7C00);
  CHECK((F32ToF16(std::numeric_limits<float>::quiet_NaN()) & 0x7FFF) == 0x7E00);
  // Every midpoint of two adjacent positive finite f16 values (exact in f32) goes to even.
  for (uint32_t h = 0; h < 0x7BFF; ++h) {
    const double lo = DefinedValue(h, 5, 10), hi = DefinedValue(h + 1, 5, 10);
    const float mid = static_cast<float>((lo + hi) / 2);
    CAPTURE(h);
    REQUIRE(static_cast<double>(mid) == (lo + hi) / 2);
    REQUIRE(F32ToF16(mid) == ((h & 1u) ? h + 1 : h));
  }
}

TEST_CASE("bit casts") {
  CHECK(F32ToBits(1.0f) == 0x3F800000u);
  CHECK(SameBits(BitsToF32(0x80000000u), -0.0f));
}

}  // TEST_SUITE

}  // namespace quench
