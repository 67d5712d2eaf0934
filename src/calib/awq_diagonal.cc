// AWQ's diagonal-proxy search (awq_internal.h's DiagonalSums): every candidate's loss sum,
// or, pruned, the sums of exactly those candidates that can still be the search's choice.
//
// Pruned search, certified: every candidate's loss on every row by the bound kernel
// (src/schemes/int_scaled_bound.h: the definition's codes and dW, the sum in f32 lanes,
// within a proven relative and absolute bound of the definition's f64 term; rows it declines
// are taken by the definition). Summing gives each candidate an interval that holds its
// exact loss. A candidate whose lower end exceeds the smallest upper end is strictly worse
// than some candidate, so neither the minimum nor a tie with it: it is left at +Inf. The
// others and the first candidate (ratio 0, RTN, whose loss the report gives) are evaluated
// by the definition (ScaledLossFromBack on the kernel's exact BF16 values, in the
// definition's order). So the choice (the first of the smallest exact losses), its loss and
// RTN's are those of the exhaustive search. The likely winner (lowest on a sample of the
// blocks) runs exactly from the start, so it usually needs no second pass.
#include <algorithm>
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

// A block's rows as f32 (exact BF16 values) and which rows the bound kernel may take.
struct BlockRows {
  std::vector<float> w, ws, back;
  std::vector<char> ok;
  void Load(const AwqLayer& l, const Block& b) {
    const uint64_t rows = b.r1 - b.r0, cols = l.cols;
    w.resize(rows * cols);
    ws.resize(cols);
    back.resize(cols);
    ok.assign(rows, 0);
    if (l.dtype != DType::kBF16 || !Aligned2(l)) return;
    const uint16_t* src = reinterpret_cast<const uint16_t*>(l.data) + b.r0 * cols;
    for (uint64_t r = 0; r < rows; ++r) {
      ok[r] = intq::LoadBf16RowBound(src + r * cols, cols, &w[r * cols]);
    }
  }
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
  // f32 copies for the bound kernel (empty where it does not take the candidate's scales).
  std::vector<float> h32(h.begin(), h.end());
  std::vector<CandF32> f32(count);
  for (size_t g = 0; g < count; ++g) {
    if (!cands[g].kernel) continue;
    f32[g].s32.assign(cands[g].s.begin(), cands[g].s.end());
    f32[g].inv32.assign(cands[g].inv.begin(), cands[g].inv.end());
  }
  // Runs candidates `gs` on every block: the definition's term of each row (`exact`: from
  // the bound kernel's exact BF16 back values, ScaledLossFromBack) or its f32 bound
  // approximation; rows the kernel does not take get the definition's term either way. The
  // unpruned search (the tests' reference) takes every term from the exact row kernel.
  auto run = [&](const std::vector<size_t>& gs, const std::vector<char>& exact_g,
                 const std::vector<size_t>& ids) {
    tbb::parallel_for(size_t{0}, ids.size(), [&](size_t i) {
      const Block& b = blocks[ids[i]];
      const AwqLayer& l = layers[b.layer];
      const uint64_t cols = l.cols;
      thread_local BlockRows t;
      t.Load(l, b);
      for (size_t g : gs) {
        const Cand& c = cands[g];
        const bool exact = exact_g[g];
        for (uint64_t r = 0; r < b.r1 - b.r0; ++r) {
          float a;
          double& term = terms[g * total_rows + offset[b.layer] + b.r0 + r];
          const float* w = &t.w[r * cols];
          if (prune && t.ok[r] && c.kernel &&
              intq::Bf16ScaledRowLossBound(w, c.s.data(), f32[g].s32.data(),
                                           f32[g].inv32.data(), h32.data(), lays[b.layer],
                                           l.q.symmetric, t.ws.data(),
                                           exact ? t.back.data() : nullptr, &a)) {
            term = exact ? intq::ScaledLossFromBack(w, t.back.data(), h.data(), cols) : a;
          } else {
            term = ExactLossRow(l, lays[b.layer], b.r0 + r, c, h);
          }
        }
      }
    });
  };
  // The definition's sums of candidates `gs`, in its order.
  std::vector<double> sums(count, std::numeric_limits<double>::infinity());
  std::vector<size_t> every(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) every[i] = i;
  const std::vector<char> all_exact(count, 1);
  auto sum = [&](const std::vector<size_t>& gs) {
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
    run(all, all_exact, every);
    sum(all);
    return sums;
  }
  double hmax = 0;
  for (float v : h32) hmax = std::max(hmax, double(std::fabs(v)));
  // Every candidate bounded on a sample of the blocks (every 16th); the lowest there (the
  // likely winner) and the first (RTN, whose loss the report gives) then run exactly on
  // every block, the others bounded on the rest: the exact terms serve as their own bounds,
  // so the winner usually needs no second pass.
  std::vector<size_t> sample, rest;
  for (size_t i = 0; i < blocks.size(); ++i) (i % 16 == 0 ? sample : rest).push_back(i);
  run(all, std::vector<char>(count, 0), sample);
  size_t leader = 0;
  std::vector<double> part(count, 0.0);
  for (size_t g = 0; g < count; ++g) {
    for (size_t i : sample) {
      const Block& b = blocks[i];
      for (uint64_t r = b.r0; r < b.r1; ++r) part[g] += terms[g * total_rows + offset[b.layer] + r];
    }
    if (part[g] < part[leader]) leader = g;
  }
  std::vector<size_t> first = {0};
  if (leader != 0) first.push_back(leader);
  run(first, all_exact, every);
  sum(first);
  // Per row |approx - exact| <= rel * approx + abs; the sums of approximations in f64 and
  // the definition's own sums add at most total_rows 2^-53 relative each, well inside the
  // factor 2 on rel (ScaledBoundRel >= 2^-28).
  const double rel = 2 * intq::ScaledBoundRel(n);
  const double abs_row = 2 * intq::ScaledBoundAbs(n, hmax);
  // The others bounded on the rest, a batch of blocks at a time, densest first (by the
  // leader's exact loss per element: every candidate's partial sum then grows fastest); a
  // candidate whose partial sum's lower bound already exceeds the leader's exact loss (every
  // term is >= 0) is worse than the leader and stops there. Up to 32 batches, at least 8
  // blocks each (the stop is checked between batches).
  std::vector<double> density(blocks.size(), 0.0);
  for (size_t i : rest) {
    const Block& b = blocks[i];
    double v = 0;
    for (uint64_t r = b.r0; r < b.r1; ++r) v += terms[leader * total_rows + offset[b.layer] + r];
    density[i] = v / double((b.r1 - b.r0) * layers[b.layer].cols);
  }
  std::stable_sort(rest.begin(), rest.end(),
                   [&](size_t a, size_t b) { return density[a] > density[b]; });
  const size_t batches = std::clamp<size_t>(rest.size() / 8, 1, 32);
  std::vector<size_t> live;
  for (size_t g = 1; g < count; ++g) {
    if (g != leader) live.push_back(g);
  }
  uint64_t rows_done = 0;
  for (size_t i : sample) rows_done += blocks[i].r1 - blocks[i].r0;
  const std::vector<char> none_exact(count, 0);
  for (size_t k = 0; k < batches && !live.empty(); ++k) {
    const std::vector<size_t> batch(rest.begin() + rest.size() * k / batches,
                                    rest.begin() + rest.size() * (k + 1) / batches);
    run(live, none_exact, batch);
    for (size_t i : batch) rows_done += blocks[i].r1 - blocks[i].r0;
    std::erase_if(live, [&](size_t g) {
      for (size_t i : batch) {
        const Block& b = blocks[i];
        for (uint64_t r = b.r0; r < b.r1; ++r) part[g] += terms[g * total_rows + offset[b.layer] + r];
      }
      return std::isfinite(part[g]) &&
             part[g] * (1 - rel) - double(rows_done) * abs_row > sums[leader];
    });
  }
  // Each survivor's interval; those whose lower end does not exceed the smallest upper end
  // (the leader's exact loss included) are evaluated by the definition.
  const double abs = double(total_rows) * abs_row;
  double min_hi = sums[leader];
  std::vector<double> lo(count);
  for (size_t g : live) {
    if (std::isfinite(part[g])) {
      lo[g] = part[g] * (1 - rel) - abs;
      min_hi = std::min(min_hi, part[g] * (1 + rel) + abs);
    } else {  // an f32 overflow or a NaN: no bound; the definition decides
      lo[g] = -std::numeric_limits<double>::infinity();
    }
  }
  std::vector<size_t> more;
  for (size_t g : live) {
    if (!(lo[g] > min_hi)) more.push_back(g);
  }
  run(more, all_exact, every);
  sum(more);
  return sums;
}

}  // namespace quench::calib::awq_internal
