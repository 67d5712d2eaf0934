// Builds the Plan from the inventory and the options: which tensors are quantized (the
// compressed-tensors selection rule plus quench's default ignores), the output tensors of each
// shard, their offsets and headers, and the index and config.json bytes.
#ifndef QUENCH_PLAN_PLANNER_H_
#define QUENCH_PLAN_PLANNER_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "format/model_folder.h"
#include "quench/plan.h"

namespace quench {

// A module name pattern quench leaves unquantized unless --no-default-ignore: things vLLM
// cannot load quantized from a model_free checkpoint, and the encoders of multimodal models,
// which quantized releases keep unquantized.
struct DefaultIgnore {
  std::string_view pattern;  // target/ignore syntax ("re:..." or exact)
  std::string_view what;     // e.g. "output head"
  std::string_view why;      // e.g. "vLLM loads it unquantized"
};
std::span<const DefaultIgnore> DefaultIgnores();

// Shards are planned on up to `threads` threads (0: one per core; the plan is the same for
// any number). `tensors` may bring the plan's tensor array already made, of value-initialised
// entries (LoadModelFolder's `headers_read` makes it while the folder is checked): it is
// resized to the planned count, so any size gives the same plan. Where `late_index` is given,
// the index's text is not made: its entry in plan.files is left empty for the caller to fill
// with PlanIndexJson when it needs it (a conversion, on a thread of its pipeline; a dry run
// never), and *late_index says which entry and the text's length.
struct LateIndex {
  size_t file = SIZE_MAX;  // plan.files[file]
  uint64_t size = 0;       // PlanIndexJsonSize
};
Result<Plan> BuildPlan(const ModelFolder& folder, const PlanOptions& options, int threads = 0,
                       std::vector<PlannedTensor> tensors = {}, LateIndex* late_index = nullptr);

// The index file's bytes (model.safetensors.index.json) of a planned conversion: every output
// tensor's shard, and their total size. It reads the shards' outputs and the tensors' output
// lists only (names and sizes, which nothing after BuildPlan changes).
std::string PlanIndexJson(const Plan& plan);
// PlanIndexJson(plan).size(), without writing the text (a free-space check before it is).
uint64_t PlanIndexJsonSize(const Plan& plan);

struct PlannedPrune;
namespace prune { struct PruneSpec; }
// The planned pruning as the kernels' spec.
prune::PruneSpec ToPruneSpec(const PlannedPrune& p);

}  // namespace quench

#endif  // QUENCH_PLAN_PLANNER_H_
