// fp8::SearchSourceAbsMax (src/schemes/fp8_source_amax.cc: the largest |x| of a whole FP8
// source weight from the blocks that can hold it) against the definition: the largest |x| of
// the whole weight decoded by DequantizeSourceScalar, element by element. Shapes with partial
// blocks and per-tensor scales; scales random, tied (E8M0 powers of two), zero, -0, subnormal
// and overflowing; codes whose block maxima are 448 (the DeepSeek layout: one block read) or
// anything below, including a largest-scale block of zeros that the search must read past.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "schemes/float_formats.h"
#include "schemes/fp8.h"

namespace quench::fp8 {
namespace {

struct Weight {
  size_t rows, cols, block_rows, block_cols;
  std::vector<uint8_t> codes;
  std::vector<float> scales;

  size_t ScaleCols() const { return (cols + block_cols - 1) / block_cols; }
  size_t ScaleRows() const { return (rows + block_rows - 1) / block_rows; }
  SourceChunk Chunk() const {
    SourceChunk in;
    in.codes = codes.data();
    in.rows = rows;
    in.cols = cols;
    in.first_row = 0;
    in.scales = scales.data();
    in.scale_cols = ScaleCols();
    in.block_rows = block_rows;
    in.block_cols = block_cols;
    return in;
  }
};

// Codes with random signs whose magnitudes are uniform in [0, top(block)], top chosen per
// block by `top`; each block holds top itself once (unless top is 0).
template <class Top>
Weight MakeWeight(size_t rows, size_t cols, size_t br, size_t bc, uint32_t seed, Top top) {
  Weight w{rows, cols, br, bc, std::vector<uint8_t>(rows * cols), {}};
  std::mt19937 rng(seed);
  w.scales.resize(w.ScaleRows() * w.ScaleCols());
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < cols; ++c) {
      const uint32_t t = top((r / br) * w.ScaleCols() + c / bc);
      const uint32_t m = t == 0 ? 0 : rng() % (t + 1);
      w.codes[r * cols + c] = static_cast<uint8_t>(m | ((rng() & 1) << 7));
    }
  }
  for (size_t b = 0; b < w.scales.size(); ++b) {
    const size_t r =
        (b / w.ScaleCols()) * br + rng() % std::min(br, rows - (b / w.ScaleCols()) * br);
    const size_t c =
        (b % w.ScaleCols()) * bc + rng() % std::min(bc, cols - (b % w.ScaleCols()) * bc);
    w.codes[r * cols + c] = static_cast<uint8_t>(top(b) | ((rng() & 1) << 7));
  }
  return w;
}

// The definition: decode everything, take the largest |x|. False when decoding fails.
bool DecodedAbsMax(const Weight& w, float* amax) {
  std::vector<uint8_t> out(w.rows * w.cols * 2);
  if (!DequantizeSourceScalar(w.Chunk(), out.data())) return false;
  float best = 0.f;
  for (size_t i = 0; i < w.rows * w.cols; ++i) {
    uint16_t h;
    std::memcpy(&h, &out[2 * i], 2);
    best = std::max(best, std::fabs(BF16ToF32(h)));
  }
  *amax = best;
  return true;
}

void CheckEqual(const Weight& w, size_t* blocks_read = nullptr) {
  float want = -1.f, got = -1.f;
  REQUIRE(DecodedAbsMax(w, &want));
  size_t read = 0;
  REQUIRE(SearchSourceAbsMax(w.Chunk(), &got, &read));
  CHECK(std::memcmp(&want, &got, 4) == 0);
  CHECK(read <= w.scales.size());
  if (blocks_read != nullptr) *blocks_read = read;
}

struct Shape {
  size_t rows, cols, br, bc;
};
const Shape kShapes[] = {{256, 384, 128, 128}, {300, 200, 128, 128}, {37, 515, 128, 128},
                         {64, 64, 16, 32},     {129, 257, 128, 128}, {90, 70, 90, 70}};

TEST_CASE("block maxima of 448 (the DeepSeek layout): equal to the decode, one block read") {
  std::mt19937 rng(1);
  for (const Shape& s : kShapes) {
    CAPTURE(s.rows);
    CAPTURE(s.cols);
    Weight w = MakeWeight(s.rows, s.cols, s.br, s.bc, 7, [](size_t) { return 0x7Eu; });
    for (float& x : w.scales) x = std::ldexp(1.f + (rng() % 1000) / 1000.f, -int(rng() % 20));
    size_t read = 0;
    CheckEqual(w, &read);
    CHECK(read == 1);
  }
}

TEST_CASE("random block maxima and scales, tied power-of-two scales: equal to the decode") {
  for (uint32_t seed = 0; seed < 40; ++seed) {
    for (const Shape& s : kShapes) {
      CAPTURE(seed);
      CAPTURE(s.rows);
      std::mt19937 rng(seed * 31 + 5);
      std::vector<uint32_t> tops(64 * 64);
      for (uint32_t& t : tops) t = rng() % 127;  // 0..0x7E
      Weight w = MakeWeight(s.rows, s.cols, s.br, s.bc, seed, [&](size_t b) { return tops[b]; });
      for (float& x : w.scales) {
        // Seeds alternate between wide random scales and a few tied powers of two (E8M0).
        x = seed % 2 == 0 ? std::ldexp(0.5f + (rng() % 4096) / 4096.f, -int(rng() % 40))
                          : std::ldexp(1.f, -int(rng() % 3));
      }
      CheckEqual(w);
    }
  }
}

TEST_CASE("the largest-scale blocks hold only small codes or zeros: read past them") {
  // Scales descend with the block index; the codes' maxima ascend, so the largest |x| sits
  // in a block far down the order.
  Weight w =
      MakeWeight(512, 512, 128, 128, 3, [](size_t b) { return b == 0 ? 0u : uint32_t(b * 7); });
  for (size_t b = 0; b < w.scales.size(); ++b) w.scales[b] = std::ldexp(1.f, -int(b) / 4);
  size_t read = 0;
  CheckEqual(w, &read);
  CHECK(read > 1);
}

TEST_CASE("zero, -0, subnormal and tiny scales") {
  const float pool[] = {0.f, -0.f, std::ldexp(1.f, -140), std::ldexp(1.f, -126), 1e-30f};
  for (float s : pool) {
    CAPTURE(s);
    Weight w = MakeWeight(200, 300, 128, 128, 11, [](size_t b) { return uint32_t(60 + b); });
    for (size_t b = 0; b < w.scales.size(); ++b) w.scales[b] = b % 2 ? s : 0.f;
    CheckEqual(w);
  }
  Weight z = MakeWeight(64, 64, 128, 128, 2, [](size_t) { return 0x7Eu; });
  z.scales.assign(1, 0.f);
  float got = -1.f;
  REQUIRE(SearchSourceAbsMax(z.Chunk(), &got, nullptr));
  CHECK(got == 0.f);
}

TEST_CASE("a block it reads with a NaN code or an overflowing product: false, as the decode") {
  Weight w = MakeWeight(256, 256, 128, 128, 5, [](size_t) { return 0x70u; });
  w.scales = {1.f, 2.f, 3.f, 4.f};
  // The NaN code in the largest-scale block (block 3: rows 128.., columns 128..).
  w.codes[130 * 256 + 140] = 0xFF;
  float got = 0.f;
  CHECK_FALSE(SearchSourceAbsMax(w.Chunk(), &got, nullptr));
  std::vector<uint8_t> out(256 * 256 * 2);
  CHECK_FALSE(DequantizeSourceScalar(w.Chunk(), out.data()));
  // A product beyond bf16's range: 448 * 2^125.
  Weight o = MakeWeight(256, 256, 128, 128, 6, [](size_t) { return 0x7Eu; });
  o.scales = {1.f, std::ldexp(1.f, 125), 3.f, 4.f};
  CHECK_FALSE(SearchSourceAbsMax(o.Chunk(), &got, nullptr));
  CHECK_FALSE(DequantizeSourceScalar(o.Chunk(), out.data()));
}

TEST_CASE("a NaN code in a block it skips is left to the decode (the pipeline reports it)") {
  Weight w = MakeWeight(256, 256, 128, 128, 9, [](size_t) { return 0x7Eu; });
  w.scales = {1.f, 2.f, 3.f, 4.f};
  Weight clean = w;
  w.codes[5 * 256 + 7] = 0x7F;  // block 0, the smallest scale: never read
  clean.codes[5 * 256 + 7] = 0;
  float want = -1.f, got = -1.f;
  REQUIRE(DecodedAbsMax(clean, &want));
  REQUIRE(SearchSourceAbsMax(w.Chunk(), &got, nullptr));
  CHECK(got == want);
  std::vector<uint8_t> out(256 * 256 * 2);
  CHECK_FALSE(DequantizeSourceScalar(w.Chunk(), out.data()));
}

}  // namespace
}  // namespace quench::fp8

namespace quench::fp8 {
namespace {

TEST_CASE("rows read are reported in steps of at most 128 rows, up to where the search stopped") {
  // A per-tensor scale: one block, the whole weight. Without a 448 code every row is read.
  Weight w = MakeWeight(300, 64, 300, 64, 4, [](size_t) { return 0x60u; });
  w.scales = {0.5f};
  std::vector<std::pair<size_t, size_t>> seen;
  float got = 0.f;
  REQUIRE(SearchSourceAbsMax(w.Chunk(), &got, nullptr,
                             [&](size_t r0, size_t r1) { seen.emplace_back(r0, r1); }));
  CHECK(seen == std::vector<std::pair<size_t, size_t>>{{0, 128}, {128, 256}, {256, 300}});
  // With 448 in row 5 the search stops after it.
  for (uint8_t& c : w.codes) c &= 0x80 | 0x3F;
  w.codes[5 * 64 + 9] = 0xFE;
  seen.clear();
  REQUIRE(SearchSourceAbsMax(w.Chunk(), &got, nullptr,
                             [&](size_t r0, size_t r1) { seen.emplace_back(r0, r1); }));
  CHECK(seen == std::vector<std::pair<size_t, size_t>>{{0, 6}});
  CHECK(got == BF16ToF32(F32ToBF16(448.f * 0.5f)));
}

}  // namespace
}  // namespace quench::fp8
