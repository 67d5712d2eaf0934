// The integer Highway kernels equal the scalar reference bit for bit on every compiled target,
// for bits 2..8, channel and group strategies, symmetric and asymmetric, unpacked and packed,
// every weight dtype, vector and word tails, unaligned input; they refuse chunks holding NaN
// or Inf. The scalar reference itself is checked on worked examples computed by hand from the
// definitions (docs/reference-notes.md sections 10.2-10.4), each also confirmed with
// compressed-tensors 0.19.0.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "hwy/targets.h"
#include "int_kernel_run.h"
#include "int_paths.h"
#include "kernel_test_util.h"
#include "schemes/float_formats.h"
#include "schemes/int.h"

namespace quench::intq {
using namespace quench::testing;  // NOLINT: shared kernel-test helpers
using namespace testing_int;      // NOLINT: Config, OutputSizes, MakeChunk, Run

namespace {

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

// Smallest positive subnormal pattern of d times k (k small), as raw bits.
uint32_t SubnormalBits(DType d, uint32_t k, bool negative) {
  const uint32_t sign = negative ? (d == DType::kF32 ? 0x80000000u : 0x8000u) : 0u;
  return sign | k;
}

enum class Pattern {
  kNormal,      // N(0, sigma) with sigma varying per group
  kRandomBits,  // uniformly random finite bit patterns: every exponent, subnormals
  kZeros,       // all zero, some -0: scale eps, asymmetric zp from 0/0 = NaN -> 0
  kConstant,    // one value repeated per group
  kNegative,    // negative values only: mx = 0
  kSubnormals,  // subnormals only: scales that underflow to 0 in D
  kHuge,        // magnitudes near the dtype max: mx - mn overflows D (scale +Inf)
  kTies,        // scale exactly 2^e and x / scale = k + 0.5
  kMixed,       // groups alternating zero, constant, tiny and normal
};

const Pattern kPatterns[] = {Pattern::kNormal,   Pattern::kRandomBits, Pattern::kZeros,
                             Pattern::kConstant, Pattern::kNegative,   Pattern::kSubnormals,
                             Pattern::kHuge,     Pattern::kTies,       Pattern::kMixed};

const char* PatternName(Pattern p) {
  switch (p) {
    case Pattern::kNormal: return "normal";
    case Pattern::kRandomBits: return "random-bits";
    case Pattern::kZeros: return "zeros";
    case Pattern::kConstant: return "constant";
    case Pattern::kNegative: return "negative";
    case Pattern::kSubnormals: return "subnormals";
    case Pattern::kHuge: return "huge";
    case Pattern::kTies: return "ties";
    case Pattern::kMixed: return "mixed";
  }
  return "?";
}

// Fills rows x cols elements of dtype d at p (p may be unaligned), group by group.
void Fill(uint8_t* p, DType d, size_t rows, size_t cols, const Config& cfg, Pattern pattern,
          std::mt19937& rng) {
  const size_t esz = ElemBytes(d);
  const size_t group = cfg.group_size > 0 ? static_cast<size_t>(cfg.group_size) : cols;
  const int qmin = -(1 << (cfg.bits - 1));
  const int qmax = (1 << (cfg.bits - 1)) - 1;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c0 = 0; c0 < cols; c0 += group) {
      const size_t gi = r * 7 + c0 / group;
      const float sigma = std::ldexp(1.0f, static_cast<int>(gi % 13) - 8);
      const float constant = (rng() & 1 ? -1.0f : 1.0f) * sigma * 0.37f;
      Pattern pat = pattern;
      if (pattern == Pattern::kMixed) {
        const Pattern cycle[] = {Pattern::kZeros, Pattern::kConstant, Pattern::kSubnormals,
                                 Pattern::kNormal, Pattern::kNegative};
        pat = cycle[gi % 5];
      }
      for (size_t c = c0; c < c0 + group; ++c) {
        uint8_t* e = p + (r * cols + c) * esz;
        switch (pat) {
          case Pattern::kMixed:
          case Pattern::kNormal: PutElem(e, d, normal(rng) * sigma); break;
          case Pattern::kRandomBits: PutBits(e, d, RandomFiniteBits(rng, d)); break;
          case Pattern::kZeros: PutElem(e, d, (rng() & 1) ? -0.0f : 0.0f); break;
          case Pattern::kConstant: PutElem(e, d, constant); break;
          case Pattern::kNegative: PutElem(e, d, -std::fabs(normal(rng)) * sigma); break;
          case Pattern::kSubnormals:
            PutBits(e, d, SubnormalBits(d, rng() % 5, rng() & 1));
            break;
          case Pattern::kHuge: {
            const float u = std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng);
            PutElem(e, d, (c == c0 ? (rng() & 1 ? 1.0f : -1.0f) : u) * DTypeMax(d));
            break;
          }
          case Pattern::kTies: {
            // Symmetric: amax (2^b - 1) / 2 * sigma makes the scale sigma; asymmetric: min
            // qmin * sigma and max qmax * sigma make the scale sigma and the zp 0. The other
            // elements are (k + 0.5) * sigma, exact ties of round half to even.
            float v = (static_cast<float>(qmin + static_cast<int>(rng() % (qmax - qmin))) +
                       0.5f) * sigma;
            if (c == c0) {
              v = cfg.symmetric ? (rng() & 1 ? 1.0f : -1.0f) * (qmax - qmin) / 2.0f * sigma
                                : qmin * sigma;
            } else if (c == c0 + group - 1 && !cfg.symmetric) {
              v = qmax * sigma;
            }
            PutElem(e, d, v);
            break;
          }
        }
      }
    }
  }
}

// Compares the kernel on every target against the scalar reference on one shape, for every
// dtype, pattern and input offset.
void CheckShape(const Config& cfg, size_t rows, size_t cols, std::mt19937& rng,
                std::set<std::string>& targets) {
  for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (Pattern pattern : kPatterns) {
      for (size_t offset : {0, 3}) {  // aligned, and misaligned by an odd byte count
        std::vector<uint8_t> storage(rows * cols * ElemBytes(d) + 8);
        uint8_t* data = storage.data() + offset;
        Fill(data, d, rows, cols, cfg, pattern, rng);
        const WeightChunk in = MakeChunk(data, d, rows, cols, cfg);
        const Outputs want = Run(cfg, false, in);
        CAPTURE(cfg.bits);
        CAPTURE(cfg.group_size);
        CAPTURE(cfg.symmetric);
        CAPTURE(cfg.packed);
        CAPTURE(DTypeLabel(d));
        CAPTURE(PatternName(pattern));
        CAPTURE(rows);
        CAPTURE(cols);
        CAPTURE(offset);
        REQUIRE(want.ok);
        targets.merge(ForEachIntPath([&](const std::string& target) {
          const Outputs got = Run(cfg, true, in);
          CAPTURE(target);
          REQUIRE(got.ok);
          REQUIRE(got.values == want.values);  // the guard bytes too: no overrun
          REQUIRE(got.scales == want.scales);
          REQUIRE(got.zps == want.zps);
        }));
      }
    }
  }
}

void CheckConfig(const Config& cfg, std::set<std::string>& targets, std::mt19937& rng) {
  if (cfg.group_size > 0) {
    const size_t g = static_cast<size_t>(cfg.group_size);
    // 37 rows: not a multiple of 8 or 32 (the last chunk; packed zero points end mid-word).
    CheckShape(cfg, 37, 3 * g, rng, targets);
    CheckShape(cfg, 1, g, rng, targets);
    // 37 groups per row: the kernels compute a row's parameters in vectors of groups (up to
    // 16 lanes), so this takes whole vectors and a partial last one.
    CheckShape(cfg, 3, 37 * g, rng, targets);
  } else {
    // Column counts covering vector tails (4..32 lanes) and packed-word tails (8 / 32 cols).
    for (size_t cols : {1, 3, 5, 8, 9, 17, 31, 32, 33, 63, 65, 100, 129}) {
      CheckShape(cfg, 1 + cols % 5, cols, rng, targets);
    }
    CheckShape(cfg, 37, 300, rng, targets);
  }
}

// Runs the scalar reference (or the kernel) on one bf16 row given as values.
Outputs RunRow(const Config& cfg, bool kernel, DType d, const std::vector<float>& row,
               size_t rows = 1) {
  std::vector<uint8_t> data(row.size() * ElemBytes(d));
  for (size_t i = 0; i < row.size(); ++i) PutElem(data.data() + i * ElemBytes(d), d, row[i]);
  return Run(cfg, kernel, MakeChunk(data.data(), d, rows, row.size() / rows, cfg));
}

uint32_t Word(const std::vector<uint8_t>& bytes, size_t i) {
  uint32_t w;
  std::memcpy(&w, bytes.data() + 4 * i, 4);
  return w;
}

uint16_t Half(const std::vector<uint8_t>& bytes, size_t i) {
  return static_cast<uint16_t>(bytes[2 * i] | (bytes[2 * i + 1] << 8));
}

}  // namespace

TEST_SUITE("int_kernels") {

TEST_CASE("kernels equal the scalar reference on every target") {
  std::set<std::string> targets;
  std::mt19937 rng(4321);
  for (int bits = 2; bits <= 8; ++bits) {
    for (int group : {0, 24, 32, 64, 128}) {  // 24: a group that is no multiple of a vector
      for (bool symmetric : {true, false}) {
        for (bool packed : {false, true}) {
          CheckConfig(Config{bits, group, symmetric, packed}, targets, rng);
        }
      }
    }
  }
  for (const auto& t : targets) MESSAGE("int kernels tested on target " << t);
  CHECK(targets.size() >= 2);
}

TEST_CASE("packing: the spec's 4-bit example and a 3-bit word boundary, by hand") {
  for (bool kernel : {false, true}) {
    CAPTURE(kernel);
    // Symmetric int4, amax 7.5 -> scale RNE(7.5 / 7.5) = 1; -7.5 is a tie that rounds to the
    // even -8. q = [-8,-1,0,1,2,3,6,7] -> u = q + 8 = [0,7,8,9,10,11,14,15], nibble k of the
    // word holding element k: 0xFEBA9870 (pack_to_int32, docs/reference-notes.md 10.4).
    const Config c4{4, 0, true, true};
    const Outputs o4 = RunRow(c4, kernel, DType::kBF16, {-7.5f, -1, 0, 1, 2, 3, 6, 7});
    REQUIRE(o4.ok);
    CHECK(Word(o4.values, 0) == 0xFEBA9870u);
    CHECK(o4.values[4] == kGuard);  // exactly one word
    CHECK(Half(o4.scales, 0) == 0x3F80);  // bf16 1.0

    // Symmetric int3, amax 3.5 -> scale 1; q = [-3,-2,-1,0,1,2,3,-4,-3,-2,3] (-3.5 -> -4,
    // even), u = q + 4 = [1,2,3,4,5,6,7,0,1,2,7]. Element i at bits 3i..3i+2: elements 0..9
    // fill bits 0..29 = 0x111F58D1; element 10 (u = 0b111) takes bits 30..32: its low two
    // bits end word 0 (0xC0000000) and its top bit starts word 1. 11 * 3 = 33 bits -> 2 words.
    const Config c3{3, 0, true, true};
    const Outputs o3 =
        RunRow(c3, kernel, DType::kBF16, {-3, -2, -1, 0, 1, 2, 3, -3.5f, -3, -2, 3});
    REQUIRE(o3.ok);
    CHECK(Word(o3.values, 0) == 0xD11F58D1u);
    CHECK(Word(o3.values, 1) == 0x00000001u);
    CHECK(o3.values[8] == kGuard);
  }
}

TEST_CASE("asymmetric int4, by hand: double rounding through bf16") {
  // bf16 row {-1, 0.5, 2, 0.25}, channel, 4 bits asymmetric:
  //   mn = -1, mx = 2; scale = RNE(RNE(3) / 15) = RNE(0.2) = 0.2001953125 (bf16 0x3E4D);
  //   mn / scale = -4.9951.. -> bf16 -5.0; zp = RNE(-8 - (-5)) = -3.
  //   -1   -> -4.9951 -> -5.0    ; -5 - 3 = -8
  //   0.5  -> 2.49756 -> 2.5     ; 2.5 - 3 = -0.5 -> half to even: 0 (without the bf16
  //                                rounding it would be -0.50244 -> -1)
  //   2    -> 9.99024 -> 10.0    ; 7
  //   0.25 -> 1.24878 -> 1.25    ; -1.75 -> -2
  // q = [-8, 0, 7, -2]; packed u = [0, 8, 15, 6] -> 0x6F80; zp + 8 = 5 down dim 0.
  for (bool kernel : {false, true}) {
    CAPTURE(kernel);
    const std::vector<float> row = {-1.0f, 0.5f, 2.0f, 0.25f};
    const Outputs u = RunRow(Config{4, 0, false, false}, kernel, DType::kBF16, row);
    REQUIRE(u.ok);
    CHECK(u.values[0] == 0xF8);
    CHECK(u.values[1] == 0x00);
    CHECK(u.values[2] == 0x07);
    CHECK(u.values[3] == 0xFE);
    CHECK(Half(u.scales, 0) == 0x3E4D);
    CHECK(u.zps[0] == 0xFD);  // int8 -3, unpacked
    const Outputs p = RunRow(Config{4, 0, false, true}, kernel, DType::kBF16, row);
    REQUIRE(p.ok);
    CHECK(Word(p.values, 0) == 0x6F80u);
    CHECK(Half(p.scales, 0) == 0x3E4D);
    CHECK(Word(p.zps, 0) == 5u);
  }
}

TEST_CASE("asymmetric int4 edge groups, by hand") {
  const Config cfg{4, 0, false, true};
  const float tiny = BF16ToF32(0x0001);  // smallest bf16 subnormal, 2^-133
  struct Case {
    std::vector<float> row;
    uint16_t scale;
    uint32_t word;
    uint32_t zp_word;
  };
  const Case cases[] = {
      // Negative only: mx = 0, range 2, scale RNE(2/15) = 0.1337890625 (0x3E09);
      // mn / scale = -14.9489 -> -14.9375; zp = RNE(-8 + 14.9375) = 6.9375 -> 7.
      // q: -14.9375+7 -> -8; -7.46875+7 -> -0.47 -> 0; -3.734375+7 -> 3; -11.1875+7 -> -4.
      // u = [0, 8, 11, 4] -> 0x4B80; zp u = 15.
      {{-2.0f, -1.0f, -0.5f, -1.5f}, 0x3E09, 0x4B80, 15},
      // Constant 0.5: mn = 0, scale RNE(0.5/15) = 0.033447265625 (0x3D09), zp = -8 - 0 = -8;
      // 0.5 / scale = 14.9489 -> 14.9375; - 8 -> 6.9375 -> 7 -> u 15 each; zp u = 0.
      {{0.5f, 0.5f, 0.5f, 0.5f}, 0x3D09, 0xFFFF, 0},
      // All zero: scale 0 -> zp = -8 - 0/0 = NaN -> int8 0 (torch on x86); scale -> eps
      // 2^-7 (0x3C00); q = 0 -> u 8; zp u = 8.
      {{0.0f, 0.0f, 0.0f, 0.0f}, 0x3C00, 0x8888, 8},
      // {0, tiny}: range / 15 underflows to 0 -> zp NaN -> 0, scale eps, q 0.
      {{0.0f, tiny}, 0x3C00, 0x88, 8},
      // {-tiny, 0}: scale underflows to 0, mn / 0 = -Inf, zp = -8 + Inf -> clamp 7; the
      // guarded scale then gives x / scale = -0 or 0, + 7 -> q 7 -> u 15.
      {{-tiny, 0.0f}, 0x3C00, 0xFF, 15},
  };
  for (bool kernel : {false, true}) {
    for (const Case& c : cases) {
      CAPTURE(kernel);
      CAPTURE(c.word);
      const Outputs o = RunRow(cfg, kernel, DType::kBF16, c.row);
      REQUIRE(o.ok);
      CHECK(Half(o.scales, 0) == c.scale);
      CHECK(Word(o.values, 0) == c.word);
      CHECK(Word(o.zps, 0) == c.zp_word);
    }
  }
}

TEST_CASE("symmetric int8 channel, by hand; eps guard per dtype") {
  // bf16 {1, -0.5, 0.25}: scale = RNE(1 / 127.5): f32 0.0078431377 = 2^-7 * 1.0039216,
  // dropped bits 0x8081 > half -> bf16 0x3C01 = 0.00787353515625. 1 / s = 127.007 -> 127.0;
  // -0.5 / s = -63.5039 -> bf16 -63.5 -> half to even -64; 0.25 / s = 31.752 -> 31.75 -> 32.
  for (bool kernel : {false, true}) {
    CAPTURE(kernel);
    const Outputs o = RunRow(Config{8, 0, true, false}, kernel, DType::kBF16, {1, -0.5f, 0.25f});
    REQUIRE(o.ok);
    CHECK(Half(o.scales, 0) == 0x3C01);
    CHECK(o.values[0] == 127);
    CHECK(o.values[1] == 0xC0);  // -64
    CHECK(o.values[2] == 32);
    // Packed 8-bit: u = q + 128 as bytes of one word, zero padded: 0x00A040FF.
    const Outputs p = RunRow(Config{8, 0, true, true}, kernel, DType::kBF16, {1, -0.5f, 0.25f});
    REQUIRE(p.ok);
    CHECK(Word(p.values, 0) == 0x00A040FFu);
    // All-zero rows: scale = eps(D): f16 2^-10 (0x1400), f32 2^-23 (0x34000000).
    const Outputs h = RunRow(Config{4, 0, true, true}, kernel, DType::kF16, {0, 0, 0, 0});
    REQUIRE(h.ok);
    CHECK(Half(h.scales, 0) == 0x1400);
    CHECK(Word(h.values, 0) == 0x8888u);
    const Outputs f = RunRow(Config{4, 0, true, true}, kernel, DType::kF32, {0, 0, 0, 0});
    REQUIRE(f.ok);
    CHECK(Word(f.scales, 0) == 0x34000000u);
  }
}

TEST_CASE("packed zero points: 32-row chunks concatenate into the whole tensor's slab") {
  // The pipeline cuts a tensor into chunks whose rows start at multiples of 32; each chunk's
  // zero-point slab is ceil(rows*b/32) packed rows. Concatenated, they must equal one call.
  std::mt19937 rng(99);
  for (int bits : {2, 3, 4, 5, 8}) {
    const Config cfg{bits, 32, false, true};
    const size_t rows = 100, cols = 64, n_groups = 2;
    std::vector<uint8_t> data(rows * cols * 2);
    Fill(data.data(), DType::kBF16, rows, cols, cfg, Pattern::kNormal, rng);
    const Outputs whole = Run(cfg, false, MakeChunk(data.data(), DType::kBF16, rows, cols, cfg));
    REQUIRE(whole.ok);
    std::vector<uint8_t> zps;
    for (size_t r0 = 0; r0 < rows; r0 += 64) {
      const size_t n = std::min<size_t>(64, rows - r0);
      const uint8_t* p = data.data() + r0 * cols * 2;
      for (bool kernel : {false, true}) {
        const Outputs part = Run(cfg, kernel, MakeChunk(p, DType::kBF16, n, cols, cfg));
        REQUIRE(part.ok);
        if (kernel) continue;
        const size_t bytes = CeilDiv(n * bits, 32) * n_groups * 4;
        zps.insert(zps.end(), part.zps.begin(), part.zps.begin() + bytes);
      }
    }
    CAPTURE(bits);
    REQUIRE(zps.size() + kGuardBytes == whole.zps.size());
    CHECK(std::equal(zps.begin(), zps.end(), whole.zps.begin()));
  }
}

TEST_CASE("NaN or Inf anywhere makes the kernels refuse the chunk") {
  const uint32_t kBad[3][3] = {
      {0x7F80, 0xFF80, 0x7FC1},                   // bf16 +Inf, -Inf, NaN
      {0x7C00, 0xFC00, 0xFE01},                   // f16 +Inf, -Inf, -NaN
      {0x7F800000, 0xFF800000, 0x7FC00000}};     // f32
  const DType dtypes[3] = {DType::kBF16, DType::kF16, DType::kF32};
  std::mt19937 rng(7);
  for (int di = 0; di < 3; ++di) {
    const DType d = dtypes[di];
    for (uint32_t bad : kBad[di]) {
      for (const Config& cfg : {Config{4, 32, true, true}, Config{4, 32, false, true},
                                Config{8, 0, true, false}, Config{3, 0, false, false}}) {
        for (size_t pos : {size_t{0}, size_t{31}, size_t{77}, size_t{95}}) {
          const size_t rows = 3, cols = 32;
          std::vector<uint8_t> data(rows * cols * ElemBytes(d) + 1);
          Fill(data.data() + 1, d, rows, cols, cfg, Pattern::kNormal, rng);
          PutBits(data.data() + 1 + pos * ElemBytes(d), d, bad);
          const WeightChunk in = MakeChunk(data.data() + 1, d, rows, cols, cfg);
          CAPTURE(DTypeLabel(d));
          CAPTURE(bad);
          CAPTURE(pos);
          CHECK_FALSE(Run(cfg, false, in).ok);
          ForEachIntPath([&](const std::string& target) {
            CAPTURE(target);
            CHECK_FALSE(Run(cfg, true, in).ok);
          });
        }
      }
    }
  }
}

TEST_CASE("invalid parameters are refused") {
  std::vector<uint8_t> data(64 * 2);
  for (const Config& cfg : {Config{1, 0, true, true}, Config{9, 0, true, true},
                            Config{4, 48, true, true}}) {
    const WeightChunk in = MakeChunk(data.data(), DType::kBF16, 1, 64, cfg);
    CHECK_FALSE(Run(cfg, false, in).ok);
    CHECK_FALSE(Run(cfg, true, in).ok);
  }
}

}  // TEST_SUITE

}  // namespace quench::intq
