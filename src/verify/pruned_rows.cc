// PrunedRows: the pruning kernels run out of place, one row at a time, from the mapped source.
#include "verify/pruned_rows.h"

#include <algorithm>

#include "verify/checkpoint.h"
#include "verify/messages.h"

namespace quench::verify {

PrunedRows::PrunedRows(const prune::PruneSpec& spec, const uint8_t* x, DType dt, uint64_t rows,
                       uint64_t cols)
    : spec_(spec), x_(x), dt_(dt), rows_(rows), cols_(cols),
      row_bytes_(cols * DTypeBits(dt) / 8), buf_(row_bytes_) {}

bool PrunedRows::Init(const std::function<void(uint64_t)>& walked) {
  if (!spec_.per_tensor) return true;
  const uint64_t chunk_rows =
      std::max<uint64_t>(1, kChunkBytes / std::max<uint64_t>(1, row_bytes_));
  return prune::FindTensorThreshold(x_, dt_, rows_, cols_,
                                    prune::PruneCount(spec_.fraction, rows_ * cols_),
                                    chunk_rows,
                                    [&](uint64_t r, uint64_t n) {
                                      walked((r + n) * row_bytes_);
                                      return true;
                                    },
                                    &threshold_) == prune::ThresholdWalk::kComplete;
}

const uint8_t* PrunedRows::Row(uint64_t r) {
  const uint8_t* in = x_ + r * row_bytes_;
  bool ok;
  if (spec_.per_tensor) {
    const uint64_t eq = prune::CountEqual(in, dt_, 1, cols_, threshold_.magnitude);
    ok = prune::PruneRowsTensor(in, buf_.data(), dt_, 1, cols_, threshold_, equal_before_,
                                nullptr);
    equal_before_ += eq;
  } else {
    ok = prune::PruneRows(in, buf_.data(), dt_, 1, cols_, spec_, nullptr);
  }
  return ok ? buf_.data() : nullptr;
}

std::string PruneText(const prune::PruneSpec& spec) {
  if (spec.kind == prune::PruneSpec::kNM) return prune::SparsityStructure(spec);
  return "unstructured:" + Fmt("%g", spec.fraction) + (spec.per_tensor ? " per tensor" : "");
}

}  // namespace quench::verify
