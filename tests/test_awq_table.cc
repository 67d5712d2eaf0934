// AutoAWQ group tables (src/schemes/awq_table.*): the vector path equals the definition (the
// F16 rounding done in software, float_formats.h) for every finite F16 scale pattern - both
// signs, subnormals, the largest, products that overflow F16 - and every zero point 0..15,
// in all 32 table bytes and the finite flag; and entries checked by hand.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>

#include "schemes/awq_table.h"
#include "schemes/float_formats.h"

namespace quench {
namespace {

TEST_CASE("AwqGroupTable equals its definition for every F16 scale and zero point") {
  size_t not_finite = 0;
  for (uint32_t s = 0; s < 0x10000u; ++s) {
    if ((s & 0x7C00u) == 0x7C00u) continue;  // Inf and NaN scales are refused before
    for (int z = 0; z < 16; ++z) {
      uint8_t want[32], got[32];
      const bool fw = AwqGroupTableScalar(static_cast<uint16_t>(s), z, want);
      const bool fg = AwqGroupTable(static_cast<uint16_t>(s), z, got);
      if (std::memcmp(want, got, 32) != 0 || fw != fg) {
        CAPTURE(s);
        CAPTURE(z);
        REQUIRE(std::memcmp(want, got, 32) == 0);
        REQUIRE(fw == fg);
      }
      not_finite += fw ? 0 : 1;
    }
  }
  CHECK(not_finite > 0);  // the largest scales overflow F16 for some codes
}

TEST_CASE("AwqGroupTable by hand") {
  uint8_t t[32];
  // Scale 0.5 (F16 0x3800), zero point 8: entry q is (q - 8) * 0.5.
  CHECK(AwqGroupTable(0x3800, 8, t));
  auto entry = [&](int q) { return static_cast<uint16_t>(t[q] | t[16 + q] << 8); };
  CHECK(entry(8) == 0x0000);
  CHECK(entry(9) == F32ToBF16(0.5f));
  CHECK(entry(0) == F32ToBF16(-4.0f));
  CHECK(entry(15) == F32ToBF16(3.5f));
  // Scale 65504 (the largest F16), zero point 0: 2 * 65504 overflows F16 to Inf.
  CHECK(!AwqGroupTable(0x7BFF, 0, t));
  CHECK(entry(1) == F32ToBF16(65504.0f));
  CHECK(entry(2) == 0x7F80);
  // Scale 3 * 2^-24 (an F16 subnormal) times 5: 15 * 2^-24, an F16 subnormal, then BF16.
  CHECK(AwqGroupTable(0x0003, 0, t));
  CHECK(entry(5) == F32ToBF16(15.0f * 0x1p-24f));
}

}  // namespace
}  // namespace quench
