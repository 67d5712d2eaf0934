// Decoding a compressed-tensors source weight's rows to BF16, as compressed-tensors 0.19.0's
// CompressedTensorsDequantizer computes them (compressors' decompress, then .to(bfloat16)):
//   value = (code - zero_point) * scale, in the scale's dtype (BF16, F16 or F32: each product
//   rounded to that dtype, then to BF16); NVFP4: code * (f32(E4M3 scale) / global_scale) in
//   F32; MX: code * 2^(e - 127) in BF16. Packed int codes are the dense little-endian bit
//   stream of pack_to_int32 (offset 2^(bits-1)); packed zero points run down the rows.
// Only the scale and zero-point rows of the decoded rows are read; g_idx (one index per
// column) and the global scale are read whole.
#ifndef QUENCH_SCHEMES_CT_DECODE_H_
#define QUENCH_SCHEMES_CT_DECODE_H_

#include <cstdint>
#include <functional>

#include "quench/ct_weight.h"
#include "quench/status.h"

namespace quench {

// Copies `len` bytes from `offset` bytes into tensor `t` to `dst`.
using CtReader = std::function<Status(const CtTensor& t, uint64_t offset, uint64_t len,
                                      uint8_t* dst)>;

// Decodes rows [r0, r1) of `w` from `codes` (those rows of the stored codes) into `out`
// ((r1 - r0) * cols BF16 values). A scale that is NaN, infinite or negative, a global scale
// that is not finite and positive, or a g_idx entry outside the scale's columns is bad input
// (kInvalidInput naming the tensor and element; `where` names the shard). *finite is set false
// when a decoded value is NaN or infinite.
Status DecodeCtWeightRows(const CtWeight& w, const CtReader& read, const std::string& weight,
                          const uint8_t* codes, uint64_t r0, uint64_t r1, uint8_t* out,
                          bool* finite);
// The same, every element by the definition's arithmetic (no tables): what the table path
// must equal bit for bit (tests/test_ct_decode_kernel.cc).
Status DecodeCtWeightRowsScalar(const CtWeight& w, const CtReader& read,
                                const std::string& weight, const uint8_t* codes, uint64_t r0,
                                uint64_t r1, uint8_t* out, bool* finite);

}  // namespace quench

#endif  // QUENCH_SCHEMES_CT_DECODE_H_
