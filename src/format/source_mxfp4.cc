// gpt-oss's MXFP4 checkpoints (quant_method "mxfp4", transformers' Mxfp4HfQuantizer): each MoE
// expert stack P (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`) is stored as
//   P_blocks U8 [experts, out, in / 32, 16]: two E2M1 codes a byte, the low nibble first;
//   P_scales U8 [experts, out, in / 32]: an E8M0 exponent per 32 inputs, 2^(e - 127);
// and stands for the BF16 parameter transformers' GptOssExperts holds, [experts, in, out]:
// transformers' convert_moe_packed_tensors decodes each expert's [out, in] and transposes it
// (integrations/mxfp4.py). Everything else (attention, router, biases, sinks) is BF16.
#include <map>
#include <set>
#include <vector>

#include "format/source_packed.h"
#include "format/source_quant.h"
#include "quench/tensor.h"

namespace quench {
namespace {

constexpr std::string_view kBlocks = "_blocks";
constexpr std::string_view kScales = "_scales";
constexpr uint64_t kGroup = 32;  // the MX block: inputs per E8M0 scale

std::string At(const ModelFolder& folder, const LocatedTensor& l) {
  return folder.shards[l.shard].rel_name + ": tensor '" + l.info->name + "'";
}

// Where expert pruning gathered `l` from several runs of its shard (format/model_folder.h
// `gathered`): each kept expert's absolute offset, in order; empty when it is one run.
std::vector<uint64_t> ExpertOffsets(const ModelFolder& folder, const LocatedTensor& l) {
  auto g = folder.gathered.find(l.info->name);
  if (g == folder.gathered.end()) return {};
  const uint64_t per_expert = l.info->nbytes() / l.info->shape[0];
  const uint64_t base = folder.shards[l.shard].header.data_start;
  std::vector<uint64_t> at;
  for (const auto& [begin, len] : g->second) {
    for (uint64_t o = 0; o < len; o += per_expert) at.push_back(base + begin + o);
  }
  return at;
}

}  // namespace

Status DetectGptOssMxfp4(const ModelFolder& folder, const std::string& where,
                         SourceQuantization* out) {
  out->format = SourceFormat::kMxfp4;
  out->group_size = kGroup;
  const std::map<std::string, LocatedTensor> found = TensorsByName(folder);
  std::set<std::string> used;
  for (const auto& [name, loc] : found) {
    if (!name.ends_with(kBlocks)) continue;
    const std::string param = name.substr(0, name.size() - kBlocks.size());
    const TensorInfo& b = *loc.info;
    if (b.dtype != DType::kU8 || b.shape.size() != 4 || b.shape[3] != 16 || b.shape[0] == 0 ||
        b.shape[1] == 0 || b.shape[2] == 0) {
      return Error(ErrorCode::kInvalidInput,
                   At(folder, loc) + " is " + std::string(DTypeName(b.dtype)) + " " +
                       ShapeString(b.shape) + "; an MXFP4 _blocks tensor is U8 [experts, "
                       "out_features, in_features / 32, 16]");
    }
    auto s = found.find(param + std::string(kScales));
    if (s == found.end()) {
      return Error(ErrorCode::kInvalidInput,
                   At(folder, loc) + " has no '" + param + std::string(kScales) +
                       "' in any shard (its E8M0 scales); it cannot be decoded");
    }
    const TensorInfo& st = *s->second.info;
    const std::vector<uint64_t> want = {b.shape[0], b.shape[1], b.shape[2]};
    if (st.dtype != DType::kU8 && st.dtype != DType::kF8E8M0) {
      return Error(ErrorCode::kInvalidInput,
                   At(folder, s->second) + " has dtype " + std::string(DTypeName(st.dtype)) +
                       "; MXFP4 scales are U8 (E8M0 exponents)");
    }
    if (st.shape != want) {
      return Error(ErrorCode::kInvalidInput,
                   At(folder, s->second) + " has shape " + ShapeString(st.shape) + "; expected " +
                       ShapeString(want) + " (one scale per 32 inputs of " + name + " " +
                       ShapeString(b.shape) + ")");
    }
    if (found.contains(param)) {
      return Error(ErrorCode::kInvalidInput,
                   At(folder, loc) + " decodes to '" + param + "', which the checkpoint also "
                   "holds; one of the two would be lost");
    }
    used.insert(st.name);
    PackedSourceWeight w;
    w.source_name = name;
    w.experts = b.shape[0];
    w.rows = b.shape[1];
    w.cols = b.shape[2] * kGroup;
    w.group = kGroup;
    w.codes = RefOf(folder, loc);
    w.scales = RefOf(folder, s->second);
    w.codes_at = ExpertOffsets(folder, loc);
    w.scales_at = ExpertOffsets(folder, s->second);
    if (auto k = folder.kept_experts.find(name); k != folder.kept_experts.end()) w.kept = k->second;
    out->packed_aux.push_back(st.name);
    out->packed.emplace(param, std::move(w));
  }
  for (const auto& [name, loc] : found) {
    if (name.ends_with(kScales) && !used.contains(name)) {
      return Error(ErrorCode::kInvalidInput,
                   At(folder, loc) + " has no '" +
                       name.substr(0, name.size() - kScales.size()) + std::string(kBlocks) +
                       "' beside it (the tensors contradict the config's quant_method mxfp4)");
    }
  }
  if (out->packed.empty()) {
    return Error(ErrorCode::kInvalidInput,
                 where + ": quant_method 'mxfp4' but no tensor is an MXFP4 _blocks tensor");
  }
  out->description = "gpt-oss MXFP4 (E2M1 codes, an E8M0 scale per 32 inputs), " +
                     std::to_string(out->packed.size()) + " expert stacks";
  return Status::Ok();
}

}  // namespace quench
