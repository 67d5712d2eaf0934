// SmoothQuant and AWQ run (MakeSmoothRun, smoothquant_run.h): the pre-pass that reads every
// mapping's balance weights once and computes its scales (SmoothQuant from each column's
// max |W| and the statistics' ranges; AWQ's grid search, mappings in parallel batches), folds
// them into per-tensor transforms, and the calibration seam that applies those transforms to
// the chunks the pipeline streams and to copied tensors. Planning is in smoothquant_plan.cc.
#include "calib/smoothquant_run.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <tbb/parallel_for.h>

#include "calib/awq.h"
#include "calib/smoothquant.h"
#include "calib/stats.h"
#include "format/file_io.h"
#include "format/parallel.h"
#include "format/safetensors.h"
#include "format/tbb_limit.h"

namespace quench::calib {
namespace {

class SmoothRunImpl : public SmoothRun {
 public:
  explicit SmoothRunImpl(const Plan& plan)
      : plan_(plan), ops_(plan.tensors.size()), results_(plan.smoothing.size()) {}

  // The pre-pass: per mapping, the scales from the balance weights (mapped, kept for the
  // pipeline or released after) and the statistics; then each rewritten tensor's
  // transforms, in mapping order.
  Status Compute(const Statistics& stats, const ConvertOptions& o, const SmoothSource& source) {
    if (o.algorithm != "awq") return ComputeSmoothQuant(stats, o, source);
    const size_t count = plan_.smoothing.size();
    // Mappings are searched in parallel, a batch of one per core at a time, so that only that
    // many mappings' balance weights are resident (their pages are released after the batch).
    const size_t batch = ThreadCount(o.threads);
    for (size_t b0 = 0; b0 < count; b0 += batch) {
      const size_t b1 = std::min(count, b0 + batch);
      std::vector<std::vector<AwqLayer>> layers(b1 - b0);
      std::vector<std::vector<const MappedFile*>> maps(b1 - b0);
      std::vector<char> keep(b1 - b0, 0);
      for (size_t mi = b0; mi < b1; ++mi) {
        const PlannedSmoothing& m = plan_.smoothing[mi];
        // As SmoothQuant's pre-pass: through the pipeline's mappings when given, the pages
        // left mapped while they fit source.keep_bytes, so that the pipeline reads them
        // without a second round of faults (and this pass without an unmap).
        keep[mi - b0] = KeepPages(m, source);
        for (size_t k = 0; k < m.balance.size(); ++k) {
          const PlannedTensor& t = plan_.tensors[m.tensors[k]];
          QUENCH_ASSIGN_OR_RETURN(const MappedFile* map, Map(source, t.shard));
          map->Prefetch(t.src_offset, t.src_bytes);
          maps[mi - b0].push_back(map);
          AwqLayer l;
          l.data = map->data() + t.src_offset;
          l.dtype = t.dtype;
          l.rows = t.shape[0];
          l.cols = t.shape[1];
          l.quantized = t.action == TensorAction::kQuantize;
          if (l.quantized) {
            l.q.bits = t.params.bits;
            l.q.group_size = t.params.group_size.value_or(0) > 0 ? *t.params.group_size : 0;
            l.q.symmetric = t.params.symmetric;
          }
          layers[mi - b0].push_back(l);
        }
      }
      std::vector<std::vector<double>> scales(b1 - b0);
      std::vector<Status> status(b1 - b0);
      tbb::parallel_for(b0, b1, [&](size_t mi) {
        const PlannedSmoothing& m = plan_.smoothing[mi];
        status[mi - b0] = Awq(stats, o, m, layers[mi - b0], &results_[mi], &scales[mi - b0]);
      });
      for (size_t mi = b0; mi < b1; ++mi) {
        QUENCH_RETURN_IF_ERROR(status[mi - b0]);
        const PlannedSmoothing& m = plan_.smoothing[mi];
        for (size_t k = 0; k < m.balance.size() && !keep[mi - b0]; ++k) {
          const PlannedTensor& t = plan_.tensors[m.tensors[k]];
          maps[mi - b0][k]->Release(t.src_offset, t.src_bytes);
        }
        Fold(mi, std::move(scales[mi - b0]));
      }
    }
    return Status::Ok();
  }

  // SmoothQuant's pre-pass, mapping after mapping (the scales need only each balance
  // column's max |W|): every balance weight read once, in row blocks on all cores (a max is
  // the same in any order), through the pipeline's mappings when given, its pages left
  // mapped for the pipeline while they fit source.keep_bytes (else released block by block).
  Status ComputeSmoothQuant(const Statistics& stats, const ConvertOptions& o,
                            const SmoothSource& source) {
    // Row blocks of about 4 MiB: enough blocks to spread a mapping's read over the cores,
    // few enough that each block's max vector (one per column) costs nothing.
    constexpr uint64_t kBlockBytes = 4ull << 20;
    LimitTbbThreads(static_cast<size_t>(std::max(o.threads, 0)));
    for (size_t mi = 0; mi < plan_.smoothing.size(); ++mi) {
      const PlannedSmoothing& m = plan_.smoothing[mi];
      struct Block {
        const MappedFile* map;
        const PlannedTensor* t;
        uint64_t r0, r1;
      };
      std::vector<Block> blocks;
      const bool keep = KeepPages(m, source);
      for (size_t k = 0; k < m.balance.size(); ++k) {
        const PlannedTensor& t = plan_.tensors[m.tensors[k]];
        QUENCH_ASSIGN_OR_RETURN(const MappedFile* map, Map(source, t.shard));
        // Ask for the whole mapping's pages first: a cold read is then one deep queue.
        map->Prefetch(t.src_offset, t.src_bytes);
        const uint64_t row_bytes = t.shape[1] * (DTypeBits(t.dtype) / 8);
        const uint64_t rows = std::max<uint64_t>(1, kBlockBytes / std::max<uint64_t>(1, row_bytes));
        for (uint64_t r0 = 0; r0 < t.shape[0]; r0 += rows) {
          blocks.push_back(Block{map, &t, r0, std::min(t.shape[0], r0 + rows)});
        }
      }
      const uint64_t n = plan_.tensors[m.tensors.front()].shape[1];
      std::vector<std::vector<float>> part(blocks.size());
      std::atomic<bool> finite{true};
      tbb::parallel_for(size_t{0}, blocks.size(), [&](size_t b) {
        const Block& bl = blocks[b];
        const uint64_t row_bytes = n * (DTypeBits(bl.t->dtype) / 8);
        const uint64_t off = bl.t->src_offset + bl.r0 * row_bytes;
        part[b].assign(n, 0.f);
        if (!ColumnAbsMax(bl.map->data() + off, bl.t->dtype, bl.r1 - bl.r0, n, part[b].data())) {
          finite = false;
        }
        if (!keep) bl.map->Release(off, (bl.r1 - bl.r0) * row_bytes);
      });
      if (!finite) {
        return Error(ErrorCode::kNonFinite, "SmoothQuant: a balance weight of " + m.smooth +
                                                "'s mapping holds NaN or Inf");
      }
      std::vector<float> absmax(n, 0.f);
      for (const std::vector<float>& p : part) {
        for (uint64_t j = 0; j < n; ++j) absmax[j] = std::max(absmax[j], p[j]);
      }
      std::vector<double> scales;
      QUENCH_RETURN_IF_ERROR(SmoothQuant(stats, o, m, absmax, &scales));
      Fold(mi, std::move(scales));
    }
    return Status::Ok();
  }

  // Mapping mi's scales folded into its tensors' transforms: the balance layers' columns
  // multiplied; the smooth layer's weight (a norm's elements, a linear's last n rows) and
  // bias divided.
  void Fold(size_t mi, std::vector<double> scales) {
    const PlannedSmoothing& m = plan_.smoothing[mi];
    auto shared = std::make_shared<const std::vector<double>>(std::move(scales));
    const auto shared32 = F32Scales(*shared);
    for (size_t k = 0; k < m.tensors.size(); ++k) {
      const size_t t = m.tensors[k];
      const PlannedTensor& pt = plan_.tensors[t];
      SmoothOp op{SmoothOp::kMulCols, shared, 0, shared32};
      if (k >= m.balance.size()) {
        op.kind = pt.shape.size() == 2 ? SmoothOp::kDivRows : SmoothOp::kDivElems;
        if (pt.shape.size() == 2) op.row_offset = pt.shape[0] - shared->size();
      }
      ops_[t].push_back(op);
    }
    const auto [lo, hi] = std::minmax_element(shared->begin(), shared->end());
    results_[mi].min_scale = *lo;
    results_[mi].max_scale = *hi;
  }

  uint64_t KeptBytes() const override { return kept_; }

  // Whether a mapping's balance weights stay mapped for the pipeline after the pre-pass
  // (counted in kept_): only through the pipeline's own mappings, only for shards it will
  // write, and only while everything kept fits source.keep_bytes.
  bool KeepPages(const PlannedSmoothing& m, const SmoothSource& source) {
    uint64_t bytes = 0;
    bool keepable = source.map != nullptr;
    for (size_t k = 0; k < m.balance.size(); ++k) {
      const PlannedTensor& t = plan_.tensors[m.tensors[k]];
      bytes += t.src_bytes;
      keepable &= !plan_.shards[t.shard].already_done;
    }
    if (!keepable || kept_ + bytes > source.keep_bytes) return false;
    kept_ += bytes;
    return true;
  }

  // The pipeline's own mapping of a shard where it lends one (pages kept for the conversion),
  // else one of the pre-pass's.
  Result<const MappedFile*> Map(const SmoothSource& source, size_t shard) {
    if (source.map) return source.map(shard);
    return Map(shard);
  }

  Result<const MappedFile*> Map(size_t shard) {
    auto& map = maps_[shard];
    if (!map) {
      QUENCH_ASSIGN_OR_RETURN(MappedFile f, MappedFile::Open(plan_.shards[shard].src_path));
      map = std::make_shared<MappedFile>(std::move(f));
    }
    return map.get();
  }

  // One field of the mapping's site, the expert's slice for a per-expert site.
  Result<std::vector<double>> Field(const Statistics& stats, const PlannedSmoothing& m,
                                    const std::string& field, size_t per_expert) {
    std::vector<double> v;
    {
      std::lock_guard<std::mutex> lock(stats_mu_);  // Statistics maps its files on first use
      QUENCH_ASSIGN_OR_RETURN(v, stats.ReadField(m.site, field));
    }
    if (!m.expert) return v;
    const size_t e = *m.expert;
    if ((e + 1) * per_expert > v.size()) {
      return Error(ErrorCode::kInvalidInput, "statistics: site " + m.site + "'s " + field +
                                                 " is shorter than its experts");
    }
    return std::vector<double>(v.begin() + e * per_expert, v.begin() + (e + 1) * per_expert);
  }

  // The mapping's scales from its balance columns' max |W| and the statistics' ranges.
  Status SmoothQuant(const Statistics& stats, const ConvertOptions& o, const PlannedSmoothing& m,
                     const std::vector<float>& absmax, std::vector<double>* out) {
    const uint64_t n = absmax.size();
    QUENCH_ASSIGN_OR_RETURN(std::vector<double> mn, Field(stats, m, "min", n));
    QUENCH_ASSIGN_OR_RETURN(std::vector<double> mx, Field(stats, m, "max", n));
    std::vector<float> fmn(mn.begin(), mn.end()), fmx(mx.begin(), mx.end());
    for (uint64_t j = 0; j < n; ++j) {
      if (!std::isfinite(fmn[j]) || !std::isfinite(fmx[j])) {
        return Error(ErrorCode::kInvalidInput,
                     "statistics: site " + m.site + " never saw channel " + std::to_string(j) +
                         " (min/max not finite); SmoothQuant needs every channel's range");
      }
    }
    const std::vector<float> s = SmoothQuantScales(plan_.tensors[m.tensors.front()].dtype,
                                                   o.smoothing_strength, fmn, fmx, absmax);
    out->assign(s.begin(), s.end());
    return Status::Ok();
  }

  Status Awq(const Statistics& stats, const ConvertOptions& o, const PlannedSmoothing& m,
             const std::vector<AwqLayer>& layers, PlannedSmoothing* result,
             std::vector<double>* out) {
    const uint64_t n = layers.front().cols;
    QUENCH_ASSIGN_OR_RETURN(std::vector<double> count, Field(stats, m, "count", 1));
    QUENCH_ASSIGN_OR_RETURN(std::vector<double> sum_abs, Field(stats, m, "sum_abs", n));
    if (count.empty() || count[0] <= 0) {
      return Error(ErrorCode::kInvalidInput, "statistics: site " + m.site + " saw no tokens");
    }
    // x_sum / count: the reference's f32 sum over f32 count.
    std::vector<float> x_mean(n);
    for (uint64_t j = 0; j < n; ++j) x_mean[j] = float(sum_abs[j]) / float(count[0]);
    const bool full = m.loss_kind == "full Hessian";
    std::vector<double> h;
    if (full) {
      QUENCH_ASSIGN_OR_RETURN(std::vector<double> packed,
                              Field(stats, m, "hessian", n * (n + 1) / 2));
      h.assign(n * n, 0.0);
      size_t k = 0;
      for (uint64_t i = 0; i < n; ++i) {
        for (uint64_t j = i; j < n; ++j, ++k) h[i * n + j] = h[j * n + i] = packed[k];
      }
    } else {
      QUENCH_ASSIGN_OR_RETURN(h, Field(stats, m, "sum_x2", n));
    }
    QUENCH_ASSIGN_OR_RETURN(DuoScaling duo, ParseDuoScaling(o.awq_duo_scaling));
    QUENCH_ASSIGN_OR_RETURN(AwqSearchKind search, ParseAwqSearch(o.awq_search));
    // Pruned: the report gives only the chosen loss and RTN's, which pruning keeps.
    auto r = AwqSearch(layers, x_mean, h, full, count[0], o.awq_n_grid, duo, /*prune=*/true,
                       search);
    if (!r.ok()) {
      return Error(r.status().code(), r.status().message() + " (mapping of " + m.smooth + ")");
    }
    result->ratio = r->ratio;
    result->duo = r->duo;
    result->loss = r->loss;
    result->loss_rtn = r->loss_rtn;
    result->search = r->search == AwqSearchKind::kScreened ? "screened" : "exact";
    result->rtn_exact = r->rtn_exact;
    result->finalists = r->finalists;
    *out = std::move(r->scales);
    return Status::Ok();
  }

  bool Takes(size_t) const override { return false; }
  Status Prepare(size_t) override { return Status::Ok(); }
  bool Quantize(size_t, const WeightChunk&, const ChunkOutputs&) override { return false; }
  void Done(size_t) override {}

  bool Transforms(size_t t) const override {
    return !ops_[t].empty() && plan_.tensors[t].action == TensorAction::kQuantize;
  }
  const uint8_t* TransformRows(size_t t, uint64_t row0, const WeightChunk& in) override {
    thread_local std::vector<uint8_t> rows;
    const uint64_t bytes = in.rows * in.cols * (DTypeBits(in.dtype) / 8);
    rows.resize(bytes);
    ApplySmoothOpsFrom(ops_[t], in.dtype, in.cols, row0 * in.cols, in.rows * in.cols, in.data,
                       rows.data());
    return rows.data();
  }
  // A balance layer of one mapping only, its factors f32 values (SmoothQuant's always are):
  // the kernel multiplies as ApplySmoothOpsFrom's f32 path does (src/schemes/int.cc).
  const float* ColumnFactors(size_t t) const override {
    const std::vector<SmoothOp>& ops = ops_[t];
    if (ops.size() != 1 || ops[0].kind != SmoothOp::kMulCols || !ops[0].s32 ||
        plan_.tensors[t].action != TensorAction::kQuantize) {
      return nullptr;
    }
    return ops[0].s32->data();
  }
  bool RewritesCopy(size_t t) const override {
    return !ops_[t].empty() && plan_.tensors[t].action == TensorAction::kCopy;
  }
  void RewriteCopy(size_t t, uint64_t begin, uint8_t* data, uint64_t len) override {
    const PlannedTensor& pt = plan_.tensors[t];
    const uint64_t esz = DTypeBits(pt.dtype) / 8;
    const uint64_t cols = pt.shape.size() == 2 ? pt.shape[1] : 1;
    ApplySmoothOps(ops_[t], pt.dtype, cols, begin / esz, len / esz, data);
  }

  ColumnScales InputScales() const override {
    ColumnScales out(ops_.size());
    for (size_t t = 0; t < ops_.size(); ++t) {
      std::vector<double> s;
      for (const SmoothOp& op : ops_[t]) {
        if (op.kind != SmoothOp::kMulCols) continue;
        if (s.empty()) s.assign(op.s->size(), 1.0);
        for (size_t j = 0; j < s.size(); ++j) s[j] *= (*op.s)[j];
      }
      if (!s.empty()) out[t] = std::make_shared<const std::vector<double>>(std::move(s));
    }
    return out;
  }

  void Finish(Plan& plan) override {
    for (size_t i = 0; i < plan.smoothing.size(); ++i) {
      PlannedSmoothing& p = plan.smoothing[i];
      const PlannedSmoothing& r = results_[i];
      p.min_scale = r.min_scale;
      p.max_scale = r.max_scale;
      p.ratio = r.ratio;
      p.duo = r.duo;
      p.loss = r.loss;
      p.loss_rtn = r.loss_rtn;
      p.search = r.search;
      p.rtn_exact = r.rtn_exact;
      p.finalists = r.finalists;
    }
  }

 private:
  const Plan& plan_;
  std::vector<std::vector<SmoothOp>> ops_;  // per plan tensor, in mapping order
  std::vector<PlannedSmoothing> results_;  // per mapping: scale range, AWQ's choice
  std::map<size_t, std::shared_ptr<MappedFile>> maps_;  // source shards, for the pre-pass
  uint64_t kept_ = 0;  // balance bytes left mapped for the pipeline
  std::mutex stats_mu_;
};

}  // namespace

uint64_t SmoothBalanceBytes(const Plan& plan) {
  uint64_t bytes = 0;
  for (const PlannedSmoothing& m : plan.smoothing) {
    for (size_t k = 0; k < m.balance.size(); ++k) bytes += plan.tensors[m.tensors[k]].src_bytes;
  }
  return bytes;
}

Result<std::unique_ptr<SmoothRun>> MakeSmoothRun(const Plan& plan, const ConvertOptions& options,
                                                 const SmoothSource& source) {
  if (plan.smoothing.empty()) return std::unique_ptr<SmoothRun>();
  QUENCH_ASSIGN_OR_RETURN(Statistics stats, Statistics::Open(options.stats));
  auto run = std::make_unique<SmoothRunImpl>(plan);
  QUENCH_RETURN_IF_ERROR(run->Compute(stats, options, source));
  return std::unique_ptr<SmoothRun>(std::move(run));
}

}  // namespace quench::calib
