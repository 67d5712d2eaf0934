// The calibration seam: the one interface through which the pipeline hands a tensor's chunks
// to calibration (GPTQ) instead of the scheme's kernel, or (SparseGPT) instead of magnitude
// pruning. Abstract and free of dependencies, so
// the data-free path includes nothing else of src/calib and runs with no implementation
// (a null pointer).
#ifndef QUENCH_CALIB_SEAM_H_
#define QUENCH_CALIB_SEAM_H_

#include <cstddef>
#include <cstdint>

#include "quench/status.h"
#include "schemes/chunk.h"

namespace quench {

class ChunkCalibration {
 public:
  virtual ~ChunkCalibration() = default;
  // Whether the chunks of plan tensor `tensor` go through Quantize.
  virtual bool Takes(size_t tensor) const = 0;
  // Input stage (serial), before the tensor's first chunk is read: what its chunks need
  // (GPTQ: the factored Hessian of its site).
  virtual Status Prepare(size_t tensor) = 0;
  // Parallel stage, in place of the scheme's kernel: same inputs, outputs and result (false
  // for NaN or Inf in the rows).
  virtual bool Quantize(size_t tensor, const WeightChunk& in, const ChunkOutputs& out) = 0;
  // Parallel stage, in place of magnitude pruning (SparseGPT), for a tensor it takes that the
  // plan prunes: rows [begin, begin + rows) of it, `src` in its dtype, into `dst` (same dtype
  // and layout); *zeroed is increased by the positions pruned. False for NaN or Inf in the
  // rows. A calibration that does not prune never receives this call.
  virtual bool Prune(size_t tensor, const uint8_t* src, uint8_t* dst, size_t begin, size_t rows,
                     uint64_t* zeroed) {
    (void)tensor, (void)src, (void)dst, (void)begin, (void)rows, (void)zeroed;
    return false;
  }
  // Whether Prune replaces the plan's pruning for the tensors it takes (SparseGPT); a
  // calibration that only quantizes (GPTQ, imatrix_mse) leaves pruning to the plan's metric.
  virtual bool Prunes() const { return false; }
  // Whether tensor `tensor`'s pruning goes through Prune (a composed calibration asks its
  // pruning stage, src/calib/composite.h).
  virtual bool PrunesTensor(size_t tensor) const { return Prunes() && Takes(tensor); }
  // Output stage (serial, in order), once the tensor's last chunk is done: Prepare's
  // resources may go.
  virtual void Done(size_t tensor) = 0;

  // Transforms of a tensor's elements before they are quantized or copied (smoothing folds
  // its scales in this way); none by default. The plan marks such tensors (smoothed).
  // Whether the rows of quantized tensor `tensor` are transformed before the kernel (or
  // before Quantize).
  virtual bool Transforms(size_t /*tensor*/) const { return false; }
  // Parallel stage: `in`'s rows (rows row0.. of the tensor), transformed, in storage of the
  // calling thread that stays valid until its next call.
  virtual const uint8_t* TransformRows(size_t /*tensor*/, uint64_t /*row0*/,
                                       const WeightChunk& in) {
    return in.data;
  }
  // Column factors the scheme's kernel may fold into quantized tensor `tensor`'s rows
  // (WeightChunk::col_scale) in place of TransformRows, when its transform is exactly one
  // product of each column by an f32 factor; null otherwise. Valid for the whole run.
  virtual const float* ColumnFactors(size_t /*tensor*/) const { return nullptr; }
  // Whether copied tensor `tensor`'s bytes are rewritten; its pieces then hold whole elements.
  virtual bool RewritesCopy(size_t /*tensor*/) const { return false; }
  // Parallel stage: bytes [begin, begin + len) of the tensor, rewritten in place.
  virtual void RewriteCopy(size_t /*tensor*/, uint64_t /*begin*/, uint8_t* /*data*/,
                           uint64_t /*len*/) {}
};

}  // namespace quench

#endif  // QUENCH_CALIB_SEAM_H_
