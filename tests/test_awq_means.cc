// AWQ's weight means (AwqWeightMeans, _compute_layer_means) on BF16 layers against the
// definition computed here element by element: per row and group, amax = max |w|,
// den = RNE_bf16(f32(amax + 1e-6)), each term RNE_bf16(|w| / den) with the IEEE f32
// division, summed in f64 row after row and divided by the rows. The cases cover every pair
// of mantissas in both binades a quotient can take, groups with quotients below 2^-100
// (where a reciprocal in place of the division would no longer be provably exact: see
// bench/README.md, "AWQ pre-pass and smoothing overhead"), zeros and subnormals.
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "calib/awq.h"

namespace quench::testing {
namespace {

float FromBf16(uint16_t b) { return std::bit_cast<float>(uint32_t{b} << 16); }

// RNE to bf16 of a finite f32, by its definition on the bits.
float RneBf16(float v) {
  const uint32_t bits = std::bit_cast<uint32_t>(v);
  const uint32_t lsb = (bits >> 16) & 1u;
  return std::bit_cast<float>((bits + 0x7FFFu + lsb) & 0xFFFF0000u);
}

std::vector<double> Definition(const std::vector<uint16_t>& w, uint64_t rows, uint64_t cols,
                               uint64_t group) {
  std::vector<double> sum(cols, 0.0);
  for (uint64_t r = 0; r < rows; ++r) {
    for (uint64_t c0 = 0; c0 < cols; c0 += group) {
      float amax = 0;
      for (uint64_t c = c0; c < c0 + group; ++c) {
        amax = std::max(amax, std::fabs(FromBf16(w[r * cols + c])));
      }
      const float den = RneBf16(static_cast<float>(double(amax) + 1e-6));
      for (uint64_t c = c0; c < c0 + group; ++c) {
        sum[c] += double(RneBf16(std::fabs(FromBf16(w[r * cols + c])) / den));
      }
    }
  }
  for (double& v : sum) v /= double(rows);
  return sum;
}

std::vector<double> Kernel(const std::vector<uint16_t>& w, uint64_t rows, uint64_t cols,
                           int group) {
  calib::AwqLayer l;
  l.data = reinterpret_cast<const uint8_t*>(w.data());
  l.dtype = DType::kBF16;
  l.rows = rows;
  l.cols = cols;
  l.q.bits = 4;
  l.q.group_size = group;
  l.q.symmetric = true;
  return calib::AwqWeightMeans({l});
}

// Bit for bit, element by element (one row: each mean is the row's term itself).
void CheckSame(const std::vector<uint16_t>& w, uint64_t rows, uint64_t cols, int group) {
  const std::vector<double> got = Kernel(w, rows, cols, group);
  const std::vector<double> want = Definition(w, rows, cols, group > 0 ? group : cols);
  REQUIRE(got.size() == want.size());
  uint64_t diff = 0;
  for (size_t c = 0; c < got.size(); ++c) {
    diff += std::bit_cast<uint64_t>(got[c]) != std::bit_cast<uint64_t>(want[c]);
  }
  CHECK(diff == 0);
}

TEST_CASE("awq means: every mantissa pair, as one-row layers") {
  // A group of 256: the max (mantissa md at exponent e, so den = amax + 1e-6 rounded), then
  // every mantissa at exponent e and at e - 1 (quotients in [1/2, 1] and [1/4, 1/2)), signs
  // alternating; md + 1 and above would raise the max, so those are halved (e - 1).
  for (int e : {127, 127 - 20, 127 + 30, 127 - 60}) {
    for (uint16_t md = 0; md < 128; ++md) {
      std::vector<uint16_t> w(256);
      const uint16_t top = static_cast<uint16_t>(e << 7 | md);
      w[0] = top;
      for (uint16_t k = 0; k < 255; ++k) {
        const uint16_t mant = k % 128;
        uint16_t exp = static_cast<uint16_t>(k < 128 ? e : e - 1);
        if (k < 128 && mant > md) exp = static_cast<uint16_t>(e - 1);
        w[1 + k] = static_cast<uint16_t>((k & 1) << 15 | exp << 7 | mant);
      }
      CheckSame(w, 1, 256, 128);
      CheckSame(w, 1, 256, 0);
    }
  }
}

TEST_CASE("awq means: quotients below 2^-100, zeros and subnormals") {
  std::vector<uint16_t> w(512, 0);
  // Group 0: max 1.0 with subnormal elements (quotients below 2^-100).
  w[0] = 0x3F80;
  for (int k = 1; k < 128; ++k) w[k] = static_cast<uint16_t>(k);               // subnormals
  // Group 1: max 2^-110 (den about 1e-6; its subnormals' quotients are below
  // 2^-100), zeros.
  w[128] = static_cast<uint16_t>((127 - 110) << 7);
  for (int k = 129; k < 256; k += 2) w[k] = static_cast<uint16_t>(k - 128);
  // Group 2: all zeros. Group 3: max 3.0, one element near 2^-98 (quotient about
  // 2^-99.5, just above), the rest random.
  std::mt19937 rng(7);
  w[384] = 0x4040;
  w[385] = static_cast<uint16_t>((127 - 98) << 7 | 5);
  for (int k = 386; k < 512; ++k) w[k] = static_cast<uint16_t>(0x3C00 + rng() % 0x0400);
  CheckSame(w, 1, 512, 128);
  CheckSame(w, 1, 512, 0);
}

TEST_CASE("awq means: random layers, summed over rows") {
  std::mt19937 rng(11);
  std::normal_distribution<float> n(0.0f, 0.02f);
  for (int group : {0, 32, 128}) {
    const uint64_t rows = 97, cols = 384;
    std::vector<uint16_t> w(rows * cols);
    for (uint16_t& v : w) {
      v = static_cast<uint16_t>(std::bit_cast<uint32_t>(RneBf16(n(rng))) >> 16);
    }
    // Some rows with an outlier column, some with tiny or zero elements.
    for (uint64_t r = 0; r < rows; r += 5) w[r * cols + r % cols] = 0x4100;
    for (uint64_t r = 2; r < rows; r += 7) w[r * cols + (r * 3) % cols] = 0x0003;
    for (uint64_t r = 3; r < rows; r += 11) w[r * cols + (r * 5) % cols] = 0x8000;
    CheckSame(w, rows, cols, group);
  }
}

}  // namespace
}  // namespace quench::testing
