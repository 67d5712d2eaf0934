// AutoAWQ GEMM, ModelOpt NVFP4 and gpt-oss MXFP4 weights (format/source_packed.h) read where
// the pipeline and the pre-pass read a weight's rows: decoded to BF16 for any other scheme, or
// (AWQ) repacked into the compressed-tensors pack-quantized outputs of the source's own
// scheme, unchanged. Only the rows asked for are read, with their scales and zero points (an
// MXFP4 stack's rows are columns of its stored codes: read across their expert's rows).
#ifndef QUENCH_PIPELINE_SOURCE_DECODE_PACKED_H_
#define QUENCH_PIPELINE_SOURCE_DECODE_PACKED_H_

#include <cstdint>
#include <utility>

#include "pipeline/pipeline.h"
#include "quench/plan.h"
#include "schemes/chunk.h"

namespace quench {

// Rows [r0, r1) of `t` decoded to BF16 into `out`, as compressed-tensors dequantizes the
// converter's repack of the same weight (CompressedTensorsDequantizer, dtype bfloat16):
//   AWQ:     bf16(f16((q - z) * scale))                 (pack-quantized, computed in F16)
//   ModelOpt: bf16(e2m1 * bf16(e4m3 / (1 / weight_scale_2)))  (0-dim F32 global scale)
// or, gpt-oss MXFP4, as transformers' convert_moe_packed_tensors: bf16(e2m1 * 2^(e8m0 - 127)),
// each expert transposed to [in, out] (schemes/mxfp4_stack.h), or, a linearized BF16 stack's
// piece (PackedKind::kLinear), its expert's columns copied (schemes/stack_transpose.h; a NaN
// or Inf is kNonFinite naming the element).
// A scale that is NaN, infinite or negative is kInvalidInput naming the tensor and element;
// *finite is false when a decoded value is not finite.
Status DecodePackedRows(const Plan& plan, const PlannedTensor& t, SourceMaps& maps, uint64_t r0,
                        uint64_t r1, uint8_t* out, bool* finite);

// AWQ repack (source_scale->repack): the W4A16(_ASYM) kernel outputs of rows [r0, r1) (r0 a
// multiple of 8) from the stored codes, scales and zero points, as the reference's
// AutoAWQConverter writes them: weight_packed [out, in/8] I32, weight_scale [out, in/g] F16,
// weight_zero_point [out/8, in/g] I32 (the raw 4-bit codes, in output order).
Status RepackAwqRows(const Plan& plan, const PlannedTensor& t, SourceMaps& maps, uint64_t r0,
                     uint64_t r1, const ChunkOutputs& outs);

// True for an AutoAWQ weight: its qweight is [in, out/8], packed along the outputs, so any
// rows read (a chunk's, a tile's, the pre-pass's) touch every stored row and map folios
// across the whole weight. The pipeline and the pre-pass release such a weight's pages whole
// (after its last chunk is written, or after its pre-pass scan) in place of the row ranges
// they release for the others, and MappedOverhangBytes counts what stays mapped meanwhile.
// A linearized stack's piece (PackedKind::kLinear) likewise reads across its expert's whole
// block: the block is released once the piece's last chunk is written. (Releasing each
// chunk's share would drop pages the piece's later chunks read again.)
bool ReadsAcrossWeight(const PlannedTensor& t);

// What such a tensor releases whole: (absolute offset, bytes): an AutoAWQ weight's own bytes,
// a linearized piece's expert block.
std::pair<uint64_t, uint64_t> AcrossRange(const PlannedTensor& t);

// A gpt-oss MXFP4 stack's bytes of codes per expert, or a linearized BF16 stack piece's
// expert block (0 for any other tensor): a chunk's rows are columns of the stored expert,
// read from every stored row of it, beyond the chunk's own share of the bytes
// (MappedOverhangBytes counts them).
uint64_t StackExpertBytes(const PlannedTensor& t);

}  // namespace quench

#endif  // QUENCH_PIPELINE_SOURCE_DECODE_PACKED_H_
