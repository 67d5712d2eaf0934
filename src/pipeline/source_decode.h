// Decoding a source-quantized weight's rows (an FP8 checkpoint's E4M3 codes and their
// weight_scale_inv multipliers) to BF16 where the pipeline and the pre-passes read them: only
// the scales of the rows' tile rows are read, from the scale's own shard, so a weight's scale
// is read with its rows and never whole.
#ifndef QUENCH_PIPELINE_SOURCE_DECODE_H_
#define QUENCH_PIPELINE_SOURCE_DECODE_H_

#include <cstdint>
#include <functional>

#include "pipeline/pipeline.h"
#include "quench/plan.h"
#include "schemes/chunk.h"

namespace quench {

// Bytes of one row of `t` as the kernels read it (compute_dtype: BF16 when decoded).
inline uint64_t ComputeRowBytes(const PlannedTensor& t) {
  return t.shape[1] * (DTypeBits(t.compute_dtype) / 8);
}

// Bytes of one row of `t` as stored in the source (a packed source's words, not DTypeBits of
// its dtype times columns).
inline uint64_t SourceRowBytes(const PlannedTensor& t) {
  return t.shape[0] == 0 ? 0 : t.src_bytes / t.shape[0];
}

// Decoded rows of a source-quantized tensor per tile (QuantizeDecoded, the NVFP4 pre-pass's
// SourceRowsAbsMax): small enough to stay in a core's cache between decoding and use.
inline constexpr uint64_t kDecodeTileBytes = 256 * 1024;
// The least rows per decoded tile of a linearized stack's piece (DecodeTileRows).
inline constexpr uint64_t kLinearTileRows = 256;

// Rows per decoded tile of `t` (which has a scheme): about kDecodeTileBytes of compute rows, in
// whole scheme row blocks and output slabs (so each tile's outputs start at a slab, as a
// smaller chunk's would). One block of rows may be more than kDecodeTileBytes: FP8_BLOCK's
// 128 rows of a 16,384-wide weight are 4 MiB.
uint64_t DecodeTileRows(const Plan& plan, const PlannedTensor& t);

// The calling thread's decode tile, resized to `bytes`: the one buffer every tile-by-tile
// decode uses (QuantizeDecoded, SourceRowsAbsMax), so that a thread keeps a single tile, the
// largest it was asked for (ThreadScratchBytes counts it). Valid until the thread's next
// call. Its users run no parallel work while they hold it (a TBB thread waiting for parallel
// work may run another task meanwhile, which could take the tile).
uint8_t* ThreadDecodeTile(uint64_t bytes);

// Decodes rows [r0, r1) of `t` (which has a source_scale) from `codes`, the E4M3 codes of
// those rows, into `out` ((r1 - r0) * cols BF16 values). A scale that is NaN, infinite or
// negative is bad input (kInvalidInput, naming the scale tensor and its element): a scale is
// data, so this is where it is checked. *finite is set false when a code is NaN or a product
// is not finite in bf16 (the pipeline then reports the rows as it reports any NaN or Inf).
Status DecodeSourceRows(const Plan& plan, const PlannedTensor& t, SourceMaps& maps,
                        const uint8_t* codes, uint64_t r0, uint64_t r1, uint8_t* out,
                        bool* finite);

// Whether QuantizeSourceRows may handle `t` (an FP8-block source, neither compressed-tensors
// nor packed, quantized, not pruned, with symmetric int4 groups or NVFP4, on a CPU with the
// fused kernels):
// its worker threads then keep the fused kernels' tables (ThreadScratchBytes).
bool FusedSourceTensor(const PlannedTensor& t);

// Rows [r0, r1) of an FP8-block source weight quantized straight to the outputs of its
// scheme's kernel (`outs`, for exactly those rows) when fp8_source_quant.h handles the scheme
// (symmetric int4 groups, NVFP4) and shape: *handled then says so and *finite is set as
// DecodeSourceRows sets it; the bytes are those of decoding and running `kernel` on `params`.
// Otherwise *handled is false and nothing is written. Scales are checked as DecodeSourceRows
// checks them.
Status QuantizeSourceRows(const Plan& plan, const PlannedTensor& t, SourceMaps& maps,
                          const uint8_t* codes, uint64_t r0, uint64_t r1, ChunkKernel kernel,
                          const KernelParams& params, const ChunkOutputs& outs, bool* handled,
                          bool* finite);

// The largest |x| of rows [r0, r1) of `t` decoded: the NVFP4 pre-pass's need. FP8-block
// sources compute it without decoding (fp8::SourceAbsMax); compressed-tensors and packed
// sources decode tile by tile (DecodeTileRows) into ThreadDecodeTile, so that a pre-pass
// chunk costs its thread no more than the pipeline's tile. Scales are checked as
// DecodeSourceRows checks them; *finite as DecodeSourceRows sets it.
Status SourceRowsAbsMax(const Plan& plan, const PlannedTensor& t, SourceMaps& maps,
                        const uint8_t* codes, uint64_t r0, uint64_t r1, float* amax,
                        bool* finite);

// True for an FP8 (block or per-tensor scale) source weight, the layout SearchSourceAbsMax reads.
bool IsFp8BlockSource(const PlannedTensor& t);

// The largest |x| of the whole FP8 source weight `t` decoded (codes: all its rows), reading
// only the blocks that can hold it (fp8::SearchSourceAbsMax): the NVFP4 global scale without
// a second pass over the codes. Scales are checked as DecodeSourceRows checks them (all of
// them); *finite is false when a block read holds a NaN code or overflows bf16. rows_read:
// called after each step of rows read (fp8::SearchSourceAbsMax).
Status SearchSourceAbsMax(const Plan& plan, const PlannedTensor& t, SourceMaps& maps,
                          const uint8_t* codes, float* amax, bool* finite,
                          const std::function<void(uint64_t r0, uint64_t r1)>& rows_read);

}  // namespace quench

#endif  // QUENCH_PIPELINE_SOURCE_DECODE_H_
