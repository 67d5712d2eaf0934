// GPTQ in a conversion: planning (which weights GPTQ takes, from which statistics site, and
// why the others are rounded to nearest) and the calibration seam's implementation, which
// factors each site's Hessian once and runs the sweep on the pipeline's row chunks.
#ifndef QUENCH_CALIB_GPTQ_RUN_H_
#define QUENCH_CALIB_GPTQ_RUN_H_

#include <memory>

#include "calib/seam.h"
#include "quench/convert.h"
#include "quench/plan.h"
#include "quench/status.h"

namespace quench::calib {

// Checks the GPTQ options (usage errors are returned); opens the statistics (headers and
// manifest only) and marks every quantized weight with its site, or with the reason it is
// rounded to nearest; problems with the statistics (another model's, shapes that differ) go
// to plan.errors; sets plan.calib_bytes and refuses a memory budget that cannot hold it.
// Reads no weight. A no-op for --algorithm rtn without --stats.
Status PlanGptq(Plan& plan, const ConvertOptions& options);

// The seam for a planned run (nullptr when no weight is GPTQ's). The returned object reads
// `plan`'s tensors while the pipeline runs; Finish copies each weight's loss and any
// fallback into the plan afterwards.
class GptqRun : public ChunkCalibration {
 public:
  virtual void Finish(Plan& plan) = 0;
};
Result<std::unique_ptr<GptqRun>> MakeGptqRun(const Plan& plan, const ConvertOptions& options);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_GPTQ_RUN_H_
