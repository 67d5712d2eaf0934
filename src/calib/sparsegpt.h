// SparseGPT from a Hessian, as llm-compressor 0.14.0.1 runs it
// (modifiers/pruning/sparsegpt/sgpt_sparsify.py::sparsify_weight): GPTQ's inverse factor of
// the same dampened Hessian (FactorHessian, no column reordering), then the blocked sweep in
// which a column's pruned weights are set to zero and their error is spread over the later
// columns, with the mask chosen by the OBS saliency w^2 / [H^-1]_jj^2:
//  - N:M: at the first column of every M within a block, the M - N smallest saliencies of
//    the M columns (values as the earlier columns' updates left them) in each row;
//  - unstructured F: per block of columns, over all rows at once, every saliency <= the
//    int(F * rows * width)-th smallest.
// The reference quantizes nothing here: in its recipes a QuantizationModifier after the
// SparseGPTModifier rounds the sparse weight to nearest, which quench's scheme kernels do.
#ifndef QUENCH_CALIB_SPARSEGPT_H_
#define QUENCH_CALIB_SPARSEGPT_H_

#include <cstddef>
#include <cstdint>

#include "calib/gptq.h"
#include "quench/dtype.h"

namespace quench::calib {

struct SparseGptOptions {
  int block_size = 128;     // columns per lazy-update block (SparseGPTModifier.block_size)
  double dampening = 0.01;  // dampening_frac
  // N:M as the reference's prune_n / prune_m: prune_n weights pruned in every prune_m
  // consecutive columns (quench's --prune N:M keeps N, so prune_n = M - N). 0: unstructured.
  int prune_n = 0;
  int prune_m = 0;
  double sparsity = 0.5;    // unstructured: the fraction pruned within each block
};

// FactorHessian's options for SparseGPT: the same factorisation, in the original column order.
inline GptqOptions FactorOptions(const SparseGptOptions& o) {
  GptqOptions g;
  g.block_size = o.block_size;
  g.dampening = o.dampening;
  g.actorder = ActOrder::kNone;
  return g;
}

// The sweep on `rows` rows of `cols` = f.n values of `dtype` (BF16, F16 or F32) at `src`,
// written to `dst` in the same dtype (the reference's final `.to(final_dtype)`, round to
// nearest even); `src` and `dst` may be the same. N:M results do not depend on which rows are
// given together; unstructured ones do (the threshold is over all rows), so an unstructured
// weight must be given whole. *pruned (optional) is increased by the positions the mask
// pruned, *loss (optional) set to the reference's loss sum((w - q)^2 / d^2) / 2. False for NaN
// or Inf in the rows or invalid options (block_size <= 0, prune_m not dividing block_size,
// prune_n >= prune_m, sparsity outside [0, 1)).
bool SparsifyRows(const GptqFactor& f, const uint8_t* src, DType dtype, size_t rows,
                  size_t cols, const SparseGptOptions& options, uint8_t* dst,
                  uint64_t* pruned, double* loss);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_SPARSEGPT_H_
