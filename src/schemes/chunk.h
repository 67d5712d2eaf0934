// The unit of work every scheme kernel takes: a run of whole rows of one 2-D weight tensor,
// read straight from the memory-mapped input (no staging copy), and the destinations of the
// scheme's output tensors for exactly those rows.
#ifndef QUENCH_SCHEMES_CHUNK_H_
#define QUENCH_SCHEMES_CHUNK_H_

#include <cstddef>
#include <cstdint>

#include "quench/dtype.h"

namespace quench {

// Per-tensor parameters a kernel may need beyond the scheme itself: the user's overrides of
// the preset (bit width, group size, symmetry) and values from the pre-pass.
struct KernelParams {
  int bits = 8;
  int group_size = 0;        // 0: not a group scheme
  bool symmetric = true;
  float global_scale = 0.f;  // NVFP4: the fused set's weight_global_scale (fp32)
};

struct WeightChunk {
  const uint8_t* data = nullptr;  // row-major; may be unaligned
  DType dtype = DType::kBF16;     // BF16, F16 or F32
  size_t rows = 0;
  size_t cols = 0;
  KernelParams params;
  // The chunk's first row in its tensor: kernels ignore it; a calibration that keeps
  // per-row results of a whole-tensor pass (imatrix_mse's chosen steps) finds them with it.
  uint64_t row0 = 0;
  // Column factors folded in as the rows are read (smoothing's balance weights): the kernel
  // quantizes RNE_D(x * col_scale[c]) (one f32 product, rounded to the dtype) in place of
  // each element x of column c, so that no smoothed copy of the rows is written first.
  // Null: the rows as they are. Only kernels of schemes marked `column_scales` read it.
  const float* col_scale = nullptr;
};

// Where a kernel writes: out[i] is the start of output tensor i's bytes for this chunk's rows
// (the scheme table says which tensor is i, and how many bytes a run of rows produces).
struct ChunkOutputs {
  static constexpr int kMax = 4;
  uint8_t* out[kMax] = {};
};

// Result of a kernel call: false when the chunk holds a NaN or Inf (nothing else is checked,
// since every other bit pattern is a valid input). A kernel whose scratch memory cannot be
// allocated throws std::bad_alloc, which the pipeline reports as running out of memory.
using ChunkKernel = bool (*)(const WeightChunk& in, const ChunkOutputs& out);

}  // namespace quench

#endif  // QUENCH_SCHEMES_CHUNK_H_
