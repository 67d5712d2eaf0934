#include "plan/groups.h"

#include "plan/observer_kwargs.h"
#include "plan/planner.h"
#include "plan/recipe.h"
#include "schemes/prune.h"

namespace quench {
namespace {

// Applies --group-size / --symmetric overrides where compressed-tensors accepts them and vLLM
// runs the result: integer schemes only (FP4, MX and FP8 formats fix their grouping).
Result<SchemeParams> ResolveParams(const SchemeInfo& scheme, const PlanOptions& o) {
  SchemeParams p = scheme.DefaultParams();
  const bool is_int = scheme.weights.type == "int";
  if (o.group_size) {
    if (!is_int) {
      return Error(ErrorCode::kUsage, "--group-size applies to the integer schemes only; " +
                                          std::string(scheme.name) +
                                          " has a group size fixed by its format");
    }
    const int g = *o.group_size;
    if (g != -1 && (g < 8 || g % 8 != 0)) {
      return Error(ErrorCode::kUsage, "--group-size must be -1 (one scale per output channel) "
                                      "or a positive multiple of 8, not " +
                                          std::to_string(g));
    }
    p.group_size = g;
  }
  if (o.symmetric) {
    if (!is_int) {
      return Error(ErrorCode::kUsage, "--symmetric/--asymmetric apply to the integer schemes "
                                      "only; " + std::string(scheme.name) +
                                          " is symmetric by definition");
    }
    p.symmetric = *o.symmetric;
  }
  if (o.static_activations || o.asymmetric_activations) {
    if (!p.static_input && !CanMakeActivationsStatic(scheme)) {
      return Error(ErrorCode::kUsage,
                   "--static-activations applies to schemes with 8-bit dynamic per-token "
                   "activations (W8A8, INT8, W4A8, FP8_DYNAMIC) and is implied by FP8 and "
                   "NVFP4; " + std::string(scheme.name) + " has " +
                       std::string(scheme.activations_desc));
    }
    if (o.asymmetric_activations && scheme.input_activations->type != "int") {
      return Error(ErrorCode::kUsage, "--asymmetric-activations applies to int8 activations; " +
                                          std::string(scheme.name) + "'s are floating point");
    }
    p.static_input = true;
    p.input_symmetric = !o.asymmetric_activations;
  }
  return p;
}

}  // namespace

bool IsDecodeOnly(const PlanOptions& options) {
  return options.scheme == "BF16" || options.scheme == "bf16";
}

namespace {

// A recipe's groups, ignore list, KV-cache scheme and notes; refused with flags that would
// contradict it, or when it needs an algorithm the run was not given.
Status RecipeGroups(const PlanOptions& options, ResolvedGroups* r) {
  if (!options.scheme.empty() || !options.targets.empty() || options.group_size ||
      options.symmetric || options.static_activations || options.asymmetric_activations) {
    return Error(ErrorCode::kUsage,
                 "--recipe gives the schemes and targets; do not combine "
                 "it with --scheme, --targets, --group-size, "
                 "--symmetric/--asymmetric or --static-activations "
                 "(a recipe's input_activations say dynamic: false)");
  }
  if (!options.observer_args.empty()) {
    return Error(ErrorCode::kUsage,
                 "--observer-arg sets the flag-made group's observer; a "
                 "recipe gives each group's weights.observer_kwargs");
  }
  QUENCH_ASSIGN_OR_RETURN(Recipe recipe, LoadRecipe(options.recipe));
  // options.algorithm is the recipe's list, or one stage of it (a composed run plans with
  // its quantizing stage's options: src/calib/composite.h).
  const std::string listed = "," + recipe.calibration.algorithm + ",";
  if (!recipe.calibration.algorithm.empty() && options.algorithm != recipe.calibration.algorithm &&
      (options.algorithm.find(',') != std::string::npos ||
       listed.find("," + options.algorithm + ",") == std::string::npos)) {
    // Convert and DryRun apply it (ApplyRecipeCalibration); a caller that did not is told.
    return Error(ErrorCode::kUsage, options.recipe.string() + ": its " +
                                        recipe.calibration.modifier + " needs --algorithm " +
                                        recipe.calibration.algorithm);
  }
  for (RecipeGroup& g : recipe.groups) {
    r->groups.push_back(
        {g.key, g.scheme, g.params, std::move(g.targets), 0, g.observer, g.observer_kwargs});
  }
  r->ignore = std::move(recipe.ignore);
  r->kv_cache = recipe.kv_cache;
  r->notes = std::move(recipe.calibration.notes);
  return Status::Ok();
}

// The one group the flags make: --scheme's (with --targets, the parameter and observer
// flags), or a scheme of none (pruning alone) or BF16 (a quantized source decoded).
Result<PlannedGroup> FlagGroup(const PlanOptions& options) {
  if (options.scheme == "none" || options.scheme == "NONE" || IsDecodeOnly(options)) {
    // Pruning alone, or (BF16) a quantized source decoded: the targets select what is
    // pruned; nothing is quantized.
    if (options.prune.empty() && !options.prune_experts && !IsDecodeOnly(options)) {
      return Error(ErrorCode::kUsage,
                   "--scheme none does nothing without --prune or --prune-experts");
    }
    std::vector<std::string> targets = options.targets;
    if (targets.empty()) targets.push_back("Linear");
    return PlannedGroup{"none", nullptr, SchemeParams{}, targets, 0};
  }
  const SchemeInfo* scheme = FindScheme(options.scheme);
  if (scheme == nullptr) {
    std::string names;
    for (const SchemeInfo& s : SchemeTable()) {
      names += (names.empty() ? "" : ", ") + std::string(s.name);
    }
    return Error(ErrorCode::kUsage,
                 "unknown scheme '" + options.scheme + "' (available: " + names + ")");
  }
  QUENCH_ASSIGN_OR_RETURN(const SchemeParams params, ResolveParams(*scheme, options));
  std::vector<std::string> targets = options.targets;
  if (targets.empty()) targets.push_back("Linear");
  // --observer-arg: the observer's settings, checked as llm-compressor checks them.
  QUENCH_ASSIGN_OR_RETURN(JsonValue kwargs, ObserverKwargsFromArgs(options.observer_args));
  QUENCH_RETURN_IF_ERROR(
      ParseObserverKwargs(options.observer, kwargs, "--observer-arg: ").status());
  return PlannedGroup{options.scheme,
                      scheme,
                      params,
                      targets,
                      0,
                      options.observer == "minmax" ? "" : options.observer,
                      ObserverKwargsText(kwargs)};
}

// What the groups and KV-cache scheme need from the run: activation statistics for static
// activation scales and k/v scales (with the command that collects them), a scheme for a
// KV-cache scheme.
Status CheckCalibrationNeeds(const PlanOptions& options, const ResolvedGroups& r) {
  // Static activation scales come from activation statistics; without them, say which and
  // how to collect them.
  for (const PlannedGroup& g : r.groups) {
    if (g.scheme == nullptr || !g.params.static_input || !options.stats.empty()) continue;
    const std::string what =
        !g.scheme->needs_calibration.empty()
            ? "scheme " + std::string(g.scheme->name) + " " +
                  std::string(g.scheme->needs_calibration)
            : "static input_activations need activation statistics (each layer's input "
              "min/max over calibration data)";
    return Error(ErrorCode::kUsage,
                 (options.recipe.empty() ? std::string() : options.recipe.string() + ": ") +
                     "config group '" + g.key +
                     "' cannot be applied without calibration data: " + what +
                     "; give --stats STATS with per-site min/max, collected by "
                     "scripts/collect-stats MODEL_DIR --text FILE -o STATS");
  }
  if (!r.kv_cache.empty()) {
    if (r.groups.size() == 1 && r.groups[0].scheme == nullptr) {
      return Error(ErrorCode::kUsage,
                   "--kv-cache goes with a quantization scheme (--scheme or a "
                   "recipe); quench writes its scales into a compressed-"
                   "tensors checkpoint");
    }
    if (options.stats.empty()) {
      return Error(ErrorCode::kUsage,
                   (options.recipe.empty() ? std::string() : options.recipe.string() + ": ") +
                       "kv_cache_scheme needs k/v scales computed from activation statistics (each "
                       "attention layer's key and value ranges); give --stats STATS collected by "
                       "scripts/collect-stats MODEL_DIR --text FILE --kv-cache -o STATS");
    }
  }
  return Status::Ok();
}

}  // namespace

// The config groups of this run: a recipe's, or one from --scheme/--targets and overrides.
Result<ResolvedGroups> ResolveGroups(const PlanOptions& options) {
  if (!options.kv_cache.empty() && options.kv_cache != "fp8") {
    return Error(ErrorCode::kUsage,
                 "--kv-cache takes fp8 (per-tensor FP8 k_scale / v_scale), "
                 "not '" +
                     options.kv_cache + "'");
  }
  ResolvedGroups r;
  if (!options.recipe.empty()) {
    QUENCH_RETURN_IF_ERROR(RecipeGroups(options, &r));
  } else {
    QUENCH_ASSIGN_OR_RETURN(PlannedGroup g, FlagGroup(options));
    r.groups.push_back(std::move(g));
  }
  if (!options.kv_cache.empty()) r.kv_cache = options.kv_cache;
  QUENCH_RETURN_IF_ERROR(CheckCalibrationNeeds(options, r));
  // --ignore entries come after the recipe's, and are written verbatim too.
  r.ignore.insert(r.ignore.end(), options.ignore.begin(), options.ignore.end());
  return r;
}

prune::PruneSpec ToPruneSpec(const PlannedPrune& p) {
  prune::PruneSpec s;
  s.kind = p.kind == PlannedPrune::kNM             ? prune::PruneSpec::kNM
           : p.kind == PlannedPrune::kUnstructured ? prune::PruneSpec::kUnstructured
                                                   : prune::PruneSpec::kNone;
  s.fraction = p.fraction;
  s.n = p.n;
  s.m = p.m;
  s.per_tensor = p.per_tensor;
  return s;
}

Result<PlannedPrune> ResolvePrune(const PlanOptions& options) {
  PlannedPrune out;
  if (options.prune.empty()) {
    if (options.prune_granularity != "row") {
      return Error(ErrorCode::kUsage, "--prune-granularity needs --prune");
    }
    return out;
  }
  QUENCH_ASSIGN_OR_RETURN(prune::PruneSpec spec, prune::ParsePruneSpec(options.prune));
  QUENCH_RETURN_IF_ERROR(prune::ApplyGranularity(options.prune_granularity, &spec));
  out.kind = spec.kind == prune::PruneSpec::kNM            ? PlannedPrune::kNM
             : spec.kind == prune::PruneSpec::kUnstructured ? PlannedPrune::kUnstructured
                                                            : PlannedPrune::kNone;
  out.fraction = spec.fraction;
  out.n = spec.n;
  out.m = spec.m;
  out.per_tensor = spec.per_tensor;
  out.text = options.prune;
  out.structure = prune::SparsityStructure(spec);
  return out;
}

}  // namespace quench
