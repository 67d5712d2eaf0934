// DryRun (quench/convert.h) for `quench convert --dry-run`, which lists the plan and writes
// nothing but --report.
#ifndef QUENCH_PIPELINE_DRY_RUN_H_
#define QUENCH_PIPELINE_DRY_RUN_H_

#include "quench/convert.h"
#include "quench/plan.h"
#include "quench/status.h"

namespace quench {

// DryRun without the index's text, which neither the listing nor the report reads: its entry
// in plan.files is left empty (the planner's second thread takes half the fused-set check
// in that time instead). With workers, the share
// shown reads it (the plan's fingerprint), and it is made.
Result<Plan> DryRunListing(const ConvertOptions& options);

}  // namespace quench

#endif  // QUENCH_PIPELINE_DRY_RUN_H_
