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

namespace {

// (candidate, tiles) pairs: each tile with the candidates to run on it (each tile loaded once).
using TileWork = std::vector<std::pair<size_t, std::vector<size_t>>>;

// One DiagonalSums call's state: the definition's per-row terms and sums of the candidates
// evaluated so far, and (pruned) the bound kernel's per-tile sums and each candidate's
// partial sum over the tiles it has run on.
class DiagonalSearch {
 public:
  DiagonalSearch(const std::vector<AwqLayer>& layers, const std::vector<Cand>& cands,
                 const std::vector<double>& h, bool prune)
      : layers_(layers), cands_(cands), h_(h), prune_(prune), count_(cands.size()),
        blocks_(MakeBlocks(layers)), h32_(h.begin(), h.end()), f32_(count_),
        sums_(count_, std::numeric_limits<double>::infinity()) {
    RowLayouts(layers, &lays_, &offset_);
    total_rows_ = offset_.back();
    terms_.assign(count_ * total_rows_, 0.0);
    for (size_t g = 0; g < count_ && prune; ++g) {
      if (!cands[g].kernel) continue;
      f32_[g].s32.assign(cands[g].s.begin(), cands[g].s.end());
      f32_[g].inv32.assign(cands[g].inv.begin(), cands[g].inv.end());
    }
  }

  std::vector<double> Run();

 private:
  void Exact(const std::vector<size_t>& gs);
  void Sum(const std::vector<size_t>& gs);
  void RunTiles(const TileWork& work);
  size_t SampleAll(std::vector<size_t>* rest);
  void DensestFirst(size_t leader, std::vector<size_t>* rest) const;
  std::vector<size_t> Stop(size_t leader, const std::vector<size_t>& rest, double rel,
                           double abs_term);
  std::vector<size_t> Finalists(size_t leader, const std::vector<size_t>& live, double rel,
                                double abs_term) const;

  const std::vector<AwqLayer>& layers_;
  const std::vector<Cand>& cands_;
  const std::vector<double>& h_;
  const bool prune_;
  const size_t count_;
  const std::vector<Block> blocks_;
  std::vector<iq::Layout> lays_;
  std::vector<uint64_t> offset_;  // row offsets into per-candidate arrays
  uint64_t total_rows_ = 0;
  std::vector<double> terms_;  // [g * total_rows + row]
  // f32 copies for the bound kernel (empty where it does not take the candidate's scales).
  const std::vector<float> h32_;
  std::vector<CandF32> f32_;
  std::vector<double> sums_;  // the definition's sums, +Inf for those not evaluated
  // Pruned: the tiles; bound_[g * tiles + i]: candidate g's bound approximation of tile i
  // (the sum over its rows of each row's slab sum); part_ / terms_done_: each candidate's sum
  // over the tiles run so far, and the rows x slabs summed into it.
  std::vector<Tile> tiles_;
  size_t slabs_ = 0;
  std::vector<double> bound_, part_;
  std::vector<uint64_t> terms_done_;
};

// The definition's term of every row of candidates `gs` (from the bound kernel's exact BF16
// back values, ScaledLossFromBack, where it takes the row; the row kernel else).
void DiagonalSearch::Exact(const std::vector<size_t>& gs) {
  if (gs.empty()) return;  // no pass over the rows for nothing
  tbb::parallel_for(size_t{0}, blocks_.size(), [&](size_t i) {
    const Block& b = blocks_[i];
    const AwqLayer& l = layers_[b.layer];
    const uint64_t cols = l.cols;
    thread_local BlockRows t;
    if (prune_) t.Load(l, b);
    // The definition's BF16 back values of row r under candidate g, where the kernel takes it.
    auto back = [&](size_t g, uint64_t r, float* out) {
      float a;
      const Cand& c = cands_[g];
      return prune_ && t.ok[r] && c.kernel &&
             intq::Bf16ScaledRowLossBound(&t.w[r * cols], c.s.data(), f32_[g].s32.data(),
                                          f32_[g].inv32.data(), h32_.data(), lays_[b.layer],
                                          l.q.symmetric, t.ws.data(), out, &a);
    };
    // Two candidates at a time: their f64 sums interleaved (each in its own order: eight
    // chains of dependent additions instead of four).
    for (size_t k = 0; k < gs.size(); k += 2) {
      const size_t g1 = gs[k], g2 = k + 1 < gs.size() ? gs[k + 1] : gs.size();
      for (uint64_t r = 0; r < b.r1 - b.r0; ++r) {
        const uint64_t row = offset_[b.layer] + b.r0 + r;
        const bool pair = g2 != gs.size();
        const bool took1 = back(g1, r, t.back.data());
        const bool took2 = pair && back(g2, r, t.back2.data());
        PairTerms(l, lays_[b.layer], b.r0 + r, &t.w[r * cols], cands_, h_, g1, took1,
                  t.back.data(), &terms_[g1 * total_rows_ + row], g2, took2, t.back2.data(),
                  pair ? &terms_[g2 * total_rows_ + row] : nullptr);
      }
    }
  });
}

// The definition's sums of candidates `gs`, in its order.
void DiagonalSearch::Sum(const std::vector<size_t>& gs) {
  for (size_t g : gs) {
    double v = 0;
    for (uint64_t r = 0; r < total_rows_; ++r) v += terms_[g * total_rows_ + r];
    sums_[g] = v;
  }
}

// Runs the (candidate, tile) pairs `work` into bound_.
void DiagonalSearch::RunTiles(const TileWork& work) {
  tbb::parallel_for(size_t{0}, work.size(), [&](size_t k) {
    const Tile& t = tiles_[work[k].first];
    const AwqLayer& l = layers_[t.layer];
    iq::Layout lay = lays_[t.layer];
    lay.n_groups = (t.c1 - t.c0) / lay.group;
    const uint64_t width = t.c1 - t.c0;
    thread_local TileRows rows;
    rows.Load(l, t);
    const uint64_t n_rows = t.r1 - t.r0;
    for (size_t g : work[k].second) {
      const Cand& c = cands_[g];
      if (c.kernel) {
        intq::Bf16ScaledRowsLossBound(rows.w.data(), n_rows, rows.ok.data(), c.s.data() + t.c0,
                                      f32_[g].s32.data() + t.c0, f32_[g].inv32.data() + t.c0,
                                      h32_.data() + t.c0, lay, l.q.symmetric, rows.ws.data(),
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
            v += rows.dw[i] * rows.dw[i] * h_[t.c0 + i];
          }
        }
      }
      bound_[g * tiles_.size() + work[k].first] = v;
    }
  });
}

// Every candidate on the sample tiles; returns the leader (the lowest there) and leaves the
// other tiles in `*rest`.
size_t DiagonalSearch::SampleAll(std::vector<size_t>* rest) {
  std::vector<size_t> all(count_);
  for (size_t g = 0; g < count_; ++g) all[g] = g;
  TileWork sample_work;
  for (size_t i = 0; i < tiles_.size(); ++i) {
    if (tiles_[i].sample) {
      sample_work.emplace_back(i, all);
    } else {
      rest->push_back(i);
    }
  }
  RunTiles(sample_work);
  part_.assign(count_, 0.0);
  terms_done_.assign(count_, 0);
  size_t leader = 0;
  for (size_t g = 0; g < count_; ++g) {
    for (size_t i = 0; i < tiles_.size(); ++i) {
      if (!tiles_[i].sample) continue;
      part_[g] += bound_[g * tiles_.size() + i];
      terms_done_[g] += tiles_[i].r1 - tiles_[i].r0;
    }
    if (part_[g] < part_[leader]) leader = g;
  }
  return leader;
}

// Orders `*rest` densest first by the leader's sampled loss per element of each (layer,
// slab).
void DiagonalSearch::DensestFirst(size_t leader, std::vector<size_t>* rest) const {
  std::vector<double> density(slabs_, 0.0), slab_elems(slabs_, 0.0);
  for (size_t i = 0; i < tiles_.size(); ++i) {
    const Tile& t = tiles_[i];
    if (!t.sample) continue;
    density[t.slab] += bound_[leader * tiles_.size() + i];
    slab_elems[t.slab] += double((t.r1 - t.r0) * (t.c1 - t.c0));
  }
  for (size_t k = 0; k < slabs_; ++k) {
    density[k] /= std::max(1.0, slab_elems[k]);
    if (std::isnan(density[k])) density[k] = std::numeric_limits<double>::infinity();  // to sort by
  }
  std::stable_sort(rest->begin(), rest->end(), [&](size_t a, size_t b) {
    return density[tiles_[a].slab] > density[tiles_[b].slab];
  });
}

// The others on the remaining tiles, densest first by the leader's sampled density (the
// columns' share of the loss mass varies little between the candidates that take long to
// stop, the leader's neighbours), a 64th of the tiles at a time (a stopped candidate
// overshoots by half of one on average), every live candidate on the same tiles (each loaded
// once); a candidate stops once its partial sum's lower bound exceeds the leader's exact
// loss. Returns the candidates never stopped.
std::vector<size_t> DiagonalSearch::Stop(size_t leader, const std::vector<size_t>& rest, double rel,
                                         double abs_term) {
  std::vector<size_t> live;
  for (size_t g = 1; g < count_; ++g) {
    if (g != leader) live.push_back(g);
  }
  const size_t batches = std::clamp<size_t>(rest.size() / 8, 1, 64);
  for (size_t k = 0; k < batches && !live.empty(); ++k) {
    const size_t i0 = rest.size() * k / batches, i1 = rest.size() * (k + 1) / batches;
    TileWork work;
    for (size_t i = i0; i < i1; ++i) work.emplace_back(rest[i], live);
    RunTiles(work);
    std::erase_if(live, [&](size_t g) {
      for (size_t i = i0; i < i1; ++i) {
        part_[g] += bound_[g * tiles_.size() + rest[i]];
        terms_done_[g] += tiles_[rest[i]].r1 - tiles_[rest[i]].r0;
      }
      return std::isfinite(part_[g]) &&
             part_[g] * (1 - rel) - double(terms_done_[g]) * abs_term > sums_[leader];
    });
  }
  return live;
}

// Each survivor's interval over every tile; those whose lower end does not exceed the
// smallest upper end (the leader's exact loss included) are to be evaluated by the
// definition.
std::vector<size_t> DiagonalSearch::Finalists(size_t leader, const std::vector<size_t>& live,
                                              double rel, double abs_term) const {
  double min_hi = sums_[leader];
  std::vector<double> lo(count_);
  for (size_t g : live) {
    const double abs = double(terms_done_[g]) * abs_term;
    if (std::isfinite(part_[g])) {
      lo[g] = part_[g] * (1 - rel) - abs;
      min_hi = std::min(min_hi, part_[g] * (1 + rel) + abs);
    } else {  // an f32 overflow or a NaN: no bound; the definition decides
      lo[g] = -std::numeric_limits<double>::infinity();
    }
  }
  std::vector<size_t> more;
  for (size_t g : live) {
    if (!(lo[g] > min_hi)) more.push_back(g);
  }
  return more;
}

std::vector<double> DiagonalSearch::Run() {
  const uint64_t n = layers_.empty() ? 0 : layers_.front().cols;
  if (!prune_ || count_ <= 1 || n == 0) {
    std::vector<size_t> all(count_);
    for (size_t g = 0; g < count_; ++g) all[g] = g;
    Exact(all);
    Sum(all);
    return sums_;
  }
  double hmax = 0;
  for (float v : h32_) hmax = std::max(hmax, double(std::fabs(v)));
  tiles_ = MakeTiles(layers_, lays_, &slabs_);
  bound_.assign(count_ * tiles_.size(), 0.0);
  std::vector<size_t> rest;
  const size_t leader = SampleAll(&rest);
  DensestFirst(leader, &rest);
  std::vector<size_t> first = {0};
  if (leader != 0) first.push_back(leader);
  Exact(first);
  Sum(first);
  // Per term (a row's slab sum) |approx - exact| <= rel * approx + abs; the f64 sums of
  // approximations and the definition's own sums (f64, every term >= 0) add at most
  // (terms + cols) 2^-53 relative, well inside the factor 2 on rel (ScaledBoundRel >=
  // 2^-28); a slab's bound (fewer columns) is within the row's.
  const double rel = 2 * intq::ScaledBoundRel(n);
  const double abs_term = 2 * intq::ScaledBoundAbs(n, hmax);
  const std::vector<size_t> live = Stop(leader, rest, rel, abs_term);
  const std::vector<size_t> more = Finalists(leader, live, rel, abs_term);
  Exact(more);
  Sum(more);
  return sums_;
}

}  // namespace

std::vector<double> DiagonalSums(const std::vector<AwqLayer>& layers,
                                 const std::vector<Cand>& cands, const std::vector<double>& h,
                                 bool prune) {
  return DiagonalSearch(layers, cands, h, prune).Run();
}

}  // namespace quench::calib::awq_internal
