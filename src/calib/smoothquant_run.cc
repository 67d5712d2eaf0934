// SmoothQuant in a conversion (see smoothquant_run.h).
#include "calib/smoothquant_run.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "calib/mappings.h"
#include "calib/smoothquant.h"
#include "calib/stats.h"
#include "format/file_io.h"
#include "format/json.h"
#include "format/safetensors.h"
#include "plan/matcher.h"

namespace quench::calib {
namespace {

std::string Join(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

bool HasField(const StatsSite& site, const std::string& f) {
  return std::any_of(site.fields.begin(), site.fields.end(),
                     [&](const StatsField& x) { return x.name == f; });
}

// Checks one resolved mapping against the plan and the statistics; fills `out` or says why
// the mapping is refused.
Status CheckMapping(const Plan& plan, const std::map<std::string, size_t>& index,
                    const Statistics& stats, const ResolvedMapping& m, PlannedSmoothing* out) {
  const std::string what = "SmoothQuant mapping [" + Join(m.balance) + "] <- " + m.smooth + ": ";
  auto refuse = [&](const std::string& why) { return Error(ErrorCode::kUnsupported, what + why); };
  out->smooth = m.smooth;
  out->balance = m.balance;
  const auto sw = index.find(m.smooth + ".weight");
  if (sw == index.end()) return refuse("the smooth layer has no weight in the checkpoint");
  const PlannedTensor& s = plan.tensors[sw->second];
  uint64_t n = 0;
  DType dtype = DType::kBF16;
  const PlannedTensor* first = nullptr;
  for (const std::string& b : m.balance) {
    const auto it = index.find(b + ".weight");
    if (it == index.end()) return refuse("balance layer " + b + " has no weight");
    const PlannedTensor& t = plan.tensors[it->second];
    if (t.shape.size() != 2) return refuse(b + ".weight is not 2-D");
    if (t.action != TensorAction::kQuantize) {
      return refuse("balance layer " + b + " is left unquantized (" + t.why +
                    "); smoothing would change an unquantized weight: ignore all of the "
                    "mapping's balance layers or none");
    }
    if (t.prune) return refuse(b + " is pruned; pruning after smoothing is not built yet");
    if (t.source_scale) return refuse(b + " is stored quantized in the source (not built yet)");
    if (first == nullptr) {
      first = &t;
      n = t.shape[1];
      dtype = t.dtype;
    } else if (t.scheme != first->scheme || t.params.bits != first->params.bits ||
               t.params.group_size != first->params.group_size ||
               t.params.symmetric != first->params.symmetric) {
      return refuse("its balance layers are split across schemes (" + m.balance.front() + ": " +
                    std::string(first->scheme->name) + ", " + b + ": " + std::string(t.scheme->name) +
                    ")");
    }
    if (t.shape[1] != n) return refuse("balance layers have different input widths");
    if (t.dtype != dtype) return refuse("balance layers have different dtypes");
    out->tensors.push_back(it->second);
  }
  // The smooth layer: a norm's weight [n] (and bias), or a linear's weight [n, k] (and bias).
  const bool norm = s.shape.size() == 1;
  if ((norm && s.shape[0] != n) || (!norm && (s.shape.size() != 2 || s.shape[0] != n))) {
    return refuse("the smooth layer's output width does not equal the balance layers' input (" +
                  std::to_string(n) + ")");
  }
  if (s.dtype != dtype) return refuse("the smooth layer's dtype differs from the balance layers'");
  if (s.source_scale || s.prune) {
    return refuse("the smooth layer is source-quantized or pruned (not built yet)");
  }
  out->tensors.push_back(sw->second);
  if (const auto bias = index.find(m.smooth + ".bias"); bias != index.end()) {
    const PlannedTensor& b = plan.tensors[bias->second];
    if (b.shape.size() != 1 || b.shape[0] != n || b.dtype != dtype ||
        b.action != TensorAction::kCopy) {
      return refuse("the smooth layer's bias is not a copied [" + std::to_string(n) + "] tensor");
    }
    out->tensors.push_back(bias->second);
  }
  // The statistics of the balance layers' shared input.
  const auto c = stats.consumers().find(m.balance.front() + ".weight");
  if (c == stats.consumers().end()) {
    return refuse("the statistics have no site for " + m.balance.front() +
                  ".weight (the collector did not reach it)");
  }
  const StatsSite& site = stats.sites().at(c->second.site);
  if (site.experts || site.in_features != n) {
    return refuse("site " + site.name + " is per-expert or not " + std::to_string(n) + " wide");
  }
  if (!HasField(site, "min") || !HasField(site, "max")) {
    return refuse("site " + site.name + " has no min and max");
  }
  out->site = site.name;
  return Status::Ok();
}

}  // namespace

Status PlanSmoothQuant(Plan& plan, const ConvertOptions& options) {
  const double a = options.smoothing_strength;
  if (!std::isfinite(a) || a < 0 || a > 1) {
    return Error(ErrorCode::kUsage, "--smoothing-strength must be in [0, 1]");
  }
  if (options.stats.empty()) {
    return Error(ErrorCode::kUsage,
                 "--algorithm smoothquant needs --stats STATS with per-channel min and max "
                 "(collect them with scripts/collect-stats MODEL_DIR --text FILE -o STATS)");
  }
  QUENCH_ASSIGN_OR_RETURN(Statistics stats, Statistics::Open(options.stats));
  QUENCH_ASSIGN_OR_RETURN(JsonValue config, ReadJsonFile((plan.src / "config.json").string()));
  const JsonValue* archs = config.Find("architectures");
  const std::string arch = archs != nullptr && archs->is_array() && !archs->as_array().empty() &&
                                   archs->as_array()[0].is_string()
                               ? archs->as_array()[0].as_string()
                               : std::string();
  bool fallback = false;
  const std::vector<MappingSpec> specs = MappingsFor(MappingFamily::kSmoothQuant, arch, &fallback);
  std::map<std::string, size_t> index;
  std::vector<std::string> modules;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const std::string& name = plan.tensors[i].name;
    index[name] = i;
    const auto [module, param] = SplitModuleParam(name);
    if (param == "weight") modules.emplace_back(module);
  }
  auto resolved = ResolveMappings(specs, modules);
  if (!resolved.ok()) {
    plan.errors.push_back(resolved.status());
    return Status::Ok();
  }
  if (resolved->empty()) {
    plan.errors.push_back(Error(ErrorCode::kUnsupported,
                                "--algorithm smoothquant: no mapping of " +
                                    (arch.empty() ? std::string("this model") : arch) +
                                    " matches the checkpoint's modules"));
    return Status::Ok();
  }
  size_t rewritten = 0;
  for (const ResolvedMapping& m : *resolved) {
    PlannedSmoothing ps;
    if (Status st = CheckMapping(plan, index, stats, m, &ps); !st.ok()) {
      plan.errors.push_back(st);
      continue;
    }
    for (size_t t : ps.tensors) {
      if (plan.tensors[t].smoothed) {
        plan.errors.push_back(Error(ErrorCode::kUnsupported,
                                    "SmoothQuant: " + plan.tensors[t].name +
                                        " belongs to two mappings"));
      }
      plan.tensors[t].smoothed = true;
      ++rewritten;
    }
    plan.smoothing.push_back(std::move(ps));
  }
  char alpha[32];
  std::snprintf(alpha, sizeof alpha, "%.17g", a);
  plan.notes.push_back("SmoothQuant (alpha " + std::string(alpha) + ") from " +
                       options.stats.string() + ": " + std::to_string(plan.smoothing.size()) +
                       " mappings of " + (arch.empty() ? "an unnamed architecture" : arch) +
                       (fallback ? " (not in llm-compressor's registry: its default mappings)"
                                 : "") +
                       ", rewriting " + std::to_string(rewritten) + " tensors");
  QUENCH_ASSIGN_OR_RETURN(std::string manifest,
                          ReadFileToString(options.stats / "manifest.json"));
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx",
                static_cast<unsigned long long>(Fnv1a64(manifest)));
  plan.calib_fingerprint = std::string("smoothquant alpha ") + alpha + " stats " + hash;
  return Status::Ok();
}

namespace {

class SmoothRunImpl : public SmoothRun {
 public:
  SmoothRunImpl(const Plan& plan) : plan_(plan), ops_(plan.tensors.size()) {}

  // The pre-pass: per mapping, the balance weights' column max |W|, then the scales.
  Status Compute(const Statistics& stats, double alpha) {
    std::map<size_t, std::shared_ptr<MappedFile>> maps;
    for (const PlannedSmoothing& m : plan_.smoothing) {
      const PlannedTensor& b0 = plan_.tensors[m.tensors.front()];
      const uint64_t n = b0.shape[1];
      std::vector<float> absmax(n, 0.f);
      for (size_t k = 0; k < m.balance.size(); ++k) {
        const PlannedTensor& t = plan_.tensors[m.tensors[k]];
        auto& map = maps[t.shard];
        if (!map) {
          QUENCH_ASSIGN_OR_RETURN(MappedFile f, MappedFile::Open(plan_.shards[t.shard].src_path));
          map = std::make_shared<MappedFile>(std::move(f));
        }
        if (!ColumnAbsMax(map->data() + t.src_offset, t.dtype, t.shape[0], n, absmax.data())) {
          return Error(ErrorCode::kNonFinite, "SmoothQuant: '" + t.name + "' holds NaN or Inf");
        }
        map->Release(t.src_offset, t.src_bytes);
      }
      QUENCH_ASSIGN_OR_RETURN(std::vector<double> mn, stats.ReadField(m.site, "min"));
      QUENCH_ASSIGN_OR_RETURN(std::vector<double> mx, stats.ReadField(m.site, "max"));
      std::vector<float> fmn(mn.begin(), mn.end()), fmx(mx.begin(), mx.end());
      for (uint64_t j = 0; j < n; ++j) {
        if (!std::isfinite(fmn[j]) || !std::isfinite(fmx[j])) {
          return Error(ErrorCode::kInvalidInput,
                       "statistics: site " + m.site + " never saw channel " + std::to_string(j) +
                           " (min/max not finite); SmoothQuant needs every channel's range");
        }
      }
      auto s = std::make_shared<const std::vector<float>>(
          SmoothQuantScales(b0.dtype, alpha, fmn, fmx, absmax));
      scales_.push_back(s);
      // Balance layers' columns are multiplied; the smooth layer's weight (a norm's elements,
      // a linear's rows) and bias divided.
      for (size_t k = 0; k < m.tensors.size(); ++k) {
        const size_t t = m.tensors[k];
        SmoothOp::Kind kind = SmoothOp::kMulCols;
        if (k >= m.balance.size()) {
          kind = plan_.tensors[t].shape.size() == 2 ? SmoothOp::kDivRows : SmoothOp::kDivElems;
        }
        ops_[t].push_back({kind, s});
      }
    }
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
    rows.assign(in.data, in.data + bytes);
    ApplySmoothOps(ops_[t], in.dtype, in.cols, row0 * in.cols, in.rows * in.cols, rows.data());
    return rows.data();
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

  void Finish(Plan& plan) override {
    for (size_t i = 0; i < plan.smoothing.size() && i < scales_.size(); ++i) {
      const auto [lo, hi] = std::minmax_element(scales_[i]->begin(), scales_[i]->end());
      plan.smoothing[i].min_scale = *lo;
      plan.smoothing[i].max_scale = *hi;
    }
  }

 private:
  const Plan& plan_;
  std::vector<std::vector<SmoothOp>> ops_;  // per plan tensor, in mapping order
  std::vector<std::shared_ptr<const std::vector<float>>> scales_;  // per mapping
};

}  // namespace

Result<std::unique_ptr<SmoothRun>> MakeSmoothRun(const Plan& plan, const ConvertOptions& options) {
  if (plan.smoothing.empty()) return std::unique_ptr<SmoothRun>();
  QUENCH_ASSIGN_OR_RETURN(Statistics stats, Statistics::Open(options.stats));
  auto run = std::make_unique<SmoothRunImpl>(plan);
  QUENCH_RETURN_IF_ERROR(run->Compute(stats, options.smoothing_strength));
  return std::unique_ptr<SmoothRun>(std::move(run));
}

}  // namespace quench::calib
