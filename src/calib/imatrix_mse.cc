// Importance-weighted clipping search (see imatrix_mse.h).
#include "calib/imatrix_mse.h"

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "calib/imatrix_mse_int8_avx2.h"
#include "calib/imatrix_mse_int_avx2.h"
#include "calib/imatrix_mse_int_avx2_asym.h"
#include "calib/imatrix_mse_int_bf16.h"
#include "calib/imatrix_mse_kernel.h"
#include "calib/imatrix_mse_mx_avx2.h"
#include "calib/imatrix_mse_rows.h"
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
  // LastStep < 32: each group's improving steps are one bit each of a 32-bit mask.
  return MakeGeometry(in, f, g) && o.grid > 0 && o.norm > 0 && o.expand > 0 &&
         LastStep(o) < 32 && (imp.empty() || imp.size() == in.cols);
}

// Row r of `in` as f32 into x; false on NaN/Inf.
bool LoadRow(const WeightChunk& in, size_t r, std::vector<float>& x) {
  const size_t esz = DTypeBits(in.dtype) / 8;
  return internal::ToF32(in.data + r * in.cols * esz, in.dtype, in.cols, x.data());
}

// Row r's chosen ranges (mn, mx per group) from each group's min and max (amin / amax,
// times expand) and its chosen step; x, m0, M0 are scratch.
bool RowRanges(const WeightChunk& in, const ImatrixOptions& o, const uint8_t* steps,
               const Geometry& g, size_t r, std::vector<float>& x, std::vector<float>& m0,
               std::vector<float>& M0, float* mn, float* mx) {
  if (!LoadRow(in, r, x)) return false;
  internal::GroupMinMax(x.data(), g.n_groups, g.group, m0.data(), M0.data());
  for (size_t k = 0; k < g.n_groups; ++k) {
    internal::StepRange(m0[k], M0[k], steps[r * g.n_groups + k], o.grid, o.expand,
                        in.dtype, &mn[k], &mx[k]);
  }
  return true;
}

// Per group (rows x groups) its chosen range (mn, mx), from each group's min and max
// (amin / amax, times expand) and its chosen step.
bool Ranges(const WeightChunk& in, const ImatrixOptions& o, const uint8_t* steps,
            const Geometry& g, std::vector<float>* mn,
            std::vector<float>* mx) {
  std::vector<float> x(in.cols), m0(g.n_groups), M0(g.n_groups);
  mn->resize(in.rows * g.n_groups);
  mx->resize(in.rows * g.n_groups);
  for (size_t r = 0; r < in.rows; ++r) {
    if (!RowRanges(in, o, steps, g, r, x, m0, M0, mn->data() + r * g.n_groups,
                   mx->data() + r * g.n_groups)) {
      return false;
    }
  }
  return true;
}

}  // namespace

size_t GroupColumns(const WeightChunk& in, ImatrixFormat f) {
  Geometry g;
  return MakeGeometry(in, f, &g) ? g.group : 0;
}

namespace {

// The kernels' view of a chunk's search for steps i0..i1 (rows, importance and outputs are
// set by the caller).
internal::Block StepsBlock(const WeightChunk& in, ImatrixFormat f, const Geometry& g,
                           const ImatrixOptions& o, int i0, int i1) {
  internal::Block b;
  b.format = f;
  b.dtype = in.dtype;
  b.layout = g.l;
  b.symmetric = f != ImatrixFormat::kInt || in.params.symmetric;
  b.norm = o.norm;
  b.grid = o.grid;
  b.expand = o.expand;
  b.cols = in.cols;
  b.group = g.group;
  b.i0 = i0;
  b.i1 = i1;
  return b;
}

// Steps i0..i1 over the rows, in blocks of about 64K weights (their f32 copies stay in
// cache across the steps), through the kernel or the scalar definition.
bool RunSteps(const WeightChunk& in, ImatrixFormat f, const std::vector<float>& imp,
              const ImatrixOptions& o, int i0, int i1, double* best, uint32_t* masks,
              uint32_t* improved, bool scalar, bool exact_best = true,
              float* group_absmax = nullptr, float* group_minmax = nullptr, bool fresh = false) {
  Geometry g;
  if (!Valid(in, f, imp, o, &g) || i0 < 0 || i1 > LastStep(o) || i0 > i1) return false;
  if (fresh && i0 != 0) return false;
  internal::Block b = StepsBlock(in, f, g, o, i0, i1);
  b.imp = imp.empty() ? nullptr : imp.data();
  b.improved = improved;
  b.exact_best = exact_best;
  // At least 16 rows: one group per row (the channel strategy) still fills 16 lanes.
  const size_t block_rows = std::max<size_t>(16, (size_t{1} << 16) / in.cols);
  // Per thread and reused: a fresh 256 KiB buffer per block is fresh pages to fault in.
  thread_local std::vector<float> x;
  x.resize(std::max(x.size(), std::min(block_rows, in.rows) * in.cols));
  // With group_absmax, the AVX-512 BF16 int4 and the AVX2 int (4- and 8-bit), MXFP4 and
  // NVFP4 kernels read the raw rows and write it themselves (IntScalesKept, ChosenPos);
  // other kernels take an f32 copy made with it.
  // The raw kernels read bf16 values as uint16_t, also one at a time (the definition's sums
  // at near ties): only from 2-byte aligned rows. safetensors does not align tensors, and a
  // shard whose header has an odd length puts every one at an odd address; such rows take
  // the f32 copy, which every kernel searches alike (found by scripts/fuzz-io under UBSan).
  const bool raw_rows = !scalar && reinterpret_cast<uintptr_t>(in.data) % 2 == 0;
  const bool mx_avx2 = raw_rows && internal::MxAvx2Handles(b);
  const bool int8_avx2 = raw_rows && internal::Int8Avx2Handles(b);
  // (NVFP4 of bf16 on AVX2 and AVX-512: the groups search widens the rows itself.)
  const bool fp4_raw = raw_rows && internal::Fp4GroupsRawHandles(b);
  const bool raw_ok =
      raw_rows && (group_absmax == nullptr
                      ? internal::IntBf16Handles(b) || internal::IntAvx2Handles(b) ||
                            internal::IntAvx2AsymHandles(b) || mx_avx2 || int8_avx2 ||
                            fp4_raw
                      : (b.format == ImatrixFormat::kInt &&
                         (internal::IntBf16Handles(b) || internal::IntAvx2Handles(b))) ||
                            mx_avx2 || int8_avx2 || fp4_raw);
  // The AVX-512 BF16 and AVX2 int, MXFP4 and NVFP4 kernels refuse an Inf or NaN themselves
  // (SearchBlock returns false).
  const bool checks_finite = internal::IntBf16Handles(b) || internal::IntAvx2Handles(b) ||
                             internal::IntAvx2AsymHandles(b) || mx_avx2 || int8_avx2 ||
                             fp4_raw;
  // group_minmax: from the asymmetric AVX2 kernel's pass where it reads the raw rows, else
  // from the f32 copy below (blocks the symmetric kernels read raw: not filled, no caller
  // asks).
  const bool minmax_by_kernel = raw_ok && internal::IntAvx2AsymHandles(b);
  for (size_t r0 = 0; r0 < in.rows; r0 += block_rows) {
    const size_t n = std::min(block_rows, in.rows - r0);
    const size_t esz = DTypeBits(in.dtype) / 8;
    const uint8_t* src = in.data + r0 * in.cols * esz;
    b.raw = nullptr;
    b.x = x.data();
    if (raw_ok) {
      // The AVX-512 BF16 and AVX2 int kernels read the bf16 rows themselves: no f32 copy.
      if (!checks_finite && !internal::AllFinite(src, in.dtype, n * in.cols)) {
        return false;
      }
      b.raw = src;
      b.x = nullptr;
      b.absmax = group_absmax == nullptr ? nullptr : group_absmax + r0 * g.n_groups;
      b.minmax = group_minmax == nullptr || !minmax_by_kernel
                     ? nullptr
                     : group_minmax + 2 * r0 * g.n_groups;
    } else if (group_absmax != nullptr) {
      if (!internal::ToF32GroupAbsMax(src, in.dtype, n * g.n_groups, g.group, x.data(),
                                      group_absmax + r0 * g.n_groups)) {
        return false;
      }
    } else if (!internal::ToF32(src, in.dtype, n * in.cols, x.data())) {
      return false;
    }
    if (group_minmax != nullptr && !raw_ok) {
      const size_t ng = n * g.n_groups;
      std::vector<float> lo(ng), hi(ng);
      internal::GroupMinMax(x.data(), ng, g.group, lo.data(), hi.data());
      for (size_t k = 0; k < ng; ++k) {
        group_minmax[2 * (r0 * g.n_groups + k)] = lo[k];
        group_minmax[2 * (r0 * g.n_groups + k) + 1] = hi[k];
      }
    }
    b.rows = n;
    b.best = best + r0 * g.n_groups;
    b.masks = masks + r0 * g.n_groups;
    // fresh: the NVFP4 raw-row kernel takes the starting values itself (Block::fresh); for
    // the others they are filled here, per block while it is in cache.
    b.fresh = fresh && fp4_raw;
    if (fresh && !fp4_raw) {
      std::fill_n(b.best, n * g.n_groups, static_cast<double>(FLT_MAX));
      std::fill_n(b.masks, n * g.n_groups, 0u);
    }
    if (!(scalar ? internal::SearchBlockScalar(b) : internal::SearchBlock(b))) return false;
  }
  return true;
}

}  // namespace

bool SearchSteps(const WeightChunk& in, ImatrixFormat f, const std::vector<float>& imp,
                 const ImatrixOptions& o, int i0, int i1, double* best, uint32_t* masks,
                 uint32_t* improved, bool exact_best, float* group_absmax,
                 float* group_minmax, bool fresh) {
  return RunSteps(in, f, imp, o, i0, i1, best, masks, improved, /*scalar=*/false, exact_best,
                  group_absmax, group_minmax, fresh);
}

bool SearchStepsScalar(const WeightChunk& in, ImatrixFormat f, const std::vector<float>& imp,
                       const ImatrixOptions& o, int i0, int i1, double* best, uint32_t* masks,
                       uint32_t* improved) {
  return RunSteps(in, f, imp, o, i0, i1, best, masks, improved, /*scalar=*/true);
}

bool GroupSteps(const WeightChunk& in, ImatrixFormat f, const std::vector<float>& imp,
                const ImatrixOptions& o, uint32_t* masks) {
  Geometry g;
  if (!Valid(in, f, imp, o, &g)) return false;
  std::vector<double> best(in.rows * g.n_groups, FLT_MAX);  // finfo(f32).max
  std::fill_n(masks, in.rows * g.n_groups, 0u);
  uint32_t improved = 0;
  return SearchSteps(in, f, imp, o, 0, LastStep(o), best.data(), masks, &improved);
}

bool StepUpdate(const WeightChunk& in, ImatrixFormat f, const std::vector<float>& imp,
                const ImatrixOptions& o, int i, double* best, uint32_t* masks, bool* improved) {
  uint32_t bits = 0;
  if (!SearchSteps(in, f, imp, o, i, i, best, masks, &bits)) return false;
  *improved = bits != 0;
  return true;
}

bool ChosenRanges(const WeightChunk& in, ImatrixFormat f, const ImatrixOptions& o,
                  const uint8_t* steps, float* pos) {
  Geometry g;
  if (!MakeGeometry(in, f, &g)) return false;
  if (o.expand > 0 && o.grid > 0 && LastStep(o) < 32) {
    // Pos(StepRange(m0, M0, i)) without the range: for p = 1 - i / grid > 0 and expand > 0,
    // m0 <= M0 gives mn <= mx, so pos = max(|mn|, |mx|), and RNE_D is monotone and
    // symmetric: pos = RNE_D(p * RNE_D(max(|m0|, |M0|) * expand)) (Expanded, then the
    // product in f32 rounded to D). Other steps: the definition.
    float p[32];
    for (int i = 0; i <= LastStep(o); ++i) {
      p[i] = internal::StepFactor(i, o.grid);
    }
    const int last = LastStep(o);
    std::vector<float> x(in.cols), m0(g.n_groups), M0(g.n_groups);
    for (size_t r = 0; r < in.rows; ++r) {
      if (!LoadRow(in, r, x)) return false;
      internal::GroupMinMax(x.data(), g.n_groups, g.group, m0.data(), M0.data());
      const uint8_t* st = steps + r * g.n_groups;
      float* out = pos + r * g.n_groups;
      for (size_t k = 0; k < g.n_groups; ++k) {
        const int i = std::min<int>(st[k], last);
        if (st[k] <= last && p[i] > 0.0f) {
          const float a = internal::Expanded(std::max(std::fabs(m0[k]), std::fabs(M0[k])),
                                             o.expand, in.dtype);
          out[k] = intq::internal::RoundToDType(p[i] * a, in.dtype);
        } else {
          float mn, mx;
          internal::StepRange(m0[k], M0[k], st[k], o.grid, o.expand, in.dtype, &mn, &mx);
          out[k] = internal::Pos(mn, mx);
        }
      }
    }
    return true;
  }
  std::vector<float> mn, mx;
  if (!Ranges(in, o, steps, g, &mn, &mx)) return false;
  for (size_t i = 0; i < mn.size(); ++i) pos[i] = internal::Pos(mn[i], mx[i]);
  return true;
}

bool ChosenPosApplies(const ImatrixOptions& o) {
  return o.expand > 0 && o.grid > 0 && LastStep(o) < 32 && LastStep(o) < o.grid;
}

float ChosenPos(const float* absmax, const uint32_t* masks, size_t n, int stop,
                const ImatrixOptions& o, DType d, uint8_t* pos) {
  // ChosenRanges' fast path: p_i > 0 for every step here (ChosenPosApplies), so
  // pos = RNE_D(p_i * Expanded(max(|m0|, |M0|))).
  float p[32];
  for (int i = 0; i <= LastStep(o); ++i) {
    p[i] = internal::StepFactor(i, o.grid);
  }
  return internal::ChosenPosRow(absmax, masks, n, std::min(stop, LastStep(o)), p, o.expand, d,
                                pos);
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
  const Layout& l = g.l;
  const size_t rows = in.rows, n = in.cols, ng = g.n_groups;
  const bool sym = in.params.symmetric;
  const size_t ssz = DTypeBits(in.dtype) / 8;
  std::vector<float> x(n), m0(ng), M0(ng), mn(ng), mx(ng);
  std::vector<GroupParams> params(ng);
  std::vector<int8_t> codes(n);
  std::vector<int8_t> zps(rows * ng);
  std::vector<uint8_t> u(n);
  const size_t row_bytes = l.words_per_row * 4;
  // Packed symmetric int4 of bf16 rows with AVX-512 BF16: min, max and codes from the raw
  // row (imatrix_mse_int_bf16.h), the same bytes without the f32 copy.
  // The same on AVX2 CPUs without it (imatrix_mse_int_avx2.h).
  const bool bf16_int4 = packed && sym && l.bits == 4 && in.dtype == DType::kBF16;
  const bool bf16_codes = bf16_int4 && internal::IntBf16CodesHandle(l.group, n);
  const bool avx2_codes = bf16_int4 && !bf16_codes && internal::IntAvx2CodesHandle(l.group, n);
  // Packed asymmetric int4 of bf16 rows on AVX2: each group's min and max, its parameters
  // (eight groups a vector) and its codes from the raw row (imatrix_mse_int_avx2_asym.h).
  const bool asym_codes = packed && !sym && l.bits == 4 && in.dtype == DType::kBF16 &&
                          internal::IntAvx2AsymCodesHandle(l.group, n);
  for (size_t r = 0; r < rows; ++r) {
    if (asym_codes) {
      const uint8_t* row = in.data + r * n * 2;
      if (!internal::IntAvx2RowMinMax(row, ng, l.group, m0.data(), M0.data())) return false;
      internal::IntAvx2AsymChosenParams(m0.data(), M0.data(), steps + r * ng, ng, o.grid,
                                        o.expand, l, params.data(), out.out[1] + r * ng * ssz);
      for (size_t k = 0; k < ng; ++k) zps[r * ng + k] = static_cast<int8_t>(params[k].zp);
      internal::IntAvx2AsymCodes4(row, n, l.group, params.data(), out.out[0] + r * row_bytes);
      continue;
    }
    if (bf16_codes || avx2_codes) {
      const uint8_t* row = in.data + r * n * 2;
      if (!(bf16_codes ? internal::IntBf16RowMinMax(row, ng, l.group, m0.data(), M0.data())
                       : internal::IntAvx2RowAbsMax(row, ng, l.group, m0.data()))) {
        return false;
      }
      if (bf16_codes) {
        for (size_t k = 0; k < ng; ++k) {
          internal::StepRange(m0[k], M0[k], steps[r * ng + k], o.grid, o.expand, in.dtype,
                              &mn[k], &mx[k]);
          params[k] = intq::internal::ComputeParams(mn[k], mx[k], l, sym, in.dtype);
          intq::internal::StoreScale(out.out[1] + (r * ng + k) * ssz, params[k].scale,
                                     in.dtype);
        }
      } else {
        // The same scales eight groups at a time, from each group's largest magnitude (in m0).
        internal::IntAvx2ChosenScales(m0.data(), steps + r * ng, ng, o.grid, o.expand, l,
                                      params.data(), out.out[1] + r * ng * ssz);
      }
      if (bf16_codes) {
        internal::IntBf16Codes4(row, n, l.group, params.data(), out.out[0] + r * row_bytes);
      } else {
        internal::IntAvx2Codes4(row, n, l.group, params.data(), out.out[0] + r * row_bytes);
      }
      continue;
    }
    if (!RowRanges(in, o, steps, g, r, x, m0, M0, mn.data(), mx.data())) return false;
    for (size_t k = 0; k < ng; ++k) {
      // get_qparams: calculate_qparams on the chosen min and max; the compressor then
      // quantizes the weight with them, as round to nearest does with min-max ones.
      params[k] = intq::internal::ComputeParams(mn[k], mx[k], l, sym, in.dtype);
      intq::internal::StoreScale(out.out[1] + (r * ng + k) * ssz, params[k].scale, in.dtype);
      zps[r * ng + k] = static_cast<int8_t>(params[k].zp);
    }
    if (packed) {
      // pack_to_int32: u = q + 2^(b-1), dense along the row.
      uint8_t* dst = out.out[0] + r * row_bytes;
      const uint8_t off = static_cast<uint8_t>(1 << (l.bits - 1));
      if (l.bits == 4 && n % 8 == 0) {
        // Element i in bits 4i..4i+3 of the little-endian word stream (byte i / 2, the even
        // element in the low nibble; n % 8 == 0 fills whole words), packed as the codes are
        // made (IntCodesPacked4).
        internal::IntCodesPacked4(x.data(), n, l.group, params.data(), l, sym, in.dtype, dst);
      } else if (l.bits == 8 && n % 4 == 0) {
        // 8-bit codes fill each word's bytes in element order (little-endian): the word
        // stream is the bytes u = q + 128, i.e. q's bits with the top one flipped.
        internal::IntCodes(x.data(), n, l.group, params.data(), l, sym, in.dtype, codes.data());
        for (size_t c = 0; c < n; ++c) dst[c] = static_cast<uint8_t>(codes[c]) ^ 0x80u;
      } else {
        internal::IntCodes(x.data(), n, l.group, params.data(), l, sym, in.dtype, codes.data());
        for (size_t c = 0; c < n; ++c) u[c] = static_cast<uint8_t>(codes[c] + off);
        intq::internal::PackRowScalar(u.data(), n, l.bits, dst);
      }
    } else {
      internal::IntCodes(x.data(), n, l.group, params.data(), l, sym, in.dtype, codes.data());
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

bool IntScalesKept(const WeightChunk& in, const ImatrixOptions& o, bool packed) {
  Geometry g;
  if (!in.params.symmetric || in.dtype != DType::kBF16 ||
      !MakeGeometry(in, ImatrixFormat::kInt, &g)) {
    return false;
  }
  // The block RunSteps gives the kernels (IntBf16Handles, IntAvx2Handles and
  // Int8Avx2Handles read only its settings).
  const internal::Block b = StepsBlock(in, ImatrixFormat::kInt, g, o, 0, LastStep(o));
  // The largest magnitudes from the AVX-512 BF16 int4 search or either AVX2 search.
  const bool kept_by_search = internal::IntBf16Handles(b) || internal::IntAvx2Handles(b) ||
                              internal::Int8Avx2Handles(b);
  if (packed && g.l.bits == 4) {
    // Packed int4 codes by IntBf16Codes4 or IntAvx2Codes4 (QuantizeIntKept).
    return (internal::IntBf16CodesHandle(g.group, in.cols) ||
            internal::IntAvx2CodesHandle(g.group, in.cols)) &&
           kept_by_search;
  }
  // Codes a byte each: packed 8-bit (W8A16) or unpacked (W8A8, W4A8), written by
  // Int8Avx2Codes.
  return (!packed || g.l.bits == 8) && internal::Int8Avx2CodesHandle(g.group, in.cols) &&
         kept_by_search;
}

void IntKeptScales(const WeightChunk& in, const ImatrixOptions& o, const float* absmax,
                   const uint32_t* masks, size_t n, int stop, uint8_t* dst) {
  Geometry g;
  if (!MakeGeometry(in, ImatrixFormat::kInt, &g)) return;
  std::vector<uint8_t> steps(n);
  for (size_t k = 0; k < n; ++k) steps[k] = ChosenStep(masks[k], std::min(stop, LastStep(o)));
  std::vector<GroupParams> params(n);
  internal::IntAvx2ChosenScales(absmax, steps.data(), n, o.grid, o.expand, g.l, params.data(),
                                dst);
}

bool QuantizeIntKept(const WeightChunk& in, const uint8_t* scales, const int8_t* zps,
                     const ChunkOutputs& out, bool packed) {
  Geometry g;
  if (!MakeGeometry(in, ImatrixFormat::kInt, &g)) return false;
  const size_t n = in.cols, ng = g.n_groups;
  // Codes a byte each (IntScalesKept's 8-bit packed and unpacked cases): n bytes a row.
  const bool bytes = zps == nullptr && (!packed || g.l.bits == 8);
  const size_t row_bytes = bytes ? n : g.l.words_per_row * 4;
  std::vector<GroupParams> params(ng);
  for (size_t r = 0; r < in.rows; ++r) {
    const uint8_t* row = in.data + r * n * 2;
    const uint8_t* s = scales + r * ng * 2;
    for (size_t k = 0; k < ng; ++k) {
      uint16_t bits;
      std::memcpy(&bits, s + 2 * k, 2);
      params[k] = {BF16ToF32(bits), zps == nullptr ? 0 : zps[r * ng + k]};
    }
    std::memcpy(out.out[1] + r * ng * 2, s, ng * 2);
    uint8_t* dst = out.out[0] + r * row_bytes;
    if (bytes) {
      internal::Int8Avx2Codes(row, n, g.group, params.data(), g.l.qmin, g.l.qmax, packed, dst);
    } else if (zps == nullptr) {
      if (internal::IntBf16CodesHandle(g.group, n)) {
        internal::IntBf16Codes4(row, n, g.group, params.data(), dst);
      } else {
        internal::IntAvx2Codes4(row, n, g.group, params.data(), dst);
      }
    } else {
      internal::IntAvx2AsymCodes4(row, n, g.group, params.data(), dst);
    }
  }
  // Zero points packed down the columns, as QuantizeIntChosen packs them.
  if (zps != nullptr) intq::internal::PackZeroPoints(zps, in.rows, ng, g.l.bits, out.out[2]);
  return true;
}

bool IntRangesKept(const WeightChunk& in, const ImatrixOptions& o, bool packed) {
  Geometry g;
  if (!packed || in.params.symmetric || in.dtype != DType::kBF16 ||
      !MakeGeometry(in, ImatrixFormat::kInt, &g) || g.l.bits != 4 ||
      !internal::IntAvx2AsymCodesHandle(g.group, in.cols)) {
    return false;
  }
  // The block RunSteps gives the kernels (IntAvx2AsymHandles reads only its settings).
  return internal::IntAvx2AsymHandles(
      StepsBlock(in, ImatrixFormat::kInt, g, o, 0, LastStep(o)));
}

void IntKeptParams(const WeightChunk& in, const ImatrixOptions& o, const float* minmax,
                   const uint32_t* masks, size_t n, int stop, uint8_t* scales, int8_t* zps) {
  Geometry g;
  if (!MakeGeometry(in, ImatrixFormat::kInt, &g)) return;
  std::vector<uint8_t> steps(n);
  std::vector<float> m0(n), M0(n);
  for (size_t k = 0; k < n; ++k) {
    steps[k] = ChosenStep(masks[k], std::min(stop, LastStep(o)));
    m0[k] = minmax[2 * k];
    M0[k] = minmax[2 * k + 1];
  }
  std::vector<GroupParams> params(n);
  internal::IntAvx2AsymChosenParams(m0.data(), M0.data(), steps.data(), n, o.grid, o.expand,
                                    g.l, params.data(), scales);
  for (size_t k = 0; k < n; ++k) zps[k] = static_cast<int8_t>(params[k].zp);
}

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
