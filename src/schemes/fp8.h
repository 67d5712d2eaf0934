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

#include <functional>

#include "schemes/chunk.h"

namespace quench::fp8 {

inline constexpr size_t kBlock = 128;

bool QuantizeChannelScalar(const WeightChunk& in, const ChunkOutputs& out);
// Per tensor (the FP8 preset): out[0] = codes only; the one scale, a value of the weight dtype
// computed by the pre-pass (TensorScale), comes in in.params.global_scale.
bool QuantizeTensorScalar(const WeightChunk& in, const ChunkOutputs& out);
bool QuantizeTensor(const WeightChunk& in, const ChunkOutputs& out);
// The per-tensor weight scale from the tensor's largest |x| (memoryless min-max over the whole
// tensor, then calculate_qparams): RNE_D(amax / 448), an exact 0 becoming eps(D).
float TensorScale(float amax, DType d);
bool QuantizeBlockScalar(const WeightChunk& in, const ChunkOutputs& out);

// Highway kernels, dispatched to the best target this CPU supports.
bool QuantizeChannel(const WeightChunk& in, const ChunkOutputs& out);
bool QuantizeBlock(const WeightChunk& in, const ChunkOutputs& out);

// Decoding an FP8 source (a checkpoint released in FP8, e.g. DeepSeek-V3's E4M3 weights with
// 128x128 `weight_scale_inv` multipliers): x = RNE_bf16(f32(code) * scale), the product in
// f32 and rounded once to bf16, as compressed-tensors' FP8BlockDequantizer computes it (pad
// to whole tiles, multiply in f32, `.to(bfloat16)`, trim: the padding never reaches an
// output). A per-tensor scale is one tile covering the whole tensor.
struct SourceChunk {
  const uint8_t* codes = nullptr;  // rows x cols E4M3 codes, row-major
  size_t rows = 0;
  size_t cols = 0;
  size_t first_row = 0;            // the chunk's first row within the tensor
  // f32 multipliers, row-major with scale_cols per tile row, starting at the tile row that
  // holds first_row (first_row / block_rows).
  const float* scales = nullptr;
  size_t scale_cols = 0;           // ceil(cols / block_cols)
  size_t block_rows = kBlock;
  size_t block_cols = kBlock;
};

// Writes rows*cols BF16 values to out. False when a code is NaN (0x7F, 0xFF) or a product
// is not finite in bf16 (a scale that overflows the weight): nothing else is checked.
bool DequantizeSourceScalar(const SourceChunk& in, uint8_t* out);
bool DequantizeSource(const SourceChunk& in, uint8_t* out);

// The largest |x| of the chunk as DequantizeSource decodes it, without decoding it: with
// non-negative scales (the caller checks them), |x| = RNE_bf16(f32(|code|) * scale) grows with
// |code| (E4M3 magnitudes are ordered like their 7 low bits), so a tile's largest |x| is its
// largest code's. One byte max per element instead of a decode (the NVFP4 pre-pass's need).
// False exactly when DequantizeSource is (a NaN code, or a product not finite in bf16).
// SourceAbsMax is the Highway kernel (a vector byte max per code), SourceAbsMaxScalar the
// same rule one byte at a time.
bool SourceAbsMax(const SourceChunk& in, float* amax);
bool SourceAbsMaxScalar(const SourceChunk& in, float* amax);

// The largest |x| of a whole weight (in.first_row 0, in.rows all its rows, in.scales all its
// scales), reading only the blocks that can hold it: blocks by scale descending, stopping
// when RNE_bf16(448 * s) of the next is no larger than the largest found (the proof is in
// fp8_source_amax.cc). Equal to the largest |x| of DequantizeSourceScalar's output whenever
// that succeeds. False when a block it reads holds a NaN code or a product not finite in
// bf16; blocks it skips are not checked. *blocks_read (if not null): how many it read.
// rows_read (if set) is called with [r0, r1) after each step of at most 128 rows of a block
// is read, so that the caller can release those pages within its memory budget.
using RowsRead = std::function<void(size_t r0, size_t r1)>;
bool SearchSourceAbsMax(const SourceChunk& in, float* amax, size_t* blocks_read,
                        const RowsRead& rows_read = {});

}  // namespace quench::fp8

#endif  // QUENCH_SCHEMES_FP8_H_
