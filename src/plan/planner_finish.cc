// What the planner does once every shard is planned, besides the fused sets: notes on what
// selection left alone and warnings for entries that select nothing, the ignore list written
// to config.json (the user's entries, the default ignores that took something, and cover for
// modules left whole), the index's bytes, and the other files with config.json's
// quantization_config as the reference writes it.
#include <filesystem>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "format/json.h"
#include "format/quant_config.h"
#include "format/units.h"
#include "plan/ignore_cover.h"
#include "plan/observer_kwargs.h"
#include "plan/planner_state.h"

namespace quench::planner_internal {
namespace {

// The size of `file` when it holds weights in a format quench does not read (PyTorch pickles,
// TensorFlow, Flax, GGUF): by its extension, and at least 1 MiB so that small pickles of
// other things (Trainer's training_args.bin) are not taken for weights; else 0.
uint64_t UnreadWeightsBytes(const std::filesystem::path& file) {
  constexpr std::string_view kWeightExtensions[] = {".bin",  ".pt", ".pth",    ".ckpt",
                                                    ".gguf", ".h5", ".msgpack"};
  const std::string ext = file.extension().string();
  bool weights = false;
  for (std::string_view e : kWeightExtensions) weights |= ext == e;
  if (!weights) return 0;
  std::error_code ec;
  const uintmax_t bytes = std::filesystem::file_size(file, ec);
  return !ec && bytes >= (uintmax_t{1} << 20) ? static_cast<uint64_t>(bytes) : 0;
}

// Whether config.json names a model with an output head (a causal or conditional-generation
// class): transformers then builds `lm_head` whether or not the checkpoint stores it.
bool HasOutputHead(const ModelFolder& folder) {
  const JsonValue* a = folder.config ? folder.config->Find("architectures") : nullptr;
  if (a == nullptr || !a->is_array() || a->as_array().empty() ||
      !a->as_array().front().is_string()) {
    return false;
  }
  const std::string& name = a->as_array().front().as_string();
  for (std::string_view end : {"ForCausalLM", "ForConditionalGeneration", "LMHeadModel"}) {
    if (name.ends_with(end)) return true;
  }
  return false;
}

// `object` with its `key` left out, the other keys in their order.
JsonValue WithoutKey(const JsonValue& object, std::string_view key) {
  JsonValue::Object kept;
  for (const auto& [k, value] : object.as_object()) {
    if (k != key) kept.emplace_back(k, value);
  }
  return JsonValue(std::move(kept));
}

}  // namespace

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

// Notes on what selection left alone, and warnings for entries that select nothing (almost
// always a typo).
void Planner::AddSelectionNotes() {
  if (repack_ != 0) {
    plan_.notes.push_back("source: " + source_.description + "; repacked losslessly into " +
                          std::string(plan_.groups.front().scheme->name) +
                          " (stored codes and scales unchanged, as compressed-tensors' " +
                          (repack_ == 1 ? "AutoAWQConverter" : "ModelOptNvfp4Converter") + ")");
  } else if (source_.format == SourceFormat::kMxfp4) {
    plan_.notes.push_back("source: " + source_.description + "; each is decoded to BF16 and "
                          "written [experts, in, out] (as transformers' Mxfp4 dequantizer, "
                          "convert_moe_packed_tensors, gives GptOssExperts its parameters)");
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
  // A tied output head (Llama 3.2 1B, Qwen2.5 0.5B, OPT: no head tensor, the embedding
  // serves) is written as if it were there: transformers builds `lm_head` as a Linear, and its
  // compressed-tensors load would quantize it and fail ("Linear has no attribute `weight`").
  // vLLM ties the head unquantized either way.
  const bool tied_head = !default_hits_.empty() && default_hits_[0].empty() &&
                         default_hits_[1].empty() && !ignore_m_.Matches("lm_head") &&
                         HasOutputHead(folder_);
  if (tied_head) {
    plan_.config_ignore.push_back(default_patterns_[0]);
    plan_.notes.push_back("written to ignore: lm_head (the checkpoint stores no output head: "
                          "it is tied to the embedding, which transformers would otherwise "
                          "look for quantized)");
  }
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
    const DefaultIgnore& d = DefaultIgnores()[i];
    plan_.notes.push_back("left unquantized by default (" + std::string(d.what) + "; " +
                          std::string(d.why) + "): " + list +
                          "  [--no-default-ignore quantizes it]");
  }
  // Then every targeted module left unquantized that no entry covers yet: compressed-tensors
  // and transformers read the groups' "Linear" target as every module and would look for its
  // scales. model_free_ptq writes no such entry because it aborts on these modules instead.
  std::set<std::string> stacks;  // experts modules whose stacks are kept whole
  for (const std::string& name : folder_.kept_whole) {
    const std::string_view module = SplitModuleParam(name).first;
    if (resolver_.Resolve(module) >= 0 && ignore_m_.FirstMatch(module) < 0 &&
        defaults_.FirstMatch(module) < 0) {
      left_whole_.emplace_back(module);
      stacks.emplace(module);
    }
  }
  if (left_whole_.empty()) return;
  std::vector<std::string> quantized;  // every quantized module, for the shapes they take
  for (const PlannedTensor& t : plan_.tensors) {
    if (t.action == TensorAction::kQuantize) quantized.emplace_back(SplitModuleParam(t.name).first);
  }
  for (std::string& entry : CoverWithIgnore(left_whole_, quantized, stacks)) {
    plan_.notes.push_back("written to ignore (left unquantized, see above): " + entry);
    plan_.config_ignore.push_back(std::move(entry));
  }
}

// The config groups written to quantization_config: each quantizing group with the observer
// the reference names for its run. Observer settings that do not parse are plan errors.
std::vector<ConfigGroup> Planner::ConfigGroups() {
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
  return cg;
}

// Other files: copied unchanged, except the index (`index_json`) and config which are
// regenerated. They are published in this order, config last.
size_t Planner::PlanFiles(std::string index_json) {
  if (!folder_.unindexed.empty()) {
    std::string names;
    for (const std::string& n : folder_.unindexed) names += (names.empty() ? "" : ", ") + n;
    plan_.notes.push_back(
        names + ": " + *folder_.index_rel + " names none of " +
        (folder_.unindexed.size() == 1 ? "its" : "their") +
        " tensors; converted and indexed with the other shards, as model_free_ptq converts "
        "every .safetensors file. If it is another copy of the model (Mistral's "
        "consolidated.safetensors), leave it out of SRC: it doubles DST, and vLLM reads every "
        "shard the index lists");
  }
  std::string unread;  // weights in other formats, copied as the reference copies them
  uint64_t unread_bytes = 0;
  for (const std::string& f : folder_.other_files) {
    if ((folder_.index_rel && f == *folder_.index_rel) ||
        (folder_.config_rel && f == *folder_.config_rel)) {
      continue;
    }
    plan_.files.push_back({f, folder_.root / f, {}});
    if (const uint64_t bytes = UnreadWeightsBytes(folder_.root / f)) {
      unread += (unread.empty() ? "" : ", ") + f;
      unread_bytes += bytes;
    }
  }
  if (!unread.empty()) {
    // model_free_ptq copies them too, warning that it skips them (spec 6.7). Hugging Face
    // repositories ship such copies (Llama's original/*.pth, pytorch_model*.bin): for a big
    // model they are as large as the model, and nothing that loads DST reads them.
    plan_.notes.push_back("copied unchanged, not quantized (weights in a format quench does not "
                          "read; vLLM and transformers load the safetensors shards): " + unread +
                          " (" + FormatBytes(unread_bytes) + "); leave them out of SRC to "
                          "save the space and the time");
  }
  // Written even for a single-file model, under the source index's name or the default one
  // (compressed_tensors utils/safetensors_load.py::update_safetensors_index).
  const size_t index = plan_.files.size();
  plan_.files.push_back({folder_.index_rel.value_or("model.safetensors.index.json"), {},
                         std::move(index_json)});
  if (!folder_.config) {
    plan_.notes.push_back("warning: no config.json or params.json in the source; the "
                          "quantization_config is not written anywhere");
    return index;
  }
  JsonValue cfg = *folder_.config;
  const bool quantized_source = source_.format != SourceFormat::kPlain;
  // A source's quantization_config kept in text_config (Kimi K2.5 / K2.6) no longer applies
  // either: the one written (or none) is at the top level, where vLLM and transformers look
  // first, and a stale nested one must not remain beside it.
  if (quantized_source && QuantizationConfigInTextConfig(folder_)) {
    cfg.Set("text_config", WithoutKey(*cfg.Find("text_config"), "quantization_config"));
  }
  if (cfg.Find("quantization_config") != nullptr && !quantized_source) {
    plan_.notes.push_back("warning: " + *folder_.config_rel +
                          " already has a quantization_config; it is replaced");
  }
  std::vector<ConfigGroup> cg = ConfigGroups();
  if (cg.empty() && !quantized_source && !folder_.config_changed) {
    // Pruning alone: like llm-compressor, no quantization_config; config.json is copied.
    plan_.files.push_back({*folder_.config_rel, folder_.root / *folder_.config_rel, {}});
    return index;
  }
  if (cg.empty()) {
    // Expert pruning alone rewrites the expert count and, as convert_checkpoint, drops any
    // quantization_config (the pruner's update_config returns None).
    // A quantized source written decoded: its quantization_config no longer applies
    // (compressed-tensors' dequantizers drop it the same way).
    plan_.files.push_back(
        {*folder_.config_rel, {}, DumpPythonJson(WithoutKey(cfg, "quantization_config"))});
    return index;
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
    q = WithoutKey(q, "transform_config");
  }
  cfg.Set("quantization_config", std::move(q));
  plan_.files.push_back({*folder_.config_rel, {}, DumpPythonJson(cfg)});
  return index;
}

}  // namespace quench::planner_internal

namespace quench {

namespace {

// Every output's (name, shard) in plan order, and their bytes: source tensors in each shard's
// file order (by name, as safetensors writes them), each tensor's outputs after it
// ("X.weight", "X.weight_scale"): nearly one sorted run per shard, where the shards' outputs
// in file order (by dtype, then name) were a run per dtype whose merge compared every name.
// Every output is one tensor's, so the entries are the same; BuildIndexJson's sort is stable
// and equal names (only possible in different shards) keep shard order either way.
template <class Fn>
uint64_t ForEachIndexEntry(const Plan& plan, Fn&& fn) {
  uint64_t total_size = 0;
  size_t outputs = 0, listed = 0;
  for (const PlannedShard& ps : plan.shards) outputs += ps.outputs.size();
  for (const PlannedTensor& t : plan.tensors) listed += t.outputs.size();
  if (listed == outputs) {
    for (const PlannedTensor& t : plan.tensors) {
      const PlannedShard& ps = plan.shards[t.shard];
      for (size_t o : t.outputs) {
        total_size += ps.outputs[o].nbytes;
        fn(std::string_view(ps.outputs[o].name), std::string_view(ps.rel_name));
      }
    }
    return total_size;
  }
  // An output no tensor lists: every shard's, in file order.
  for (const PlannedShard& ps : plan.shards) {
    for (const PlannedOutput& o : ps.outputs) {
      total_size += o.nbytes;
      fn(std::string_view(o.name), std::string_view(ps.rel_name));
    }
  }
  return total_size;
}

}  // namespace

std::string PlanIndexJson(const Plan& plan) {
  size_t outputs = 0;
  for (const PlannedShard& ps : plan.shards) outputs += ps.outputs.size();
  std::vector<std::pair<std::string_view, std::string_view>> weight_map;  // tensor -> shard
  weight_map.reserve(outputs);
  const uint64_t total_size = ForEachIndexEntry(
      plan,
      [&](std::string_view name, std::string_view shard) { weight_map.emplace_back(name, shard); });
  return BuildIndexJson(std::move(weight_map), total_size);
}

uint64_t PlanIndexJsonSize(const Plan& plan) {
  uint64_t entries = 0, text = 0;
  std::string_view last_shard;
  uint64_t last_shard_size = 0;
  const uint64_t total_size = ForEachIndexEntry(plan, [&](std::string_view name,
                                                          std::string_view shard) {
    if (entries == 0 || shard.data() != last_shard.data() || shard.size() != last_shard.size()) {
      last_shard = shard;
      last_shard_size = JsonStringPythonSize(shard);
    }
    ++entries;
    text += IndexEntrySize(JsonStringPythonSize(name), last_shard_size);
  });
  return IndexJsonSize(entries, text, total_size);
}

}  // namespace quench
