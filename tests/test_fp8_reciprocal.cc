// The FP8 kernels quantize bf16 weights by multiplying with the scale's reciprocal instead of
// dividing (src/schemes/fp8.cc, internal::ReciprocalIsExact). That is only allowed because
// the codes are the same as with the division the definition states; this checks it
// exhaustively where the proof says it holds: every finite bf16 x (both signs, subnormals,
// zeros) against every bf16 scale significand at exponents spanning the reciprocal path's
// whole range, on every compiled target, against the scalar reference (which divides). It
// also covers the scales that must keep the division (subnormal, >= 2^126) and the per-row
// (channel) kernel on rows whose own amax produces each scale significand.
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

}  // TEST_SUITE

}  // namespace quench::fp8
