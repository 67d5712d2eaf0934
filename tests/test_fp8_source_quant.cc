// The fused FP8-block source kernels (src/schemes/fp8_source_quant.h) against the definition:
// DequantizeSourceScalar (decode) followed by the scheme's scalar reference, byte for byte,
// for every code magnitude under every group maximum, both signs, every group size and block
// shape they handle, chunks that start inside a band and span several, and the scales that
// need care (+0, subnormal, tiny, E8M0 powers of two, overflowing products), plus NaN codes.
// Every case runs the public entry points (VBMI tables where the CPU has them, else the AVX2
// thresholds) and, on a VBMI CPU, the AVX2 kernels alone too; on a CPU without AVX2 the
// kernels must decline (kNotHandled) every call.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernel_test_util.h"
#include "schemes/cpu_x86.h"
#include "schemes/fp4.h"
#include "schemes/fp8.h"
#include "schemes/fp8_source_quant.h"
#include "schemes/int.h"

namespace quench::fp8 {
using namespace quench::testing;  // NOLINT: shared kernel-test helpers

namespace {

// Which kernels the checks call: the public entry points, or the AVX2 ones alone (set by
// ForEachPath).
bool g_avx2_only = false;

bool Available() {
  return g_avx2_only ? internal::Avx2FusedAvailable() : FusedSourceAvailable();
}
FusedResult Int4Of(const SourceChunk& in, size_t group, const ChunkOutputs& out) {
  return g_avx2_only ? internal::QuantizeSourceInt4Avx2(in, group, out)
                     : QuantizeSourceInt4(in, group, out);
}
FusedResult Nvfp4Of(const SourceChunk& in, float gs, const ChunkOutputs& out) {
  return g_avx2_only ? internal::QuantizeSourceNvfp4Avx2(in, gs, out)
                     : QuantizeSourceNvfp4(in, gs, out);
}

// Runs `body` with the public entry points, then (where they are not the same kernels) with
// the AVX2 kernels alone.
template <typename F>
void ForEachPath(F body) {
  for (const bool avx2_only : {false, true}) {
    if (avx2_only && !cpu::HasAvx512Vbmi()) break;  // the entry points ran the AVX2 kernels
    g_avx2_only = avx2_only;
    CAPTURE(avx2_only);
    body();
  }
  g_avx2_only = false;
}

struct Case {
  size_t rows, cols, block_rows, block_cols, first_row;
};

// Codes where every group (of `group` columns) has a chosen largest magnitude mc, cycling
// through 0..126 group by group, its other codes below it with random signs; one element of
// each group is mc itself. `nan_at` (if < size) becomes a NaN code.
std::vector<uint8_t> MakeCodes(const Case& c, size_t group, uint32_t seed, size_t nan_at) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> codes(c.rows * c.cols);
  size_t k = seed % 127;
  for (size_t r = 0; r < c.rows; ++r) {
    for (size_t g0 = 0; g0 < c.cols; g0 += group, ++k) {
      const uint32_t mc = static_cast<uint32_t>(k % 127);
      for (size_t i = 0; i < group; ++i) {
        const uint32_t m = mc == 0 ? 0 : rng() % (mc + 1);
        codes[r * c.cols + g0 + i] = static_cast<uint8_t>(m | ((rng() & 1) << 7));
      }
      codes[r * c.cols + g0 + rng() % group] = static_cast<uint8_t>(mc | ((rng() & 1) << 7));
    }
  }
  if (nan_at < codes.size()) codes[nan_at] = (nan_at & 1) ? 0xFF : 0x7F;
  return codes;
}

// One scale per tile (row-major, the tile rows of the chunk), drawn from `pool` in turn.
std::vector<float> MakeScales(const Case& c, const std::vector<float>& pool, size_t offset) {
  const size_t first = c.first_row / c.block_rows;
  const size_t last = (c.first_row + c.rows - 1) / c.block_rows;
  const size_t scale_cols = (c.cols + c.block_cols - 1) / c.block_cols;
  std::vector<float> s((last - first + 1) * scale_cols);
  for (size_t i = 0; i < s.size(); ++i) s[i] = pool[(i + offset) % pool.size()];
  return s;
}

SourceChunk Chunk(const Case& c, const std::vector<uint8_t>& codes,
                  const std::vector<float>& scales) {
  SourceChunk in;
  in.codes = codes.data();
  in.rows = c.rows;
  in.cols = c.cols;
  in.first_row = c.first_row;
  in.scales = scales.data();
  in.scale_cols = (c.cols + c.block_cols - 1) / c.block_cols;
  in.block_rows = c.block_rows;
  in.block_cols = c.block_cols;
  return in;
}

// Decode with the scalar definition, then the scheme's scalar reference. False when the
// decode refuses the chunk (NaN code, product not finite).
bool Reference(const SourceChunk& in, bool nvfp4, size_t group, float gs,
               std::vector<uint8_t>* packed, std::vector<uint8_t>* scales) {
  std::vector<uint8_t> dec(2 * in.rows * in.cols);
  if (!DequantizeSourceScalar(in, dec.data())) return false;
  WeightChunk w;
  w.data = dec.data();
  w.dtype = DType::kBF16;
  w.rows = in.rows;
  w.cols = in.cols;
  w.params.bits = 4;
  w.params.group_size = static_cast<int>(group);
  w.params.symmetric = true;
  w.params.global_scale = gs;
  ChunkOutputs out;
  out.out[0] = packed->data();
  out.out[1] = scales->data();
  REQUIRE((nvfp4 ? fp4::QuantizeNvfp4Scalar(w, out) : intq::QuantizePackedScalar(w, out)));
  return true;
}

// Runs the fused kernel and the reference on one chunk; returns the elements compared.
size_t Check(const Case& c, bool nvfp4, size_t group, float gs, const std::vector<float>& pool,
             uint32_t seed, size_t nan_at) {
  const std::vector<uint8_t> codes = MakeCodes(c, group, seed, nan_at);
  const std::vector<float> scales = MakeScales(c, pool, seed);
  const SourceChunk in = Chunk(c, codes, scales);
  const size_t n_groups = c.cols / group;
  const size_t scale_bytes = c.rows * n_groups * (nvfp4 ? 1 : 2);
  std::vector<uint8_t> want_p(c.rows * c.cols / 2 + kGuardBytes, kGuard);
  std::vector<uint8_t> want_s(scale_bytes + kGuardBytes, kGuard);
  const bool ok = Reference(in, nvfp4, group, gs, &want_p, &want_s);
  std::vector<uint8_t> got_p(want_p.size(), kGuard), got_s(want_s.size(), kGuard);
  ChunkOutputs out;
  out.out[0] = got_p.data();
  out.out[1] = got_s.data();
  const FusedResult res =
      nvfp4 ? Nvfp4Of(in, gs, out) : Int4Of(in, group, out);
  CAPTURE(c.rows);
  CAPTURE(c.cols);
  CAPTURE(c.block_rows);
  CAPTURE(c.block_cols);
  CAPTURE(c.first_row);
  CAPTURE(group);
  CAPTURE(seed);
  if (!Available()) {
    REQUIRE(res == FusedResult::kNotHandled);
    return 0;
  }
  REQUIRE(res == (ok ? FusedResult::kOk : FusedResult::kNotFinite));
  if (!ok) return 0;
  REQUIRE(got_p == want_p);  // guard bytes included: no overrun
  REQUIRE(got_s == want_s);
  return c.rows * c.cols;
}

// Scales: zero, subnormal, tiny, ordinary, E8M0-style powers of two, near bf16's edges.
const std::vector<float> kScales = {
    0.0f,      std::ldexp(1.0f, -140), 6.0e-39f,  std::ldexp(1.0f, -127), 0.000337f,
    0.0021f,   1.0f,                   3.1415927f, std::ldexp(1.0f, -9),  std::ldexp(1.0f, 30),
    1.7e-5f,   0.0125f,                std::ldexp(1.0f, 100), 123.456f};

}  // namespace

TEST_SUITE("fp8_source_quant") {

TEST_CASE("int4 groups from FP8 blocks: every code under every group maximum") {
  ForEachPath([&] {
    const std::vector<Case> cases = {
        {300, 512, 128, 128, 0},    // several bands, four block columns
        {200, 384, 128, 128, 77},   // starts inside a band
        {130, 320, 128, 128, 0},    // a partial last block column (64 wide)
        {64, 256, 64, 256, 5},      // wide blocks, short bands
        {40, 640, 1u << 20, 640, 0},  // one per-tensor scale: a block is the whole row
    };
    size_t checked = 0;
    for (const Case& c : cases) {
      for (size_t group : {64, 128}) {
        if (c.block_cols % group != 0 || c.cols % group != 0) continue;
        for (uint32_t seed = 1; seed <= 6; ++seed) {
          checked += Check(c, false, group, 0, kScales, seed, ~size_t{0});
        }
      }
    }
    MESSAGE(checked << " int4 elements checked");
  });
}

TEST_CASE("int4 from FP8 blocks: NaN codes and overflowing products are refused") {
  ForEachPath([&] {
    const Case c{256, 256, 128, 128, 0};
    // A NaN code anywhere (both encodings), and a scale that overflows bf16 for big codes.
    for (size_t at : {size_t{0}, size_t{1}, size_t{256 * 256 - 1}, size_t{129 * 256 + 17}}) {
      Check(c, false, 128, 0, kScales, 3, at);
    }
    Check(c, false, 128, 0, {1.0f, std::ldexp(1.0f, 125)}, 2, ~size_t{0});
  });
}

TEST_CASE("int4 from FP8 blocks: shapes and scales it does not handle are declined") {
  ForEachPath([&] {
    const Case c{16, 256, 128, 128, 0};
    const std::vector<uint8_t> codes = MakeCodes(c, 32, 1, ~size_t{0});
    std::vector<uint8_t> p(c.rows * c.cols), s(c.rows * c.cols);
    ChunkOutputs out;
    out.out[0] = p.data();
    out.out[1] = s.data();
    std::vector<float> scales = {1.0f, 2.0f};
    CHECK(Int4Of(Chunk(c, codes, scales), 32, out) == FusedResult::kNotHandled);
    CHECK(Int4Of(Chunk({16, 256, 128, 96, 0}, codes, {1, 1, 1}), 64, out) ==
          FusedResult::kNotHandled);
    scales[1] = -0.0f;  // products would flip signs: decoded the usual way
    CHECK(Int4Of(Chunk(c, codes, scales), 128, out) == FusedResult::kNotHandled);
  });
}

TEST_CASE("NVFP4 from FP8 blocks: every code under every group maximum and global scale") {
  ForEachPath([&] {
    const std::vector<Case> cases = {
        {300, 512, 128, 128, 0},      // several bands, four block columns
        {200, 384, 128, 128, 77},     // starts inside a band
        {130, 320, 128, 128, 0},      // a partial last block column (64 wide)
        {64, 256, 64, 16, 5},         // narrow blocks: four per vector of codes
        {40, 640, 1u << 20, 640, 0},  // one per-tensor scale
    };
    // Global scales as the pre-pass makes them (2688 / amax in bf16) and extremes that
    // saturate the group scale codes or drive them to the zero guard.
    const std::vector<float> gss = {fp4::Nvfp4GlobalScale(3.7f, DType::kBF16),
                                    fp4::Nvfp4GlobalScale(0.02f, DType::kBF16),
                                    fp4::Nvfp4GlobalScale(1e-30f, DType::kBF16), 1.0f, 1e-20f,
                                    1e20f};
    size_t checked = 0;
    for (const Case& c : cases) {
      for (size_t i = 0; i < gss.size(); ++i) {
        for (uint32_t seed = 1; seed <= 3; ++seed) {
          checked += Check(c, true, 16, gss[i], kScales, seed + 7 * i, ~size_t{0});
        }
      }
    }
    MESSAGE(checked << " NVFP4 elements checked");
  });
}

TEST_CASE("NVFP4 from FP8 blocks: every code under every maximum, block scales across binades") {
  ForEachPath([&] {
    // One band of 127 rows and four 128-column blocks sharing one scale: row r holds groups
    // whose largest magnitude is r, led by +-r, the other 15 codes running through all 2(r + 1)
    // codes of magnitude <= r in turn, so every (maximum, code) pair meets the kernel's tables
    // (both the top-64 window and the full build) under each scale and global scale.
    const Case c{127, 512, 128, 128, 0};
    std::vector<uint8_t> codes(c.rows * c.cols);
    for (size_t r = 0; r < c.rows; ++r) {
      size_t k = 0;
      for (size_t g0 = 0; g0 < c.cols; g0 += 16) {
        codes[r * c.cols + g0] = static_cast<uint8_t>(r | ((g0 / 16) % 2) << 7);
        for (size_t i = 1; i < 16; ++i, ++k) {
          const size_t m = (k / 2) % (r + 1);
          codes[r * c.cols + g0 + i] = static_cast<uint8_t>(m | (k % 2) << 7);
        }
      }
    }
    std::vector<float> scales = {0.0f, std::numeric_limits<float>::denorm_min(), 3e-42f,
                                 std::ldexp(1.0f, -130), std::ldexp(1.0f, 20),
                                 std::ldexp(1.0f, 118)};
    for (int e = -126; e <= 100; e += 9) scales.push_back(std::ldexp(1.37f, e));
    const std::vector<float> gss = {fp4::Nvfp4GlobalScale(3.7f, DType::kBF16), 1.0f, 1e-20f,
                                    1e20f, std::numeric_limits<float>::denorm_min()};
    size_t checked = 0;
    for (float s : scales) {
      const std::vector<float> sc(4, s);
      const SourceChunk in = Chunk(c, codes, sc);
      for (float gs : gss) {
        std::vector<uint8_t> want_p(c.rows * c.cols / 2 + kGuardBytes, kGuard);
        std::vector<uint8_t> want_s(c.rows * c.cols / 16 + kGuardBytes, kGuard);
        const bool ok = Reference(in, true, 16, gs, &want_p, &want_s);
        std::vector<uint8_t> got_p(want_p.size(), kGuard), got_s(want_s.size(), kGuard);
        ChunkOutputs out;
        out.out[0] = got_p.data();
        out.out[1] = got_s.data();
        const FusedResult res = Nvfp4Of(in, gs, out);
        CAPTURE(s);
        CAPTURE(gs);
        if (!Available()) {
          REQUIRE(res == FusedResult::kNotHandled);
          continue;
        }
        REQUIRE(res == (ok ? FusedResult::kOk : FusedResult::kNotFinite));
        if (!ok) continue;
        REQUIRE(got_p == want_p);
        REQUIRE(got_s == want_s);
        checked += c.rows * c.cols;
      }
    }
    MESSAGE(checked << " NVFP4 elements checked");
  });
}

TEST_CASE("NVFP4 from FP8 blocks: NaN codes and overflowing products are refused") {
  ForEachPath([&] {
    const Case c{256, 256, 128, 128, 0};
    const float gs = fp4::Nvfp4GlobalScale(2.0f, DType::kBF16);
    for (size_t at : {size_t{0}, size_t{1}, size_t{256 * 256 - 1}, size_t{129 * 256 + 17}}) {
      Check(c, true, 16, gs, kScales, 3, at);
    }
    Check(c, true, 16, gs, {1.0f, std::ldexp(1.0f, 125)}, 2, ~size_t{0});
  });
}

TEST_CASE("NVFP4 from FP8 blocks: shapes and scales it does not handle are declined") {
  ForEachPath([&] {
    const Case c{16, 256, 128, 128, 0};
    const std::vector<uint8_t> codes = MakeCodes(c, 16, 1, ~size_t{0});
    std::vector<uint8_t> p(c.rows * c.cols), s(c.rows * c.cols);
    ChunkOutputs out;
    out.out[0] = p.data();
    out.out[1] = s.data();
    CHECK(Nvfp4Of(Chunk({16, 240, 128, 240, 0}, codes, {1.0f}), 1.0f, out) ==
          FusedResult::kNotHandled);  // 240 columns: not whole vectors of 64
    CHECK(Nvfp4Of(Chunk({16, 256, 128, 8, 0}, codes, std::vector<float>(32, 1.0f)),
                              1.0f, out) == FusedResult::kNotHandled);  // groups across blocks
    CHECK(Nvfp4Of(Chunk(c, codes, {1.0f, -0.0f}), 1.0f, out) ==
          FusedResult::kNotHandled);
  });
}

TEST_CASE("fused FP8-source kernels: packed output at every alignment, nothing outside it") {
  ForEachPath([&] {
    // The packed nibbles are stored as one stream of aligned lines (StreamOut in
    // fp8_source_tables.h), whatever the output's start: each of 64 start offsets in a buffer
    // with guard bytes on both sides, against the reference at the same place. Shapes with
    // one 32-byte piece, rows of one and of three pieces, and several bands.
    const std::vector<Case> cases = {
        {1, 64, 128, 64, 0}, {3, 192, 128, 64, 0}, {5, 64, 128, 64, 0}, {140, 384, 128, 128, 0}};
    const float gs = fp4::Nvfp4GlobalScale(2.0f, DType::kBF16);
    size_t checked = 0;
    for (const Case& c : cases) {
      for (const bool nvfp4 : {false, true}) {
        const size_t group = nvfp4 ? 16 : 64;
        const std::vector<uint8_t> codes = MakeCodes(c, group, 5, ~size_t{0});
        const std::vector<float> scales = MakeScales(c, kScales, 4);
        const SourceChunk in = Chunk(c, codes, scales);
        const size_t bytes = c.rows * c.cols / 2;
        const size_t scale_bytes = c.rows * c.cols / group * (nvfp4 ? 1 : 2);
        std::vector<uint8_t> want(bytes), want_s(scale_bytes);
        REQUIRE(Reference(in, nvfp4, group, gs, &want, &want_s));
        for (size_t at = 0; at < 64; ++at) {
          alignas(64) static uint8_t buf[64 + 140 * 384 / 2 + 64];
          std::memset(buf, kGuard, sizeof(buf));
          std::vector<uint8_t> got_s(scale_bytes);
          ChunkOutputs out;
          out.out[0] = buf + at;
          out.out[1] = got_s.data();
          const FusedResult res =
              nvfp4 ? Nvfp4Of(in, gs, out) : Int4Of(in, group, out);
          CAPTURE(c.rows);
          CAPTURE(c.cols);
          CAPTURE(nvfp4);
          CAPTURE(at);
          if (!Available()) {
            REQUIRE(res == FusedResult::kNotHandled);
            continue;
          }
          REQUIRE(res == FusedResult::kOk);
          REQUIRE(std::memcmp(buf + at, want.data(), bytes) == 0);
          REQUIRE(got_s == want_s);
          for (size_t i = 0; i < sizeof(buf); ++i) {
            if (i < at || i >= at + bytes) REQUIRE(buf[i] == kGuard);
          }
          checked += c.rows * c.cols;
        }
      }
    }
    MESSAGE(checked << " elements checked at 64 output offsets");
  });
}

}  // TEST_SUITE

}  // namespace quench::fp8
