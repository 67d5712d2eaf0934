// The planner's state while it walks a model folder, shared by the files that build a Plan:
// planner.cc (making the planner from the options, planning the shards, finishing),
// planner_sources.cc (quantized sources: their scales, decoded and packed views, repacking),
// planner_shard.cc (one shard's tensors: selection, the scheme's outputs, the file layout) and
// planner_finish.cc (notes, the written ignore list, the index and config.json). One class
// across several files so that each reads in one sitting; only src/plan/planner*.cc include
// this header (the rest of quench sees BuildPlan in plan/planner.h).
#ifndef QUENCH_PLAN_PLANNER_STATE_H_
#define QUENCH_PLAN_PLANNER_STATE_H_

#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "format/model_folder.h"
#include "format/quant_config.h"
#include "format/safetensors.h"
#include "format/source_quant.h"
#include "plan/fused_plan.h"
#include "plan/matcher.h"
#include "plan/planner.h"
#include "plan/target_resolver.h"
#include "quench/plan.h"
#include "quench/scheme.h"
#include "schemes/prune.h"

namespace quench::planner_internal {

// compressed-tensors utils/match.py::match_quantizable_tensors as model_free applies it:
// module names ending in "norm" are never quantized; only the "weight" parameter is; then the
// targets, then the ignore list (and quench's default ignores).
enum class Selection { kQuantize, kNotWeight, kNorm, kNotTargeted, kIgnored, kDefaultIgnored };

// Whether `options` ask for the source's own scheme, which is then written from the stored
// codes and scales (lossless) rather than decoded and quantized again: 1 AutoAWQ -> its
// W4A16(_ASYM) at its group size (no --group-size, or the same), 2 ModelOpt NVFP4 -> NVFP4 or
// NVFP4A16; only with flags alone (no recipe, pruning, statistics or other overrides).
int RepackMode(const SourceQuantization& s, const PlanOptions& o);

// The planner's state while it walks the folder: the run's matchers, and what each entry
// selected (for the warnings and the written ignore list).
class Planner {
 public:
  static Result<Planner> Make(const ModelFolder& folder, const PlanOptions& options);

  // Plans every shard's tensors and lays out its output file, on up to `threads` threads
  // (0: one per core) when the checkpoint has enough tensors for that to pay. `storage`:
  // value-initialised entries for the plan's tensor array (BuildPlan's `tensors`), resized.
  void PlanShards(int threads, std::vector<PlannedTensor> storage);
  // After the shards: fused sets and their consistency, notes, the written ignore list, the
  // index, config.json and the other files. The index, which depends on the shards' layouts
  // alone, is built on another thread meanwhile where PlanShards found that worth it; not at
  // all where `late_index` is given (BuildPlan's), only its length.
  Plan Finish(LateIndex* late_index) &&;

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
  // Why `t` (in shard `rel_name`), targeted for quantizing (or pruning), cannot be; empty if
  // it can.
  std::string QuantizeProblem(std::string_view rel_name, const TensorInfo& t, DType dtype,
                              const SchemeInfo* scheme, const SchemeParams& params) const;
  // Why `t`, selected for group `g`, cannot be quantized or pruned there (an error naming
  // the tensor and the rule), or OK.
  Status TargetedProblem(const TensorInfo& t, const std::string& rel_name,
                         const PlannedTensor& pt, const PlannedGroup& g) const;
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
  // The config groups written to quantization_config (planner_finish.cc).
  std::vector<ConfigGroup> ConfigGroups();
  // Returns the index's entry in plan_.files.
  size_t PlanFiles(std::string index_json);

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
  // Per shard: its range of plan_.tensors, and its part of the fused-set check where a
  // thread made it in PlanShards (having planned the shard while another was still being
  // planned, none left to take); Finish scans the other shards' ranges.
  std::vector<std::pair<size_t, size_t>> shard_ranges_;
  std::vector<std::optional<FusedSetScan>> shard_scans_;
};

}  // namespace quench::planner_internal

#endif  // QUENCH_PLAN_PLANNER_STATE_H_
