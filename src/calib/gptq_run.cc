// GPTQ in a conversion (see gptq_run.h).
#include "calib/gptq_run.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "calib/blas.h"
#include "calib/gptq.h"
#include "calib/stats.h"
#include "calib/weight_stats.h"
#include "format/file_io.h"
#include "format/safetensors.h"
#include "format/units.h"

namespace quench::calib {
namespace {

Result<GptqOptions> ResolveOptions(const PlanOptions& o) {
  GptqOptions g;
  if (o.gptq_block_size <= 0) {
    return Error(ErrorCode::kUsage, "--gptq-block-size must be a positive whole number");
  }
  if (!std::isfinite(o.dampening) || o.dampening < 0) {
    return Error(ErrorCode::kUsage, "--dampening must be a finite fraction >= 0");
  }
  g.block_size = o.gptq_block_size;
  g.dampening = o.dampening;
  QUENCH_ASSIGN_OR_RETURN(g.actorder, ParseActOrder(o.actorder));
  return g;
}

// llm-compressor's GPTQ Hessian is 2/n_seq * sum x x^T (accumulate_hessian, prepare_batch);
// the statistics keep the raw sum. The scale changes nothing but where dead columns are set
// to 1 (factorize_hessian), so it follows the reference when the sequences are recorded.
double HessianScale(const Statistics& s, double count) {
  const JsonValue* c = s.manifest().Find("collection");
  const JsonValue* seq = c != nullptr ? c->Find("sequences") : nullptr;
  if (seq != nullptr && seq->is_int() && seq->as_int() > 0) return 2.0 / double(seq->as_int());
  return count > 0 ? 1.0 / count : 1.0;
}

// The float weight format GPTQ takes for a scheme (gptq.h), if any.
bool FloatFormat(const SchemeInfo& s, GptqFloat* format) {
  GptqFloat f;
  if (!GptqFloatFormat(std::string(s.weights.type), std::string(s.weights.strategy),
                       s.weights.num_bits, &f)) {
    return false;
  }
  if (format != nullptr) *format = f;
  return true;
}

}  // namespace

namespace {

// Weight t's site (set in t.calib->site) and "", or why it has none; an error for statistics
// that are not this model's.
Result<std::string> AssignHessianSite(const Plan& plan, const Statistics& stats,
                                      const std::filesystem::path& stats_path, PlannedTensor& t) {
  const WeightStats ws = FindWeightStats(stats, plan, t);
  if (ws.consumer == nullptr) {
    return std::string("no statistics for this weight (the collector did not reach its module)");
  }
  if (!ws.shape_matches) {
    return Error(ErrorCode::kInvalidInput,
                 stats_path.string() + ": statistics for '" + t.name +
                     "' do not match its shape in the checkpoint (another model's statistics?)");
  }
  const StatsSite& site = stats.sites().at(ws.consumer->site);
  const bool has_h = std::any_of(site.fields.begin(), site.fields.end(),
                                 [](const StatsField& f) { return f.name == "hessian"; });
  if (!has_h) {
    return "site " + site.name + " has no full Hessian (collected without --hessian full)";
  }
  QUENCH_ASSIGN_OR_RETURN(std::vector<double> count, stats.ReadField(site.name, "count"));
  const size_t e = ws.consumer->expert.value_or(0);
  if (e >= count.size() || count[e] <= 0) return "site " + site.name + " saw no tokens";
  PlannedCalibration& c = t.calib.get_or_make();
  c.site = site.name;
  c.expert = ws.consumer->expert;
  return std::string();
}

}  // namespace

bool HessianSites::Assign(Plan& plan, const Statistics& stats,
                          const std::filesystem::path& stats_path, const std::string& algorithm,
                          PlannedTensor& t) {
  auto note = [&](const std::string& why) {
    t.calib.get_or_make().note = why;
    ++fallback;
    ++reasons[why.substr(0, why.find(" ("))];
    return false;
  };
  if (t.source_scale) {
    return note("its source is quantized (FP8); " + algorithm +
                " of decoded sources is not built yet");
  }
  auto why = AssignHessianSite(plan, stats, stats_path, t);
  if (!why.ok()) {
    plan.errors.push_back(why.status());
    return false;
  }
  if (!why->empty()) return note(*why);
  ++taken;
  if (FactorBytes(t.shape[1]) > largest) {
    largest = FactorBytes(t.shape[1]);
    largest_site = t.calib.value_or_default().site;
  }
  return true;
}

std::string HessianSites::FallbackText(const std::string& fallback_to) const {
  if (fallback == 0) return std::string();
  std::string text = "; " + std::to_string(fallback) + " " + fallback_to + ":";
  for (const auto& [why, n] : reasons) text += " " + std::to_string(n) + " " + why + ";";
  text.pop_back();
  return text;
}

Result<std::string> StatsHash(const std::filesystem::path& stats_path) {
  QUENCH_ASSIGN_OR_RETURN(std::string manifest, ReadFileToString(stats_path / "manifest.json"));
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(Fnv1a64(manifest)));
  return std::string(hash);
}

std::string FactorKey(const PlannedTensor& pt, const std::vector<double>* column_scales) {
  char scales[24];
  std::snprintf(scales, sizeof scales, "@%p", static_cast<const void*>(column_scales));
  const PlannedCalibration& c = pt.calib.value_or_default();
  return c.site + (c.expert ? "#" + std::to_string(*c.expert) : "") +
         (column_scales != nullptr ? scales : "");
}

Result<std::vector<float>> LoadHessian(Statistics& stats, const PlannedTensor& pt,
                                       const std::vector<double>* column_scales) {
  const size_t n = pt.shape[1];
  const PlannedCalibration& calib = pt.calib.value_or_default();
  const std::string& site = calib.site;
  const size_t packed = n * (n + 1) / 2;
  if (column_scales != nullptr && column_scales->size() != n) {
    return Error(ErrorCode::kInternal, "smoothing scales do not match the width of " + pt.name);
  }
  QUENCH_ASSIGN_OR_RETURN(auto bytes, stats.FieldBytes(site, "hessian"));
  const size_t e = calib.expert.value_or(0);
  if (bytes.second < (e + 1) * packed * 8) {
    return Error(ErrorCode::kInvalidInput, "statistics: hessian of site " + site +
                                               " is shorter than its shape");
  }
  QUENCH_ASSIGN_OR_RETURN(std::vector<double> count, stats.ReadField(site, "count"));
  const double scale = HessianScale(stats, count[e]);
  const uint8_t* src = bytes.first + e * packed * 8;
  std::vector<float> h(n * n);
  size_t k = 0;
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = i; j < n; ++j, ++k) {
      double v;
      std::memcpy(&v, src + k * 8, 8);
      if (!std::isfinite(v)) {
        return Error(ErrorCode::kNonFinite, "statistics: hessian of site " + site +
                                                " holds NaN or Inf");
      }
      // Smoothed: (x / s)(x / s)^T summed is the recorded sum divided by s_i s_j (in f64,
      // before the normalisation, so one rounding to f32 as unsmoothed).
      if (column_scales != nullptr) v = v / ((*column_scales)[i] * (*column_scales)[j]);
      h[i * n + j] = h[j * n + i] = static_cast<float>(v * scale);
    }
  }
  // The mapped Hessian's pages are read once: dropped from the resident set now (they are
  // clean file pages; a later read faults them in again), or every site read would stay
  // resident for the whole run (MiniLM's 78 MB statistics under a 96 MiB budget did).
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t lo = reinterpret_cast<uintptr_t>(src) / page * page;
  const uintptr_t hi = reinterpret_cast<uintptr_t>(src + packed * 8);
  madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
  return h;
}

Status PlanGptq(Plan& plan, const ConvertOptions& options) {
  if (options.algorithm != "rtn" && options.algorithm != "gptq" &&
      options.algorithm != "sparsegpt") {
    return Error(ErrorCode::kUsage, "unknown --algorithm '" + options.algorithm +
                                        "' (rtn, gptq, sparsegpt, smoothquant, awq)");
  }
  if (options.algorithm == "rtn") {
    // Static activation and KV-cache scales (kStatic outputs) read the statistics too.
    bool static_outputs = false;
    for (const PlannedShard& s : plan.shards) {
      for (const PlannedOutput& o : s.outputs) {
        static_outputs |= o.source == SchemeOutput::Source::kStatic;
      }
    }
    if (!options.stats.empty() && options.observer == "minmax" &&
        options.prune_metric == "magnitude" && !static_outputs &&
        std::none_of(plan.groups.begin(), plan.groups.end(),
                     [](const PlannedGroup& g) { return !g.observer.empty(); })) {
      plan.notes.push_back("--stats is used by --algorithm gptq and sparsegpt, --observer "
                           "imatrix_mse, --prune-metric wanda, static activations and "
                           "--kv-cache; without them it is not read");
    }
    return Status::Ok();
  }
  if (options.algorithm == "sparsegpt") return PlanSparseGpt(plan, options);
  QUENCH_ASSIGN_OR_RETURN(GptqOptions gopt, ResolveOptions(options));
  QUENCH_ASSIGN_OR_RETURN(const Blas* blas, LoadBlas());  // refused now rather than mid-run
  (void)blas;
  if (options.stats.empty()) {
    return Error(ErrorCode::kUsage,
                 "--algorithm gptq needs --stats STATS with full Hessians (collect them with "
                 "scripts/collect-stats MODEL_DIR --text FILE --hessian full -o STATS)");
  }
  // With --prune, the pruned weights reach GPTQ sparse and keep their zeros (preserve_zeros,
  // calib/gptq.h), as a SparseGPTModifier/magnitude pruning then GPTQModifier recipe wants.
  QUENCH_ASSIGN_OR_RETURN(Statistics stats, Statistics::Open(options.stats));
  HessianSites sites;
  for (PlannedTensor& t : plan.tensors) {
    if (t.action != TensorAction::kQuantize) continue;
    if (t.scheme->weights.type != "int" && !FloatFormat(*t.scheme, nullptr)) {
      plan.errors.push_back(Error(
          ErrorCode::kUnsupported,
          "--algorithm gptq supports integer weights (W4A16, W8A16, W4A16_ASYM, W8A8, W4A8, "
          "W4AFP8), FP8 (FP8, FP8_DYNAMIC, FP8_BLOCK), NVFP4 and MX weights; '" + t.name +
              "' is to be " + std::string(t.scheme->name)));
      continue;
    }
    sites.Assign(plan, stats, options.stats, "GPTQ", t);
  }
  // One factor in use by chunks in flight, one being built, and the mapped f64 Hessian it is
  // built from (the same n^2 x 4 bytes packed). The budget's check is convert.cc's, with the
  // pipeline's floor.
  plan.calib_bytes = 3 * sites.largest;
  if (sites.taken > 0) {
    plan.calib_holds = "GPTQ: the largest Hessian (site " + sites.largest_site + ") 3 x " +
                       FormatBytes(sites.largest) + " (in use, being factored, mapped)";
  }
  plan.notes.push_back("GPTQ from " + options.stats.string() + ": " +
                       std::to_string(sites.taken) + " weights" +
                       sites.FallbackText("rounded to nearest"));
  // --resume keeps a shard only if it was made with the same GPTQ settings and statistics.
  QUENCH_ASSIGN_OR_RETURN(std::string hash, StatsHash(options.stats));
  plan.calib_fingerprint = "block " + std::to_string(gopt.block_size) + " damp " +
                           std::to_string(gopt.dampening) + " actorder " + options.actorder +
                           " stats " + hash;
  return Status::Ok();
}

namespace {

class GptqRunImpl : public GptqRun {
 public:
  GptqRunImpl(const Plan& plan, Statistics stats, GptqOptions opt)
      : plan_(plan), stats_(std::move(stats)), opt_(opt), loss_(plan.tensors.size(), 0.0),
        fallback_(plan.tensors.size()) {}

  // (A pruned-only weight of a composed run may hold the Hessian site SparseGPT uses.)
  bool Takes(size_t t) const override {
    return !plan_.tensors[t].calib.value_or_default().site.empty() &&
           plan_.tensors[t].action == TensorAction::kQuantize;
  }

  Status Prepare(size_t t) override {
    const PlannedTensor& pt = plan_.tensors[t];
    const std::string key = FactorKey(pt, ColumnScalesOf(t));
    if (key != current_key_) {
      current_.reset();  // freed now unless chunks in flight still use it
      QUENCH_ASSIGN_OR_RETURN(GptqFactor f, Build(pt, ColumnScalesOf(t)));
      current_ = std::make_shared<const GptqFactor>(std::move(f));
      current_key_ = key;
    }
    if (current_->rtn_fallback) {
      fallback_[t] = "the Hessian of site " + pt.calib.value_or_default().site +
                     " could not be factored (" + current_->why +
                     "); rounded to nearest, as llm-compressor falls back";
    }
    std::lock_guard<std::mutex> lock(mu_);
    live_[t] = current_;
    return Status::Ok();
  }

  bool Quantize(size_t t, const WeightChunk& in, const ChunkOutputs& out) override {
    std::shared_ptr<const GptqFactor> f;
    {
      std::lock_guard<std::mutex> lock(mu_);
      f = live_.at(t);
    }
    const SchemeInfo& scheme = *plan_.tensors[t].scheme;
    GptqOptions opt = opt_;
    opt.preserve_zeros = plan_.tensors[t].prune;  // pruned before: the zeros stay
    double loss = 0;
    GptqFloat format;
    if (FloatFormat(scheme, &format)) {
      if (!QuantizeFloatRowsInto(*f, in, format, opt, out, &loss)) return false;
    } else if (!QuantizeRowsInto(*f, in, opt, scheme.format == "pack-quantized", out, &loss)) {
      return false;
    }
    std::lock_guard<std::mutex> lock(mu_);
    loss_[t] += loss;
    return true;
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
  // The site's Hessian, unpacked and normalised as the reference's (LoadHessian), factored.
  Result<GptqFactor> Build(const PlannedTensor& pt, const std::vector<double>* column_scales) {
    QUENCH_ASSIGN_OR_RETURN(std::vector<float> h, LoadHessian(stats_, pt, column_scales));
    return FactorHessian(std::move(h), pt.shape[1], opt_);
  }

  const Plan& plan_;
  Statistics stats_;
  const GptqOptions opt_;
  std::string current_key_;
  std::shared_ptr<const GptqFactor> current_;  // input stage only
  std::mutex mu_;
  std::map<size_t, std::shared_ptr<const GptqFactor>> live_;  // tensor -> its factor
  std::vector<double> loss_;
  std::vector<std::string> fallback_;
};

}  // namespace

Result<std::unique_ptr<GptqRun>> MakeGptqRun(const Plan& plan, const ConvertOptions& options) {
  const bool any =
      std::any_of(plan.tensors.begin(), plan.tensors.end(), [](const PlannedTensor& t) {
        return !t.calib.value_or_default().site.empty() && t.action == TensorAction::kQuantize;
      });
  if (!any || options.algorithm != "gptq") return std::unique_ptr<GptqRun>();
  QUENCH_ASSIGN_OR_RETURN(GptqOptions gopt, ResolveOptions(options));
  QUENCH_ASSIGN_OR_RETURN(Statistics stats, Statistics::Open(options.stats));
  return std::unique_ptr<GptqRun>(new GptqRunImpl(plan, std::move(stats), gopt));
}

}  // namespace quench::calib
