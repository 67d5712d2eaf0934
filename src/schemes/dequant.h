// Quantization error measured during quantization, for --report: each chunk's outputs are
// decoded back (on a deterministic sample of rows) and compared with the input rows. The
// decoders follow the formats (compressed-tensors' dequantize), one per stored format.
#ifndef QUENCH_SCHEMES_DEQUANT_H_
#define QUENCH_SCHEMES_DEQUANT_H_

#include <cstdint>

#include "quench/scheme.h"
#include "schemes/chunk.h"

namespace quench {

struct ErrorSums {
  double signal = 0;  // sum of x^2
  double noise = 0;   // sum of (x - dequantized)^2
  uint64_t count = 0; // elements compared
};

// Adds, for every row r of the chunk with (first_row + r) % row_stride == 0, the signal and
// noise of its elements. `out` are the kernel's outputs for exactly this chunk.
void AccumulateChunkError(const SchemeInfo& scheme, const WeightChunk& in,
                          const ChunkOutputs& out, uint64_t first_row, uint64_t row_stride,
                          ErrorSums* sums);

}  // namespace quench

#endif  // QUENCH_SCHEMES_DEQUANT_H_
