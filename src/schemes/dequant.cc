#include "schemes/dequant.h"

#include <cmath>
#include <cstring>
#include <string_view>

#include "schemes/float_formats.h"

namespace quench {
namespace {

float Input(const WeightChunk& in, uint64_t i) { return ElementToF32(in.data, in.dtype, i); }

// E2M1 nibble (sign, 2 exponent bits with bias 1, 1 mantissa bit).
float E2M1(uint8_t n) {
  static constexpr float kMag[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  return (n & 8) ? -kMag[n & 7] : kMag[n & 7];
}

uint32_t Field(const uint8_t* words, uint64_t pos, int bits) {
  const uint64_t bit = pos * static_cast<uint64_t>(bits), w = bit / 32, off = bit % 32;
  uint32_t lo;
  std::memcpy(&lo, words + 4 * w, 4);
  uint64_t acc = lo;
  if (off + static_cast<uint64_t>(bits) > 32) {
    uint32_t hi;
    std::memcpy(&hi, words + 4 * (w + 1), 4);
    acc |= static_cast<uint64_t>(hi) << 32;
  }
  return static_cast<uint32_t>((acc >> off) & ((1u << bits) - 1));
}

}  // namespace

void AccumulateChunkError(const SchemeInfo& scheme, const WeightChunk& in,
                          const ChunkOutputs& out, uint64_t first_row, uint64_t row_stride,
                          ErrorSums* sums) {
  const std::string_view fmt = scheme.format;
  const uint64_t cols = in.cols;
  const int bits = in.params.bits;
  const uint64_t g = in.params.group_size > 0 ? static_cast<uint64_t>(in.params.group_size) : cols;
  const uint64_t ng = cols / g;
  const bool block = scheme.weights.strategy == "block";
  const uint64_t bc = (cols + 127) / 128;
  for (uint64_t r = 0; r < in.rows; ++r) {
    if ((first_row + r) % row_stride != 0) continue;
    for (uint64_t c = 0; c < cols; ++c) {
      const double x = Input(in, r * cols + c);
      double dq = 0;
      if (fmt == "float-quantized") {
        const double s = ElementToF32(out.out[1], in.dtype, block ? (r / 128) * bc + c / 128 : r);
        dq = E4M3ToF32(out.out[0][r * cols + c]) * s;
      } else if (fmt == "int-quantized") {
        const double s = ElementToF32(out.out[1], in.dtype, r * ng + c / g);
        const int zp = in.params.symmetric ? 0 : static_cast<int8_t>(out.out[2][r * ng + c / g]);
        dq = (static_cast<int8_t>(out.out[0][r * cols + c]) - zp) * s;
      } else if (fmt == "pack-quantized") {
        const uint64_t words = (cols * static_cast<uint64_t>(bits) + 31) / 32;
        const double s = ElementToF32(out.out[1], in.dtype, r * ng + c / g);
        const int offset = 1 << (bits - 1);
        int zp = 0;
        if (!in.params.symmetric) {
          // Packed along dim 0: row r of column (c / g) of the chunk's zero-point slab.
          const uint8_t* z = out.out[2];
          const uint64_t bit = r * static_cast<uint64_t>(bits), zr = bit / 32, off = bit % 32;
          uint32_t lo;
          std::memcpy(&lo, z + 4 * (zr * ng + c / g), 4);
          uint64_t acc = lo;
          if (off + static_cast<uint64_t>(bits) > 32) {
            uint32_t hi;
            std::memcpy(&hi, z + 4 * ((zr + 1) * ng + c / g), 4);
            acc |= static_cast<uint64_t>(hi) << 32;
          }
          zp = static_cast<int>((acc >> off) & ((1u << bits) - 1)) - offset;
        }
        const int q = static_cast<int>(Field(out.out[0] + 4 * words * r, c, bits)) - offset;
        dq = (q - zp) * s;
      } else if (fmt == "nvfp4-pack-quantized") {
        const double eff = static_cast<double>(E4M3ToF32(out.out[1][r * (cols / 16) + c / 16])) /
                           static_cast<double>(in.params.global_scale);
        const uint8_t b = out.out[0][r * (cols / 2) + c / 2];
        dq = E2M1(c % 2 ? b >> 4 : b & 0xF) * eff;
      } else if (fmt == "mxfp4-pack-quantized" || fmt == "mxfp8-quantized") {
        const double s = std::ldexp(1.0, out.out[1][r * (cols / 32) + c / 32] - 127);
        if (fmt == "mxfp8-quantized") {
          dq = E4M3ToF32(out.out[0][r * cols + c]) * s;
        } else {
          const uint8_t b = out.out[0][r * (cols / 2) + c / 2];
          dq = E2M1(c % 2 ? b >> 4 : b & 0xF) * s;
        }
      }
      sums->signal += x * x;
      sums->noise += (x - dq) * (x - dq);
      ++sums->count;
    }
  }
}

}  // namespace quench
