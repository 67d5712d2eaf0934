// The planner's view of a quantized source (format/source_quant.h): whether the run repacks
// the source's own scheme, each FP8, compressed-tensors or packed weight's source scale, a
// compressed-tensors weight seen as the tensor it decodes to, a packed weight seen as the
// weight it stands for, and the tensors a lossless repack writes (AutoAWQ, ModelOpt NVFP4).
#include <cstring>
#include <string>
#include <vector>

#include "format/source_ct.h"
#include "plan/planner_state.h"
#include "schemes/float_formats.h"

namespace quench::planner_internal {

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

std::optional<PlannedSourceScale> Planner::SourceScaleOf(const TensorInfo& t) const {
  if (auto lp = folder_.linear_pieces.find(t.name); lp != folder_.linear_pieces.end()) {
    const ModelFolder::LinearPiece& l = lp->second;
    PlannedSourceScale s;
    s.name = l.stack;
    s.shard = l.shard;
    s.offset = folder_.shards[l.shard].header.data_start + l.block;
    s.nbytes = l.in * l.cols * 2;
    s.dtype = DType::kBF16;
    s.packed_kind = PackedKind::kLinear;
    s.stack_cols = l.cols;
    s.col0 = l.col0;
    s.expert = l.expert;
    return s;
  }
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
    s.packed_kind = source_.format == SourceFormat::kAwq             ? PackedKind::kAwq
                    : source_.format == SourceFormat::kModelOptNvfp4 ? PackedKind::kModelOptNvfp4
                                                                     : PackedKind::kMxfp4;
    s.repack = repack_ == 1;
    s.group = w.group;
    if (w.zeros) s.zeros = std::make_pair(w.zeros->shard, w.zeros->offset);
    s.weight_scale_2 = w.weight_scale_2;
    s.input_scale = w.input_scale.value_or(0.f);
    s.codes_at = w.codes_at;
    s.scales_at = w.scales_at;
    s.kept = w.kept;
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
  // A gpt-oss MXFP4 stack is written [experts, in, out], each expert's [out, in] transposed.
  view->shape = w.experts > 0 ? std::vector<uint64_t>{w.experts, w.cols, w.rows}
                              : std::vector<uint64_t>{w.rows, w.cols};
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

}  // namespace quench::planner_internal
