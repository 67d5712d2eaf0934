// The unit of work every scheme kernel takes: a run of whole rows of one 2-D weight tensor,
// read straight from the memory-mapped input (no staging copy), and the destinations of the
// scheme's output tensors for exactly those rows.
#ifndef QUENCH_SCHEMES_CHUNK_H_
#define QUENCH_SCHEMES_CHUNK_H_

#include <cstddef>
#include <cstdint>

#include "quench/dtype.h"

namespace quench {

struct WeightChunk {
  const uint8_t* data = nullptr;  // row-major; may be unaligned
  DType dtype = DType::kBF16;     // BF16, F16 or F32
  size_t rows = 0;
  size_t cols = 0;
};

// Where a kernel writes: out[i] is the start of output tensor i's bytes for this chunk's rows
// (the scheme table says which tensor is i, and how many bytes a run of rows produces).
struct ChunkOutputs {
  static constexpr int kMax = 4;
  uint8_t* out[kMax] = {};
};

// Result of a kernel call: false when the chunk holds a NaN or Inf (nothing else is checked,
// since every other bit pattern is a valid input).
using ChunkKernel = bool (*)(const WeightChunk& in, const ChunkOutputs& out);

}  // namespace quench

#endif  // QUENCH_SCHEMES_CHUNK_H_
