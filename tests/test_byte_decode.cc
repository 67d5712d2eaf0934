// The byte-code decoder of compressed-tensors sources, on every Highway target compiled in:
// (1) ScaleBytes (src/schemes/byte_decode.cc) against ScaleBytesScalar, byte for byte and in
// the finite flag, for all 256 codes of each kind under scales of every magnitude (0, f32
// subnormals, products that overflow, NaN E4M3 codes) and runs that end inside a vector;
// (2) DecodeCtWeightRows (vectors) against DecodeCtWeightRowsScalar (the definition's
// arithmetic per element) on int-quantized int8, 8-bit pack-quantized, float-quantized E4M3
// and MXFP8 weights: channel, group, tensor and block strategies, BF16/F16/F32 scales (F16
// and zero points stay on the per-element loop), chunks of rows that start mid-way.
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
#include "schemes/byte_decode.h"
#include "schemes/ct_decode.h"
#include "schemes/float_formats.h"

namespace quench::testing {
namespace {

TEST_CASE("ScaleBytes equals its scalar definition on every target") {
  std::mt19937 rng(23);
  const size_t cols_list[] = {1, 15, 16, 17, 33, 64, 100, 256, 4096};
  const size_t runs[] = {1, 7, 16, 32, 33, 128, 4096};
  const ByteCode kinds[] = {ByteCode::kInt8, ByteCode::kOffset128, ByteCode::kE4M3};
  size_t not_finite = 0;
  const auto targets = ForEachTarget([&](const std::string& target) {
    for (ByteCode kind : kinds) {
      for (size_t cols : cols_list) {
        for (size_t run : runs) {
          CAPTURE(target);
          CAPTURE(static_cast<int>(kind));
          CAPTURE(cols);
          CAPTURE(run);
          std::vector<uint8_t> codes(cols);
          for (size_t c = 0; c < cols; ++c) codes[c] = static_cast<uint8_t>(c * 97 + rng());
          std::vector<float> scales((cols + run - 1) / run);
          for (float& s : scales) {
            const uint32_t pick = rng() % 8;
            s = std::ldexp(1.0f + static_cast<float>(rng() % 1000) / 1000.f,
                           static_cast<int>(rng() % 60) - 40);
            if (pick == 0) s = 0.f;
            if (pick == 1) s = std::ldexp(1.f, -140);  // f32 subnormal
            if (pick == 2) s = 3e38f;                   // products overflow
            if (pick == 3) s = 0x1.fffffep+127f / 300.f;
          }
          std::vector<uint8_t> want(2 * cols + kGuardBytes, kGuard), got(want);
          const bool fw =
              ScaleBytesScalar(codes.data(), cols, run, scales.data(), kind, want.data());
          const bool fg = ScaleBytes(codes.data(), cols, run, scales.data(), kind, got.data());
          CHECK(want == got);
          CHECK(fw == fg);
          not_finite += fw ? 0 : 1;
        }
      }
      // Every code under a run of its own scale, for a few scales: all 256 values.
      std::vector<uint8_t> all(256);
      for (int i = 0; i < 256; ++i) all[static_cast<size_t>(i)] = static_cast<uint8_t>(i);
      for (float s : {1.0f, 0.0f, 0.001953125f, 1.5e-40f, 1e37f, 448.0f}) {
        std::vector<uint8_t> want(512 + kGuardBytes, kGuard), got(want);
        const bool fw = ScaleBytesScalar(all.data(), 256, 256, &s, kind, want.data());
        const bool fg = ScaleBytes(all.data(), 256, 256, &s, kind, got.data());
        CAPTURE(s);
        CHECK(want == got);
        CHECK(fw == fg);
      }
    }
  });
  CHECK(!targets.empty());
  CHECK(not_finite > 0);  // the overflowing scales and NaN codes were met
}

TEST_CASE("ScaleBytes by hand: int8, offset, E4M3 fields, NaN and overflow") {
  const uint8_t codes[] = {0x81, 0x7F, 0x00, 0x38, 0xB8, 0x01, 0x7F, 0xFF};
  const float one = 1.0f;
  uint8_t out[16];
  CHECK(ScaleBytes(codes, 2, 2, &one, ByteCode::kInt8, out));
  uint16_t h[8];
  std::memcpy(h, out, 4);
  CHECK(h[0] == F32ToBF16(-127.f));
  CHECK(h[1] == F32ToBF16(127.f));
  CHECK(ScaleBytes(codes, 2, 2, &one, ByteCode::kOffset128, out));
  std::memcpy(h, out, 4);
  CHECK(h[0] == F32ToBF16(1.f));
  CHECK(h[1] == F32ToBF16(-1.f));
  // E4M3: 0x38 = 1.0, 0xB8 = -1.0, 0x01 = 2^-9; 0x7F and 0xFF are NaN (0x7FC0, not finite).
  CHECK(!ScaleBytes(codes + 2, 6, 6, &one, ByteCode::kE4M3, out));
  std::memcpy(h, out, 12);
  CHECK(h[0] == 0x0000);
  CHECK(h[1] == 0x3F80);
  CHECK(h[2] == 0xBF80);
  CHECK(h[3] == F32ToBF16(0.001953125f));
  CHECK(h[4] == 0x7FC0);
  CHECK(h[5] == 0x7FC0);
  const float big = 3e38f;
  CHECK(!ScaleBytes(codes, 2, 2, &big, ByteCode::kInt8, out));  // -127 * 3e38 = -Inf
}

using Fixture = CtFixture;

Fixture Make(std::mt19937& rng, CtFormat format, uint64_t rows, uint64_t cols,
             CtStrategy strategy, uint64_t group, DType sdt, bool symmetric) {
  Fixture f;
  CtWeight& w = f.w;
  w.format = format;
  w.num_bits = 8;
  w.is_float = format == CtFormat::kFloat || format == CtFormat::kMxfp8;
  w.symmetric = symmetric;
  w.rows = rows;
  w.cols = cols;
  w.code_row_bytes = format == CtFormat::kPack ? (cols + 3) / 4 * 4 : cols;
  const uint64_t scale_rows = SetScaleLayout(w, strategy, group);
  f.codes.resize(rows * w.code_row_bytes);
  for (uint8_t& b : f.codes) b = static_cast<uint8_t>(rng());
  const uint64_t n = scale_rows * w.scale_cols;
  if (format == CtFormat::kMxfp8) {
    // E8M0 exponents, 0xFF (NaN) excluded: the decoder refuses it.
    w.scale = CtTensor{true, "x.weight_scale", 0, 0, n, DType::kU8, {scale_rows, w.scale_cols}};
    f.scales.resize(n);
    for (uint8_t& b : f.scales) b = static_cast<uint8_t>(rng() % 255);
  } else {
    const size_t es = DTypeBits(sdt) / 8;
    w.scale = CtTensor{true, "x.weight_scale", 0, 0, n * es, sdt, {scale_rows, w.scale_cols}};
    f.scales.resize(w.scale.nbytes);
    std::uniform_real_distribution<float> u(0.5f, 2.f);
    for (uint64_t i = 0; i < n; ++i) {
      float s = std::ldexp(u(rng), static_cast<int>(rng() % 24) - 16);
      const uint32_t pick = rng() % 16;
      if (pick == 0) s = 0.f;
      if (pick == 1) s = std::ldexp(1.f, -130);  // subnormal in f32 (0 in F16)
      if (pick == 2) s = DTypeMax(sdt);          // products beyond BF16 / F16
      PutElem(f.scales.data() + i * es, sdt, s);
    }
  }
  if (!symmetric) {
    w.zero_point = CtTensor{true, "x.weight_zero_point", 1, 0, n, DType::kI8,
                            {scale_rows, w.scale_cols}};
    f.zeros.resize(n);
    for (uint8_t& b : f.zeros) b = static_cast<uint8_t>(rng() % 64);
  }
  return f;
}

TEST_CASE("byte-code weights: vectors equal the per-element definition on every target") {
  struct Layout {
    CtFormat format;
    CtStrategy strategy;
    uint64_t group;
  };
  const Layout layouts[] = {
      {CtFormat::kInt, CtStrategy::kChannel, 0},    {CtFormat::kInt, CtStrategy::kGroup, 128},
      {CtFormat::kInt, CtStrategy::kGroup, 24},     {CtFormat::kInt, CtStrategy::kTensor, 0},
      {CtFormat::kPack, CtStrategy::kGroup, 32},    {CtFormat::kPack, CtStrategy::kChannel, 0},
      {CtFormat::kFloat, CtStrategy::kChannel, 0},  {CtFormat::kFloat, CtStrategy::kTensor, 0},
      {CtFormat::kFloat, CtStrategy::kBlock, 64},   {CtFormat::kMxfp8, CtStrategy::kGroup, 32},
      {CtFormat::kNaive, CtStrategy::kChannel, 0},
  };
  const DType sdts[] = {DType::kBF16, DType::kF16, DType::kF32};
  const uint64_t shapes[][2] = {{40, 256}, {9, 300}, {70, 136}};
  const auto targets = ForEachTarget([&](const std::string& target) {
    std::mt19937 rng(9);
    for (const Layout& l : layouts) {
      for (DType sdt : sdts) {
        if (l.format == CtFormat::kMxfp8 && sdt != DType::kBF16) continue;  // E8M0 only
        for (const auto& shape : shapes) {
          for (int sym = 0; sym < 2; ++sym) {
            if (!sym && (l.format != CtFormat::kInt || l.strategy == CtStrategy::kTensor)) {
              continue;  // int8 zero points per channel or group
            }
            if (l.strategy == CtStrategy::kGroup && shape[1] % l.group != 0) continue;
            CAPTURE(target);
            CAPTURE(static_cast<int>(l.format));
            CAPTURE(static_cast<int>(l.strategy));
            CAPTURE(l.group);
            CAPTURE(DTypeName(sdt));
            CAPTURE(shape[0]);
            CAPTURE(shape[1]);
            CAPTURE(sym);
            const Fixture f = Make(rng, l.format, shape[0], shape[1], l.strategy, l.group, sdt,
                                   sym != 0);
            const CtReader read = [&](const CtTensor& t, uint64_t off, uint64_t len,
                                      uint8_t* dst) { return f.Read(t, off, len, dst); };
            // The whole weight, then a chunk that starts and ends mid-way.
            for (const auto& [r0, r1] : {std::pair<uint64_t, uint64_t>{0, shape[0]},
                                         std::pair<uint64_t, uint64_t>{3, shape[0] - 2}}) {
              const uint8_t* codes = f.codes.data() + r0 * f.w.code_row_bytes;
              std::vector<uint8_t> want((r1 - r0) * shape[1] * 2), got(want.size());
              bool fw = true, fg = true;
              REQUIRE(DecodeCtWeightRowsScalar(f.w, read, "x.weight", codes, r0, r1,
                                               want.data(), &fw).ok());
              REQUIRE(DecodeCtWeightRows(f.w, read, "x.weight", codes, r0, r1, got.data(), &fg)
                          .ok());
              CHECK(want == got);
              CHECK(fw == fg);
            }
          }
        }
      }
    }
  });
  CHECK(!targets.empty());
}

}  // namespace
}  // namespace quench::testing
