// The plan's fused sets (plan/fused_sets.h's table applied to the planned tensors): which
// quantized tensors share one NVFP4 global scale, and the check that every member of a set vLLM
// fuses got the same scheme. Run by the planner once every shard is planned.
#ifndef QUENCH_PLAN_FUSED_PLAN_H_
#define QUENCH_PLAN_FUSED_PLAN_H_

#include "quench/plan.h"

namespace quench {

// Groups quantized tensors needing a global scale into fused sets (singletons otherwise).
void PlanFusedSets(Plan& plan);

// vLLM runs each fused set (q/k/v, gate/up, ...) as one matrix, so its members must all get
// the same scheme or all stay unquantized; anything else cannot be loaded. Each mixed set is
// an error in plan.errors.
void CheckFusedConsistency(Plan& plan);

}  // namespace quench

#endif  // QUENCH_PLAN_FUSED_PLAN_H_
