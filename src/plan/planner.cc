// The planner's entry: BuildPlan makes the planner from the options (Planner::Make: source
// detection, groups, matchers, the flags that shape config.json), plans every shard (in
// parallel where that pays, merged in shard order so the plan is the same for any thread
// count) and finishes. The planner's class is in plan/planner_state.h; its other steps are in
// planner_sources.cc, planner_shard.cc and planner_finish.cc.
#include "plan/planner.h"

#include <atomic>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "format/parallel.h"
#include "plan/fused_plan.h"
#include "plan/groups.h"
#include "plan/planner_state.h"
#include "schemes/prune.h"

namespace quench {
namespace {

// Data, not a chain of name checks: extend this table to cover a new architecture's names.
constexpr std::string_view kVllm = "vLLM loads it unquantized";
// Quantized multimodal releases keep their encoders and projectors in BF16 (llm-compressor's
// multimodal examples ignore `re:.*vision_tower.*` and `re:.*multi_modal_projector.*`; Kimi
// K2.5's ignore list covers `vision_tower.*` and `mm_projector.*`). The component may come
// first (older transformers layouts, `vision_tower.`) or second (`model.vision_tower.`,
// transformers 5, `thinker.visual.`), which NameMatcher answers without the regex.
constexpr std::string_view kReleases = "quantized multimodal releases keep it unquantized";
constexpr DefaultIgnore kDefaultIgnores[] = {
    // The output head's two entries come first: PlanConfigIgnore writes the first for a tied
    // head when neither took a tensor.
    {"lm_head", "output head", kVllm},
    // The head under a prefix: older multimodal layouts (`language_model.lm_head`: Llava,
    // Llama 4, Mllama, Mistral 3), MiniCPM-V's `llm.lm_head`. It also covers a bare `lm_head`,
    // the name transformers 5 and vLLM give the same module after renaming.
    {"re:(.*\\.)?lm_head$", "output head", kVllm},
    {"re:.*embed_tokens$", "token embedding", kVllm},
    {"re:.*(word|position|token_type)_embeddings$", "embedding", kVllm},
    {"re:(.*\\.)?(wte|wpe|tok_embeddings)$", "embedding", kVllm},
    {"re:.*mlp\\.gate$", "MoE router gate", kVllm},
    {"re:.*(mlp|feed_forward)\\.router$", "MoE router", kVllm},  // gpt-oss, Llama 4
    // Mixtral and PhiMoE store block_sparse_moe.gate; transformers 5 renames the block `mlp`
    // and PhiMoE's router `router` (a Linear), and the written entry must match those names
    // too, or its load quantizes the router ("'PhimoeTopKRouter' object has no attribute
    // 'weight'").
    {"re:.*(block_sparse_moe|mlp)\\.(gate|router)$", "MoE router gate", kVllm},
    {"re:.*shared_expert_gate$", "shared-expert gate", kVllm},
    // The other names vLLM 0.32.0's model files build without the quantization config
    // (GateLinear routers, ParallelLMHead, VocabParallelEmbedding and nn.Embedding, plain
    // nn.Linear, quant_config=None), as checkpoints name them.
    {"re:.*(mixer|moe|feed_forward)\\.gate$", "MoE router gate", kVllm},  // Nemotron-H, Step3, LFM2
    // DBRX and Granite MoE (router.layer), Gemma 4 (router.proj), LongCat-Flash (classifier).
    {"re:.*router\\.(layer|proj|classifier)$", "MoE router", kVllm},
    // Mamba mixers' and linear attention's convolutions (Nemotron-H, Qwen3-Next, Jamba,
    // Granite 4.0-H: conv1d; LFM2's short convolutions: conv.conv): [channels, 1, kernel]
    // weights, which no scheme quantizes.
    {"re:.*(conv1d|conv\\.conv)$", "convolution", kVllm},
    // Mamba-1 mixers (Jamba's `mamba.`; mamba_mixer.py passes no quantization config), unlike
    // Mamba-2's (Nemotron-H, Falcon-H1), whose in_proj and out_proj vLLM quantizes.
    {"re:.*mamba\\.(in_proj|out_proj)$", "Mamba-1 mixer projection", kVllm},
    {"re:.*(x_proj|dt_proj)$", "Mamba-1 mixer projection", kVllm},
    // Multi-token-prediction layers (DeepSeek V3, GLM-4.5): eh_proj is a plain nn.Linear,
    // shared_head.head a ParallelLMHead (deepseek_mtp.py, glm4_moe_mtp.py).
    {"re:.*\\.eh_proj$", "MTP input projection", kVllm},
    {"re:.*shared_head\\.head$", "MTP output head", kVllm},
    // ERNIE 4.5's MTP layer: mtp_linear_proj is a plain nn.Linear (ernie_mtp.py). Its one name
    // in the released checkpoints (one MTP layer), exact: a regex ending in an index would run
    // on every module of a 70k-tensor checkpoint (NameMatcher's suffix test cannot reject it).
    {"model.mtp_linear_proj.0", "MTP input projection", kVllm},
    // DeepSeek V3.2's indexer: wk and weights_proj are one unquantized GEMM in vLLM.
    {"re:.*indexer\\.(wk|weights_proj)$", "sparse-attention indexer key and weights", kVllm},
    {"re:(.*\\.)?output_layer$", "output head", kVllm},  // ChatGLM, GLM-4
    {"output", "output head", kVllm},                    // InternLM2
    // OPT and Whisper (embed_positions), CLIP and SigLIP text towers, Gemma 3n and 4 (per
    // layer), Mamba and Nemotron-H (backbone.embeddings).
    {"re:.*(embed_positions|position_embedding|token_embedding|embed_tokens_per_layer)$",
     "embedding", kVllm},
    {"re:(.*\\.)?embeddings$", "embedding", kVllm},
    {"re:([^.]+\\.)?(vision_tower|vision_model|visual|vision|vision_encoder|"
     "vision_embed_tokens|embed_vision|audio_tower|embed_audio)\\..*",
     "vision or audio encoder", kReleases},
    {"re:([^.]+\\.)?(multi_modal_projector|mm_projector|projector|connector)\\..*",
     "multimodal projector", kReleases},
};

}  // namespace

namespace planner_internal {

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
  for (const auto& [weight, pw] : p.source_.packed)
    p.packed_by_source_.emplace(pw.source_name, weight);
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

void Planner::PlanShards(int threads, std::vector<PlannedTensor> storage) {
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
  // Value-initialised entries either way: made here, or (most of them) made already. Made
  // ones beyond the count (a quantized source's scale tensors, planned with their weights)
  // would stay allocated for the run: taken only where they are few.
  if (storage.size() <= tensors + tensors / 8) plan_.tensors = std::move(storage);
  plan_.tensors.resize(tensors);
  for (ShardWork& w : work) w.tensors = plan_.tensors.data() + w.first_tensor;
  shard_ranges_.resize(n);
  shard_scans_.resize(n);
  for (size_t si = 0; si < n; ++si) {
    shard_ranges_[si] = {work[si].first_tensor, si + 1 < n ? work[si + 1].first_tensor : tensors};
  }
  plan_.shards.reserve(n);
  // Shards are planned at once where there are enough tensors for threads to pay.
  constexpr size_t kTensorsPerThread = 4096;
  finish_threads_ = WorkThreads(threads, 2, tensors, kTensorsPerThread);
  // A thread that finishes a shard with none left to take, while another is still planning
  // one, scans its shard for the fused-set check (Finish's first step) instead of waiting:
  // shards of unequal size (Kimi's) leave one thread idle at the end (bench/README.md,
  // kimi-s38). Which shards are scanned here depends on timing; the parts are merged in plan
  // order whatever they are, so the errors do not.
  std::atomic<size_t> taken{0}, planned{0};
  ForEachIndex(n, WorkThreads(threads, n, tensors, kTensorsPerThread), [&](size_t si) {
    taken.fetch_add(1);
    PlanShard(si, work[si]);
    const size_t done = planned.fetch_add(1) + 1;
    if (finish_threads_ > 1 && taken.load() == n && done < n) {
      shard_scans_[si].emplace(plan_, shard_ranges_[si].first, shard_ranges_[si].second);
    }
  });
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

Plan Planner::Finish(LateIndex* late_index) && {
  // The index (or, made later, its length) reads the shards' outputs and the tensors' output
  // lists only; the steps before PlanFiles never touch them.
  // Without the index's text the other side has little to do: it takes the second half of
  // what is left of the fused-set check (the parts merged in plan order after), which reads
  // the tensors' names, shapes and groups, none of which the first side writes.
  // The check's parts in plan order: the shards scanned in PlanShards, and the ranges of the
  // others (neighbours joined), one side's or split between the two by count.
  struct Part {
    size_t begin, end;
    std::optional<FusedSetScan> scan;
    int side = 0;
  };
  std::vector<Part> parts;
  size_t left = 0;  // tensors not yet scanned
  for (size_t si = 0; si < shard_ranges_.size(); ++si) {
    const auto [begin, end] = shard_ranges_[si];
    if (shard_scans_[si]) {
      parts.push_back({begin, end, std::move(shard_scans_[si])});
      continue;
    }
    left += end - begin;
    if (!parts.empty() && !parts.back().scan && parts.back().end == begin) {
      parts.back().end = end;
    } else {
      parts.push_back({begin, end, std::nullopt});
    }
  }
  shard_scans_.clear();
  if (late_index != nullptr) {
    // The second side scans from the part holding the middle unscanned tensor on (that part
    // split there).
    size_t first_side = left / 2;
    for (size_t k = 0; k < parts.size(); ++k) {
      if (parts[k].scan) continue;
      const size_t count = parts[k].end - parts[k].begin;
      if (first_side >= count) {
        first_side -= count;
        continue;
      }
      if (first_side > 0) {
        const size_t middle = parts[k].begin + first_side;
        parts.insert(parts.begin() + static_cast<std::ptrdiff_t>(k) + 1,
                     Part{middle, parts[k].end, std::nullopt});
        parts[k].end = middle;
        ++k;
      }
      for (; k < parts.size(); ++k) parts[k].side = 1;
      break;
    }
  }
  const auto scan = [&](int side) {
    for (Part& p : parts) {
      if (!p.scan && p.side == side) p.scan.emplace(plan_, p.begin, p.end);
    }
  };
  std::string index_json;
  uint64_t index_size = 0;
  ForEachIndex(2, finish_threads_, [&](size_t i) {
    if (i == 1) {
      if (late_index == nullptr) {
        index_json = PlanIndexJson(plan_);
      } else {
        index_size = PlanIndexJsonSize(plan_);
        scan(1);
      }
      return;
    }
    PlanFusedSets(plan_);
    scan(0);
    AddSelectionNotes();
    PlanConfigIgnore();
  });
  for (size_t k = 1; k < parts.size(); ++k) parts.front().scan->Merge(std::move(*parts[k].scan));
  if (!parts.empty()) parts.front().scan->Report(plan_);
  const size_t index = PlanFiles(std::move(index_json));
  if (late_index != nullptr) *late_index = {index, index_size};
  return std::move(plan_);
}

}  // namespace planner_internal

using planner_internal::Planner;

std::span<const DefaultIgnore> DefaultIgnores() { return kDefaultIgnores; }

Result<Plan> BuildPlan(const ModelFolder& folder, const PlanOptions& options, int threads,
                       std::vector<PlannedTensor> tensors, LateIndex* late_index) {
  QUENCH_ASSIGN_OR_RETURN(Planner planner, Planner::Make(folder, options));
  planner.PlanShards(threads, std::move(tensors));
  return std::move(planner).Finish(late_index);
}

}  // namespace quench
