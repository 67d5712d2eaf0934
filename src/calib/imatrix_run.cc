// The imatrix_mse observer and Wanda scores in a conversion (see imatrix_run.h).
#include "calib/imatrix_run.h"

#include "calib/composite.h"

#include <tbb/blocked_range.h>
#include <tbb/parallel_reduce.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "calib/imatrix_mse.h"
#include "calib/stats.h"
#include "calib/wanda.h"
#include "calib/weight_stats.h"
#include "format/file_io.h"
#include "format/safetensors.h"
#include "plan/planner.h"
#include "schemes/prune.h"

namespace quench::calib {
namespace {

constexpr const char* kCollect =
    "collect them with scripts/collect-stats MODEL_DIR --text FILE -o STATS";

// A site's sum_x2 and count for one weight (the expert's slice of a per-expert site).
struct SiteValues {
  std::vector<double> sum_x2;
  double count = 0;
};

Result<SiteValues> ReadSite(const Statistics& s, const std::string& site,
                            std::optional<uint64_t> expert, uint64_t n) {
  QUENCH_ASSIGN_OR_RETURN(std::vector<double> sum, s.ReadField(site, "sum_x2"));
  QUENCH_ASSIGN_OR_RETURN(std::vector<double> count, s.ReadField(site, "count"));
  const size_t e = expert.value_or(0);
  if (e >= count.size() || sum.size() < (e + 1) * n) {
    return Error(ErrorCode::kInvalidInput, "statistics: site " + site + " is shorter than its shape");
  }
  SiteValues v;
  v.sum_x2.assign(sum.begin() + static_cast<ptrdiff_t>(e * n),
                  sum.begin() + static_cast<ptrdiff_t>((e + 1) * n));
  v.count = count[e];
  for (double x : v.sum_x2) {
    if (!std::isfinite(x) || x < 0) {
      return Error(ErrorCode::kNonFinite, "statistics: sum_x2 of site " + site +
                                              " holds NaN, Inf or negative values");
    }
  }
  return v;
}

std::string Key(const std::string& site, std::optional<uint64_t> expert) {
  return site + (expert ? "#" + std::to_string(*expert) : "");
}

}  // namespace

Status PlanImatrixWanda(Plan& plan, const ConvertOptions& options) {
  const bool wanda = options.prune_metric == "wanda";
  if (!wanda && options.prune_metric != "magnitude") {
    return Error(ErrorCode::kUsage,
                 "unknown --prune-metric '" + options.prune_metric + "' (magnitude, wanda)");
  }
  if (options.observer != "minmax" && options.observer != "imatrix_mse") {
    return Error(ErrorCode::kUsage,
                 "unknown --observer '" + options.observer + "' (minmax, imatrix_mse)");
  }
  const bool imatrix = std::any_of(plan.groups.begin(), plan.groups.end(), [](const auto& g) {
    return g.observer == "imatrix_mse";
  });
  if (!imatrix && !wanda) return Status::Ok();
  const std::string who = imatrix ? "the imatrix_mse observer" : "--prune-metric wanda";
  if (options.stats.empty()) {
    return Error(ErrorCode::kUsage, who + " needs --stats STATS, the per-channel activation "
                                          "statistics (" + kCollect + ")");
  }
  if (wanda && plan.prune.kind == PlannedPrune::kNone) {
    return Error(ErrorCode::kUsage, "--prune-metric wanda needs --prune (unstructured:F or N:M)");
  }
  if (wanda && plan.prune.per_tensor) {
    return Error(ErrorCode::kUsage, "--prune-metric wanda compares the weights of a row, as "
                                    "llm-compressor's Wanda does; --prune-granularity tensor is "
                                    "for magnitude pruning");
  }
  if (imatrix && HasAlgorithm(options.algorithm, "gptq")) {
    return Error(ErrorCode::kUnsupported,
                 "--algorithm gptq with the imatrix_mse observer is not built yet (GPTQ takes "
                 "min-max scales); use one or the other");
  }
  // The observer's search reads the source's rows (Prepare), which smoothing has not
  // rescaled; SparseGPT chooses its own mask. Wanda composes with smoothing (its column
  // scales are divided by the smoothing scales: src/calib/composite.h) and with GPTQ.
  if (imatrix && options.algorithm != "rtn") {
    return Error(ErrorCode::kUnsupported,
                 who + " with --algorithm " + options.algorithm +
                     " is not built yet (it searches the unsmoothed source rows); use one or "
                     "the other");
  }
  if (wanda && HasAlgorithm(options.algorithm, "sparsegpt")) {
    return Error(ErrorCode::kUsage, "--prune-metric wanda with --algorithm sparsegpt: "
                                    "SparseGPT chooses its own mask; give one or the other");
  }
  QUENCH_ASSIGN_OR_RETURN(Statistics stats, Statistics::Open(options.stats));
  // The weight's site, checked against the weight's shape; nullptr (error recorded) if none.
  auto site_of = [&](const PlannedTensor& t) -> const StatsConsumer* {
    const WeightStats ws = FindWeightStats(stats, plan, t);
    if (ws.consumer == nullptr) {
      plan.errors.push_back(Error(ErrorCode::kInvalidInput,
                                  options.stats.string() + " has no statistics for '" + t.name +
                                      "' (" + who + " needs its input's sum_x2; " + kCollect +
                                      " from this model)"));
      return nullptr;
    }
    if (!ws.shape_matches) {
      plan.errors.push_back(Error(ErrorCode::kInvalidInput,
                                  options.stats.string() + ": statistics for '" + t.name +
                                      "' do not match its shape in the checkpoint (another "
                                      "model's statistics?)"));
      return nullptr;
    }
    return ws.consumer;
  };
  size_t observed = 0, uniform = 0, pruned = 0;
  std::map<std::string, int> scale_index;
  for (PlannedTensor& t : plan.tensors) {
    if (imatrix && t.action == TensorAction::kQuantize &&
        plan.groups[static_cast<size_t>(t.group)].observer == "imatrix_mse") {
      if (t.scheme->weights.type != "int") {
        plan.errors.push_back(Error(
            ErrorCode::kUnsupported,
            "the imatrix_mse observer covers the integer schemes so far (W4A16, W4A16_ASYM, "
            "W8A16, W8A8, W4A8, ...); '" + t.name + "' is to be " + std::string(t.scheme->name)));
      } else if (t.source_scale) {
        plan.errors.push_back(Error(ErrorCode::kUnsupported,
                                    "the imatrix_mse observer on a quantized (FP8) source is "
                                    "not built yet ('" + t.name + "')"));
      } else if (const StatsConsumer* c = site_of(t); c != nullptr) {
        QUENCH_ASSIGN_OR_RETURN(SiteValues v, ReadSite(stats, c->site, c->expert, t.shape[1]));
        t.imatrix_site = c->site;
        t.imatrix_expert = c->expert;
        ++observed;
        if (NormalizedImportance(v.sum_x2, v.count).empty()) {
          // The reference's fallback for unusable importance (no tokens, all zero).
          t.calib_note = "site " + c->site + " gives no usable importance (no tokens or all "
                         "zero); unweighted search, as llm-compressor falls back";
          ++uniform;
        }
      }
    }
    if (wanda && t.prune) {
      const StatsConsumer* c = site_of(t);
      if (c == nullptr) continue;
      const std::string key = Key(c->site, c->expert);
      auto [it, added] = scale_index.emplace(key, static_cast<int>(plan.prune_scales.size()));
      if (added) {
        QUENCH_ASSIGN_OR_RETURN(SiteValues v, ReadSite(stats, c->site, c->expert, t.shape[1]));
        plan.prune_scales.push_back(WandaColumnScale(v.sum_x2, v.count));
      }
      t.prune_scale = it->second;
      ++pruned;
    }
  }
  if (imatrix) {
    plan.notes.push_back("imatrix_mse observer from " + options.stats.string() + ": " +
                         std::to_string(observed) + " weights" +
                         (uniform > 0 ? " (" + std::to_string(uniform) + " unweighted)" : ""));
  }
  if (wanda) {
    plan.notes.push_back("Wanda scores from " + options.stats.string() + ": " +
                         std::to_string(pruned) + " weights");
  }
  // --resume keeps a shard only if it was made with the same statistics and settings.
  QUENCH_ASSIGN_OR_RETURN(std::string manifest, ReadFileToString(options.stats / "manifest.json"));
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(Fnv1a64(manifest)));
  const ImatrixOptions o;
  plan.calib_fingerprint = "imatrix_mse grid " + std::to_string(o.grid) + " shrink " +
                           std::to_string(o.maxshrink) + " norm " + std::to_string(o.norm) +
                           " patience " + std::to_string(o.patience) + " stats " + hash;
  return Status::Ok();
}

namespace {

class ImatrixRunImpl : public ChunkCalibration {
 public:
  ImatrixRunImpl(const Plan& plan, Statistics stats)
      : plan_(plan), stats_(std::move(stats)), spec_(ToPruneSpec(plan.prune)) {}

  bool Takes(size_t t) const override { return !plan_.tensors[t].imatrix_site.empty(); }

  Status Prepare(size_t t) override {
    const PlannedTensor& pt = plan_.tensors[t];
    const std::string key = Key(pt.imatrix_site, pt.imatrix_expert);
    if (key != imp_key_) {
      QUENCH_ASSIGN_OR_RETURN(SiteValues v,
                              ReadSite(stats_, pt.imatrix_site, pt.imatrix_expert, pt.shape[1]));
      imp_ = std::make_shared<const std::vector<float>>(NormalizedImportance(v.sum_x2, v.count));
      imp_key_ = key;
    }
    QUENCH_ASSIGN_OR_RETURN(int stop, StopOver(pt));
    std::lock_guard<std::mutex> lock(mu_);
    live_[t] = {imp_, stop};
    return Status::Ok();
  }

  bool Quantize(size_t t, const WeightChunk& in, const ChunkOutputs& out) override {
    Live l;
    {
      std::lock_guard<std::mutex> lock(mu_);
      l = live_.at(t);
    }
    const bool packed = plan_.tensors[t].scheme->format == "pack-quantized";
    return SearchInto(in, *l.imp, opt_, l.stop, packed, out);
  }

  void Done(size_t t) override {
    std::lock_guard<std::mutex> lock(mu_);
    live_.erase(t);
  }

 private:
  struct Live {
    std::shared_ptr<const std::vector<float>> imp;
    int stop = 0;
  };

  // The patience rule's last step over the whole tensor: every step over all rows (pruned as
  // the pipeline prunes them), in parallel row blocks; NaN/Inf is left for the pipeline to
  // report as it reports it for any chunk.
  Result<int> StopOver(const PlannedTensor& pt) {
    const PlannedShard& ps = plan_.shards[pt.shard];
    if (!map_ || map_path_ != ps.src_path) {
      QUENCH_ASSIGN_OR_RETURN(MappedFile m, MappedFile::Open(ps.src_path));
      map_ = std::make_unique<MappedFile>(std::move(m));
      map_path_ = ps.src_path;
    }
    const size_t rows = pt.shape[0], cols = pt.shape[1];
    const size_t esz = DTypeBits(pt.dtype) / 8;
    const uint8_t* base = map_->data() + pt.src_offset;
    const std::vector<float>& imp = *imp_;
    const size_t block = std::max<size_t>(1, (size_t(1) << 18) / std::max<size_t>(cols, 1));
    const uint32_t steps = tbb::parallel_reduce(
        tbb::blocked_range<size_t>(0, rows, block), 0u,
        [&](const tbb::blocked_range<size_t>& r, uint32_t acc) {
          const size_t n = r.end() - r.begin();
          const uint8_t* src = base + r.begin() * cols * esz;
          std::vector<uint8_t> pruned;
          if (pt.prune) {
            pruned.resize(n * cols * esz);
            bool ok;
            if (pt.prune_scale >= 0) {
              ok = WandaPruneRows(src, pruned.data(), pt.dtype, n, cols, spec_,
                                  plan_.prune_scales[pt.prune_scale].data(), nullptr);
            } else if (plan_.prune.per_tensor) {
              prune::TensorThreshold th;
              th.magnitude = pt.prune_magnitude;
              th.prune_equal = pt.prune_equal;
              th.pruned = pt.prune_total;
              ok = prune::PruneRowsTensor(src, pruned.data(), pt.dtype, n, cols, th,
                                          pt.prune_equal_before[r.begin()], nullptr);
            } else {
              ok = prune::PruneRows(src, pruned.data(), pt.dtype, n, cols, spec_, nullptr);
            }
            if (!ok) return acc;
            src = pruned.data();
          }
          WeightChunk c;
          c.data = src;
          c.dtype = pt.dtype;
          c.rows = n;
          c.cols = cols;
          c.params.bits = pt.params.bits;
          c.params.group_size = std::max(0, pt.params.group_size.value_or(0));
          c.params.symmetric = pt.params.symmetric;
          uint32_t s = 0;
          AnyImproved(c, imp, opt_, &s);
          return acc | s;
        },
        [](uint32_t a, uint32_t b) { return a | b; });
    map_->Release(pt.src_offset, pt.src_bytes);
    return StopStep(steps, opt_);
  }

  const Plan& plan_;
  Statistics stats_;
  const prune::PruneSpec spec_;
  const ImatrixOptions opt_;
  std::string imp_key_;
  std::shared_ptr<const std::vector<float>> imp_;  // input stage only
  std::unique_ptr<MappedFile> map_;
  std::filesystem::path map_path_;
  std::mutex mu_;
  std::map<size_t, Live> live_;
};

}  // namespace

Result<std::unique_ptr<ChunkCalibration>> MakeImatrixRun(const Plan& plan,
                                                         const ConvertOptions& options) {
  const bool any = std::any_of(plan.tensors.begin(), plan.tensors.end(),
                               [](const PlannedTensor& t) { return !t.imatrix_site.empty(); });
  if (!any || options.algorithm != "rtn") return std::unique_ptr<ChunkCalibration>();
  QUENCH_ASSIGN_OR_RETURN(Statistics stats, Statistics::Open(options.stats));
  return std::unique_ptr<ChunkCalibration>(new ImatrixRunImpl(plan, std::move(stats)));
}

}  // namespace quench::calib
