// AWQ's diagonal-proxy search (awq_internal.h's DiagonalSums): every candidate's loss sum,
// or, pruned, the sums of exactly those candidates that can still be the search's choice.
//
// Pruned search, certified. A row's term is a sum over its column groups, each >= 0 and
// independent of the others (a group's parameters come from its own columns), so the
// search bounds candidates on tiles: a range of rows times a slab of whole groups. On a
// tile the bound kernel (src/schemes/int_scaled_bound.h: the definition's codes and dW, the
// sum in f32 lanes) gives each row's slab sum within a proven relative and absolute bound
// of its exact value; slabs it declines are summed from the definition's dW in f64 (within
// cols 2^-53 of the exact sum, far inside the bound). Every candidate runs on a sample of
// the rows (every 16th band of tile rows, every slab); the lowest there (the likely winner)
// and the first (ratio 0, RTN, whose loss the report gives) are then evaluated by the
// definition on every row (ScaledLossFromBack on the kernel's exact BF16 values, in the
// definition's order). The others take the remaining tiles densest first by the leader's
// sampled loss per element of the tile's (layer, slab): the loss mass is uneven across
// columns (sum_x2 varies by decades), so a partial sum passes the leader's exact loss
// after fewer elements than in row order. A candidate whose partial
// sum's lower bound exceeds the leader's exact loss is strictly worse (every term >= 0),
// so neither the minimum nor a tie with it: it is left at +Inf. Candidates never stopped
// have an interval over all tiles; those whose lower end does not exceed the smallest upper
// end are evaluated by the definition. So the choice (the first of the smallest exact
// losses), its loss and RTN's are those of the exhaustive search.
#include <algorithm>
#include <cmath>
#include <limits>

#include <tbb/parallel_for.h>

#include "calib/awq_internal.h"
#include "calib/smoothquant.h"
#include "schemes/int_scaled_bound.h"
#include "schemes/int_scaled_error.h"

namespace quench::calib::awq_internal {
namespace {

struct Block {
  size_t layer;
  uint64_t r0, r1;
};

// Blocks of whole rows of the quantized layers, about 64K elements each (256 KB as f32: the
// block stays in L2 while every candidate runs on it), for the definition's runs.
std::vector<Block> MakeBlocks(const std::vector<AwqLayer>& layers) {
  std::vector<Block> blocks;
  for (size_t li = 0; li < layers.size(); ++li) {
    const AwqLayer& l = layers[li];
    if (!l.quantized) continue;
    const uint64_t step =
        std::max<uint64_t>(1, (uint64_t{1} << 16) / std::max<uint64_t>(1, l.cols));
    for (uint64_t r0 = 0; r0 < l.rows; r0 += step) {
      blocks.push_back({li, r0, std::min(l.rows, r0 + step)});
    }
  }
  return blocks;
}

// Rows [r0, r1) of a layer times columns [c0, c1) (whole groups): about 16K elements (64 KB
// as f32), so that a 16th of the bands is a 16th of the rows on layers of a few thousand. `slab`
// numbers the (layer, column range) pairs; `sample`: in the band of rows every candidate
// runs on first.
struct Tile {
  size_t layer;
  uint64_t r0, r1, c0, c1;
  size_t slab;
  bool sample;
};

// Slabs of four groups (the last may be narrower; the channel layout: the whole row): the
// bound kernel's fixed costs per row and group stay small against 512 columns (a slab of
// one group costs more per element: bench/README.md, "AWQ search on column slabs"), the
// columns' uneven loss still shows.
std::vector<Tile> MakeTiles(const std::vector<AwqLayer>& layers,
                            const std::vector<iq::Layout>& lays, size_t* slabs) {
  std::vector<Tile> tiles;
  *slabs = 0;
  for (size_t li = 0; li < layers.size(); ++li) {
    const AwqLayer& l = layers[li];
    if (!l.quantized) continue;
    const uint64_t width = std::min<uint64_t>(l.cols, 4 * lays[li].group);
    const uint64_t step = std::max<uint64_t>(1, (uint64_t{1} << 14) / width);
    for (uint64_t c0 = 0; c0 < l.cols; c0 += width, ++*slabs) {
      const uint64_t c1 = std::min(l.cols, c0 + width);
      for (uint64_t r0 = 0, band = 0; r0 < l.rows; r0 += step, ++band) {
        tiles.push_back({li, r0, std::min(l.rows, r0 + step), c0, c1, *slabs, band % 16 == 0});
      }
    }
  }
  return tiles;
}

// Per candidate, the bound kernel's f32 copies of s and 1 / s (empty where the kernels do
// not take the candidate's scales).
struct CandF32 {
  std::vector<float> s32, inv32;
};

// A block's rows as f32 (exact BF16 values) and which rows the bound kernel may take.
struct BlockRows {
  std::vector<float> w, ws, back, back2;
  std::vector<char> ok;
  void Load(const AwqLayer& l, const Block& b) {
    const uint64_t rows = b.r1 - b.r0, cols = l.cols;
    w.resize(rows * cols);
    ws.resize(cols);
    back.resize(cols);
    back2.resize(cols);
    ok.assign(rows, 0);
    if (l.dtype != DType::kBF16 || !Aligned2(l)) return;
    const uint16_t* src = reinterpret_cast<const uint16_t*>(l.data) + b.r0 * cols;
    for (uint64_t r = 0; r < rows; ++r) {
      ok[r] = intq::LoadBf16RowBound(src + r * cols, cols, &w[r * cols]);
    }
  }
};

// A tile's rows as f32 (exact values of the layer's dtype), scratch, and which rows the
// bound kernel may take (BF16 rows in its range).
struct TileRows {
  std::vector<float> w, ws;
  std::vector<float> approx;
  std::vector<double> dw;
  std::vector<char> ok, taken;
  void Load(const AwqLayer& l, const Tile& t) {
    const uint64_t rows = t.r1 - t.r0, width = t.c1 - t.c0;
    w.resize(rows * width);
    ws.resize(width);
    dw.resize(width);
    approx.resize(rows);
    taken.resize(rows);
    ok.assign(rows, 0);
    const uint64_t width_bytes = width * (l.dtype == DType::kF32 ? 4 : 2);
    for (uint64_t r = 0; r < rows; ++r) {
      const uint64_t at = (t.r0 + r) * l.cols + t.c0;
      // The tile's rows lie a whole row apart (pages apart on wide layers), where the
      // hardware prefetcher does not follow: ask for the row 4 ahead.
      if (r + 4 < rows) {
        const uint8_t* ahead = l.data + (at + 4 * l.cols) * (width_bytes / width);
        for (uint64_t b = 0; b < width_bytes; b += 64) __builtin_prefetch(ahead + b);
      }
      if (l.dtype == DType::kBF16 && Aligned2(l)) {
        ok[r] = intq::LoadBf16RowBound(reinterpret_cast<const uint16_t*>(l.data) + at, width,
                                       &w[r * width]);
      } else {
        for (uint64_t c = 0; c < width; ++c)
          w[r * width + c] = LoadElement(l.data, l.dtype, at + c);
      }
    }
  }
};

}  // namespace

void PairTerms(const AwqLayer& l, const iq::Layout& lay, uint64_t r, const float* w,
               const std::vector<Cand>& cands, const std::vector<double>& h, size_t g1,
               bool took1, const float* back1, double* term1, size_t g2, bool took2,
               const float* back2, double* term2) {
  if (term2 != nullptr && took1 && took2) {
    intq::ScaledLossFromBack2(w, back1, back2, h.data(), l.cols, term1, term2);
    return;
  }
  *term1 = took1 ? intq::ScaledLossFromBack(w, back1, h.data(), l.cols)
                 : ExactLossRow(l, lay, r, cands[g1], h);
  if (term2 == nullptr) return;
  *term2 = took2 ? intq::ScaledLossFromBack(w, back2, h.data(), l.cols)
                 : ExactLossRow(l, lay, r, cands[g2], h);
}

std::vector<double> DiagonalSums(const std::vector<AwqLayer>& layers,
                                 const std::vector<Cand>& cands, const std::vector<double>& h,
                                 bool prune) {
  const size_t count = cands.size();
  const std::vector<Block> blocks = MakeBlocks(layers);
  std::vector<iq::Layout> lays;
  std::vector<uint64_t> offset;  // row offsets into per-candidate arrays
  RowLayouts(layers, &lays, &offset);
  const uint64_t total_rows = offset.back();
  std::vector<double> terms(count * total_rows, 0.0);  // [g * total_rows + row]
  // f32 copies for the bound kernel (empty where it does not take the candidate's scales).
  std::vector<float> h32(h.begin(), h.end());
  std::vector<CandF32> f32(count);
  for (size_t g = 0; g < count && prune; ++g) {
    if (!cands[g].kernel) continue;
    f32[g].s32.assign(cands[g].s.begin(), cands[g].s.end());
    f32[g].inv32.assign(cands[g].inv.begin(), cands[g].inv.end());
  }
  // The definition's term of every row of candidates `gs` (from the bound kernel's exact
  // BF16 back values, ScaledLossFromBack, where it takes the row; the row kernel else).
  auto exact = [&](const std::vector<size_t>& gs) {
    if (gs.empty()) return;  // no pass over the rows for nothing
    tbb::parallel_for(size_t{0}, blocks.size(), [&](size_t i) {
      const Block& b = blocks[i];
      const AwqLayer& l = layers[b.layer];
      const uint64_t cols = l.cols;
      thread_local BlockRows t;
      if (prune) t.Load(l, b);
      // The definition's BF16 back values of row r under candidate g, where the kernel takes it.
      auto back = [&](size_t g, uint64_t r, float* out) {
        float a;
        const Cand& c = cands[g];
        return prune && t.ok[r] && c.kernel &&
               intq::Bf16ScaledRowLossBound(&t.w[r * cols], c.s.data(), f32[g].s32.data(),
                                            f32[g].inv32.data(), h32.data(), lays[b.layer],
                                            l.q.symmetric, t.ws.data(), out, &a);
      };
      // Two candidates at a time: their f64 sums interleaved (each in its own order: eight
      // chains of dependent additions instead of four).
      for (size_t k = 0; k < gs.size(); k += 2) {
        const size_t g1 = gs[k], g2 = k + 1 < gs.size() ? gs[k + 1] : gs.size();
        for (uint64_t r = 0; r < b.r1 - b.r0; ++r) {
          const uint64_t row = offset[b.layer] + b.r0 + r;
          const bool pair = g2 != gs.size();
          const bool took1 = back(g1, r, t.back.data());
          const bool took2 = pair && back(g2, r, t.back2.data());
          PairTerms(l, lays[b.layer], b.r0 + r, &t.w[r * cols], cands, h, g1, took1,
                    t.back.data(), &terms[g1 * total_rows + row], g2, took2, t.back2.data(),
                    pair ? &terms[g2 * total_rows + row] : nullptr);
        }
      }
    });
  };
  // The definition's sums of candidates `gs`, in its order.
  std::vector<double> sums(count, std::numeric_limits<double>::infinity());
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
    exact(all);
    sum(all);
    return sums;
  }
  double hmax = 0;
  for (float v : h32) hmax = std::max(hmax, double(std::fabs(v)));
  size_t slabs = 0;
  const std::vector<Tile> tiles = MakeTiles(layers, lays, &slabs);
  // bound[g * tiles + i]: candidate g's bound approximation of tile i (the sum over its rows
  // of each row's slab sum).
  std::vector<double> bound(count * tiles.size(), 0.0);
  // Runs the (candidate, tile) pairs `work`, grouped by tile (each tile loaded once).
  auto run = [&](const std::vector<std::pair<size_t, std::vector<size_t>>>& work) {
    tbb::parallel_for(size_t{0}, work.size(), [&](size_t k) {
      const Tile& t = tiles[work[k].first];
      const AwqLayer& l = layers[t.layer];
      iq::Layout lay = lays[t.layer];
      lay.n_groups = (t.c1 - t.c0) / lay.group;
      const uint64_t width = t.c1 - t.c0;
      thread_local TileRows rows;
      rows.Load(l, t);
      const uint64_t n_rows = t.r1 - t.r0;
      for (size_t g : work[k].second) {
        const Cand& c = cands[g];
        if (c.kernel) {
          intq::Bf16ScaledRowsLossBound(rows.w.data(), n_rows, rows.ok.data(), c.s.data() + t.c0,
                                        f32[g].s32.data() + t.c0, f32[g].inv32.data() + t.c0,
                                        h32.data() + t.c0, lay, l.q.symmetric, rows.ws.data(),
                                        rows.approx.data(), rows.taken.data());
        } else {
          std::fill(rows.taken.begin(), rows.taken.end(), 0);
        }
        double v = 0;
        for (uint64_t r = 0; r < n_rows; ++r) {
          const float* w = &rows.w[r * width];
          if (rows.taken[r]) {
            v += rows.approx[r];
          } else {
            // The definition's dW on the slab (its groups are the row's), summed in f64.
            intq::ScaledErrorRowScalar(w, c.s.data() + t.c0, lay, l.q, l.dtype, rows.ws.data(),
                                       rows.dw.data());
            for (uint64_t i = 0; i < width; ++i) {
              v += rows.dw[i] * rows.dw[i] * h[t.c0 + i];
            }
          }
        }
        bound[g * tiles.size() + work[k].first] = v;
      }
    });
  };
  // Every candidate on the sample tiles.
  std::vector<std::pair<size_t, std::vector<size_t>>> sample_work;
  std::vector<size_t> rest;
  for (size_t i = 0; i < tiles.size(); ++i) {
    if (tiles[i].sample) {
      sample_work.emplace_back(i, all);
    } else {
      rest.push_back(i);
    }
  }
  run(sample_work);
  // Per candidate its sampled sum (the leader is the lowest there).
  std::vector<double> part(count, 0.0);
  std::vector<uint64_t> terms_done(count, 0);  // rows x slabs summed into part
  size_t leader = 0;
  for (size_t g = 0; g < count; ++g) {
    for (size_t i = 0; i < tiles.size(); ++i) {
      if (!tiles[i].sample) continue;
      part[g] += bound[g * tiles.size() + i];
      terms_done[g] += tiles[i].r1 - tiles[i].r0;
    }
    if (part[g] < part[leader]) leader = g;
  }
  // The leader's sampled loss per element of each (layer, slab).
  std::vector<double> density(slabs, 0.0), slab_elems(slabs, 0.0);
  for (size_t i = 0; i < tiles.size(); ++i) {
    const Tile& t = tiles[i];
    if (!t.sample) continue;
    density[t.slab] += bound[leader * tiles.size() + i];
    slab_elems[t.slab] += double((t.r1 - t.r0) * (t.c1 - t.c0));
  }
  for (size_t k = 0; k < slabs; ++k) {
    density[k] /= std::max(1.0, slab_elems[k]);
    if (std::isnan(density[k])) density[k] = std::numeric_limits<double>::infinity();  // to sort by
  }
  std::vector<size_t> first = {0};
  if (leader != 0) first.push_back(leader);
  exact(first);
  sum(first);
  // Per term (a row's slab sum) |approx - exact| <= rel * approx + abs; the f64 sums of
  // approximations and the definition's own sums (f64, every term >= 0) add at most
  // (terms + cols) 2^-53 relative, well inside the factor 2 on rel (ScaledBoundRel >=
  // 2^-28); a slab's bound (fewer columns) is within the row's.
  const double rel = 2 * intq::ScaledBoundRel(n);
  const double abs_term = 2 * intq::ScaledBoundAbs(n, hmax);
  // The others on the remaining tiles, densest first by the leader's sampled density (the
  // columns' share of the loss mass varies little between the candidates that take long to
  // stop, the leader's neighbours), a 64th of the tiles at a time (a stopped candidate
  // overshoots by half of one on average), every live candidate on
  // the same tiles (each loaded once); a candidate stops once its partial sum's lower bound
  // exceeds the leader's exact loss.
  std::vector<size_t> live;
  for (size_t g = 1; g < count; ++g) {
    if (g != leader) live.push_back(g);
  }
  std::stable_sort(rest.begin(), rest.end(), [&](size_t a, size_t b) {
    return density[tiles[a].slab] > density[tiles[b].slab];
  });
  const size_t batches = std::clamp<size_t>(rest.size() / 8, 1, 64);
  for (size_t k = 0; k < batches && !live.empty(); ++k) {
    const size_t i0 = rest.size() * k / batches, i1 = rest.size() * (k + 1) / batches;
    std::vector<std::pair<size_t, std::vector<size_t>>> work;
    for (size_t i = i0; i < i1; ++i) work.emplace_back(rest[i], live);
    run(work);
    std::erase_if(live, [&](size_t g) {
      for (size_t i = i0; i < i1; ++i) {
        part[g] += bound[g * tiles.size() + rest[i]];
        terms_done[g] += tiles[rest[i]].r1 - tiles[rest[i]].r0;
      }
      return std::isfinite(part[g]) &&
             part[g] * (1 - rel) - double(terms_done[g]) * abs_term > sums[leader];
    });
  }
  // Each survivor's interval over every tile; those whose lower end does not exceed the
  // smallest upper end (the leader's exact loss included) are evaluated by the definition.
  double min_hi = sums[leader];
  std::vector<double> lo(count);
  for (size_t g : live) {
    const double abs = double(terms_done[g]) * abs_term;
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
  exact(more);
  sum(more);
  return sums;
}

}  // namespace quench::calib::awq_internal
