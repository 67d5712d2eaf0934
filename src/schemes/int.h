// Integer weight quantization as compressed-tensors does it: symmetric or asymmetric, per
// output channel or per group of input columns, stored unpacked (int-quantized: W8A8, W4A8)
// or bit-packed into int32 words (pack-quantized: W4A16, W8A16, W2..W7A16, W4A16_ASYM,
// W4AFP8). Each has a scalar reference (the definition) and a Highway kernel that must match
// it bit for bit on every target.
//
// Parameters (WeightChunk::params): bits (2..8), group_size (0 or -1: one group per row, i.e.
// channel strategy; else cols % group_size == 0), symmetric. n_groups = cols / group_size.
//
// Outputs for a chunk of rows (see chunk.h), all little-endian, row-major:
//   Unpacked: out[0] int8 values [rows, cols] (no offset); out[1] scales [rows, n_groups] in the
//     weight dtype; out[2] (asymmetric only) int8 zero points [rows, n_groups].
//   Packed:   out[0] int32 words [rows, ceil(cols*bits/32)] (value + 2^(bits-1), packed
//     LSB-first, densely across words); out[1] scales [rows, n_groups]; out[2] (asymmetric
//     only) zero points + 2^(bits-1) packed the same way along dim 0: int32
//     [ceil(rows*bits/32), n_groups]. For this, a chunk's rows start at a multiple of 32
//     (kPackRowAlign) and the chunk's zero-point slab covers ceil(rows*bits/32) packed rows.
#ifndef QUENCH_SCHEMES_INT_H_
#define QUENCH_SCHEMES_INT_H_

#include "schemes/chunk.h"

namespace quench::intq {

inline constexpr size_t kPackRowAlign = 32;

bool QuantizeUnpackedScalar(const WeightChunk& in, const ChunkOutputs& out);
bool QuantizePackedScalar(const WeightChunk& in, const ChunkOutputs& out);

// Highway kernels, dispatched to the best target this CPU supports.
bool QuantizeUnpacked(const WeightChunk& in, const ChunkOutputs& out);
bool QuantizePacked(const WeightChunk& in, const ChunkOutputs& out);

}  // namespace quench::intq

#endif  // QUENCH_SCHEMES_INT_H_
