// FP8 E4M3 weight quantization as compressed-tensors does it, per output channel
// (FP8_DYNAMIC) and per 128x128 block (FP8_BLOCK). Each has a scalar reference (the
// definition) and a Highway kernel that must match it bit for bit on every target.
//
// Outputs for a chunk of rows (see chunk.h): out[0] = E4M3 codes, rows*cols bytes, row-major;
// out[1] = scales in the weight's dtype (BF16/F16/F32), little-endian:
//   channel: `rows` scales (tensor shape [rows_total, 1]);
//   block:   ceil(rows/128) * ceil(cols/128) scales (row-major), and `rows` must be a multiple
//            of 128 unless the chunk ends the tensor.
#ifndef QUENCH_SCHEMES_FP8_H_
#define QUENCH_SCHEMES_FP8_H_

#include "schemes/chunk.h"

namespace quench::fp8 {

inline constexpr size_t kBlock = 128;

bool QuantizeChannelScalar(const WeightChunk& in, const ChunkOutputs& out);
bool QuantizeBlockScalar(const WeightChunk& in, const ChunkOutputs& out);

// Highway kernels, dispatched to the best target this CPU supports.
bool QuantizeChannel(const WeightChunk& in, const ChunkOutputs& out);
bool QuantizeBlock(const WeightChunk& in, const ChunkOutputs& out);

}  // namespace quench::fp8

#endif  // QUENCH_SCHEMES_FP8_H_
