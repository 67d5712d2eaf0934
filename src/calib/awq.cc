// AWQ's grid search from statistics (see awq.h).
#include "calib/awq.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
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

// min and max of v[0, n) in four independent lanes (one serial chain stalls on each compare).
// The same values as one pass: min and max are exact, and a -0 against a +0 (which one a lane
// keeps may differ) gives the same scale and zero point, ComputeParams taking min(mn, 0) and
// max(mx, 0) first.
void GroupMinMax(const float* v, size_t n, float* mn_out, float* mx_out) {
  float mn[4] = {v[0], v[0], v[0], v[0]}, mx[4] = {v[0], v[0], v[0], v[0]};
  size_t c = 0;
  for (; c + 4 <= n; c += 4) {
    for (int k = 0; k < 4; ++k) {
      mn[k] = std::min(mn[k], v[c + k]);
      mx[k] = std::max(mx[k], v[c + k]);
    }
  }
  for (; c < n; ++c) {
    mn[0] = std::min(mn[0], v[c]);
    mx[0] = std::max(mx[0], v[c]);
  }
  *mn_out = std::min(std::min(mn[0], mn[1]), std::min(mn[2], mn[3]));
  *mx_out = std::max(std::max(mx[0], mx[1]), std::max(mx[2], mx[3]));
}

// sum a[i] * b[i] in f64 over four partial sums (one chain of dependent adds is the loss's
// bottleneck otherwise). The order differs from one running sum by rounding only; equal
// candidates (the same dW) still give equal losses, so ties fall as before.
template <typename A>
double Dot(const A* a, const double* b, size_t n) {
  double acc[4] = {0, 0, 0, 0};
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int k = 0; k < 4; ++k) acc[k] += double(a[i + k]) * b[i + k];
  }
  for (; i < n; ++i) acc[0] += double(a[i]) * b[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// iq::RoundToDType without branches, so that the loops below vectorise: BF16 rounds to
// nearest even by the same bit arithmetic, NaN kept as it is (a select, not a branch).
inline float RoundBf16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const float r = std::bit_cast<float>((bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u);
  return f != f ? f : r;
}

// One row of dW for BF16 weights (the common case), as WeightErrorRow below computes it for
// every dtype, in loops without calls or branches: compiled for AVX-512, AVX2 and the baseline,
// chosen at load time (target_clones). Only IEEE operations the reference makes, none fused
// (no a * b + c appears: every product is rounded before anything is added).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void Bf16ErrorRow(const float* w, const double* s, size_t cols, const iq::Layout& lay,
                  bool symmetric, float* ws, double* out) {
  for (size_t c = 0; c < cols; ++c) ws[c] = RoundBf16(static_cast<float>(double(w[c]) * s[c]));
  const float qmin = static_cast<float>(lay.qmin), qmax = static_cast<float>(lay.qmax);
  for (size_t g = 0; g < lay.n_groups; ++g) {
    const size_t c0 = g * lay.group, n = lay.group;
    float mn, mx;
    GroupMinMax(ws + c0, n, &mn, &mx);
    const iq::GroupParams p = iq::ComputeParams(mn, mx, lay, symmetric, DType::kBF16);
    const float zp = static_cast<float>(p.zp), scale = p.scale;
    for (size_t c = c0; c < c0 + n; ++c) {
      // iq::QuantizeValue, then _dequantize and the division by the scales.
      float v = RoundBf16(ws[c] / scale);
      if (!symmetric) v = RoundBf16(v + zp);
      v = std::rint(std::min(std::max(v, qmin), qmax));
      const float deq = RoundBf16((v - zp) * scale);
      const float back = RoundBf16(static_cast<float>(double(deq) / s[c]));
      out[c] = double(w[c]) - double(back);
    }
  }
}

// One row of dW, any dtype: every rounding to D is iq::RoundToDType (the same value as
// RoundTo), once per operation the reference rounds.
void WeightErrorRow(const float* w, const double* s, size_t cols, const iq::Layout& lay,
                    const KernelParams& q, DType d, float* ws, double* out) {
  for (size_t c = 0; c < cols; ++c) {
    // weight.data.copy_(orig * scales): the product in the scales' dtype, stored in D.
    ws[c] = iq::RoundToDType(static_cast<float>(double(w[c]) * s[c]), d);
  }
  for (size_t g = 0; g < lay.n_groups; ++g) {
    const size_t c0 = g * lay.group, c1 = c0 + lay.group;
    float mn, mx;
    GroupMinMax(ws + c0, c1 - c0, &mn, &mx);
    const iq::GroupParams p = iq::ComputeParams(mn, mx, lay, q.symmetric, d);
    for (size_t c = c0; c < c1; ++c) {
      const int qv = iq::QuantizeValue(ws[c], p, lay, q.symmetric, d);
      // _dequantize: (q - zp) * scale in D; then / scales, promoted, and .to(D).
      const float deq = iq::RoundToDType(static_cast<float>(qv - p.zp) * p.scale, d);
      const float back = iq::RoundToDType(static_cast<float>(double(deq) / s[c]), d);
      out[c] = double(w[c]) - double(back);
    }
  }
}

// dW = W - Q(W s)/s for rows [r0, r0 + rows) of a layer, with the memoryless min-max observer
// on W s (rows are quantized independently).
void WeightError(const AwqLayer& l, uint64_t r0, uint64_t rows, const std::vector<double>& s,
                 std::vector<double>* dw) {
  const DType d = l.dtype;
  WeightChunk in;
  in.dtype = d;
  in.rows = l.rows;
  in.cols = l.cols;
  in.params = l.q;
  iq::Layout lay;
  iq::MakeLayout(in, &lay);  // checked at planning
  dw->resize(rows * l.cols);
  std::vector<float> w(l.cols), ws(l.cols);
  for (uint64_t r = 0; r < rows; ++r) {
    LoadRow(l, r0 + r, w.data());
    double* out = dw->data() + r * l.cols;
    if (d == DType::kBF16) {
      Bf16ErrorRow(w.data(), s.data(), l.cols, lay, l.q.symmetric, ws.data(), out);
    } else {
      WeightErrorRow(w.data(), s.data(), l.cols, lay, l.q, d, ws.data(), out);
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
      // A block of rows at a time (about 1M elements: 8 MB of dW), so that memory stays
      // that small whatever the layer's size (a whole 11008 x 4096 dW was 360 MB per
      // mapping searched at once).
      const uint64_t block = std::max<uint64_t>(1, (uint64_t{1} << 20) / l.cols);
      for (uint64_t r0 = 0; r0 < l.rows; r0 += block) {
        const uint64_t rows = std::min(block, l.rows - r0);
        WeightError(l, r0, rows, s, &dw);
        if (full) {
          ef.assign(dw.begin(), dw.end());
          pf.resize(dw.size());
          const int m = static_cast<int>(rows), k = static_cast<int>(n);
          blas->sgemm_nn(m, k, k, 1.f, ef.data(), k, hf.data(), k, 0.f, pf.data(), k);
          loss += Dot(pf.data(), dw.data(), dw.size());
        } else {
          for (uint64_t r = 0; r < rows; ++r) {
            const double* e = dw.data() + r * n;
            for (size_t i = 0; i < n; ++i) hd[i] = e[i] * e[i];
            loss += Dot(hd.data(), h.data(), n);
          }
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
