// GPTQ in a conversion: planning (which weights GPTQ takes, from which statistics site, and
// why the others are rounded to nearest) and the calibration seam's implementation, which
// factors each site's Hessian once and runs the sweep on the pipeline's row chunks.
#ifndef QUENCH_CALIB_GPTQ_RUN_H_
#define QUENCH_CALIB_GPTQ_RUN_H_

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "calib/act_scales.h"  // ColumnScales
#include "calib/seam.h"
#include "calib/stats.h"
#include "quench/convert.h"
#include "quench/plan.h"
#include "quench/status.h"

namespace quench::calib {

// Checks the GPTQ options (usage errors are returned); opens the statistics (headers and
// manifest only) and marks every quantized weight with its site, or with the reason it is
// rounded to nearest; problems with the statistics (another model's, shapes that differ) go
// to plan.errors; sets plan.calib_bytes and plan.calib_holds (the budget is checked against
// them and the pipeline's floor by convert.cc).
// Reads no weight. A no-op for --algorithm rtn without --stats.
Status PlanGptq(Plan& plan, const ConvertOptions& options);

// The seam for a planned run (nullptr when no weight is GPTQ's). The returned object reads
// `plan`'s tensors while the pipeline runs; Finish copies each weight's loss and any
// fallback into the plan afterwards.
class GptqRun : public ChunkCalibration {
 public:
  virtual void Finish(Plan& plan) = 0;
  // Smoothing before this stage (src/calib/composite.h): per plan tensor, the factors its
  // columns were multiplied by (null: none); its Hessian is then diag(1/s) H diag(1/s).
  void SetColumnScales(ColumnScales s) { column_scales_ = std::move(s); }
  // The smoothing stage itself, whose TransformRows gives a weight's smoothed rows: SparseGPT
  // reads an unstructured weight whole from the source and smooths it so.
  void SetRowTransform(ChunkCalibration* smooth) { smooth_ = smooth; }

 protected:
  const std::vector<double>* ColumnScalesOf(size_t t) const {
    return t < column_scales_.size() ? column_scales_[t].get() : nullptr;
  }
  ColumnScales column_scales_;
  ChunkCalibration* smooth_ = nullptr;
};
Result<std::unique_ptr<GptqRun>> MakeGptqRun(const Plan& plan, const ConvertOptions& options);

// SparseGPT (sparsegpt_run.cc), planned by PlanGptq for --algorithm sparsegpt: the same
// statistics and Hessians, in place of magnitude pruning.
Status PlanSparseGpt(Plan& plan, const ConvertOptions& options);
Result<std::unique_ptr<GptqRun>> MakeSparseGptRun(const Plan& plan, const ConvertOptions& options);

// Shared by GPTQ and SparseGPT planning: which weights get a site's Hessian, and why the
// others fall back (GPTQ: to rounding to nearest; SparseGPT: to magnitude pruning).
struct HessianSites {
  size_t taken = 0, fallback = 0;
  std::map<std::string, size_t> reasons;  // a fallback's reason (up to " (") -> weights
  uint64_t largest = 0;                    // FactorBytes of the widest weight taken
  std::string largest_site;
  // Sets t.calib->site (and expert) to the site whose Hessian t uses and returns true;
  // or records in t.calib->note why it has none (a decoded FP8 source, not reached, no full
  // Hessian, no tokens) and returns false. Statistics that are not this model's go to
  // plan.errors. With expert pruning, survivors are found under their source names.
  // `algorithm` names the algorithm in the decoded-source note.
  bool Assign(Plan& plan, const Statistics& stats, const std::filesystem::path& stats_path,
              const std::string& algorithm, PlannedTensor& t);
  // "; N <fallback>: n reason; ..." for the plan's note, or "" when every weight was taken.
  std::string FallbackText(const std::string& fallback_to) const;
};
// A hash of the statistics' manifest, for the resume fingerprint.
Result<std::string> StatsHash(const std::filesystem::path& stats_path);
// Weight pt's site Hessian as the reference normalises it (2/sequences * sum x x^T), full
// n x n f32; the mapped pages are dropped after reading. With `column_scales` (the weight's
// columns multiplied by s, its input divided), the smoothed input's: H_ij / (s_i s_j).
Result<std::vector<float>> LoadHessian(Statistics& stats, const PlannedTensor& pt,
                                       const std::vector<double>* column_scales = nullptr);
// The key a weight's factor is cached under: its site, expert and smoothing scales.
std::string FactorKey(const PlannedTensor& pt, const std::vector<double>* column_scales);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_GPTQ_RUN_H_
