// An in-memory compressed-tensors weight for the decoder kernel tests (test_ct_decode_kernel,
// test_byte_decode): codes, scales (shard 0) and zero points (shard 1), and the scale layout
// of each strategy.
#ifndef QUENCH_TESTS_CT_FIXTURE_H_
#define QUENCH_TESTS_CT_FIXTURE_H_

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "quench/ct_weight.h"
#include "quench/status.h"

namespace quench::testing {

struct CtFixture {
  CtWeight w;
  std::vector<uint8_t> codes, scales, zeros;

  Status Read(const CtTensor& t, uint64_t off, uint64_t len, uint8_t* dst) const {
    const std::vector<uint8_t>& src = t.shard == 0 ? scales : zeros;
    REQUIRE(t.offset + off + len <= src.size());
    std::memcpy(dst, src.data() + t.offset + off, len);
    return Status::Ok();
  }
};

// Sets w's scale grid for `strategy` (group: the group size, or the block's side) on a weight
// of w.rows x w.cols, as compressed-tensors lays it out: a scale per row and group, per
// block, or one per tensor. Returns the scale tensor's rows.
inline uint64_t SetScaleLayout(CtWeight& w, CtStrategy strategy, uint64_t group) {
  const uint64_t rows = w.rows, cols = w.cols;
  w.strategy = strategy;
  switch (strategy) {
    case CtStrategy::kGroup:
      w.group_size = group;
      w.scale_cols = (cols + group - 1) / group;
      return rows;
    case CtStrategy::kBlock:
      w.block_rows = group;
      w.block_cols = group;
      w.scale_cols = (cols + group - 1) / group;
      w.scale_row_span = group;
      return (rows + group - 1) / group;
    case CtStrategy::kTensor:
      w.scale_row_span = rows;
      return 1;
    default:
      return rows;
  }
}

}  // namespace quench::testing

#endif  // QUENCH_TESTS_CT_FIXTURE_H_
