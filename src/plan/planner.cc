#include "plan/planner.h"

#include <algorithm>
#include <map>
#include <numeric>

#include "format/quant_config.h"
#include "plan/fused_sets.h"
#include "plan/matcher.h"
#include "plan/recipe.h"
#include "schemes/prune.h"

namespace quench {
namespace {

// Data, not a chain of name checks: extend this table to cover a new architecture's names.
constexpr DefaultIgnore kDefaultIgnores[] = {
    {"lm_head", "output head"},
    {"re:.*embed_tokens$", "token embedding"},
    {"re:.*(word|position|token_type)_embeddings$", "embedding"},
    {"re:(.*\\.)?(wte|wpe|tok_embeddings)$", "embedding"},
    {"re:.*mlp\\.gate$", "MoE router gate"},
    {"re:.*block_sparse_moe\\.gate$", "MoE router gate"},
    {"re:.*shared_expert_gate$", "shared-expert gate"},
};

// Which config group a module belongs to, resolved the way vLLM resolves it
// (compressed_tensors/utils.py::find_matched_target): vLLM reads config_groups in the order
// config.json lists them, which is sorted by key because the writer sorts keys, and keeps
// one entry per target string (a later group redefining a target takes it over). A module
// takes the first target that equals its name or whose regex matches it; failing that, the
// first class-name target ("Linear", matched case-insensitively by containment in the layer
// class name, which for every linear layer contains "Linear").
class TargetResolver {
 public:
  static Result<TargetResolver> Build(const std::vector<PlannedGroup>& groups) {
    TargetResolver r;
    std::vector<size_t> order(groups.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return groups[a].key < groups[b].key; });
    for (size_t gi : order) {
      for (const std::string& t : groups[gi].targets) {
        auto it = std::find(r.entries_.begin(), r.entries_.end(), t);
        if (it == r.entries_.end()) {
          r.entries_.push_back(t);
          r.group_.push_back(static_cast<int>(gi));
        } else {
          r.group_[static_cast<size_t>(it - r.entries_.begin())] = static_cast<int>(gi);
        }
      }
    }
    for (const std::string& t : r.entries_) {
      std::string lower = t;
      for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      r.is_class_.push_back(!t.starts_with("re:") && lower == "linear");
    }
    QUENCH_ASSIGN_OR_RETURN(r.names_, NameMatcher::Compile(r.entries_, "targets"));
    r.hits_.assign(r.entries_.size(), 0);
    return r;
  }

  // Group index for `module`, or -1; counts which entry selected it.
  int Resolve(std::string_view module) {
    for (size_t i = 0; i < entries_.size(); ++i) {
      if (!is_class_[i] && names_.EntryMatches(i, module)) {
        ++hits_[i];
        return group_[i];
      }
    }
    for (size_t i = 0; i < entries_.size(); ++i) {
      if (is_class_[i]) {
        ++hits_[i];
        return group_[i];
      }
    }
    return -1;
  }
  const std::vector<std::string>& entries() const { return entries_; }
  const std::vector<size_t>& hits() const { return hits_; }

 private:
  std::vector<std::string> entries_;
  std::vector<int> group_;
  std::vector<bool> is_class_;
  std::vector<size_t> hits_;
  NameMatcher names_;
};

// compressed-tensors utils/match.py::match_quantizable_tensors as model_free applies it:
// module names ending in "norm" are never quantized; only the "weight" parameter is; then the
// targets, then the ignore list (and quench's default ignores).
enum class Selection { kQuantize, kNotWeight, kNorm, kNotTargeted, kIgnored, kDefaultIgnored };

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
  return p;
}

// Groups quantized tensors needing a global scale into fused sets (singletons otherwise).
void PlanFusedSets(Plan& plan) {
  std::map<std::string, size_t> set_of;  // "parent|set index" -> fused set
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    PlannedTensor& t = plan.tensors[i];
    if (t.action != TensorAction::kQuantize || !t.scheme->needs_global_scale) continue;
    std::string key = FusedSetKey(SplitModuleParam(t.name).first);
    if (key.empty()) key = "#" + std::to_string(i);  // not fusable: a set of its own
    auto [it, inserted] = set_of.emplace(key, plan.fused_sets.size());
    if (inserted) plan.fused_sets.emplace_back();
    plan.fused_sets[it->second].push_back(i);
    t.fused_set = static_cast<int>(it->second);
  }
}

// The config groups of this run: a recipe's, or one from --scheme/--targets and overrides.
Result<std::pair<std::vector<PlannedGroup>, std::vector<std::string>>> ResolveGroups(
    const PlanOptions& options) {
  std::vector<PlannedGroup> groups;
  std::vector<std::string> ignore;
  if (!options.recipe.empty()) {
    if (!options.scheme.empty() || !options.targets.empty() || options.group_size ||
        options.symmetric) {
      return Error(ErrorCode::kUsage, "--recipe gives the schemes and targets; do not combine "
                                      "it with --scheme, --targets, --group-size or "
                                      "--symmetric/--asymmetric");
    }
    QUENCH_ASSIGN_OR_RETURN(Recipe recipe, LoadRecipe(options.recipe));
    for (RecipeGroup& g : recipe.groups) {
      groups.push_back({g.key, g.scheme, g.params, std::move(g.targets), 0});
    }
    ignore = std::move(recipe.ignore);
  } else if (options.scheme == "none" || options.scheme == "NONE") {
    // Pruning alone: the targets select what is pruned; nothing is quantized.
    if (options.prune.empty()) {
      return Error(ErrorCode::kUsage, "--scheme none does nothing without --prune");
    }
    std::vector<std::string> targets = options.targets;
    if (targets.empty()) targets.push_back("Linear");
    groups.push_back({"none", nullptr, SchemeParams{}, targets, 0});
  } else {
    const SchemeInfo* scheme = FindScheme(options.scheme);
    if (scheme == nullptr) {
      std::string names;
      for (const SchemeInfo& s : SchemeTable()) {
        names += (names.empty() ? "" : ", ") + std::string(s.name);
      }
      return Error(ErrorCode::kUsage,
                   "unknown scheme '" + options.scheme + "' (available: " + names + ")");
    }
    if (!scheme->needs_calibration.empty()) {
      return Error(ErrorCode::kUsage, "scheme " + std::string(scheme->name) +
                                          " cannot be applied without calibration data: it " +
                                          std::string(scheme->needs_calibration));
    }
    QUENCH_ASSIGN_OR_RETURN(const SchemeParams params, ResolveParams(*scheme, options));
    std::vector<std::string> targets = options.targets;
    if (targets.empty()) targets.push_back("Linear");
    groups.push_back({options.scheme, scheme, params, targets, 0});
  }
  // --ignore entries come after the recipe's, and are written verbatim too.
  ignore.insert(ignore.end(), options.ignore.begin(), options.ignore.end());
  return std::make_pair(std::move(groups), std::move(ignore));
}

// vLLM runs each fused set (q/k/v, gate/up, ...) as one matrix, so its members must all get
// the same scheme or all stay unquantized; anything else cannot be loaded.
void CheckFusedConsistency(Plan& plan) {
  std::map<std::string, std::vector<size_t>> sets;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& t = plan.tensors[i];
    auto [module, param] = SplitModuleParam(t.name);
    if (param != "weight" || t.shape.size() != 2) continue;
    if (std::string key = FusedSetKey(module); !key.empty()) sets[key].push_back(i);
  }
  for (const auto& [key, members] : sets) {
    const PlannedTensor& first = plan.tensors[members.front()];
    for (size_t i : members) {
      const PlannedTensor& t = plan.tensors[i];
      if (t.group == first.group) continue;
      auto describe = [&](const PlannedTensor& x) {
        return x.group >= 0 ? "group '" + plan.groups[static_cast<size_t>(x.group)].key + "'"
                            : "unquantized (" + x.why + ")";
      };
      plan.errors.push_back(Error(
          ErrorCode::kUsage,
          "fused set of '" + first.name + "': '" + first.name + "' is " + describe(first) +
              " but '" + t.name + "' is " + describe(t) +
              "; vLLM runs these as one matrix, so give them the same scheme (or ignore all)"));
      break;
    }
  }
}

}  // namespace

std::span<const DefaultIgnore> DefaultIgnores() { return kDefaultIgnores; }

prune::PruneSpec ToPruneSpec(const PlannedPrune& p) {
  prune::PruneSpec s;
  s.kind = p.kind == PlannedPrune::kNM            ? prune::PruneSpec::kNM
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

Result<Plan> BuildPlan(const ModelFolder& folder, const PlanOptions& options) {
  Plan plan;
  QUENCH_ASSIGN_OR_RETURN(plan.prune, ResolvePrune(options));
  const bool pruning = plan.prune.kind != PlannedPrune::kNone;
  const prune::PruneSpec prune_spec = ToPruneSpec(plan.prune);
  QUENCH_ASSIGN_OR_RETURN(auto resolved, ResolveGroups(options));
  plan.groups = std::move(resolved.first);
  const std::vector<std::string> ignore = std::move(resolved.second);
  QUENCH_ASSIGN_OR_RETURN(TargetResolver resolver, TargetResolver::Build(plan.groups));
  QUENCH_ASSIGN_OR_RETURN(NameMatcher ignore_m, NameMatcher::Compile(ignore, "ignore"));
  std::vector<std::string> default_patterns;
  if (options.default_ignore) {
    for (const DefaultIgnore& d : kDefaultIgnores) default_patterns.emplace_back(d.pattern);
  }
  QUENCH_ASSIGN_OR_RETURN(NameMatcher defaults, NameMatcher::Compile(default_patterns, "default ignore"));

  plan.src = folder.root;
  plan.dst = options.dst;
  std::vector<std::vector<std::string>> default_hits(default_patterns.size());
  std::vector<size_t> ignore_hits(ignore.size(), 0);
  std::vector<std::pair<std::string, std::string>> weight_map;
  size_t vector_weights = 0;

  for (size_t si = 0; si < folder.shards.size(); ++si) {
    const Shard& shard = folder.shards[si];
    // Visit tensors in file order so that reading is sequential.
    std::vector<const TensorInfo*> order;
    for (const TensorInfo& t : shard.header.tensors) order.push_back(&t);
    std::sort(order.begin(), order.end(),
              [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });

    std::vector<TensorSpec> specs;
    std::vector<std::vector<std::string>> out_names;  // per planned tensor of this shard
    const size_t first_tensor = plan.tensors.size();
    for (const TensorInfo* t : order) {
      PlannedTensor pt;
      pt.name = t->name;
      pt.dtype = t->dtype;
      pt.shape = t->shape;
      pt.shard = si;
      pt.src_offset = shard.header.data_start + t->begin;
      pt.src_bytes = t->nbytes();
      auto [module, param] = SplitModuleParam(t->name);
      Selection s = Selection::kQuantize;
      int group = -1, default_hit = -1;
      if (module.ends_with("norm")) {
        s = Selection::kNorm;
      } else if (param != "weight") {
        s = Selection::kNotWeight;
      } else if ((group = resolver.Resolve(module)) < 0) {
        s = Selection::kNotTargeted;
      } else if (int ig = ignore_m.FirstMatch(module); ig >= 0) {
        ++ignore_hits[static_cast<size_t>(ig)];
        s = Selection::kIgnored;
      } else if ((default_hit = defaults.FirstMatch(module)) >= 0) {
        s = Selection::kDefaultIgnored;
      }
      const SchemeInfo* scheme = group >= 0 ? plan.groups[static_cast<size_t>(group)].scheme : nullptr;
      const SchemeParams params = group >= 0 ? plan.groups[static_cast<size_t>(group)].params : SchemeParams{};
      std::vector<std::string> names;
      const std::string where = shard.rel_name + ": tensor '" + t->name + "'";
      switch (s) {
        case Selection::kQuantize: {
          if (t->shape.size() < 2) {
            // A 1-D ".weight" is a normalisation scale (BERT's LayerNorm, which the "norm"
            // suffix rule misses because of its capital N). model_free_ptq aborts on it;
            // copying it is what the user wants and changes no output the reference writes.
            pt.action = TensorAction::kCopy;
            pt.why = "not a matrix";
            ++vector_weights;
            specs.push_back({t->name, t->dtype, t->shape, t->nbytes()});
            names.push_back(t->name);
            break;
          }
          // Each problem is recorded and the tensor planned as a copy, so that planning goes
          // on and --dry-run can list every error a real run would stop at.
          std::string problem;
          if (t->shape.size() != 2) {
            problem = where + " is targeted for " +
                      (scheme ? std::string(scheme->name) : std::string("pruning")) +
                      " but has shape " + ShapeString(t->shape) +
                      "; only 2-D weights can be quantized (add it to --ignore)";
          } else if (!IsQuantizableFloat(t->dtype)) {
            problem = where + " has dtype " + std::string(DTypeName(t->dtype)) +
                      "; only BF16, F16 and F32 weights can be quantized (add it to "
                      "--ignore, or dequantize the checkpoint first)";
          } else if (scheme != nullptr && scheme->check_shape != nullptr) {
            const std::string why = scheme->check_shape(t->shape[0], t->shape[1], params);
            if (!why.empty()) {
              problem = where + " " + ShapeString(t->shape) + ": " + why + " for " +
                        std::string(scheme->name) + "; add it to --ignore or pick another scheme";
            }
          }
          if (problem.empty() && pruning && t->shape.size() == 2 && IsQuantizableFloat(t->dtype)) {
            Status ps = prune::CheckShape(prune_spec, t->shape[0], t->shape[1]);
            if (!ps.ok()) problem = where + ": " + ps.message();
          }
          if (!problem.empty()) {
            plan.errors.push_back(Error(ErrorCode::kUnsupported, problem));
            pt.action = TensorAction::kCopy;
            pt.why = "error";
            specs.push_back({t->name, t->dtype, t->shape, t->nbytes()});
            names.push_back(t->name);
            break;
          }
          const uint64_t rows = t->shape[0], cols = t->shape[1];
          pt.prune = pruning;
          if (scheme == nullptr) {  // --scheme none: prune in place, keep name/dtype/shape
            pt.action = TensorAction::kPrune;
            pt.group = group;
            ++plan.groups[static_cast<size_t>(group)].tensors;
            specs.push_back({t->name, t->dtype, t->shape, t->nbytes()});
            names.push_back(t->name);
            break;
          }
          pt.action = TensorAction::kQuantize;
          pt.scheme = scheme;
          pt.params = params;
          pt.group = group;
          ++plan.groups[static_cast<size_t>(group)].tensors;
          for (const SchemeOutput& o : scheme->outputs(t->dtype, rows, cols, params)) {
            if (o.source == SchemeOutput::Source::kKernel) ++pt.kernel_outputs;
            std::string name = std::string(module) + "." + o.suffix;
            specs.push_back({name, o.dtype, o.shape, o.nbytes});
            names.push_back(std::move(name));
          }
          break;
        }
        case Selection::kDefaultIgnored:
          default_hits[static_cast<size_t>(default_hit)].emplace_back(module);
          pt.why = "default ignore " + default_patterns[static_cast<size_t>(default_hit)];
          [[fallthrough]];
        default:
          if (pt.why.empty()) {
            pt.why = s == Selection::kNorm        ? "norm"
                     : s == Selection::kNotWeight  ? "not a .weight"
                     : s == Selection::kNotTargeted ? "not targeted"
                                                    : "ignored";
          }
          pt.action = TensorAction::kCopy;
          specs.push_back({t->name, t->dtype, t->shape, t->nbytes()});
          names.push_back(t->name);
          break;
      }
      plan.bytes_in += t->nbytes();
      out_names.push_back(std::move(names));
      plan.tensors.push_back(std::move(pt));
    }

    PlannedShard ps;
    ps.rel_name = shard.rel_name;
    ps.src_path = shard.path;
    ps.src_size = shard.file_size;
    ps.src_header_hash = shard.header.header_hash;
    SafetensorsLayout layout = LayOutSafetensors(std::move(specs));
    std::map<std::string_view, size_t> index_of;
    for (size_t i = 0; i < layout.tensors.size(); ++i) {
      const TensorInfo& ti = layout.tensors[i];
      if (!index_of.emplace(ti.name, i).second) {
        plan.errors.push_back(Error(ErrorCode::kInvalidInput,
                                    shard.rel_name + ": output tensor '" + ti.name +
                                        "' would be written twice (the source already has a "
                                        "tensor of that name); add its module to --ignore"));
      }
    }
    for (const TensorInfo& ti : layout.tensors) {
      PlannedOutput po;
      po.name = ti.name;
      po.dtype = ti.dtype;
      po.shape = ti.shape;
      po.file_offset = layout.data_start + ti.begin;
      po.nbytes = ti.nbytes();
      po.bytes_per_slab = po.nbytes;
      po.rows_per_slab = 0;
      ps.outputs.push_back(std::move(po));
      weight_map.emplace_back(ti.name, shard.rel_name);
    }
    for (size_t k = 0; k < out_names.size(); ++k) {
      PlannedTensor& pt = plan.tensors[first_tensor + k];
      std::vector<SchemeOutput> so;
      if (pt.action == TensorAction::kQuantize) {
        so = pt.scheme->outputs(pt.dtype, pt.shape[0], pt.shape[1], pt.params);
      }
      for (size_t j = 0; j < out_names[k].size(); ++j) {
        const size_t oi = index_of.at(out_names[k][j]);
        if (!so.empty()) {
          PlannedOutput& po = ps.outputs[oi];
          po.rows_per_slab = so[j].rows_per_slab;
          po.bytes_per_slab = so[j].bytes_per_slab;
          po.source = so[j].source;
          if (po.source == SchemeOutput::Source::kShape) {
            // weight_shape: int64 [rows, cols], little-endian (torch.tensor(weight.shape)).
            for (uint64_t d : {pt.shape[0], pt.shape[1]}) {
              for (int b = 0; b < 8; ++b) po.constant.push_back(static_cast<char>(d >> (8 * b)));
            }
          }
        }
        pt.outputs.push_back(oi);
      }
    }
    ps.header = std::move(layout.header);
    ps.file_size = layout.file_size;
    plan.bytes_out += ps.file_size;
    plan.shards.push_back(std::move(ps));
  }

  PlanFusedSets(plan);
  if (vector_weights > 0) {
    plan.notes.push_back("left unquantized: " + std::to_string(vector_weights) +
                         " targeted .weight tensor(s) with fewer than 2 dimensions "
                         "(normalisation scales); they are copied");
  }
  CheckFusedConsistency(plan);
  // Warnings for entries that select nothing: almost always a typo.
  for (size_t i = 0; i < ignore.size(); ++i) {
    if (ignore_hits[i] == 0) {
      plan.notes.push_back("warning: ignore entry '" + ignore[i] +
                           "' matches no targeted weight in this checkpoint");
    }
  }
  for (size_t i = 0; i < resolver.entries().size(); ++i) {
    if (resolver.hits()[i] == 0) {
      plan.notes.push_back("warning: target '" + resolver.entries()[i] +
                           "' selects no weight in this checkpoint (another target may take "
                           "them first: exact names and regexes come before \"Linear\")");
    }
  }
  for (const PlannedGroup& g : plan.groups) {
    if (g.tensors == 0 && plan.groups.size() > 1) {
      plan.notes.push_back("warning: config group '" + g.key + "' quantizes nothing");
    }
  }

  // The written ignore list: the user's entries verbatim (as model_free writes them), then
  // each default pattern that kept something unquantized, so vLLM skips the same modules.
  plan.config_ignore = ignore;
  for (size_t i = 0; i < default_hits.size(); ++i) {
    if (default_hits[i].empty()) continue;
    plan.config_ignore.push_back(default_patterns[i]);
    std::string list;
    for (size_t k = 0; k < default_hits[i].size() && k < 3; ++k) {
      list += (k ? ", " : "") + default_hits[i][k];
    }
    if (default_hits[i].size() > 3) {
      list += ", ... (" + std::to_string(default_hits[i].size()) + " in all)";
    }
    plan.notes.push_back("left unquantized by default (" +
                         std::string(kDefaultIgnores[i].what) +
                         "; vLLM loads it unquantized): " + list +
                         "  [--no-default-ignore quantizes it]");
  }

  // Other files: copied unchanged, except the index and config which are regenerated. They
  // are published in this order, config last.
  for (const std::string& f : folder.other_files) {
    if ((folder.index_rel && f == *folder.index_rel) || (folder.config_rel && f == *folder.config_rel)) {
      continue;
    }
    plan.files.push_back({f, folder.root / f, {}});
  }
  uint64_t total_size = 0;
  for (const PlannedShard& ps : plan.shards) {
    for (const PlannedOutput& o : ps.outputs) total_size += o.nbytes;
  }
  // Written even for a single-file model, under the source index's name or the default one
  // (compressed_tensors utils/safetensors_load.py::update_safetensors_index).
  plan.files.push_back({folder.index_rel.value_or("model.safetensors.index.json"), {},
                        BuildIndexJson(weight_map, total_size)});
  if (folder.config) {
    JsonValue cfg = *folder.config;
    if (cfg.Find("quantization_config") != nullptr) {
      plan.notes.push_back("warning: " + *folder.config_rel +
                           " already has a quantization_config; it is replaced");
    }
    std::vector<ConfigGroup> cg;
    for (const PlannedGroup& g : plan.groups) {
      if (g.scheme != nullptr) cg.push_back({g.key, g.scheme, g.params, g.targets});
    }
    if (cg.empty()) {
      // Pruning alone: like llm-compressor, no quantization_config; config.json is copied.
      plan.files.push_back({*folder.config_rel, folder.root / *folder.config_rel, {}});
    } else {
      JsonValue q = BuildQuantizationConfig(cg, plan.config_ignore);
      // llm-compressor 0.14.0.1 writes an empty sparsity_config for pruned models (its writer
      // drops the structure; docs/reference-notes.md section 15). A populated dense 2:4
      // config would send vLLM down its removed 2:4-kernel path, so quench writes the same {}
      // and records the structure in --report and `quench inspect --sparsity`.
      if (pruning) q.Set("sparsity_config", JsonValue::MakeObject());
      cfg.Set("quantization_config", std::move(q));
      plan.files.push_back({*folder.config_rel, {}, DumpPythonJson(cfg)});
    }
  } else {
    plan.notes.push_back("warning: no config.json or params.json in the source; the "
                         "quantization_config is not written anywhere");
  }
  return plan;
}

}  // namespace quench
