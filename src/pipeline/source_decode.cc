#include "pipeline/source_decode.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "format/source_quant.h"
#include "pipeline/source_decode_packed.h"
#include "schemes/ct_decode.h"
#include "schemes/ct_stack.h"
#include "schemes/float_formats.h"
#include "schemes/fp4.h"
#include "schemes/fp8.h"
#include "schemes/fp8_source_quant.h"
#include "schemes/int.h"

namespace quench {

namespace {

// The scales of the tile rows holding rows [r0, r1) of `t`, read from the scale's shard and
// checked, and the chunk description over them (codes at `codes`).
Status ReadScales(const Plan& plan, const PlannedTensor& t, SourceMaps& maps,
                  const uint8_t* codes, uint64_t r0, uint64_t r1, std::vector<float>* scales,
                  fp8::SourceChunk* in) {
  const PlannedSourceScale& s = *t.source_scale;
  // The tile rows that hold rows [r0, r1): scale_cols scales each, row-major.
  const uint64_t tr0 = r0 / s.block_rows, tr1 = (r1 - 1) / s.block_rows + 1;
  const uint64_t esize = DTypeBits(s.dtype) / 8;
  const uint64_t first = tr0 * s.scale_cols, count = (tr1 - tr0) * s.scale_cols;
  if ((first + count) * esize > s.nbytes) {
    return Error(ErrorCode::kInternal, "tensor '" + s.name + "': scale rows " +
                                           std::to_string(tr0) + ".." + std::to_string(tr1) +
                                           " lie outside the tensor");
  }
  std::vector<uint8_t> raw(count * esize);
  QUENCH_RETURN_IF_ERROR(maps.Read(s.shard, s.offset + first * esize, raw.size(), raw.data()));
  scales->resize(count);
  if (const size_t bad = SourceScalesToF32(s.dtype, raw.data(), count, scales->data());
      bad < count) {
    const uint64_t at = first + bad;
    const float v = SourceScaleToF32(s.dtype, raw.data() + bad * esize);
    return Error(ErrorCode::kInvalidInput,
                 plan.shards[s.shard].rel_name + ": tensor '" + s.name + "' holds " +
                     (std::isnan(v) ? "a NaN" : std::isinf(v) ? "an infinite" : "a negative") +
                     " scale at [" + std::to_string(at / s.scale_cols) + ", " +
                     std::to_string(at % s.scale_cols) + "]; '" + t.name +
                     "' cannot be decoded (a scale must be finite and not negative)");
  }
  in->codes = codes;
  in->rows = r1 - r0;
  in->cols = t.shape[1];
  in->first_row = r0;
  in->scales = scales->data();
  in->scale_cols = s.scale_cols;
  in->block_rows = s.block_rows;
  in->block_cols = s.block_cols;
  return Status::Ok();
}

// A compressed-tensors weight (schemes/ct_decode.h): its tensors read through `maps`.
Status DecodeCtRows(const Plan& plan, const PlannedTensor& t, SourceMaps& maps,
                    const uint8_t* codes, uint64_t r0, uint64_t r1, uint8_t* out, bool* finite) {
  auto read = [&](const CtTensor& x, uint64_t off, uint64_t len, uint8_t* dst) {
    return maps.Read(x.shard, x.offset + off, len, dst);
  };
  // 2-D weights, pieces of 3-D stacks and whole stacks: schemes/ct_stack.h.
  const PlannedSourceScale& s = *t.source_scale;
  Status st = DecodeCtStackRows(*s.ct, s.ct_expert, s.ct_row0, read, t.name, codes, r0, r1, out,
                                finite);
  if (!st.ok() && st.code() == ErrorCode::kInvalidInput) {
    return Error(st.code(), plan.shards[t.shard].rel_name + ": " + st.message());
  }
  return st;
}

}  // namespace

Status DecodeSourceRows(const Plan& plan, const PlannedTensor& t, SourceMaps& maps,
                        const uint8_t* codes, uint64_t r0, uint64_t r1, uint8_t* out,
                        bool* finite) {
  // AutoAWQ and ModelOpt NVFP4 sources read their own codes (source_decode_packed.h).
  if (t.source_scale->packed_kind != PackedKind::kNone) {
    return DecodePackedRows(plan, t, maps, r0, r1, out, finite);
  }
  *finite = true;
  if (r1 <= r0) return Status::Ok();
  if (t.source_scale->ct) return DecodeCtRows(plan, t, maps, codes, r0, r1, out, finite);
  std::vector<float> scales;
  fp8::SourceChunk in;
  QUENCH_RETURN_IF_ERROR(ReadScales(plan, t, maps, codes, r0, r1, &scales, &in));
  *finite = fp8::DequantizeSource(in, out);
  return Status::Ok();
}

bool FusedSourceTensor(const PlannedTensor& t) {
  if (!t.source_scale || t.source_scale->packed_kind != PackedKind::kNone || t.source_scale->ct ||
      t.action != TensorAction::kQuantize || t.prune || t.scheme == nullptr ||
      t.compute_dtype != DType::kBF16 || !fp8::FusedSourceAvailable()) {
    return false;
  }
  // As QuantizeSourceRows decides from the kernel and its parameters.
  return (t.scheme->kernel == &intq::QuantizePacked && t.params.bits == 4 && t.params.symmetric &&
          t.params.group_size.value_or(0) > 0) ||
         t.scheme->kernel == &fp4::QuantizeNvfp4;
}

Status QuantizeSourceRows(const Plan& plan, const PlannedTensor& t, SourceMaps& maps,
                          const uint8_t* codes, uint64_t r0, uint64_t r1, ChunkKernel kernel,
                          const KernelParams& params, const ChunkOutputs& outs, bool* handled,
                          bool* finite) {
  *handled = false;
  *finite = true;
  const bool int4 = kernel == &intq::QuantizePacked && params.bits == 4 && params.symmetric &&
                    params.group_size > 0;
  const bool nvfp4 = kernel == &fp4::QuantizeNvfp4;
  if (t.source_scale->packed_kind != PackedKind::kNone || t.source_scale->ct || r1 <= r0 ||
      !(int4 || nvfp4) || t.compute_dtype != DType::kBF16 || !fp8::FusedSourceAvailable()) {
    return Status::Ok();
  }
  std::vector<float> scales;
  fp8::SourceChunk in;
  QUENCH_RETURN_IF_ERROR(ReadScales(plan, t, maps, codes, r0, r1, &scales, &in));
  const fp8::FusedResult res =
      int4 ? fp8::QuantizeSourceInt4(in, static_cast<size_t>(params.group_size), outs)
           : fp8::QuantizeSourceNvfp4(in, params.global_scale, outs);
  *handled = res != fp8::FusedResult::kNotHandled;
  *finite = res != fp8::FusedResult::kNotFinite;
  return Status::Ok();
}

uint64_t DecodeTileRows(const Plan& plan, const PlannedTensor& t) {
  const PlannedShard& ps = plan.shards[t.shard];
  uint64_t align = std::max<uint64_t>(1, t.scheme->row_align);
  for (size_t j = 0; j < t.kernel_outputs; ++j) {
    align = std::lcm(align, std::max<uint64_t>(1, ps.outputs[t.outputs[j]].rows_per_slab));
  }
  const uint64_t rows =
      std::max<uint64_t>(1, kDecodeTileBytes / ComputeRowBytes(t) / align) * align;
  // A linearized stack's piece reads each tile's rows as a run of every stored row of its
  // expert (schemes/stack_transpose.h): runs of a few values would read each cache line of the
  // block several times, one stored row (tens of KB) apart. kLinearTileRows make each run
  // whole cache lines.
  if (t.source_scale && t.source_scale->packed_kind == PackedKind::kLinear) {
    return std::max(rows, (kLinearTileRows + align - 1) / align * align);
  }
  return rows;
}

uint8_t* ThreadDecodeTile(uint64_t bytes) {
  thread_local std::vector<uint8_t> tile;
  tile.resize(bytes);
  return tile.data();
}

Status SourceRowsAbsMax(const Plan& plan, const PlannedTensor& t, SourceMaps& maps,
                        const uint8_t* codes, uint64_t r0, uint64_t r1, float* amax,
                        bool* finite) {
  *finite = true;
  *amax = 0.f;
  if (r1 <= r0) return Status::Ok();
  if (t.source_scale->packed_kind != PackedKind::kNone || t.source_scale->ct) {
    // Decoded a tile at a time, then the largest |x|: the global scale is the decoded
    // model's. A packed source reads its own codes (DecodeSourceRows); `codes` steps by the
    // stored rows of the others.
    const uint64_t tile_rows = DecodeTileRows(plan, t), in_row = SourceRowBytes(t);
    const bool packed = t.source_scale->packed_kind != PackedKind::kNone;
    uint16_t top = 0;
    for (uint64_t r = r0; r < r1; r += tile_rows) {
      const uint64_t e = std::min(r1, r + tile_rows), n = (e - r) * t.shape[1];
      uint8_t* tile = ThreadDecodeTile(n * 2);
      bool ok = true;
      const uint8_t* at = packed ? codes : codes + (r - r0) * in_row;
      QUENCH_RETURN_IF_ERROR(DecodeSourceRows(plan, t, maps, at, r, e, tile, &ok));
      if (!ok) *finite = false;  // decoding goes on: a bad scale further on is reported first
      // Magnitudes compare as their bits (bf16 without NaN: a NaN makes *finite false and the
      // caller refuses the tensor), so the max is an integer max the compiler vectorises.
      for (uint64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, tile + 2 * i, 2);
        top = std::max<uint16_t>(top, h & 0x7FFF);
      }
    }
    *amax = BF16ToF32(top);
    return Status::Ok();
  }
  std::vector<float> scales;
  fp8::SourceChunk in;
  QUENCH_RETURN_IF_ERROR(ReadScales(plan, t, maps, codes, r0, r1, &scales, &in));
  *finite = fp8::SourceAbsMax(in, amax);
  return Status::Ok();
}

bool IsFp8BlockSource(const PlannedTensor& t) {
  return t.source_scale.has_value() && t.source_scale->packed_kind == PackedKind::kNone &&
         !t.source_scale->ct;
}

Status SearchSourceAbsMax(const Plan& plan, const PlannedTensor& t, SourceMaps& maps,
                          const uint8_t* codes, float* amax, bool* finite,
                          const std::function<void(uint64_t r0, uint64_t r1)>& rows_read) {
  *finite = true;
  *amax = 0.f;
  if (t.shape[0] == 0) return Status::Ok();
  // Every scale of the weight (1/16384 of its codes for 128x128 blocks, 4 bytes each).
  std::vector<float> scales;
  fp8::SourceChunk in;
  QUENCH_RETURN_IF_ERROR(ReadScales(plan, t, maps, codes, 0, t.shape[0], &scales, &in));
  *finite = fp8::SearchSourceAbsMax(in, amax, nullptr, rows_read);
  return Status::Ok();
}

}  // namespace quench
