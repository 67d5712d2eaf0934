// Decoding of stored codes, scales and zero points for every format verify knows; the layouts
// are compressed-tensors' (docs/reference-notes.md sections 3, 10.4, 11.1 and 12).
#include "verify/decode.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "schemes/float_formats.h"
#include "schemes/packed_fields.h"
#include "verify/layouts.h"

namespace quench::verify {
namespace {

constexpr double kE2M1[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};

// Largest gap between a grid value and its neighbours: values that round to it lie within
// half of it.
double GapE2M1(int idx) {
  const double up = idx < 7 ? kE2M1[idx + 1] - kE2M1[idx] : 0;
  const double down = idx > 0 ? kE2M1[idx] - kE2M1[idx - 1] : 0;
  return std::max(up, down);
}
double GapE4M3(uint8_t code) {
  const uint8_t m = code & 0x7F;
  const double v = E4M3ToF32(m);
  const double up = m < 0x7E ? E4M3ToF32(static_cast<uint8_t>(m + 1)) - v : 0;
  const double down = m > 0 ? v - E4M3ToF32(static_cast<uint8_t>(m - 1)) : 0;
  return std::max(up, down);
}

// The scale stored at flat index idx, as the dequantization uses it.
double ScaleValue(const ModuleView& v, uint64_t idx) {
  const Group& g = *v.g;
  if (g.format == Format::kMxfp4 || g.format == Format::kMxfp8) {
    const int e = v.scale[idx];
    return std::ldexp(1.0, e - 127);
  }
  if (g.format == Format::kNvfp4) {
    const float s = E4M3ToF32(v.scale[idx]);
    return static_cast<float>(s / v.gs);  // fp32, as compressed-tensors divides
  }
  return LoadFloat(v.scale, v.sdt, idx);
}

// Flat index of the scale that covers element [r, c], for a group whose strategy is known
// (ScaleLayout, made once per row: the strategy's string compared once, not per element).
// Only decodable groups get here (Group::decodable): a block strategy has both sizes, and
// NVFP4 and MX name their formats' own strategies (a "block" NVFP4 config once divided by a
// block size of 0 here, or read past the scales).
struct ScaleLayout {
  explicit ScaleLayout(const ModuleView& v)
      : v(v), tensor(v.g->strategy == "tensor"), block(v.g->strategy == "block"),
        cols(v.sshape.size() == 2 ? v.sshape[1] : 1) {}
  uint64_t Index(uint64_t r, uint64_t c) const {
    const Group& g = *v.g;
    if (tensor) return 0;
    if (block) return (r / g.bh) * v.sshape[1] + c / g.bw;
    if (g.format == Format::kNvfp4) return r * (v.in / 16) + c / 16;
    if (g.format == Format::kMxfp4 || g.format == Format::kMxfp8) return r * (v.in / 32) + c / 32;
    if (cols == 1) return r;
    return r * cols + c / g.group_size;
  }
  const ModuleView& v;
  const bool tensor, block;
  const uint64_t cols;
};

// GapE4M3 of every valid code, made once (with E4M3Values for the values: the per-element
// calls were most of verify's time on many small FP8 tensors).
const double* E4M3Gaps() {
  static const std::array<double, 256> gaps = [] {
    std::array<double, 256> g{};
    for (int c = 0; c < 256; ++c) {
      const uint8_t code = static_cast<uint8_t>(c);
      g[static_cast<size_t>(c)] = (code & 0x7F) == 0x7F ? 0 : GapE4M3(code);
    }
    return g;
  }();
  return gaps.data();
}

// Zero point of row r, scale column sc (quotient units).
double ZeroPoint(const ModuleView& v, uint64_t r, uint64_t sc) {
  if (v.zp == nullptr) return 0;
  const Group& g = *v.g;
  const uint64_t cols = v.sshape.back();
  if (g.format == Format::kPack && v.zdt == DType::kI32) {
    // Packed along dim 0: row r's field sits in word row r * b / 32 of column sc.
    const int b = g.bits;
    const uint64_t zrows = CeilDiv(v.out * static_cast<uint64_t>(b), 32);
    const uint32_t u = PackedColumnField(v.zp, cols, zrows, r * static_cast<uint64_t>(b), sc, b);
    return static_cast<double>(u) - std::ldexp(1.0, b - 1);
  }
  if (v.zdt == DType::kF8E4M3) return E4M3ToF32(v.zp[sc + (v.sshape.size() == 2 ? r * cols : 0)]);
  const uint64_t idx = g.strategy == "tensor" ? 0 : r * cols + sc;
  return static_cast<double>(LoadInt(v.zp, v.zdt, idx));
}

// E4M3 codes (FP8 and MXFP8 weights); 0x7F / 0xFF are NaN, which no quantizer writes.
void DecodeE4M3Row(const uint8_t* row, uint64_t in, RowBuffers& b) {
  const float* values = E4M3Values();
  const double* gaps = E4M3Gaps();
  for (uint64_t c = 0; c < in; ++c) {
    const uint8_t code = row[c];
    if ((code & 0x7F) == 0x7F) {
      b.bad_code[c] = 1;
      b.q[c] = 0;
      b.gap[c] = 0;
    } else {
      b.q[c] = values[code];
      b.gap[c] = gaps[code];
    }
  }
}

// int8 codes, which must lie on the b-bit grid [qmin, qmax].
void DecodeInt8Row(const ModuleView& v, const uint8_t* row, RowBuffers& b) {
  for (uint64_t c = 0; c < v.in; ++c) {
    const double q = static_cast<int8_t>(row[c]);
    if (q < v.qmin || q > v.qmax) b.bad_code[c] = 1;
    b.q[c] = q;
    b.gap[c] = 1;
  }
}

// pack-quantized: b-bit fields of int32 words, offset by 2^(b-1).
void DecodePackedIntRow(const ModuleView& v, uint64_t r, RowBuffers& b) {
  const int bits = v.g->bits;
  const uint64_t words = CeilDiv(v.in * static_cast<uint64_t>(bits), 32);
  const uint8_t* row = v.w + r * words * 4;
  const double off = std::ldexp(1.0, bits - 1);
  for (uint64_t c = 0; c < v.in; ++c) {
    b.q[c] =
        static_cast<double>(PackedField(row, words, c * static_cast<uint64_t>(bits), bits)) - off;
    b.gap[c] = 1;
  }
}

// FP4 E2M1 nibbles, even column in the low nibble; bit 3 is the sign.
void DecodeE2M1Row(const uint8_t* row, uint64_t in, RowBuffers& b) {
  for (uint64_t c = 0; c < in; ++c) {
    const uint8_t nib = (c & 1) ? (row[c / 2] >> 4) : (row[c / 2] & 0xF);
    const int idx = nib & 7;
    b.q[c] = (nib & 8) ? -kE2M1[idx] : kE2M1[idx];
    b.gap[c] = GapE2M1(idx);
  }
}

// Scale and zero point of every column of row r (looked up once per scale group).
void DecodeRowScales(const ModuleView& v, uint64_t r, RowBuffers& b) {
  const ScaleLayout layout(v);
  uint64_t last_idx = ~0ull;
  double s = 0, z = 0;
  for (uint64_t c = 0; c < v.in; ++c) {
    const uint64_t idx = layout.Index(r, c);
    if (idx != last_idx) {
      s = ScaleValue(v, idx);
      const uint64_t sc = v.sshape.size() == 2 ? idx % v.sshape[1] : 0;
      z = ZeroPoint(v, r, sc);
      last_idx = idx;
    }
    b.s[c] = s;
    b.zp[c] = z;
  }
}

}  // namespace

double LoadFloat(const uint8_t* p, DType d, uint64_t i) {
  switch (d) {
    case DType::kBF16: {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      return BF16ToF32(h);
    }
    case DType::kF16: {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      return F16ToF32(h);
    }
    case DType::kF32: {
      float f;
      std::memcpy(&f, p + 4 * i, 4);
      return f;
    }
    case DType::kF8E4M3: return E4M3ToF32(p[i]);
    default: return std::numeric_limits<double>::quiet_NaN();
  }
}

int64_t LoadInt(const uint8_t* p, DType d, uint64_t i) {
  switch (d) {
    case DType::kI8: return static_cast<int8_t>(p[i]);
    case DType::kU8: return p[i];
    case DType::kI32: {
      int32_t v;
      std::memcpy(&v, p + 4 * i, 4);
      return v;
    }
    case DType::kI64: {
      int64_t v;
      std::memcpy(&v, p + 8 * i, 8);
      return v;
    }
    default: return 0;
  }
}

double QuotientRounding(DType d) {
  switch (d) {
    case DType::kBF16: return std::ldexp(1.0, -8) + std::ldexp(1.0, -24);
    case DType::kF16: return std::ldexp(1.0, -11) + std::ldexp(1.0, -24);
    default: return std::ldexp(1.0, -24);
  }
}

void DecodeRow(const ModuleView& v, uint64_t r, RowBuffers& b) {
  const uint64_t in = v.in;
  b.q.resize(in);
  b.gap.resize(in);
  b.s.resize(in);
  b.zp.resize(in);
  b.bad_code.assign(in, 0);
  switch (v.g->format) {
    case Format::kFloat:
    case Format::kMxfp8: DecodeE4M3Row(v.w + r * in, in, b); break;
    case Format::kInt: DecodeInt8Row(v, v.w + r * in, b); break;
    case Format::kPack: DecodePackedIntRow(v, r, b); break;
    case Format::kNvfp4:
    case Format::kMxfp4: DecodeE2M1Row(v.w + r * (in / 2), in, b); break;
    default: break;
  }
  DecodeRowScales(v, r, b);
}

}  // namespace quench::verify
