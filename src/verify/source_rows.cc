// An FP8-quantized SRC (DeepSeek/Kimi layout): its weights are compared as the conversion read
// them, decoded to BF16 with their weight_scale_inv (compressed-tensors' FP8BlockDequantizer's
// arithmetic, schemes/fp8.h), a chunk of rows at a time; a weight written decoded must equal
// the decoded source byte for byte, and its scale tensor is then consumed (absent from DST).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "format/source_ct.h"
#include "schemes/fp8.h"
#include "verify/messages.h"
#include "verify/verifier.h"

namespace quench::verify {

const SourceScale* Verifier::SourceScaleOf(const std::string& weight) const {
  auto it = src_quant_.scales.find(weight);
  return it == src_quant_.scales.end() ? nullptr : &it->second;
}

bool Verifier::DecodeSourceRows(const std::string& weight, const SourceScale& sc,
                                const uint8_t* codes, uint64_t cols, uint64_t r0, uint64_t r1,
                                uint8_t* out) {
  if (sc.ct) return DecodeCtSourceRows(weight, sc, codes, r0, r1, out);
  const uint64_t scale_cols = (cols + sc.block_cols - 1) / sc.block_cols;
  const uint64_t tr0 = r0 / sc.block_rows, tr1 = (r1 - 1) / sc.block_rows + 1;
  const uint64_t esize = DTypeBits(sc.dtype) / 8;
  const uint64_t first = tr0 * scale_cols, count = (tr1 - tr0) * scale_cols;
  std::vector<float> scales(count);
  const uint8_t* raw = src_->Data(sc.name) + first * esize;
  if (const size_t bad = SourceScalesToF32(sc.dtype, raw, count, scales.data()); bad < count) {
    const uint64_t at = first + bad;
    Problem("SRC:" + src_->FileOf(sc.name), sc.name, "scale",
            "source scale at [" + std::to_string(at / scale_cols) + ", " +
                std::to_string(at % scale_cols) + "] is " +
                Fmt("%g", SourceScaleToF32(sc.dtype, raw + bad * esize)) +
                " (must be finite and not negative); '" + weight + "' cannot be decoded");
    return false;
  }
  fp8::SourceChunk in;
  in.codes = codes;
  in.rows = r1 - r0;
  in.cols = cols;
  in.first_row = r0;
  in.scales = scales.data();
  in.scale_cols = scale_cols;
  in.block_rows = sc.block_rows;
  in.block_cols = sc.block_cols;
  if (!fp8::DequantizeSource(in, out)) {
    Problem("SRC:" + src_->FileOf(weight), weight, "code",
            "the FP8 source holds a NaN code, or a value beyond BF16's range once scaled, in "
            "rows " + std::to_string(r0) + ".." + std::to_string(r1 - 1));
    return false;
  }
  return true;
}

// A source FP8 weight that DST stores unquantized: it must be the decoded source (BF16, same
// shape), compared chunk by chunk.
void Verifier::CheckDecodedTensor(const Shard& s, const TensorInfo& t, const SourceScale& sc,
                                  const TensorInfo& d) {
  const std::string& f = dst_.FileOf(t.name);
  if (d.dtype != DType::kBF16 || d.shape != t.shape) {
    Problem(f, t.name, "changed",
            "tensor is " + std::string(DTypeName(d.dtype)) + " " + ShapeString(d.shape) +
                "; the source is FP8 (" + std::string(DTypeName(t.dtype)) + " " +
                ShapeString(t.shape) + " with '" + sc.name + "'), so it must be BF16 " +
                ShapeString(t.shape) + " decoded, or the FP8 weight copied as it is");
    return;
  }
  // A 3-D compressed-tensors stack decoded whole: its rows across experts.
  const uint64_t cols = t.shape.back(), rows = t.numel() / std::max<uint64_t>(1, cols);
  const uint64_t rb = sc.ct ? sc.ct->code_row_bytes : cols;  // bytes of a stored row
  const uint64_t rows_per_chunk =
      std::max<uint64_t>(1, kChunkBytes / std::max<uint64_t>(1, 2 * cols));
  uint64_t so, doff;
  const MappedFile *sm, *dm;
  const uint8_t* sp = src_->Data(t.name, &so, &sm);
  const uint8_t* dp = dst_.Data(t.name, &doff, &dm);
  std::vector<uint8_t> want;
  for (uint64_t r0 = 0; r0 < rows; r0 += rows_per_chunk) {
    const uint64_t r1 = std::min(rows, r0 + rows_per_chunk);
    want.resize((r1 - r0) * cols * 2);
    if (!DecodeSourceRows(t.name, sc, sp + r0 * rb, cols, r0, r1, want.data())) return;
    const uint8_t* got = dp + r0 * cols * 2;
    if (std::memcmp(want.data(), got, want.size()) != 0) {
      uint64_t i = 0;
      while (want[i] == got[i]) ++i;
      Problem(f, t.name, "changed",
              "differs from the FP8 source decoded with '" + sc.name + "', first in row " +
                  std::to_string(r0 + i / (2 * cols)) + " (of " + std::to_string(rows) + ")");
      return;
    }
    sm->Release(so + r0 * rb, (r1 - r0) * rb);
    dm->Release(doff + r0 * cols * 2, (r1 - r0) * cols * 2);
  }
  rep_.bytes_compared += t.nbytes();
  ++rep_.tensors_decoded;
  (void)s;
}

}  // namespace quench::verify
