// Importance-weighted clipping search (see imatrix_mse.h).
#include "calib/imatrix_mse.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "schemes/float_formats.h"
#include "schemes/int_shared.h"

namespace quench::calib {

using intq::internal::GroupParams;
using intq::internal::Layout;
using intq::internal::RoundToDType;

int LastStep(const ImatrixOptions& o) {
  // shrink_steps = max(1, int(self.maxshrink * self.grid)): Python's double product, truncated.
  return std::max(1, static_cast<int>(o.maxshrink * static_cast<double>(o.grid)));
}

std::vector<float> NormalizedImportance(const std::vector<double>& sum_x2, double count) {
  // _get_validated_importance: sum / count.float() in f32; refused (uniform fallback) when
  // the count is 0, any value is non-finite or negative, or all are 0.
  if (!(count > 0) || sum_x2.empty()) return {};
  std::vector<float> imp(sum_x2.size());
  bool any = false;
  double total = 0;
  for (size_t j = 0; j < sum_x2.size(); ++j) {
    imp[j] = static_cast<float>(sum_x2[j]) / static_cast<float>(count);
    if (!std::isfinite(imp[j]) || imp[j] < 0) return {};
    any = any || imp[j] != 0;
    total += imp[j];
  }
  if (!any) return {};
  // _prepare_importance: imp / (imp.mean() + finfo(f32).tiny), in f32.
  const float div = static_cast<float>(total / static_cast<double>(imp.size())) + FLT_MIN;
  for (float& v : imp) v = v / div;
  return imp;
}

int StopStep(uint32_t improved_steps, const ImatrixOptions& o) {
  const int last = LastStep(o);
  int no_improve = 0;
  for (int i = 0; i <= last; ++i) {
    if (improved_steps & (1u << i)) {
      no_improve = 0;
    } else if (++no_improve, o.patience > 0 && no_improve >= o.patience) {
      return i;  // the reference breaks after this step's (empty) update
    }
  }
  return last;
}

namespace {

bool Valid(const WeightChunk& in, const std::vector<float>& imp, const ImatrixOptions& o,
           Layout* l) {
  return intq::internal::MakeLayout(in, l) && o.grid > 0 && o.norm > 0 &&
         LastStep(o) < 32 && (imp.empty() || imp.size() == in.cols);
}

// |d|^norm as torch computes pow_ on an f32 tensor: exponent 3 and 2 are products.
inline float PowNorm(float d, double norm) {
  if (norm == 3.0) return d * d * d;
  if (norm == 2.0) return d * d;
  return std::pow(d, static_cast<float>(norm));
}

// One group's error at qparams p: fake_quantize in D (compressed-tensors
// _quantize_dequantize: x / s, + zp, clamp, round, then (q - zp) * s, each rounded to D).
double GroupError(const float* x, const float* imp, size_t n, const GroupParams& p,
                  const Layout& l, bool sym, DType d, double norm) {
  double err = 0;
  for (size_t j = 0; j < n; ++j) {
    const int q = intq::internal::QuantizeValue(x[j], p, l, sym, d);
    const float dq = RoundToDType(static_cast<float>(sym ? q : q - p.zp) * p.scale, d);
    float e = PowNorm(std::fabs(dq - x[j]), norm);
    if (imp != nullptr) e *= imp[j];
    err += e;
  }
  return err;
}

// The grid over steps 0..stop for every group of the rows; per group the best (mn, mx) and,
// if `steps` is given, the steps at which any group improved.
bool Grid(const WeightChunk& in, const std::vector<float>& imp, const ImatrixOptions& o,
          int stop, std::vector<float>* best_min, std::vector<float>* best_max,
          uint32_t* steps) {
  Layout l{};
  if (!Valid(in, imp, o, &l)) return false;
  const size_t rows = in.rows, cols = in.cols, ng = l.n_groups, gs = l.group;
  const bool sym = in.params.symmetric;
  std::vector<float> x(cols);
  best_min->assign(rows * ng, 0.f);
  best_max->assign(rows * ng, 0.f);
  uint32_t any = 0;
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < cols; ++c) {
      x[c] = ElementToF32(in.data, in.dtype, r * cols + c);
      if (!std::isfinite(x[c])) return false;
    }
    for (size_t g = 0; g < ng; ++g) {
      const float* xg = x.data() + g * gs;
      const float* ig = imp.empty() ? nullptr : imp.data() + g * gs;
      // amin / amax over the group (times expand = 1.0, a no-op in D).
      const float m0 = *std::min_element(xg, xg + gs);
      const float M0 = *std::max_element(xg, xg + gs);
      double best = FLT_MAX;  // best_error starts at finfo(f32).max
      float bmn = m0, bmx = M0;
      for (int i = 0; i <= stop; ++i) {
        // p = 1 - i / grid in double; p * tensor multiplies in f32 (the scalar cast to f32)
        // and rounds to D.
        const float p = static_cast<float>(1.0 - static_cast<double>(i) / o.grid);
        const float mn = RoundToDType(p * m0, in.dtype);
        const float mx = RoundToDType(p * M0, in.dtype);
        const GroupParams qp = intq::internal::ComputeParams(mn, mx, l, sym, in.dtype);
        const double err = GroupError(xg, ig, gs, qp, l, sym, in.dtype, o.norm);
        if (err < best) {
          best = err;
          bmn = mn;
          bmx = mx;
          any |= 1u << i;
        }
      }
      (*best_min)[r * ng + g] = bmn;
      (*best_max)[r * ng + g] = bmx;
    }
  }
  if (steps != nullptr) *steps = any;
  return true;
}

}  // namespace

bool AnyImproved(const WeightChunk& in, const std::vector<float>& imp, const ImatrixOptions& o,
                 uint32_t* steps) {
  std::vector<float> mn, mx;
  return Grid(in, imp, o, LastStep(o), &mn, &mx, steps);
}

bool Search(const WeightChunk& in, const std::vector<float>& imp, const ImatrixOptions& o,
            int stop, ImatrixRows* out) {
  std::vector<float> mn, mx;
  if (!Grid(in, imp, o, std::min(stop, LastStep(o)), &mn, &mx, nullptr)) return false;
  Layout l{};
  if (!intq::internal::MakeLayout(in, &l)) return false;
  const size_t rows = in.rows, cols = in.cols, ng = l.n_groups;
  const bool sym = in.params.symmetric;
  out->scales.resize(rows * ng);
  out->zero_points.resize(rows * ng);
  out->codes.resize(rows * cols);
  std::vector<GroupParams> params(ng);
  for (size_t r = 0; r < rows; ++r) {
    // get_qparams: calculate_qparams on the chosen min and max; the compressor then quantizes
    // the weight with them, as round to nearest does with min-max ones.
    for (size_t g = 0; g < ng; ++g) {
      params[g] = intq::internal::ComputeParams(mn[r * ng + g], mx[r * ng + g], l, sym, in.dtype);
      out->scales[r * ng + g] = params[g].scale;
      out->zero_points[r * ng + g] = static_cast<int8_t>(params[g].zp);
    }
    for (size_t c = 0; c < cols; ++c) {
      const float v = ElementToF32(in.data, in.dtype, r * cols + c);
      out->codes[r * cols + c] = static_cast<int8_t>(
          intq::internal::QuantizeValue(v, params[c / l.group], l, sym, in.dtype));
    }
  }
  return true;
}

bool SearchInto(const WeightChunk& in, const std::vector<float>& imp, const ImatrixOptions& o,
                int stop, bool packed, const ChunkOutputs& out) {
  ImatrixRows res;
  if (!Search(in, imp, o, stop, &res)) return false;
  Layout l{};
  if (!intq::internal::MakeLayout(in, &l)) return false;
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
  return true;
}

}  // namespace quench::calib
