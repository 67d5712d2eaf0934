// The scheme table. Each entry's QuantArgs mirror compressed-tensors' PRESET_SCHEMES
// (quantization/quant_scheme.py) with the defaults QuantizationArgs fills in for model_free
// (weights observer "memoryless_minmax"; dynamic activations observer null).
#include <algorithm>
#include <cctype>

#include "quench/scheme.h"
#include "schemes/chunk.h"
#include "schemes/fp8.h"

namespace quench {
namespace {

uint64_t CeilDiv(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// FP8 per channel: weight F8_E4M3 [rows, cols]; weight_scale in the weight dtype [rows, 1].
std::vector<SchemeOutput> Fp8ChannelOutputs(DType wdtype, uint64_t rows, uint64_t cols) {
  const uint64_t scale_bytes = DTypeBits(wdtype) / 8;
  return {
      {"weight", DType::kF8E4M3, {rows, cols}, rows * cols, 1, cols},
      {"weight_scale", wdtype, {rows, 1}, rows * scale_bytes, 1, scale_bytes},
  };
}

// FP8 128x128 blocks: scales [ceil(rows/128), ceil(cols/128)] in the weight dtype; the weight
// keeps its shape (compressed-tensors pads to whole blocks, quantizes, then truncates).
std::vector<SchemeOutput> Fp8BlockOutputs(DType wdtype, uint64_t rows, uint64_t cols) {
  const uint64_t scale_bytes = DTypeBits(wdtype) / 8;
  const uint64_t br = CeilDiv(rows, fp8::kBlock), bc = CeilDiv(cols, fp8::kBlock);
  return {
      {"weight", DType::kF8E4M3, {rows, cols}, rows * cols, 1, cols},
      {"weight_scale", wdtype, {br, bc}, br * bc * scale_bytes, fp8::kBlock, bc * scale_bytes},
  };
}

constexpr QuantArgsDesc kFp8TokenDynamic = {
    .num_bits = 8, .type = "float", .symmetric = true, .group_size = std::nullopt,
    .strategy = "token", .block_structure = std::nullopt, .dynamic = true, .observer = "",
    .scale_dtype = "", .zp_dtype = ""};

const SchemeInfo kSchemes[] = {
    {
        .name = "FP8_DYNAMIC",
        .format = "float-quantized",
        .summary = "FP8 E4M3 weights, one scale per output channel; FP8 dynamic per-token "
                   "activations",
        .weights_desc = "FP8 E4M3, scale per output channel (weight dtype)",
        .activations_desc = "FP8 E4M3 dynamic, per token",
        .gpu = "Ada/Hopper or newer (FP8 tensor cores); Ampere runs it weight-only via Marlin",
        .weights = {.num_bits = 8, .type = "float", .symmetric = true,
                    .group_size = std::nullopt, .strategy = "channel",
                    .block_structure = std::nullopt, .dynamic = false,
                    .observer = "", .scale_dtype = "", .zp_dtype = ""},
        .input_activations = kFp8TokenDynamic,
        .row_align = 1,
        .kernel = fp8::QuantizeChannel,
        .scalar_kernel = fp8::QuantizeChannelScalar,
        .outputs = Fp8ChannelOutputs,
        .check_shape = nullptr,
    },
    {
        .name = "FP8_BLOCK",
        .format = "float-quantized",
        .summary = "FP8 E4M3 weights, one scale per 128x128 block; FP8 dynamic activations "
                   "per group of 128",
        .weights_desc = "FP8 E4M3, scale per 128x128 block (weight dtype)",
        .activations_desc = "FP8 E4M3 dynamic, per group of 128",
        .gpu = "Hopper or newer for the block-FP8 kernels (DeepSeek-style); Ada via Triton",
        .weights = {.num_bits = 8, .type = "float", .symmetric = true,
                    .group_size = std::nullopt, .strategy = "block",
                    .block_structure = std::make_pair(128, 128), .dynamic = false,
                    .observer = "", .scale_dtype = "", .zp_dtype = ""},
        .input_activations = QuantArgsDesc{
            .num_bits = 8, .type = "float", .symmetric = true, .group_size = 128,
            .strategy = "group", .block_structure = std::nullopt, .dynamic = true,
            .observer = "", .scale_dtype = "", .zp_dtype = ""},
        .row_align = fp8::kBlock,
        .kernel = fp8::QuantizeBlock,
        .scalar_kernel = fp8::QuantizeBlockScalar,
        .outputs = Fp8BlockOutputs,
        .check_shape = nullptr,
    },
};

}  // namespace

double SchemeInfo::BitsPerWeight(uint64_t rows, uint64_t cols) const {
  uint64_t bytes = 0;
  for (const SchemeOutput& o : outputs(DType::kBF16, rows, cols)) bytes += o.nbytes;
  return 8.0 * static_cast<double>(bytes) / static_cast<double>(rows * cols);
}

std::span<const SchemeInfo> SchemeTable() { return kSchemes; }

const SchemeInfo* FindScheme(std::string_view name) {
  for (const SchemeInfo& s : kSchemes) {
    if (s.name.size() == name.size() &&
        std::equal(s.name.begin(), s.name.end(), name.begin(), [](char a, char b) {
          return std::toupper(static_cast<unsigned char>(a)) ==
                 std::toupper(static_cast<unsigned char>(b));
        })) {
      return &s;
    }
  }
  return nullptr;
}

}  // namespace quench
