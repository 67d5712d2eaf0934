// GPTQ (see gptq.h). Each step cites the line of llm-compressor 0.14.0.1 it follows
// (gptq_quantize.py::quantize_weight, helpers.py::{apply_activation_ordering,
// factorize_hessian, column_scale_window}); the fake quantization is compressed-tensors
// 0.19.0's (lifecycle/forward_helpers.py::_quantize/_dequantize), the final codes its
// compressor's, both through the int schemes' definition (src/schemes/int_shared.h).
// Linear algebra is OpenBLAS's LAPACK (potrf, potri) and SGEMM (calib/blas.h), as torch's CPU build
// uses a LAPACK/BLAS for the same steps; results agree with the reference to rounding (the golden
// tests measure how closely).
#include "calib/gptq.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "calib/blas.h"
#include "calib/gptq_sweep.h"
#include "schemes/float_formats.h"
#include "schemes/int_shared.h"

namespace quench::calib {

using intq::internal::GroupParams;
using intq::internal::Layout;

Result<ActOrder> ParseActOrder(const std::string& text) {
  if (text == "none") return ActOrder::kNone;
  if (text == "static" || text == "weight") return ActOrder::kWeight;
  if (text == "group" || text == "dynamic") {
    // compressed-tensors 0.19.0 quant_args.py::validate_actorder.
    return Error(ErrorCode::kUsage,
                 "actorder '" + text + "' has been removed from compressed-tensors 0.19.0 "
                 "(weight_g_idx layouts); use 'static' (= 'weight') or 'none'");
  }
  return Error(ErrorCode::kUsage,
               "unknown actorder '" + text + "' (none, static, weight)");
}

Result<GptqFactor> FactorHessian(std::vector<float> h, size_t n, const GptqOptions& options) {
  if (n == 0 || h.size() != n * n) {
    return Error(ErrorCode::kUsage, "GPTQ: Hessian size does not match the weight");
  }
  QUENCH_ASSIGN_OR_RETURN(const Blas* blas, LoadBlas());
  GptqFactor f;
  f.n = n;
  // apply_activation_ordering: perm = argsort(diag(H), descending). torch's CPU sort keeps
  // equal keys in index order, as stable_sort does; H's rows and columns follow perm.
  if (options.actorder == ActOrder::kWeight) {
    f.perm.resize(n);
    std::iota(f.perm.begin(), f.perm.end(), 0);
    std::stable_sort(f.perm.begin(), f.perm.end(), [&](int32_t a, int32_t b) {
      return h[static_cast<size_t>(a) * n + a] > h[static_cast<size_t>(b) * n + b];
    });
    std::vector<float> p(n * n);
    for (size_t i = 0; i < n; ++i) {
      const float* src = h.data() + static_cast<size_t>(f.perm[i]) * n;
      for (size_t j = 0; j < n; ++j) p[i * n + j] = src[f.perm[j]];
    }
    h.swap(p);
  }
  // factorize_hessian: dead = diag == 0 -> diag 1 (the weight's column is zeroed by the
  // sweep); damp = percdamp * mean(diag), added to the diagonal.
  f.dead.assign(n, 0);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    float& d = h[i * n + i];
    if (d == 0.0f) {
      f.dead[i] = 1;
      d = 1.0f;
    }
    sum += d;
  }
  const float damp = static_cast<float>(options.dampening * static_cast<float>(sum / n));
  for (size_t i = 0; i < n; ++i) h[i * n + i] += damp;
  // cholesky(H) (lower); cholesky_inverse; cholesky(Hinv, upper=True). The matrix is stored
  // row-major, which column-major LAPACK sees transposed: row-major lower = column-major
  // upper, so each call names the other triangle (no transposed copy of n x n is made).
  const int ln = static_cast<int>(n);
  int info = 0;
  blas->spotrf("U", &ln, h.data(), &ln, &info, 1);
  if (info == 0) blas->spotri("U", &ln, h.data(), &ln, &info, 1);
  if (info == 0) {
    // potri leaves the inverse in one triangle (row-major lower); potrf reads the other.
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < i; ++j) h[j * n + i] = h[i * n + j];
    }
    // Column-major lower L with Hinv = L L^T is, read row-major, the upper U = L^T with
    // Hinv = U^T U: the reference's cholesky(upper=True).
    blas->spotrf("L", &ln, h.data(), &ln, &info, 1);
  }
  if (info != 0) {
    // torch._C._LinAlgError -> Hinv = I: round to nearest with the same scales, reported.
    f.rtn_fallback = true;
    f.why = info > 0 ? "the dampened Hessian is not positive definite (leading minor " +
                           std::to_string(info) + ")"
                     : "LAPACK refused its arguments (" + std::to_string(info) + ")";
    std::fill(h.begin(), h.end(), 0.0f);
    for (size_t i = 0; i < n; ++i) h[i * n + i] = 1.0f;
  } else {
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < i; ++j) h[i * n + j] = 0.0f;
    }
  }
  f.u = std::move(h);
  return f;
}

namespace {

// _quantize then _dequantize of one f32 value with the observer's qparams: x / scale and + zp
// in f32 (x is f32 in the sweep), clamp, round half to even; (q - zp) * scale in the scale's
// dtype (RNE_D).
inline float FakeQuantize(float x, const GroupParams& p, const Layout& l, bool symmetric,
                          DType d) {
  float v = x / p.scale;
  if (!symmetric) v += static_cast<float>(p.zp);
  v = std::min(std::max(v, static_cast<float>(l.qmin)), static_cast<float>(l.qmax));
  const float q = intq::internal::RoundHalfEven(v);
  const float centred = symmetric ? q : q - static_cast<float>(p.zp);
  return intq::internal::RoundToDType(centred * p.scale, d);
}

}  // namespace

bool QuantizeRows(const GptqFactor& f, const WeightChunk& in, const GptqOptions& options,
                  GptqRows* out) {
  Layout l;
  auto blas = LoadBlas();
  if (!intq::internal::MakeLayout(in, &l) || in.cols != f.n || options.block_size <= 0 ||
      !blas.ok() || in.cols > static_cast<size_t>(INT32_MAX / 2)) {
    return false;
  }
  const size_t rows = in.rows, n = in.cols, ng = l.n_groups;
  const bool sym = in.params.symmetric;
  // The original rows as f32 (values of D), and the observer's qparams from them.
  std::vector<float> orig(rows * n);
  for (size_t i = 0; i < rows * n; ++i) {
    orig[i] = ElementToF32(in.data, in.dtype, i);
    if (!std::isfinite(orig[i])) return false;
  }
  std::vector<GroupParams> params(rows * ng);
  out->scales.resize(rows * ng);
  out->zero_points.resize(rows * ng);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t g = 0; g < ng; ++g) {
      const float* x = orig.data() + r * n + g * l.group;
      const auto [mn, mx] = std::minmax_element(x, x + l.group);
      params[r * ng + g] = intq::internal::ComputeParams(*mn, *mx, l, sym, in.dtype);
      out->scales[r * ng + g] = params[r * ng + g].scale;
      out->zero_points[r * ng + g] = static_cast<int8_t>(params[r * ng + g].zp);
    }
  }
  // Sweep order: column p of W is original column perm[p] and uses that column's group
  // (g_idx = (arange(n) // group_size)[perm]); dead columns are zeroed.
  const std::vector<size_t> col = internal::SweepColumns(f);
  std::vector<size_t> group_of(n);
  for (size_t p = 0; p < n; ++p) group_of[p] = col[p] / l.group;
  std::vector<float> w = internal::SweepWeight(f, orig, rows, col);
  out->loss = internal::Sweep(f, **blas, rows, static_cast<size_t>(options.block_size), w,
                              options.preserve_zeros,
                              [&](size_t r, size_t p, float x) {
                                return FakeQuantize(x, params[r * ng + group_of[p]], l, sym,
                                                    in.dtype);
                              });
  // The module's weight is the sweep's result in original column order, in D; the
  // compressor then quantizes it with the observer's qparams, as round to nearest does.
  out->codes.resize(rows * n);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t p = 0; p < n; ++p) {
      const size_t c = col[p];
      out->codes[r * n + c] = static_cast<int8_t>(intq::internal::QuantizeValue(
          w[r * n + p], params[r * ng + c / l.group], l, sym, in.dtype));
    }
  }
  return true;
}

bool QuantizeRowsInto(const GptqFactor& f, const WeightChunk& in, const GptqOptions& options,
                      bool packed, const ChunkOutputs& out, double* loss) {
  GptqRows res;
  if (!QuantizeRows(f, in, options, &res)) return false;
  Layout l{};  // (value-initialized: MakeLayout fills it for every chunk QuantizeRows took)
  intq::internal::MakeLayout(in, &l);
  const size_t rows = in.rows, n = in.cols, ng = l.n_groups;
  const size_t ssz = DTypeBits(in.dtype) / 8;
  for (size_t i = 0; i < rows * ng; ++i) {
    intq::internal::StoreScale(out.out[1] + i * ssz, res.scales[i], in.dtype);
  }
  if (packed) {
    // pack_to_int32: u = q + 2^(b-1), dense along the row; zero points down the columns.
    std::vector<uint8_t> u(n);
    const size_t row_bytes = l.words_per_row * 4;
    for (size_t r = 0; r < rows; ++r) {
      for (size_t c = 0; c < n; ++c) {
        u[c] = static_cast<uint8_t>(res.codes[r * n + c] + (1 << (l.bits - 1)));
      }
      intq::internal::PackRowScalar(u.data(), n, l.bits, out.out[0] + r * row_bytes);
    }
    if (!in.params.symmetric) {
      intq::internal::PackZeroPoints(res.zero_points.data(), rows, ng, l.bits, out.out[2]);
    }
  } else {
    std::copy_n(reinterpret_cast<const uint8_t*>(res.codes.data()), rows * n, out.out[0]);
    if (!in.params.symmetric) {
      std::copy_n(reinterpret_cast<const uint8_t*>(res.zero_points.data()), rows * ng,
                  out.out[2]);
    }
  }
  if (loss != nullptr) *loss = res.loss;
  return true;
}

}  // namespace quench::calib
