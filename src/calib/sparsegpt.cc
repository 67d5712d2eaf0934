// SparseGPT (see sparsegpt.h). Each step cites the line of llm-compressor 0.14.0.1's
// sgpt_sparsify.py::sparsify_weight it follows; the factor is GPTQ's (gptq.cc), since the
// reference's dead-column, dampening and Cholesky steps are the same lines as quantize_weight's.
#include "calib/sparsegpt.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "calib/blas.h"
#include "schemes/float_formats.h"

namespace quench::calib {
namespace {

// The saliency tmp = W1**2 / diag(Hinv1)**2, in f32 as torch computes it (x**2 is x * x).
inline float Saliency(float w, float d) { return (w * w) / (d * d); }

// torch.topk(tmp, k, dim=1, largest=False)'s indices for one row of a group, as its CPU kernel
// (aten/src/ATen/native/TopKImpl.h topk_impl_loop) picks them: (value, index) pairs in index
// order through std::partial_sort when k * 64 <= size, else std::nth_element at k - 1, with
// NaN the largest. Ties fall as the algorithm leaves them, not by index; the same libstdc++
// algorithm on the same pairs gives the same set. Sets mask[i] for the k chosen.
void SmallestK(const float* tmp, size_t size, size_t k, uint8_t* mask) {
  using Elem = std::pair<float, int64_t>;
  Elem queue[64];
  for (size_t j = 0; j < size; ++j) queue[j] = {tmp[j], static_cast<int64_t>(j)};
  const auto less = [](const Elem& x, const Elem& y) {
    return (!std::isnan(x.first) && std::isnan(y.first)) || x.first < y.first;
  };
  if (k * 64 <= size) {
    std::partial_sort(queue, queue + k, queue + size, less);
  } else {
    std::nth_element(queue, queue + k - 1, queue + size, less);
  }
  for (size_t j = 0; j < k; ++j) mask[queue[j].second] = 1;
}

bool Store(const std::vector<float>& w, DType dtype, uint8_t* dst) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, w.data(), w.size() * 4);
      return true;
    case DType::kBF16:
      for (size_t i = 0; i < w.size(); ++i) {
        const uint16_t b = F32ToBF16(w[i]);
        std::memcpy(dst + i * 2, &b, 2);
      }
      return true;
    case DType::kF16:
      for (size_t i = 0; i < w.size(); ++i) {
        const uint16_t b = F32ToF16(w[i]);
        std::memcpy(dst + i * 2, &b, 2);
      }
      return true;
    default:
      return false;
  }
}

}  // namespace

bool SparsifyRows(const GptqFactor& f, const uint8_t* src, DType dtype, size_t rows,
                  size_t cols, const SparseGptOptions& options, uint8_t* dst,
                  uint64_t* pruned, double* loss) {
  auto blas = LoadBlas();
  const bool nm = options.prune_n != 0;
  if (!blas.ok() || cols != f.n || options.block_size <= 0 || !f.perm.empty() ||
      (dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF16) ||
      cols > static_cast<size_t>(INT32_MAX / 2) || rows > static_cast<size_t>(INT32_MAX)) {
    return false;
  }
  if (nm && (options.prune_m <= 0 || options.prune_m > 64 || options.prune_n < 0 ||
             options.prune_n >= options.prune_m || options.block_size % options.prune_m != 0 ||
             cols % static_cast<size_t>(options.prune_m) != 0)) {
    return false;
  }
  if (!nm && !(options.sparsity >= 0 && options.sparsity < 1)) return false;
  const size_t n = cols;
  // W = weight.to(float32); W[:, dead] = 0.
  std::vector<float> w(rows * n);
  for (size_t i = 0; i < rows * n; ++i) {
    w[i] = ElementToF32(src, dtype, i);
    if (!std::isfinite(w[i])) return false;
  }
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < n; ++c) {
      if (f.dead[c]) w[r * n + c] = 0.0f;
    }
  }
  const size_t bs = static_cast<size_t>(options.block_size);
  const size_t m = static_cast<size_t>(options.prune_m), k = static_cast<size_t>(options.prune_n);
  std::vector<float> w1(rows * bs), err(rows * bs), tmp;
  std::vector<uint8_t> mask(rows * bs);
  uint64_t zeroed = 0;
  double total = 0;
  // See section 3.4 of arXiv 2203.07259: the blocked sweep with lazy updates.
  for (size_t i1 = 0; i1 < n; i1 += bs) {
    const size_t i2 = std::min(i1 + bs, n), bw = i2 - i1;
    for (size_t r = 0; r < rows; ++r) std::copy_n(w.data() + r * n + i1, bw, w1.data() + r * bw);
    std::fill(mask.begin(), mask.end(), 0);
    auto d = [&](size_t j) { return f.u[(i1 + j) * n + i1 + j]; };  // diag(Hinv1)[j]
    if (!nm && rows > 0) {
      // thresh = sort(tmp.flatten())[int(tmp.numel() * sparsity)]; mask1 = tmp <= thresh.
      tmp.resize(rows * bw);
      for (size_t r = 0; r < rows; ++r) {
        for (size_t j = 0; j < bw; ++j) tmp[r * bw + j] = Saliency(w1[r * bw + j], d(j));
      }
      const size_t at = static_cast<size_t>(static_cast<double>(rows * bw) * options.sparsity);
      std::vector<float> sorted = tmp;
      std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(at),
                       sorted.end());
      const float thresh = sorted[at];
      for (size_t r = 0; r < rows; ++r) {
        for (size_t j = 0; j < bw; ++j) mask[r * bw + j] = tmp[r * bw + j] <= thresh;
      }
    }
    for (size_t i = 0; i < bw; ++i) {
      const float* urow = f.u.data() + (i1 + i) * n + i1;  // Hinv1[i, :]
      const float di = urow[i];
      for (size_t r = 0; r < rows; ++r) {
        float* wr = w1.data() + r * bw;
        uint8_t* mr = mask.data() + r * bw;
        if (nm && i % m == 0) {
          // mask1.scatter_(1, i + topk(W1[:, i:i+M]**2 / diag(Hinv1)[i:i+M]**2, N, largest=
          // False), True), from the values the block's earlier columns have updated.
          float g[64];
          for (size_t j = 0; j < m; ++j) g[j] = Saliency(wr[i + j], d(i + j));
          SmallestK(g, m, k, mr + i);
        }
        // q = w, zero where masked; Losses1 = (w - q)^2 / d^2; err1 = (w - q) / d;
        // W1[:, i:] -= err1 * Hinv1[i, i:].
        const float x = wr[i];
        const float q = mr[i] ? 0.0f : x;
        const float diff = x - q;
        const float e = diff / di;
        total += static_cast<double>((diff * diff) / (di * di));
        w[r * n + i1 + i] = q;
        err[r * bw + i] = e;
        if (mr[i]) {
          ++zeroed;
          for (size_t j = i; j < bw; ++j) wr[j] -= e * urow[j];
        }
      }
    }
    // W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:].
    if (i2 < n && rows > 0) {
      (*blas)->sgemm_nn(static_cast<int>(rows), static_cast<int>(n - i2), static_cast<int>(bw),
                        -1.0f, err.data(), static_cast<int>(bw), f.u.data() + i1 * n + i2,
                        static_cast<int>(n), 1.0f, w.data() + i2, static_cast<int>(n));
    }
  }
  if (!Store(w, dtype, dst)) return false;
  if (pruned != nullptr) *pruned += zeroed;
  if (loss != nullptr) *loss = total / 2;
  return true;
}

}  // namespace quench::calib
