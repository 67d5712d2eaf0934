// The bf16 int4 fast path of the int kernels (src/schemes/int.cc, QuantizePairs4): a group's
// pairs quantized and packed in one step, and RNE_bf16(x / scale) taken as x * RN(1 / scale)
// where fp8::internal::ReciprocalIsExact allows it (fp8_shared.h has the proof). Checked
// against the scalar definition (which divides) on every compiled target: every finite bf16
// x whose magnitude fits under a group's amax, for every amax of one binade (so every scale a
// group can have there; every third amax at exponents spanning the reciprocal path's range)
// and at the subnormal scales that keep the division, symmetric and asymmetric, group sizes
// 32 and 128.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "int_paths.h"
#include "kernel_test_util.h"
#include "schemes/float_formats.h"
#include "schemes/int.h"
#include "schemes/int4_bf16.h"

namespace quench::intq {
using namespace quench::testing;  // NOLINT: shared kernel-test helpers

namespace {

// Rows of `group` bf16 elements: element 0 of each group is `amax` (it fixes the symmetric
// scale), element 1 is -amax / 3 (a negative minimum for the asymmetric scale), the rest run
// through every finite bf16 pattern with |x| <= amax, in order.
std::vector<uint8_t> RowsUnder(float amax, size_t group, size_t* rows) {
  std::vector<uint16_t> xs;
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    const float x = BF16ToF32(static_cast<uint16_t>(b));
    if (std::isfinite(x) && std::fabs(x) <= amax) xs.push_back(static_cast<uint16_t>(b));
  }
  const size_t per_group = group - 2;
  const size_t groups = (xs.size() + per_group - 1) / per_group;
  std::vector<uint16_t> elems;
  for (size_t g = 0; g < groups; ++g) {
    elems.push_back(F32ToBF16(amax));
    elems.push_back(F32ToBF16(-amax / 3.0f));
    for (size_t i = 0; i < per_group; ++i) elems.push_back(xs[(g * per_group + i) % xs.size()]);
  }
  // Four groups a row (the row's later groups reuse the scale of the same amax).
  while (elems.size() % (4 * group) != 0) {
    elems.insert(elems.end(), elems.begin(), elems.begin() + static_cast<long>(group));
  }
  *rows = elems.size() / (4 * group);
  std::vector<uint8_t> bytes(elems.size() * 2);
  std::memcpy(bytes.data(), elems.data(), bytes.size());
  return bytes;
}

size_t CompareOnTargets(const std::vector<uint8_t>& data, size_t rows, size_t group, bool sym) {
  WeightChunk in;
  in.data = data.data();
  in.dtype = DType::kBF16;
  in.rows = rows;
  in.cols = 4 * group;
  in.params.bits = 4;
  in.params.group_size = static_cast<int>(group);
  in.params.symmetric = sym;
  const size_t words = rows * in.cols / 2, scales = rows * 4 * 2, zps = (rows + 7) / 8 * 4 * 4;
  std::vector<uint8_t> w0(words + kGuardBytes, kGuard), s0(scales + kGuardBytes, kGuard),
      z0(zps + kGuardBytes, kGuard);
  ChunkOutputs want;
  want.out[0] = w0.data();
  want.out[1] = s0.data();
  want.out[2] = z0.data();
  REQUIRE(QuantizePackedScalar(in, want));
  size_t checked = 0;
  ForEachIntPath([&](const std::string& target) {
    std::vector<uint8_t> w1(w0.size(), kGuard), s1(s0.size(), kGuard), z1(z0.size(), kGuard);
    ChunkOutputs got;
    got.out[0] = w1.data();
    got.out[1] = s1.data();
    got.out[2] = z1.data();
    CAPTURE(target);
    REQUIRE(QuantizePacked(in, got));
    REQUIRE(w1 == w0);
    REQUIRE(s1 == s0);
    if (!sym) REQUIRE(z1 == z0);
    checked += rows * in.cols;
  });
  return checked;
}

// bf16 rows of normal values whose scale changes from group to group (2^-20 .. 2^20), with
// zeros, ties of the group amax, -amax, and whole zero or subnormal groups.
std::vector<uint8_t> MixedRows(std::mt19937& rng, size_t rows, size_t cols, size_t group) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<uint8_t> bytes(rows * cols * 2 + 1);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < cols; ++c) {
      const size_t g = (r * cols + c) / group;
      const float sigma = std::ldexp(1.0f, static_cast<int>(g * 7 % 41) - 20);
      float v = nd(rng) * sigma;
      const uint32_t k = rng() % 64;
      if (k == 0) v = 0.f;
      if (k == 1) v = 3.75f * sigma;
      if (k == 2) v = -3.75f * sigma;
      if (g % 11 == 5) v = 0.f;
      uint16_t b = F32ToBF16(v);
      if (g % 13 == 7) b = static_cast<uint16_t>((rng() % 3) | (rng() & 0x8000u));  // subnormal
      std::memcpy(bytes.data() + 1 + (r * cols + c) * 2, &b, 2);
    }
  }
  return bytes;
}

WeightChunk Int4Chunk(const uint8_t* data, size_t rows, size_t cols, int group, bool sym,
                      DType d = DType::kBF16) {
  WeightChunk in;
  in.data = data;
  in.dtype = d;
  in.rows = rows;
  in.cols = cols;
  in.params.bits = 4;
  in.params.group_size = group;
  in.params.symmetric = sym;
  return in;
}

}  // namespace

TEST_SUITE("int_fast_paths") {

TEST_CASE("bf16 int4: every x under every reachable scale equals the definition") {
  size_t checked = 0;
  for (int e : {-125, -40, 0, 37, 120}) {
    // Every bf16 amax in [7.5, 15) * 2^e (every third away from exponent 0): their symmetric
    // scales RNE_bf16(amax / 7.5) are every scale with exponent e that a group can have.
    const uint16_t lo = F32ToBF16(std::ldexp(7.5f, e)), hi = F32ToBF16(std::ldexp(15.0f, e));
    for (uint32_t bits = lo; bits < hi; bits += (e == 0 ? 1 : 3)) {
      const float amax = BF16ToF32(static_cast<uint16_t>(bits));
      CAPTURE(e);
      CAPTURE(amax);
      size_t rows = 0;
      const size_t group = (bits % 2 == 0) ? 128 : 32;
      const std::vector<uint8_t> data = RowsUnder(amax, group, &rows);
      checked += CompareOnTargets(data, rows, group, /*sym=*/true);
      if (bits % 4 == 0) checked += CompareOnTargets(data, rows, group, /*sym=*/false);
    }
  }
  MESSAGE(checked << " (element, target) pairs checked");
}

TEST_CASE("bf16 int4: scales below bf16's normal range keep the division") {
  size_t checked = 0;
  // amax / 7.5 subnormal in bf16 (the reciprocal would overflow or lose bits), and the
  // smallest normal scale.
  for (float amax : {std::ldexp(1.0f, -130), std::ldexp(1.5f, -128), std::ldexp(1.0f, -133),
                     std::ldexp(1.0f, -126) * 7.5f, std::ldexp(1.0f, -125)}) {
    size_t rows = 0;
    const std::vector<uint8_t> data = RowsUnder(BF16ToF32(F32ToBF16(amax)), 128, &rows);
    checked += CompareOnTargets(data, rows, 128, true);
    checked += CompareOnTargets(data, rows, 128, false);
  }
  MESSAGE(checked << " (element, target) pairs checked");
}

TEST_CASE("AVX-512 BF16 int4 kernel: the chunks it takes") {
  const std::vector<uint8_t> data(4 * 192 * 2);
  const bool avail = Int4Bf16Available();
  MESSAGE("AVX-512 BF16 int4 kernel available on this CPU: " << avail);
  CHECK(Int4Bf16Handles(Int4Chunk(data.data(), 4, 128, 128, true)) == avail);
  CHECK(Int4Bf16Handles(Int4Chunk(data.data(), 4, 192, 64, true)) == avail);
  CHECK(Int4Bf16Handles(Int4Chunk(data.data(), 4, 192, 0, true)) == avail);  // channel
  CHECK_FALSE(Int4Bf16Handles(Int4Chunk(data.data(), 4, 192, 32, true)));
  CHECK_FALSE(Int4Bf16Handles(Int4Chunk(data.data(), 4, 96, 0, true)));
  CHECK(Int4Bf16Handles(Int4Chunk(data.data(), 4, 128, 128, false)) == avail);  // asymmetric
  CHECK_FALSE(Int4Bf16Handles(Int4Chunk(data.data(), 4, 128, 128, true, DType::kF16)));
  WeightChunk eight = Int4Chunk(data.data(), 4, 128, 128, true);
  eight.params.bits = 8;
  CHECK_FALSE(Int4Bf16Handles(eight));
  intq::internal::SetInt4Bf16Enabled(false);
  CHECK_FALSE(Int4Bf16Handles(Int4Chunk(data.data(), 4, 128, 128, true)));
  intq::internal::SetInt4Bf16Enabled(true);
}

TEST_CASE(
    "AVX-512 BF16 int4 kernel: symmetric and asymmetric rows of many groups equal the definition") {
  if (!Int4Bf16Available()) {
    MESSAGE("this CPU has no AVX-512 BF16: the kernel cannot run here (the Highway kernels "
            "take these chunks, compared above)");
    return;
  }
  std::mt19937 rng(99);
  // (rows, cols, group): 37 groups a row (two whole vectors of parameters and a partial
  // one), one group, a channel row of 192, groups of 64 and 256.
  const size_t shapes[][3] = {{5, 37 * 128, 128}, {33, 128, 128}, {7, 192, 0},
                              {9, 64 * 5, 64},    {3, 256 * 3, 256}, {64, 1024, 128}};
  for (const auto& sh : shapes) {
    for (bool sym : {true, false}) {
      const size_t rows = sh[0], cols = sh[1];
      const int group = static_cast<int>(sh[2]);
      const size_t gcols = group > 0 ? static_cast<size_t>(group) : cols;
      const std::vector<uint8_t> bytes = MixedRows(rng, rows, cols, gcols);
      const WeightChunk in = Int4Chunk(bytes.data() + 1, rows, cols, group, sym);  // unaligned
      REQUIRE(Int4Bf16Handles(in));
      const size_t n_groups = cols / gcols;
      const size_t zp_bytes = sym ? 0 : (rows * 4 + 31) / 32 * n_groups * 4;
      std::vector<uint8_t> w0(rows * cols / 2 + kGuardBytes, kGuard),
          s0(rows * n_groups * 2 + kGuardBytes, kGuard), z0(zp_bytes + kGuardBytes, kGuard);
      ChunkOutputs want;
      want.out[0] = w0.data();
      want.out[1] = s0.data();
      want.out[2] = z0.data();
      REQUIRE(QuantizePackedScalar(in, want));
      std::vector<uint8_t> w1(w0.size(), kGuard), s1(s0.size(), kGuard), z1(z0.size(), kGuard);
      ChunkOutputs got;
      got.out[0] = w1.data();
      got.out[1] = s1.data();
      got.out[2] = z1.data();
      CAPTURE(rows);
      CAPTURE(cols);
      CAPTURE(group);
      CAPTURE(sym);
      REQUIRE(QuantizeInt4Bf16(in, got));
      CHECK(w1 == w0);  // the guard bytes too: no overrun
      CHECK(s1 == s0);
      CHECK(z1 == z0);
    }
  }
}

TEST_CASE("AVX-512 BF16 int4 kernel: NaN or Inf in any group refuses the chunk, symmetric or not") {
  if (!Int4Bf16Available()) {
    MESSAGE("this CPU has no AVX-512 BF16: the kernel cannot run here");
    return;
  }
  std::mt19937 rng(5);
  const size_t rows = 3, cols = 384;
  for (uint16_t bad : {uint16_t{0x7F80}, uint16_t{0xFF80}, uint16_t{0x7FC1}, uint16_t{0xFFFF}}) {
    for (size_t pos : {size_t{0}, size_t{127}, size_t{500}, rows * cols - 1}) {
      std::vector<uint8_t> bytes = MixedRows(rng, rows, cols, 128);
      std::memcpy(bytes.data() + 1 + pos * 2, &bad, 2);
      for (bool sym : {true, false}) {
        const WeightChunk in = Int4Chunk(bytes.data() + 1, rows, cols, 128, sym);
        std::vector<uint8_t> w(rows * cols / 2), s(rows * 3 * 2), z(3 * 4);
        ChunkOutputs out;
        out.out[0] = w.data();
        out.out[1] = s.data();
        out.out[2] = z.data();
        CAPTURE(bad);
        CAPTURE(pos);
        CAPTURE(sym);
        CHECK_FALSE(QuantizePackedScalar(in, out));
        CHECK_FALSE(QuantizeInt4Bf16(in, out));
      }
    }
  }
}

}  // TEST_SUITE

}  // namespace quench::intq
