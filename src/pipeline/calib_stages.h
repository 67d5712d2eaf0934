// The calibration stages of one conversion (src/calib/composite.h: smoothing, then SparseGPT,
// then GPTQ or the imatrix_mse observer), made from the plan and the options in the order the
// run needs them, handed to the pipeline behind one seam, and finished after it.
#ifndef QUENCH_PIPELINE_CALIB_STAGES_H_
#define QUENCH_PIPELINE_CALIB_STAGES_H_

#include <cstdint>
#include <memory>

#include "calib/composite.h"
#include "calib/gptq_run.h"
#include "calib/imatrix_run.h"
#include "calib/seam.h"
#include "calib/smoothquant_run.h"
#include "pipeline/pipeline.h"
#include "quench/convert.h"
#include "quench/plan.h"
#include "quench/status.h"

namespace quench {

class CalibStages {
 public:
  // `--algorithm` parsed, and the stages that read no weight to be made: SparseGPT, GPTQ and
  // the imatrix_mse observer (each null where the run has none).
  static Result<CalibStages> Make(const Plan& plan, const ConvertOptions& options);

  const calib::Algorithms& algos() const { return algos_; }
  // Whether the run smooths: an algorithm asks for it and the plan has mappings.
  bool Smoothing(const Plan& plan) const {
    return !algos_.smoothing.empty() && !plan.smoothing.empty();
  }
  // Smoothing's pre-pass, where the run smooths: it reads the balance weights for their
  // scales before any tensor streams, so that later stages see the smoothed model's
  // statistics (the scales go to SparseGPT, GPTQ and the plan's statistics-derived values).
  // It may keep up to `keep_bytes` of what it read mapped for the pipeline; what it keeps is
  // taken from `sizing`'s pre-pass share.
  Status Smooth(Plan& plan, const ConvertOptions& options, SourceMaps& maps, uint64_t keep_bytes,
                PipelineSizing* sizing);
  // The seam the pipeline calls (null where the run has no stage), after Smooth.
  ChunkCalibration* Compose(const Plan& plan);
  // The imatrix_mse observer, or null: the NVFP4 global scales read its searched maxima.
  calib::ImatrixRun* imatrix() const { return imatrix_.get(); }
  // After the pipeline: each stage records what it chose in the plan (the report's), and
  // AWQ's and GPTQ's per-weight lines go to `callbacks.note`.
  void Finish(Plan& plan, const ConvertCallbacks& callbacks);

 private:
  calib::Algorithms algos_;
  std::unique_ptr<calib::GptqRun> sparse_, gptq_;
  std::unique_ptr<calib::SmoothRun> smooth_;
  std::unique_ptr<calib::ImatrixRun> imatrix_;
  std::unique_ptr<calib::CompositeCalibration> composite_;
};

}  // namespace quench

#endif  // QUENCH_PIPELINE_CALIB_STAGES_H_
