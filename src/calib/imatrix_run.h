// The imatrix_mse observer and Wanda scores in a conversion: planning (which weights take
// them, from which statistics site) and the calibration seam's implementation for the
// observer. Wanda needs no seam: planning leaves each pruned weight's per-column scale in
// Plan::prune_scales, which the pipeline's pruning step reads (src/calib/wanda.h).
#ifndef QUENCH_CALIB_IMATRIX_RUN_H_
#define QUENCH_CALIB_IMATRIX_RUN_H_

#include <memory>
#include <optional>
#include <string>

#include "calib/imatrix_mse.h"
#include "calib/seam.h"
#include "quench/convert.h"
#include "quench/plan.h"
#include "quench/status.h"

namespace quench::calib {

// Checks --observer and --prune-metric (usage errors are returned), opens the statistics
// (headers and manifest; sum_x2 and count of the sites in use) and marks every weight whose
// group asks for imatrix_mse with its site (PlannedCalibration::imatrix_site), and every weight
// Wanda prunes with its column scale. Missing sites, other models' statistics and schemes the
// observer does not cover go to plan.errors. Reads no weight. A no-op when neither is asked.
// The search's state is left in plan.calib_bytes and plan.calib_holds (the budget is checked
// against them and the pipeline's floor by convert.cc).
Status PlanImatrixWanda(Plan& plan, const ConvertOptions& options);

// The search options of a group's observer_kwargs (PlannedGroup::observer_kwargs text, "" for
// the defaults), checked as src/plan/observer_kwargs.h checks them.
Result<ImatrixOptions> ImatrixOptionsFromKwargs(const std::string& kwargs_text);

// The seam for a planned run (nullptr when no weight takes imatrix_mse). Prepare maps the
// weight's rows (pruned as the pipeline prunes them) and runs the search over the whole
// tensor once (every step, in parallel row blocks), keeping each group's chosen step under
// the reference's patience rule; Quantize then quantizes each chunk with those steps (the
// packed int4 kept paths read the chunk's rows from the search's mapping, whose pages Done
// then releases).
class ImatrixRun : public ChunkCalibration {
 public:
  // For the NVFP4 pre-pass (GlobalScales::SetMemberAbsMax): the largest chosen range of a
  // weight the observer takes, which the reference's global scale comes from (the search is
  // then kept for Prepare); nullopt for other weights, or NaN/Inf left for the pre-pass to
  // report.
  virtual Result<std::optional<float>> SearchedAbsMax(size_t tensor) = 0;
};
Result<std::unique_ptr<ImatrixRun>> MakeImatrixRun(const Plan& plan,
                                                   const ConvertOptions& options);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_IMATRIX_RUN_H_
