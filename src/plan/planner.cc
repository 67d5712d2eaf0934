#include "plan/planner.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <numeric>
#include <optional>
#include <set>

#include "format/name_table.h"
#include "format/parallel.h"
#include "format/quant_config.h"
#include "format/source_ct.h"
#include "format/source_quant.h"
#include "plan/fused_sets.h"
#include "plan/groups.h"
#include "plan/ignore_cover.h"
#include "plan/matcher.h"
#include "plan/observer_kwargs.h"
#include "plan/target_resolver.h"
#include "schemes/float_formats.h"
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
    {"re:.*(mlp|feed_forward)\\.router$", "MoE router"},  // gpt-oss, Llama 4
    {"re:.*shared_expert_gate$", "shared-expert gate"},
};

// The kv_cache_scheme quench writes: FP8 per tensor, static, with the observer whose values it
// reproduces (static_minmax: the keys' and values' global range over the collected tokens).
constexpr QuantArgsDesc kKvCacheFp8 = {
    .num_bits = 8, .type = "float", .symmetric = true, .group_size = std::nullopt,
    .strategy = "tensor", .block_structure = std::nullopt, .dynamic = false,
    .observer = "static_minmax", .scale_dtype = "", .zp_dtype = ""};
// A ModelOpt FP8 KV cache repacked: the same arguments, observing nothing (observer null, as
// ModelOptNvfp4Converter writes the QuantizationArgs it is given; data/golden/mokvsrc).
constexpr QuantArgsDesc kKvCacheFp8Repack = {
    .num_bits = 8, .type = "float", .symmetric = true, .group_size = std::nullopt,
    .strategy = "tensor", .block_structure = std::nullopt, .dynamic = false,
    .observer = "", .scale_dtype = "", .zp_dtype = ""};

// compressed-tensors utils/match.py::match_quantizable_tensors as model_free applies it:
// module names ending in "norm" are never quantized; only the "weight" parameter is; then the
// targets, then the ignore list (and quench's default ignores).
enum class Selection { kQuantize, kNotWeight, kNorm, kNotTargeted, kIgnored, kDefaultIgnored };

// Whether `options` ask for the source's own scheme, which is then written from the stored
// codes and scales (lossless) rather than decoded and quantized again: 1 AutoAWQ -> its
// W4A16(_ASYM) at its group size (no --group-size, or the same), 2 ModelOpt NVFP4 -> NVFP4 or
// NVFP4A16; only with flags alone (no recipe, pruning, statistics or other overrides).
int RepackMode(const SourceQuantization& s, const PlanOptions& o) {
  if (s.packed.empty() || !o.recipe.empty() || !o.prune.empty() ||
      !o.stats.empty() || !o.targets.empty() || !o.ignore.empty() || o.static_activations ||
      !o.kv_cache.empty() || o.observer != "minmax") {
    return 0;
  }
  if (s.format == SourceFormat::kAwq && o.scheme == s.own_scheme &&
      (!o.group_size || *o.group_size == static_cast<int>(s.group_size)) && !o.symmetric) {
    return 1;
  }
  if (s.format == SourceFormat::kModelOptNvfp4 && (o.scheme == "NVFP4" || o.scheme == "NVFP4A16")) {
    for (const auto& [name, w] : s.packed) {
      if (o.scheme == "NVFP4" && !w.input_scale) return 0;  // no activation scale to repack
    }
    return 2;
  }
  return 0;
}

// Groups quantized tensors needing a global scale into fused sets (singletons otherwise).
void PlanFusedSets(Plan& plan) {
  std::map<std::string, size_t> set_of;  // FusedSetKey -> fused set
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    PlannedTensor& t = plan.tensors[i];
    if (t.action != TensorAction::kQuantize || !t.scheme->needs_global_scale) continue;
    if (t.source_scale && t.source_scale->repack) continue;  // the source's own scales
    // FP8's per-tensor weight scales are each tensor's own (vLLM requantizes a fused set to
    // its largest); NVFP4's global scale is the set's.
    const std::string key = t.scheme->fuse_global_scale
                                ? FusedSetKey(SplitModuleParam(t.name).first)
                                : std::string();
    size_t set = plan.fused_sets.size();  // not fusable: a set of its own
    if (!key.empty()) set = set_of.emplace(key, set).first->second;
    if (set == plan.fused_sets.size()) plan.fused_sets.emplace_back();
    plan.fused_sets[set].push_back(i);
    t.fused_set = static_cast<int>(set);
  }
}

// vLLM runs each fused set (q/k/v, gate/up, ...) as one matrix, so its members must all get
// the same scheme or all stay unquantized; anything else cannot be loaded.
void CheckFusedConsistency(Plan& plan) {
  // Sets found with a table of their keys (a std::map of 10^5 keys cost a tenth of planning an
  // MoE checkpoint); problems reported in key order.
  std::deque<std::string> keys;  // stable storage for the table's views
  std::vector<std::vector<size_t>> sets;
  NameTable set_of(plan.tensors.size());
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& t = plan.tensors[i];
    auto [module, param] = SplitModuleParam(t.name);
    if (param != "weight" || t.shape.size() != 2) continue;
    std::string key = FusedSetKey(module);
    if (key.empty()) continue;
    const std::optional<uint32_t> set = set_of.Find(key);
    if (set) {
      sets[*set].push_back(i);
      continue;
    }
    keys.push_back(std::move(key));
    set_of.Insert(keys.back(), static_cast<uint32_t>(sets.size()));
    sets.push_back({i});
  }
  std::vector<std::pair<std::string_view, size_t>> mixed;  // key, first differing member
  for (size_t k = 0; k < sets.size(); ++k) {
    const PlannedTensor& first = plan.tensors[sets[k].front()];
    for (size_t i : sets[k]) {
      if (plan.tensors[i].group != first.group) {
        mixed.emplace_back(keys[k], i);
        break;
      }
    }
  }
  std::sort(mixed.begin(), mixed.end());
  for (const auto& [key, i] : mixed) {
    const PlannedTensor& first = plan.tensors[sets[*set_of.Find(key)].front()];
    const PlannedTensor& t = plan.tensors[i];
    auto describe = [&](const PlannedTensor& x) {
      return x.group >= 0 ? "group '" + plan.groups[static_cast<size_t>(x.group)].key + "'"
                          : "unquantized (" + x.why + ")";
    };
    plan.errors.push_back(Error(
        ErrorCode::kUsage,
        "fused set of '" + first.name + "': '" + first.name + "' is " + describe(first) +
            " but '" + t.name + "' is " + describe(t) +
            "; vLLM runs these as one matrix, so give them the same scheme (or ignore all)"));
  }
}

// The planner's state while it walks the folder: the run's matchers, and what each entry
// selected (for the warnings and the written ignore list).
class Planner {
 public:
  static Result<Planner> Make(const ModelFolder& folder, const PlanOptions& options);

  // Plans every shard's tensors and lays out its output file, on up to `threads` threads
  // (0: one per core) when the checkpoint has enough tensors for that to pay.
  void PlanShards(int threads);
  // After the shards: fused sets and their consistency, notes, the written ignore list, the
  // index, config.json and the other files. The index, which depends on the shards' layouts
  // alone, is built on another thread meanwhile where PlanShards found that worth it.
  Plan Finish() &&;

 private:
  Planner(const ModelFolder& folder, TargetResolver resolver)
      : folder_(folder), resolver_(std::move(resolver)) {}

  // Per output of the quantized tensors of the shard being planned, and per KV-cache scale,
  // in plan order: its slab layout and source, as the scheme gave them (so LayOutShard does
  // not ask again).
  struct Slab {
    uint64_t rows_per_slab, bytes_per_slab;
    SchemeOutput::Source source;
  };
  // What planning one shard makes and counts. Shards are planned independently of each other
  // (in parallel where that pays) into one of these each, and merged into the plan in shard
  // order (MergeShard), so that the plan is the same whatever the number of threads.
  struct ShardWork {
    size_t first_tensor = 0;  // where the shard's planned tensors start in plan_.tensors
    PlannedTensor* tensors = nullptr;  // &plan_.tensors[first_tensor], theirs alone to write
    PlannedShard shard;
    std::vector<Status> errors;
    std::vector<size_t> target_hits, ignore_hits, group_tensors;
    std::vector<std::vector<std::string>> default_hits;  // per default pattern: modules it took
    std::vector<std::string> left_whole;
    size_t vector_weights = 0, kv_layers = 0;
    uint64_t bytes_in = 0;
    std::vector<Slab> slabs;
    std::map<size_t, std::string> constants;  // tensor index -> its one output's bytes
  };
  // Plans every tensor of shard `si` (into plan_.tensors from w.first_tensor on) and lays out
  // its output file. Reads the planner's settings only, writes only `w` and its own tensors.
  void PlanShard(size_t si, ShardWork& w) const;
  // Adds a planned shard's output, errors and counts to the plan.
  void MergeShard(ShardWork& w);
  // The selection rule for one tensor; the group it resolves to and the default-ignore
  // pattern that took it, where those apply.
  Selection Select(std::string_view name, int* group, int* default_hit, ShardWork& w) const;
  // Why `t`, targeted for quantizing (or pruning), cannot be; empty if it can.
  std::string QuantizeProblem(const std::string& where, const TensorInfo& t, DType dtype,
                              const SchemeInfo* scheme, const SchemeParams& params) const;
  // Plans one tensor into `pt`; appends the output tensors it writes to `specs`.
  void PlanTensor(const TensorInfo& t, const std::string& rel_name, PlannedTensor& pt,
                  std::vector<TensorSpec>& specs, ShardWork& w) const;
  // --kv-cache fp8: an attention's k_scale and v_scale ([1], the attention's dtype, from
  // activation statistics) planned beside its k_proj weight, in that weight's shard.
  void AppendKvScales(const PlannedTensor& pt, std::vector<TensorSpec>& specs,
                      ShardWork& w) const;
  // Lays out one output shard (w.shard) from its tensors' specs; links each planned tensor
  // (from w.first_tensor on) to its outputs.
  void LayOutShard(const Shard& shard, std::vector<TensorSpec> specs,
                   const std::vector<size_t>& specs_per_tensor, ShardWork& w) const;
  // A compressed-tensors source's stored weight (X.weight_packed, or X.weight of codes) as the
  // weight it decodes to: its name and shape, in *storage; any other tensor as it is.
  const TensorInfo* LogicalTensor(const TensorInfo& t, TensorInfo* storage) const;
  // The source scale of an FP8 weight, or nullopt.
  std::optional<PlannedSourceScale> SourceScaleOf(const TensorInfo& t) const;
  // Repacking an AutoAWQ or ModelOpt NVFP4 source into its own scheme (repack_ != 0): plans
  // every tensor but AWQ's packed weights (ModelOpt's renamed, its per-tensor scales
  // inverted, everything else copied); false leaves `t` to PlanTensor.
  bool PlanRepacked(const TensorInfo& t, size_t index, PlannedTensor& pt,
                    std::vector<TensorSpec>& specs, ShardWork& w) const;
  // A packed weight's source tensor seen as the weight it stands for ("X.qweight" ->
  // "X.weight" [out, in], 4-bit codes): what the planner and pipeline then read.
  const TensorInfo* PackedView(const TensorInfo& t, TensorInfo* view) const;
  void AddSelectionNotes();
  void PlanConfigIgnore();
  // The index file's bytes: every output tensor's shard, and their total size.
  std::string IndexJson() const;
  void PlanFiles(std::string index_json);

  const ModelFolder& folder_;
  Plan plan_;
  SourceQuantization source_;
  int repack_ = 0;  // 1: AutoAWQ -> its own pack-quantized scheme; 2: ModelOpt -> NVFP4(A16)
  std::map<std::string, std::string> packed_by_source_;  // source tensor -> weight name
  std::set<std::string_view> consumed_;  // the source's scale tensors: read, not written
  bool decode_only_ = false;             // --scheme BF16
  bool pruning_ = false;
  bool gptq_ = false;     // --algorithm gptq
  bool oneshot_ = false;  // GPTQ or static activations: config written as oneshot writes it
  std::string kv_cache_;  // "fp8": k_scale / v_scale beside each attention's k_proj
  size_t kv_layers_ = 0;
  std::string actorder_;  // written to the config groups' weights (GPTQ), empty: null
  prune::PruneSpec prune_spec_;
  TargetResolver resolver_;
  std::vector<std::string> ignore_;  // the user's (and the recipe's) ignore entries
  NameMatcher ignore_m_;
  std::vector<size_t> ignore_hits_;
  std::vector<std::string> default_patterns_;
  NameMatcher defaults_;
  std::vector<std::vector<std::string>> default_hits_;  // per default pattern: modules it took
  size_t vector_weights_ = 0;  // targeted .weight tensors with fewer than 2 dimensions
  // Targeted modules left unquantized (1-D weights, expert stacks kept whole): added to the
  // written ignore list (CoverWithIgnore).
  std::vector<std::string> left_whole_;
  size_t finish_threads_ = 1;  // Finish's: 2 where PlanShards planned on several
};

Result<Planner> Planner::Make(const ModelFolder& folder, const PlanOptions& in_options) {
  QUENCH_ASSIGN_OR_RETURN(SourceQuantization source, DetectSourceQuantization(folder));
  PlanOptions options = in_options;
  const int repack = RepackMode(source, options);
  if (repack == 1 && !options.group_size) {
    options.group_size = static_cast<int>(source.group_size);
  }
  // ModelOpt's input_scale is the static activation scale NVFP4 needs: no statistics.
  const bool w4a4_repack = repack == 2 && options.scheme == "NVFP4";
  if (w4a4_repack) options.scheme = "NVFP4A16";
  QUENCH_ASSIGN_OR_RETURN(PlannedPrune prune, ResolvePrune(options));
  QUENCH_ASSIGN_OR_RETURN(ResolvedGroups resolved, ResolveGroups(options));
  if (repack != 0) {
    // The reference converters' one group, under their key.
    PlannedGroup& g = resolved.groups.front();
    g.key = "config_group_0";
    if (w4a4_repack) {
      g.scheme = FindScheme("NVFP4");
      g.params = g.scheme->DefaultParams();
    }
  }
  QUENCH_ASSIGN_OR_RETURN(TargetResolver resolver, TargetResolver::Build(resolved.groups));
  Planner p(folder, std::move(resolver));
  p.plan_.prune = std::move(prune);
  p.pruning_ = p.plan_.prune.kind != PlannedPrune::kNone;
  p.prune_spec_ = ToPruneSpec(p.plan_.prune);
  p.plan_.groups = std::move(resolved.groups);
  p.ignore_ = std::move(resolved.ignore);
  p.kv_cache_ = std::move(resolved.kv_cache);
  for (std::string& n : resolved.notes) p.plan_.notes.push_back(std::move(n));
  QUENCH_ASSIGN_OR_RETURN(p.ignore_m_, NameMatcher::Compile(p.ignore_, "ignore"));
  if (options.default_ignore) {
    for (const DefaultIgnore& d : kDefaultIgnores) p.default_patterns_.emplace_back(d.pattern);
  }
  QUENCH_ASSIGN_OR_RETURN(p.defaults_,
                          NameMatcher::Compile(p.default_patterns_, "default ignore"));
  p.ignore_hits_.assign(p.ignore_.size(), 0);
  p.default_hits_.resize(p.default_patterns_.size());
  p.plan_.src = folder.root;
  p.plan_.dst = options.dst;
  p.source_ = std::move(source);
  p.repack_ = repack;
  for (const auto& [weight, scale] : p.source_.scales) p.consumed_.insert(scale.name);
  for (const std::string& n : p.source_.consumed) p.consumed_.insert(n);
  for (const auto& [weight, pw] : p.source_.packed) p.packed_by_source_.emplace(pw.source_name, weight);
  // Read with their weights (ModelOpt's repack writes them itself, but NVFP4A16's has no
  // input scale).
  for (const std::string& aux : p.source_.packed_aux) {
    if (repack != 2 || (!w4a4_repack && aux.ends_with(".input_scale"))) p.consumed_.insert(aux);
  }
  p.plan_.source_format = p.source_.description;
  p.decode_only_ = IsDecodeOnly(options);
  // GPTQModifier.resolve_quantization_config sets the weights' actorder of every group (its
  // default "static"); "none" leaves it null. Weights that fall back to RTN keep the group.
  p.gptq_ = options.algorithm == "gptq";
  // Static activation scales are oneshot's too (QuantizationModifier with calibration): its
  // config names the weights' observer and writes an empty sparsity_config.
  p.oneshot_ = p.gptq_;
  for (const PlannedGroup& g : p.plan_.groups) p.oneshot_ |= g.params.static_input;
  p.oneshot_ |= !p.kv_cache_.empty();
  // So are AWQ, SmoothQuant and SparseGPT runs (data/golden/oneshot-smooth: oneshot with
  // AWQModifier, SmoothQuantModifier or SparseGPTModifier before the QuantizationModifier; a
  // composed run plans with its last stage's algorithm: src/calib/composite.h).
  p.oneshot_ |= options.algorithm == "awq" || options.algorithm == "smoothquant" ||
                options.algorithm == "sparsegpt";
  if (p.gptq_ && options.actorder != "none") p.actorder_ = options.actorder;
  p.oneshot_ = p.oneshot_ && repack == 0;  // the converters write the scheme's own args
  if (p.decode_only_ && p.source_.format == SourceFormat::kPlain) {
    return Error(ErrorCode::kUsage, "--scheme BF16 writes a quantized source decoded; " +
                                        folder.root.string() + " is not quantized");
  }
  return p;
}

std::optional<PlannedSourceScale> Planner::SourceScaleOf(const TensorInfo& t) const {
  if (auto pk = source_.packed.find(t.name); pk != source_.packed.end() && t.dtype == DType::kF4) {
    const PackedSourceWeight& w = pk->second;
    PlannedSourceScale s;
    s.name = w.scales.name;
    s.shard = w.scales.shard;
    s.offset = w.scales.offset;
    s.nbytes = w.scales.nbytes;
    s.dtype = w.scales.dtype;
    s.block_rows = 1;
    s.block_cols = w.group;
    s.scale_cols = w.cols / w.group;
    s.packed_kind = source_.format == SourceFormat::kAwq ? 1 : 2;
    s.repack = repack_ == 1;
    s.group = w.group;
    if (w.zeros) s.zeros = std::make_pair(w.zeros->shard, w.zeros->offset);
    s.weight_scale_2 = w.weight_scale_2;
    s.input_scale = w.input_scale.value_or(0.f);
    return s;
  }
  auto it = source_.scales.find(t.name);
  if (it == source_.scales.end()) return std::nullopt;
  const SourceScale& s = it->second;
  PlannedSourceScale p{s.name,       s.shard,      s.offset,
                       s.nbytes,     s.dtype,      s.block_rows,
                       s.block_cols, (t.shape.back() + s.block_cols - 1) / s.block_cols,
                       s.ct};
  p.ct_expert = s.ct_expert;
  p.ct_row0 = s.ct_row0;
  return p;
}

const TensorInfo* Planner::LogicalTensor(const TensorInfo& t, TensorInfo* storage) const {
  if (source_.format != SourceFormat::kCompressedTensors) return &t;
  auto r = source_.renamed.find(t.name);
  auto it = source_.scales.find(r != source_.renamed.end() ? r->second : t.name);
  if (it == source_.scales.end() || it->second.ct == nullptr) return &t;
  *storage = t;
  storage->name = it->first;
  const CtWeight& w = *it->second.ct;
  // A 3-D stack decodes to [experts, rows, cols]; a piece of one has the piece's rows (its
  // codes' rows).
  storage->shape = it->second.ct_expert >= 0 ? std::vector<uint64_t>{t.shape[0], w.cols}
                   : w.experts > 0           ? std::vector<uint64_t>{w.experts, w.rows, w.cols}
                                             : std::vector<uint64_t>{w.rows, w.cols};
  return storage;
}

const TensorInfo* Planner::PackedView(const TensorInfo& t, TensorInfo* view) const {
  if (repack_ == 2) return &t;  // ModelOpt's repack renames tensors (PlanRepacked)
  auto it = packed_by_source_.find(t.name);
  if (it == packed_by_source_.end()) return &t;
  const PackedSourceWeight& w = source_.packed.at(it->second);
  *view = t;
  view->name = it->second;
  view->dtype = DType::kF4;  // 4-bit codes: rows * cols / 2 bytes, as stored
  view->shape = {w.rows, w.cols};
  return view;
}

bool Planner::PlanRepacked(const TensorInfo& t, size_t index, PlannedTensor& pt,
                           std::vector<TensorSpec>& specs, ShardWork& w) const {
  if (repack_ == 0) return false;
  if (repack_ == 1 && packed_by_source_.contains(t.name)) return false;  // PlanTensor repacks
  pt.action = TensorAction::kCopy;
  pt.why = "stored unquantized in the source";
  const std::string_view module = SplitModuleParam(t.name).first;
  auto inverted = [&](const char* suffix, float v) {
    // compressed-tensors' ModelOptNvfp4Converter: 1 / x of the 0-dim F32 tensor.
    const float r = 1.0f / v;
    std::string bytes(4, '\0');
    std::memcpy(bytes.data(), &r, 4);
    w.constants[index] = std::move(bytes);
    pt.src_bytes = 0;  // not read: its value was read while planning
    pt.why = "inverted (ModelOpt's per-tensor scale)";
    specs.push_back({std::string(module) + suffix, DType::kF32, {}, 4});
  };
  if (repack_ == 2) {
    const std::string weight = std::string(module) + ".weight";
    auto pk = source_.packed.find(weight);
    if (pk != source_.packed.end() && t.name == weight) {
      pt.why = "NVFP4 repacked (renamed weight_packed)";
      specs.push_back({std::string(module) + ".weight_packed", t.dtype, t.shape, t.nbytes()});
      return true;
    }
    if (pk != source_.packed.end() && t.name.ends_with(".weight_scale_2")) {
      inverted(".weight_global_scale", pk->second.weight_scale_2);
      return true;
    }
    if (pk != source_.packed.end() && t.name.ends_with(".input_scale")) {
      inverted(".input_global_scale", *pk->second.input_scale);
      return true;
    }
    if (auto kv = source_.kv_scales.find(t.name); kv != source_.kv_scales.end()) {
      // The converter's k/v scale: .to(kv_cache_scheme.scale_dtype or bfloat16), 0-dim kept.
      const uint16_t h = F32ToBF16(kv->second);
      w.constants[index] = std::string(reinterpret_cast<const char*>(&h), 2);
      pt.src_bytes = 0;  // its value was read while planning
      pt.why = "cast to BF16 (ModelOpt's FP8 KV-cache scale)";
      specs.push_back({t.name, DType::kBF16, {}, 2});
      return true;
    }
    if (pk != source_.packed.end()) pt.why = "NVFP4 scale (kept)";
  }
  specs.push_back({t.name, t.dtype, t.shape, t.nbytes()});
  return true;
}

Selection Planner::Select(std::string_view name, int* group, int* default_hit,
                          ShardWork& w) const {
  auto [module, param] = SplitModuleParam(name);
  if (module.ends_with("norm")) return Selection::kNorm;
  if (param != "weight") return Selection::kNotWeight;
  if ((*group = resolver_.Resolve(module, w.target_hits)) < 0) return Selection::kNotTargeted;
  if (int ig = ignore_m_.FirstMatch(module); ig >= 0) {
    ++w.ignore_hits[static_cast<size_t>(ig)];
    return Selection::kIgnored;
  }
  if ((*default_hit = defaults_.FirstMatch(module)) >= 0) return Selection::kDefaultIgnored;
  return Selection::kQuantize;
}

std::string Planner::QuantizeProblem(const std::string& where, const TensorInfo& t, DType dtype,
                                     const SchemeInfo* scheme,
                                     const SchemeParams& params) const {
  if (t.shape.size() != 2) {
    return where + " is targeted for " +
           (scheme ? std::string(scheme->name) : std::string("pruning")) + " but has shape " +
           ShapeString(t.shape) + "; only 2-D weights can be quantized (add it to --ignore)";
  }
  if (!IsQuantizableFloat(dtype)) {
    return where + " has dtype " + std::string(DTypeName(dtype)) +
           "; only BF16, F16 and F32 weights can be quantized (add it to --ignore, or "
           "dequantize the checkpoint first)";
  }
  if (scheme != nullptr && scheme->check_shape != nullptr) {
    const std::string why = scheme->check_shape(t.shape[0], t.shape[1], params);
    if (!why.empty()) {
      return where + " " + ShapeString(t.shape) + ": " + why + " for " +
             std::string(scheme->name) + "; add it to --ignore or pick another scheme";
    }
  }
  if (pruning_) {
    Status ps = prune::CheckShape(prune_spec_, t.shape[0], t.shape[1]);
    if (!ps.ok()) return where + ": " + ps.message();
  }
  return {};
}

void Planner::PlanTensor(const TensorInfo& t, const std::string& rel_name, PlannedTensor& pt,
                         std::vector<TensorSpec>& specs, ShardWork& w) const {
  pt.source_scale = SourceScaleOf(t);
  pt.compute_dtype = pt.source_scale ? DType::kBF16 : t.dtype;
  // Left as it is: copied, or for a source-quantized weight written decoded.
  auto copy = [&](std::string why) {
    pt.why = std::move(why);
    if (!pt.source_scale) {
      pt.action = TensorAction::kCopy;
      specs.push_back({t.name, t.dtype, t.shape, t.nbytes()});
      return;
    }
    pt.action = TensorAction::kDecode;
    pt.source_scale->repack = false;  // left out of a repack: written decoded
    specs.push_back({t.name, pt.compute_dtype, t.shape, t.numel() * 2});
  };
  int group = -1, default_hit = -1;
  const Selection s = Select(t.name, &group, &default_hit, w);
  switch (s) {
    case Selection::kNorm: return copy("norm");
    case Selection::kNotWeight: return copy("not a .weight");
    case Selection::kNotTargeted: return copy("not targeted");
    case Selection::kIgnored: return copy("ignored");
    case Selection::kDefaultIgnored: {
      const std::string_view module = SplitModuleParam(t.name).first;
      w.default_hits[static_cast<size_t>(default_hit)].emplace_back(module);
      return copy("default ignore " + default_patterns_[static_cast<size_t>(default_hit)]);
    }
    case Selection::kQuantize: break;
  }
  if (t.shape.size() < 2) {
    // A 1-D ".weight" is a normalisation scale (BERT's LayerNorm, which the "norm" suffix
    // rule misses because of its capital N). model_free_ptq aborts on it; copying it is what
    // the user wants and changes no output the reference writes.
    ++w.vector_weights;
    w.left_whole.emplace_back(SplitModuleParam(t.name).first);
    return copy("not a matrix");
  }
  const PlannedGroup& g = plan_.groups[static_cast<size_t>(group)];
  if (g.scheme == nullptr && !pruning_) {  // decoding alone, or expert pruning alone
    return copy(decode_only_ ? "--scheme BF16" : "--scheme none");
  }
  if (!pt.src_ranges.empty()) {
    // A router or expert stack sliced to the kept experts is gathered from several ranges of
    // its source; only the copy path reads such pieces.
    w.errors.push_back(Error(
        ErrorCode::kUnsupported,
        rel_name + ": tensor '" + t.name + "' is sliced to the kept experts (--prune-experts) "
        "and can only be copied, not " + (g.scheme ? "quantized" : "pruned") +
        "; add its module to --ignore (vLLM loads routers unquantized)"));
    return copy("error");
  }
  // Each problem is recorded and the tensor planned as a copy, so that planning goes on and
  // --dry-run can list every error a real run would stop at.
  const std::string problem = QuantizeProblem(rel_name + ": tensor '" + t.name + "'", t,
                                              pt.compute_dtype, g.scheme, g.params);
  if (!problem.empty()) {
    w.errors.push_back(Error(ErrorCode::kUnsupported, problem));
    return copy("error");
  }
  if (pruning_ && plan_.prune.per_tensor && pt.source_scale) {
    // The per-tensor threshold's pre-pass walks a whole tensor's stored values; a quantized
    // source's are decoded chunk by chunk only.
    w.errors.push_back(Error(
        ErrorCode::kUnsupported,
        rel_name + ": tensor '" + t.name + "' is stored quantized (" + std::string(DTypeName(t.dtype)) +
            "); --prune-granularity tensor cannot read decoded weights yet (use row pruning)"));
    return copy("error");
  }
  pt.prune = pruning_;
  pt.group = group;
  ++w.group_tensors[static_cast<size_t>(group)];
  if (g.scheme == nullptr) {  // --scheme none: prune in place, keep name and shape
    pt.action = TensorAction::kPrune;
    specs.push_back({t.name, pt.compute_dtype, t.shape,
                     t.numel() * (DTypeBits(pt.compute_dtype) / 8)});
    return;
  }
  pt.action = TensorAction::kQuantize;
  pt.scheme = g.scheme;
  pt.params = g.params;
  // An AutoAWQ repack keeps the source's F16 scales (the outputs' scale dtype).
  if (pt.source_scale && pt.source_scale->repack) pt.compute_dtype = pt.source_scale->dtype;
  const std::string_view module = SplitModuleParam(t.name).first;
  for (SchemeOutput& o :
       WeightOutputs(*g.scheme, pt.compute_dtype, t.shape[0], t.shape[1], g.params)) {
    if (o.source == SchemeOutput::Source::kKernel) ++pt.kernel_outputs;
    w.slabs.push_back({o.rows_per_slab, o.bytes_per_slab, o.source});
    specs.push_back({std::string(module) + "." + o.suffix, o.dtype, std::move(o.shape), o.nbytes});
  }
}

void Planner::AppendKvScales(const PlannedTensor& pt, std::vector<TensorSpec>& specs,
                             ShardWork& w) const {
  if (kv_cache_.empty() || pt.shape.size() != 2) return;
  auto [module, param] = SplitModuleParam(pt.name);
  if (param != "weight" || !module.ends_with(".k_proj")) return;
  const std::string attn(module.substr(0, module.size() - 7));
  const uint64_t bytes = DTypeBits(pt.compute_dtype) / 8;
  specs.push_back({attn + ".k_scale", pt.compute_dtype, {1}, bytes});
  specs.push_back({attn + ".v_scale", pt.compute_dtype, {1}, bytes});
  // Their values come from the statistics (the pipeline's static outputs).
  w.slabs.push_back({0, bytes, SchemeOutput::Source::kStatic});
  w.slabs.push_back({0, bytes, SchemeOutput::Source::kStatic});
  ++w.kv_layers;
}

void Planner::PlanShard(size_t si, ShardWork& w) const {
  const Shard& shard = folder_.shards[si];
  // Visit tensors in file order so that reading is sequential.
  std::vector<const TensorInfo*> order;
  for (const TensorInfo& t : shard.header.tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
  std::vector<TensorSpec> specs;
  std::vector<size_t> specs_per_tensor;
  size_t index = w.first_tensor;
  for (const TensorInfo* t : order) {
    if (consumed_.contains(t->name)) continue;  // read with its weight, not written
    TensorInfo view;
    const TensorInfo* source_t = t;
    t = PackedView(*t, &view);
    PlannedTensor& pt = w.tensors[index - w.first_tensor];
    TensorInfo logical;  // a compressed-tensors source's weight as decoded (source_ct.h)
    const TensorInfo* lt = LogicalTensor(*t, &logical);
    pt.name = lt->name;
    pt.dtype = t->dtype;
    pt.shape = lt->shape;
    pt.shard = si;
    pt.src_offset = shard.header.data_start + t->begin;
    pt.src_bytes = t->nbytes();
    if (auto g = folder_.gathered.find(t->name); g != folder_.gathered.end()) {
      for (const auto& [begin, len] : g->second) {
        pt.src_ranges.emplace_back(shard.header.data_start + begin, len);
      }
    }
    const size_t before = specs.size();
    if (!PlanRepacked(*source_t, index, pt, specs, w)) {
      PlanTensor(*lt, shard.rel_name, pt, specs, w);
    }
    if (pt.source_scale && pt.source_scale->ct && pt.shape.size() == 3) {
      // A 3-D compressed-tensors stack (written decoded, 3-D): the pipeline reads it as
      // experts * rows rows, chunk by chunk (schemes/ct_stack.h decodes across experts).
      pt.shape = {pt.shape[0] * pt.shape[1], pt.shape[2]};
    }
    AppendKvScales(pt, specs, w);
    specs_per_tensor.push_back(specs.size() - before);
    w.bytes_in += t->nbytes();
    ++index;
  }
  LayOutShard(shard, std::move(specs), specs_per_tensor, w);
  for (auto& [ti, bytes] : w.constants) {
    PlannedOutput& o = w.shard.outputs[w.tensors[ti - w.first_tensor].outputs.at(0)];
    o.source = SchemeOutput::Source::kStatic;
    o.constant = std::move(bytes);
  }
  w.constants.clear();
}

void Planner::LayOutShard(const Shard& shard, std::vector<TensorSpec> specs,
                          const std::vector<size_t>& specs_per_tensor, ShardWork& w) const {
  PlannedShard& ps = w.shard;
  ps.rel_name = shard.rel_name;
  ps.src_path = shard.path;
  ps.src_size = shard.file_size;
  ps.src_header_hash = shard.header.header_hash;
  // specs are in plan order (each tensor's outputs in slot order); position maps them to
  // the layout.
  SafetensorsLayout layout = LayOutSafetensors(std::move(specs));
  // An output name written twice: found with a table of the names (sorting them all cost a
  // tenth of planning 70k tensors), reported in name order.
  std::vector<std::string_view> repeated;
  {
    NameTable names(layout.tensors.size());
    for (const TensorInfo& ti : layout.tensors) {
      if (!names.Insert(ti.name, 0).second) repeated.emplace_back(ti.name);
    }
  }
  std::sort(repeated.begin(), repeated.end());
  for (std::string_view name : repeated) {
    w.errors.push_back(Error(ErrorCode::kInvalidInput,
                                 shard.rel_name + ": output tensor '" + std::string(name) +
                                     "' would be written twice (the source already has a "
                                     "tensor of that name); add its module to --ignore"));
  }
  ps.outputs.reserve(layout.tensors.size());
  for (TensorInfo& ti : layout.tensors) {
    PlannedOutput po;
    po.dtype = ti.dtype;
    po.file_offset = layout.data_start + ti.begin;
    po.nbytes = ti.nbytes();
    po.bytes_per_slab = po.nbytes;
    po.rows_per_slab = 0;
    po.name = std::move(ti.name);
    po.shape = std::move(ti.shape);
    ps.outputs.push_back(std::move(po));
  }
  size_t next_spec = 0, next_slab = 0;
  for (size_t k = 0; k < specs_per_tensor.size(); ++k) {
    PlannedTensor& pt = w.tensors[k];
    const bool quantized = pt.action == TensorAction::kQuantize;
    pt.outputs.reserve(specs_per_tensor[k]);
    // The tensor's own outputs (the scheme's, each with its slab; or the tensor copied, with
    // none), then any KV-cache scales planned beside it (AppendKvScales: a slab each).
    for (size_t j = 0; j < specs_per_tensor[k]; ++j) {
      const size_t oi = layout.position[next_spec++];
      if (quantized || j >= 1) {
        const Slab& slab = w.slabs[next_slab++];
        PlannedOutput& po = ps.outputs[oi];
        po.rows_per_slab = slab.rows_per_slab;
        po.bytes_per_slab = slab.bytes_per_slab;
        po.source = slab.source;
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
  w.slabs.clear();
  ps.header = std::move(layout.header);
  ps.file_size = layout.file_size;
}

// Notes on what selection left alone, and warnings for entries that select nothing (almost
// always a typo).
void Planner::AddSelectionNotes() {
  if (repack_ != 0) {
    plan_.notes.push_back("source: " + source_.description + "; repacked losslessly into " +
                          std::string(plan_.groups.front().scheme->name) +
                          " (stored codes and scales unchanged, as compressed-tensors' " +
                          (repack_ == 1 ? "AutoAWQConverter" : "ModelOptNvfp4Converter") + ")");
  } else if (!source_.packed.empty()) {
    plan_.notes.push_back("source: " + source_.description + "; each is decoded to BF16 (as "
                          "compressed-tensors dequantizes the converter's repack) before it is "
                          "quantized or written");
  } else if (source_.format != SourceFormat::kPlain) {
    plan_.notes.push_back(
        "source: " + source_.description + "; each is decoded to BF16 (" +
        (source_.format == SourceFormat::kFp8
             ? "RNE of the FP8 value times its scale, as compressed-tensors' "
               "FP8BlockDequantizer"
             : "as compressed-tensors' CompressedTensorsDequantizer: code minus zero point "
               "times scale in the scale's dtype, g_idx applied") +
        ") before it is quantized or written");
  }
  if (vector_weights_ > 0) {
    plan_.notes.push_back("left unquantized: " + std::to_string(vector_weights_) +
                          " targeted .weight tensor(s) with fewer than 2 dimensions "
                          "(normalisation scales); they are copied");
  }
  for (size_t i = 0; i < ignore_.size(); ++i) {
    if (ignore_hits_[i] == 0) {
      plan_.notes.push_back("warning: ignore entry '" + ignore_[i] +
                            "' matches no targeted weight in this checkpoint");
    }
  }
  for (size_t i = 0; i < resolver_.entries().size(); ++i) {
    if (resolver_.hits()[i] == 0) {
      plan_.notes.push_back("warning: target '" + resolver_.entries()[i] +
                            "' selects no weight in this checkpoint (another target may take "
                            "them first: exact names and regexes come before \"Linear\")");
    }
  }
  for (const PlannedGroup& g : plan_.groups) {
    if (g.tensors == 0 && plan_.groups.size() > 1) {
      plan_.notes.push_back("warning: config group '" + g.key + "' quantizes nothing");
    }
  }
}

// The written ignore list: the user's entries verbatim (as model_free writes them), then each
// default pattern that kept something unquantized, so vLLM skips the same modules.
void Planner::PlanConfigIgnore() {
  if (repack_ != 0) {  // as the reference's converter writes it
    plan_.config_ignore = source_.repack_ignore;
    return;
  }
  plan_.config_ignore = ignore_;
  for (size_t i = 0; i < default_hits_.size(); ++i) {
    if (default_hits_[i].empty()) continue;
    plan_.config_ignore.push_back(default_patterns_[i]);
    std::string list;
    for (size_t k = 0; k < default_hits_[i].size() && k < 3; ++k) {
      list += (k ? ", " : "") + default_hits_[i][k];
    }
    if (default_hits_[i].size() > 3) {
      list += ", ... (" + std::to_string(default_hits_[i].size()) + " in all)";
    }
    plan_.notes.push_back("left unquantized by default (" + std::string(kDefaultIgnores[i].what) +
                          "; vLLM loads it unquantized): " + list +
                          "  [--no-default-ignore quantizes it]");
  }
  // Then every targeted module left unquantized that no entry covers yet: compressed-tensors
  // and transformers read the groups' "Linear" target as every module and would look for its
  // scales. model_free_ptq writes no such entry because it aborts on these modules instead.
  for (const std::string& name : folder_.kept_whole) {
    const std::string_view module = SplitModuleParam(name).first;
    if (resolver_.Resolve(module) >= 0 && ignore_m_.FirstMatch(module) < 0 &&
        defaults_.FirstMatch(module) < 0) {
      left_whole_.emplace_back(module);
    }
  }
  if (left_whole_.empty()) return;
  std::vector<std::string> quantized;  // every quantized module, for the shapes they take
  for (const PlannedTensor& t : plan_.tensors) {
    if (t.action == TensorAction::kQuantize) quantized.emplace_back(SplitModuleParam(t.name).first);
  }
  for (std::string& entry : CoverWithIgnore(left_whole_, quantized)) {
    plan_.notes.push_back("written to ignore (left unquantized, see above): " + entry);
    plan_.config_ignore.push_back(std::move(entry));
  }
}

std::string Planner::IndexJson() const {
  uint64_t total_size = 0;
  size_t outputs = 0;
  for (const PlannedShard& ps : plan_.shards) outputs += ps.outputs.size();
  std::vector<std::pair<std::string_view, std::string_view>> weight_map;  // tensor -> shard
  weight_map.reserve(outputs);
  for (const PlannedShard& ps : plan_.shards) {
    for (const PlannedOutput& o : ps.outputs) {
      total_size += o.nbytes;
      weight_map.emplace_back(o.name, ps.rel_name);
    }
  }
  return BuildIndexJson(std::move(weight_map), total_size);
}

// Other files: copied unchanged, except the index (`index_json`) and config which are
// regenerated. They are published in this order, config last.
void Planner::PlanFiles(std::string index_json) {
  for (const std::string& f : folder_.other_files) {
    if ((folder_.index_rel && f == *folder_.index_rel) ||
        (folder_.config_rel && f == *folder_.config_rel)) {
      continue;
    }
    plan_.files.push_back({f, folder_.root / f, {}});
  }
  // Written even for a single-file model, under the source index's name or the default one
  // (compressed_tensors utils/safetensors_load.py::update_safetensors_index).
  plan_.files.push_back({folder_.index_rel.value_or("model.safetensors.index.json"), {},
                         std::move(index_json)});
  if (!folder_.config) {
    plan_.notes.push_back("warning: no config.json or params.json in the source; the "
                          "quantization_config is not written anywhere");
    return;
  }
  JsonValue cfg = *folder_.config;
  const bool quantized_source = source_.format != SourceFormat::kPlain;
  if (cfg.Find("quantization_config") != nullptr && !quantized_source) {
    plan_.notes.push_back("warning: " + *folder_.config_rel +
                          " already has a quantization_config; it is replaced");
  }
  std::vector<ConfigGroup> cg;
  for (const PlannedGroup& g : plan_.groups) {
    if (g.scheme != nullptr) {
      // GPTQ's scales are the memoryless min-max observer's, which oneshot names.
      cg.push_back({g.key, g.scheme, g.params, g.targets, actorder_,
                    gptq_                ? std::string("memoryless_minmax")
                    : !g.observer.empty() ? g.observer
                    : oneshot_            ? std::string("memoryless_minmax")
                                          : std::string()});
      if (!g.observer_kwargs.empty() && !gptq_) {
        // The observer's settings, as llm-compressor writes the args it ran with.
        Result<JsonValue> kw = ObserverKwargsFromText(g.observer_kwargs);
        if (kw.ok()) {
          cg.back().weights_observer_kwargs = std::move(*kw);
        } else {
          plan_.errors.push_back(kw.status());
        }
      }
    }
  }
  if (cg.empty() && !quantized_source && !folder_.config_changed) {
    // Pruning alone: like llm-compressor, no quantization_config; config.json is copied.
    plan_.files.push_back({*folder_.config_rel, folder_.root / *folder_.config_rel, {}});
    return;
  }
  if (cg.empty()) {
    // Expert pruning alone rewrites the expert count and, as convert_checkpoint, drops any
    // quantization_config (the pruner's update_config returns None).
    // A quantized source written decoded: its quantization_config no longer applies
    // (compressed-tensors' dequantizers drop it the same way).
    JsonValue::Object kept;
    for (const auto& [key, value] : cfg.as_object()) {
      if (key != "quantization_config") kept.emplace_back(key, value);
    }
    plan_.files.push_back({*folder_.config_rel, {}, DumpPythonJson(JsonValue(std::move(kept)))});
    return;
  }
  if (!kv_cache_.empty() && kv_layers_ == 0) {
    plan_.errors.push_back(Error(ErrorCode::kUnsupported,
                                 "--kv-cache fp8: no attention k_proj weight in this checkpoint "
                                 "(fused qkv_proj and MLA attention are not supported yet)"));
  }
  const QuantArgsDesc* kv = !kv_cache_.empty() ? &kKvCacheFp8
                            : repack_ == 2 && source_.kv_cache_fp8 ? &kKvCacheFp8Repack
                                                                   : nullptr;
  JsonValue q = BuildQuantizationConfig(cg, plan_.config_ignore, kv);
  // llm-compressor 0.14.0.1 writes an empty sparsity_config for pruned models (its writer
  // drops the structure; docs/reference-notes.md section 15). A populated dense 2:4 config
  // would send vLLM down its removed 2:4-kernel path, so quench writes the same {} and records
  // the structure in --report and `quench inspect --sparsity`.
  // oneshot (which GPTQ's output follows) writes it whether or not anything was pruned.
  if (pruning_ || oneshot_) q.Set("sparsity_config", JsonValue::MakeObject());
  if (repack_ != 0) {
    // The converters' QuantizationConfig has no transform_config (update_config builds it
    // without one).
    JsonValue::Object kept;
    for (const auto& [key, value] : q.as_object()) {
      if (key != "transform_config") kept.emplace_back(key, value);
    }
    q = JsonValue(std::move(kept));
  }
  cfg.Set("quantization_config", std::move(q));
  plan_.files.push_back({*folder_.config_rel, {}, DumpPythonJson(cfg)});
}

void Planner::PlanShards(int threads) {
  const size_t n = folder_.shards.size();
  std::vector<ShardWork> work(n);
  size_t tensors = 0;
  for (size_t si = 0; si < n; ++si) {
    ShardWork& w = work[si];
    w.first_tensor = tensors;
    for (const TensorInfo& t : folder_.shards[si].header.tensors) {
      tensors += !consumed_.contains(t.name);  // as PlanShard skips them
    }
    w.target_hits.assign(resolver_.entries().size(), 0);
    w.ignore_hits.assign(ignore_.size(), 0);
    w.group_tensors.assign(plan_.groups.size(), 0);
    w.default_hits.resize(default_patterns_.size());
  }
  plan_.tensors.resize(tensors);
  for (ShardWork& w : work) w.tensors = plan_.tensors.data() + w.first_tensor;
  plan_.shards.reserve(n);
  // Shards are planned at once where there are enough tensors for threads to pay.
  constexpr size_t kTensorsPerThread = 4096;
  finish_threads_ = WorkThreads(threads, 2, tensors, kTensorsPerThread);
  ForEachIndex(n, WorkThreads(threads, n, tensors, kTensorsPerThread),
               [&](size_t si) { PlanShard(si, work[si]); });
  for (ShardWork& w : work) MergeShard(w);
}

void Planner::MergeShard(ShardWork& w) {
  for (Status& e : w.errors) plan_.errors.push_back(std::move(e));
  resolver_.AddHits(w.target_hits);
  for (size_t i = 0; i < ignore_hits_.size(); ++i) ignore_hits_[i] += w.ignore_hits[i];
  for (size_t g = 0; g < plan_.groups.size(); ++g) plan_.groups[g].tensors += w.group_tensors[g];
  for (size_t i = 0; i < default_hits_.size(); ++i) {
    for (std::string& m : w.default_hits[i]) default_hits_[i].push_back(std::move(m));
  }
  for (std::string& m : w.left_whole) left_whole_.push_back(std::move(m));
  vector_weights_ += w.vector_weights;
  kv_layers_ += w.kv_layers;
  plan_.bytes_in += w.bytes_in;
  plan_.bytes_out += w.shard.file_size;
  plan_.shards.push_back(std::move(w.shard));
}

Plan Planner::Finish() && {
  // The index reads the shards' outputs only; the steps before PlanFiles never touch them.
  std::string index_json;
  ForEachIndex(2, finish_threads_, [&](size_t i) {
    if (i == 1) {
      index_json = IndexJson();
      return;
    }
    PlanFusedSets(plan_);
    CheckFusedConsistency(plan_);
    AddSelectionNotes();
    PlanConfigIgnore();
  });
  PlanFiles(std::move(index_json));
  return std::move(plan_);
}

}  // namespace

std::span<const DefaultIgnore> DefaultIgnores() { return kDefaultIgnores; }

Result<Plan> BuildPlan(const ModelFolder& folder, const PlanOptions& options, int threads) {
  QUENCH_ASSIGN_OR_RETURN(Planner planner, Planner::Make(folder, options));
  planner.PlanShards(threads);
  return std::move(planner).Finish();
}

}  // namespace quench
