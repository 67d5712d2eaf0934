// The AVX2 int4 kernel (src/schemes/int4_bf16_avx2.cc) against the scalar definition
// (QuantizePackedScalar, which divides and rounds in plain C++), bit for bit, symmetric and
// asymmetric (scales, packed words and packed zero points): every finite
// bf16 x (both signs, subnormals, zeros) under the scale of groups whose amax has every bf16
// significand at exponents across the whole range (subnormal amax and scales: the division,
// ReciprocalIsExact false; amax whose scale rounds to 0: eps; scales >= 2^126: the division
// again), in groups of 128 (whole blocks of 8 groups) and of 32 (the 32-element step, a
// partial block); every finite amax; group sizes, channel rows, widths around the 32/64-
// element steps and the 8-group blocks, zero and subnormal groups; refusal of NaN and Inf;
// and QuantizePacked on every Highway target with the kernel on and off. On a CPU without AVX2
// and FMA the kernel is never dispatched; this checks that it says so.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "int_paths.h"
#include "kernel_test_util.h"
#include "schemes/float_formats.h"
#include "schemes/int.h"
#include "schemes/int4_bf16_avx2.h"

namespace quench::intq {
using namespace quench::testing;  // NOLINT: shared kernel-test helpers

namespace {

struct Run {
  bool ok;
  std::vector<uint8_t> words;
  std::vector<uint8_t> scales;
  std::vector<uint8_t> zps;  // packed zero points (asymmetric; guard bytes only otherwise)
};

WeightChunk Chunk(const uint8_t* data, size_t rows, size_t cols, int group, bool sym = true) {
  WeightChunk in;
  in.data = data;
  in.dtype = DType::kBF16;
  in.rows = rows;
  in.cols = cols;
  in.params.bits = 4;
  in.params.group_size = group;
  in.params.symmetric = sym;
  return in;
}

enum class Path { kScalar, kKernel, kDispatch };

Run Quantize(const WeightChunk& in, Path path) {
  const size_t n_groups = in.params.group_size > 0 ? in.cols / in.params.group_size : 1;
  Run r;
  r.words.assign(in.rows * in.cols / 2 + kGuardBytes, kGuard);
  r.scales.assign(in.rows * n_groups * 2 + kGuardBytes, kGuard);
  const size_t zp_bytes = in.params.symmetric ? 0 : (in.rows * 4 + 31) / 32 * n_groups * 4;
  r.zps.assign(zp_bytes + kGuardBytes, kGuard);
  ChunkOutputs out;
  out.out[0] = r.words.data();
  out.out[1] = r.scales.data();
  out.out[2] = r.zps.data();
  switch (path) {
    case Path::kScalar: r.ok = QuantizePackedScalar(in, out); break;
    case Path::kKernel: r.ok = QuantizeInt4Bf16Avx2(in, out); break;
    case Path::kDispatch: r.ok = QuantizePacked(in, out); break;
  }
  return r;
}

// The kernel against the definition on `data` (bf16 patterns) as rows x cols, groups of
// `group` (0: the whole row), from an unaligned copy.
void ExpectSame(const std::vector<uint16_t>& data, size_t rows, size_t cols, int group,
                bool sym) {
  std::vector<uint8_t> bytes(data.size() * 2 + 1);
  std::memcpy(bytes.data() + 1, data.data(), data.size() * 2);
  const WeightChunk in = Chunk(bytes.data() + 1, rows, cols, group, sym);
  REQUIRE(Int4Bf16Avx2Handles(in));
  const Run want = Quantize(in, Path::kScalar);
  const Run got = Quantize(in, Path::kKernel);
  REQUIRE(got.ok == want.ok);
  if (!want.ok) return;
  REQUIRE(got.scales == want.scales);  // the guard bytes too: no overrun
  REQUIRE(got.words == want.words);
  REQUIRE(got.zps == want.zps);
}

// Groups of `group` elements: amax (sign alternating from group to group), then the values
// of `xs` in order, the last group zero-padded, and whole zero groups until the rows are
// whole (rows of `cols`).
std::vector<uint16_t> Groups(uint16_t amax_bits, const std::vector<uint16_t>& xs, size_t group,
                             size_t cols) {
  std::vector<uint16_t> data;
  for (size_t i = 0, g = 0; i < xs.size(); i += group - 1, ++g) {
    data.push_back(static_cast<uint16_t>(amax_bits | ((g & 1) << 15)));
    for (size_t j = 0; j < group - 1; ++j) data.push_back(i + j < xs.size() ? xs[i + j] : 0);
  }
  while (data.size() % cols != 0) data.push_back(0);
  return data;
}

// bf16 rows whose scale changes from group to group (2^-20 .. 2^20), with zeros, values at
// +-amax, and whole zero or subnormal groups.
std::vector<uint16_t> MixedRows(std::mt19937& rng, size_t rows, size_t cols, size_t group) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<uint16_t> data(rows * cols);
  for (size_t i = 0; i < data.size(); ++i) {
    const size_t g = i / group;
    const float sigma = std::ldexp(1.0f, static_cast<int>(g * 7 % 41) - 20);
    float v = nd(rng) * sigma;
    const uint32_t k = rng() % 64;
    if (k == 0) v = 0.f;
    if (k == 1) v = 3.75f * sigma;
    if (k == 2) v = -3.75f * sigma;
    if (g % 11 == 5) v = 0.f;
    uint16_t b = F32ToBF16(v);
    if (g % 13 == 7) b = static_cast<uint16_t>((rng() % 3) | (rng() & 0x8000u));  // subnormal
    data[i] = b;
  }
  return data;
}

}  // namespace

TEST_SUITE("int4_bf16_avx2") {

TEST_CASE("the chunks it takes") {
  const std::vector<uint8_t> data(4 * 192 * 2);
  const bool avail = Int4Bf16Avx2Available();
  MESSAGE("AVX2 int4 kernel available on this CPU: " << avail);
  CHECK(Int4Bf16Avx2Handles(Chunk(data.data(), 4, 128, 128)) == avail);
  CHECK(Int4Bf16Avx2Handles(Chunk(data.data(), 4, 192, 64)) == avail);
  CHECK(Int4Bf16Avx2Handles(Chunk(data.data(), 4, 192, 32)) == avail);
  CHECK(Int4Bf16Avx2Handles(Chunk(data.data(), 4, 192, 0)) == avail);  // channel
  CHECK(Int4Bf16Avx2Handles(Chunk(data.data(), 4, 96, 0)) == avail);
  CHECK_FALSE(Int4Bf16Avx2Handles(Chunk(data.data(), 4, 192, 16)));
  CHECK_FALSE(Int4Bf16Avx2Handles(Chunk(data.data(), 4, 80, 0)));
  CHECK_FALSE(Int4Bf16Avx2Handles(Chunk(data.data(), 4, 192, 48)));
  CHECK(Int4Bf16Avx2Handles(Chunk(data.data(), 4, 128, 128, /*sym=*/false)) == avail);
  CHECK(Int4Bf16Avx2Handles(Chunk(data.data(), 4, 192, 0, /*sym=*/false)) == avail);
  WeightChunk f16 = Chunk(data.data(), 4, 128, 128);
  f16.dtype = DType::kF16;
  CHECK_FALSE(Int4Bf16Avx2Handles(f16));
  WeightChunk eight = Chunk(data.data(), 4, 128, 128);
  eight.params.bits = 8;
  CHECK_FALSE(Int4Bf16Avx2Handles(eight));
  const std::vector<float> factors(128, 1.0f);
  WeightChunk smoothed = Chunk(data.data(), 4, 128, 128);
  smoothed.col_scale = factors.data();
  CHECK_FALSE(Int4Bf16Avx2Handles(smoothed));
  internal::SetInt4Bf16Avx2Enabled(false);
  CHECK_FALSE(Int4Bf16Avx2Handles(Chunk(data.data(), 4, 128, 128)));
  internal::SetInt4Bf16Avx2Enabled(true);
}

TEST_CASE("every finite bf16 x under every amax significand, many binades") {
  if (!Int4Bf16Avx2Available()) return;  // nothing to compare: QuantizePacked never takes it
  std::vector<uint16_t> all;
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    if ((b & 0x7F80u) != 0x7F80u) all.push_back(static_cast<uint16_t>(b));
  }
  // Exponents: subnormal amax (-133..-127: subnormal scales or eps, the division), the
  // smallest normals (scales subnormal: division; the first normal scales: the reciprocal),
  // ordinary ones (the reciprocal), and the largest (scales >= 2^126: division again).
  std::vector<int> exps;
  for (int e = -133; e <= -120; ++e) exps.push_back(e);
  for (int e : {-100, -10, -3, 0, 1, 2, 3, 7, 60, 120, 125, 126, 127}) exps.push_back(e);
  size_t checked = 0;
  for (int e : exps) {
    for (uint32_t m = 0; m < 128; ++m) {
      const uint16_t amax_bits = F32ToBF16(std::ldexp(1.0f + static_cast<float>(m) / 128.0f, e));
      if ((amax_bits & 0x7F80u) == 0x7F80u) continue;
      // Every finite x with |x| <= amax, both signs.
      std::vector<uint16_t> xs;
      for (uint16_t h : all) {
        if ((h & 0x7FFFu) <= amax_bits) xs.push_back(h);
      }
      CAPTURE(e);
      CAPTURE(amax_bits);
      // Groups of 128, rows of 8 (whole blocks), and groups of 32, rows of 3 (the 32-element
      // step and a partial block).
      // Asymmetric: the same groups (amax of either sign, the rest of both signs: many
      // ranges and zero points), every fourth significand.
      const std::vector<uint16_t> g128 = Groups(amax_bits, xs, 128, 1024);
      const std::vector<uint16_t> g32 = Groups(amax_bits, xs, 32, 96);
      for (bool sym : {true, false}) {
        if (!sym && m % 4 != 0) continue;
        CAPTURE(sym);
        ExpectSame(g128, g128.size() / 1024, 1024, 128, sym);
        ExpectSame(g32, g32.size() / 96, 96, 32, sym);
        checked += g128.size() + g32.size();
      }
    }
  }
  MESSAGE(checked << " (x, scale) pairs checked");
}

TEST_CASE("every finite amax") {
  if (!Int4Bf16Avx2Available()) return;
  // Group k: amax = the k-th finite positive bf16 pattern (sign alternating), then values at
  // and below it: the scale of every amax.
  constexpr size_t kGroup = 32, kCols = 9 * kGroup;  // a block of 8 groups and one more
  std::vector<uint16_t> data;
  for (uint32_t a = 0; a < 0x7F80u; ++a) {
    data.push_back(static_cast<uint16_t>(a | ((a & 1) << 15)));
    for (size_t j = 1; j < kGroup; ++j) {
      const uint32_t x = a * static_cast<uint32_t>(kGroup - j) / kGroup;  // below amax, to 0
      data.push_back(static_cast<uint16_t>(x | ((j % 3 == 0) << 15)));
    }
  }
  while (data.size() % kCols != 0) data.push_back(0);
  for (bool sym : {true, false}) {
    CAPTURE(sym);
    ExpectSame(data, data.size() / kCols, kCols, static_cast<int>(kGroup), sym);
  }
}

TEST_CASE("group sizes, channel rows, widths, zero and subnormal groups") {
  if (!Int4Bf16Avx2Available()) return;
  std::mt19937 rng(21);
  // (cols, group): groups of 32 / 64 / 128 / 256 in rows of 1 to 37 groups (partial and
  // whole blocks of 8, a 32-element tail after 64-element steps), channel rows.
  const size_t shapes[][2] = {{32, 32},     {64, 32},    {96, 32},       {256, 32},
                              {288, 32},    {544, 32},   {64, 64},       {192, 64},
                              {64 * 17, 64}, {128, 128}, {1024, 128},    {128 * 37, 128},
                              {768, 256},   {32, 0},     {96, 0},        {4096, 0},
                              {4096 + 32, 0}, {14336, 0}};
  for (const auto& sh : shapes) {
    const size_t cols = sh[0];
    const int group = static_cast<int>(sh[1]);
    for (size_t rows : {1, 3, 17}) {
      for (bool sym : {true, false}) {
        const std::vector<uint16_t> data =
            MixedRows(rng, rows, cols, group > 0 ? static_cast<size_t>(group) : cols);
        CAPTURE(rows);
        CAPTURE(cols);
        CAPTURE(group);
        CAPTURE(sym);
        ExpectSame(data, rows, cols, group, sym);
        // The same rows all zero, all subnormal, and all of one sign (zero points at -8
        // and 7).
        ExpectSame(std::vector<uint16_t>(rows * cols, 0), rows, cols, group, sym);
        std::vector<uint16_t> sub(data.size()), pos(data.size()), neg(data.size());
        for (size_t i = 0; i < sub.size(); ++i) {
          sub[i] = static_cast<uint16_t>(data[i] & 0x807Fu);
          pos[i] = static_cast<uint16_t>(data[i] & 0x7FFFu);
          neg[i] = static_cast<uint16_t>(data[i] | 0x8000u);
        }
        ExpectSame(sub, rows, cols, group, sym);
        ExpectSame(pos, rows, cols, group, sym);
        ExpectSame(neg, rows, cols, group, sym);
      }
    }
  }
}

TEST_CASE("NaN and Inf in any group are refused") {
  if (!Int4Bf16Avx2Available()) return;
  std::mt19937 rng(5);
  const size_t rows = 3, cols = 9 * 128;  // a block of 8 groups and one more
  for (uint16_t bad : {uint16_t{0x7F80}, uint16_t{0xFF80}, uint16_t{0x7FC1}, uint16_t{0xFFFF},
                       uint16_t{0x7F81}}) {
    for (size_t pos : {size_t{0}, size_t{127}, size_t{7 * 128 + 5}, size_t{8 * 128},
                       cols + 1000, rows * cols - 1}) {
      std::vector<uint16_t> data = MixedRows(rng, rows, cols, 128);
      data[pos] = bad;
      std::vector<uint8_t> bytes(data.size() * 2);
      std::memcpy(bytes.data(), data.data(), bytes.size());
      for (bool sym : {true, false}) {
        CAPTURE(bad);
        CAPTURE(pos);
        CAPTURE(sym);
        ExpectSame(data, rows, cols, 128, sym);
        CHECK_FALSE(Quantize(Chunk(bytes.data(), rows, cols, 128, sym), Path::kKernel).ok);
      }
    }
  }
}

TEST_CASE("QuantizePacked: the AVX2 target takes this kernel, and with it off its Highway code") {
  // Both paths through the dispatcher on every target (int_paths.h: all targets with the
  // kernel off, then the AVX2 target with it on), so that the Highway AVX2 code this kernel
  // displaces stays checked against the definition too.
  std::mt19937 rng(7);
  const std::pair<int, bool> cases[] = {{128, true}, {32, true}, {0, true}, {128, false}};
  for (const auto& [group, sym] : cases) {
    const size_t rows = 37, cols = 1024;
    const std::vector<uint16_t> data =
        MixedRows(rng, rows, cols, group > 0 ? static_cast<size_t>(group) : cols);
    const WeightChunk in =
        Chunk(reinterpret_cast<const uint8_t*>(data.data()), rows, cols, group, sym);
    const Run want = Quantize(in, Path::kScalar);
    REQUIRE(want.ok);
    const std::set<std::string> paths = ForEachIntPath([&](const std::string& target) {
      const Run got = Quantize(in, Path::kDispatch);
      CAPTURE(target);
      CAPTURE(group);
      REQUIRE(got.ok);
      CHECK(got.words == want.words);
      CHECK(got.scales == want.scales);
      CHECK(got.zps == want.zps);
    });
    CHECK(paths.count(kInt4Bf16Avx2Path) == (Int4Bf16Avx2Available() ? 1u : 0u));
  }
}

}  // TEST_SUITE
}  // namespace quench::intq
