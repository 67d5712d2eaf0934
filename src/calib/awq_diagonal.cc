// AWQ's diagonal-proxy search (awq_internal.h's DiagonalSums): every candidate's loss sum,
// or, pruned, the sums of exactly those candidates that can still be the search's choice.
//
// Pruned search, certified: first every candidate's loss on every row by the bound kernel
// (src/schemes/int_scaled_bound.h: the definition's codes and dW, the sum in f32 lanes,
// within a proven relative and absolute bound of the definition's f64 term; rows it declines
// are taken by the definition). Summing gives each candidate an interval [lo, hi] that holds
// its exact loss. A candidate whose lo exceeds the smallest hi is strictly worse than some
// candidate, so neither the minimum nor a tie with it: it is left at +Inf. The others
// (usually the winner alone) and the first candidate (ratio 0, RTN, whose loss the report
// gives) are then evaluated by the definition, in its order. So the choice (the first of the
// smallest exact losses), its loss and RTN's are those of the exhaustive search; the bound
// pass costs about a fifth of an exact pass per candidate (bench/README.md).
#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include <tbb/parallel_for.h>

#include "calib/awq_internal.h"
#include "schemes/int_scaled_bound.h"
#include "schemes/int_scaled_error.h"

namespace quench::calib::awq_internal {
namespace {

struct Block {
  size_t layer;
  uint64_t r0, r1;
};

// Blocks of rows of the quantized layers, about 64K elements each (256 KB as f32: the block
// stays in L2 while every candidate runs on it).
std::vector<Block> MakeBlocks(const std::vector<AwqLayer>& layers) {
  std::vector<Block> blocks;
  for (size_t li = 0; li < layers.size(); ++li) {
    const AwqLayer& l = layers[li];
    if (!l.quantized) continue;
    const uint64_t step = std::max<uint64_t>(1, (uint64_t{1} << 16) / std::max<uint64_t>(1, l.cols));
    for (uint64_t r0 = 0; r0 < l.rows; r0 += step) {
      blocks.push_back({li, r0, std::min(l.rows, r0 + step)});
    }
  }
  return blocks;
}

// Per candidate, the bound kernel's f32 copies of s and 1 / s (empty where the kernels do
// not take the candidate's scales).
struct CandF32 {
  std::vector<float> s32, inv32;
};

}  // namespace

std::vector<double> DiagonalSums(const std::vector<AwqLayer>& layers,
                                 const std::vector<Cand>& cands, const std::vector<double>& h,
                                 bool prune) {
  const size_t count = cands.size();
  const std::vector<Block> blocks = MakeBlocks(layers);
  std::vector<iq::Layout> lays(layers.size());
  std::vector<uint64_t> offset(layers.size() + 1, 0);  // row offsets into per-candidate arrays
  for (size_t li = 0; li < layers.size(); ++li) {
    if (layers[li].quantized) lays[li] = LayoutOf(layers[li]);
    offset[li + 1] = offset[li] + (layers[li].quantized ? layers[li].rows : 0);
  }
  const uint64_t total_rows = offset.back();
  std::vector<double> terms(count * total_rows, 0.0);  // [g * total_rows + row]
  // The definition's terms of candidates `gs`, then their sums in its order.
  std::vector<double> sums(count, std::numeric_limits<double>::infinity());
  auto exact = [&](const std::vector<size_t>& gs) {
    tbb::parallel_for(size_t{0}, blocks.size(), [&](size_t i) {
      const Block& b = blocks[i];
      const AwqLayer& l = layers[b.layer];
      for (size_t g : gs) {
        for (uint64_t r = b.r0; r < b.r1; ++r) {
          terms[g * total_rows + offset[b.layer] + r] =
              ExactLossRow(l, lays[b.layer], r, cands[g], h);
        }
      }
    });
    for (size_t g : gs) {
      double v = 0;
      for (uint64_t r = 0; r < total_rows; ++r) v += terms[g * total_rows + r];
      sums[g] = v;
    }
  };
  std::vector<size_t> all(count);
  for (size_t g = 0; g < count; ++g) all[g] = g;
  const uint64_t n = layers.empty() ? 0 : layers.front().cols;
  if (!prune || count <= 1 || n == 0) {
    exact(all);
    return sums;
  }
  std::vector<float> h32(h.begin(), h.end());
  double hmax = 0;
  for (float v : h32) hmax = std::max(hmax, double(std::fabs(v)));
  std::vector<CandF32> f32(count);
  for (size_t g = 0; g < count; ++g) {
    if (!cands[g].kernel) continue;
    f32[g].s32.assign(cands[g].s.begin(), cands[g].s.end());
    f32[g].inv32.assign(cands[g].inv.begin(), cands[g].inv.end());
  }
  tbb::parallel_for(size_t{0}, blocks.size(), [&](size_t i) {
    const Block& b = blocks[i];
    const AwqLayer& l = layers[b.layer];
    const uint64_t rows = b.r1 - b.r0, cols = l.cols;
    thread_local std::vector<float> w, ws;
    thread_local std::vector<char> ok;
    w.resize(rows * cols);
    ws.resize(cols);
    ok.assign(rows, 0);
    if (l.dtype == DType::kBF16 && Aligned2(l)) {
      const uint16_t* src = reinterpret_cast<const uint16_t*>(l.data) + b.r0 * cols;
      for (uint64_t k = 0; k < rows * cols; ++k) {
        w[k] = std::bit_cast<float>(uint32_t{src[k]} << 16);
      }
      for (uint64_t r = 0; r < rows; ++r) ok[r] = intq::BoundRowOk(&w[r * cols], cols);
    }
    for (size_t g = 0; g < count; ++g) {
      const Cand& c = cands[g];
      for (uint64_t r = 0; r < rows; ++r) {
        float a;
        double& t = terms[g * total_rows + offset[b.layer] + b.r0 + r];
        if (ok[r] && c.kernel &&
            intq::Bf16ScaledRowLossBound(&w[r * cols], c.s.data(), f32[g].s32.data(),
                                         f32[g].inv32.data(), h32.data(), lays[b.layer],
                                         l.q.symmetric, ws.data(), nullptr, &a)) {
          t = a;
        } else {
          t = ExactLossRow(l, lays[b.layer], b.r0 + r, c, h);  // the definition: no error
        }
      }
    }
  });
  // Each candidate's interval. Per row |approx - exact| <= rel * approx + abs; the sum of
  // the approximations in f64 and the definition's own row sum add at most total_rows
  // 2^-53 relative each, well inside the factor 2 on rel (ScaledBoundRel >= 2^-28).
  const double rel = 2 * intq::ScaledBoundRel(n);
  const double abs = 2 * double(total_rows) * intq::ScaledBoundAbs(n, hmax);
  std::vector<double> lo(count), hi(count);
  double min_hi = std::numeric_limits<double>::infinity();
  for (size_t g = 0; g < count; ++g) {
    double v = 0;
    for (uint64_t r = 0; r < total_rows; ++r) v += terms[g * total_rows + r];
    if (std::isfinite(v)) {
      lo[g] = v * (1 - rel) - abs;
      hi[g] = v * (1 + rel) + abs;
    } else {  // an f32 overflow or a NaN: no bound; the definition decides
      lo[g] = -std::numeric_limits<double>::infinity();
      hi[g] = std::numeric_limits<double>::infinity();
    }
    min_hi = std::min(min_hi, hi[g]);
  }
  std::vector<size_t> finish = {0};
  for (size_t g = 1; g < count; ++g) {
    if (!(lo[g] > min_hi)) finish.push_back(g);
  }
  exact(finish);
  return sums;
}

}  // namespace quench::calib::awq_internal
