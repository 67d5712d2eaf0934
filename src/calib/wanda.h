// Wanda pruning (`--prune-metric wanda`), as llm-compressor 0.14.0.1's
// modifiers/pruning/wanda/wanda_sparsify.py::sparsify_weight selects: each weight is scored
// |W[r, j]| * sqrt(S[j]) in f32, with S[j] the mean of x_j^2 over the calibration input of its
// column (the statistics' sum_x2 / count; llm-compressor divides by the number of sequences
// instead, a constant factor per weight that orders the scores the same).
//
// Comparison groups are within one row:
//   unstructured:F  k = int(cols * F) per row, from sort(metric, stable=True): the k smallest
//                   scores are pruned, ties pruning the lower column first;
//   N:M             in every M consecutive columns the M - N smallest scores are pruned
//                   (quench's N:M keeps N; llm-compressor's mask_structure "N:M" prunes N, so
//                   quench's 2:4 is its 2:4, and quench's N:M is its "(M-N):M"). The reference
//                   takes them with torch.topk(largest=False), whose CPU kernel runs
//                   std::nth_element over (score, column) pairs compared by score alone; the
//                   same call here gives the same columns on ties.
// Pruned weights become +0 (bit pattern 0), the rest are left as they were, as magnitude
// pruning does (src/schemes/prune.h), so every scheme's kernel composes with it.
#ifndef QUENCH_CALIB_WANDA_H_
#define QUENCH_CALIB_WANDA_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "quench/dtype.h"
#include "schemes/prune.h"

namespace quench::calib {

// sqrt(S) per column in f32, as torch.sqrt(S) of an f32 S = f32(sum_x2 / count).
std::vector<float> WandaColumnScale(const std::vector<double>& sum_x2, double count);

// Prunes n_rows rows of `cols` elements from src into dst (may be equal: in place), per-row
// unstructured or N:M (spec.per_tensor is refused). `col_scale`: cols values from
// WandaColumnScale. *zeroed (optional) is increased by the pruned positions. False on NaN/Inf
// in the rows or a bad spec.
bool WandaPruneRows(const uint8_t* src, uint8_t* dst, DType dtype, size_t n_rows, size_t cols,
                    const prune::PruneSpec& spec, const float* col_scale, uint64_t* zeroed);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_WANDA_H_
