// The zeros a pruning algorithm that chooses its own mask must leave (verify --algorithm
// sparsegpt): SparseGPT (llm-compressor 0.14.0.1 sgpt_sparsify.py::sparsify_weight) picks the
// mask by OBS saliency w^2 / [H^-1]_jj^2 and updates the weights it keeps, so neither the
// magnitude-pruned source nor the source's kept values can be compared. What its definition
// fixes, and is checked here row by row: N:M keeps at most N of every M consecutive inputs
// per row (prune_n = M - N smallest saliencies per group: at least M - N zeros); unstructured
// F prunes, per block of `block` columns over all rows at once, every saliency <= the one at
// sorted index int(rows * width * F): at least that many zeros in each column block; a weight
// SparseGPT had no Hessian for is magnitude-pruned per row (at least int(cols * F) zeros in
// every row), which is accepted as well.
#ifndef QUENCH_VERIFY_ZERO_STRUCTURE_H_
#define QUENCH_VERIFY_ZERO_STRUCTURE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "schemes/prune.h"

namespace quench::verify {

class ZeroStructure {
 public:
  ZeroStructure(const prune::PruneSpec& spec, uint64_t rows, uint64_t cols, uint64_t block);
  // Row r's zeros (zero[c]: element c is exactly 0 / dequantizes to exactly 0), rows in order.
  void AddRow(uint64_t r, const std::vector<uint8_t>& zero);
  // Empty when the structure holds, else what is short (the first place, and how many more).
  std::string Finish();

 private:
  const prune::PruneSpec spec_;
  const uint64_t rows_, cols_, block_;
  std::vector<uint64_t> block_zeros_;
  uint64_t short_ = 0, row_short_ = 0;
  std::string first_, row_first_;
};

}  // namespace quench::verify

#endif  // QUENCH_VERIFY_ZERO_STRUCTURE_H_
