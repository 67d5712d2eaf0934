// The imatrix_mse observer's and Wanda's planning (see imatrix_run.h, PlanImatrixWanda):
// which weights take them, from which statistics site, and the state the searches will hold.
#include "calib/imatrix_run.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "calib/composite.h"
#include "calib/imatrix_mse.h"
#include "calib/imatrix_run_internal.h"
#include "calib/stats.h"
#include "calib/wanda.h"
#include "calib/weight_stats.h"
#include "format/units.h"
#include "plan/observer_kwargs.h"
#include "plan/planner.h"

namespace quench::calib {
namespace {

constexpr const char* kCollect =
    "collect them with scripts/collect-stats MODEL_DIR --text FILE -o STATS";

// The search's per-group state for tensor t, by its format: the improvement masks (4 bytes a
// group, SearchTensor's scratch), each group's largest magnitude (FP4 and symmetric int: 4
// bytes) or its min and max (asymmetric int: 8), and the kept choice Quantize reads (FP4:
// the chosen range in the source's encoding; symmetric int: the scale as bf16, 2 bytes;
// asymmetric int: scale and zero point, 3). The bytes of the kept choice alone in *kept.
// The paths that keep less (a byte, the chosen step) stay under these figures.
uint64_t SearchStateBytes(const PlannedTensor& t, uint64_t* kept) {
  const ImatrixFormat f = *FormatOf(*t.scheme);
  const uint64_t gs = GroupColumns(RowsOf(t, nullptr, 1), f);
  const uint64_t groups = gs == 0 ? 0 : t.shape[0] * (t.shape[1] / gs);
  const bool asym = f == ImatrixFormat::kInt && !t.params.symmetric;
  const uint64_t range = f != ImatrixFormat::kInt ? DTypeBits(t.dtype) / 8 : asym ? 3 : 2;
  *kept = groups * range;
  return groups * (4 + (asym ? 8 : 4) + range);
}

}  // namespace

Result<ImatrixOptions> ImatrixOptionsFromKwargs(const std::string& kwargs_text) {
  QUENCH_ASSIGN_OR_RETURN(JsonValue kw, ObserverKwargsFromText(kwargs_text));
  QUENCH_ASSIGN_OR_RETURN(ObserverSettings s, ParseObserverKwargs("imatrix_mse", kw, ""));
  ImatrixOptions o;
  o.grid = s.grid;
  o.maxshrink = s.maxshrink;
  o.norm = s.norm;
  o.patience = s.patience;
  o.expand = s.expand;
  return o;
}

namespace {

// The flag combinations the imatrix_mse observer and Wanda refuse, before any statistics are
// read. `who` names the one asked for in messages.
Status CheckImatrixWandaFlags(const Plan& plan, const ConvertOptions& options, bool imatrix,
                              bool wanda, const std::string& who) {
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
  return Status::Ok();
}

// Where planning reads a weight's statistics: its site, checked against the weight's shape;
// nullptr, with the error recorded in the plan, where there is none.
class SiteFinder {
 public:
  SiteFinder(Plan& plan, const Statistics& stats, const ConvertOptions& options,
             const std::string& who)
      : plan_(plan), stats_(stats), options_(options), who_(who) {}

  const StatsConsumer* operator()(const PlannedTensor& t) const {
    const WeightStats ws = FindWeightStats(stats_, plan_, t);
    if (ws.consumer == nullptr) {
      plan_.errors.push_back(Error(ErrorCode::kInvalidInput,
                                   options_.stats.string() + " has no statistics for '" +
                                       t.name + "' (" + who_ + " needs its input's sum_x2; " +
                                       kCollect + " from this model)"));
      return nullptr;
    }
    if (!ws.shape_matches) {
      plan_.errors.push_back(Error(ErrorCode::kInvalidInput,
                                   options_.stats.string() + ": statistics for '" + t.name +
                                       "' do not match its shape in the checkpoint (another "
                                       "model's statistics?)"));
      return nullptr;
    }
    return ws.consumer;
  }

 private:
  Plan& plan_;
  const Statistics& stats_;
  const ConvertOptions& options_;
  const std::string& who_;
};

// What planning the observer's weights found: how many it searches (and of those, how many
// unweighted), and the state the largest search and the NVFP4 searches kept ahead hold.
struct ObservedTotals {
  size_t observed = 0, uniform = 0;
  uint64_t largest_state = 0, largest_kept = 0, ahead_kept = 0;
  std::string largest_name;
};

// One weight the imatrix_mse observer is to search: refused (recorded in the plan) where its
// scheme or source is not covered or it has no statistics; otherwise its site set and its
// search's state counted, and its importance checked as its observer_kwargs ask.
Status PlanObservedWeight(Plan& plan, PlannedTensor& t, const Statistics& stats,
                          const SiteFinder& site_of, ObservedTotals& totals) {
  if (!FormatOf(*t.scheme)) {
    plan.errors.push_back(Error(
        ErrorCode::kUnsupported,
        "the imatrix_mse observer covers the integer and FP4 schemes (W4A16, W4A16_ASYM, "
        "W8A16, W8A8, W4A8, NVFP4A16, NVFP4, MXFP4A16, ...); '" + t.name + "' is to be " +
            std::string(t.scheme->name)));
    return Status::Ok();
  }
  if (t.source_scale) {
    plan.errors.push_back(Error(ErrorCode::kUnsupported,
                                "the imatrix_mse observer on a quantized (FP8) source is "
                                "not built yet ('" + t.name + "')"));
    return Status::Ok();
  }
  const StatsConsumer* c = site_of(t);
  if (c == nullptr) return Status::Ok();
  QUENCH_ASSIGN_OR_RETURN(SiteValues v, ReadSite(stats, c->site, c->expert, t.shape[1]));
  PlannedCalibration& calib = t.calib.get_or_make();
  calib.imatrix_site = c->site;
  calib.imatrix_expert = c->expert;
  ++totals.observed;
  uint64_t kept = 0;
  const uint64_t state = SearchStateBytes(t, &kept);
  const bool nvfp4 = FormatOf(*t.scheme) == ImatrixFormat::kNvfp4;
  if (state > totals.largest_state) {
    totals.largest_state = state;
    totals.largest_kept = nvfp4 ? kept : 0;
    totals.largest_name = t.name;
  }
  if (nvfp4) totals.ahead_kept += kept;
  QUENCH_ASSIGN_OR_RETURN(
      JsonValue kw,
      ObserverKwargsFromText(plan.groups[static_cast<size_t>(t.group)].observer_kwargs));
  QUENCH_ASSIGN_OR_RETURN(ObserverSettings set, ParseObserverKwargs("imatrix_mse", kw, ""));
  const bool usable = !NormalizedImportance(v.sum_x2, v.count).empty();
  if (!usable && set.strict) {
    // observer_kwargs strict: the reference raises instead of falling back.
    plan.errors.push_back(Error(ErrorCode::kInvalidInput,
                                "site " + c->site + " gives no usable importance for '" +
                                    t.name + "' (no tokens or all zero) and the "
                                    "imatrix_mse observer is strict"));
  } else if (!usable) {
    // The reference's fallback for unusable importance (no tokens, all zero).
    calib.note = "site " + c->site + " gives no usable importance (no tokens or all "
                 "zero); unweighted search, as llm-compressor falls back";
    ++totals.uniform;
  }
  return Status::Ok();
}

// What --resume compares: a shard is kept only if it was made with the same statistics
// (their manifest's hash) and the same observer settings.
Result<std::string> CalibFingerprint(const Plan& plan, const ConvertOptions& options) {
  QUENCH_ASSIGN_OR_RETURN(std::string manifest, ReadFileToString(options.stats / "manifest.json"));
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(Fnv1a64(manifest)));
  const ImatrixOptions o;
  std::string fingerprint = "imatrix_mse grid " + std::to_string(o.grid) + " shrink " +
                            std::to_string(o.maxshrink) + " norm " + std::to_string(o.norm) +
                            " patience " + std::to_string(o.patience) + " stats " + hash;
  // Each group's observer_kwargs (they change the bytes; the defaults above otherwise).
  for (const PlannedGroup& g : plan.groups) {
    if (g.observer == "imatrix_mse" && !g.observer_kwargs.empty()) {
      fingerprint += " " + g.key + " " + g.observer_kwargs;
    }
  }
  return fingerprint;
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
  QUENCH_RETURN_IF_ERROR(CheckImatrixWandaFlags(plan, options, imatrix, wanda, who));
  QUENCH_ASSIGN_OR_RETURN(Statistics stats, Statistics::Open(options.stats));
  const SiteFinder site_of(plan, stats, options, who);
  ObservedTotals totals;
  size_t pruned = 0;
  std::map<std::string, int> scale_index;
  for (PlannedTensor& t : plan.tensors) {
    if (imatrix && t.action == TensorAction::kQuantize &&
        plan.groups[static_cast<size_t>(t.group)].observer == "imatrix_mse") {
      QUENCH_RETURN_IF_ERROR(PlanObservedWeight(plan, t, stats, site_of, totals));
    }
    if (wanda && t.prune) {
      const StatsConsumer* c = site_of(t);
      if (c == nullptr) continue;
      const std::string key = SiteKey(c->site, c->expert);
      auto [it, added] = scale_index.emplace(key, static_cast<int>(plan.prune_scales.size()));
      if (added) {
        QUENCH_ASSIGN_OR_RETURN(SiteValues v, ReadSite(stats, c->site, c->expert, t.shape[1]));
        plan.prune_scales.push_back(WandaColumnScale(v.sum_x2, v.count));
      }
      t.prune_scale = it->second;
      ++pruned;
    }
  }
  if (imatrix && totals.observed > 0) {
    // Held outside the chunks, as GPTQ's Hessians are (convert.cc takes plan.calib_bytes from
    // the chunks' budget): the scratch and kept choices of the tensor being searched
    // (SearchTensor reuses its scratch, sized by the largest), and the kept choices of the
    // NVFP4 searches kept ahead of it, at most kKeepBytes. GPTQ, SparseGPT and smoothing are
    // refused above, and convert.cc starts this stage's calib_bytes at 0 and adds the other
    // stages' to it; it checks the budget against the sum and the pipeline's floor.
    const uint64_t ahead = std::min(kKeepBytes, totals.ahead_kept - totals.largest_kept);
    plan.calib_bytes = totals.largest_state + ahead;
    plan.calib_holds = "the imatrix_mse observer: its search of '" + totals.largest_name +
                       "' keeps " + FormatBytes(totals.largest_state) +
                       " of per-group state (masks, ranges and choices, by its format's groups)" +
                       (ahead > 0 ? ", the searches kept ahead " + FormatBytes(ahead)
                                  : std::string());
  }
  if (imatrix) {
    plan.notes.push_back(
        "imatrix_mse observer from " + options.stats.string() + ": " +
        std::to_string(totals.observed) + " weights" +
        (totals.uniform > 0 ? " (" + std::to_string(totals.uniform) + " unweighted)" : ""));
  }
  if (wanda) {
    plan.notes.push_back("Wanda scores from " + options.stats.string() + ": " +
                         std::to_string(pruned) + " weights");
  }
  QUENCH_ASSIGN_OR_RETURN(plan.calib_fingerprint, CalibFingerprint(plan, options));
  return Status::Ok();
}

}  // namespace quench::calib
