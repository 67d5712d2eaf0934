// The source weight as `--prune` would have left it, produced row by row for comparison.
#ifndef QUENCH_VERIFY_PRUNED_ROWS_H_
#define QUENCH_VERIFY_PRUNED_ROWS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "quench/dtype.h"
#include "schemes/prune.h"

namespace quench::verify {

// The source weight pruned by a spec, row by row in order (a per-tensor threshold needs the
// count of threshold-equal elements in earlier rows). The converter's selection code
// (schemes/prune.h, tested against a full-sort oracle), here run on the source.
class PrunedRows {
 public:
  PrunedRows(const prune::PruneSpec& spec, const uint8_t* x, DType dt, uint64_t rows,
             uint64_t cols);

  // The per-tensor threshold (a histogram pass over the whole tensor, calling `walked` with
  // the bytes read so far so the caller can release them). False on NaN/Inf.
  bool Init(const std::function<void(uint64_t)>& walked);

  // Row r (rows in increasing order), pruned; nullptr on NaN/Inf.
  const uint8_t* Row(uint64_t r);

 private:
  const prune::PruneSpec spec_;
  const uint8_t* x_;
  const DType dt_;
  const uint64_t rows_, cols_, row_bytes_;
  std::vector<uint8_t> buf_;
  prune::TensorThreshold threshold_;
  uint64_t equal_before_ = 0;
};

// "2:4", "unstructured:0.5", "unstructured:0.5 per tensor".
std::string PruneText(const prune::PruneSpec& spec);

}  // namespace quench::verify

#endif  // QUENCH_VERIFY_PRUNED_ROWS_H_
