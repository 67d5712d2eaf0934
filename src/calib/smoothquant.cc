// SmoothQuant's scales and the transforms that fold them in (see smoothquant.h).
#include "calib/smoothquant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "schemes/float_formats.h"

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

bool ColumnAbsMax(const uint8_t* rows, DType dtype, uint64_t nrows, uint64_t cols, float* acc) {
  for (uint64_t r = 0; r < nrows; ++r) {
    for (uint64_t c = 0; c < cols; ++c) {
      const float v = std::fabs(LoadElement(rows, dtype, r * cols + c));
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

void ApplySmoothOps(const std::vector<SmoothOp>& ops, DType dtype, uint64_t cols,
                    uint64_t first, uint64_t count, uint8_t* data) {
  for (uint64_t k = 0; k < count; ++k) {
    const uint64_t i = first + k;
    float v = LoadElement(data, dtype, k);
    for (const SmoothOp& op : ops) {
      const std::vector<double>& s = *op.s;
      double r = v;
      switch (op.kind) {
        case SmoothOp::kMulCols: r = r * s[i % cols]; break;
        case SmoothOp::kDivRows:
          if (i / cols >= op.row_offset) r = r / s[i / cols - op.row_offset];
          break;
        case SmoothOp::kDivElems: r = r / s[i]; break;
      }
      v = RoundTo(dtype, static_cast<float>(r));
    }
    StoreElement(data, dtype, k, v);
  }
}

}  // namespace quench::calib
