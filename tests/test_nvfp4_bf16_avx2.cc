// The AVX2 NVFP4 kernel for BF16 weights (src/schemes/nvfp4_bf16_avx2.*) against fp4.cc's
// definition, bit for bit:
//  - pass 3 alone: every finite bf16 x (both signs, subnormals, -0) under every scale code a
//    group can have (1..126) of global scales across the range must pack to the nibble
//    Fp4Nibble(x / (e4m3(code) / gs)) of the definition's f32 division (fp4_shared.h), in runs
//    of groups that fill the four-group steps and that end inside one;
//  - passes 1-3: every finite amax pattern (each the largest |x| of a group, the group's
//    other elements at or below it) through QuantizeNvfp4Bf16Avx2 against QuantizeNvfp4Scalar
//    under those global scales, in rows whose group count ends inside a 16-group block;
//  - whole chunks of N(0, sigma) rows of many widths, zero groups and rows, unaligned data;
//    NaN and Inf anywhere refused; the dispatcher on every Highway target with the kernel on
//    and off. On a CPU without AVX2 the kernel is never dispatched; this checks that it says so.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernel_test_util.h"
#include "nvfp4_nibbles.h"
#include "schemes/float_formats.h"
#include "schemes/fp4.h"
#include "schemes/fp4_shared.h"
#include "schemes/nvfp4_bf16_avx2.h"

namespace quench::fp4 {
using namespace quench::testing;  // NOLINT: shared kernel-test helpers

namespace {

// Global scales: those the pre-pass makes (bf16 values from a set's largest |x|, from tiny to
// huge) and arbitrary f32 ones whose quotients reach f32 subnormals and +inf (eff = s / gs
// overflows for gs = 2^-149).
std::vector<float> GlobalScales() {
  std::vector<float> scales = {1.0f, 448.0f, 1.0f / 1024, 3.0e5f, 0x1p-126f, 0x1p-149f,
                               3.0e38f, 0.7346f, 12345.678f, 0x1.fffffep+127f};
  for (float amax : {1e-30f, 6e-5f, 0.02f, 0.5f, 300.0f, 2688.0f, 1e30f}) {
    scales.push_back(Nvfp4GlobalScale(amax, DType::kBF16));
  }
  return scales;
}

// Every finite bf16 pattern (NaN and Inf replaced by +0): 65,536 elements, 4,096 groups.
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
  std::vector<uint8_t> codes(groups, code);
  std::vector<uint8_t> dst(groups * 8 + kGuardBytes, kGuard);
  internal::Nvfp4Bf16Avx2PackGroups(reinterpret_cast<const uint8_t*>(xs.data()), groups,
                                    codes.data(), gs, dst.data());
  for (size_t i = groups * 8; i < dst.size(); ++i) REQUIRE(dst[i] == kGuard);  // no overrun
  return testing::Nvfp4NibbleMismatches(xs, groups, code, gs, dst.data());
}

struct Outputs {
  bool ok = false;
  std::vector<uint8_t> values;
  std::vector<uint8_t> scales;
};

enum class Path { kScalar, kAvx2, kDispatch };

// One chunk through the scalar reference, the AVX2 kernel or QuantizeNvfp4; the outputs end
// in guard bytes.
Outputs Run(Path p, const uint8_t* data, size_t rows, size_t cols, float gs) {
  WeightChunk in;
  in.data = data;
  in.dtype = DType::kBF16;
  in.rows = rows;
  in.cols = cols;
  in.params.global_scale = gs;
  Outputs o;
  o.values.assign(rows * cols / 2 + kGuardBytes, kGuard);
  o.scales.assign(rows * cols / 16 + kGuardBytes, kGuard);
  ChunkOutputs out;
  out.out[0] = o.values.data();
  out.out[1] = o.scales.data();
  switch (p) {
    case Path::kScalar: o.ok = QuantizeNvfp4Scalar(in, out); break;
    case Path::kAvx2: o.ok = QuantizeNvfp4Bf16Avx2(in, out); break;
    case Path::kDispatch: o.ok = QuantizeNvfp4(in, out); break;
  }
  return o;
}

// The AVX2 kernel against the reference on one chunk (ok flag; outputs when ok).
void ExpectSame(const uint8_t* data, size_t rows, size_t cols, float gs) {
  const Outputs want = Run(Path::kScalar, data, rows, cols, gs);
  const Outputs got = Run(Path::kAvx2, data, rows, cols, gs);
  CAPTURE(rows);
  CAPTURE(cols);
  CAPTURE(gs);
  REQUIRE(got.ok == want.ok);
  if (!want.ok) return;
  REQUIRE(got.scales == want.scales);
  REQUIRE(got.values == want.values);
}

// rows x cols bf16 weights, N(0, sigma) with sigma per row across binades, a few exact zeros,
// -0s and subnormals; every fifth row has a zero group, every seventh is all zeros.
std::vector<uint16_t> Gaussian(size_t rows, size_t cols, std::mt19937& rng) {
  std::vector<uint16_t> data(rows * cols);
  for (size_t r = 0; r < rows; ++r) {
    std::normal_distribution<float> nd(0.f, std::ldexp(1.0f, static_cast<int>(r % 50) - 35));
    for (size_t c = 0; c < cols; ++c) data[r * cols + c] = F32ToBF16(nd(rng));
    data[r * cols + r % cols] = 0x8000;
    data[r * cols + (r * 7) % cols] = 0x0001;
    data[r * cols + (r * 13) % cols] = 0x8003;
    if (r % 5 == 0) std::fill_n(&data[r * cols + (r / 5 % (cols / 16)) * 16], 16, uint16_t{0});
    if (r % 7 == 3) std::fill_n(&data[r * cols], cols, uint16_t{0});
  }
  return data;
}

}  // namespace

TEST_SUITE("nvfp4_bf16_avx2") {

TEST_CASE("the kernel is available on AVX2 CPUs and takes bf16 with a finite gs > 0 only") {
  WeightChunk in;
  in.dtype = DType::kBF16;
  in.params.global_scale = 1.0f;
  CHECK(Nvfp4Bf16Avx2Handles(in) == Nvfp4Bf16Avx2Available());
  in.params.global_scale = 0x1p-149f;
  CHECK(Nvfp4Bf16Avx2Handles(in) == Nvfp4Bf16Avx2Available());
  for (float gs : {0.0f, -0.0f, -1.0f, std::numeric_limits<float>::infinity(),
                   std::numeric_limits<float>::quiet_NaN()}) {
    in.params.global_scale = gs;
    CHECK_FALSE(Nvfp4Bf16Avx2Handles(in));
  }
  in.params.global_scale = 1.0f;
  in.dtype = DType::kF16;
  CHECK_FALSE(Nvfp4Bf16Avx2Handles(in));
  in.dtype = DType::kF32;
  CHECK_FALSE(Nvfp4Bf16Avx2Handles(in));
  in.dtype = DType::kBF16;
  internal::SetNvfp4Bf16Avx2Enabled(false);
  CHECK_FALSE(Nvfp4Bf16Avx2Handles(in));
  internal::SetNvfp4Bf16Avx2Enabled(true);
  MESSAGE("AVX2 NVFP4 kernel available: " << Nvfp4Bf16Avx2Available());
}

TEST_CASE("pass 3: every finite bf16 x under every scale code packs as the definition's division") {
  if (!Nvfp4Bf16Avx2Available()) return;  // QuantizeNvfp4 never takes it
  const std::vector<uint16_t> xs = AllFinite();
  for (float gs : GlobalScales()) {
    for (int code = 1; code <= 126; ++code) {
      // 4,096 groups (four-group steps only) and 4,095 (the last step padded).
      REQUIRE(CheckCode(xs, 4096, static_cast<uint8_t>(code), gs) == 0);
      REQUIRE(CheckCode(xs, 4095, static_cast<uint8_t>(code), gs) == 0);
    }
    REQUIRE(CheckCode(xs, 1, 0x7E, gs) == 0);  // one group alone, code of 448
    REQUIRE(CheckCode(xs, 2, 0x01, gs) == 0);  // two, the smallest code
  }
}

TEST_CASE("passes 1-3: every finite amax pattern gives the definition's code and nibbles") {
  if (!Nvfp4Bf16Avx2Available()) return;
  // Group p (p = 0 .. 0x7F7F) holds +-p at position p % 16 and 15 elements of random patterns
  // at or below it (random signs); 255 groups a row (15 blocks of 16 and a 15-group tail).
  constexpr size_t kGroupsPerRow = 255;
  const size_t n_groups = 0x7F80;
  const size_t rows = (n_groups + kGroupsPerRow - 1) / kGroupsPerRow;
  const size_t cols = kGroupsPerRow * 16;
  std::vector<uint16_t> data(rows * cols, 0);
  std::mt19937 rng(11);
  for (size_t p = 0; p < n_groups; ++p) {
    std::uniform_int_distribution<uint32_t> below(0, static_cast<uint32_t>(p));
    for (size_t i = 0; i < 16; ++i) {
      const uint32_t mag = i == p % 16 ? static_cast<uint32_t>(p) : below(rng);
      data[p * 16 + i] = static_cast<uint16_t>(mag | ((rng() & 1u) << 15));
    }
  }
  for (float gs : GlobalScales()) {
    ExpectSame(reinterpret_cast<const uint8_t*>(data.data()), rows, cols, gs);
  }
}

TEST_CASE("whole chunks: widths around the 4- and 16-group steps, zero groups, unaligned data") {
  if (!Nvfp4Bf16Avx2Available()) return;
  std::mt19937 rng(5);
  for (size_t groups : {1, 2, 3, 4, 5, 7, 15, 16, 17, 31, 32, 33, 47, 65, 128, 256, 257}) {
    const size_t cols = groups * 16;
    const size_t rows = groups >= 128 ? 37 : 70;
    const std::vector<uint16_t> data = Gaussian(rows, cols, rng);
    for (size_t offset : {0, 1, 2}) {
      std::vector<uint8_t> bytes(data.size() * 2 + offset);
      std::memcpy(bytes.data() + offset, data.data(), data.size() * 2);
      float amax = 0.f;
      WeightChunk in;
      in.data = bytes.data() + offset;
      in.dtype = DType::kBF16;
      in.rows = rows;
      in.cols = cols;
      REQUIRE(AbsMaxScalar(in, &amax));
      for (float gs : {Nvfp4GlobalScale(amax, DType::kBF16), 1.0f, 448.0f, 1e-3f, 1e20f}) {
        ExpectSame(bytes.data() + offset, rows, cols, gs);
      }
    }
  }
}

TEST_CASE("NaN or Inf anywhere refuses the chunk") {
  if (!Nvfp4Bf16Avx2Available()) return;
  std::mt19937 rng(9);
  for (size_t groups : {1, 16, 17, 40}) {
    const size_t rows = 5, cols = groups * 16;
    const std::vector<uint16_t> clean = Gaussian(rows, cols, rng);
    ExpectSame(reinterpret_cast<const uint8_t*>(clean.data()), rows, cols, 1.0f);
    for (uint16_t bad : {0x7F80, 0xFF80, 0x7FC0, 0xFFFF, 0x7F81}) {
      for (size_t at : {size_t{0}, cols - 1, cols * 2 + cols / 2, rows * cols - 1}) {
        std::vector<uint16_t> data = clean;
        data[at] = bad;
        CAPTURE(groups);
        CAPTURE(bad);
        CAPTURE(at);
        CHECK_FALSE(Run(Path::kAvx2, reinterpret_cast<const uint8_t*>(data.data()), rows, cols,
                        1.0f).ok);
        CHECK_FALSE(Run(Path::kDispatch, reinterpret_cast<const uint8_t*>(data.data()), rows,
                        cols, 1.0f).ok);
      }
    }
  }
}

TEST_CASE("QuantizeNvfp4 on every target, the kernel on and off, equals the reference") {
  std::mt19937 rng(3);
  const size_t rows = 40, cols = 33 * 16;
  const std::vector<uint16_t> data = Gaussian(rows, cols, rng);
  const uint8_t* p = reinterpret_cast<const uint8_t*>(data.data());
  for (float gs : {1.0f, 0.001f, 1e20f}) {
    const Outputs want = Run(Path::kScalar, p, rows, cols, gs);
    REQUIRE(want.ok);
    for (bool on : {true, false}) {
      internal::SetNvfp4Bf16Avx2Enabled(on);
      const auto targets = ForEachTarget([&](const std::string& target) {
        CAPTURE(target);
        CAPTURE(on);
        CAPTURE(gs);
        const Outputs got = Run(Path::kDispatch, p, rows, cols, gs);
        REQUIRE(got.ok);
        REQUIRE(got.values == want.values);
        REQUIRE(got.scales == want.scales);
      });
      CHECK(!targets.empty());
    }
    internal::SetNvfp4Bf16Avx2Enabled(true);
  }
}

}  // TEST_SUITE

}  // namespace quench::fp4
