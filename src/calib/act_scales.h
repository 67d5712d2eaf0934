// Static activation scales from activation statistics: each quantized weight whose scheme has
// static activations (FP8, NVFP4, or --static-activations / a recipe's `dynamic: false`) gets
// its input site's range over the whole calibration run, and from it the values
// compressed-tensors 0.19.0's calculate_qparams (and, for NVFP4, llm-compressor's observer
// global scale) compute: `input_scale`, `input_zero_point`, `input_global_scale`.
//
// The range is the site's global min and max over every token the collector saw, which is what
// llm-compressor's `static_minmax` observer keeps (the FP8 and NVFP4 presets' observer); its
// default `minmax` observer for other static args averages per-batch ranges (an exponential
// moving average, constant 0.01), which statistics of the whole run cannot reproduce.
#ifndef QUENCH_CALIB_ACT_SCALES_H_
#define QUENCH_CALIB_ACT_SCALES_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "quench/convert.h"
#include "quench/dtype.h"
#include "quench/plan.h"
#include "quench/status.h"

namespace quench::calib {

// One static per-tensor activation range's parameters, for activations of dtype `d` (the
// model's dtype, in which the reference's observer sees them); `min` and `max` are rounded to
// `d` first. Scales are values of `d`.
struct ActQParams {
  float scale = 0.f;
  int8_t zero_point = 0;
};
// FP8 E4M3, symmetric: amax / 448 (calculate_qparams with the FP8 range).
ActQParams Fp8InputQParams(float min, float max, DType d);
// int8 per tensor: symmetric amax / 127.5; asymmetric (max - min) / 255 and
// round(-128 - min / scale) clamped to int8.
ActQParams Int8InputQParams(float min, float max, DType d, bool symmetric);
// NVFP4's input_global_scale: generate_gparam of the absmax (F32; 1 where not finite).
float Nvfp4InputGlobalScale(float min, float max, DType d);

// Planning (reads the statistics' manifest and the min/max/count arrays of the sites in use,
// no weight): fills every static activation output of the plan (SchemeOutput::kStatic) and
// adds a note saying how many weights got them from how many sites. Problems with the statistics (a
// weight without a site, another model's shapes, a site that saw no tokens, no min/max, NaN) go to
// plan.errors. A no-op when no planned weight has static activations.
//
// With `smoothed` (per plan tensor, the factors smoothing multiplied its input columns by, or
// null: src/calib/composite.h), only those tensors' outputs are recomputed, from the smoothed
// inputs' ranges: x / s has channel range [min_c / s_c, max_c / s_c] (s > 0), so the global
// range is the min and max of those over the channels, exactly.
using ColumnScales = std::vector<std::shared_ptr<const std::vector<double>>>;
Status PlanActScales(Plan& plan, const ConvertOptions& options,
                     const ColumnScales* smoothed = nullptr);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_ACT_SCALES_H_
