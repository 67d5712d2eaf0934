// What convert.cc (running a plan) and convert_plan.cc (making it) share: the memory
// budget and its floor, the plan made from options, the free-space check. Not part of the
// public API (quench/convert.h).
#ifndef QUENCH_PIPELINE_CONVERT_INTERNAL_H_
#define QUENCH_PIPELINE_CONVERT_INTERNAL_H_

#include <optional>
#include <string>
#include <vector>

#include "calib/composite.h"
#include "format/model_folder.h"
#include "plan/planner.h"
#include "quench/convert.h"

namespace quench::convert_internal {

// The run's lock file (DST/.quench-run.lock), a block on DST's file system: none (a worker,
// whose lock is elsewhere), held (a single run: on the disk already), or to come (a dry run,
// counting as the run will).
enum class RunLockBlock { kNone, kHeld, kToCome };

// Fails early when the destination's file system cannot hold the output (convert_plan.cc).
Status CheckFreeSpace(const Plan& plan, RunLockBlock lock, const LateIndex& late = {});

// The options a run executes with: the memory budget chosen, with notes (convert_plan.cc).
ConvertOptions WithMemoryBudget(const ConvertOptions& options, std::vector<std::string>* notes);

// Buffers per chunk the run's pipeline is sized with (SizePipeline).
int RunBuffersPerChunk(const Plan& plan, const calib::Algorithms& algos);

// The one memory check: a budget below the run's floor is a planning error in `plan`.
Status CheckMemoryFloor(const ConvertOptions& requested, const ConvertOptions& options,
                        Plan* plan);

// MakePlan, with what Convert keeps for later (the late index, the folder, header bytes).
Result<Plan> MakePlanImpl(const ConvertOptions& options, LateIndex* late_index,
                          std::optional<ModelFolder>* keep_folder, bool header_bytes = false);

}  // namespace quench::convert_internal

#endif  // QUENCH_PIPELINE_CONVERT_INTERNAL_H_
