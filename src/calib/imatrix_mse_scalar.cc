// The imatrix_mse search's scalar definition (see imatrix_mse_kernel.h): the step
// parameters, one group's error, and the search of a block group by group, step by step.
// The Highway kernels (imatrix_mse_kernel.cc and the files it dispatches to) must equal it
// bit for bit.

// The definition rounds every f32 product and difference: no contraction into FMAs (GCC
// contracts in C++ mode wherever the target has them, e.g. with -march=native).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cmath>

#include "calib/imatrix_mse_kernel.h"
#include "schemes/fp4.h"

namespace quench::calib::internal {

float Pos(float mn, float mx) {
  return std::max(std::fabs(std::min(mn, 0.f)), std::fabs(std::max(mx, 0.f)));
}

StepParams ParamsOf(const Block& b, float mn, float mx) {
  if (b.format == ImatrixFormat::kInt) {
    // calculate_qparams (intq::internal::ComputeParams).
    const intq::internal::GroupParams p =
        intq::internal::ComputeParams(mn, mx, b.layout, b.symmetric, b.dtype);
    return {p.scale, static_cast<float>(p.zp)};
  }
  // The FP4 scale during the search (imatrix_mse.h): NVFP4 without scale_dtype or global
  // scale, RNE_D(pos / (bit_range / 2)) with the zero guard finfo(D).eps; MXFP4's E8M0.
  const float pos = Pos(mn, mx);
  if (b.format == ImatrixFormat::kMxfp4) return {fp4::Mxfp4GroupScale(pos, b.dtype), 0.f};
  const float s = intq::internal::RoundToDType(pos / 6.0f, b.dtype);
  return {s == 0.f ? intq::internal::ScaleEps(b.dtype) : s, 0.f};
}

namespace {

// |d|^norm as torch computes pow_ on an f32 tensor: exponent 3 and 2 are products.
inline float PowNorm(float d, double norm) {
  if (norm == 3.0) return d * d * d;
  if (norm == 2.0) return d * d;
  return std::pow(d, static_cast<float>(norm));
}

}  // namespace

double GroupErrorScalar(const Block& b, const float* x, const float* imp, size_t n,
                        StepParams p) {
  using intq::internal::RoundToDType;
  const DType d = b.dtype;
  double err = 0;
  for (size_t j = 0; j < n; ++j) {
    float dq;
    if (b.format == ImatrixFormat::kInt) {
      // compressed-tensors _quantize_dequantize: x / s, + zp, clamp, round, (q - zp) * s.
      const intq::internal::GroupParams gp{p.scale, static_cast<int>(p.zp)};
      const int q = intq::internal::QuantizeValue(x[j], gp, b.layout, b.symmetric, d);
      dq = RoundToDType(static_cast<float>(b.symmetric ? q : q - gp.zp) * p.scale, d);
    } else {
      // FP4: x / s in D, clamp to +-6 and cast_to_fp4 (exact in D), times s in D.
      const float q = fp4::RoundToE2M1(RoundToDType(x[j] / p.scale, d));
      dq = RoundToDType(q * p.scale, d);
    }
    float e = PowNorm(std::fabs(dq - x[j]), b.norm);
    if (imp != nullptr) e *= imp[j];
    err += e;
  }
  return err;
}

bool SearchBlockScalar(const Block& b) {
  if (b.group == 0 || b.cols % b.group != 0) return false;
  const size_t ng = b.cols / b.group;
  for (size_t g = 0; g < b.rows * ng; ++g) {
    const float* xg = b.x + g * b.group;
    const float* ig = b.imp == nullptr ? nullptr : b.imp + (g % ng) * b.group;
    const float m0 = *std::min_element(xg, xg + b.group);
    const float M0 = *std::max_element(xg, xg + b.group);
    for (int i = b.i0; i <= b.i1; ++i) {
      float mn, mx;
      StepRange(m0, M0, i, b.grid, b.expand, b.dtype, &mn, &mx);
      const double err = ErrorF32(GroupErrorScalar(b, xg, ig, b.group, ParamsOf(b, mn, mx)));
      if (err < b.best[g]) {  // strict: the earliest of equal errors stays
        b.best[g] = err;
        b.masks[g] |= 1u << i;
        *b.improved |= 1u << i;
      }
    }
  }
  return true;
}

}  // namespace quench::calib::internal
