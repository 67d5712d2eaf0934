// Two fast paths of the FP8 kernels, each checked against the scalar definition.
//
// 1. The FP8 kernels quantize bf16 weights by multiplying with the scale's reciprocal instead of
// dividing (src/schemes/fp8.cc; internal::ReciprocalIsExact in fp8_shared.h, with its proof). That
// is only allowed because the codes are the same as with the division the definition states; this
// checks it exhaustively where the proof says it holds: every finite bf16 x (both signs,
// subnormals, zeros) against every bf16 scale significand at exponents spanning the reciprocal
// path's whole range, on every compiled target, against the scalar reference (which divides). It
// also covers the scales that must keep the division (subnormal, >= 2^126) and the per-row
// (channel) kernel on rows whose own amax produces each scale significand.
//
// 2. On AVX-512, FP8 sources are decoded by a per-tile table of the 128 magnitudes' results
// (DequantizeByTable): every code through every tile width, with the scales that need care
// (+0, -0, subnormal, overflowing), NaN codes in any tile, on every target.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernel_test_util.h"
#include "schemes/float_formats.h"
#include "schemes/fp8.h"

namespace quench::fp8 {
using namespace quench::testing;  // NOLINT: shared kernel-test helpers

namespace {

// Every finite bf16 bit pattern, as one row.
std::vector<uint8_t> AllFiniteBF16() {
  std::vector<uint8_t> row;
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    if ((b & 0x7F80u) == 0x7F80u) continue;  // Inf / NaN: refused before any quantization
    const uint16_t h = static_cast<uint16_t>(b);
    row.push_back(static_cast<uint8_t>(h & 0xFF));
    row.push_back(static_cast<uint8_t>(h >> 8));
  }
  return row;
}

std::vector<uint8_t> QuantizeWithScale(const std::vector<uint8_t>& row, float scale,
                                       bool kernel) {
  WeightChunk in;
  in.data = row.data();
  in.dtype = DType::kBF16;
  in.rows = 1;
  in.cols = row.size() / 2;
  in.params.global_scale = scale;
  std::vector<uint8_t> codes(in.cols + kGuardBytes, kGuard);
  ChunkOutputs out;
  out.out[0] = codes.data();
  REQUIRE((kernel ? QuantizeTensor(in, out) : QuantizeTensorScalar(in, out)));
  return codes;
}

}  // namespace

TEST_SUITE("fp8_kernels") {

TEST_CASE("bf16: multiplying by the reciprocal gives the division's code for every x") {
  const std::vector<uint8_t> row = AllFiniteBF16();
  std::vector<float> scales;
  // Every significand (bf16 0x?? low 7 bits) at exponents across the reciprocal path's range
  // [2^-126, 2^126), including both of its ends, and the scales that keep the division:
  // every subnormal bf16, and the binade at 2^126 and the largest finite ones.
  for (int e : {-126, -60, -20, -7, -1, 0, 1, 8, 20, 60, 125, 126, 127}) {
    for (uint32_t m = 0; m < 128; ++m) {
      scales.push_back(std::ldexp(1.0f + static_cast<float>(m) / 128.0f, e));
    }
  }
  for (uint32_t m = 1; m < 128; ++m) scales.push_back(BF16ToF32(static_cast<uint16_t>(m)));
  size_t checked = 0;
  for (float scale : scales) {
    REQUIRE(BF16ToF32(F32ToBF16(scale)) == scale);  // a bf16 value, as the kernels' scales are
    const std::vector<uint8_t> want = QuantizeWithScale(row, scale, /*kernel=*/false);
    ForEachTarget([&](const std::string& target) {
      const std::vector<uint8_t> got = QuantizeWithScale(row, scale, /*kernel=*/true);
      if (got != want) {
        for (size_t i = 0; i < want.size(); ++i) {
          if (got[i] == want[i]) continue;
          uint16_t x;
          std::memcpy(&x, row.data() + 2 * i, 2);
          CAPTURE(target);
          CAPTURE(scale);
          CAPTURE(x);
          REQUIRE(static_cast<int>(got[i]) == static_cast<int>(want[i]));
        }
      }
      checked += row.size() / 2;
    });
  }
  MESSAGE(checked << " (x, scale, target) triples checked");
}

TEST_CASE("bf16 rows with every amax significand: the channel kernel equals the reference") {
  // Row amax = (1 + m/128) * 2^e followed by every finite bf16 x with |x| <= amax, both
  // signs: the scales the channel kernel derives from real rows, through the reciprocal path.
  const std::vector<uint8_t> all = AllFiniteBF16();
  for (int e : {-100, -3, 0, 7}) {
    for (uint32_t m = 0; m < 128; ++m) {
      const float amax = std::ldexp(1.0f + static_cast<float>(m) / 128.0f, e);
      std::vector<uint8_t> row;
      uint8_t b[2];
      PutElem(b, DType::kBF16, amax);
      row.insert(row.end(), b, b + 2);
      for (size_t i = 0; i < all.size(); i += 2) {
        uint16_t h;
        std::memcpy(&h, all.data() + i, 2);
        if (std::fabs(BF16ToF32(h)) <= amax) {
          row.insert(row.end(), all.begin() + i, all.begin() + i + 2);
        }
      }
      WeightChunk in;
      in.data = row.data();
      in.dtype = DType::kBF16;
      in.rows = 1;
      in.cols = row.size() / 2;
      std::vector<uint8_t> want_codes(in.cols + kGuardBytes, kGuard);
      std::vector<uint8_t> want_scale(2 + kGuardBytes, kGuard);
      ChunkOutputs want;
      want.out[0] = want_codes.data();
      want.out[1] = want_scale.data();
      REQUIRE(QuantizeChannelScalar(in, want));
      ForEachTarget([&](const std::string& target) {
        std::vector<uint8_t> codes(in.cols + kGuardBytes, kGuard);
        std::vector<uint8_t> scale(2 + kGuardBytes, kGuard);
        ChunkOutputs got;
        got.out[0] = codes.data();
        got.out[1] = scale.data();
        CAPTURE(target);
        CAPTURE(amax);
        REQUIRE(QuantizeChannel(in, got));
        REQUIRE(codes == want_codes);
        REQUIRE(scale == want_scale);
      });
    }
  }
}

TEST_CASE("FP8 source decoding by table: every code, tile width and awkward scale") {
  const float kScales[] = {0.0f,   -0.0f, 1.0f, 0.000337f, std::ldexp(1.0f, -127),
                           6.0e-39f, std::ldexp(1.0f, -140), 3.1415927f, std::ldexp(1.0f, 120)};
  std::vector<size_t> widths;
  for (size_t w = 1; w <= 70; ++w) widths.push_back(w);
  for (size_t w : {95, 96, 97, 127, 128, 129, 200, 256}) widths.push_back(w);
  size_t checked = 0;
  for (size_t block_cols : widths) {
    const size_t nscales = sizeof(kScales) / sizeof(kScales[0]);
    const size_t cols = block_cols * nscales;  // one tile per scale, side by side
    const size_t rows = (256 + cols - 1) / cols + 2;  // every code at least once per tile
    for (int variant : {0, 1, 2}) {  // clean; a NaN code; a tile whose products overflow
      const bool with_nan = variant == 1;
      SourceChunk in;
      std::vector<uint8_t> codes(rows * cols);
      for (size_t i = 0; i < codes.size(); ++i) {
        uint8_t c = static_cast<uint8_t>((i * 7 + i / cols) % 256);
        if ((c & 0x7F) == 0x7F) c ^= 1;  // NaN codes only where asked for
        codes[i] = c;
      }
      // In the last tile: a NaN code, or 448 (0x7E), which times 2^120 overflows bf16.
      if (variant != 0) codes[codes.size() - 1 - block_cols / 2] = with_nan ? 0xFF : 0x7E;
      std::vector<float> scales(kScales, kScales + nscales);
      // The 2^120 tile overflows bf16 for large codes; only in variant 2.
      if (variant != 2) scales.back() = 2.5f;
      in.codes = codes.data();
      in.rows = rows;
      in.cols = cols;
      in.scales = scales.data();
      in.scale_cols = nscales;
      in.block_rows = 1u << 20;  // one tile row
      in.block_cols = block_cols;
      std::vector<uint8_t> want(2 * codes.size() + kGuardBytes, kGuard);
      const bool ok = DequantizeSourceScalar(in, want.data());
      CHECK(ok == (variant == 0));
      ForEachTarget([&](const std::string& target) {
        std::vector<uint8_t> got(2 * codes.size() + kGuardBytes, kGuard);
        CAPTURE(target);
        CAPTURE(block_cols);
        CAPTURE(variant);
        REQUIRE(DequantizeSource(in, got.data()) == ok);
        if (ok) REQUIRE(got == want);  // guard bytes included: no overrun
        checked += codes.size();
      });
    }
  }
  MESSAGE(checked << " decoded elements checked");
}

}  // TEST_SUITE

}  // namespace quench::fp8
