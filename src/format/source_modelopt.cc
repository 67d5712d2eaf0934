// ModelOpt NVFP4 checkpoints (NVIDIA TensorRT Model Optimizer): per quantized Linear X,
// X.weight U8 [out, in/2] (two FP4 E2M1 codes a byte, low nibble first), X.weight_scale
// F8_E4M3 [out, in/16], X.weight_scale_2 F32 (one per tensor: the value is
// code * weight_scale * weight_scale_2) and X.input_scale F32; modules in exclude_modules are
// stored unquantized. Described by hf_quant_config.json and/or config.json's
// quantization_config (quant_method "modelopt", quant_algo "NVFP4").
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "format/file_io.h"  // ReadFileRange
#include "format/source_packed.h"
#include "format/source_quant.h"
#include "quench/tensor.h"

namespace quench {
namespace {

constexpr uint64_t kGroup = 16;  // NVFP4: one E4M3 scale per 16 inputs

// "*" and "?" globs (ModelOpt matches exclude_modules with fnmatch) as a "re:" entry; other
// names verbatim, as a user passes them to the reference converter.
std::string IgnoreEntry(const std::string& e) {
  if (e.find_first_of("*?") == std::string::npos) return e;
  std::string re = "re:";
  for (char c : e) {
    if (c == '*') re += ".*";
    else if (c == '?') re += ".";
    else re += PythonReEscape(std::string(1, c));
  }
  return re;
}

bool Glob(const char* p, const char* s) {
  if (*p == 0) return *s == 0;
  if (*p == '*') return Glob(p + 1, s) || (*s != 0 && Glob(p, s + 1));
  if (*s != 0 && (*p == '?' || *p == *s)) return Glob(p + 1, s + 1);
  return false;
}

Result<float> ReadScalar(const ModelFolder& folder, size_t shard, const TensorInfo& t) {
  const std::string at = folder.shards[shard].rel_name + ": tensor '" + t.name + "'";
  if (t.dtype != DType::kF32 || t.numel() != 1) {
    return Error(ErrorCode::kInvalidInput, at + " is " + std::string(DTypeName(t.dtype)) + " " +
                                               ShapeString(t.shape) +
                                               "; ModelOpt writes one F32 value");
  }
  float v = 0.f;
  if (Status s = ReadFileRange(folder.shards[shard].path,
                               folder.shards[shard].header.data_start + t.begin, 4,
                               reinterpret_cast<uint8_t*>(&v));
      !s.ok()) {
    return Error(ErrorCode::kIo, at + ": cannot read its value: " + s.message());
  }
  if (!std::isfinite(v) || !(v > 0.f)) {
    return Error(ErrorCode::kInvalidInput,
                 at + " is " + std::to_string(v) +
                     "; a ModelOpt per-tensor scale must be finite and positive");
  }
  return v;
}

}  // namespace

Result<std::optional<JsonValue>> FindModelOptConfig(const ModelFolder& folder, bool* found,
                                                    bool* file_only) {
  *found = false;
  std::optional<JsonValue> from_config, from_file;
  if (folder.config) {
    if (const JsonValue* q = SourceQuantizationConfig(folder); q != nullptr) {
      const JsonValue* m = q->Find("quant_method");
      if (m != nullptr && m->is_string() && m->as_string() == "modelopt") from_config = *q;
    }
  }
  for (const std::string& f : folder.other_files) {
    if (f != "hf_quant_config.json") continue;
    QUENCH_ASSIGN_OR_RETURN(JsonValue j, ReadJsonFile((folder.root / f).string()));
    const JsonValue* q = j.Find("quantization");
    if (q == nullptr || !q->is_object()) {
      return Error(ErrorCode::kInvalidInput,
                   "hf_quant_config.json: no \"quantization\" object (ModelOpt's layout)");
    }
    from_file = *q;
  }
  if (!from_config && !from_file) return std::optional<JsonValue>();
  if (folder.config && !from_config && SourceQuantizationConfig(folder) != nullptr) {
    // config.json names another method: hf_quant_config.json is a leftover (compressed-
    // tensors' converters copy it into their compressed-tensors output), config.json decides.
    return std::optional<JsonValue>();
  }
  if (from_config && from_file) {
    const JsonValue* a = from_config->Find("quant_algo");
    const JsonValue* b = from_file->Find("quant_algo");
    const std::string sa = a && a->is_string() ? a->as_string() : "";
    const std::string sb = b && b->is_string() ? b->as_string() : "";
    if (sa != sb) {
      return Error(
          ErrorCode::kInvalidInput,
          "config.json's quant_algo '" + sa + "' contradicts hf_quant_config.json's '" + sb + "'");
    }
  }
  *found = true;
  *file_only = !from_config;
  return from_file ? from_file : from_config;
}

namespace {

// The config's settings: quant_algo NVFP4 (the only one read), its group size, FP8 KV-cache
// scales, and the modules it leaves unquantized (`*exclude`).
Status ReadModelOptSettings(const JsonValue& q, const std::string& where, SourceQuantization* out,
                            std::vector<std::string>* exclude) {
  const JsonValue* algo = q.Find("quant_algo");
  const std::string a = algo && algo->is_string() ? algo->as_string() : "";
  if (a != "NVFP4") {
    return Error(ErrorCode::kUnsupported,
                 where + ": ModelOpt quant_algo '" + (a.empty() ? "(none)" : a) +
                     "': only NVFP4 checkpoints are read (compressed-tensors 0.19.0 has no "
                     "converter for ModelOpt's other formats to be exact against)");
  }
  if (const JsonValue* g = q.Find("group_size"); g && g->is_int() && g->as_int() != 16) {
    return Error(ErrorCode::kInvalidInput, where + ": group_size " + std::to_string(g->as_int()) +
                                               "; NVFP4 has one scale per 16 inputs");
  }
  if (const JsonValue* kv = q.Find("kv_cache_quant_algo"); kv && !kv->is_null()) {
    if (!kv->is_string() || kv->as_string() != "FP8") {
      return Error(
          ErrorCode::kUnsupported,
          where + ": kv_cache_quant_algo " +
              (kv->is_string() ? "'" + kv->as_string() + "'" : std::string("(not a string)")) +
              ": only FP8 KV-cache scales (k_scale / v_scale per attention) are read");
    }
    out->kv_cache_fp8 = true;
  }
  if (const JsonValue* e = q.Find("exclude_modules"); e && e->is_array()) {
    for (const JsonValue& v : e->as_array()) {
      if (v.is_string()) exclude->push_back(v.as_string());
    }
  }
  for (const std::string& e : *exclude) out->repack_ignore.push_back(IgnoreEntry(e));
  return Status::Ok();
}

// The packed weight whose weight_scale is `name` (at `loc`): its codes, scales and
// weight_scale_2 (and input_scale, where present), checked against NVFP4's layout; the
// scale tensors it takes are added to `*used`.
Result<PackedSourceWeight> PackedWeight(const ModelFolder& folder,
                                        const std::map<std::string, LocatedTensor>& found,
                                        const std::string& name, const LocatedTensor& loc,
                                        const std::vector<std::string>& exclude,
                                        SourceQuantization* out, std::set<std::string>* used) {
  const std::string module = name.substr(0, name.size() - 13);
  const std::string sat = folder.shards[loc.shard].rel_name + ": tensor '" + name + "'";
  for (const std::string& e : exclude) {
    if (Glob(e.c_str(), module.c_str())) {
      return Error(ErrorCode::kInvalidInput,
                   sat + ": its module is in exclude_modules ('" + e +
                       "') yet stored quantized (the tensors contradict the config)");
    }
  }
  auto w_it = found.find(module + ".weight");
  if (w_it == found.end()) {
    return Error(ErrorCode::kInvalidInput, sat + " has no '" + module + ".weight' beside it");
  }
  const TensorInfo& w = *w_it->second.info;
  const std::string wat = folder.shards[w_it->second.shard].rel_name + ": tensor '" + w.name + "'";
  if (w.dtype != DType::kU8 || w.shape.size() != 2 || w.shape[0] == 0 || w.shape[1] == 0) {
    return Error(ErrorCode::kInvalidInput,
                 wat + " is " + std::string(DTypeName(w.dtype)) + " " + ShapeString(w.shape) +
                     "; a ModelOpt NVFP4 weight is U8 [out, in / 2] (two FP4 codes a byte)");
  }
  const uint64_t rows = w.shape[0], cols = w.shape[1] * 2;
  const TensorInfo& s = *loc.info;
  if (s.dtype != DType::kF8E4M3) {
    return Error(ErrorCode::kInvalidInput, sat + " has dtype " + std::string(DTypeName(s.dtype)) +
                                               "; NVFP4's weight_scale is F8_E4M3");
  }
  if (cols % kGroup != 0 || s.shape != std::vector<uint64_t>{rows, cols / kGroup}) {
    return Error(ErrorCode::kInvalidInput, sat + " has shape " + ShapeString(s.shape) +
                                               "; expected " +
                                               ShapeString({rows, (cols + kGroup - 1) / kGroup}) +
                                               " (weight " + ShapeString(w.shape) + ": " +
                                               std::to_string(cols) + " inputs in groups of 16)");
  }
  PackedSourceWeight pw;
  pw.source_name = w.name;
  pw.rows = rows;
  pw.cols = cols;
  pw.group = kGroup;
  pw.codes = RefOf(folder, w_it->second);
  pw.scales = RefOf(folder, loc);
  auto s2 = found.find(module + ".weight_scale_2");
  if (s2 == found.end()) {
    return Error(ErrorCode::kInvalidInput, wat + " has no '" + module +
                                               ".weight_scale_2' in any shard (its per-tensor "
                                               "scale); it cannot be decoded");
  }
  QUENCH_ASSIGN_OR_RETURN(pw.weight_scale_2,
                          ReadScalar(folder, s2->second.shard, *s2->second.info));
  used->insert(name);
  used->insert(s2->first);
  out->packed_aux.push_back(name);
  out->packed_aux.push_back(s2->first);
  if (auto is = found.find(module + ".input_scale"); is != found.end()) {
    QUENCH_ASSIGN_OR_RETURN(float v, ReadScalar(folder, is->second.shard, *is->second.info));
    pw.input_scale = v;
    used->insert(is->first);
    out->packed_aux.push_back(is->first);
  }
  return pw;
}

// FP8 KV-cache scales: ModelOpt exports <attn>.k_proj.k_scale and <attn>.v_proj.v_scale;
// the converter keeps them beside the NVFP4 weight they hang under (else they are orphans).
Status ReadKvScales(const ModelFolder& folder, const std::map<std::string, LocatedTensor>& found,
                    SourceQuantization* out) {
  for (const auto& [name, loc] : found) {
    if (!name.ends_with(".k_scale") && !name.ends_with(".v_scale")) continue;
    const std::string at = folder.shards[loc.shard].rel_name + ": tensor '" + name + "'";
    if (!out->kv_cache_fp8) {
      return Error(ErrorCode::kInvalidInput,
                   at + " is a KV-cache scale but the config's kv_cache_quant_algo is not FP8 "
                        "(the tensors contradict the config)");
    }
    const std::string module = name.substr(0, name.size() - 8);
    if (!out->packed.contains(module + ".weight")) {
      return Error(ErrorCode::kInvalidInput,
                   at + " has no NVFP4 weight '" + module +
                       ".weight' to go with it (ModelOpt "
                       "stores k_scale under k_proj and v_scale under v_proj)");
    }
    QUENCH_ASSIGN_OR_RETURN(float v, ReadScalar(folder, loc.shard, *loc.info));
    out->kv_scales.emplace(name, v);
    out->packed_aux.push_back(name);
  }
  return Status::Ok();
}

// Every scale tensor is taken by a packed weight, and every packed weight has its scales.
Status CheckNoneLeft(const ModelFolder& folder, const std::map<std::string, LocatedTensor>& found,
                     const std::set<std::string>& used, const SourceQuantization& out) {
  for (const auto& [name, loc] : found) {
    const bool qparam = name.ends_with(".weight_scale_2") || name.ends_with(".input_scale");
    const bool packed_weight = loc.info->dtype == DType::kU8 && name.ends_with(".weight");
    if ((qparam && !used.contains(name)) || (packed_weight && !out.packed.contains(name))) {
      return Error(ErrorCode::kInvalidInput,
                   folder.shards[loc.shard].rel_name + ": tensor '" + name +
                       "' has no NVFP4 weight and weight_scale to go with it (the tensors "
                       "contradict the ModelOpt NVFP4 config)");
    }
  }
  return Status::Ok();
}

}  // namespace

Status DetectModelOpt(const ModelFolder& folder, const JsonValue& q, const std::string& where,
                      bool file_only, SourceQuantization* out) {
  out->format = SourceFormat::kModelOptNvfp4;
  std::vector<std::string> exclude;
  QUENCH_RETURN_IF_ERROR(ReadModelOptSettings(q, where, out, &exclude));
  out->own_scheme = "NVFP4";
  out->group_size = kGroup;
  const std::map<std::string, LocatedTensor> found = TensorsByName(folder);
  std::set<std::string> used;
  for (const auto& [name, loc] : found) {
    if (!name.ends_with(".weight_scale")) continue;
    QUENCH_ASSIGN_OR_RETURN(PackedSourceWeight pw,
                            PackedWeight(folder, found, name, loc, exclude, out, &used));
    std::string source_name = pw.source_name;
    out->packed.emplace(std::move(source_name), std::move(pw));
  }
  QUENCH_RETURN_IF_ERROR(ReadKvScales(folder, found, out));
  QUENCH_RETURN_IF_ERROR(CheckNoneLeft(folder, found, used, *out));
  if (out->packed.empty()) {
    if (file_only) {  // a dequantized output with the converters' leftover file
      *out = SourceQuantization{};
      return Status::Ok();
    }
    return Error(ErrorCode::kInvalidInput, where +
                                               ": quant_algo NVFP4 but no tensor is an "
                                               "NVFP4 weight with a weight_scale");
  }
  out->description = "ModelOpt NVFP4 (FP4 E2M1, E4M3 scale per 16, F32 weight_scale_2), " +
                     std::to_string(out->packed.size()) + " weights" +
                     (out->kv_cache_fp8 ? ", FP8 KV cache (" +
                                              std::to_string(out->kv_scales.size()) + " k/v scales)"
                                        : "") +
                     " (lossless repack: --scheme NVFP4 or NVFP4A16)";
  return Status::Ok();
}

}  // namespace quench
