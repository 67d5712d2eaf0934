// Llama 4's BF16 expert stacks stored [E, in, out] read as per-expert [out, in] weights
// (format/model_folder.h `linear_pieces`): a piece's row o is column col0 + o of its expert's
// [in, cols] block. Values are copied, never rounded.
#ifndef QUENCH_SCHEMES_STACK_TRANSPOSE_H_
#define QUENCH_SCHEMES_STACK_TRANSPOSE_H_

#include <cstdint>

namespace quench {

// Rows [r0, r1) of the piece into `out`, (r1 - r0) * in values:
//   out[(o - r0) * in + i] = block[i * cols + col0 + o].
// Returns the first value that is NaN or Inf (BF16 exponent all ones), as (o - r0) * in + i,
// or -1.
int64_t TransposeBf16Columns(const uint16_t* block, uint64_t in, uint64_t cols, uint64_t col0,
                             uint64_t r0, uint64_t r1, uint16_t* out);

// The same, one element at a time (the tests' reference).
int64_t TransposeBf16ColumnsScalar(const uint16_t* block, uint64_t in, uint64_t cols,
                                   uint64_t col0, uint64_t r0, uint64_t r1, uint16_t* out);

}  // namespace quench

#endif  // QUENCH_SCHEMES_STACK_TRANSPOSE_H_
