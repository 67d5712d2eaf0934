// Composed calibration: several algorithms in one conversion, as an llm-compressor recipe
// chains modifiers (SmoothQuantModifier/AWQModifier, then SparseGPTModifier, then
// GPTQModifier). `--algorithm` takes a comma list; the stages run in the pipeline's fixed
// order whatever the order given:
//   1. smoothing (smoothquant | awq): the weights' columns scaled, the smooth layers divided;
//   2. pruning (sparsegpt, or the plan's magnitude/Wanda pruning): on the smoothed rows;
//   3. quantization (gptq, or the imatrix_mse observer, or the scheme's kernel): on the
//      smoothed, pruned rows; pruned positions stay exactly zero.
// A later stage sees what an earlier one made: a smoothed weight's Hessian is the smoothed
// activations' H' = diag(1/s) H diag(1/s), computed exactly from the statistics, and its
// static activation scales come from the ranges min_c / s_c, max_c / s_c.
#ifndef QUENCH_CALIB_COMPOSITE_H_
#define QUENCH_CALIB_COMPOSITE_H_

#include <memory>
#include <string>
#include <vector>

#include "calib/act_scales.h"  // ColumnScales
#include "calib/seam.h"
#include "quench/convert.h"
#include "quench/plan.h"
#include "quench/status.h"

namespace quench::calib {

// `--algorithm`'s list, by stage. At most one algorithm per stage.
struct Algorithms {
  std::string smoothing;   // "", "smoothquant" or "awq"
  bool sparsegpt = false;  // pruning stage
  bool gptq = false;       // quantization stage
  // The stages present, in pipeline order, joined by commas ("rtn" for none).
  std::string Text() const;
  bool Any() const { return !smoothing.empty() || sparsegpt || gptq; }
};
Result<Algorithms> ParseAlgorithms(const std::string& text);
// Whether `text` (an --algorithm list) names `name`; false for a list that does not parse.
bool HasAlgorithm(const std::string& text, const std::string& name);

// The options one stage's planner and run see: `algorithm` set to that stage's alone, so each
// planner keeps its single-algorithm checks.
ConvertOptions StageOptions(const ConvertOptions& options, const std::string& algorithm);

// What each stage left in the plan's resume fingerprint, joined so that every algorithm's
// settings are part of it ("smoothquant{...} gptq{...}").
void AppendFingerprint(const std::string& stage, const std::string& fingerprint,
                       std::string* combined);

// Smoothing's effect on the statistics-derived values planned before the scales were known:
// static activation scales are recomputed from the smoothed ranges, FP8 KV-cache v_scale of a
// smoothed value projection from its ranges divided by the scales, and Wanda's column scales
// divided by s (its metric |W s| * sqrt(E[x^2]) / s then equals the unsmoothed one, as the
// reference's Wanda on the smoothed model computes). Reads no weight.
Status ApplySmoothingToPlan(Plan& plan, const ConvertOptions& options, const ColumnScales& s);

// The stages behind the one seam the pipeline calls. Any stage may be null. `smooth` only
// transforms; `prune` (SparseGPT) replaces the plan's pruning for the tensors it takes;
// `quantize` (GPTQ or imatrix_mse) replaces the scheme's kernel for the tensors it takes.
class CompositeCalibration : public ChunkCalibration {
 public:
  CompositeCalibration(const Plan& plan, ChunkCalibration* smooth, ChunkCalibration* prune,
                       ChunkCalibration* quantize)
      : plan_(plan), smooth_(smooth), prune_(prune), quantize_(quantize) {}

  bool Takes(size_t t) const override;
  Status Prepare(size_t t) override;
  bool Quantize(size_t t, const WeightChunk& in, const ChunkOutputs& out) override;
  bool Prune(size_t t, const uint8_t* src, uint8_t* dst, size_t begin, size_t rows,
             uint64_t* zeroed) override;
  bool Prunes() const override { return prune_ != nullptr && prune_->Prunes(); }
  bool PrunesTensor(size_t t) const override {
    return prune_ != nullptr && prune_->PrunesTensor(t);
  }
  void Done(size_t t) override;
  bool Transforms(size_t t) const override { return smooth_ != nullptr && smooth_->Transforms(t); }
  const uint8_t* TransformRows(size_t t, uint64_t row0, const WeightChunk& in) override {
    return smooth_->TransformRows(t, row0, in);
  }
  const float* ColumnFactors(size_t t) const override {
    return smooth_ != nullptr ? smooth_->ColumnFactors(t) : nullptr;
  }
  bool RewritesCopy(size_t t) const override {
    return smooth_ != nullptr && smooth_->RewritesCopy(t);
  }
  void RewriteCopy(size_t t, uint64_t begin, uint8_t* data, uint64_t len) override {
    smooth_->RewriteCopy(t, begin, data, len);
  }

 private:
  const Plan& plan_;
  ChunkCalibration* smooth_;
  ChunkCalibration* prune_;
  ChunkCalibration* quantize_;
};

}  // namespace quench::calib

#endif  // QUENCH_CALIB_COMPOSITE_H_
