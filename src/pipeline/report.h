// The JSON account of a run (--report) and of a plan (--dry-run --report): the recipe as
// resolved, every tensor's action, scheme, shapes and bytes, every output shard, totals,
// notes and errors, and for a real run wall time and peak memory.
#ifndef QUENCH_PIPELINE_REPORT_H_
#define QUENCH_PIPELINE_REPORT_H_

#include <string>

#include "format/json.h"
#include "quench/convert.h"
#include "quench/plan.h"

namespace quench {

// `summary` is null for a dry run or a run that failed; `status` is the run's outcome.
JsonValue BuildReport(const ConvertOptions& options, const Plan& plan,
                      const ConvertSummary* summary, const Status& status, bool dry_run);

// Peak resident memory of this process so far (getrusage), in bytes.
uint64_t PeakRssBytes();

}  // namespace quench

#endif  // QUENCH_PIPELINE_REPORT_H_
