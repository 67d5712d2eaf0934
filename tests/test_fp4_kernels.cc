// NVFP4 / MXFP4 / MXFP8: the Highway kernels equal the scalar references bit for bit on every
// compiled target, for every weight dtype, many shapes and edge-case inputs, and unaligned
// input; they refuse chunks holding NaN or Inf; AbsMax is exact. The scalar references are
// checked independently against values worked by hand from the format definitions (E2M1
// codes and ties, the -0 nibble, E8M0 exponents, the NVFP4 global and group scales). The
// references themselves were compared byte for byte with model_free_ptq (compressed-tensors
// 0.19.0, torch 2.13.0 CPU) on edge-case checkpoints in all three dtypes, and the global
// scale on every positive bf16 / f16 value.
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
#include "kernel_test_util.h"
#include "schemes/float_formats.h"
#include "schemes/fp4.h"

namespace quench::fp4 {
using namespace quench::testing;  // NOLINT: shared kernel-test helpers

namespace {


enum class Scheme { kNvfp4, kMxfp4, kMxfp8 };

std::string SchemeName(Scheme s) {
  return s == Scheme::kNvfp4 ? "NVFP4" : s == Scheme::kMxfp4 ? "MXFP4" : "MXFP8";
}

size_t GroupOf(Scheme s) { return s == Scheme::kNvfp4 ? kNvfp4Group : kMxGroup; }


std::string DTypeLabel(DType d) {
  return d == DType::kBF16 ? "BF16" : d == DType::kF16 ? "F16" : "F32";
}




// Exponent field width and mantissa width of d.
int MantBits(DType d) { return d == DType::kBF16 ? 7 : d == DType::kF16 ? 10 : 23; }
uint32_t InfBits(DType d) {
  return d == DType::kBF16 ? 0x7F80u : d == DType::kF16 ? 0x7C00u : 0x7F800000u;
}

enum class Pattern {
  kNormal,       // N(0, sigma), sigma varying per row
  kRandomBits,   // uniformly random finite bit patterns: every exponent, subnormals
  kZeros,        // +0 and -0 only (guarded scales)
  kSubnormals,   // only subnormals of the dtype
  kHuge,         // magnitudes near the dtype's max (MX: infinite scales)
  kFp4Ties,      // group amax 6 and E2M1 tie points (MX scale 1; NVFP4 with gs 448: eff 1)
  kPow2Edges,    // group amax with mantissa fraction just below / at / above 0.75
  kE4M3Mids,     // group amax 300 (MXFP8 scale 1) and e4m3 midpoints
  kZeroGroups,   // normal data with whole zero rows and zero groups
};

const Pattern kPatterns[] = {Pattern::kNormal,    Pattern::kRandomBits, Pattern::kZeros,
                             Pattern::kSubnormals, Pattern::kHuge,      Pattern::kFp4Ties,
                             Pattern::kPow2Edges, Pattern::kE4M3Mids,  Pattern::kZeroGroups};

std::string PatternName(Pattern p) {
  switch (p) {
    case Pattern::kNormal: return "normal";
    case Pattern::kRandomBits: return "random-bits";
    case Pattern::kZeros: return "zeros";
    case Pattern::kSubnormals: return "subnormals";
    case Pattern::kHuge: return "huge";
    case Pattern::kFp4Ties: return "fp4-ties";
    case Pattern::kPow2Edges: return "pow2-edges";
    case Pattern::kE4M3Mids: return "e4m3-mids";
    case Pattern::kZeroGroups: return "zero-groups";
  }
  return "?";
}

uint32_t RandomFiniteBits(std::mt19937& rng, DType d) {
  for (;;) {
    const uint32_t b = d == DType::kF32 ? rng() : (rng() & 0xFFFFu);
    if ((b & InfBits(d)) != InfBits(d)) return b;
  }
}

// The value `step` (-1, 0, 1) bit patterns away from positive v (a value of d).
float NeighborInD(float v, DType d, int step) {
  if (d == DType::kBF16) return BF16ToF32(static_cast<uint16_t>(F32ToBF16(v) + step));
  if (d == DType::kF16) return F16ToF32(static_cast<uint16_t>(F32ToF16(v) + step));
  return BitsToF32(F32ToBits(v) + step);
}

// E2M1 tie points and grid values (and a few others), for kFp4Ties.
const float kFp4Points[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 0.5f,
                            1.0f,  1.5f,  2.0f,  3.0f,  4.0f, 5.5f, 0.1f, 6.0f};

// Fills rows x cols elements of dtype d at p (p may be unaligned); groups of `group`.
void Fill(uint8_t* p, DType d, size_t rows, size_t cols, size_t group, Pattern pattern,
          std::mt19937& rng) {
  const size_t esz = ElemBytes(d);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  auto sign = [&] { return (rng() & 1) ? -1.0f : 1.0f; };
  for (size_t r = 0; r < rows; ++r) {
    const float sigma = std::ldexp(1.0f, static_cast<int>(r % 13) - 8);
    for (size_t c = 0; c < cols; ++c) {
      uint8_t* e = p + (r * cols + c) * esz;
      const size_t k = c % group;  // position in the group
      const size_t g = c / group;
      switch (pattern) {
        case Pattern::kNormal: PutElem(e, d, normal(rng) * sigma); break;
        case Pattern::kRandomBits: PutBits(e, d, RandomFiniteBits(rng, d)); break;
        case Pattern::kZeros: PutElem(e, d, sign() * 0.0f); break;
        case Pattern::kSubnormals: {
          const uint32_t mant = rng() & ((1u << MantBits(d)) - 1u);
          const uint32_t sign_bit = (rng() & 1) << (d == DType::kF32 ? 31 : 15);
          PutBits(e, d, mant | sign_bit);
          break;
        }
        case Pattern::kHuge:
          PutElem(e, d, (k == 0 ? sign() : unit(rng)) * DTypeMax(d));
          break;
        case Pattern::kFp4Ties: {
          // Group amax 6; the other elements are tie points, grid values or their
          // neighbours in D (one bit pattern up or down).
          const float v = kFp4Points[rng() % 16];
          const int step = static_cast<int>(rng() % 3) - 1;
          PutElem(e, d, k == 0 ? sign() * 6.0f : sign() * std::fmin(NeighborInD(v, d, step), 6.0f));
          break;
        }
        case Pattern::kPow2Edges: {
          // Element 0 of each group: a bit pattern whose mantissa fraction is just below,
          // at or above 0.75 (round_to_power_2's threshold), at an exponent that varies.
          if (k == 0) {
            const int mant = MantBits(d);
            const uint32_t three_quarters = 3u << (mant - 2);
            const uint32_t frac = three_quarters - 1 + (g % 3);
            const uint32_t max_exp = d == DType::kF16 ? 30 : 254;
            const uint32_t exp = 1 + (rng() % max_exp);
            PutBits(e, d, (exp << mant) | frac);
          } else {
            // A random fraction of the group's first element.
            uint32_t b = 0;
            std::memcpy(&b, p + (r * cols + c - k) * esz, esz);
            const float first = d == DType::kBF16 ? BF16ToF32(b)
                                : d == DType::kF16 ? F16ToF32(b)
                                                   : BitsToF32(b);
            PutElem(e, d, unit(rng) * first);
          }
          break;
        }
        case Pattern::kE4M3Mids: {
          if (k == 0) {
            PutElem(e, d, sign() * 300.0f);
          } else {
            const int m = static_cast<int>(rng() % 0x7E);
            const float mid = (E4M3ToF32(static_cast<uint8_t>(m)) +
                               E4M3ToF32(static_cast<uint8_t>(m + 1))) / 2;
            PutElem(e, d, sign() * std::fmin(mid, 300.0f));
          }
          break;
        }
        case Pattern::kZeroGroups: {
          const bool zero = (r % 3 == 1) || (g % 2 == 1);
          PutElem(e, d, zero ? 0.0f : normal(rng) * sigma);
          break;
        }
      }
    }
  }
}

struct Outputs {
  std::vector<uint8_t> values;
  std::vector<uint8_t> scales;
  bool ok = false;
};

Outputs Run(Scheme s, bool kernel, const WeightChunk& in) {
  Outputs o;
  const size_t value_bytes = s == Scheme::kMxfp8 ? in.rows * in.cols : in.rows * in.cols / 2;
  o.values.assign(value_bytes + kGuardBytes, kGuard);
  o.scales.assign(in.rows * in.cols / GroupOf(s) + kGuardBytes, kGuard);
  ChunkOutputs out;
  out.out[0] = o.values.data();
  out.out[1] = o.scales.data();
  switch (s) {
    case Scheme::kNvfp4:
      o.ok = kernel ? QuantizeNvfp4(in, out) : QuantizeNvfp4Scalar(in, out);
      break;
    case Scheme::kMxfp4:
      o.ok = kernel ? QuantizeMxfp4(in, out) : QuantizeMxfp4Scalar(in, out);
      break;
    case Scheme::kMxfp8:
      o.ok = kernel ? QuantizeMxfp8(in, out) : QuantizeMxfp8Scalar(in, out);
      break;
  }
  return o;
}

// Kernel == reference on one shape for every dtype, pattern and input offset (and, for
// NVFP4, the chunk's own global scale plus fixed ones); also AbsMax kernel == reference.
void CheckShape(Scheme s, size_t rows, size_t cols, std::mt19937& rng,
                std::set<std::string>& targets) {
  for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (Pattern pattern : kPatterns) {
      for (size_t offset : {0, 1, 2, 3}) {
        std::vector<uint8_t> storage(rows * cols * ElemBytes(d) + 8);
        uint8_t* data = storage.data() + offset;
        Fill(data, d, rows, cols, GroupOf(s), pattern, rng);
        WeightChunk in{data, d, rows, cols, {}};
        float amax = -1.0f;
        REQUIRE(AbsMaxScalar(in, &amax));
        std::vector<float> global_scales = {0.0f};
        if (s == Scheme::kNvfp4) {
          // The chunk's own gs, 448 (eff = s / 448: ties at amax 6), a tiny and a huge one.
          global_scales = {Nvfp4GlobalScale(amax, d), 448.0f, 1.0f / 1024, 3.0e5f};
        }
        for (float gs : global_scales) {
          in.params.global_scale = gs;
          const Outputs want = Run(s, false, in);
          CAPTURE(SchemeName(s));
          CAPTURE(DTypeLabel(d));
          CAPTURE(PatternName(pattern));
          CAPTURE(rows);
          CAPTURE(cols);
          CAPTURE(offset);
          CAPTURE(gs);
          REQUIRE(want.ok);
          targets.merge(ForEachTarget([&](const std::string& target) {
            CAPTURE(target);
            const Outputs got = Run(s, true, in);
            REQUIRE(got.ok);
            REQUIRE(got.values == want.values);  // includes the guard bytes: no overrun
            REQUIRE(got.scales == want.scales);
            float got_amax = -1.0f;
            REQUIRE(AbsMax(in, &got_amax));
            REQUIRE(F32ToBits(got_amax) == F32ToBits(amax));
          }));
        }
      }
    }
  }
}

// Column counts: one group up to several vectors of groups, plus partial vectors.
std::vector<size_t> ColumnCounts(Scheme s) {
  std::vector<size_t> groups = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 65};
  std::vector<size_t> cols;
  for (size_t g : groups) cols.push_back(g * GroupOf(s));
  return cols;
}

void CheckScheme(Scheme s, uint32_t seed) {
  std::set<std::string> targets;
  std::mt19937 rng(seed);
  for (size_t cols : ColumnCounts(s)) CheckShape(s, 1 + cols % 4, cols, rng, targets);
  for (const auto& t : targets) MESSAGE(SchemeName(s) << " kernel tested on target " << t);
  CHECK(targets.size() >= 2);
}

// One-row chunk of dtype d from f32 values (exact in d).
std::vector<uint8_t> Row(DType d, const std::vector<float>& values) {
  std::vector<uint8_t> bytes(values.size() * ElemBytes(d));
  for (size_t i = 0; i < values.size(); ++i) PutElem(bytes.data() + i * ElemBytes(d), d, values[i]);
  return bytes;
}

// Nibble i of a packed row.
uint8_t Nibble(const std::vector<uint8_t>& packed, size_t i) {
  return (packed[i / 2] >> (4 * (i % 2))) & 0xF;
}

// Runs the reference and the kernel (every target) on one row; requires they agree and
// returns the reference output.
Outputs RunBoth(Scheme s, const WeightChunk& in) {
  const Outputs want = Run(s, false, in);
  REQUIRE(want.ok);
  ForEachTarget([&](const std::string& target) {
    CAPTURE(target);
    const Outputs got = Run(s, true, in);
    REQUIRE(got.ok);
    REQUIRE(got.values == want.values);
    REQUIRE(got.scales == want.scales);
  });
  return want;
}

// The stored E8M0 byte of a one-group row whose only nonzero element is `amax`.
uint8_t MxExponent(Scheme s, DType d, uint32_t amax_bits) {
  std::vector<uint8_t> bytes(kMxGroup * ElemBytes(d), 0);
  PutBits(bytes.data() + 5 * ElemBytes(d), d, amax_bits);
  const WeightChunk in{bytes.data(), d, 1, kMxGroup, {}};
  return RunBoth(s, in).scales[0];
}

}  // namespace

TEST_SUITE("fp4_kernels") {

TEST_CASE("NVFP4 kernel equals the scalar reference on every target") {
  CheckScheme(Scheme::kNvfp4, 101);
}

TEST_CASE("MXFP4 kernel equals the scalar reference on every target") {
  CheckScheme(Scheme::kMxfp4, 202);
}

TEST_CASE("MXFP8 kernel equals the scalar reference on every target") {
  CheckScheme(Scheme::kMxfp8, 303);
}

TEST_CASE("longer rows: 37 x 4096") {
  std::set<std::string> targets;
  std::mt19937 rng(404);
  for (Scheme s : {Scheme::kNvfp4, Scheme::kMxfp4, Scheme::kMxfp8}) {
    CheckShape(s, 37, 4096, rng, targets);
  }
}

TEST_CASE("NaN or Inf anywhere makes every kernel and AbsMax refuse the chunk") {
  const DType kTypes[3] = {DType::kBF16, DType::kF16, DType::kF32};
  const uint32_t kBad[3][3] = {
      {0x7F80u, 0xFF80u, 0x7FC1u},              // bf16 +Inf, -Inf, NaN
      {0x7C00u, 0xFC00u, 0x7E01u},              // f16
      {0x7F800000u, 0xFF800000u, 0x7FC00001u},  // f32
  };
  ForEachTarget([&](const std::string& target) {
    std::mt19937 rng(99);
    for (int t = 0; t < 3; ++t) {
      const DType d = kTypes[t];
      for (Scheme s : {Scheme::kNvfp4, Scheme::kMxfp4, Scheme::kMxfp8}) {
        for (size_t groups : {1, 3, 17, 40}) {
          const size_t rows = 3;
          const size_t cols = groups * GroupOf(s);
          // First element, inside the first group, the last group of a row, the last one.
          for (size_t pos : {size_t{0}, size_t{5}, cols - 1, cols + cols / 2, rows * cols - 1}) {
            for (uint32_t bad : kBad[t]) {
              std::vector<uint8_t> storage(rows * cols * ElemBytes(d) + 1);
              uint8_t* data = storage.data() + 1;
              Fill(data, d, rows, cols, GroupOf(s), Pattern::kNormal, rng);
              PutBits(data + pos * ElemBytes(d), d, bad);
              WeightChunk in{data, d, rows, cols, {}};
              in.params.global_scale = 448.0f;
              CAPTURE(target);
              CAPTURE(SchemeName(s));
              CAPTURE(DTypeLabel(d));
              CAPTURE(cols);
              CAPTURE(pos);
              CAPTURE(bad);
              CHECK_FALSE(Run(s, false, in).ok);
              CHECK_FALSE(Run(s, true, in).ok);
              float amax;
              CHECK_FALSE(AbsMaxScalar(in, &amax));
              CHECK_FALSE(AbsMax(in, &amax));
            }
          }
        }
      }
    }
  });
}

TEST_CASE("AbsMax: largest magnitude, exact, sign ignored") {
  for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (size_t n : {1, 7, 64, 1000}) {
      for (size_t at : {size_t{0}, n / 2, n - 1}) {
        std::vector<float> v(n, 0.25f);
        for (size_t i = 0; i < n; i += 3) v[i] = -0.5f;
        v[at] = -3.0f;
        auto bytes = Row(d, v);
        const WeightChunk in{bytes.data(), d, 1, n, {}};
        float a = 0, b = 0;
        REQUIRE(AbsMaxScalar(in, &a));
        CHECK(a == 3.0f);
        ForEachTarget([&](const std::string& target) {
          CAPTURE(target);
          REQUIRE(AbsMax(in, &b));
          CHECK(b == 3.0f);
        });
      }
    }
    // All zeros (with -0): amax is +0.
    std::vector<uint8_t> zeros = Row(d, {-0.0f, 0.0f, -0.0f});
    float a = 1;
    REQUIRE(AbsMax(WeightChunk{zeros.data(), d, 1, 3, {}}, &a));
    CHECK(F32ToBits(a) == 0u);
  }
}

TEST_CASE("E2M1: all 16 codes, every tie boundary, clamping (MXFP4, scale 1)") {
  // A group whose amax is 6 = 1.5 * 2^2 has p = 4, E = 127 + 2 - 2 = 127: scale 1, so the
  // nibbles are E2M1 of the inputs themselves.
  for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
    CAPTURE(DTypeLabel(d));
    // All 16 codes: index = position on the grid, 0x8 = sign.
    const float grid[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    std::vector<float> v(kMxGroup, 0.0f);
    for (int i = 0; i < 8; ++i) {
      v[i] = grid[i];
      v[8 + i] = -grid[i];
    }
    v[8] = -0.1f;  // a negative value that rounds to 0: code 0x8 (-0)
    v[16] = -0.0f;  // -0 itself: torch.sign(-0) is +0, so code 0x0
    auto bytes = Row(d, v);
    const Outputs o = RunBoth(Scheme::kMxfp4, WeightChunk{bytes.data(), d, 1, kMxGroup, {}});
    CHECK(o.scales[0] == 127);
    for (int i = 0; i < 8; ++i) {
      CHECK(Nibble(o.values, i) == i);
      CHECK(Nibble(o.values, 8 + i) == (8 | i));
    }
    CHECK(Nibble(o.values, 16) == 0x0);
  }
  // Tie points and their f32 neighbours (F32 weights keep them exact): ties go to the even
  // code, i.e. the table 0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4,
  // 5 -> 4; just above / below each tie goes to the nearer grid value.
  struct Tie {
    float at;
    uint8_t below, tie, above;
  };
  const Tie ties[] = {{0.25f, 0, 0, 1}, {0.75f, 1, 2, 2}, {1.25f, 2, 2, 3}, {1.75f, 3, 4, 4},
                      {2.5f, 4, 4, 5},  {3.5f, 5, 6, 6},  {5.0f, 6, 6, 7}};
  std::vector<float> v(kMxGroup, 0.0f);
  v[0] = 6.0f;
  size_t k = 1;
  for (const Tie& t : ties) {
    v[k++] = std::nextafter(t.at, 0.0f);
    v[k++] = t.at;
    v[k++] = std::nextafter(t.at, 8.0f);
    v[k++] = -t.at;
  }
  v[k++] = 5.999f;
  auto bytes = Row(DType::kF32, v);
  const Outputs o =
      RunBoth(Scheme::kMxfp4, WeightChunk{bytes.data(), DType::kF32, 1, kMxGroup, {}});
  k = 1;
  for (const Tie& t : ties) {
    CAPTURE(t.at);
    CHECK(Nibble(o.values, k++) == t.below);
    CHECK(Nibble(o.values, k++) == t.tie);
    CHECK(Nibble(o.values, k++) == t.above);
    CHECK(Nibble(o.values, k++) == (8 | t.tie));
  }
  CHECK(Nibble(o.values, k) == 7);
  // Clamping: amax 6.5 = 1.625 * 4 still has scale 1 (fraction < 0.75); 6.5 clamps to 6.
  std::vector<float> c(kMxGroup, 0.0f);
  c[0] = 6.5f;
  c[1] = -6.25f;
  auto cb = Row(DType::kBF16, c);
  const Outputs co =
      RunBoth(Scheme::kMxfp4, WeightChunk{cb.data(), DType::kBF16, 1, kMxGroup, {}});
  CHECK(co.scales[0] == 127);
  CHECK(Nibble(co.values, 0) == 0x7);
  CHECK(Nibble(co.values, 1) == 0xF);
}

TEST_CASE("E8M0 exponents worked by hand") {
  // FP4 (offset 2): amax = 1.m * 2^e; p = 2^e if m < 0.75 else 2^(e+1); E = 127 + log2 p - 2.
  using S = Scheme;
  const DType B = DType::kBF16, H = DType::kF16, F = DType::kF32;
  CHECK(MxExponent(S::kMxfp4, B, F32ToBF16(1.0f)) == 125);
  CHECK(MxExponent(S::kMxfp4, B, F32ToBF16(1.5f)) == 125);
  CHECK(MxExponent(S::kMxfp4, B, 0x3FDF) == 125);  // 1.7421875: fraction just below 0.75
  CHECK(MxExponent(S::kMxfp4, B, F32ToBF16(1.75f)) == 126);  // fraction 0.75 rounds up
  CHECK(MxExponent(S::kMxfp4, B, F32ToBF16(6.0f)) == 127);
  CHECK(MxExponent(S::kMxfp4, B, F32ToBF16(7.0f)) == 128);
  CHECK(MxExponent(S::kMxfp4, B, 0) == 0);        // log2(0) = -inf clamps to 0
  CHECK(MxExponent(S::kMxfp4, B, 0x0080) == 0);   // 2^-126: 127 - 126 - 2 < 0 clamps to 0
  CHECK(MxExponent(S::kMxfp4, B, 0x7F40) == 252);  // 1.5 * 2^127: p = 2^127
  // 1.75 * 2^127 rounds p up to 2^128 = inf: E = 255, scale inf, stored 127 (log2(inf)
  // converted to int32 is INT32_MIN; 127 + INT32_MIN keeps the low byte 127).
  CHECK(MxExponent(S::kMxfp4, B, 0x7F60) == 127);
  CHECK(MxExponent(S::kMxfp4, B, 0x7F7F) == 127);
  // FP8 (offset 8): 448 = 1.75 * 2^8 -> p = 2^9 -> 128; 300 -> p = 2^8 -> 127; 1 -> 119.
  CHECK(MxExponent(S::kMxfp8, B, F32ToBF16(448.0f)) == 128);
  CHECK(MxExponent(S::kMxfp8, B, F32ToBF16(300.0f)) == 127);
  CHECK(MxExponent(S::kMxfp8, B, F32ToBF16(1.0f)) == 119);
  // f16: scale 2^(E-127) is rounded to f16; below 2^-24 it is 0 and guarded to 1 (127).
  CHECK(MxExponent(S::kMxfp4, H, 0) == 127);
  CHECK(MxExponent(S::kMxfp4, H, F32ToF16(std::ldexp(1.0f, -10))) == 115);
  CHECK(MxExponent(S::kMxfp4, H, F32ToF16(std::ldexp(1.0f, -14))) == 111);  // min normal
  // f16 subnormals: round_to_power_2 works on the bit pattern, so below 0.75 * 2^-14 the
  // added 0x100 does not reach the exponent: p = 0, E = 0, scale 2^-127 = 0 in f16 -> 1.
  CHECK(MxExponent(S::kMxfp4, H, F32ToF16(std::ldexp(1.0f, -22))) == 127);
  CHECK(MxExponent(S::kMxfp4, H, 0x0300) == 111);  // subnormal 0.75 * 2^-14 -> p = 2^-14
  CHECK(MxExponent(S::kMxfp4, H, 0x02FF) == 127);  // just below: p = 0 -> E 0 -> guarded
  CHECK(MxExponent(S::kMxfp4, H, F32ToF16(49152.0f)) == 140);  // 1.5 * 2^15
  CHECK(MxExponent(S::kMxfp4, H, F32ToF16(57344.0f)) == 127);  // 1.75 * 2^15: p = inf
  CHECK(MxExponent(S::kMxfp8, H, 0) == 127);
  // f32: subnormal 2^-127 (fraction 0.5 of 2^-126 in the bit pattern) rounds to p = 0.
  CHECK(MxExponent(S::kMxfp4, F, 0x00400000u) == 0);
  CHECK(MxExponent(S::kMxfp4, F, 0x00600000u) == 0);  // 1.5 * 2^-127 -> p = 2^-126 -> 0
  CHECK(MxExponent(S::kMxfp4, F, F32ToBits(1.0f)) == 125);
  CHECK(MxExponent(S::kMxfp4, F, 0x7F7FFFFFu) == 127);  // p = inf
  // An infinite scale quantizes everything to zero: FP4 +0 nibbles (x / inf = -0 and
  // torch.sign(-0) = 0), e4m3 keeps the sign (0x80).
  std::vector<float> v(kMxGroup, -1.0f);
  v[0] = DTypeMax(B);
  v[1] = 2.0f;
  auto bytes = Row(B, v);
  const WeightChunk in{bytes.data(), B, 1, kMxGroup, {}};
  const Outputs fp4 = RunBoth(S::kMxfp4, in);
  for (size_t i = 0; i < kMxGroup / 2; ++i) CHECK(fp4.values[i] == 0x00);
  const Outputs fp8 = RunBoth(S::kMxfp8, in);
  CHECK(fp8.values[0] == 0x00);
  CHECK(fp8.values[1] == 0x00);
  CHECK(fp8.values[2] == 0x80);
}

TEST_CASE("MXFP8 values at scale 1 are e4m3 of the inputs") {
  std::vector<float> v(kMxGroup, 0.0f);
  v[0] = 300.0f;  // p = 2^8, E = 127: scale 1
  v[1] = 1.0625f;  // midpoint of 1 and 1.125: ties to even 1.0 (0x38)
  v[2] = -0.0f;    // sign kept by e4m3: 0x80
  v[3] = 17.0f;    // midpoint of 16 and 18: even is 16 (0x58)
  for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
    auto bytes = Row(d, v);
    const Outputs o = RunBoth(Scheme::kMxfp8, WeightChunk{bytes.data(), d, 1, kMxGroup, {}});
    CHECK(o.scales[0] == 127);
    CHECK(o.values[0] == F32ToE4M3(300.0f));
    CHECK(o.values[1] == 0x38);
    CHECK(o.values[2] == 0x80);
    CHECK(o.values[3] == 0x58);
  }
}

TEST_CASE("NVFP4 global scale: reciprocal, then times 2688, each rounded to D") {
  // Values worked by hand and confirmed with compressed-tensors' generate_gparam.
  CHECK(Nvfp4GlobalScale(5.1875f, DType::kBF16) == 516.0f);  // 2688 / A directly gives 520
  CHECK(Nvfp4GlobalScale(6.0f, DType::kBF16) == 448.0f);
  CHECK(Nvfp4GlobalScale(1.0f, DType::kBF16) == 2688.0f);
  CHECK(Nvfp4GlobalScale(0.0f, DType::kBF16) == 1.0f);  // tiny -> 2688 * 2^126 = inf -> 1
  CHECK(Nvfp4GlobalScale(F16ToF32(F32ToF16(0.01f)), DType::kF16) == 1.0f);  // f16 overflow
  CHECK(Nvfp4GlobalScale(1.0f, DType::kF16) == 2688.0f);
  CHECK(Nvfp4GlobalScale(5.1875f, DType::kF16) == 518.0f);
  CHECK(Nvfp4GlobalScale(3.0f, DType::kF32) == 896.0f);
  CHECK(Nvfp4GlobalScale(5.1875f, DType::kF32) == 518.16864013671875f);
}

TEST_CASE("NVFP4 group scales and values worked by hand") {
  // gs = 448 (A = 6). -0.25 and -0.1 round to -0 (0x8); -0 itself gives 0x0. Group 0: amax 6 -> t =
  // 1, u = 448 -> 0x7E, eff = 448 / 448 = 1. Group 1: amax 3 -> t = 0.5, u = 224 = 1.75 * 2^7 ->
  // 0x76, eff = 0.5. Group 2: zeros -> u = 0 -> guarded to 0.125 (0x20).
  std::vector<float> v(3 * kNvfp4Group, 0.0f);
  const float g0[16] = {6,    -0.25f, 0.75f, -1.25f, 1.75f, 2.5f,   -3.5f, 5.0f,
                        -0.0f, 0.3f,  -0.1f, 4.0f,   -6.0f, 0.26f, 1.0f,  -2.0f};
  const uint8_t n0[16] = {0x7, 0x8, 0x2, 0xA, 0x4, 0x4, 0xE, 0x6,
                          0x0, 0x1, 0x8, 0x6, 0xF, 0x1, 0x2, 0xC};
  for (int i = 0; i < 16; ++i) v[i] = g0[i];
  v[16] = -3.0f;   // x / 0.5 = -6 -> 0xF
  v[17] = 0.625f;  // 1.25: tie -> 1 -> 0x2
  v[18] = 1.2f;    // 2.4 -> 2 -> 0x4
  v[32] = -0.0f;
  v[33] = 0.0f;
  for (DType d : {DType::kBF16, DType::kF32}) {
    CAPTURE(DTypeLabel(d));
    auto bytes = Row(d, v);
    WeightChunk in{bytes.data(), d, 1, v.size(), {}};
    in.params.global_scale = 448.0f;
    const Outputs o = RunBoth(Scheme::kNvfp4, in);
    CHECK(o.scales[0] == 0x7E);
    CHECK(o.scales[1] == 0x76);
    CHECK(o.scales[2] == 0x20);
    if (d == DType::kF32) {  // the bf16 row rounds 0.3, 0.26 (still the same codes)
      for (int i = 0; i < 16; ++i) {
        CAPTURE(i);
        CHECK(Nibble(o.values, i) == n0[i]);
      }
    }
    CHECK(Nibble(o.values, 16) == 0xF);
    CHECK(Nibble(o.values, 17) == 0x2);
    CHECK(Nibble(o.values, 18) == 0x4);
    CHECK(Nibble(o.values, 32) == 0x0);
    CHECK(Nibble(o.values, 33) == 0x0);
  }
}

TEST_CASE("shape and dtype preconditions are refused") {
  std::vector<uint8_t> bytes(64 * 4, 0);
  ChunkOutputs out;
  std::vector<uint8_t> a(256), b(256);
  out.out[0] = a.data();
  out.out[1] = b.data();
  const WeightChunk odd_cols{bytes.data(), DType::kBF16, 1, 24, {}};  // not a multiple of 16
  CHECK_FALSE(QuantizeNvfp4(odd_cols, out));
  CHECK_FALSE(QuantizeNvfp4Scalar(odd_cols, out));
  const WeightChunk mx_cols{bytes.data(), DType::kBF16, 1, 48, {}};  // not a multiple of 32
  CHECK_FALSE(QuantizeMxfp4(mx_cols, out));
  CHECK_FALSE(QuantizeMxfp8Scalar(mx_cols, out));
  const WeightChunk i8{bytes.data(), DType::kI8, 1, 32, {}};
  CHECK_FALSE(QuantizeMxfp8(i8, out));
  float amax;
  CHECK_FALSE(AbsMax(i8, &amax));
}

}  // TEST_SUITE

}  // namespace quench::fp4
