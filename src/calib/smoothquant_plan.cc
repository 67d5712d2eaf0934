// SmoothQuant and AWQ planned (PlanSmoothQuant, declared in smoothquant_run.h): the options
// checked, the mappings chosen for config.json's architecture (or the recipe's own) and
// resolved against the checkpoint's modules, each mapping checked against the plan and the
// statistics (refused with the reason where its layers or site do not fit), the rewritten
// tensors marked and the run's fingerprint set. Reads headers and statistics metadata only;
// the pre-pass that computes the scales is in smoothquant_run.cc.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "calib/awq.h"
#include "calib/mappings.h"
#include "calib/smoothquant_run.h"
#include "calib/stats.h"
#include "calib/user_mappings.h"
#include "format/file_io.h"
#include "format/json.h"
#include "plan/expert_prune.h"
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

// The balance layers of `m`: each quantized (AWQ: or a copied router), 2-D, of one scheme,
// input width and dtype, and none pruned tensor-wide, NVFP4 or source-quantized; appended
// to out->tensors, their width and dtype in *n_out and *dtype_out. `what` names the mapping
// in a refusal.
Status CheckBalanceLayers(const Plan& plan, const std::map<std::string, size_t>& index,
                          const ResolvedMapping& m, bool awq, const std::string& what,
                          PlannedSmoothing* out, uint64_t* n_out, DType* dtype_out) {
  auto refuse = [&](const std::string& why) { return Error(ErrorCode::kUnsupported, what + why); };
  uint64_t n = 0;
  DType dtype = DType::kBF16;
  const PlannedTensor* first = nullptr;
  for (const std::string& b : m.balance) {
    const auto it = index.find(b + ".weight");
    if (it == index.end()) return refuse("balance layer " + b + " has no weight");
    const PlannedTensor& t = plan.tensors[it->second];
    if (t.shape.size() != 2) return refuse(b + ".weight is not 2-D");
    // AWQ's registry balances routers (mlp.gate), which stay unquantized: scaled and copied,
    // outside the loss, as the reference does. Otherwise an unquantized member is refused.
    const bool copied = t.action == TensorAction::kCopy && awq;
    if (t.action != TensorAction::kQuantize && !copied) {
      return refuse("balance layer " + b + " is left unquantized (" + t.why +
                    "); smoothing would change an unquantized weight: ignore all of the "
                    "mapping's balance layers or none");
    }
    if (awq && !copied && t.scheme->weights.type != "int") {
      return refuse(b + " is to be " + std::string(t.scheme->name) +
                    "; AWQ's search quantizes with the integer schemes so far");
    }
    if (copied) {
      out->tensors.push_back(it->second);  // width and dtype checked below
      continue;
    }
    // Row-wise pruning sees the smoothed rows (src/calib/composite.h); a tensor-wide
    // magnitude threshold is found by a pre-pass over the unsmoothed source.
    if (t.prune && plan.prune.per_tensor) {
      return refuse(b + " is pruned with a tensor-wide threshold (--prune-granularity tensor), "
                    "found before smoothing; use row granularity");
    }
    // The global-scale pre-pass (NVFP4) reads the source's weights, not the smoothed ones.
    if (t.action == TensorAction::kQuantize && t.scheme->needs_global_scale) {
      return refuse(b + " is to be " + std::string(t.scheme->name) +
                    ", whose global scale is computed before smoothing (not built yet)");
    }
    if (t.source_scale) {
      return refuse(b + (t.source_scale->packed_kind == PackedKind::kLinear
                             ? " is read transposed out of a Llama 4 expert stack (not built yet)"
                             : " is stored quantized in the source (not built yet)"));
    }
    if (first == nullptr) {
      first = &t;
      n = t.shape[1];
      dtype = t.dtype;
    } else if (t.scheme != first->scheme || t.params.bits != first->params.bits ||
               t.params.group_size != first->params.group_size ||
               t.params.symmetric != first->params.symmetric) {
      return refuse("its balance layers are split across schemes (" + m.balance.front() + ": " +
                    std::string(first->scheme->name) + ", " + b + ": " +
                    std::string(t.scheme->name) + ")");
    }
    if (t.shape[1] != n) return refuse("balance layers have different input widths");
    if (t.dtype != dtype) return refuse("balance layers have different dtypes");
    out->tensors.push_back(it->second);
  }
  if (first == nullptr) return refuse("none of its balance layers is quantized");
  for (size_t k : out->tensors) {
    if (plan.tensors[k].shape[1] != n || plan.tensors[k].dtype != dtype) {
      return refuse("balance layer " + plan.tensors[k].name + " differs in width or dtype");
    }
  }
  *n_out = n;
  *dtype_out = dtype;
  return Status::Ok();
}

// The smooth layer of `m` (its weight at `sw`): a norm's [n] or a linear's [n, k] (AWQ: at
// least n rows) in the balance layers' dtype, neither source-quantized nor pruned only; its
// weight and copied bias appended to out->tensors.
Status CheckSmoothLayer(const Plan& plan, const std::map<std::string, size_t>& index,
                        const ResolvedMapping& m, bool awq,
                        std::map<std::string, size_t>::const_iterator sw, uint64_t n,
                        DType dtype, const std::string& what, PlannedSmoothing* out) {
  auto refuse = [&](const std::string& why) { return Error(ErrorCode::kUnsupported, what + why); };
  const PlannedTensor& s = plan.tensors[sw->second];
  const bool norm = s.shape.size() == 1;
  // AWQ divides the last n rows of a wider linear (a fused qkv before o_proj).
  if ((norm && s.shape[0] != n) ||
      (!norm && (s.shape.size() != 2 || s.shape[0] < n || (!awq && s.shape[0] != n)))) {
    return refuse("the smooth layer's output width does not equal the balance layers' input (" +
                  std::to_string(n) + ")");
  }
  if (s.dtype != dtype) return refuse("the smooth layer's dtype differs from the balance layers'");
  // A quantized smooth layer is divided before it is pruned (per-row rankings are unchanged
  // by a row's scale); a pruned-only one would be written without the division.
  if (s.source_scale || (s.prune && s.action != TensorAction::kQuantize)) {
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
  return Status::Ok();
}

// The statistics site of the balance layers' shared input: n wide, with the fields the
// algorithm reads (SmoothQuant: min and max, not per expert; AWQ: sum_abs and a Hessian or
// sum_x2); named in out->site, out->expert and out->loss_kind.
Status CheckSite(const Plan& plan, const Statistics& stats, const ResolvedMapping& m,
                 bool awq, uint64_t n, const std::string& what, PlannedSmoothing* out) {
  auto refuse = [&](const std::string& why) { return Error(ErrorCode::kUnsupported, what + why); };
  // The statistics of the balance layers' shared input, named as in the source (expert
  // pruning renumbers the survivors).
  const std::string first_weight = m.balance.front() + ".weight";
  const auto c = stats.consumers().find(
      plan.expert_prune ? SourceExpertName(*plan.expert_prune, first_weight) : first_weight);
  if (c == stats.consumers().end()) {
    return refuse("the statistics have no site for " + m.balance.front() +
                  ".weight (the collector did not reach it)");
  }
  const StatsSite& site = stats.sites().at(c->second.site);
  if (site.in_features != n) {
    return refuse("site " + site.name + " is not " + std::to_string(n) + " wide");
  }
  if (!awq && site.experts) return refuse("site " + site.name + " is per-expert");
  if (!awq && (!HasField(site, "min") || !HasField(site, "max"))) {
    return refuse("site " + site.name + " has no min and max");
  }
  if (awq && !HasField(site, "sum_abs")) return refuse("site " + site.name + " has no sum_abs");
  if (awq) {
    out->loss_kind = HasField(site, "hessian") ? "full Hessian" : "diagonal sum_x2";
    if (!HasField(site, "hessian") && !HasField(site, "sum_x2")) {
      return refuse("site " + site.name + " has neither a Hessian nor sum_x2");
    }
  }
  out->site = site.name;
  out->expert = c->second.expert;
  return Status::Ok();
}

// Checks one resolved mapping against the plan and the statistics; fills `out` or says why
// the mapping is refused.
Status CheckMapping(const Plan& plan, const std::map<std::string, size_t>& index,
                    const Statistics& stats, const ResolvedMapping& m, bool awq,
                    PlannedSmoothing* out) {
  const std::string what = std::string(awq ? "AWQ" : "SmoothQuant") + " mapping [" +
                           Join(m.balance) + "] <- " + m.smooth + ": ";
  auto refuse = [&](const std::string& why) { return Error(ErrorCode::kUnsupported, what + why); };
  out->smooth = m.smooth;
  out->balance = m.balance;
  const auto sw = index.find(m.smooth + ".weight");
  if (sw == index.end()) return refuse("the smooth layer has no weight in the checkpoint");
  uint64_t n = 0;
  DType dtype = DType::kBF16;
  QUENCH_RETURN_IF_ERROR(CheckBalanceLayers(plan, index, m, awq, what, out, &n, &dtype));
  // The smooth layer: a norm's weight [n] (and bias), or a linear's weight [n, k] (and bias).
  QUENCH_RETURN_IF_ERROR(CheckSmoothLayer(plan, index, m, awq, sw, n, dtype, what, out));
  return CheckSite(plan, stats, m, awq, n, what, out);
}

// AWQ's _check_layers_are_compatible: a v_proj whose outputs are not o_proj's inputs (GQA),
// or a fused qkv_proj whose outputs are not three times them, is skipped.
bool Incompatible(const Plan& plan, const std::map<std::string, size_t>& index,
                  const ResolvedMapping& m) {
  const auto sw = index.find(m.smooth + ".weight");
  if (sw == index.end() || plan.tensors[sw->second].shape.size() != 2) return false;
  const uint64_t out = plan.tensors[sw->second].shape[0];
  auto ends = [](const std::string& a, const std::string& b) {
    return a.size() >= b.size() && a.compare(a.size() - b.size(), b.size(), b) == 0;
  };
  for (const std::string& b : m.balance) {
    const auto bw = index.find(b + ".weight");
    if (bw == index.end() || !ends(b, ".o_proj") || plan.tensors[bw->second].shape.size() != 2) {
      continue;
    }
    const uint64_t in = plan.tensors[bw->second].shape[1];
    if ((ends(m.smooth, ".v_proj") && out != in) ||
        (ends(m.smooth, ".qkv_proj") && out != 3 * in)) {
      return true;
    }
  }
  return false;
}

// Each resolved mapping checked (CheckMapping) and planned into plan.smoothing, its tensors
// marked smoothed; a refused one is a plan error, an AWQ mapping of incompatible shapes
// skipped and counted in *incompatible. Returns how many tensors are rewritten.
size_t PlanMappings(Plan& plan, const std::map<std::string, size_t>& index,
                    const Statistics& stats, const std::vector<ResolvedMapping>& resolved,
                    bool awq, size_t* incompatible) {
  size_t rewritten = 0;
  for (const ResolvedMapping& m : resolved) {
    if (awq && Incompatible(plan, index, m)) {
      ++*incompatible;
      continue;
    }
    PlannedSmoothing ps;
    if (Status st = CheckMapping(plan, index, stats, m, awq, &ps); !st.ok()) {
      plan.errors.push_back(st);
      continue;
    }
    // A tensor may belong to two mappings (AWQ: v_proj is balanced by the norm's mapping,
    // then smooths o_proj's); its transforms apply in mapping order, as the reference's.
    for (size_t t : ps.tensors) {
      rewritten += !plan.tensors[t].smoothed;
      plan.tensors[t].smoothed = true;
    }
    plan.smoothing.push_back(std::move(ps));
  }
  return rewritten;
}

// The run's settings as the note and the resume fingerprint name them (alpha, or AWQ's duo
// scaling and grid; the recipe's own mappings and ignore).
std::string SmoothSettings(const ConvertOptions& options) {
  const bool awq = options.algorithm == "awq";
  char alpha[32];
  std::snprintf(alpha, sizeof alpha, "%.17g", options.smoothing_strength);
  std::string settings =
      awq ? "duo_scaling " + options.awq_duo_scaling + ", n_grid " +
                std::to_string(options.awq_n_grid) + ", search " + options.awq_search
          : "alpha " + std::string(alpha);
  // The recipe's mappings and ignore change which tensors are rewritten: part of the
  // settings, so of the resume fingerprint.
  const std::string own =
      DescribeUserMappings(options.smoothing_mappings, options.smoothing_ignore);
  if (!own.empty()) settings += ", " + own;
  return settings;
}

// config.json's first architecture (what picks the mappings), or empty.
std::string Architecture(const JsonValue& config) {
  const JsonValue* archs = config.Find("architectures");
  return archs != nullptr && archs->is_array() && !archs->as_array().empty() &&
                 archs->as_array()[0].is_string()
             ? archs->as_array()[0].as_string()
             : std::string();
}

}  // namespace

Status PlanSmoothQuant(Plan& plan, const ConvertOptions& options) {
  const bool awq = options.algorithm == "awq";
  const std::string algo = awq ? "AWQ" : "SmoothQuant";
  const double a = options.smoothing_strength;
  if (!std::isfinite(a) || a < 0 || a > 1) {
    return Error(ErrorCode::kUsage, "--smoothing-strength must be in [0, 1]");
  }
  if (awq) {
    QUENCH_RETURN_IF_ERROR(ParseDuoScaling(options.awq_duo_scaling).status());
    QUENCH_RETURN_IF_ERROR(ParseAwqSearch(options.awq_search).status());
    if (options.awq_n_grid < 2) return Error(ErrorCode::kUsage, "--awq-n-grid must be >= 2");
  }
  // With expert pruning the mappings resolve on the pruned model's modules (the survivors,
  // renumbered: pruned experts have no mapping, fused sets are the survivors'); statistics
  // are looked up under the source's names (CheckMapping).
  if (options.stats.empty()) {
    return Error(ErrorCode::kUsage,
                 "--algorithm " + options.algorithm + " needs --stats STATS (collect them with "
                 "scripts/collect-stats MODEL_DIR --text FILE -o STATS)");
  }
  QUENCH_ASSIGN_OR_RETURN(Statistics stats, Statistics::Open(options.stats));
  QUENCH_ASSIGN_OR_RETURN(JsonValue config, ReadJsonFile((plan.src / "config.json").string()));
  const std::string arch = Architecture(config);
  bool fallback = false;
  const bool user = !options.smoothing_mappings.empty();
  const std::vector<MappingSpec> specs =
      user ? std::vector<MappingSpec>()
           : MappingsFor(awq ? MappingFamily::kAwq : MappingFamily::kSmoothQuant, arch, &fallback);
  std::map<std::string, size_t> index;
  std::vector<std::string> modules;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const std::string& name = plan.tensors[i].name;
    index[name] = i;
    const auto [module, param] = SplitModuleParam(name);
    if (param == "weight") modules.emplace_back(module);
  }
  auto resolved = user ? ResolveUserMappings(options.smoothing_mappings, modules)
                       : ResolveMappings(specs, modules);
  if (!resolved.ok()) {
    plan.errors.push_back(resolved.status());
    return Status::Ok();
  }
  QUENCH_ASSIGN_OR_RETURN(const size_t ignored,
                          DropIgnoredMappings(options.smoothing_ignore, *resolved));
  if (resolved->empty() && ignored > 0) {
    plan.errors.push_back(Error(ErrorCode::kUnsupported,
                                "SmoothQuantModifier.ignore leaves no mapping to smooth"));
    return Status::Ok();
  }
  if (resolved->empty()) {
    plan.errors.push_back(Error(ErrorCode::kUnsupported,
                                "--algorithm " + options.algorithm + ": no mapping of " +
                                    (arch.empty() ? std::string("this model") : arch) +
                                    " matches the checkpoint's modules"));
    return Status::Ok();
  }
  size_t incompatible = 0;
  const size_t rewritten = PlanMappings(plan, index, stats, *resolved, awq, &incompatible);
  const std::string settings = SmoothSettings(options);
  plan.notes.push_back(algo + " (" + settings + ") from " +
                       options.stats.string() + ": " + std::to_string(plan.smoothing.size()) +
                       " mappings of " + (arch.empty() ? "an unnamed architecture" : arch) +
                       (user ? " (the recipe's)" : "") +
                       (fallback ? " (not in llm-compressor's registry: its default mappings)"
                                 : "") +
                       ", rewriting " + std::to_string(rewritten) + " tensors");
  if (ignored > 0) {
    plan.notes.push_back("SmoothQuant: " + std::to_string(ignored) + " mapping set(s) skipped, "
                         "every member in SmoothQuantModifier.ignore");
  }
  if (incompatible > 0) {
    plan.notes.push_back("AWQ: " + std::to_string(incompatible) +
                         " v_proj/qkv_proj -> o_proj mapping(s) skipped, their shapes "
                         "incompatible (grouped-query attention), as the reference skips them");
  }
  QUENCH_ASSIGN_OR_RETURN(std::string manifest,
                          ReadFileToString(options.stats / "manifest.json"));
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx",
                static_cast<unsigned long long>(Fnv1a64(manifest)));
  plan.calib_fingerprint = options.algorithm + " " + settings + " stats " + hash;
  return Status::Ok();
}

}  // namespace quench::calib
