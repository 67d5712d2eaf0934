// SmoothQuant in a conversion: planning (which mappings apply, which tensors they rewrite,
// why one is refused) and the calibration seam's transforms, whose scales a pre-pass over the
// balance weights computes before any tensor streams.
#ifndef QUENCH_CALIB_SMOOTHQUANT_RUN_H_
#define QUENCH_CALIB_SMOOTHQUANT_RUN_H_

#include <memory>

#include "calib/act_scales.h"  // ColumnScales
#include "calib/seam.h"
#include "quench/convert.h"
#include "quench/plan.h"
#include "quench/status.h"

namespace quench::calib {

// For --algorithm smoothquant: checks the options, opens the statistics (headers and
// manifest), chooses the mappings from config.json's architecture and resolves them against
// the checkpoint's modules; fills plan.smoothing, marks every rewritten tensor (smoothed) and
// sets plan.calib_fingerprint. A mapping whose balance layers are missing, left unquantized,
// split across schemes or dtypes, pruned or source-quantized, or whose statistics lack min and
// max, is refused (plan.errors, with the reason). Reads no weight.
Status PlanSmoothQuant(Plan& plan, const ConvertOptions& options);

// The seam for a planned run (nullptr when plan.smoothing is empty). Making it runs the
// pre-pass: every mapping's balance weights are read once (mapped, a tensor at a time, pages
// released after) for their per-column max |W|, and the scales computed. Finish records each
// mapping's scale range in the plan.
class SmoothRun : public ChunkCalibration {
 public:
  virtual void Finish(Plan& plan) = 0;
  // Per plan tensor, the product of the scales its columns are multiplied by (its input is
  // divided by them), or null where no mapping balances it: what later stages need to see
  // the smoothed model's statistics (src/calib/composite.h).
  virtual ColumnScales InputScales() const = 0;
};
Result<std::unique_ptr<SmoothRun>> MakeSmoothRun(const Plan& plan, const ConvertOptions& options);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_SMOOTHQUANT_RUN_H_
