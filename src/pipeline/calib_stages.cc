#include "pipeline/calib_stages.h"

#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>

#include "calib/act_scales.h"

namespace quench {

Result<CalibStages> CalibStages::Make(const Plan& plan, const ConvertOptions& options) {
  CalibStages stages;
  QUENCH_ASSIGN_OR_RETURN(stages.algos_, calib::ParseAlgorithms(options.algorithm));
  if (stages.algos_.sparsegpt) {
    QUENCH_ASSIGN_OR_RETURN(stages.sparse_, calib::MakeSparseGptRun(plan, options));
  }
  if (stages.algos_.gptq) {
    QUENCH_ASSIGN_OR_RETURN(stages.gptq_,
                            calib::MakeGptqRun(plan, calib::StageOptions(options, "gptq")));
  }
  QUENCH_ASSIGN_OR_RETURN(stages.imatrix_, calib::MakeImatrixRun(plan, options));
  return stages;
}

Status CalibStages::Smooth(Plan& plan, const ConvertOptions& options, SourceMaps& maps,
                           uint64_t keep_bytes, PipelineSizing* sizing) {
  if (!Smoothing(plan)) return Status::Ok();
  calib::SmoothSource source;
  source.map = [&maps](size_t shard) { return maps.Get(shard); };
  source.keep_bytes = keep_bytes;
  QUENCH_ASSIGN_OR_RETURN(
      smooth_, calib::MakeSmoothRun(plan, calib::StageOptions(options, algos_.smoothing), source));
  sizing->prepass_keep_bytes -= std::min(sizing->prepass_keep_bytes, smooth_->KeptBytes());
  const calib::ColumnScales scales = smooth_->InputScales();
  if (sparse_) {
    sparse_->SetColumnScales(scales);
    sparse_->SetRowTransform(smooth_.get());  // unstructured: the whole weight smoothed
  }
  if (gptq_) gptq_->SetColumnScales(scales);
  return calib::ApplySmoothingToPlan(plan, options, scales);
}

ChunkCalibration* CalibStages::Compose(const Plan& plan) {
  ChunkCalibration* quantizer =
      gptq_ ? static_cast<ChunkCalibration*>(gptq_.get()) : imatrix_.get();
  if (smooth_ || sparse_ || quantizer != nullptr) {
    composite_ = std::make_unique<calib::CompositeCalibration>(plan, smooth_.get(), sparse_.get(),
                                                               quantizer);
  }
  return composite_.get();
}

void CalibStages::Finish(Plan& plan, const ConvertCallbacks& callbacks) {
  if (smooth_) {
    smooth_->Finish(plan);
    if (callbacks.note && algos_.smoothing == "awq") {
      for (const PlannedSmoothing& m : plan.smoothing) {
        char line[200];
        std::snprintf(line, sizeof line,
                      ": ratio %.4f%s, proxy loss %.4g (RTN %s%.4g, %s, %s search)", m.ratio,
                      m.duo ? " (duo)" : "", m.loss, m.rtn_exact ? "" : "~", m.loss_rtn,
                      m.loss_kind.c_str(), m.search.c_str());
        callbacks.note("AWQ " + m.smooth + line);
      }
    }
  }
  if (sparse_) sparse_->Finish(plan);
  if (gptq_) {
    gptq_->Finish(plan);
    if (callbacks.note) {
      for (const PlannedTensor& t : plan.tensors) {
        if (t.calib && !t.calib->site.empty() && !t.calib->note.empty()) {
          callbacks.note(t.name + ": " + t.calib->note);
        }
      }
    }
  }
}

}  // namespace quench
