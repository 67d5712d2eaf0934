// ZeroStructure (see zero_structure.h).
#include "verify/zero_structure.h"

#include <algorithm>

namespace quench::verify {

ZeroStructure::ZeroStructure(const prune::PruneSpec& spec, uint64_t rows, uint64_t cols,
                             uint64_t block)
    : spec_(spec), rows_(rows), cols_(cols), block_(std::max<uint64_t>(1, block)),
      block_zeros_((cols + block_ - 1) / block_, 0) {}

void ZeroStructure::AddRow(uint64_t r, const std::vector<uint8_t>& zero) {
  if (spec_.kind == prune::PruneSpec::kNM) {
    const uint64_t m = static_cast<uint64_t>(spec_.m);
    for (uint64_t g0 = 0; g0 + m <= cols_; g0 += m) {
      uint64_t z = 0;
      for (uint64_t j = 0; j < m; ++j) z += zero[g0 + j];
      if (z < m - static_cast<uint64_t>(spec_.n) && short_++ == 0) {
        first_ = "row " + std::to_string(r) + ", columns " + std::to_string(g0) + ".." +
                 std::to_string(g0 + m - 1) + " hold " + std::to_string(z) + " zeros";
      }
    }
    return;
  }
  uint64_t row_zeros = 0;
  for (uint64_t c = 0; c < cols_; ++c) {
    block_zeros_[c / block_] += zero[c];
    row_zeros += zero[c];
  }
  if (row_zeros < prune::PruneCount(spec_.fraction, cols_) && row_short_++ == 0) {
    row_first_ = "row " + std::to_string(r) + " holds " + std::to_string(row_zeros) + " zeros";
  }
}

std::string ZeroStructure::Finish() {
  if (spec_.kind == prune::PruneSpec::kUnstructured) {
    // A weight SparseGPT had no Hessian for is pruned by magnitude per row instead: either
    // structure is SparseGPT's output.
    if (row_short_ == 0) return std::string();
    for (uint64_t b = 0; b < block_zeros_.size(); ++b) {
      const uint64_t width = std::min(cols_, (b + 1) * block_) - b * block_;
      const uint64_t want = prune::PruneCount(spec_.fraction, rows_ * width);
      if (block_zeros_[b] < want && short_++ == 0) {
        first_ = "columns " + std::to_string(b * block_) + ".." +
                 std::to_string(b * block_ + width - 1) + " hold " +
                 std::to_string(block_zeros_[b]) + " zeros, at least " + std::to_string(want) +
                 " expected";
      }
    }
  }
  if (short_ == 0) return std::string();
  if (spec_.kind == prune::PruneSpec::kUnstructured) {
    first_ += "; nor per row as the magnitude fallback: " + row_first_;
  }
  return first_ + (short_ > 1 ? " (and " + std::to_string(short_ - 1) + " more)" : "");
}

}  // namespace quench::verify
