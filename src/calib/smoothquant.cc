// SmoothQuant's scales and the transforms that fold them in (see smoothquant.h).
#include "calib/smoothquant.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "schemes/float_formats.h"
#include "schemes/int_shared.h"

namespace quench::calib {

float LoadElement(const uint8_t* p, DType dtype, uint64_t i) {
  return ElementToF32(p, dtype, static_cast<size_t>(i));
}

float RoundTo(DType dtype, float v) {
  switch (dtype) {
    case DType::kBF16: return BF16ToF32(F32ToBF16(v));
    case DType::kF16: return F16ToF32(F32ToF16(v));
    default: return v;
  }
}

void StoreElement(uint8_t* p, DType dtype, uint64_t i, float v) {
  if (dtype == DType::kF32) {
    std::memcpy(p + 4 * i, &v, 4);
    return;
  }
  const uint16_t h = dtype == DType::kBF16 ? F32ToBF16(v) : F32ToF16(v);
  std::memcpy(p + 2 * i, &h, 2);
}

namespace {

// Elements loaded, rounded and stored without a call per element (the transform runs on every
// element of every smoothed tensor): BF16 and F32 inline, F16 through float_formats. The same
// values as LoadElement / RoundTo / StoreElement (a NaN is stored as c10's 0x7FC0 either way).
inline float Load(const uint8_t* p, DType d, uint64_t k) {
  if (d == DType::kBF16) {
    uint16_t h;
    std::memcpy(&h, p + 2 * k, 2);
    return std::bit_cast<float>(uint32_t{h} << 16);
  }
  if (d == DType::kF32) {
    float f;
    std::memcpy(&f, p + 4 * k, 4);
    return f;
  }
  return LoadElement(p, d, k);
}

inline void Store(uint8_t* p, DType d, uint64_t k, float v) {
  if (d == DType::kBF16) {  // v is already a BF16 value (or NaN): its top half, exactly
    const uint16_t h = v != v ? uint16_t{0x7FC0}
                              : static_cast<uint16_t>(std::bit_cast<uint32_t>(v) >> 16);
    std::memcpy(p + 2 * k, &h, 2);
    return;
  }
  StoreElement(p, d, k, v);
}

}  // namespace


namespace {

// ColumnAbsMax for BF16 rows: an integer max of the bits without the sign, per column
// (finite bf16 patterns order like their magnitudes), in a loop without branches, compiled
// per ISA. `m` holds each column's max pattern; a column at or past 0x7F80 saw Inf or NaN.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void ColumnAbsMaxBf16(const uint16_t* rows, uint64_t nrows, uint64_t cols, uint16_t* m) {
  for (uint64_t r = 0; r < nrows; ++r) {
    const uint16_t* p = rows + r * cols;
    for (uint64_t c = 0; c < cols; ++c) m[c] = std::max<uint16_t>(m[c], p[c] & 0x7FFF);
  }
}

}  // namespace

bool ColumnAbsMax(const uint8_t* rows, DType dtype, uint64_t nrows, uint64_t cols, float* acc) {
  // BF16 with every running max a BF16 value (as they are when all layers are BF16): the
  // same maxima from the bit patterns.
  if (dtype == DType::kBF16 && reinterpret_cast<uintptr_t>(rows) % 2 == 0 &&
      std::all_of(acc, acc + cols, [](float v) {
        return v >= 0.f && (std::bit_cast<uint32_t>(v) & 0xFFFFu) == 0;
      })) {
    std::vector<uint16_t> m(cols);
    for (uint64_t c = 0; c < cols; ++c) {
      m[c] = static_cast<uint16_t>(std::bit_cast<uint32_t>(acc[c]) >> 16);
    }
    ColumnAbsMaxBf16(reinterpret_cast<const uint16_t*>(rows), nrows, cols, m.data());
    for (uint64_t c = 0; c < cols; ++c) {
      if (m[c] >= 0x7F80) return false;
      acc[c] = std::bit_cast<float>(uint32_t{m[c]} << 16);
    }
    return true;
  }
  for (uint64_t r = 0; r < nrows; ++r) {
    for (uint64_t c = 0; c < cols; ++c) {
      const float v = std::fabs(Load(rows, dtype, r * cols + c));
      if (!std::isfinite(v)) return false;
      acc[c] = std::max(acc[c], v);
    }
  }
  return true;
}

namespace {

// torch's pow(tensor, scalar) on CPU (ATen PowKernel.cpp): the exponent is first converted to
// the tensor's dtype for BF16 and F16 tensors (F32 ones keep it in f64); an exponent of 0.5
// goes to sqrt for F32 and BF16 tensors (in f32, then rounded to the dtype); other exponents
// are pow, rounded to the dtype. quench rounds sqrt and pow correctly; torch's own f32 sqrt
// is not always (tests/test_smoothquant.cc measures it), which BF16 and F16 results hide.
float TorchPow(DType dtype, float base, double exponent) {
  const double e =
      dtype == DType::kF32 ? exponent : RoundTo(dtype, static_cast<float>(exponent));
  if (e == 0.5 && dtype != DType::kF16) return RoundTo(dtype, std::sqrt(base));
  return RoundTo(dtype, static_cast<float>(std::pow(double(base), e)));
}

}  // namespace

std::vector<float> SmoothQuantScales(DType dtype, double alpha, const std::vector<float>& min,
                                     const std::vector<float>& max,
                                     const std::vector<float>& weight_absmax) {
  const size_t n = min.size();
  std::vector<float> s(n);
  for (size_t j = 0; j < n; ++j) {
    // activation_scales = max_channel_vals - min_channel_vals, both in the model's dtype.
    const float range = RoundTo(dtype, RoundTo(dtype, max[j]) - RoundTo(dtype, min[j]));
    // weight_scales = 2.0 * cat(|W|.max(dim=0)).max(dim=0): doubling is exact.
    const float wmax = RoundTo(dtype, 2.0f * weight_absmax[j]);
    float v = range;
    if (wmax > 0.0f) {  // torch.where(weight_scales > 0.0, scales, activation_scales)
      v = RoundTo(dtype, TorchPow(dtype, range, alpha) / TorchPow(dtype, wmax, 1.0 - alpha));
    }
    // torch.maximum(scales, torch.Tensor([1e-5])): NaN propagates, as in torch.
    s[j] = std::isnan(v) ? v : std::max(v, kMinSmoothingScale);
  }
  return s;
}

namespace {

// The common case, a BF16 balance weight times the column scales, as the loop below computes
// it but a row segment at a time without calls or branches, so that it vectorises (compiled
// for AVX-512, AVX2 and the baseline, chosen at load time), from `src` to `dst` (the same
// or disjoint). No product is added to anything, so nothing can be fused.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void MulColsBf16(const double* s, uint64_t n, const uint16_t* src, uint16_t* dst) {
  for (uint64_t c = 0; c < n; ++c) {
    const float v = std::bit_cast<float>(uint32_t{src[c]} << 16);
    const float r = static_cast<float>(double(v) * s[c]);
    const uint32_t bits = std::bit_cast<uint32_t>(r);
    const uint16_t rounded = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    dst[c] = r != r ? uint16_t{0x7FC0} : rounded;  // NaN as c10 stores it
  }
}

// MulColsBf16 for f32-valued scales (SmoothOp::s32): the f32 product is the f64 product
// rounded to f32 (see smoothquant.h), without a conversion to f64 and back per element.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void MulColsBf16F32(const float* s, uint64_t n, const uint16_t* src, uint16_t* dst) {
  for (uint64_t c = 0; c < n; ++c) {
    const float r = std::bit_cast<float>(uint32_t{src[c]} << 16) * s[c];
    const uint32_t bits = std::bit_cast<uint32_t>(r);
    const uint16_t rounded = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    dst[c] = r != r ? uint16_t{0x7FC0} : rounded;  // NaN as c10 stores it
  }
}

// A BF16 row segment divided by one scale (kDivRows), as the loop below computes it.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void DivRowBf16(double s, uint64_t n, const uint16_t* src, uint16_t* dst) {
  for (uint64_t c = 0; c < n; ++c) {
    const float v = std::bit_cast<float>(uint32_t{src[c]} << 16);
    const float r = static_cast<float>(double(v) / s);
    const uint32_t bits = std::bit_cast<uint32_t>(r);
    const uint16_t rounded = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    dst[c] = r != r ? uint16_t{0x7FC0} : rounded;
  }
}

}  // namespace

std::shared_ptr<const std::vector<float>> F32Scales(const std::vector<double>& s) {
  std::vector<float> f(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    f[i] = static_cast<float>(s[i]);
    if (!(double(f[i]) == s[i])) return nullptr;  // not an f32 value (or NaN)
  }
  return std::make_shared<const std::vector<float>>(std::move(f));
}

void ApplySmoothOps(const std::vector<SmoothOp>& ops, DType dtype, uint64_t cols,
                    uint64_t first, uint64_t count, uint8_t* data) {
  ApplySmoothOpsFrom(ops, dtype, cols, first, count, data, data);
}

void ApplySmoothOpsFrom(const std::vector<SmoothOp>& ops, DType dtype, uint64_t cols,
                        uint64_t first, uint64_t count, const uint8_t* src, uint8_t* data) {
  // BF16 with column products and row quotients only (every balance weight; v_proj and
  // up_proj under AWQ, balanced by one mapping and smoothing the next): op by op over each
  // row segment, the first op reading `src`. The same values as the element loop below,
  // which applies the ops to one element after another (each op rounds to BF16, a NaN
  // stored as 0x7FC0 stays NaN).
  const bool rows_cols = std::all_of(ops.begin(), ops.end(), [](const SmoothOp& op) {
    return op.kind == SmoothOp::kMulCols || op.kind == SmoothOp::kDivRows;
  });
  if (rows_cols && !ops.empty() && dtype == DType::kBF16 &&
      reinterpret_cast<uintptr_t>(data) % 2 == 0 && reinterpret_cast<uintptr_t>(src) % 2 == 0) {
    const uint16_t* in = reinterpret_cast<const uint16_t*>(src);
    uint16_t* p = reinterpret_cast<uint16_t*>(data);
    for (uint64_t k = 0, row = first / cols, col = first % cols; k < count; ++row) {
      const uint64_t n = std::min(cols - col, count - k);
      const uint16_t* from = in + k;
      for (const SmoothOp& op : ops) {
        if (op.kind == SmoothOp::kMulCols && op.s32) {
          MulColsBf16F32(op.s32->data() + col, n, from, p + k);
        } else if (op.kind == SmoothOp::kMulCols) {
          MulColsBf16(op.s->data() + col, n, from, p + k);
        } else if (row >= op.row_offset) {
          DivRowBf16((*op.s)[row - op.row_offset], n, from, p + k);
        } else if (from != p + k) {
          std::memcpy(p + k, from, n * 2);
        }
        from = p + k;
      }
      k += n;
      col = 0;
    }
    return;
  }
  if (src != data) std::memcpy(data, src, count * (DTypeBits(dtype) / 8));
  // Row and column kept as counters: a division per element cost more than the transform.
  uint64_t row = first / cols, col = first % cols;
  for (uint64_t k = 0; k < count; ++k) {
    const uint64_t i = first + k;
    float v = Load(data, dtype, k);
    for (const SmoothOp& op : ops) {
      const std::vector<double>& s = *op.s;
      double r = v;
      switch (op.kind) {
        case SmoothOp::kMulCols: r = r * s[col]; break;
        case SmoothOp::kDivRows:
          if (row >= op.row_offset) r = r / s[row - op.row_offset];
          break;
        case SmoothOp::kDivElems: r = r / s[i]; break;
      }
      v = intq::internal::RoundToDType(static_cast<float>(r), dtype);
    }
    Store(data, dtype, k, v);
    if (++col == cols) {
      col = 0;
      ++row;
    }
  }
}

}  // namespace quench::calib
