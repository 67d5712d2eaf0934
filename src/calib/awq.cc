// AWQ's grid search from statistics (see awq.h).
#include "calib/awq.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include <tbb/parallel_for.h>

#include "calib/awq_internal.h"
#include "calib/blas.h"
#include "calib/smoothquant.h"
#include "schemes/int_scaled_error.h"
#include "schemes/int_shared.h"

namespace quench::calib {
namespace awq_internal {
namespace {

// A torch f64 or f32 value as the next torch op of dtype `d` sees it: f64 values are
// converted to f32 first (c10's BFloat16/Half take a float), then rounded to d.
float ToDType(double v, DType d) { return RoundTo(d, static_cast<float>(v)); }

// Candidate scales (_compute_best_scale's loop body). Non-duo scales live in f32 (x_mean's
// dtype); duo scales in f64 (w_mean is f64, and torch promotes).
std::vector<double> Candidate(const std::vector<float>& x_mean, const std::vector<double>& w_mean,
                              double ratio, bool duo) {
  const size_t n = x_mean.size();
  std::vector<double> s(n);
  for (size_t j = 0; j < n; ++j) {
    // x_mean.pow(ratio): f32 pow with the exponent kept in f64 (ATen PowKernel for floats).
    const float xp = ratio == 0.0 ? 1.0f : static_cast<float>(std::pow(double(x_mean[j]), ratio));
    if (duo) {
      const double v = double(xp) / (std::pow(w_mean[j], 1.0 - ratio) + 1e-4);
      s[j] = std::max(v, 1e-4);  // clamp(min=1e-4); NaN stays NaN (fixed below)
      if (std::isnan(v)) s[j] = v;
    } else {
      const float v = std::max(xp, 1e-4f);
      s[j] = std::isnan(xp) ? xp : v;
    }
  }
  // scales / (scales.max() * scales.min()).sqrt(), in the scales' dtype.
  double mx = -std::numeric_limits<double>::infinity(), mn = -mx;
  for (double v : s) {
    mx = std::max(mx, v);
    mn = std::min(mn, v);
  }
  if (duo) {
    const double norm = std::sqrt(mx * mn);
    for (double& v : s) v = v / norm;
  } else {
    const float norm = std::sqrt(static_cast<float>(mx) * static_cast<float>(mn));
    for (double& v : s) v = static_cast<float>(static_cast<float>(v) / norm);
  }
  for (double& v : s) {
    if (std::isinf(v) || std::isnan(v)) v = 1;  // scales[isinf] = 1; scales[isnan] = 1
  }
  return s;
}

// Row r of a layer as f32 (exact: every BF16, F16 and F32 value is an f32), converted here
// rather than through LoadElement's out-of-line dtype switch per element and per use.
void LoadRow(const AwqLayer& l, uint64_t r, float* out) {
  const uint64_t width = l.dtype == DType::kF32 ? 4 : 2;  // BF16, F16 or F32 (planning)
  const uint8_t* p = l.data + r * l.cols * width;
  switch (l.dtype) {
    case DType::kBF16:
      for (uint64_t c = 0; c < l.cols; ++c) {
        uint16_t h;
        std::memcpy(&h, p + 2 * c, 2);
        out[c] = std::bit_cast<float>(uint32_t{h} << 16);
      }
      break;
    case DType::kF32:
      std::memcpy(out, p, l.cols * 4);
      break;
    default:
      for (uint64_t c = 0; c < l.cols; ++c) out[c] = LoadElement(p, l.dtype, c);
  }
}

}  // namespace

bool Aligned2(const AwqLayer& l) { return reinterpret_cast<uintptr_t>(l.data) % 2 == 0; }

iq::Layout LayoutOf(const AwqLayer& l) {
  WeightChunk in;
  in.dtype = l.dtype;
  in.rows = l.rows;
  in.cols = l.cols;
  in.params = l.q;
  iq::Layout lay;
  iq::MakeLayout(in, &lay);  // checked at planning
  return lay;
}

void RowLayouts(const std::vector<AwqLayer>& layers, std::vector<iq::Layout>* lays,
                std::vector<uint64_t>* offset) {
  lays->assign(layers.size(), iq::Layout{});
  offset->assign(layers.size() + 1, 0);
  for (size_t li = 0; li < layers.size(); ++li) {
    if (layers[li].quantized) (*lays)[li] = LayoutOf(layers[li]);
    (*offset)[li + 1] = (*offset)[li] + (layers[li].quantized ? layers[li].rows : 0);
  }
}

namespace {

// Per thread: the row's f32 values, W s, and one row of dW.
struct RowScratch {
  std::vector<float> w, ws;
  std::vector<double> dw, hd;
  void Size(size_t n) {
    if (w.size() < n) {
      w.resize(n);
      ws.resize(n);
      dw.resize(n);
      hd.resize(n);
    }
  }
};

// Row r of dW for candidate s: the BF16 kernel where it applies, else the definition.
void ErrorRow(const AwqLayer& l, const iq::Layout& lay, uint64_t r, const Cand& c, bool bf16,
              RowScratch& t, double* out) {
  if (bf16 && c.kernel &&
      intq::Bf16ScaledRowError(reinterpret_cast<const uint16_t*>(l.data) + r * l.cols, c.s.data(),
                      c.inv.data(), lay, l.q.symmetric, t.ws.data(), out)) {
    return;
  }
  LoadRow(l, r, t.w.data());
  intq::ScaledErrorRowScalar(t.w.data(), c.s.data(), lay, l.q, l.dtype, t.ws.data(), out);
}

}  // namespace

double ExactLossRow(const AwqLayer& l, const iq::Layout& lay, uint64_t r, const Cand& c,
                    const std::vector<double>& h) {
  thread_local RowScratch t;
  t.Size(l.cols);
  const bool bf16 = l.dtype == DType::kBF16 && Aligned2(l);
  double loss;
  if (bf16 && c.kernel &&
      intq::Bf16ScaledRowLoss(reinterpret_cast<const uint16_t*>(l.data) + r * l.cols, c.s.data(),
                     c.inv.data(), h.data(), lay, l.q.symmetric, t.ws.data(), &loss)) {
    return loss;
  }
  ErrorRow(l, lay, r, c, false, t, t.dw.data());
  for (uint64_t i = 0; i < l.cols; ++i) t.hd[i] = t.dw[i] * t.dw[i];
  return intq::ScaledDot4(t.hd.data(), h.data(), l.cols);
}

namespace {

// sum a[i] * b[i] in f64 over four partial sums, as ScaledDot4 (the full-Hessian trace's P .* E).
double Dot(const float* a, const double* b, size_t n) {
  double acc[4] = {0, 0, 0, 0};
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int k = 0; k < 4; ++k) acc[k] += double(a[i + k]) * b[i + k];
  }
  for (; i < n; ++i) acc[0] += double(a[i]) * b[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

}  // namespace
}  // namespace awq_internal

namespace iq = intq::internal;
using awq_internal::Aligned2;
using awq_internal::Cand;
using awq_internal::Candidate;
using awq_internal::DiagonalSums;
using awq_internal::Dot;
using awq_internal::ErrorRow;
using awq_internal::LayoutOf;
using awq_internal::RowScratch;
using awq_internal::ToDType;

Result<DuoScaling> ParseDuoScaling(const std::string& t) {
  if (t == "true") return DuoScaling::kTrue;
  if (t == "false") return DuoScaling::kFalse;
  if (t == "both") return DuoScaling::kBoth;
  return Error(ErrorCode::kUsage, "--awq-duo-scaling must be true, false or both, not '" + t + "'");
}

Result<AwqSearchKind> ParseAwqSearch(const std::string& t) {
  if (t == "exact") return AwqSearchKind::kExact;
  if (t == "screened") return AwqSearchKind::kScreened;
  return Error(ErrorCode::kUsage, "--awq-search must be exact or screened, not '" + t + "'");
}

std::vector<std::pair<double, bool>> AwqGrid(int n_grid, DuoScaling duo) {
  std::vector<std::pair<double, bool>> g;
  switch (duo) {
    case DuoScaling::kBoth: {
      const int n = n_grid / 2;
      for (int i = 0; i < n; ++i) {
        for (bool d : {false, true}) g.emplace_back(double(i) / double(n - 1), d);
      }
      break;
    }
    case DuoScaling::kFalse:
      for (int i = 0; i < n_grid; ++i) g.emplace_back(double(i) / double(n_grid - 1), false);
      break;
    case DuoScaling::kTrue:  // identity scaling (0.0, False) first, then the duo ratios
      g.emplace_back(0.0, false);
      for (int i = 0; i < n_grid - 1; ++i) g.emplace_back(double(i) / double(n_grid - 2), true);
      break;
  }
  return g;
}

namespace {

// One BF16 row's terms of _compute_layer_means, as the loop in AwqWeightMeans adds them, in
// loops without calls or branches (compiled per ISA, chosen at load time): |W| is the bits
// without the sign, the group max an integer max of those (finite bf16 patterns order like
// their magnitudes), each quotient RNE'd to BF16 by the same bit arithmetic as RoundTo (no
// NaN can arise: |w| finite, den >= 1e-6). False, before anything is added, for a row
// holding Inf or NaN (the caller then runs the general loop, which keeps torch's NaN rules).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
bool MeansRowBf16(const uint16_t* w, uint64_t cols, uint64_t group, float* den, double* sum) {
  for (uint64_t c0 = 0, g = 0; c0 < cols; c0 += group, ++g) {
    uint16_t m = 0;
    for (uint64_t c = c0; c < c0 + group; ++c) m = std::max<uint16_t>(m, w[c] & 0x7FFF);
    if (m >= 0x7F80) return false;
    // weight.div_(amax + 1e-6): the sum in D (a Python scalar keeps D), the quotient too.
    den[g] = RoundTo(DType::kBF16,
                     static_cast<float>(double(std::bit_cast<float>(uint32_t{m} << 16)) + 1e-6));
  }
  for (uint64_t c0 = 0, g = 0; c0 < cols; c0 += group, ++g) {
    const float d = den[g];
    for (uint64_t c = c0; c < c0 + group; ++c) {
      const float q = std::bit_cast<float>(uint32_t(w[c] & 0x7FFF) << 16) / d;
      const uint32_t bits = std::bit_cast<uint32_t>(q);
      sum[c] += double(std::bit_cast<float>((bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u));
    }
  }
  return true;
}

}  // namespace

std::vector<double> AwqWeightMeans(const std::vector<AwqLayer>& layers) {
  const uint64_t n = layers.empty() ? 0 : layers.front().cols;
  std::vector<double> sum(n, 0.0);
  std::vector<float> den;
  double count = 0;
  for (const AwqLayer& l : layers) {
    if (!l.quantized) continue;  // no quantization_scheme: skipped, as the reference does
    const DType d = l.dtype;
    const uint64_t chunk = l.q.group_size > 0 ? uint64_t(l.q.group_size) : l.cols;
    den.resize(l.cols / chunk);
    for (uint64_t r = 0; r < l.rows; ++r) {
      if (d == DType::kBF16 && Aligned2(l) &&
          MeansRowBf16(reinterpret_cast<const uint16_t*>(l.data) + r * l.cols, l.cols, chunk,
                       den.data(), sum.data())) {
        continue;
      }
      for (uint64_t c0 = 0; c0 < l.cols; c0 += chunk) {
        float amax = 0;
        for (uint64_t c = c0; c < c0 + chunk; ++c) {
          amax = std::max(amax, std::fabs(LoadElement(l.data, d, r * l.cols + c)));
        }
        // weight.div_(amax + 1e-6): the sum in D (a Python scalar keeps D), the quotient too.
        const float den = ToDType(double(amax) + 1e-6, d);
        for (uint64_t c = c0; c < c0 + chunk; ++c) {
          const float a = std::fabs(LoadElement(l.data, d, r * l.cols + c));
          sum[c] += double(RoundTo(d, a / den));
        }
      }
    }
    count += double(l.rows);
  }
  for (double& v : sum) v /= count;
  return sum;
}

Result<AwqResult> AwqSearch(const std::vector<AwqLayer>& layers, const std::vector<float>& x_mean,
                            const std::vector<double>& h, bool full, double tokens, int n_grid,
                            DuoScaling duo, bool prune, AwqSearchKind search) {
  const size_t n = x_mean.size();
  const std::vector<double> w_mean =
      duo == DuoScaling::kFalse ? std::vector<double>(n, 1.0) : AwqWeightMeans(layers);
  double outputs = 0;
  for (const AwqLayer& l : layers) outputs += l.quantized ? double(l.rows) : 0.0;
  // The full-Hessian trace sum_r e_r^T H e_r as one SGEMM per layer (OpenBLAS, as GPTQ loads
  // it): P = E H in f32, then sum(P .* E) in f64. A scalar f64 loop cost rows x n^2 per grid
  // point (MiniLM's AWQ: 11 s against RTN's 0.2 s).
  const Blas* blas = nullptr;
  std::vector<float> hf, ef, pf;
  if (full) {
    QUENCH_ASSIGN_OR_RETURN(blas, LoadBlas());
    hf.assign(h.begin(), h.end());
  }
  const std::vector<std::pair<double, bool>> grid = AwqGrid(n_grid, duo);
  const size_t count = grid.size();
  std::vector<Cand> cands(count);
  for (size_t g = 0; g < count; ++g) {
    Cand& c = cands[g];
    c.s = Candidate(x_mean, w_mean, grid[g].first, grid[g].second);
    c.kernel = intq::ScaledKernelScales(c.s.data(), n);
    c.inv.resize(n);
    for (size_t j = 0; j < n; ++j) c.inv[j] = 1.0 / c.s[j];
  }
  // Each candidate's loss, summed over layers, then rows, in order (whatever the threads).
  std::vector<double> sums(count, 0.0);
  const bool screened = !full && search == AwqSearchKind::kScreened;
  awq_internal::ScreenInfo screen;
  if (screened) {
    sums = awq_internal::ScreenedSums(layers, cands, h, &screen);
  } else if (!full) {
    sums = DiagonalSums(layers, cands, h, prune);
  }
  for (const AwqLayer& l : layers) {
    if (!l.quantized || !full) continue;
    const iq::Layout lay = LayoutOf(l);
    const bool bf16 = l.dtype == DType::kBF16 && Aligned2(l);
    // A block of rows at a time (about 1M elements: 8 MB of dW), so that memory stays that
    // small whatever the layer's size.
    const uint64_t block = std::max<uint64_t>(1, (uint64_t{1} << 20) / l.cols);
    std::vector<double> dw;
    for (size_t g = 0; g < count; ++g) {
      for (uint64_t r0 = 0; r0 < l.rows; r0 += block) {
        const uint64_t rows = std::min(block, l.rows - r0);
        dw.resize(rows * n);
        tbb::parallel_for(uint64_t{0}, rows, [&](uint64_t i) {
          thread_local RowScratch t;
          t.Size(l.cols);
          ErrorRow(l, lay, r0 + i, cands[g], bf16, t, dw.data() + i * n);
        });
        ef.assign(dw.begin(), dw.end());
        pf.resize(dw.size());
        const int m = static_cast<int>(rows), k = static_cast<int>(n);
        blas->sgemm_nn(m, k, k, 1.f, ef.data(), k, hf.data(), k, 0.f, pf.data(), k);
        sums[g] += Dot(pf.data(), dw.data(), dw.size());
      }
    }
  }
  AwqResult best;
  if (screened) {
    best.search = AwqSearchKind::kScreened;
    best.rtn_exact = count > 0 && screen.exact[0];
    best.finalists = screen.finalists;
  }
  double best_loss = std::numeric_limits<double>::infinity();
  for (size_t g = 0; g < count; ++g) {
    const double loss = sums[g] / (tokens * outputs);  // mse_loss(reduction="sum") / numel
    // Screened: a dropped candidate's entry is its estimate (never chosen: only exact sums
    // take part in the choice below).
    best.losses.push_back(screened && !screen.exact[g] ? screen.estimate[g] / (tokens * outputs)
                                                       : loss);
    if (g == 0) best.loss_rtn = best.losses.back();
    if (loss < best_loss) {  // strictly smaller: the first of equal losses wins
      best_loss = loss;
      best.ratio = grid[g].first;
      best.duo = grid[g].second;
      best.scales = cands[g].s;
    }
  }
  if (best.ratio < 0) {
    return Error(ErrorCode::kNonFinite, "AWQ: no candidate scale gave a finite loss");
  }
  best.loss = best_loss;
  return best;
}

}  // namespace quench::calib
