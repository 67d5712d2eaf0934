// FP8-block sources quantized without decoding them first: one pass from E4M3 codes and their
// block multipliers straight to a group scheme's outputs, byte for byte what decoding
// (fp8::DequantizeSource) followed by the scheme's kernel writes.
//
// Why it can: inside one source block every weight is x = RNE_bf16(f32(code) * s_block), so a
// weight takes one of 256 values, and |x| grows with the code's low 7 bits. A group that lies
// inside one block therefore has its amax decided by its largest code magnitude `mc`, its
// quantization parameters decided by (block, mc), and every element's output decided by its
// code through a 256-entry table built once per (block, mc) with the scheme's own arithmetic.
// The chunk then costs a byte max and a table lookup per weight instead of a decode, a
// division and the roundings (bench/README.md, "Kernels: FP8 sources fused, int4 pairs").
//
// The lookups need AVX-512 VBMI (64 byte-table lookups per instruction); AVX2 CPUs without it
// take per-group thresholds on the code instead (fp8_source_avx2.cc, same bytes). On other
// CPUs, and for shapes or schemes outside what is handled here, the calls return kNotHandled
// and the caller decodes and runs the scheme's kernel as before.
#ifndef QUENCH_SCHEMES_FP8_SOURCE_QUANT_H_
#define QUENCH_SCHEMES_FP8_SOURCE_QUANT_H_

#include <cstddef>

#include "schemes/chunk.h"
#include "schemes/fp8.h"

namespace quench::fp8 {

enum class FusedResult {
  kNotHandled,  // nothing written: decode and quantize the usual way
  kOk,          // every output of the chunk written
  kNotFinite,   // a NaN code or a product not finite in bf16 (as DequantizeSource's false)
};

// True when this CPU runs the fused kernels (AVX-512 BW + VBMI, or AVX2).
bool FusedSourceAvailable();

// What one thread's fused kernels keep between calls for a source `scale_cols` blocks wide
// (fp8_source_tables.h's Workspace: per block column and code magnitude a 256-byte table, its
// decode and scale entries and two stamps; a stamp per column), at most: the pages are
// touched as tables are built. The memory budget counts it once per worker thread. 0 where
// the fused kernels are not built.
uint64_t FusedWorkspaceBytes(uint64_t scale_cols);

// Symmetric int4 groups, packed (W4A16's pack-quantized with a group size): out[0] = the
// rows' int32 words (cols / 2 bytes a row), out[1] = bf16 scales [rows, cols / group].
// Handled when the group size is a multiple of 64 that divides block_cols and cols, and no
// scale has its sign bit set.
FusedResult QuantizeSourceInt4(const SourceChunk& in, size_t group, const ChunkOutputs& out);

// NVFP4 (group 16, E4M3 group scales, the fused set's f32 global scale): out[0] = packed
// nibbles (cols / 2 bytes a row), out[1] = E4M3 scale codes [rows, cols / 16]. Handled when
// cols is a multiple of 64, block_cols of 16, the global scale is finite and > 0, and no
// scale has its sign bit set.
FusedResult QuantizeSourceNvfp4(const SourceChunk& in, float global_scale,
                                const ChunkOutputs& out);

namespace internal {

// The AVX2 kernels alone (what the calls above run on a CPU without VBMI), for tests on any
// AVX2 CPU: the same contract, kNotHandled without AVX2.
bool Avx2FusedAvailable();
FusedResult QuantizeSourceInt4Avx2(const SourceChunk& in, size_t group, const ChunkOutputs& out);
FusedResult QuantizeSourceNvfp4Avx2(const SourceChunk& in, float global_scale,
                                    const ChunkOutputs& out);

}  // namespace internal

}  // namespace quench::fp8

#endif  // QUENCH_SCHEMES_FP8_SOURCE_QUANT_H_
