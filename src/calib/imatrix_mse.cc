// Importance-weighted clipping search (see imatrix_mse.h).
#include "calib/imatrix_mse.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "schemes/float_formats.h"
#include "schemes/fp4.h"
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

// Group geometry of a chunk in a format; the int layout for kInt.
struct Geometry {
  size_t group = 0;
  size_t n_groups = 0;
  Layout l{};
};

bool MakeGeometry(const WeightChunk& in, ImatrixFormat f, Geometry* g) {
  if (f == ImatrixFormat::kInt) {
    if (!intq::internal::MakeLayout(in, &g->l)) return false;
    g->group = g->l.group;
    g->n_groups = g->l.n_groups;
    return true;
  }
  if (in.dtype != DType::kBF16 && in.dtype != DType::kF16 && in.dtype != DType::kF32) {
    return false;
  }
  g->group = f == ImatrixFormat::kNvfp4 ? fp4::kNvfp4Group : fp4::kMxGroup;
  if (in.cols == 0 || in.cols % g->group != 0) return false;
  g->n_groups = in.cols / g->group;
  return true;
}

bool Valid(const WeightChunk& in, ImatrixFormat f, const std::vector<float>& imp,
           const ImatrixOptions& o, Geometry* g) {
  return MakeGeometry(in, f, g) && o.grid > 0 && o.norm > 0 && o.expand > 0 &&
         LastStep(o) < 32 && (imp.empty() || imp.size() == in.cols);
}

// |d|^norm as torch computes pow_ on an f32 tensor: exponent 3 and 2 are products.
inline float PowNorm(float d, double norm) {
  if (norm == 3.0) return d * d * d;
  if (norm == 2.0) return d * d;
  return std::pow(d, static_cast<float>(norm));
}

// Step i's shrunk range: min_val = amin * expand, then p = 1 - i / grid in double; each
// tensor-times-scalar product multiplies in f32 (the scalar cast to f32) and rounds to D
// (expand 1.0 leaves the value as it is).
inline void StepRange(float m0, float M0, int i, const ImatrixOptions& o, DType d, float* mn,
                      float* mx) {
  const float e = static_cast<float>(o.expand);
  const float p = static_cast<float>(1.0 - static_cast<double>(i) / o.grid);
  *mn = RoundToDType(p * RoundToDType(m0 * e, d), d);
  *mx = RoundToDType(p * RoundToDType(M0 * e, d), d);
}

// calculate_qparams' max_val_pos: max(|min(mn, 0)|, |max(mx, 0)|).
inline float Pos(float mn, float mx) {
  return std::max(std::fabs(std::min(mn, 0.f)), std::fabs(std::max(mx, 0.f)));
}

// The FP4 scale of a step during the search (imatrix_mse.h): NVFP4 without scale_dtype or
// global scale, RNE_D(pos / (bit_range / 2)) with the zero guard finfo(D).eps; MXFP4's E8M0.
inline float SearchScale(float pos, ImatrixFormat f, DType d) {
  if (f == ImatrixFormat::kMxfp4) return fp4::Mxfp4GroupScale(pos, d);
  const float s = RoundToDType(pos / 6.0f, d);
  return s == 0.f ? intq::internal::ScaleEps(d) : s;
}

// One group's error at step range (mn, mx): fake_quantize in D, then
// sum |q - w|^norm * imp (accumulated in double).
double GroupError(const float* x, const float* imp, size_t n, float mn, float mx,
                  ImatrixFormat f, const Geometry& g, bool sym, DType d, double norm) {
  double err = 0;
  if (f == ImatrixFormat::kInt) {
    // compressed-tensors _quantize_dequantize: x / s, + zp, clamp, round, (q - zp) * s.
    const GroupParams p = intq::internal::ComputeParams(mn, mx, g.l, sym, d);
    for (size_t j = 0; j < n; ++j) {
      const int q = intq::internal::QuantizeValue(x[j], p, g.l, sym, d);
      const float dq = RoundToDType(static_cast<float>(sym ? q : q - p.zp) * p.scale, d);
      float e = PowNorm(std::fabs(dq - x[j]), norm);
      if (imp != nullptr) e *= imp[j];
      err += e;
    }
    return err;
  }
  // FP4: x / s in D, clamp to +-6 and cast_to_fp4 (exact in D), times s in D.
  const float s = SearchScale(Pos(mn, mx), f, d);
  for (size_t j = 0; j < n; ++j) {
    const float q = fp4::RoundToE2M1(RoundToDType(x[j] / s, d));
    const float dq = RoundToDType(q * s, d);
    float e = PowNorm(std::fabs(dq - x[j]), norm);
    if (imp != nullptr) e *= imp[j];
    err += e;
  }
  return err;
}

// The error as the reference compares it: its sum is an f32 tensor (best_error is f32), so
// two steps whose sums round to the same f32 tie and the earlier stays. The f64 sum rounded
// once to f32 stands for torch's f32 sum: without it, exact FP4 representations at two
// steps (an outlier at 4 s and at 6 s', the rest rounding to 0) differ by ~1e-15 in f64 and
// the later step won, where the reference keeps the earlier (MiniLM, expand 1.8).
inline double ErrorF32(double err) { return static_cast<float>(err); }

// Row r of `in` as f32 into x; false on NaN/Inf.
bool LoadRow(const WeightChunk& in, size_t r, std::vector<float>& x) {
  for (size_t c = 0; c < in.cols; ++c) {
    x[c] = ElementToF32(in.data, in.dtype, r * in.cols + c);
    if (!std::isfinite(x[c])) return false;
  }
  return true;
}

// Per group (rows x groups) its chosen range (mn, mx), from each group's min and max
// (amin / amax, times expand) and its chosen step.
bool Ranges(const WeightChunk& in, const ImatrixOptions& o, const uint8_t* steps,
            const Geometry& g, std::vector<float>* mn,
            std::vector<float>* mx) {
  std::vector<float> x(in.cols);
  mn->resize(in.rows * g.n_groups);
  mx->resize(in.rows * g.n_groups);
  for (size_t r = 0; r < in.rows; ++r) {
    if (!LoadRow(in, r, x)) return false;
    for (size_t k = 0; k < g.n_groups; ++k) {
      const float* xg = x.data() + k * g.group;
      const size_t i = r * g.n_groups + k;
      StepRange(*std::min_element(xg, xg + g.group), *std::max_element(xg, xg + g.group),
                steps[i], o, in.dtype, &(*mn)[i], &(*mx)[i]);
    }
  }
  return true;
}

}  // namespace

size_t GroupColumns(const WeightChunk& in, ImatrixFormat f) {
  Geometry g;
  return MakeGeometry(in, f, &g) ? g.group : 0;
}

bool GroupSteps(const WeightChunk& in, ImatrixFormat f, const std::vector<float>& imp,
                const ImatrixOptions& o, uint32_t* masks) {
  Geometry g;
  if (!Valid(in, f, imp, o, &g)) return false;
  const int last = LastStep(o);
  const bool sym = f != ImatrixFormat::kInt || in.params.symmetric;
  std::vector<float> x(in.cols);
  for (size_t r = 0; r < in.rows; ++r) {
    if (!LoadRow(in, r, x)) return false;
    for (size_t k = 0; k < g.n_groups; ++k) {
      const float* xg = x.data() + k * g.group;
      const float* ig = imp.empty() ? nullptr : imp.data() + k * g.group;
      const float m0 = *std::min_element(xg, xg + g.group);
      const float M0 = *std::max_element(xg, xg + g.group);
      double best = FLT_MAX;  // best_error starts at finfo(f32).max
      uint32_t mask = 0;
      for (int i = 0; i <= last; ++i) {
        float mn, mx;
        StepRange(m0, M0, i, o, in.dtype, &mn, &mx);
        const double err =
            ErrorF32(GroupError(xg, ig, g.group, mn, mx, f, g, sym, in.dtype, o.norm));
        if (err < best) {  // strict: the earliest of equal errors stays
          best = err;
          mask |= 1u << i;
        }
      }
      masks[r * g.n_groups + k] = mask;
    }
  }
  return true;
}

bool StepUpdate(const WeightChunk& in, ImatrixFormat f, const std::vector<float>& imp,
                const ImatrixOptions& o, int i, double* best, uint32_t* masks, bool* improved) {
  Geometry g;
  if (!Valid(in, f, imp, o, &g) || i < 0 || i > LastStep(o)) return false;
  const bool sym = f != ImatrixFormat::kInt || in.params.symmetric;
  std::vector<float> x(in.cols);
  bool any = false;
  for (size_t r = 0; r < in.rows; ++r) {
    if (!LoadRow(in, r, x)) return false;
    for (size_t k = 0; k < g.n_groups; ++k) {
      const float* xg = x.data() + k * g.group;
      const float* ig = imp.empty() ? nullptr : imp.data() + k * g.group;
      float mn, mx;
      StepRange(*std::min_element(xg, xg + g.group), *std::max_element(xg, xg + g.group), i, o,
                in.dtype, &mn, &mx);
      const double err = ErrorF32(GroupError(xg, ig, g.group, mn, mx, f, g, sym, in.dtype, o.norm));
      const size_t j = r * g.n_groups + k;
      if (err < best[j]) {
        best[j] = err;
        masks[j] |= 1u << i;
        any = true;
      }
    }
  }
  *improved = any;
  return true;
}

bool ChosenRanges(const WeightChunk& in, ImatrixFormat f, const ImatrixOptions& o,
                  const uint8_t* steps, float* pos) {
  Geometry g;
  if (!MakeGeometry(in, f, &g)) return false;
  std::vector<float> mn, mx;
  if (!Ranges(in, o, steps, g, &mn, &mx)) return false;
  for (size_t i = 0; i < mn.size(); ++i) pos[i] = Pos(mn[i], mx[i]);
  return true;
}

bool AnyImproved(const WeightChunk& in, const std::vector<float>& imp, const ImatrixOptions& o,
                 uint32_t* steps) {
  Geometry g;
  if (!Valid(in, ImatrixFormat::kInt, imp, o, &g)) return false;
  std::vector<uint32_t> masks(in.rows * g.n_groups);
  if (!GroupSteps(in, ImatrixFormat::kInt, imp, o, masks.data())) return false;
  uint32_t any = 0;
  for (uint32_t m : masks) any |= m;
  *steps = any;
  return true;
}

bool Search(const WeightChunk& in, const std::vector<float>& imp, const ImatrixOptions& o,
            int stop, ImatrixRows* out) {
  Geometry g;
  if (!Valid(in, ImatrixFormat::kInt, imp, o, &g)) return false;
  const size_t rows = in.rows, cols = in.cols, ng = g.n_groups;
  std::vector<uint32_t> masks(rows * ng);
  if (!GroupSteps(in, ImatrixFormat::kInt, imp, o, masks.data())) return false;
  std::vector<uint8_t> steps(rows * ng);
  for (size_t i = 0; i < steps.size(); ++i) {
    steps[i] = ChosenStep(masks[i], std::min(stop, LastStep(o)));
  }
  std::vector<float> mn, mx;
  if (!Ranges(in, o, steps.data(), g, &mn, &mx)) return false;
  const bool sym = in.params.symmetric;
  out->scales.resize(rows * ng);
  out->zero_points.resize(rows * ng);
  out->codes.resize(rows * cols);
  std::vector<GroupParams> params(ng);
  for (size_t r = 0; r < rows; ++r) {
    // get_qparams: calculate_qparams on the chosen min and max; the compressor then quantizes
    // the weight with them, as round to nearest does with min-max ones.
    for (size_t k = 0; k < ng; ++k) {
      params[k] = intq::internal::ComputeParams(mn[r * ng + k], mx[r * ng + k], g.l, sym,
                                                in.dtype);
      out->scales[r * ng + k] = params[k].scale;
      out->zero_points[r * ng + k] = static_cast<int8_t>(params[k].zp);
    }
    for (size_t c = 0; c < cols; ++c) {
      const float v = ElementToF32(in.data, in.dtype, r * cols + c);
      out->codes[r * cols + c] = static_cast<int8_t>(
          intq::internal::QuantizeValue(v, params[c / g.group], g.l, sym, in.dtype));
    }
  }
  return true;
}

namespace {

// The int rows with chosen steps, written as the int kernels write (src/schemes/int.h):
// packed or unpacked codes, scales, zero points.
bool QuantizeIntChosen(const WeightChunk& in, const ImatrixOptions& o, const uint8_t* steps,
                       bool packed, const ChunkOutputs& out) {
  Geometry g;
  if (!MakeGeometry(in, ImatrixFormat::kInt, &g)) return false;
  std::vector<float> mn, mx;
  if (!Ranges(in, o, steps, g, &mn, &mx)) return false;
  const Layout& l = g.l;
  const size_t rows = in.rows, n = in.cols, ng = g.n_groups;
  const bool sym = in.params.symmetric;
  const size_t ssz = DTypeBits(in.dtype) / 8;
  std::vector<GroupParams> params(ng);
  std::vector<int8_t> codes(n);
  std::vector<int8_t> zps(rows * ng);
  std::vector<uint8_t> u(n);
  const size_t row_bytes = l.words_per_row * 4;
  for (size_t r = 0; r < rows; ++r) {
    for (size_t k = 0; k < ng; ++k) {
      params[k] = intq::internal::ComputeParams(mn[r * ng + k], mx[r * ng + k], l, sym,
                                                in.dtype);
      intq::internal::StoreScale(out.out[1] + (r * ng + k) * ssz, params[k].scale, in.dtype);
      zps[r * ng + k] = static_cast<int8_t>(params[k].zp);
    }
    for (size_t c = 0; c < n; ++c) {
      const float v = ElementToF32(in.data, in.dtype, r * n + c);
      codes[c] = static_cast<int8_t>(
          intq::internal::QuantizeValue(v, params[c / l.group], l, sym, in.dtype));
    }
    if (packed) {
      // pack_to_int32: u = q + 2^(b-1), dense along the row.
      for (size_t c = 0; c < n; ++c) u[c] = static_cast<uint8_t>(codes[c] + (1 << (l.bits - 1)));
      intq::internal::PackRowScalar(u.data(), n, l.bits, out.out[0] + r * row_bytes);
    } else {
      std::copy_n(reinterpret_cast<const uint8_t*>(codes.data()), n, out.out[0] + r * n);
    }
  }
  if (!sym) {
    if (packed) {
      // Zero points packed down the columns.
      intq::internal::PackZeroPoints(zps.data(), rows, ng, l.bits, out.out[2]);
    } else {
      std::copy_n(reinterpret_cast<const uint8_t*>(zps.data()), rows * ng, out.out[2]);
    }
  }
  return true;
}

}  // namespace

bool QuantizeChosen(const WeightChunk& in, ImatrixFormat f, const ImatrixOptions& o,
                    const uint8_t* steps, bool packed, const ChunkOutputs& out) {
  if (f == ImatrixFormat::kInt) return QuantizeIntChosen(in, o, steps, packed, out);
  Geometry g;
  if (!MakeGeometry(in, f, &g)) return false;
  std::vector<float> pos(in.rows * g.n_groups);
  if (!ChosenRanges(in, f, o, steps, pos.data())) return false;
  return f == ImatrixFormat::kNvfp4 ? fp4::QuantizeNvfp4Ranges(in, pos.data(), out)
                                    : fp4::QuantizeMxfp4Ranges(in, pos.data(), out);
}

bool SearchInto(const WeightChunk& in, const std::vector<float>& imp, const ImatrixOptions& o,
                int stop, bool packed, const ChunkOutputs& out) {
  Geometry g;
  if (!Valid(in, ImatrixFormat::kInt, imp, o, &g)) return false;
  std::vector<uint32_t> masks(in.rows * g.n_groups);
  if (!GroupSteps(in, ImatrixFormat::kInt, imp, o, masks.data())) return false;
  std::vector<uint8_t> steps(masks.size());
  for (size_t i = 0; i < masks.size(); ++i) {
    steps[i] = ChosenStep(masks[i], std::min(stop, LastStep(o)));
  }
  return QuantizeIntChosen(in, o, steps.data(), packed, out);
}

}  // namespace quench::calib
