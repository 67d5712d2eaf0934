// NVFP4's pass 3 for BF16 weights by decision bounds (src/schemes/nvfp4_bf16.*) against the
// definition it replaces: for every scale code a group can have (1..126) under global scales
// across the range, every finite bf16 x (both signs, subnormals, -0) must pack to the nibble
// Fp4Nibble(x / (e4m3(code) / gs)) of the reference's f32 division (fp4_shared.h), in rows
// of an even and of an odd number of groups. Then whole chunks through QuantizeNvfp4 with the
// pass on and off against the scalar reference, and the switch itself.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "nvfp4_nibbles.h"
#include "schemes/float_formats.h"
#include "schemes/fp4.h"
#include "schemes/fp4_bounds.h"
#include "schemes/fp4_shared.h"
#include "schemes/nvfp4_bf16.h"

namespace quench::fp4 {
namespace {

// Every finite bf16 pattern (NaN and Inf, which pass 1 refuses, replaced by +0): 65,536
// elements, 4,096 groups of 16.
std::vector<uint16_t> AllFinite() {
  std::vector<uint16_t> xs(0x10000);
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    xs[b] = (b & 0x7F80u) == 0x7F80u ? 0 : static_cast<uint16_t>(b);
  }
  return xs;
}

// Packs `groups` groups of xs (from its start) under one code and compares every nibble with
// the definition's; returns the number of mismatches.
size_t CheckCode(const std::vector<uint16_t>& xs, size_t groups, uint8_t code, float gs) {
  const uint16_t* table = Nvfp4Bf16Table(gs);
  std::vector<uint8_t> codes(groups, code);
  std::vector<uint8_t> dst(groups * 8 + 8, 0xAB);
  Nvfp4Bf16PackRow(reinterpret_cast<const uint8_t*>(xs.data()), groups, codes.data(), table,
                   nullptr, dst.data());
  REQUIRE(dst[groups * 8] == 0xAB);  // nothing written past the row's bytes
  return testing::Nvfp4NibbleMismatches(xs, groups, code, gs, dst.data());
}

}  // namespace

TEST_CASE("every finite bf16 x under every scale code packs as the definition's division") {
  if (!Nvfp4Bf16Available()) {
    MESSAGE("no AVX-512 BF16 on this CPU: the pass is never taken; nothing to compare");
    return;
  }
  const std::vector<uint16_t> xs = AllFinite();
  // Global scales as the pre-pass makes them (bf16 values from a set's largest |x|, from
  // tiny to huge; 1 for a non-finite one) and arbitrary f32 ones (eff of every binade, down
  // to subnormal and up to +inf quotients).
  std::vector<float> scales = {1.0f, 0x1p-126f, 0x1p-149f, 3.0e38f, 0.7346f, 12345.678f,
                               0x1.fffffep+127f};
  for (float amax : {1e-30f, 6e-5f, 0.02f, 0.5f, 300.0f, 2688.0f, 1e30f}) {
    scales.push_back(Nvfp4GlobalScale(amax, DType::kBF16));
  }
  for (float gs : scales) {
    for (int code = 1; code <= 126; ++code) {
      // Even (4,096 groups: pairs only) and odd (4,095: the single last group) rows.
      REQUIRE(CheckCode(xs, 4096, static_cast<uint8_t>(code), gs) == 0);
    }
    REQUIRE(CheckCode(xs, 4095, 0x38, gs) == 0);  // code of 1.0
    REQUIRE(CheckCode(xs, 1, 0x7E, gs) == 0);     // one group alone, code of 448
  }
}

TEST_CASE("the table follows the global scale") {
  // A second scale, then the first again: each call's table is that scale's.
  const uint16_t* a = Nvfp4Bf16Table(1.0f);
  uint16_t first[8];
  std::memcpy(first, a + 8 * 0x38, sizeof(first));
  const uint16_t* b = Nvfp4Bf16Table(2.0f);
  uint16_t expect[8];
  internal::Nvfp4Bounds(E4M3ToF32(0x38) / 2.0f, expect);
  CHECK(std::memcmp(b + 8 * 0x38, expect, sizeof(expect)) == 0);
  const uint16_t* c = Nvfp4Bf16Table(1.0f);
  CHECK(std::memcmp(c + 8 * 0x38, first, sizeof(first)) == 0);
  internal::Nvfp4Bounds(1.0f, expect);
  CHECK(std::memcmp(first, expect, sizeof(expect)) == 0);
}

TEST_CASE("QuantizeNvfp4 with the pass on and off equals the scalar reference") {
  // N(0, sigma) rows with sigma per row across binades, a few exact zeros and subnormals,
  // 33 groups a row (odd), under the global scale of the chunk's largest |x| and others.
  const size_t rows = 64, cols = 33 * 16;
  std::vector<uint16_t> data(rows * cols);
  std::mt19937 rng(7);
  for (size_t r = 0; r < rows; ++r) {
    std::normal_distribution<float> nd(0.f, std::ldexp(1.0f, static_cast<int>(r % 40) - 30));
    for (size_t c = 0; c < cols; ++c) data[r * cols + c] = F32ToBF16(nd(rng));
    data[r * cols + r % cols] = 0x8000;  // -0
    data[r * cols + (r * 7) % cols] = 0x0001;  // the smallest subnormal
  }
  WeightChunk in;
  in.data = reinterpret_cast<const uint8_t*>(data.data());
  in.dtype = DType::kBF16;
  in.rows = rows;
  in.cols = cols;
  float amax = 0.f;
  REQUIRE(AbsMax(in, &amax));
  for (float gs : {Nvfp4GlobalScale(amax, DType::kBF16), 1.0f, 0.001f, 1e20f}) {
    in.params.global_scale = gs;
    std::vector<uint8_t> w0(rows * cols / 2), s0(rows * cols / 16);
    ChunkOutputs ref;
    ref.out[0] = w0.data();
    ref.out[1] = s0.data();
    REQUIRE(QuantizeNvfp4Scalar(in, ref));
    for (bool on : {true, false}) {
      internal::SetNvfp4Bf16Enabled(on);
      std::vector<uint8_t> w1(w0.size()), s1(s0.size());
      ChunkOutputs out;
      out.out[0] = w1.data();
      out.out[1] = s1.data();
      REQUIRE(QuantizeNvfp4(in, out));
      CAPTURE(gs);
      CAPTURE(on);
      CHECK(w1 == w0);
      CHECK(s1 == s0);
    }
    internal::SetNvfp4Bf16Enabled(true);
  }
}

}  // namespace quench::fp4
