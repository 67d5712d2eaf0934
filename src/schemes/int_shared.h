// Scalar helpers of the integer schemes' definition (src/schemes/int.cc has the rules and their
// sources): the scale and zero point of a group, one element's quantization, the scale's
// encoding, the layout and the packing. Shared by the int kernels (compiled once, outside the
// per-target namespaces) and by calibration (src/calib/gptq.cc), which quantizes with the
// same scales and writes the same bytes.
#ifndef QUENCH_SCHEMES_INT_SHARED_H_
#define QUENCH_SCHEMES_INT_SHARED_H_

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "schemes/chunk.h"
#include "schemes/float_formats.h"

namespace quench::intq::internal {

inline size_t CeilDiv(size_t a, size_t b) { return (a + b - 1) / b; }

// Rounds an f32 value to the nearest value of dtype d, ties to even (RNE_D); NaN stays NaN.
// The bf16 case is F32ToBF16 inlined (this runs once per group in the kernels): add 0x7FFF
// plus the lowest kept bit, drop the low 16 bits.
inline float RoundToDType(float f, DType d) {
  switch (d) {
    case DType::kBF16: {
      if (std::isnan(f)) return f;
      const uint32_t bits = std::bit_cast<uint32_t>(f);
      return std::bit_cast<float>((bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u);
    }
    case DType::kF16: return F16ToF32(F32ToF16(f));
    default: return f;
  }
}

// torch.round: to the nearest integer, ties to even (rint in the default rounding mode).
inline float RoundHalfEven(float v) { return std::rint(v); }

// torch.finfo(D).eps: the zero-scale replacement of calculate_qparams (_get_dtype_eps).
inline float ScaleEps(DType d) {
  switch (d) {
    case DType::kBF16: return 0.0078125f;     // 2^-7
    case DType::kF16: return 0.0009765625f;   // 2^-10
    default: return 1.1920928955078125e-07f;  // 2^-23
  }
}

// Writes `scale` (already a value of D) in D's little-endian encoding.
inline void StoreScale(uint8_t* dst, float scale, DType d) {
  if (d == DType::kF32) {
    const uint32_t bits = std::bit_cast<uint32_t>(scale);
    std::memcpy(dst, &bits, 4);
  } else {
    // A bf16 value's encoding is the upper half of its f32 bits (no rounding left to do).
    const uint16_t bits = d == DType::kBF16
                              ? static_cast<uint16_t>(std::bit_cast<uint32_t>(scale) >> 16)
                              : F32ToF16(scale);
    std::memcpy(dst, &bits, 2);
  }
}

// The validated shape of a chunk's quantization.
struct Layout {
  int bits;
  int qmin;              // -2^(b-1)        (calculate_range: -bit_range / 2)
  int qmax;              // 2^(b-1) - 1     (bit_range / 2 - 1)
  size_t group;          // columns per group (cols for the channel strategy)
  size_t n_groups;       // scales per row
  size_t words_per_row;  // packed int32 words per row: ceil(cols * b / 32)
};

// False for parameters the reference refuses (bits outside 2..8, a group size that does not
// divide the columns: flatten_for_calibration) or an unsupported dtype.
inline bool MakeLayout(const WeightChunk& in, Layout* l) {
  const int b = in.params.bits;
  if (b < 2 || b > 8 || in.cols == 0) return false;
  if (in.dtype != DType::kBF16 && in.dtype != DType::kF16 && in.dtype != DType::kF32) {
    return false;
  }
  const int g = in.params.group_size;
  if (g > 0 && in.cols % static_cast<size_t>(g) != 0) return false;
  l->bits = b;
  l->qmin = -(1 << (b - 1));
  l->qmax = (1 << (b - 1)) - 1;
  l->group = g > 0 ? static_cast<size_t>(g) : in.cols;
  l->n_groups = in.cols / l->group;
  l->words_per_row = CeilDiv(in.cols * static_cast<size_t>(b), 32);
  return true;
}

struct GroupParams {
  float scale;  // a value of D, > 0 (or +Inf when mx - mn overflows D)
  int zp;       // int8 zero point (0 when symmetric)
};

// calculate_qparams for one group from its observed min and max (values of D).
inline GroupParams ComputeParams(float min_val, float max_val, const Layout& l, bool symmetric,
                                 DType d) {
  // Step 0: mn = min(min_vals, 0), mx = max(max_vals, 0): 0 is always representable.
  const float mn = std::min(min_val, 0.0f);
  const float mx = std::max(max_val, 0.0f);
  // bit_range = qmax - qmin as an f32 tensor, then .to(D): 2^b - 1 <= 255 is exact in D.
  const float bit_range = static_cast<float>(l.qmax - l.qmin);
  GroupParams p;
  if (symmetric) {
    // max_val_pos = max(|mn|, |mx|) (exact); scale = max_val_pos / (bit_range.to(D) / 2):
    // the divisor (2^b - 1) / 2 (7.5 for int4, 127.5 for int8) is exact in D, the quotient
    // is taken in f32 and rounded once to D.
    const float amax = std::max(-mn, mx);
    p.scale = RoundToDType(amax / (bit_range / 2.0f), d);
    p.zp = 0;
  } else {
    // scales = (max_vals - min_vals) / bit_range.to(D): two D operations, two roundings.
    const float scale = RoundToDType(RoundToDType(mx - mn, d) / bit_range, d);
    // zero_points = bit_min - (min_vals / scales), with the UNGUARDED scale (the zero guard
    // comes later): an all-zero group gives 0/0 = NaN; mn < 0 over a scale that underflowed
    // to 0 gives qmin + Inf = +Inf.
    float zp = RoundToDType(static_cast<float>(l.qmin) - RoundToDType(mn / scale, d), d);
    // torch.clamp(zero_points, bit_min, bit_max): NaN propagates.
    if (!std::isnan(zp)) zp = std::min(std::max(zp, static_cast<float>(l.qmin)),
                                       static_cast<float>(l.qmax));
    // round_to_quantized_type_dtype(zp, int8): clamp to [-128, 127] (a no-op here),
    // torch.round (half to even), .to(int8). torch
    // 2.13 on x86 CPU casts NaN to 0 (checked against the reference).
    p.zp = std::isnan(zp) ? 0 : static_cast<int>(RoundHalfEven(zp));
    p.scale = scale;
  }
  // Step 5: only scales exactly 0 become eps(D) (all-zero groups, or amax / range so small
  // that the quotient underflows to 0 in D).
  if (p.scale == 0.0f) p.scale = ScaleEps(d);
  return p;
}

// _quantize for one element: scaled = x / scale in D; scaled += zp.to(D) in D (asymmetric);
// clamp to [qmin, qmax] (f32 0-dim bounds, result stays in D); torch.round (half to even);
// .to(int8). x is finite and the scale > 0, so no NaN can arise.
inline int QuantizeValue(float x, const GroupParams& p, const Layout& l, bool symmetric,
                         DType d) {
  float v = RoundToDType(x / p.scale, d);
  if (!symmetric) v = RoundToDType(v + static_cast<float>(p.zp), d);
  v = std::min(std::max(v, static_cast<float>(l.qmin)), static_cast<float>(l.qmax));
  return static_cast<int>(RoundHalfEven(v));
}

// pack_to_int32 for one row of n offset values u (0 <= u < 2^bits), as its definition reads:
// element i goes to bits [i*b, i*b + b) of the row's word stream, a part past bit 31 of a
// word continuing in the low bits of the next one. Writes ceil(n*b/32) little-endian words.
inline void PackRowScalar(const uint8_t* u, size_t n, int bits, uint8_t* dst) {
  const size_t n_words = CeilDiv(n * static_cast<size_t>(bits), 32);
  std::vector<uint32_t> words(n_words, 0u);
  for (size_t i = 0; i < n; ++i) {
    const size_t start = i * static_cast<size_t>(bits);
    const size_t w = start / 32;
    const uint32_t off = static_cast<uint32_t>(start % 32);
    words[w] |= static_cast<uint32_t>(u[i]) << off;
    if (off + static_cast<uint32_t>(bits) > 32) {
      words[w + 1] |= static_cast<uint32_t>(u[i]) >> (32 - off);
    }
  }
  std::memcpy(dst, words.data(), n_words * 4);  // little-endian host (as the whole project)
}

// The packed zero points of a chunk: zp is [rows, n_groups] int8; each column g, offset by
// 2^(b-1), is packed down the rows (pack_to_int32 with packed_dim=0: transpose, pack, transpose
// back) into words [ceil(rows*b/32), n_groups] at dst.
inline void PackZeroPoints(const int8_t* zp, size_t rows, size_t n_groups, int bits,
                           uint8_t* dst) {
  const size_t n_words = CeilDiv(rows * static_cast<size_t>(bits), 32);
  std::vector<uint8_t> column(rows);
  std::vector<uint8_t> packed(n_words * 4);
  for (size_t g = 0; g < n_groups; ++g) {
    for (size_t r = 0; r < rows; ++r) {
      column[r] = static_cast<uint8_t>(zp[r * n_groups + g] + (1 << (bits - 1)));
    }
    PackRowScalar(column.data(), rows, bits, packed.data());
    for (size_t w = 0; w < n_words; ++w) {
      std::memcpy(dst + (w * n_groups + g) * 4, packed.data() + w * 4, 4);
    }
  }
}

}  // namespace quench::intq::internal
#endif  // QUENCH_SCHEMES_INT_SHARED_H_
