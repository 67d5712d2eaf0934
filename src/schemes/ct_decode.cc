#include "schemes/ct_decode.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "schemes/byte_decode.h"
#include "schemes/float_formats.h"
#include "schemes/nibble_lookup.h"
#include "schemes/packed_fields.h"

namespace quench {
namespace {

// The arithmetic dtype of a product: _dequantize computes x_q.to(scale.dtype) * scale.
enum class Domain { kBF16, kF16, kF32 };

// E2M1 magnitudes (compressed-tensors' kE2M1ToFloat); bit 3 is the sign.
constexpr float kE2M1[8] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f};

float RoundTo(Domain d, float v) {
  switch (d) {
    case Domain::kBF16: return BF16ToF32(F32ToBF16(v));
    case Domain::kF16: return F16ToF32(F32ToF16(v));
    case Domain::kF32: return v;
  }
  return v;
}

// RNE f32 -> bf16 bits, NaN to 0x7FC0 (float_formats.h's F32ToBF16, inlined for the loop).
inline uint16_t Bf16Rne(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// One row of stored codes as the values x_q.to(dtype) holds.
void DecodeCodes(const CtWeight& w, const uint8_t* row, uint64_t words, int b, float* q) {
  const uint64_t cols = w.cols;
  switch (w.format) {
    case CtFormat::kPack:
      if (b == 4) {  // the bit stream's nibbles in byte order (little-endian words)
        for (uint64_t c = 0; c < cols; ++c) {
          q[c] = static_cast<float>(static_cast<int>((row[c / 2] >> (4 * (c & 1))) & 0xF) - 8);
        }
      } else if (b == 8) {
        for (uint64_t c = 0; c < cols; ++c)
          q[c] = static_cast<float>(static_cast<int>(row[c]) - 128);
      } else {
        for (uint64_t c = 0; c < cols; ++c) {
          q[c] = static_cast<float>(static_cast<int32_t>(PackedField(row, words, c * b, b)) -
                                    (1 << (b - 1)));
        }
      }
      return;
    case CtFormat::kNvfp4:
    case CtFormat::kMxfp4:
      for (uint64_t c = 0; c < cols; ++c) {
        const uint8_t nib = (c & 1) ? row[c / 2] >> 4 : row[c / 2] & 0x0F;
        q[c] = (nib & 8) ? -kE2M1[nib & 7] : kE2M1[nib & 7];
      }
      return;
    default:
      if (w.is_float) {
        const float* e4m3 = E4M3Values();
        for (uint64_t c = 0; c < cols; ++c) q[c] = e4m3[row[c]];
      } else {
        for (uint64_t c = 0; c < cols; ++c) q[c] = static_cast<float>(static_cast<int8_t>(row[c]));
      }
  }
}

std::string At(uint64_t flat, uint64_t cols) {
  return "[" + std::to_string(flat / cols) + ", " + std::to_string(flat % cols) + "]";
}

// A decoding failure: `t` holds something the reference cannot decode `weight` from.
Status Bad(const CtTensor& t, const std::string& weight, const std::string& what) {
  return Error(ErrorCode::kInvalidInput,
               "tensor '" + t.name + "' " + what + "; '" + weight + "' cannot be decoded");
}

// What DecodeRows reads beside the codes of rows [r0, r1).
struct RowParams {
  uint64_t sr0 = 0;           // the first scale row the rows use
  std::vector<float> scales;  // their scale rows, as the values the products use
  Domain dom = Domain::kF32;  // the dtype the products are computed in
  std::vector<float> zps;     // (r1 - r0) x scale_cols zero points; empty when symmetric
  std::vector<int32_t> gidx;  // each column's scale column; empty without activation order
};

// Scale rows of rows [r0, r1), as the values the products use.
Status ReadScales(const CtWeight& w, const CtReader& read, const std::string& weight, uint64_t r0,
                  uint64_t r1, RowParams* p) {
  const uint64_t sc = w.scale_cols;
  const uint64_t sr0 = r0 / w.scale_row_span, sr1 = (r1 - 1) / w.scale_row_span + 1;
  const uint64_t n_scales = (sr1 - sr0) * sc;
  const uint64_t es = DTypeBits(w.scale.dtype) / 8;
  std::vector<uint8_t> raw(n_scales * es);
  QUENCH_RETURN_IF_ERROR(read(w.scale, sr0 * sc * es, raw.size(), raw.data()));
  float gs = 1.f;
  if (w.format == CtFormat::kNvfp4) {
    QUENCH_RETURN_IF_ERROR(read(w.global_scale, 0, 4, reinterpret_cast<uint8_t*>(&gs)));
    if (!(gs > 0.f) || std::isinf(gs)) {
      return Bad(w.global_scale, weight,
                 "holds " + std::to_string(gs) + " (a global scale must be finite and positive)");
    }
  }
  p->sr0 = sr0;
  p->dom = Domain::kF32;
  p->scales.resize(n_scales);
  for (uint64_t i = 0; i < n_scales; ++i) {
    const uint8_t* e = raw.data() + i * es;
    float s = 0.f;
    switch (w.format) {
      case CtFormat::kNvfp4:
        // scale.to(bf16) is exact; / global_scale promotes to f32 (a [1] tensor).
        s = E4M3ToF32(e[0]);
        if (std::isnan(s) || std::signbit(s)) {
          return Bad(w.scale, weight,
                     "holds a " + std::string(std::isnan(s) ? "NaN" : "negative") + " scale at " +
                         At((sr0 * sc) + i, sc));
        }
        s = s / gs;
        p->dom = Domain::kF32;
        break;
      case CtFormat::kMxfp4:
      case CtFormat::kMxfp8:
        // decompress_mx_scale: 2.0 ** (e - 127) in bf16 (every such power is a bf16 value);
        // 0xFF is E8M0's NaN (the reference computes 2^128 = Inf from it).
        if (e[0] == 0xFF) {
          return Bad(w.scale, weight, "holds the E8M0 NaN 0xFF at " + At(sr0 * sc + i, sc));
        }
        s = std::ldexp(1.f, static_cast<int>(e[0]) - 127);
        p->dom = Domain::kBF16;
        break;
      default:
        s = ElementToF32(e, w.scale.dtype, 0);
        p->dom = w.scale.dtype == DType::kBF16  ? Domain::kBF16
                 : w.scale.dtype == DType::kF16 ? Domain::kF16
                                                : Domain::kF32;
        if (!std::isfinite(s) || s < 0.f) {
          return Bad(w.scale, weight,
                     "holds " +
                         std::string(std::isnan(s)   ? "a NaN"
                                     : std::isinf(s) ? "an infinite"
                                                     : "a negative") +
                         " scale at " + At(sr0 * sc + i, sc) +
                         " (a scale must be finite and not negative)");
        }
    }
    p->scales[i] = s;
  }
  return Status::Ok();
}

// Zero points of rows [r0, r1) (quotient units), one per scale; none where symmetric.
Status ReadZeroPoints(const CtWeight& w, const CtReader& read, uint64_t r0, uint64_t r1,
                      RowParams* p) {
  if (w.symmetric) return Status::Ok();
  const uint64_t sc = w.scale_cols;
  p->zps.resize((r1 - r0) * sc);
  const bool packed = w.zero_point.dtype == DType::kI32 && w.format == CtFormat::kPack &&
                      w.strategy != CtStrategy::kTensor;
  if (packed) {
    // pack_to_int32(zp, bits, packed_dim=0): column g's rows are a bit stream down word
    // rows; row r's field starts at bit r * bits.
    const int b = w.num_bits;
    const uint64_t total_words = w.zero_point.shape[0];
    const uint64_t wr0 = r0 * b / 32, wr1 = std::min(total_words, (r1 * b + 31) / 32);
    std::vector<uint8_t> zw((wr1 - wr0) * sc * 4);
    QUENCH_RETURN_IF_ERROR(read(w.zero_point, wr0 * sc * 4, zw.size(), zw.data()));
    for (uint64_t g = 0; g < sc; ++g) {
      for (uint64_t r = r0; r < r1; ++r) {
        const uint32_t u = PackedColumnField(zw.data(), sc, wr1 - wr0, r * b - wr0 * 32, g, b);
        p->zps[(r - r0) * sc + g] = static_cast<float>(static_cast<int32_t>(u) - (1 << (b - 1)));
      }
    }
    return Status::Ok();
  }
  const uint64_t zs = DTypeBits(w.zero_point.dtype) / 8;
  std::vector<uint8_t> zr(p->scales.size() * zs);
  QUENCH_RETURN_IF_ERROR(read(w.zero_point, p->sr0 * sc * zs, zr.size(), zr.data()));
  for (uint64_t r = r0; r < r1; ++r) {
    for (uint64_t g = 0; g < sc; ++g) {
      const uint64_t i = (r / w.scale_row_span - p->sr0) * sc + g;
      float z = 0.f;
      if (w.zero_point.dtype == DType::kI8) {
        z = static_cast<float>(static_cast<int8_t>(zr[i]));
      } else if (w.zero_point.dtype == DType::kI32) {
        int32_t v;
        std::memcpy(&v, &zr[i * 4], 4);
        z = static_cast<float>(v);
      } else {
        z = ElementToF32(zr.data(), w.zero_point.dtype, i);
      }
      p->zps[(r - r0) * sc + g] = z;
    }
  }
  return Status::Ok();
}

// Activation order: column c's scale is g_idx[c]'s, not c / group_size's.
Status ReadGIdx(const CtWeight& w, const CtReader& read, const std::string& weight, RowParams* p) {
  if (!w.g_idx.present) return Status::Ok();
  const uint64_t cols = w.cols, sc = w.scale_cols;
  p->gidx.resize(cols);
  QUENCH_RETURN_IF_ERROR(read(w.g_idx, 0, cols * 4, reinterpret_cast<uint8_t*>(p->gidx.data())));
  for (uint64_t c = 0; c < cols; ++c) {
    if (p->gidx[c] < 0 || static_cast<uint64_t>(p->gidx[c]) >= sc) {
      return Bad(w.g_idx, weight,
                 "holds " + std::to_string(p->gidx[c]) + " at [" + std::to_string(c) +
                     "], outside the " + std::to_string(sc) + " scale columns");
    }
  }
  return Status::Ok();
}

// Each column's scale column (strategy, or g_idx under activation order).
void ScaleColumns(const CtWeight& w, const std::vector<int32_t>& gidx,
                  std::vector<uint32_t>* gcol) {
  gcol->resize(w.cols);
  for (uint64_t c = 0; c < w.cols; ++c) {
    switch (w.strategy) {
      case CtStrategy::kTensor:
      case CtStrategy::kChannel:
        (*gcol)[c] = 0;
        break;
      case CtStrategy::kGroup:
      case CtStrategy::kTensorGroup:
        (*gcol)[c] = static_cast<uint32_t>(gidx.empty() ? c / w.group_size : gidx[c]);
        break;
      case CtStrategy::kBlock:
        (*gcol)[c] = static_cast<uint32_t>(c / w.block_cols);
        break;
    }
  }
}

// The columns that share a scale column, one after another, without g_idx: the group, the
// block's width, or the whole row.
uint64_t ScaleRun(const CtWeight& w) {
  return w.strategy == CtStrategy::kGroup || w.strategy == CtStrategy::kTensorGroup ? w.group_size
         : w.strategy == CtStrategy::kBlock                                         ? w.block_cols
                                                                                    : w.cols;
}

// The decoded value of code value q under scale s and zero point *z (null: none).
struct Product {
  bool plain;  // no zero points and no F16 scales: one rounding of the f32 product
  Domain dom;
  uint16_t operator()(float q, float s, const float* z) const {
    // x_q.to(dtype) * scale rounded once to the scale's dtype, then to BF16: for BF16 and
    // F32 scales that is one RNE to BF16 of the f32 product (the BF16 one is exact in f32).
    if (plain) return Bf16Rne(q * s);
    // x_q.to(scale dtype) is exact for every code; (q - zp) is exact for in-range points.
    float a = q;
    if (z != nullptr) a = RoundTo(dom, a - *z);
    return F32ToBF16(RoundTo(dom, a * s));
  }
};

// tables: int4 pack-quantized rows without g_idx go through 16-entry tables per scale
// column (nibble_lookup.h) built by the same Product as the per-element loop.
Status DecodeRows(const CtWeight& w, const CtReader& read, const std::string& weight,
                  const uint8_t* codes, uint64_t r0, uint64_t r1, uint8_t* out, bool* finite,
                  bool tables) {
  *finite = true;
  if (r1 <= r0) return Status::Ok();
  const uint64_t cols = w.cols, sc = w.scale_cols;
  RowParams p;
  QUENCH_RETURN_IF_ERROR(ReadScales(w, read, weight, r0, r1, &p));
  QUENCH_RETURN_IF_ERROR(ReadZeroPoints(w, read, r0, r1, &p));
  QUENCH_RETURN_IF_ERROR(ReadGIdx(w, read, weight, &p));
  thread_local std::vector<uint32_t> gcol;
  thread_local std::vector<float> q;
  ScaleColumns(w, p.gidx, &gcol);
  q.resize(cols);
  const int b = w.num_bits;
  const uint64_t words = w.code_row_bytes / 4;
  const Product value{p.zps.empty() && p.dom != Domain::kF16, p.dom};
  // Runs of columns sharing a scale column, for the tables (no g_idx: run c / run is c's).
  uint64_t run = 0;
  if (tables && w.format == CtFormat::kPack && b == 4 && p.gidx.empty() && cols % 2 == 0) {
    run = ScaleRun(w);
    if (run == 0 || run % 2 != 0 || (cols + run - 1) / run > sc) run = 0;
  }
  thread_local std::vector<uint8_t> tabs;
  if (run != 0) tabs.resize(32 * ((cols + run - 1) / run));
  // Byte codes (int8, 8-bit packed, E4M3) with plain products: ScaleBytes, the loop's
  // arithmetic in vectors over runs of columns that share a scale (no g_idx).
  uint64_t byte_run = 0;
  ByteCode kind = ByteCode::kInt8;
  const bool byte_codes =
      (w.format == CtFormat::kPack && b == 8) ||
      (w.format != CtFormat::kPack && w.format != CtFormat::kNvfp4 && w.format != CtFormat::kMxfp4);
  if (tables && value.plain && p.gidx.empty() && byte_codes) {
    kind = w.format == CtFormat::kPack ? ByteCode::kOffset128
           : w.is_float                ? ByteCode::kE4M3
                                       : ByteCode::kInt8;
    byte_run = ScaleRun(w);
    if (byte_run == 0 || (cols + byte_run - 1) / byte_run > sc) byte_run = 0;
  }
  bool all_finite = true;
  for (uint64_t r = r0; r < r1; ++r) {
    const uint8_t* row = codes + (r - r0) * w.code_row_bytes;
    const float* srow = p.scales.data() + (r / w.scale_row_span - p.sr0) * sc;
    const float* zrow = p.zps.empty() ? nullptr : p.zps.data() + (r - r0) * sc;
    uint8_t* o = out + (r - r0) * cols * 2;
    if (byte_run != 0) {
      all_finite &= ScaleBytes(row, cols, byte_run, srow, kind, o);
      continue;
    }
    if (run != 0) {
      // Each run's 16 results, as the loop below computes them; a row with a non-finite
      // entry anywhere goes through that loop (*finite counts only the codes present).
      bool entries_finite = true;
      for (uint64_t k = 0; k < tabs.size() / 32; ++k) {
        for (uint32_t n = 0; n < 16; ++n) {
          const uint16_t h = value(static_cast<float>(static_cast<int>(n) - 8), srow[k],
                                   zrow != nullptr ? zrow + k : nullptr);
          entries_finite &= (h & 0x7F80u) != 0x7F80u;
          tabs[32 * k + n] = static_cast<uint8_t>(h);
          tabs[32 * k + 16 + n] = static_cast<uint8_t>(h >> 8);
        }
      }
      if (entries_finite) {
        LookupNibbles(row, cols, run, tabs.data(), o);
        continue;
      }
    }
    DecodeCodes(w, row, words, b, q.data());
    for (uint64_t c = 0; c < cols; ++c) {
      const uint16_t h = value(q[c], srow[gcol[c]], zrow != nullptr ? zrow + gcol[c] : nullptr);
      all_finite &= (h & 0x7F80u) != 0x7F80u;
      std::memcpy(o + 2 * c, &h, 2);
    }
  }
  *finite = all_finite;
  return Status::Ok();
}

}  // namespace

Status DecodeCtWeightRows(const CtWeight& w, const CtReader& read, const std::string& weight,
                          const uint8_t* codes, uint64_t r0, uint64_t r1, uint8_t* out,
                          bool* finite) {
  return DecodeRows(w, read, weight, codes, r0, r1, out, finite, /*tables=*/true);
}

Status DecodeCtWeightRowsScalar(const CtWeight& w, const CtReader& read,
                                const std::string& weight, const uint8_t* codes, uint64_t r0,
                                uint64_t r1, uint8_t* out, bool* finite) {
  return DecodeRows(w, read, weight, codes, r0, r1, out, finite, /*tables=*/false);
}

}  // namespace quench
