// SmoothQuant (and AWQ) in a conversion: planning (smoothquant_plan.cc: which mappings
// apply, which tensors they rewrite, why one is refused) and the calibration seam's
// transforms (smoothquant_run.cc), whose scales a pre-pass over the balance weights computes
// before any tensor streams.
#ifndef QUENCH_CALIB_SMOOTHQUANT_RUN_H_
#define QUENCH_CALIB_SMOOTHQUANT_RUN_H_

#include <functional>
#include <memory>

#include "calib/act_scales.h"  // ColumnScales
#include "calib/seam.h"
#include "format/file_io.h"
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
  // Balance weights' bytes the pre-pass left mapped for the pipeline (SmoothSource).
  virtual uint64_t KeptBytes() const = 0;
};
// Where SmoothQuant's pre-pass reads the balance weights. `map`: the source shards' mappings
// the pipeline reads next (null: the pre-pass maps them itself and releases every page). A
// mapping's balance weights are left mapped for the pipeline while the kept ones fit
// `keep_bytes`, so that its read of them neither faults again nor misses the cache (as the
// NVFP4 pre-pass keeps a fused set); past the budget, or for shards this run does not
// write, their pages are released as they are read.
struct SmoothSource {
  std::function<Result<const MappedFile*>(size_t shard)> map;
  uint64_t keep_bytes = 0;
};
Result<std::unique_ptr<SmoothRun>> MakeSmoothRun(const Plan& plan, const ConvertOptions& options,
                                                 const SmoothSource& source = {});
// Input bytes of every balance weight of the plan's mappings (what SmoothQuant's pre-pass
// would keep mapped to read them once).
uint64_t SmoothBalanceBytes(const Plan& plan);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_SMOOTHQUANT_RUN_H_
