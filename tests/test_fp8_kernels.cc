// The FP8 Highway kernels equal the scalar reference bit for bit on every compiled target,
// for every weight dtype, shapes with vector tails and partial 128-row bands, and unaligned
// input; and refuse chunks holding NaN or Inf.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "hwy/targets.h"
#include "kernel_test_util.h"
#include "schemes/float_formats.h"
#include "schemes/fp8.h"

namespace quench::fp8 {
using namespace quench::testing;  // NOLINT: shared kernel-test helpers

namespace {







enum class Pattern {
  kNormal,       // N(0, sigma) with sigma varying per row
  kRandomBits,   // uniformly random finite bit patterns: every exponent, subnormals
  kZeros,        // all zero (scale falls back to eps) with some -0
  kSubnormals,   // only subnormals of the dtype (and zeros)
  kHuge,         // magnitudes near the dtype's max
  kE4M3Ties,     // tile/row amax 448 (scale 1) and e4m3 midpoints elsewhere
  kMixedZeroRows,  // normal data with whole zero rows and zero 128-column stripes
};

const Pattern kPatterns[] = {Pattern::kNormal,     Pattern::kRandomBits, Pattern::kZeros,
                             Pattern::kSubnormals, Pattern::kHuge,       Pattern::kE4M3Ties,
                             Pattern::kMixedZeroRows};

const char* PatternName(Pattern p) {
  switch (p) {
    case Pattern::kNormal: return "normal";
    case Pattern::kRandomBits: return "random-bits";
    case Pattern::kZeros: return "zeros";
    case Pattern::kSubnormals: return "subnormals";
    case Pattern::kHuge: return "huge";
    case Pattern::kE4M3Ties: return "e4m3-ties";
    case Pattern::kMixedZeroRows: return "zero-rows";
  }
  return "?";
}

// Raw finite bit pattern of dtype d drawn uniformly over all finite patterns.
uint32_t RandomFiniteBits(std::mt19937& rng, DType d) {
  for (;;) {
    const uint32_t b = rng();
    if (d == DType::kF32) {
      if ((b & 0x7F800000u) != 0x7F800000u) return b;
    } else {
      const uint32_t h = b & 0xFFFFu;
      const uint32_t inf = d == DType::kBF16 ? 0x7F80u : 0x7C00u;
      if ((h & inf) != inf) return h;
    }
  }
}

// Fills rows x cols elements of dtype d at p (p may be unaligned).
void Fill(uint8_t* p, DType d, size_t rows, size_t cols, Pattern pattern, std::mt19937& rng) {
  const size_t esz = ElemBytes(d);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (size_t r = 0; r < rows; ++r) {
    const float sigma = std::ldexp(1.0f, static_cast<int>(r % 13) - 8);
    for (size_t c = 0; c < cols; ++c) {
      uint8_t* e = p + (r * cols + c) * esz;
      switch (pattern) {
        case Pattern::kNormal: PutElem(e, d, normal(rng) * sigma); break;
        case Pattern::kRandomBits: PutBits(e, d, RandomFiniteBits(rng, d)); break;
        case Pattern::kZeros: PutElem(e, d, (rng() & 1) ? -0.0f : 0.0f); break;
        case Pattern::kSubnormals: {
          const uint32_t sign = rng() & 1;
          uint32_t bits;
          if (d == DType::kF32) {
            bits = (rng() & 0x7FFFFFu) | (sign << 31);
          } else {
            const uint32_t mant_mask = d == DType::kBF16 ? 0x7Fu : 0x3FFu;
            bits = (rng() & mant_mask) | (sign << 15);
          }
          PutBits(e, d, bits);
          break;
        }
        case Pattern::kHuge: {
          const float u = std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng);
          PutElem(e, d, (c == 0 ? (rng() & 1 ? 1.0f : -1.0f) : u) * DTypeMax(d));
          break;
        }
        case Pattern::kE4M3Ties: {
          if (c % kBlock == 0) {
            PutElem(e, d, (rng() & 1) ? 448.0f : -448.0f);  // amax 448 -> scale exactly 1
          } else {
            const int k = static_cast<int>(rng() % 0x7E);   // pair (k, k+1)
            const float mid = (E4M3ToF32(static_cast<uint8_t>(k)) +
                               E4M3ToF32(static_cast<uint8_t>(k + 1))) / 2;
            PutElem(e, d, (rng() & 1) ? -mid : mid);  // exact in bf16, f16 and f32
          }
          break;
        }
        case Pattern::kMixedZeroRows: {
          const bool zero = (r % 3 == 1) || ((c / kBlock) % 2 == 1);
          PutElem(e, d, zero ? 0.0f : normal(rng) * sigma);
          break;
        }
      }
    }
  }
}

WeightChunk MakeChunk(const uint8_t* data, DType d, size_t rows, size_t cols) {
  WeightChunk in;
  in.data = data;
  in.dtype = d;
  in.rows = rows;
  in.cols = cols;
  return in;
}

struct Outputs {
  std::vector<uint8_t> codes;
  std::vector<uint8_t> scales;
  bool ok = false;
};

size_t ScaleCount(bool block, size_t rows, size_t cols) {
  return block ? ((rows + kBlock - 1) / kBlock) * ((cols + kBlock - 1) / kBlock) : rows;
}

Outputs Run(bool block, bool kernel, const WeightChunk& in) {
  Outputs o;
  o.codes.assign(in.rows * in.cols + kGuardBytes, kGuard);
  o.scales.assign(ScaleCount(block, in.rows, in.cols) * ElemBytes(in.dtype) + kGuardBytes,
                  kGuard);
  ChunkOutputs out;
  out.out[0] = o.codes.data();
  out.out[1] = o.scales.data();
  if (block) {
    o.ok = kernel ? QuantizeBlock(in, out) : QuantizeBlockScalar(in, out);
  } else {
    o.ok = kernel ? QuantizeChannel(in, out) : QuantizeChannelScalar(in, out);
  }
  return o;
}

// Compares the kernel on every target against the scalar reference on one shape, for every
// dtype, pattern and input offset; records the targets exercised in `targets`.
void CheckShape(bool block, size_t rows, size_t cols, std::mt19937& rng,
                std::set<std::string>& targets) {
  for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (Pattern pattern : kPatterns) {
      for (size_t offset : {0, 1, 2}) {  // misaligned by 1 byte (odd!) and by 2 bytes
        std::vector<uint8_t> storage(rows * cols * ElemBytes(d) + 8);
        uint8_t* data = storage.data() + offset;
        Fill(data, d, rows, cols, pattern, rng);
        const WeightChunk in = MakeChunk(data, d, rows, cols);
        const Outputs want = Run(block, false, in);
        CAPTURE(block);
        CAPTURE(DTypeLabel(d));
        CAPTURE(PatternName(pattern));
        CAPTURE(rows);
        CAPTURE(cols);
        CAPTURE(offset);
        REQUIRE(want.ok);
        targets.merge(ForEachTarget([&](const std::string& target) {
          const Outputs got = Run(block, true, in);
          CAPTURE(target);
          REQUIRE(got.ok);
          REQUIRE(got.codes == want.codes);  // includes the guard bytes: no overrun
          REQUIRE(got.scales == want.scales);
        }));
      }
    }
  }
}

// Column counts covering every tail length of 16- and 32-lane vectors, tile edges.
std::vector<size_t> ColumnCounts() {
  std::vector<size_t> cols;
  for (size_t c = 1; c <= 70; ++c) cols.push_back(c);
  for (size_t c : {95, 96, 97, 127, 128, 129, 130, 143, 160, 191, 200, 255, 256, 257, 300}) {
    cols.push_back(c);
  }
  return cols;
}

}  // namespace

TEST_SUITE("fp8_kernels") {

TEST_CASE("channel kernel equals the scalar reference on every target") {
  std::set<std::string> targets;
  std::mt19937 rng(1234);
  for (size_t cols : ColumnCounts()) {
    CheckShape(/*block=*/false, 1 + cols % 5, cols, rng, targets);
  }
  CheckShape(/*block=*/false, 37, 1000, rng, targets);
  for (const auto& t : targets) MESSAGE("fp8 channel kernel tested on target " << t);
  CHECK(targets.size() >= 2);
}

TEST_CASE("block kernel equals the scalar reference on every target") {
  std::set<std::string> targets;
  std::mt19937 rng(5678);
  // Partial and whole 128-row bands, partial and whole 128-column tiles, vector tails.
  for (size_t rows : {1, 5, 127, 128, 129, 260}) {
    for (size_t cols : {1, 7, 33, 127, 128, 129, 300}) {
      CheckShape(/*block=*/true, rows, cols, rng, targets);
    }
  }
  for (const auto& t : targets) MESSAGE("fp8 block kernel tested on target " << t);
  CHECK(targets.size() >= 2);
}

TEST_CASE("known values: scale and codes follow the definition") {
  // bf16 row {448, -1, 0.3, 0}: amax 448 -> scale 1; codes e4m3(RNE_bf16(x)).
  // 0.3 in bf16 is 0.30078125; e4m3 neighbours 0.28125 and 0.3125 -> nearer is 0.3125 (0x2A).
  uint8_t data[8];
  PutElem(data + 0, DType::kBF16, 448.0f);
  PutElem(data + 2, DType::kBF16, -1.0f);
  PutElem(data + 4, DType::kBF16, 0.3f);
  PutElem(data + 6, DType::kBF16, 0.0f);
  const WeightChunk in = MakeChunk(data, DType::kBF16, 1, 4);
  ForEachTarget([&](const std::string& target) {
    CAPTURE(target);
    for (bool kernel : {false, true}) {
      const Outputs o = Run(false, kernel, in);
      REQUIRE(o.ok);
      CHECK(o.codes[0] == 0x7E);
      CHECK(o.codes[1] == 0xB8);  // -1.0: sign, exponent 7 (bias 7), mantissa 0
      CHECK(o.codes[2] == 0x2A);
      CHECK(o.codes[3] == 0x00);
      CHECK(o.scales[0] == 0x80);  // bf16 1.0 = 0x3F80, little-endian
      CHECK(o.scales[1] == 0x3F);
    }
  });
  // All-zero f16 row: scale = eps(f16) = 2^-10 = 0x1400.
  uint8_t zeros[6] = {};
  const WeightChunk zin = MakeChunk(zeros, DType::kF16, 1, 3);
  for (bool kernel : {false, true}) {
    const Outputs o = Run(false, kernel, zin);
    REQUIRE(o.ok);
    CHECK(o.scales[0] == 0x00);
    CHECK(o.scales[1] == 0x14);
  }
}

TEST_CASE("NaN or Inf anywhere makes the kernels refuse the chunk") {
  const uint32_t kBad[3][3] = {
      {0x7F80u, 0xFF80u, 0x7FC1u},                    // bf16 +Inf, -Inf, NaN
      {0x7C00u, 0xFC00u, 0x7E01u},                    // f16
      {0x7F800000u, 0xFF800000u, 0x7FC00001u},        // f32
  };
  const DType kTypes[3] = {DType::kBF16, DType::kF16, DType::kF32};
  ForEachTarget([&](const std::string& target) {
    std::mt19937 rng(99);
    for (int t = 0; t < 3; ++t) {
      const DType d = kTypes[t];
      for (bool block : {false, true}) {
        for (size_t cols : {1, 5, 31, 64, 129, 300}) {
          const size_t rows = block ? 133 : 3;
          // Positions: first element, a vector tail element, the last element of the chunk.
          for (size_t pos : {size_t{0}, cols - 1, rows * cols - 1, (rows / 2) * cols + cols / 2}) {
            for (uint32_t bad : kBad[t]) {
              std::vector<uint8_t> storage(rows * cols * ElemBytes(d) + 1);
              uint8_t* data = storage.data() + 1;
              Fill(data, d, rows, cols, Pattern::kNormal, rng);
              PutBits(data + pos * ElemBytes(d), d, bad);
              const WeightChunk in = MakeChunk(data, d, rows, cols);
              CAPTURE(target);
              CAPTURE(DTypeLabel(d));
              CAPTURE(block);
              CAPTURE(cols);
              CAPTURE(pos);
              CAPTURE(bad);
              CHECK_FALSE(Run(block, false, in).ok);
              CHECK_FALSE(Run(block, true, in).ok);
            }
          }
        }
      }
    }
  });
}


// ---- Source decoding (FP8 checkpoints read as sources) ----

// The E4M3 definition (OCP FP8, "fn": no Inf, S.1111.111 is NaN): (-1)^s * 2^(e-7) * (1 +
// m/8) for e > 0, (-1)^s * 2^-6 * m/8 for e == 0. In double, independent of E4M3ToF32.
double E4M3Definition(uint8_t code) {
  const int e = (code >> 3) & 0xF, m = code & 7;
  const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return (code & 0x80) ? -mag : mag;
}

// Nearest bf16 value to a finite f32 value, ties to even, worked out on the value (8
// significant bits; bf16's subnormals are multiples of 2^-133). Inf when it rounds past the
// largest bf16. Independent of F32ToBF16's bit trick.
double RoundToBF16Definition(float f) {
  const double v = f;
  if (v == 0) return v;
  int exp = 0;
  std::frexp(v, &exp);  // v = frac * 2^exp, 0.5 <= |frac| < 1
  const int quantum_exp = std::max(exp - 8, -133);
  const double r = std::nearbyint(std::ldexp(v, -quantum_exp));  // FE_TONEAREST: ties to even
  const double out = std::ldexp(r, quantum_exp);
  const double bf16_max = std::ldexp(255.0, 120);  // 0x7F7F = 1.9921875 * 2^127
  if (std::fabs(out) > bf16_max) return v > 0 ? INFINITY : -INFINITY;
  return out;
}

// x = RNE_bf16(RN_f32(code * scale)): the f32 product (exact in double, then one rounding to
// f32), then one rounding to bf16.
double DecodeDefinition(uint8_t code, float scale) {
  return RoundToBF16Definition(static_cast<float>(E4M3Definition(code) * double{scale}));
}

SourceChunk MakeSource(const std::vector<uint8_t>& codes, size_t rows, size_t cols,
                       const std::vector<float>& scales, size_t block_rows, size_t block_cols,
                       size_t first_row = 0) {
  SourceChunk in;
  in.codes = codes.data();
  in.rows = rows;
  in.cols = cols;
  in.first_row = first_row;
  in.scales = scales.data();
  in.scale_cols = (cols + block_cols - 1) / block_cols;
  in.block_rows = block_rows;
  in.block_cols = block_cols;
  return in;
}

TEST_CASE("FP8 source decoding: every code times scales of every size equals the definition") {
  // Scales: 1, a DeepSeek-like multiplier, powers of two from E8M0's range (2^-127 gives f32
  // subnormal products, 2^127 overflows most codes), and odd values whose products round.
  const float kScales[] = {1.0f, 0.000337f, std::ldexp(1.0f, -127), std::ldexp(1.0f, -20),
                           std::ldexp(1.0f, 7), std::ldexp(1.0f, 120), std::ldexp(1.0f, 127),
                           3.1415927f, 1.0f / 3.0f, 6.0e-39f};
  std::vector<uint8_t> codes(256);
  for (int c = 0; c < 256; ++c) codes[static_cast<size_t>(c)] = static_cast<uint8_t>(c);
  ForEachTarget([&](const std::string& target) {
    for (float scale : kScales) {
      for (int c = 0; c < 256; ++c) {
        const uint8_t code = static_cast<uint8_t>(c);
        if ((code & 0x7F) == 0x7F) continue;  // NaN codes: refused, below
        const std::vector<uint8_t> one = {code};
        const std::vector<float> scales = {scale};
        const double want = DecodeDefinition(code, scale);
        uint16_t got_scalar = 0, got_kernel = 0;
        const SourceChunk in = MakeSource(one, 1, 1, scales, 128, 128);
        CAPTURE(target);
        CAPTURE(c);
        CAPTURE(scale);
        const bool ok_scalar = DequantizeSourceScalar(in, reinterpret_cast<uint8_t*>(&got_scalar));
        const bool ok_kernel = DequantizeSource(in, reinterpret_cast<uint8_t*>(&got_kernel));
        if (std::isinf(want)) {
          CHECK_FALSE(ok_scalar);
          CHECK_FALSE(ok_kernel);
          continue;
        }
        REQUIRE(ok_scalar);
        REQUIRE(ok_kernel);
        CHECK(double{BF16ToF32(got_scalar)} == want);
        CHECK(got_kernel == got_scalar);
        if (want == 0) CHECK((got_scalar >> 15) == (code >> 7));  // -0 keeps its sign
      }
    }
  });
}

TEST_CASE("FP8 source decoding: the kernel equals the scalar reference on chunks with tails") {
  std::mt19937 rng(7);
  ForEachTarget([&](const std::string& target) {
    struct Shape {
      size_t rows, cols, block_rows, block_cols, first_row;
    };
    const Shape shapes[] = {
        {300, 129, 128, 128, 0},    // partial tiles in both directions
        {77, 1000, 128, 128, 100},  // a chunk starting inside a tile row
        {5, 7, 128, 128, 254},      // narrower than a vector
        {64, 4096, 128, 128, 128},
        {33, 250, 33, 250, 0},      // one per-tensor scale: one tile covers the tensor
        {40, 300, 16, 32, 8},       // other block sizes
    };
    for (const Shape& sh : shapes) {
      std::vector<uint8_t> codes(sh.rows * sh.cols);
      for (uint8_t& c : codes) {
        do c = static_cast<uint8_t>(rng()); while ((c & 0x7F) == 0x7F);
      }
      const size_t tile_rows = (sh.first_row + sh.rows - 1) / sh.block_rows -
                               sh.first_row / sh.block_rows + 1;
      const size_t scale_cols = (sh.cols + sh.block_cols - 1) / sh.block_cols;
      std::vector<float> scales(tile_rows * scale_cols);
      std::uniform_real_distribution<float> u(-20.0f, 4.0f);
      for (float& x : scales) x = std::exp2(u(rng));
      const SourceChunk in =
          MakeSource(codes, sh.rows, sh.cols, scales, sh.block_rows, sh.block_cols, sh.first_row);
      std::vector<uint8_t> want(2 * codes.size() + kGuardBytes, kGuard);
      std::vector<uint8_t> got(2 * codes.size() + kGuardBytes, kGuard);
      CAPTURE(target);
      CAPTURE(sh.rows);
      CAPTURE(sh.cols);
      CAPTURE(sh.first_row);
      REQUIRE(DequantizeSourceScalar(in, want.data()));
      REQUIRE(DequantizeSource(in, got.data()));
      CHECK(got == want);
      // Spot check the tile each element takes its scale from, against the definition.
      for (size_t k = 0; k < 50; ++k) {
        const size_t r = rng() % sh.rows, c = rng() % sh.cols;
        const size_t tr = (sh.first_row + r) / sh.block_rows - sh.first_row / sh.block_rows;
        const float scale = scales[tr * scale_cols + c / sh.block_cols];
        uint16_t bits = 0;
        std::memcpy(&bits, want.data() + 2 * (r * sh.cols + c), 2);
        CHECK(double{BF16ToF32(bits)} == DecodeDefinition(codes[r * sh.cols + c], scale));
      }
    }
  });
}

TEST_CASE("FP8 source |x| max without decoding equals the max over the decoded chunk") {
  std::mt19937 rng(11);
  struct Shape {
    size_t rows, cols, block_rows, block_cols, first_row;
  };
  const Shape shapes[] = {{300, 129, 128, 128, 0}, {77, 1000, 128, 128, 100},
                          {5, 7, 128, 128, 254},   {33, 250, 33, 250, 0},
                          {40, 300, 16, 32, 8}};
  for (const Shape& sh : shapes) {
    for (int variant = 0; variant < 4; ++variant) {
      std::vector<uint8_t> codes(sh.rows * sh.cols);
      for (uint8_t& c : codes) {
        do c = static_cast<uint8_t>(rng()); while ((c & 0x7F) == 0x7F);
        if (variant == 1) c &= 0x87;  // subnormals and zeros only
      }
      const size_t tile_rows = (sh.first_row + sh.rows - 1) / sh.block_rows -
                               sh.first_row / sh.block_rows + 1;
      const size_t scale_cols = (sh.cols + sh.block_cols - 1) / sh.block_cols;
      std::vector<float> scales(tile_rows * scale_cols);
      std::uniform_real_distribution<float> u(-20.0f, 4.0f);
      for (float& x : scales) x = std::exp2(u(rng));
      scales[0] = 0.0f;                                              // a zero scale
      if (variant == 2) scales.back() = std::ldexp(1.0f, 125);       // overflows bf16
      if (variant == 3) codes[codes.size() / 2] = 0xFF;              // a NaN code
      const SourceChunk in =
          MakeSource(codes, sh.rows, sh.cols, scales, sh.block_rows, sh.block_cols, sh.first_row);
      std::vector<uint8_t> dec(2 * codes.size());
      CAPTURE(sh.rows);
      CAPTURE(sh.cols);
      CAPTURE(variant);
      const bool ok = DequantizeSourceScalar(in, dec.data());
      float want = 0.f;
      for (size_t i = 0; ok && i < codes.size(); ++i) {
        uint16_t bits = 0;
        std::memcpy(&bits, dec.data() + 2 * i, 2);
        want = std::max(want, std::fabs(BF16ToF32(bits)));
      }
      float got = -1.f;
      CHECK(SourceAbsMaxScalar(in, &got) == ok);
      if (ok) CHECK(got == want);
      ForEachTarget([&](const std::string& target) {
        CAPTURE(target);
        float vgot = -1.f;
        CHECK(SourceAbsMax(in, &vgot) == ok);
        if (ok) CHECK(vgot == want);
      });
    }
  }
}

TEST_CASE("FP8 source decoding refuses NaN codes and products that overflow bf16") {
  ForEachTarget([&](const std::string& target) {
    for (size_t cols : {1, 7, 64, 131}) {
      for (uint8_t bad : {uint8_t{0x7F}, uint8_t{0xFF}}) {
        for (size_t pos : {size_t{0}, cols - 1, cols / 2}) {
          std::vector<uint8_t> codes(3 * cols, 0x38);  // 1.0
          codes[cols + pos] = bad;
          const std::vector<float> scales(2, 1.0f);
          const SourceChunk in = MakeSource(codes, 3, cols, scales, 128, 128);
          std::vector<uint8_t> out(2 * codes.size());
          CAPTURE(target);
          CAPTURE(cols);
          CAPTURE(pos);
          CHECK_FALSE(DequantizeSourceScalar(in, out.data()));
          CHECK_FALSE(DequantizeSource(in, out.data()));
        }
      }
      // 448 * 2^120 overflows bf16 (max ~2^128); 1.0 * 2^120 does not.
      std::vector<uint8_t> codes(cols, 0x38);
      codes[cols - 1] = 0x7E;
      const std::vector<float> scales(2, std::ldexp(1.0f, 120));
      std::vector<uint8_t> out(2 * cols);
      const SourceChunk in = MakeSource(codes, 1, cols, scales, 128, 128);
      CHECK_FALSE(DequantizeSourceScalar(in, out.data()));
      CHECK_FALSE(DequantizeSource(in, out.data()));
    }
  });
}

}  // TEST_SUITE

}  // namespace quench::fp8
