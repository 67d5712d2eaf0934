// AWQ's grid search from statistics (see awq.h).
#include "calib/awq.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "calib/blas.h"
#include "calib/smoothquant.h"
#include "schemes/int_shared.h"

namespace quench::calib {
namespace {

namespace iq = intq::internal;

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

// dW = W - Q(W s)/s for one layer's rows, with the memoryless min-max observer on W s.
void WeightError(const AwqLayer& l, const std::vector<double>& s, std::vector<double>* dw) {
  const DType d = l.dtype;
  WeightChunk in;
  in.dtype = d;
  in.rows = l.rows;
  in.cols = l.cols;
  in.params = l.q;
  iq::Layout lay;
  iq::MakeLayout(in, &lay);  // checked at planning
  dw->assign(l.rows * l.cols, 0.0);
  std::vector<float> ws(l.cols);
  for (uint64_t r = 0; r < l.rows; ++r) {
    for (uint64_t c = 0; c < l.cols; ++c) {
      // weight.data.copy_(orig * scales): the product in the scales' dtype, stored in D.
      ws[c] = ToDType(double(LoadElement(l.data, d, r * l.cols + c)) * s[c], d);
    }
    for (size_t g = 0; g < lay.n_groups; ++g) {
      const size_t c0 = g * lay.group, c1 = c0 + lay.group;
      float mn = ws[c0], mx = ws[c0];
      for (size_t c = c0; c < c1; ++c) {
        mn = std::min(mn, ws[c]);
        mx = std::max(mx, ws[c]);
      }
      const iq::GroupParams p = iq::ComputeParams(mn, mx, lay, l.q.symmetric, d);
      for (size_t c = c0; c < c1; ++c) {
        const int q = iq::QuantizeValue(ws[c], p, lay, l.q.symmetric, d);
        // _dequantize: (q - zp) * scale in D; then / scales, promoted, and .to(D).
        const float deq = RoundTo(d, static_cast<float>(q - p.zp) * p.scale);
        const float back = ToDType(double(deq) / s[c], d);
        (*dw)[r * l.cols + c] = double(LoadElement(l.data, d, r * l.cols + c)) - double(back);
      }
    }
  }
}

}  // namespace

Result<DuoScaling> ParseDuoScaling(const std::string& t) {
  if (t == "true") return DuoScaling::kTrue;
  if (t == "false") return DuoScaling::kFalse;
  if (t == "both") return DuoScaling::kBoth;
  return Error(ErrorCode::kUsage, "--awq-duo-scaling must be true, false or both, not '" + t + "'");
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

std::vector<double> AwqWeightMeans(const std::vector<AwqLayer>& layers) {
  const uint64_t n = layers.empty() ? 0 : layers.front().cols;
  std::vector<double> sum(n, 0.0);
  double count = 0;
  for (const AwqLayer& l : layers) {
    if (!l.quantized) continue;  // no quantization_scheme: skipped, as the reference does
    const DType d = l.dtype;
    const uint64_t chunk = l.q.group_size > 0 ? uint64_t(l.q.group_size) : l.cols;
    for (uint64_t r = 0; r < l.rows; ++r) {
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
                            DuoScaling duo) {
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
  AwqResult best;
  double best_loss = std::numeric_limits<double>::infinity();
  std::vector<double> dw, hd(n);
  for (const auto& [ratio, use_duo] : AwqGrid(n_grid, duo)) {
    std::vector<double> s = Candidate(x_mean, w_mean, ratio, use_duo);
    double loss = 0;
    for (const AwqLayer& l : layers) {
      if (!l.quantized) continue;
      WeightError(l, s, &dw);
      if (full) {
        ef.assign(dw.begin(), dw.end());
        pf.assign(dw.size(), 0.f);
        const int m = static_cast<int>(l.rows), k = static_cast<int>(n);
        blas->sgemm_nn(m, k, k, 1.f, ef.data(), k, hf.data(), k, 0.f, pf.data(), k);
        for (size_t i = 0; i < dw.size(); ++i) loss += double(pf[i]) * dw[i];
      } else {
        for (uint64_t r = 0; r < l.rows; ++r) {
          const double* e = dw.data() + r * n;
          for (size_t i = 0; i < n; ++i) loss += e[i] * e[i] * h[i];
        }
      }
    }
    loss /= tokens * outputs;  // mse_loss(reduction="sum") / num_elements
    best.losses.push_back(loss);
    if (best.losses.size() == 1) best.loss_rtn = loss;
    if (loss < best_loss) {  // strictly smaller: the first of equal losses wins
      best_loss = loss;
      best.ratio = ratio;
      best.duo = use_duo;
      best.scales = std::move(s);
    }
  }
  if (best.ratio < 0) {
    return Error(ErrorCode::kNonFinite, "AWQ: no candidate scale gave a finite loss");
  }
  best.loss = best_loss;
  return best;
}

}  // namespace quench::calib
