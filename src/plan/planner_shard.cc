// Planning one shard: each tensor selected by the compressed-tensors rule (targets, ignore
// list, quench's default ignores), checked, and planned as a copy, a decode, a prune or the
// scheme's outputs; KV-cache scales beside each k_proj; then the shard's output file laid out
// (offsets, header, slabs, output names written twice). A shard reads the planner's settings
// only and writes its own ShardWork, so shards are planned in parallel.
#include <algorithm>
#include <string>
#include <vector>

#include "format/parallel.h"
#include "format/sorted_runs.h"
#include "plan/planner_state.h"

namespace quench::planner_internal {
namespace {

// The names that repeat in a shard's outputs, each as often as it repeats (a name written
// three times: twice), in name order. The outputs are in file order, sorted by dtype and then
// by name, so a name repeated within one dtype sits next to itself, and the dtypes' runs,
// merged by name, bring together a name repeated across dtypes: a pass over the names in
// order, comparing each with the one before (a table of every name costs a random access
// per name).
std::vector<std::string_view> RepeatedNames(const std::vector<PlannedOutput>& tensors) {
  std::vector<std::pair<size_t, size_t>> runs;  // [begin, end) of each dtype's run
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (i == 0 || tensors[i].dtype != tensors[i - 1].dtype) runs.emplace_back(i, i);
    runs.back().second = i + 1;
  }
  std::vector<std::string_view> repeated;
  const std::string* previous = nullptr;
  while (true) {
    // The run whose next name comes first (a few dtypes: a scan of the runs).
    std::pair<size_t, size_t>* next = nullptr;
    for (auto& r : runs) {
      if (r.first < r.second &&
          (next == nullptr || tensors[r.first].name < tensors[next->first].name)) {
        next = &r;
      }
    }
    if (next == nullptr) break;
    const std::string& name = tensors[next->first++].name;
    if (previous != nullptr && *previous == name) repeated.emplace_back(name);
    previous = &name;
  }
  return repeated;
}

}  // namespace

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

std::string Planner::QuantizeProblem(std::string_view rel_name, const TensorInfo& t,
                                     DType dtype, const SchemeInfo* scheme,
                                     const SchemeParams& params) const {
  // Named only where there is a problem (most tensors have none: on a many-expert checkpoint
  // the name was three allocations for each of 10^5 tensors).
  const auto where = [&] { return std::string(rel_name) + ": tensor '" + t.name + "'"; };
  if (t.shape.size() != 2) {
    return where() + " is targeted for " +
           (scheme ? std::string(scheme->name) : std::string("pruning")) + " but has shape " +
           ShapeString(t.shape) + "; only 2-D weights can be quantized (add it to --ignore)";
  }
  if (!IsQuantizableFloat(dtype)) {
    return where() + " has dtype " + std::string(DTypeName(dtype)) +
           "; only BF16, F16 and F32 weights can be quantized (add it to --ignore, or "
           "dequantize the checkpoint first)";
  }
  if (scheme != nullptr && scheme->check_shape != nullptr) {
    const std::string why = scheme->check_shape(t.shape[0], t.shape[1], params);
    if (!why.empty()) {
      return where() + " " + ShapeString(t.shape) + ": " + why + " for " +
             std::string(scheme->name) + "; add it to --ignore or pick another scheme";
    }
  }
  if (pruning_) {
    Status ps = prune::CheckShape(prune_spec_, t.shape[0], t.shape[1]);
    if (!ps.ok()) return where() + ": " + ps.message();
  }
  return {};
}

Status Planner::TargetedProblem(const TensorInfo& t, const std::string& rel_name,
                                const PlannedTensor& pt, const PlannedGroup& g) const {
  if (!pt.src_ranges.empty() || folder_.sliced.contains(t.name)) {
    // A router or expert stack sliced to the kept experts is gathered from several ranges of
    // its source; only the copy path reads such pieces. (Refused also where the kept rows are
    // adjacent, one range, so that the run does not depend on which experts were kept.)
    return Error(
        ErrorCode::kUnsupported,
        rel_name + ": tensor '" + t.name + "' is sliced to the kept experts (--prune-experts) "
        "and can only be copied, not " + (g.scheme ? "quantized" : "pruned") +
        "; add its module to --ignore (vLLM loads routers unquantized)");
  }
  const std::string problem = QuantizeProblem(rel_name, t, pt.compute_dtype, g.scheme, g.params);
  if (!problem.empty()) return Error(ErrorCode::kUnsupported, problem);
  if (pruning_ && plan_.prune.per_tensor && pt.source_scale) {
    // The per-tensor threshold's pre-pass walks a whole tensor's stored values; a quantized
    // source's are decoded chunk by chunk only.
    const std::string how = pt.source_scale->packed_kind == PackedKind::kLinear
                                ? "is read transposed out of a Llama 4 expert stack"
                                : "is stored quantized (" + std::string(DTypeName(t.dtype)) + ")";
    return Error(ErrorCode::kUnsupported,
                 rel_name + ": tensor '" + t.name + "' " + how +
                     "; --prune-granularity tensor cannot read decoded weights yet (use row "
                     "pruning)");
  }
  return Status();
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
  // Each problem is recorded and the tensor planned as a copy, so that planning goes on and
  // --dry-run can list every error a real run would stop at.
  if (Status problem = TargetedProblem(t, rel_name, pt, g); !problem.ok()) {
    w.errors.push_back(std::move(problem));
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
    std::string name;
    name.reserve(module.size() + 1 + o.suffix.size());
    name.append(module).append(1, '.').append(o.suffix);
    specs.push_back({std::move(name), o.dtype, std::move(o.shape), o.nbytes});
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
  order.reserve(shard.header.tensors.size());
  for (const TensorInfo& t : shard.header.tensors) order.push_back(&t);
  const auto by_offset = [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin < b->begin;
  };
  // Headers mostly list tensors in file order already: checked in one pass first (strictly
  // increasing, the one order std::sort gives whatever it does with ties).
  if (std::adjacent_find(order.begin(), order.end(),
                         [&](const TensorInfo* a, const TensorInfo* b) {
                           return !by_offset(a, b);
                         }) != order.end()) {
    std::sort(order.begin(), order.end(), by_offset);
  }
  if (folder_.experts_renumbered) {
    // Kept experts renumbered densely (expert 10 of the source may now be 5) sit in file order
    // by their old names, while outputs are laid out by new name within a dtype, as the
    // source was: planned in file order, a chunk of experts scattered its outputs into many
    // runs, each with partial blocks at both ends written alone (bench/README.md, "Experts
    // renumbered: planned in output order"). Each run of one dtype is planned in name order
    // instead; a kept expert's tensors are still read whole, each a contiguous range.
    for (auto run = order.begin(); run != order.end();) {
      const DType dtype = (*run)->dtype;
      auto end = std::find_if(run, order.end(),
                              [&](const TensorInfo* t) { return t->dtype != dtype; });
      SortByRuns(run, end,
                 [](const TensorInfo* a, const TensorInfo* b) { return a->name < b->name; });
      run = end;
    }
  }
  // Sized once: a tensor has at most a few outputs (a quantized weight up to four, a copy
  // one), and capacity never written to costs no memory.
  std::vector<TensorSpec> specs;
  specs.reserve(4 * order.size());
  std::vector<size_t> specs_per_tensor;
  specs_per_tensor.reserve(order.size());
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
    if (auto g = folder_.gathered.find(source_t->name); g != folder_.gathered.end()) {
      for (const auto& [begin, len] : g->second) {
        pt.src_ranges.emplace_back(shard.header.data_start + begin, len);
      }
    }
    const size_t before = specs.size();
    if (!PlanRepacked(*source_t, index, pt, specs, w)) {
      PlanTensor(*lt, shard.rel_name, pt, specs, w);
    }
    if (pt.source_scale &&
        (pt.source_scale->ct || pt.source_scale->packed_kind == PackedKind::kMxfp4) &&
        pt.shape.size() == 3) {
      // A 3-D compressed-tensors or MXFP4 stack (written decoded, 3-D): the pipeline reads it
      // as experts * rows rows, chunk by chunk (schemes/ct_stack.h and schemes/mxfp4_stack.h
      // decode across experts).
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
  // specs are in plan order (each tensor's outputs in slot order); the outputs are made from
  // them in file order, and `position` maps each spec to its output.
  SafetensorsPlacement place = PlaceSafetensors(specs);
  std::vector<size_t> position(specs.size());
  ps.outputs.reserve(specs.size());
  AdviseHugePages(ps.outputs.data(), specs.size() * sizeof(PlannedOutput));
  // Each output made in place, in file order, rather than the array value-initialised and
  // then overwritten: one pass over its memory instead of two.
  for (size_t k = 0; k < place.order.size(); ++k) {
    const size_t i = place.order[k];
    position[i] = k;
    TensorSpec& t = specs[i];
    ps.outputs.push_back({.name = std::move(t.name),
                          .dtype = t.dtype,
                          .shape = std::move(t.shape),
                          .file_offset = place.data_start + place.begin[i],
                          .nbytes = t.nbytes,
                          .rows_per_slab = 0,
                          .bytes_per_slab = t.nbytes});
  }
  // An output name written twice, reported in name order.
  for (std::string_view name : RepeatedNames(ps.outputs)) {
    w.errors.push_back(Error(ErrorCode::kInvalidInput,
                                 shard.rel_name + ": output tensor '" + std::string(name) +
                                     "' would be written twice (the source already has a "
                                     "tensor of that name); add its module to --ignore"));
  }
  size_t next_spec = 0, next_slab = 0;
  for (size_t k = 0; k < specs_per_tensor.size(); ++k) {
    PlannedTensor& pt = w.tensors[k];
    const bool quantized = pt.action == TensorAction::kQuantize;
    pt.outputs.reserve(specs_per_tensor[k]);
    // The tensor's own outputs (the scheme's, each with its slab; or the tensor copied, with
    // none), then any KV-cache scales planned beside it (AppendKvScales: a slab each).
    for (size_t j = 0; j < specs_per_tensor[k]; ++j) {
      const size_t oi = position[next_spec++];
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
  ps.header = std::move(place.header);
  ps.file_size = place.file_size;
}

}  // namespace quench::planner_internal
