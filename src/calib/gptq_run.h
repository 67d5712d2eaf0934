// GPTQ in a conversion: planning (which weights GPTQ takes, from which statistics site, and
// why the others are rounded to nearest) and the calibration seam's implementation, which
// factors each site's Hessian once and runs the sweep on the pipeline's row chunks.
#ifndef QUENCH_CALIB_GPTQ_RUN_H_
#define QUENCH_CALIB_GPTQ_RUN_H_

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "calib/seam.h"
#include "calib/stats.h"
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

// SparseGPT (sparsegpt_run.cc), planned by PlanGptq for --algorithm sparsegpt: the same
// statistics and Hessians, in place of magnitude pruning.
Status PlanSparseGpt(Plan& plan, const ConvertOptions& options);
Result<std::unique_ptr<GptqRun>> MakeSparseGptRun(const Plan& plan, const ConvertOptions& options);

// Shared by GPTQ and SparseGPT planning and runs.
// Sets t.calib_site (and calib_expert) to the statistics site whose Hessian weight t uses and
// returns ""; or returns why it has none (a note: not reached, no full Hessian, no tokens);
// an error for statistics that are not this model's.
Result<std::string> AssignHessianSite(const Statistics& stats,
                                      const std::filesystem::path& stats_path, PlannedTensor& t);
// A hash of the statistics' manifest, for the resume fingerprint.
Result<std::string> StatsHash(const std::filesystem::path& stats_path);
// Weight pt's site Hessian as the reference normalises it (2/sequences * sum x x^T), full
// n x n f32; the mapped pages are dropped after reading.
Result<std::vector<float>> LoadHessian(Statistics& stats, const PlannedTensor& pt);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_GPTQ_RUN_H_
