// SparseGPT in a conversion (see gptq_run.h): planning (which pruned weights SparseGPT takes,
// from which statistics site, and why the others are pruned by magnitude) and the calibration
// seam's implementation. The pipeline hands SparseGPT the rows it would have pruned by
// magnitude; the sparse rows then go through the scheme's kernel (round to nearest, as the
// reference's QuantizationModifier after its SparseGPTModifier) or, with --scheme none, out as
// they are.
//
// N:M masks depend on one row only, so N:M runs on the pipeline's row chunks in parallel. An
// unstructured mask is chosen per block of columns over all rows (sparsify_weight's threshold
// over the block), so an unstructured weight is sparsified whole when its first chunk is
// prepared (the serial input stage), and its chunks copy their rows from the result. After a
// smoothing stage the whole weight is smoothed first (the smoothing's own row transform).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "calib/gptq.h"
#include "calib/gptq_run.h"
#include "calib/sparsegpt.h"
#include "calib/stats.h"
#include "format/file_io.h"
#include "format/units.h"

namespace quench::calib {
namespace {

Result<SparseGptOptions> ResolveOptions(const Plan& plan, const PlanOptions& o) {
  SparseGptOptions s;
  if (o.gptq_block_size <= 0) {
    return Error(ErrorCode::kUsage, "--gptq-block-size must be a positive whole number");
  }
  if (!std::isfinite(o.dampening) || o.dampening < 0) {
    return Error(ErrorCode::kUsage, "--dampening must be a finite fraction >= 0");
  }
  s.block_size = o.gptq_block_size;
  s.dampening = o.dampening;
  switch (plan.prune.kind) {
    case PlannedPrune::kNM:
      // quench's N:M keeps N of every M; the reference's prune_n is the count pruned.
      s.prune_n = plan.prune.m - plan.prune.n;
      s.prune_m = plan.prune.m;
      if (s.block_size % s.prune_m != 0) {
        return Error(ErrorCode::kUsage,
                     "--algorithm sparsegpt with --prune " + plan.prune.text +
                         " needs --gptq-block-size to be a multiple of " +
                         std::to_string(s.prune_m) + " (the reference restarts the groups of " +
                         std::to_string(s.prune_m) + " at every block)");
      }
      if (s.prune_n == 0) {
        return Error(ErrorCode::kUsage, "--prune " + plan.prune.text + " prunes nothing");
      }
      break;
    case PlannedPrune::kUnstructured:
      if (plan.prune.per_tensor) {
        return Error(ErrorCode::kUsage,
                     "--algorithm sparsegpt chooses its unstructured mask per block of columns "
                     "(as llm-compressor's SparseGPT); --prune-granularity tensor is for "
                     "magnitude pruning");
      }
      s.sparsity = plan.prune.fraction;
      break;
    case PlannedPrune::kNone:
      return Error(ErrorCode::kUsage,
                   "--algorithm sparsegpt needs --prune 2:4 (N:M) or --prune unstructured:F");
  }
  return s;
}

uint64_t DTypeBytes(DType d) { return DTypeBits(d) / 8; }

}  // namespace

Status PlanSparseGpt(Plan& plan, const ConvertOptions& options) {
  QUENCH_ASSIGN_OR_RETURN(SparseGptOptions sopt, ResolveOptions(plan, options));
  if (options.stats.empty()) {
    return Error(ErrorCode::kUsage,
                 "--algorithm sparsegpt needs --stats STATS with full Hessians (collect them "
                 "with scripts/collect-stats MODEL_DIR --text FILE --hessian full -o STATS)");
  }
  QUENCH_ASSIGN_OR_RETURN(Statistics stats, Statistics::Open(options.stats));
  uint64_t largest_w = 0;
  HessianSites sites;
  for (PlannedTensor& t : plan.tensors) {
    if (!t.prune) continue;
    if (t.scheme != nullptr && t.scheme->needs_global_scale) {
      // Its global scale comes from the source weights in a pre-pass; the reference observes
      // the sparse ones.
      plan.errors.push_back(Error(ErrorCode::kUnsupported,
                                  "--algorithm sparsegpt with " + std::string(t.scheme->name) +
                                      " (a global scale over the sparse weights) is not built "
                                      "yet; '" + t.name + "' is to be " +
                                      std::string(t.scheme->name)));
      continue;
    }
    if (!sites.Assign(plan, stats, options.stats, "SparseGPT", t)) continue;
    // Unstructured: the whole weight in f32 while it is sparsified, and two results in its
    // dtype (one in use by chunks in flight, the next prepared).
    // After smoothing, one more copy in its dtype: the smoothed source rows.
    if (sopt.prune_n == 0) {
      const uint64_t elems = t.shape[0] * t.shape[1];
      const uint64_t copies = plan.smoothing.empty() ? 2 : 3;
      largest_w = std::max(largest_w, elems * (4 + copies * DTypeBytes(t.dtype)));
    }
  }
  // The budget's check is convert.cc's, with the pipeline's floor.
  plan.calib_bytes = 3 * sites.largest + largest_w;
  if (sites.taken > 0) {
    plan.calib_holds = "SparseGPT: the largest Hessian (site " + sites.largest_site + ") 3 x " +
                       FormatBytes(sites.largest) +
                       (largest_w > 0 ? ", an unstructured weight sparsified whole " +
                                            FormatBytes(largest_w)
                                      : std::string());
  }
  plan.notes.push_back("SparseGPT (" + plan.prune.text + ") from " + options.stats.string() +
                       ": " + std::to_string(sites.taken) + " weights" +
                       sites.FallbackText("pruned by magnitude"));
  QUENCH_ASSIGN_OR_RETURN(std::string hash, StatsHash(options.stats));
  plan.calib_fingerprint = "sparsegpt block " + std::to_string(sopt.block_size) + " damp " +
                           std::to_string(sopt.dampening) + " prune " + plan.prune.text +
                           " stats " + hash;
  return Status::Ok();
}

namespace {

// What a tensor's chunks use: its site's factor, and for an unstructured weight its whole
// sparsified result.
struct Prepared {
  std::shared_ptr<const GptqFactor> factor;
  std::string whole;      // unstructured: the sparse weight in its dtype
  uint64_t pruned = 0;    // unstructured: positions pruned
};

class SparseGptRunImpl : public GptqRun {
 public:
  SparseGptRunImpl(const Plan& plan, Statistics stats, SparseGptOptions opt)
      : plan_(plan), stats_(std::move(stats)), opt_(opt), loss_(plan.tensors.size(), 0.0),
        fallback_(plan.tensors.size()) {}

  // (A weight only GPTQ prunes-not of a composed run may hold a Hessian site too.)
  bool Takes(size_t t) const override {
    return !plan_.tensors[t].calib.value_or_default().site.empty() && plan_.tensors[t].prune;
  }

  Status Prepare(size_t t) override {
    const PlannedTensor& pt = plan_.tensors[t];
    const std::string key = FactorKey(pt, ColumnScalesOf(t));
    if (key != current_key_) {
      current_.reset();
      QUENCH_ASSIGN_OR_RETURN(std::vector<float> h, LoadHessian(stats_, pt, ColumnScalesOf(t)));
      QUENCH_ASSIGN_OR_RETURN(GptqFactor f,
                              FactorHessian(std::move(h), pt.shape[1], FactorOptions(opt_)));
      current_ = std::make_shared<const GptqFactor>(std::move(f));
      current_key_ = key;
    }
    if (current_->rtn_fallback) {
      fallback_[t] = "the Hessian of site " + pt.calib.value_or_default().site +
                     " could not be factored (" + current_->why +
                     "); pruned with H^-1 = I (by magnitude, no updates), as "
                     "llm-compressor falls back";
    }
    auto p = std::make_shared<Prepared>();
    p->factor = current_;
    if (opt_.prune_n == 0) QUENCH_RETURN_IF_ERROR(SparsifyWhole(t, p.get()));
    std::lock_guard<std::mutex> lock(mu_);
    live_[t] = std::move(p);
    return Status::Ok();
  }

  bool Prunes() const override { return true; }
  bool Prune(size_t t, const uint8_t* src, uint8_t* dst, size_t begin, size_t rows,
             uint64_t* zeroed) override {
    std::shared_ptr<const Prepared> p;
    {
      std::lock_guard<std::mutex> lock(mu_);
      p = live_.at(t);
    }
    const PlannedTensor& pt = plan_.tensors[t];
    const size_t row_bytes = pt.shape[1] * DTypeBytes(pt.dtype);
    if (opt_.prune_n == 0) {
      std::memcpy(dst, p->whole.data() + begin * row_bytes, rows * row_bytes);
      if (begin == 0 && zeroed != nullptr) *zeroed += p->pruned;
      return true;
    }
    double loss = 0;
    if (!SparsifyRows(*p->factor, src, pt.dtype, rows, pt.shape[1], opt_, dst, zeroed, &loss)) {
      return false;
    }
    std::lock_guard<std::mutex> lock(mu_);
    loss_[t] += loss;
    return true;
  }

  // The sparse rows are rounded to nearest by the scheme's own kernel.
  bool Quantize(size_t t, const WeightChunk& in, const ChunkOutputs& out) override {
    return plan_.tensors[t].scheme->kernel(in, out);
  }

  void Done(size_t t) override {
    std::lock_guard<std::mutex> lock(mu_);
    live_.erase(t);
  }

  void Finish(Plan& plan) override {
    for (size_t t = 0; t < plan.tensors.size(); ++t) {
      plan.tensors[t].calib.get_or_make().loss = loss_[t];
      if (!fallback_[t].empty()) plan.tensors[t].calib.get_or_make().note = fallback_[t];
    }
  }

 private:
  // An unstructured weight, read whole from its source shard and sparsified.
  Status SparsifyWhole(size_t t, Prepared* p) {
    const PlannedTensor& pt = plan_.tensors[t];
    const PlannedShard& ps = plan_.shards[pt.shard];
    QUENCH_ASSIGN_OR_RETURN(MappedFile map, MappedFile::Open(ps.src_path));
    if (pt.src_offset + pt.src_bytes > map.size()) {
      return Error(ErrorCode::kInvalidInput, ps.src_path.string() + ": tensor '" + pt.name +
                                                 "' runs past the end of the file");
    }
    p->whole.resize(pt.src_bytes);
    const uint8_t* src = map.data() + pt.src_offset;
    if (smooth_ != nullptr && smooth_->Transforms(t)) {
      // Smoothing first (src/calib/composite.h): the whole weight's smoothed rows (a copy in
      // its dtype, counted in PlanSparseGpt's budget).
      WeightChunk in;
      in.data = src;
      in.dtype = pt.dtype;
      in.rows = pt.shape[0];
      in.cols = pt.shape[1];
      src = smooth_->TransformRows(t, 0, in);
    }
    double loss = 0;
    const bool ok = SparsifyRows(*p->factor, src, pt.dtype, pt.shape[0],
                                 pt.shape[1], opt_, reinterpret_cast<uint8_t*>(p->whole.data()),
                                 &p->pruned, &loss);
    map.Release(pt.src_offset, pt.src_bytes);
    if (!ok) {
      return Error(ErrorCode::kNonFinite, ps.src_path.string() + ": tensor '" + pt.name +
                                              "' contains NaN or Inf; refusing to prune it");
    }
    std::lock_guard<std::mutex> lock(mu_);
    loss_[t] = loss;
    return Status::Ok();
  }

  const Plan& plan_;
  Statistics stats_;
  const SparseGptOptions opt_;
  std::string current_key_;
  std::shared_ptr<const GptqFactor> current_;  // input stage only
  std::mutex mu_;
  std::map<size_t, std::shared_ptr<const Prepared>> live_;
  std::vector<double> loss_;
  std::vector<std::string> fallback_;
};

}  // namespace

Result<std::unique_ptr<GptqRun>> MakeSparseGptRun(const Plan& plan, const ConvertOptions& options) {
  const bool any = std::any_of(
      plan.tensors.begin(), plan.tensors.end(),
      [](const PlannedTensor& t) { return !t.calib.value_or_default().site.empty() && t.prune; });
  if (!any) return std::unique_ptr<GptqRun>();
  QUENCH_ASSIGN_OR_RETURN(SparseGptOptions sopt, ResolveOptions(plan, options));
  QUENCH_ASSIGN_OR_RETURN(Statistics stats, Statistics::Open(options.stats));
  return std::unique_ptr<GptqRun>(new SparseGptRunImpl(plan, std::move(stats), sopt));
}

}  // namespace quench::calib
