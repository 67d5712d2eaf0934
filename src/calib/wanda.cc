// Wanda pruning (see wanda.h).
#include "calib/wanda.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <utility>

#include "schemes/float_formats.h"

namespace quench::calib {

std::vector<float> WandaColumnScale(const std::vector<double>& sum_x2, double count) {
  std::vector<float> s(sum_x2.size());
  for (size_t j = 0; j < s.size(); ++j) {
    const float mean = count > 0 ? static_cast<float>(sum_x2[j] / count) : 0.f;
    s[j] = std::sqrt(mean);  // torch.sqrt on f32
  }
  return s;
}

bool WandaPruneRows(const uint8_t* src, uint8_t* dst, DType dtype, size_t n_rows, size_t cols,
                    const prune::PruneSpec& spec, const float* col_scale, uint64_t* zeroed) {
  if (spec.per_tensor || spec.kind == prune::PruneSpec::kNone) return false;
  if (spec.kind == prune::PruneSpec::kNM && (spec.m <= 0 || cols % spec.m != 0)) return false;
  const size_t esz = DTypeBits(dtype) / 8;
  if (esz != 2 && esz != 4) return false;
  if (dst != src) std::memmove(dst, src, n_rows * cols * esz);
  std::vector<float> metric(cols);
  std::vector<uint32_t> order(cols);
  std::vector<std::pair<float, int64_t>> window;
  uint64_t pruned = 0;
  for (size_t r = 0; r < n_rows; ++r) {
    uint8_t* row = dst + r * cols * esz;
    for (size_t c = 0; c < cols; ++c) {
      const float w = ElementToF32(row, dtype, c);
      if (!std::isfinite(w)) return false;
      metric[c] = std::fabs(w) * col_scale[c];  // W_metric = |W| * sqrt(S), f32
    }
    auto zero = [&](size_t c) {
      std::memset(row + c * esz, 0, esz);
      ++pruned;
    };
    if (spec.kind == prune::PruneSpec::kUnstructured) {
      // sort(stable=True) then the first k: the k smallest by (score, column).
      const uint64_t k = prune::PruneCount(spec.fraction, cols);
      if (k == 0) continue;
      std::iota(order.begin(), order.end(), 0u);
      auto less = [&](uint32_t a, uint32_t b) {
        return metric[a] < metric[b] || (metric[a] == metric[b] && a < b);
      };
      std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), less);
      for (uint64_t i = 0; i < k; ++i) zero(order[i]);
    } else {
      // torch.topk(tmp, M - N, largest=False) per window of M columns: on the CPU, the kernel
      // fills (value, index) pairs and runs std::nth_element with a value-only comparison
      // (aten TopKImpl.h; partial_sort only when k * 64 <= M, never for M <= 16).
      const int k = spec.m - spec.n;
      if (k <= 0) continue;
      window.resize(spec.m);
      for (size_t c0 = 0; c0 < cols; c0 += spec.m) {
        for (int j = 0; j < spec.m; ++j) window[j] = {metric[c0 + j], j};
        std::nth_element(window.begin(), window.begin() + (k - 1), window.end(),
                         [](const auto& a, const auto& b) { return a.first < b.first; });
        for (int j = 0; j < k; ++j) zero(c0 + static_cast<size_t>(window[j].second));
      }
    }
  }
  if (zeroed != nullptr) *zeroed += pruned;
  return true;
}

}  // namespace quench::calib
