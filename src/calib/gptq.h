// GPTQ from a Hessian, as llm-compressor 0.14.0.1 runs it
// (modifiers/gptq/gptq_quantize.py::quantize_weight, helpers.py; docs/convert-reference.md,
// "GPTQ"): integer weights (symmetric or asymmetric, group
// or channel), scales and zero points from the memoryless min-max observer on the original
// weight, taken before the sweep and never refitted.
//
// Rows are independent given H, so the work is split in two: FactorHessian runs once per
// input site (q/k/v share one) and holds one n x n matrix; QuantizeRows then takes any chunk
// of rows of a weight that reads the site, so a weight larger than memory is done in row
// chunks with the same result.
#ifndef QUENCH_CALIB_GPTQ_H_
#define QUENCH_CALIB_GPTQ_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "quench/status.h"
#include "schemes/chunk.h"

namespace quench::calib {

// compressed-tensors ActivationOrdering as GPTQ 0.14.0.1 accepts it: none, or weight (alias
// static; llm-compressor's default). `group`/`dynamic` were removed from compressed-tensors
// 0.19.0 (QuantizationArgs refuses them), so ParseActOrder refuses them too.
enum class ActOrder { kNone, kWeight };
Result<ActOrder> ParseActOrder(const std::string& text);

struct GptqOptions {
  int block_size = 128;     // columns per lazy-update block (GPTQModifier.block_size)
  double dampening = 0.01;  // fraction of mean(diag H) added to the diagonal (dampening_frac)
  ActOrder actorder = ActOrder::kWeight;
  // Pruned weights (a pruning stage before GPTQ, src/calib/composite.h): positions that are
  // zero (|w| <= 1e-8, torch.isclose's default atol) receive no error updates and stay
  // exactly zero, as llm-compressor's GPTQ did for sparse weights before 0.14 (preserve_zeros,
  // W_nz_mask); 0.14.0.1's quantize_weight dropped it and would fill the 2:4 mask.
  bool preserve_zeros = false;
};

// The sweep's inverse factor for one Hessian: U upper triangular with U^T U = (H + damp I)^-1,
// in the column order of `perm` (descending diag H) when actorder is used.
struct GptqFactor {
  size_t n = 0;
  std::vector<float> u;        // n x n, row-major; lower triangle zero
  std::vector<int32_t> perm;   // sweep position -> original column (empty: identity)
  std::vector<uint8_t> dead;   // per sweep position: diag(H) was 0 (the column is zeroed)
  bool rtn_fallback = false;   // Cholesky failed: U = I, i.e. round to nearest
  std::string why;             // when rtn_fallback: what failed
};

// Bytes FactorHessian holds at its peak for an n-input site (the n x n f32 matrix).
inline uint64_t FactorBytes(uint64_t n) { return n * n * 4; }

// `h`: the normalised Hessian (llm-compressor's 2/n_seq * sum x x^T), full n x n row-major,
// symmetric; taken over and reused as U. Fails only on bad arguments; a Hessian that is not
// positive definite after dampening gives rtn_fallback, as the reference does.
Result<GptqFactor> FactorHessian(std::vector<float> h, size_t n, const GptqOptions& options);

// What QuantizeRows produces for a chunk of rows: the integers compressed-tensors' compressor
// writes for the returned weight, the observer's scales (values of the weight dtype) and zero
// points, [rows, n_groups], and the reference's loss sum((w - q)^2 / d^2) / 2.
struct GptqRows {
  std::vector<int8_t> codes;   // rows x cols, no offset
  std::vector<float> scales;
  std::vector<int8_t> zero_points;
  double loss = 0;
};

// The sweep on `in.rows` rows (in.params: bits, group_size (<= 0: channel), symmetric; in.dtype
// BF16, F16 or F32). False when the rows hold NaN or Inf or the parameters are invalid.
bool QuantizeRows(const GptqFactor& f, const WeightChunk& in, const GptqOptions& options,
                  GptqRows* out);

// QuantizeRows, written as the int kernels write (src/schemes/int.h): packed or unpacked
// codes, scales, zero points. `loss` (optional) receives the chunk's loss.
bool QuantizeRowsInto(const GptqFactor& f, const WeightChunk& in, const GptqOptions& options,
                      bool packed, const ChunkOutputs& out, double* loss);

// The float weight formats (calib/gptq_float.cc), as quantize_weight handles their strategies
// (column_scale_window): FP8 E4M3 per tensor (FP8), per output channel (FP8_DYNAMIC) and per
// 128x128 block (FP8_BLOCK); NVFP4 (tensor_group 16, E4M3 scales over the fused set's global
// scale: NVFP4A16, NVFP4); MXFP4 and MXFP8 (group 32, E8M0 scales).
enum class GptqFloat { kFp8Tensor, kFp8Channel, kFp8Block, kNvfp4, kMxfp4, kMxfp8 };

// What QuantizeFloatRows produces for a chunk of rows: the codes the scheme's compressor
// writes for the returned weight (E4M3 bytes, or E2M1 nibbles with the sign in 0x8, one per
// element), the observer's scales as values (FP8: per row, per tile [ceil(rows/128),
// ceil(cols/128)] or one; NVFP4: the E4M3 value per group; MX: 2^(E-127) per group) and
// their stored bytes (NVFP4: E4M3 codes; MX: E8M0; FP8: empty), and the reference's loss.
struct GptqFloatRows {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  std::vector<uint8_t> scale_codes;
  double loss = 0;
};

// The sweep on float weights: scales from the memoryless min-max observer on the original
// rows before the sweep (NVFP4: over in.params.global_scale, the fused set's; FP8 per tensor:
// in.params.global_scale is the tensor's scale), each column fake-quantized with its row's
// scale. FP8 block chunks hold whole 128-row tiles (or end the tensor). False for NaN or Inf
// in the rows, or parameters that do not fit the format.
bool QuantizeFloatRows(const GptqFactor& f, const WeightChunk& in, GptqFloat format,
                       const GptqOptions& options, GptqFloatRows* out);

// QuantizeFloatRows, written as the scheme's kernel writes (schemes/fp8.h, schemes/fp4.h).
bool QuantizeFloatRowsInto(const GptqFactor& f, const WeightChunk& in, GptqFloat format,
                           const GptqOptions& options, const ChunkOutputs& out, double* loss);

// The float format of a scheme's weights (type float; strategy tensor, channel, block,
// tensor_group or group with 4 or 8 bits), or false when GPTQ does not take it.
bool GptqFloatFormat(const std::string& type, const std::string& strategy, int bits,
                     GptqFloat* format);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_GPTQ_H_
