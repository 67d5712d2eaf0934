// Importance-weighted clipping search for integer weights, as llm-compressor 0.14.0.1's
// `imatrix_mse` observer runs it (observers/imatrix.py: IMatrixMSEObserver, _grid_search).
//
// Per group (a row's group_size columns; the whole row for the channel strategy), with the
// group's min and max m0, M0 (values of the weight dtype D):
//   for i = 0 .. max(1, int(maxshrink * grid)):        (0 .. 19 with the defaults)
//     p = 1 - i / grid;  mn = RNE_D(p * m0); mx = RNE_D(p * M0)
//     scale, zp = calculate_qparams(mn, mx)             (intq::internal::ComputeParams)
//     q = fake_quantize(w, scale, zp) in D              (x/s, +zp, clamp, round; (q-zp)*s)
//     err = sum_j |q_j - w_j|^norm * imp_j              (norm 3; |d|^3 as d*d*d in f32)
//     a group whose err is below its best so far keeps (mn, mx)   (strict: earliest wins)
//   the search stops after `patience` (5) steps in a row in which NO group of the whole
//   tensor improved.
// imp is the site's E[x^2] per input channel (sum_x2 / count, in f32), divided by its mean;
// with no usable importance (all zero, negative, non-finite) every weight counts 1, the
// reference's uniform fallback. The chosen (mn, mx) give the scales and zero points
// (calculate_qparams again) that the scheme's usual quantization and packing then use.
//
// The patience rule looks at the whole tensor, while the pipeline hands over row chunks, so
// the search is split in two: AnyImproved runs every step on some rows and says at which steps
// any of their groups improved; StopStep turns the union over all rows into the last step the
// reference runs; Search then runs steps 0..stop on any rows, which gives every group the
// result of the whole-tensor search whatever the chunking.
#ifndef QUENCH_CALIB_IMATRIX_MSE_H_
#define QUENCH_CALIB_IMATRIX_MSE_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "schemes/chunk.h"

namespace quench::calib {

struct ImatrixOptions {
  int grid = 20;            // observer_kwargs "grid"
  double maxshrink = 0.95;  // "maxshrink"
  double norm = 3.0;        // "norm"
  int patience = 5;         // "patience" (0: never stop early)
};

// The number of the last grid step (shrink_steps = max(1, int(maxshrink * grid))).
int LastStep(const ImatrixOptions& o);

// The normalised importance from a site's per-channel sum of x^2 and its token count:
// imp = f32(sum) / f32(count), divided by (mean + FLT_MIN). Empty (uniform) when the values
// are unusable as the reference finds them: count 0, any non-finite or negative, all zero.
std::vector<float> NormalizedImportance(const std::vector<double>& sum_x2, double count);

// Bit i set when some group of the rows improved at step i (all steps run).
// `imp`: cols values, or empty for uniform weights. False on NaN/Inf or bad parameters.
bool AnyImproved(const WeightChunk& in, const std::vector<float>& imp, const ImatrixOptions& o,
                 uint32_t* steps);

// The last step the reference runs, given the union of AnyImproved over all rows.
int StopStep(uint32_t improved_steps, const ImatrixOptions& o);

// The search over steps 0..stop: per group (row-major, rows x n_groups) the chosen scale
// (a value of D) and zero point, and the codes (rows x cols, no offset).
struct ImatrixRows {
  std::vector<float> scales;
  std::vector<int8_t> zero_points;
  std::vector<int8_t> codes;
};
bool Search(const WeightChunk& in, const std::vector<float>& imp, const ImatrixOptions& o,
            int stop, ImatrixRows* out);

// Search, written as the int kernels write (src/schemes/int.h): packed or unpacked codes,
// scales, zero points.
bool SearchInto(const WeightChunk& in, const std::vector<float>& imp, const ImatrixOptions& o,
                int stop, bool packed, const ChunkOutputs& out);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_IMATRIX_MSE_H_
