// The table decoder of compressed-tensors pack-quantized int4 sources, on every Highway target
// compiled in: (1) LookupNibbles (src/schemes/nibble_lookup.cc) against LookupNibblesScalar,
// byte for byte, for row lengths and runs that end inside a 32-code step, mid-byte tables and
// random codes; (2) DecodeCtWeightRows (tables) against DecodeCtWeightRowsScalar (the
// definition's arithmetic per element): output bytes and the finite flag, for group, channel,
// tensor and block strategies, BF16/F16/F32 scales, symmetric and packed int32 zero points,
// chunks of rows that start mid-way, and scales whose products overflow (rows with a
// non-finite table entry fall back to the per-element loop, which counts only codes present).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ct_fixture.h"
#include "kernel_test_util.h"
#include "quench/ct_weight.h"
#include "schemes/ct_decode.h"
#include "schemes/nibble_lookup.h"

namespace quench::testing {
namespace {

TEST_CASE("LookupNibbles equals its scalar definition on every target") {
  std::mt19937 rng(17);
  const size_t cols_list[] = {2, 30, 32, 34, 62, 64, 96, 126, 128, 130, 256, 300, 4096};
  const size_t runs[] = {2, 16, 30, 32, 34, 64, 100, 128, 4096};
  const auto targets = ForEachTarget([&](const std::string& target) {
    for (size_t cols : cols_list) {
      for (size_t run : runs) {
        CAPTURE(target);
        CAPTURE(cols);
        CAPTURE(run);
        std::vector<uint8_t> packed(cols / 2 + 16);
        for (uint8_t& b : packed) b = static_cast<uint8_t>(rng());
        std::vector<uint8_t> tables(32 * ((cols + run - 1) / run));
        for (uint8_t& b : tables) b = static_cast<uint8_t>(rng());
        std::vector<uint8_t> want(2 * cols + kGuardBytes, kGuard), got(want);
        LookupNibblesScalar(packed.data(), cols, run, tables.data(), want.data());
        LookupNibbles(packed.data(), cols, run, tables.data(), got.data());
        CHECK(want == got);
      }
    }
  });
  CHECK(!targets.empty());
}

using Fixture = CtFixture;

Fixture Make(std::mt19937& rng, uint64_t rows, uint64_t cols, CtStrategy strategy,
             uint64_t group, DType sdt, bool symmetric, float scale_mag, bool huge) {
  Fixture f;
  CtWeight& w = f.w;
  w.format = CtFormat::kPack;
  w.num_bits = 4;
  w.symmetric = symmetric;
  w.rows = rows;
  w.cols = cols;
  w.code_row_bytes = (cols * 4 + 31) / 32 * 4;
  const uint64_t scale_rows = SetScaleLayout(w, strategy, group);
  f.codes.resize(rows * w.code_row_bytes);
  for (uint8_t& b : f.codes) b = static_cast<uint8_t>(rng());
  const size_t es = DTypeBits(sdt) / 8;
  w.scale = CtTensor{true, "x.weight_scale", 0, 0, scale_rows * w.scale_cols * es, sdt,
                     {scale_rows, w.scale_cols}};
  f.scales.resize(w.scale.nbytes);
  std::uniform_real_distribution<float> u(0.5f, 2.f);
  for (uint64_t i = 0; i < scale_rows * w.scale_cols; ++i) {
    float s = u(rng) * scale_mag;
    const uint32_t pick = rng() % 16;
    if (pick == 0) s = 0.f;
    if (pick == 1) s = std::ldexp(1.f, -130);  // subnormal in f32 (0 in F16)
    if (huge && pick == 2) s = DTypeMax(sdt);   // products beyond BF16 / F16
    PutElem(f.scales.data() + i * es, sdt, s);
  }
  if (!symmetric) {
    // pack_to_int32(zp, 4, packed_dim=0): rows' fields run down word rows per column.
    const uint64_t wrows = (scale_rows * 4 + 31) / 32;
    w.zero_point = CtTensor{true, "x.weight_zero_point", 1, 0, wrows * w.scale_cols * 4,
                            DType::kI32, {wrows, w.scale_cols}};
    f.zeros.resize(w.zero_point.nbytes);
    for (uint8_t& b : f.zeros) b = static_cast<uint8_t>(rng());
  }
  return f;
}

TEST_CASE("int4 pack-quantized rows: tables equal the per-element definition on every target") {
  struct Layout {
    CtStrategy strategy;
    uint64_t group;
  };
  const Layout layouts[] = {{CtStrategy::kGroup, 128}, {CtStrategy::kGroup, 32},
                            {CtStrategy::kGroup, 34},  {CtStrategy::kGroup, 100},
                            {CtStrategy::kChannel, 0}, {CtStrategy::kTensor, 0},
                            {CtStrategy::kBlock, 64}};
  const DType sdts[] = {DType::kBF16, DType::kF16, DType::kF32};
  const uint64_t shapes[][2] = {{40, 256}, {9, 300}, {70, 136}};
  size_t fallbacks = 0;
  const auto targets = ForEachTarget([&](const std::string& target) {
    std::mt19937 rng(5);
    for (const Layout& l : layouts) {
      for (DType sdt : sdts) {
        for (const auto& shape : shapes) {
          for (int sym = 0; sym < 2; ++sym) {
            for (int huge = 0; huge < 2; ++huge) {
              // Asymmetric tensor strategy stores an unpacked zero point, and the packed
              // zero points run per weight row: group and channel layouts only.
              if (!sym && (l.strategy == CtStrategy::kTensor || l.strategy == CtStrategy::kBlock)) {
                continue;
              }
              CAPTURE(target);
              CAPTURE(static_cast<int>(l.strategy));
              CAPTURE(l.group);
              CAPTURE(DTypeLabel(sdt));
              CAPTURE(shape[1]);
              CAPTURE(sym);
              CAPTURE(huge);
              const Fixture f = Make(rng, shape[0], shape[1], l.strategy, l.group, sdt, sym,
                                     huge ? 1.f : 0.01f, huge);
              auto read = [&](const CtTensor& t, uint64_t off, uint64_t len, uint8_t* dst) {
                return f.Read(t, off, len, dst);
              };
              // Chunks [0, rows), [3, rows), [5, 7): starts inside a block or word row.
              const uint64_t spans[][2] = {{0, shape[0]}, {3, shape[0]}, {5, 7}};
              for (const auto& sp : spans) {
                const uint64_t n = (sp[1] - sp[0]) * shape[1] * 2;
                std::vector<uint8_t> want(n + kGuardBytes, kGuard), got(want);
                bool fw = true, fg = true;
                const uint8_t* codes = f.codes.data() + sp[0] * f.w.code_row_bytes;
                REQUIRE(DecodeCtWeightRowsScalar(f.w, read, "x.weight", codes, sp[0], sp[1],
                                                 want.data(), &fw).ok());
                REQUIRE(DecodeCtWeightRows(f.w, read, "x.weight", codes, sp[0], sp[1],
                                           got.data(), &fg).ok());
                CHECK(want == got);
                CHECK(fw == fg);
                fallbacks += !fw;
              }
            }
          }
        }
      }
    }
  });
  CHECK(!targets.empty());
  CHECK(fallbacks > 0);  // the overflowing scales were met
}

}  // namespace
}  // namespace quench::testing
