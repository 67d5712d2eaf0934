#include "schemes/dequant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string_view>
#include <vector>

#include "schemes/float_formats.h"
#include "schemes/packed_fields.h"

namespace quench {
namespace {

enum class Format { kFloat, kInt, kPacked, kNvfp4, kMxfp4, kMxfp8, kOther };

// Row r of the chunk's input in f32 (ElementToF32's values, the dtype switch taken once).
void RowToF32(const WeightChunk& in, uint64_t r, float* x) {
  const uint64_t n = in.cols;
  if (in.dtype == DType::kBF16) {
    const uint8_t* p = in.data + 2 * r * n;
    for (uint64_t c = 0; c < n; ++c) {
      uint16_t h;
      std::memcpy(&h, p + 2 * c, 2);
      x[c] = BF16ToF32(h);
    }
  } else {
    for (uint64_t c = 0; c < n; ++c) x[c] = ElementToF32(in.data, in.dtype, r * n + c);
  }
}

// E2M1 nibble (sign, 2 exponent bits with bias 1, 1 mantissa bit).
float E2M1(uint8_t n) {
  static constexpr float kMag[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  return (n & 8) ? -kMag[n & 7] : kMag[n & 7];
}

// One chunk's geometry and outputs, for decoding its sampled rows back (the definitions of
// the formats' dequantization, in f64).
struct ChunkRows {
  const WeightChunk& in;
  const ChunkOutputs& out;
  uint64_t cols;
  uint64_t g;   // group size (the row where there are no groups)
  uint64_t ng;  // groups per row
  const float* e4m3 = E4M3Values();

  // FP8 E4M3 codes, a scale per tensor (the chunk's global_scale: FP8's per-tensor weight
  // scale, which the kernel divides by; the weight_scale tensor is written from it after
  // the kernels, so out.out[1] is not set), row or 128 x 128 block.
  void Float(uint64_t r, bool block, bool per_tensor, double* dq) const {
    const uint64_t bc = (cols + 127) / 128;
    for (uint64_t c0 = 0; c0 < cols; c0 += 128) {
      const uint64_t c1 = std::min(cols, c0 + 128);
      const uint64_t si = block ? (r / 128) * bc + c0 / 128 : r;
      const double s = per_tensor ? static_cast<double>(in.params.global_scale)
                                  : ElementToF32(out.out[1], in.dtype, si);
      for (uint64_t c = c0; c < c1; ++c) dq[c] = e4m3[out.out[0][r * cols + c]] * s;
    }
  }

  // int8 codes, a scale (and zero point) per group.
  void Int(uint64_t r, double* dq) const {
    for (uint64_t k = 0; k < ng; ++k) {
      const double s = ElementToF32(out.out[1], in.dtype, r * ng + k);
      const int zp = in.params.symmetric ? 0 : static_cast<int8_t>(out.out[2][r * ng + k]);
      for (uint64_t c = k * g; c < (k + 1) * g; ++c) {
        dq[c] = (static_cast<int8_t>(out.out[0][r * cols + c]) - zp) * s;
      }
    }
  }

  // pack_to_int32 codes q + 2^(bits-1), zero points packed down dim 0.
  void Packed(uint64_t r, double* dq) const {
    const int bits = in.params.bits;
    const uint64_t words = (cols * static_cast<uint64_t>(bits) + 31) / 32;
    const uint64_t zp_rows = (in.rows * static_cast<uint64_t>(bits) + 31) / 32;
    const int offset = 1 << (bits - 1);
    for (uint64_t k = 0; k < ng; ++k) {
      const double s = ElementToF32(out.out[1], in.dtype, r * ng + k);
      // Packed along dim 0: row r of column k of the chunk's zero-point slab.
      const int zp = in.params.symmetric
                         ? 0
                         : static_cast<int>(PackedColumnField(
                               out.out[2], ng, zp_rows, r * static_cast<uint64_t>(bits), k, bits)) -
                               offset;
      for (uint64_t c = k * g; c < (k + 1) * g; ++c) {
        const int q = static_cast<int>(PackedField(out.out[0] + 4 * words * r, words,
                                                   c * static_cast<uint64_t>(bits), bits)) -
                      offset;
        dq[c] = (q - zp) * s;
      }
    }
  }

  // E2M1 nibbles, an E4M3 scale per 16, divided by the global scale.
  void Nvfp4(uint64_t r, double* dq) const {
    for (uint64_t c0 = 0; c0 < cols; c0 += 16) {
      const double eff = static_cast<double>(e4m3[out.out[1][r * (cols / 16) + c0 / 16]]) /
                         static_cast<double>(in.params.global_scale);
      for (uint64_t c = c0; c < c0 + 16; ++c) {
        const uint8_t b = out.out[0][r * (cols / 2) + c / 2];
        dq[c] = E2M1(c % 2 ? b >> 4 : b & 0xF) * eff;
      }
    }
  }

  // E2M1 nibbles (MXFP4) or E4M3 codes (MXFP8), an E8M0 scale per 32.
  void Mx(uint64_t r, bool fp8, double* dq) const {
    for (uint64_t c0 = 0; c0 < cols; c0 += 32) {
      const double s = std::ldexp(1.0, out.out[1][r * (cols / 32) + c0 / 32] - 127);
      for (uint64_t c = c0; c < c0 + 32; ++c) {
        if (fp8) {
          dq[c] = e4m3[out.out[0][r * cols + c]] * s;
        } else {
          const uint8_t b = out.out[0][r * (cols / 2) + c / 2];
          dq[c] = E2M1(c % 2 ? b >> 4 : b & 0xF) * s;
        }
      }
    }
  }
};

}  // namespace

void AccumulateChunkError(const SchemeInfo& scheme, const WeightChunk& in, const ChunkOutputs& out,
                          uint64_t first_row, uint64_t row_stride, ErrorSums* sums) {
  const std::string_view fmt = scheme.format;
  const Format f = fmt == "float-quantized"        ? Format::kFloat
                   : fmt == "int-quantized"        ? Format::kInt
                   : fmt == "pack-quantized"       ? Format::kPacked
                   : fmt == "nvfp4-pack-quantized" ? Format::kNvfp4
                   : fmt == "mxfp4-pack-quantized" ? Format::kMxfp4
                   : fmt == "mxfp8-quantized"      ? Format::kMxfp8
                                                   : Format::kOther;
  const uint64_t cols = in.cols;
  const uint64_t g = in.params.group_size > 0 ? static_cast<uint64_t>(in.params.group_size) : cols;
  const ChunkRows rows{in, out, cols, g, cols / g};
  const bool block = scheme.weights.strategy == "block";
  const bool per_tensor = scheme.weights.strategy == "tensor";
  // Each sampled row decoded to f32, then its elements in order, each with its group's
  // parameters (taken once per group instead of once per element: the same values).
  std::vector<float> x(cols);
  std::vector<double> dq(cols);
  for (uint64_t r = 0; r < in.rows; ++r) {
    if ((first_row + r) % row_stride != 0) continue;
    RowToF32(in, r, x.data());
    switch (f) {
      case Format::kFloat:
        rows.Float(r, block, per_tensor, dq.data());
        break;
      case Format::kInt:
        rows.Int(r, dq.data());
        break;
      case Format::kPacked:
        rows.Packed(r, dq.data());
        break;
      case Format::kNvfp4:
        rows.Nvfp4(r, dq.data());
        break;
      case Format::kMxfp4:
      case Format::kMxfp8:
        rows.Mx(r, f == Format::kMxfp8, dq.data());
        break;
      case Format::kOther:
        std::fill(dq.begin(), dq.end(), 0.0);
        break;
    }
    for (uint64_t c = 0; c < cols; ++c) {
      const double v = x[c];
      sums->signal += v * v;
      sums->noise += (v - dq[c]) * (v - dq[c]);
    }
    sums->count += cols;
  }
}

}  // namespace quench
