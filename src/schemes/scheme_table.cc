// The scheme table. Each entry's QuantArgs mirror compressed-tensors' PRESET_SCHEMES
// (quantization/quant_scheme.py) as model_free_ptq 0.14.0.1 writes them into config.json
// (observer null for weights and dynamic activations; docs/reference-notes.md section 6).
// Output layouts follow the compressors (compressors/{naive_quantized,pack_quantized,nvfp4,
// mxfp4,mxfp8}); the kernels live beside their scalar references in one file per family.
#include <algorithm>
#include <cctype>
#include <utility>

#include "quench/scheme.h"
#include "schemes/chunk.h"
#include "schemes/fp4.h"
#include "schemes/fp8.h"
#include "schemes/int.h"

namespace quench {
namespace {

using Source = SchemeOutput::Source;

uint64_t CeilDiv(uint64_t a, uint64_t b) { return (a + b - 1) / b; }
uint64_t ScaleBytes(DType d) { return DTypeBits(d) / 8; }

// Groups per row: a group size of 0 or -1 (or none) means one scale per output channel.
uint64_t GroupsPerRow(uint64_t cols, const SchemeParams& p) {
  if (!p.group_size || *p.group_size <= 0) return 1;
  return cols / static_cast<uint64_t>(*p.group_size);
}

std::string CheckGroupDivides(uint64_t rows, uint64_t cols, const SchemeParams& p) {
  (void)rows;
  if (p.group_size && *p.group_size > 0 && cols % static_cast<uint64_t>(*p.group_size) != 0) {
    return "input dimension " + std::to_string(cols) + " is not a multiple of the group size " +
           std::to_string(*p.group_size);
  }
  return {};
}

// A scheme's outputs in order, each moved in once (a braced list is copied into the vector,
// every shape allocated twice: 10^5 times on a many-expert checkpoint).
template <class... O>
std::vector<SchemeOutput> Outputs(O&&... outputs) {
  std::vector<SchemeOutput> v;
  v.reserve(sizeof...(outputs));
  (v.push_back(std::forward<O>(outputs)), ...);
  return v;
}

// FP8 per channel: weight F8_E4M3 [rows, cols]; weight_scale in the weight dtype [rows, 1].
std::vector<SchemeOutput> Fp8ChannelOutputs(DType wd, uint64_t rows, uint64_t cols,
                                            const SchemeParams&) {
  const uint64_t sb = ScaleBytes(wd);
  return Outputs(SchemeOutput{"weight", DType::kF8E4M3, {rows, cols},
                              rows * cols, 1, cols, Source::kKernel},
                 SchemeOutput{"weight_scale", wd, {rows, 1}, rows * sb, 1, sb, Source::kKernel});
}

// FP8 per tensor (the FP8 preset's weights): weight F8_E4M3 [rows, cols]; one weight_scale
// [1] in the weight dtype, from the whole tensor's largest |x| (the pre-pass).
std::vector<SchemeOutput> Fp8TensorOutputs(DType wd, uint64_t rows, uint64_t cols,
                                           const SchemeParams&) {
  const uint64_t sb = ScaleBytes(wd);
  return Outputs(SchemeOutput{"weight", DType::kF8E4M3, {rows, cols},
                              rows * cols, 1, cols, Source::kKernel},
                 SchemeOutput{"weight_scale", wd, {1}, sb, 0, 0, Source::kGlobalScale});
}

// FP8 128x128 blocks: scales [ceil(rows/128), ceil(cols/128)] in the weight dtype; the weight
// keeps its shape (compressed-tensors pads to whole blocks, quantizes, then truncates).
std::vector<SchemeOutput> Fp8BlockOutputs(DType wd, uint64_t rows, uint64_t cols,
                                          const SchemeParams&) {
  const uint64_t sb = ScaleBytes(wd);
  const uint64_t br = CeilDiv(rows, fp8::kBlock), bc = CeilDiv(cols, fp8::kBlock);
  return Outputs(SchemeOutput{"weight", DType::kF8E4M3, {rows, cols},
                              rows * cols, 1, cols, Source::kKernel},
                 SchemeOutput{"weight_scale", wd, {br, bc},
                              br * bc * sb, fp8::kBlock, bc * sb, Source::kKernel});
}

// int-quantized (naive compressor): int8 weight with no offset, scales [rows, groups] and,
// when asymmetric, int8 zero points of the same shape.
std::vector<SchemeOutput> IntUnpackedOutputs(DType wd, uint64_t rows, uint64_t cols,
                                             const SchemeParams& p) {
  const uint64_t sb = ScaleBytes(wd), g = GroupsPerRow(cols, p);
  std::vector<SchemeOutput> o = Outputs(
      SchemeOutput{"weight", DType::kI8, {rows, cols}, rows * cols, 1, cols, Source::kKernel},
      SchemeOutput{"weight_scale", wd, {rows, g}, rows * g * sb, 1, g * sb, Source::kKernel});
  if (!p.symmetric) {
    o.push_back({"weight_zero_point", DType::kI8, {rows, g}, rows * g, 1, g, Source::kKernel});
  }
  return o;
}

// pack-quantized: int32 words packing `bits` per value along each row, scales, int64
// weight_shape, and (asymmetric) zero points packed along dim 0 (32 rows -> `bits` words).
std::vector<SchemeOutput> IntPackedOutputs(DType wd, uint64_t rows, uint64_t cols,
                                           const SchemeParams& p) {
  const uint64_t sb = ScaleBytes(wd), g = GroupsPerRow(cols, p);
  const uint64_t b = static_cast<uint64_t>(p.bits);
  const uint64_t words = CeilDiv(cols * b, 32);
  std::vector<SchemeOutput> o = Outputs(
      SchemeOutput{"weight_packed", DType::kI32, {rows, words},
                   rows * words * 4, 1, words * 4, Source::kKernel},
      SchemeOutput{"weight_scale", wd, {rows, g}, rows * g * sb, 1, g * sb, Source::kKernel});
  if (!p.symmetric) {
    const uint64_t zrows = CeilDiv(rows * b, 32);
    o.push_back({"weight_zero_point", DType::kI32, {zrows, g}, zrows * g * 4, intq::kPackRowAlign,
                 b * g * 4, Source::kKernel});
  }
  o.push_back({"weight_shape", DType::kI64, {2}, 16, 0, 0, Source::kShape});
  return o;
}

std::vector<SchemeOutput> Nvfp4Outputs(DType, uint64_t rows, uint64_t cols, const SchemeParams&) {
  const uint64_t g = cols / fp4::kNvfp4Group;
  return Outputs(SchemeOutput{"weight_packed", DType::kU8, {rows, cols / 2},
                              rows * (cols / 2), 1, cols / 2, Source::kKernel},
                 SchemeOutput{"weight_scale", DType::kF8E4M3, {rows, g},
                              rows * g, 1, g, Source::kKernel},
                 SchemeOutput{"weight_global_scale", DType::kF32, {1},
                              4, 0, 0, Source::kGlobalScale});
}

std::vector<SchemeOutput> Mxfp4Outputs(DType, uint64_t rows, uint64_t cols, const SchemeParams&) {
  const uint64_t g = cols / fp4::kMxGroup;
  return Outputs(SchemeOutput{"weight_packed", DType::kU8, {rows, cols / 2},
                              rows * (cols / 2), 1, cols / 2, Source::kKernel},
                 SchemeOutput{"weight_scale", DType::kU8, {rows, g},
                              rows * g, 1, g, Source::kKernel});
}

std::vector<SchemeOutput> Mxfp8Outputs(DType, uint64_t rows, uint64_t cols, const SchemeParams&) {
  const uint64_t g = cols / fp4::kMxGroup;
  return Outputs(SchemeOutput{"weight", DType::kF8E4M3, {rows, cols},
                              rows * cols, 1, cols, Source::kKernel},
                 SchemeOutput{"weight_scale", DType::kU8, {rows, g},
                              rows * g, 1, g, Source::kKernel});
}

// QuantArgs builders, to keep the table readable.
constexpr QuantArgsDesc IntWeights(int bits, std::optional<int> group, bool symmetric = true) {
  return {.num_bits = bits, .type = "int", .symmetric = symmetric, .group_size = group,
          .strategy = group ? "group" : "channel", .block_structure = std::nullopt,
          .dynamic = false, .observer = "", .scale_dtype = "",
          .zp_dtype = symmetric ? "" : "torch.int8"};
}
constexpr QuantArgsDesc TokenDynamic(std::string_view type, int bits) {
  return {.num_bits = bits, .type = type, .symmetric = true, .group_size = std::nullopt,
          .strategy = "token", .block_structure = std::nullopt, .dynamic = true, .observer = "",
          .scale_dtype = "", .zp_dtype = ""};
}
constexpr QuantArgsDesc MxArgs(int bits, bool dynamic) {
  return {.num_bits = bits, .type = "float", .symmetric = true, .group_size = 32,
          .strategy = "group", .block_structure = std::nullopt, .dynamic = dynamic,
          .observer = "", .scale_dtype = "torch.uint8", .zp_dtype = ""};
}

constexpr QuantArgsDesc kFp8Channel = {
    .num_bits = 8, .type = "float", .symmetric = true, .group_size = std::nullopt,
    .strategy = "channel", .block_structure = std::nullopt, .dynamic = false, .observer = "",
    .scale_dtype = "", .zp_dtype = ""};

constexpr QuantArgsDesc kFp8Tensor = {
    .num_bits = 8, .type = "float", .symmetric = true, .group_size = std::nullopt,
    .strategy = "tensor", .block_structure = std::nullopt, .dynamic = false, .observer = "",
    .scale_dtype = "", .zp_dtype = ""};

constexpr QuantArgsDesc kNvfp4Weights = {
    .num_bits = 4, .type = "float", .symmetric = true, .group_size = 16,
    .strategy = "tensor_group", .block_structure = std::nullopt, .dynamic = false,
    .observer = "", .scale_dtype = "torch.float8_e4m3fn", .zp_dtype = ""};

// The static activations of the FP8 and NVFP4 presets, as oneshot writes them (the observer
// that made the values: llm-compressor's static_minmax, the global min/max over the run).
constexpr QuantArgsDesc kFp8TensorStatic = {
    .num_bits = 8, .type = "float", .symmetric = true, .group_size = std::nullopt,
    .strategy = "tensor", .block_structure = std::nullopt, .dynamic = false,
    .observer = "static_minmax", .scale_dtype = "", .zp_dtype = ""};
constexpr QuantArgsDesc kNvfp4Activations = {
    .num_bits = 4, .type = "float", .symmetric = true, .group_size = 16,
    .strategy = "tensor_group", .block_structure = std::nullopt, .dynamic = false,
    .dynamic_local = true, .observer = "static_minmax", .scale_dtype = "torch.float8_e4m3fn",
    .zp_dtype = ""};

constexpr std::string_view kMarlinInt =
    "Ampere or newer (Marlin/Machete mixed-precision kernels)";
constexpr std::string_view kOddBits =
    "no vLLM GPU kernel for this width (Marlin/Machete run 4 and 8 bits); for other readers";

// An int pack-quantized weight-only preset WnA16.
SchemeInfo PackedA16(std::string_view name, std::string_view summary, int bits,
                     std::string_view gpu = kMarlinInt) {
  return {
      .name = name,
      .format = "pack-quantized",
      .summary = summary,
      .weights_desc = "int, scale per group of 128 (weight dtype), packed in int32",
      .activations_desc = "none (16-bit)",
      .gpu = gpu,
      .weights = IntWeights(bits, 128),
      .input_activations = std::nullopt,
      .row_align = 1,
      .kernel = intq::QuantizePacked,
      .scalar_kernel = intq::QuantizePackedScalar,
      .column_scales = true,
      .outputs = IntPackedOutputs,
      .check_shape = CheckGroupDivides,
  };
}

// W8A8 and its alias INT8: int8 per channel, int8 dynamic per-token activations.
SchemeInfo Int8PerChannel(std::string_view name, std::string_view summary) {
  return {
      .name = name,
      .format = "int-quantized",
      .summary = summary,
      .weights_desc = "int8, scale per output channel (weight dtype)",
      .activations_desc = "int8 dynamic, per token",
      .gpu = "Turing or newer (CUTLASS int8 GEMM)",
      .weights = IntWeights(8, std::nullopt),
      .input_activations = TokenDynamic("int", 8),
      .row_align = 1,
      .kernel = intq::QuantizeUnpacked,
      .scalar_kernel = intq::QuantizeUnpackedScalar,
      .column_scales = true,
      .outputs = IntUnpackedOutputs,
      .check_shape = CheckGroupDivides,
  };
}

// MXFP4/MXFP8, weight-only (A16) or with MX dynamic activations of the same format.
SchemeInfo Mx(std::string_view name, int bits, bool activations) {
  const bool fp4 = bits == 4;
  return {
      .name = name,
      .format = fp4 ? "mxfp4-pack-quantized" : "mxfp8-quantized",
      .summary =
          fp4 ? (activations ? "FP4 E2M1 weights, E8M0 scale per 32; MXFP4 dynamic activations"
                             : "FP4 E2M1 weights, E8M0 scale per 32; 16-bit activations")
              : (activations ? "FP8 E4M3 weights, E8M0 scale per 32; MXFP8 dynamic activations"
                             : "FP8 E4M3 weights, E8M0 scale per 32; 16-bit activations"),
      .weights_desc = fp4 ? "FP4 E2M1, E8M0 scale per 32" : "FP8 E4M3, E8M0 scale per 32",
      .activations_desc = !activations ? "none (16-bit)"
                          : fp4        ? "MXFP4 dynamic, per group of 32"
                                       : "MXFP8 dynamic, per group of 32",
      .gpu = fp4 && !activations ? "Blackwell (native MX); older GPUs weight-only via Marlin"
                                 : "Blackwell (native MX)",
      .weights = MxArgs(bits, false),
      .input_activations =
          activations ? std::optional<QuantArgsDesc>(MxArgs(bits, true)) : std::nullopt,
      .row_align = 1,
      .kernel = fp4 ? fp4::QuantizeMxfp4 : fp4::QuantizeMxfp8,
      .scalar_kernel = fp4 ? fp4::QuantizeMxfp4Scalar : fp4::QuantizeMxfp8Scalar,
      .outputs = fp4 ? Mxfp4Outputs : Mxfp8Outputs,
      .check_shape = CheckGroupDivides,
  };
}

const SchemeInfo kSchemes[] = {
    {
        .name = "FP8_DYNAMIC",
        .format = "float-quantized",
        .summary = "FP8 E4M3 weights, one scale per output channel; FP8 dynamic per-token "
                   "activations",
        .weights_desc = "FP8 E4M3, scale per output channel (weight dtype)",
        .activations_desc = "FP8 E4M3 dynamic, per token",
        .gpu = "Ada/Hopper or newer (FP8 tensor cores); Ampere runs it weight-only via Marlin",
        .weights = kFp8Channel,
        .input_activations = TokenDynamic("float", 8),
        .row_align = 1,
        .kernel = fp8::QuantizeChannel,
        .scalar_kernel = fp8::QuantizeChannelScalar,
        .outputs = Fp8ChannelOutputs,
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
    },
    Int8PerChannel("W8A8", "int8 weights per output channel; int8 dynamic per-token activations"),
    Int8PerChannel("INT8", "alias of W8A8"),
    {
        .name = "W4A8",
        .format = "int-quantized",
        .summary = "int4 weights per group of 128 (stored as int8); int8 dynamic per-token "
                   "activations (a.k.a. W4AINT8)",
        .weights_desc = "int4 in int8 storage, scale per group of 128 (weight dtype)",
        .activations_desc = "int8 dynamic, per token",
        .gpu = "CPU and Arm (CompressedTensorsW4A8Int); no CUDA kernel",
        .weights = IntWeights(4, 128),
        .input_activations = TokenDynamic("int", 8),
        .row_align = 1,
        .kernel = intq::QuantizeUnpacked,
        .scalar_kernel = intq::QuantizeUnpackedScalar,
        .column_scales = true,
        .outputs = IntUnpackedOutputs,
        .check_shape = CheckGroupDivides,
    },
    PackedA16("W4A16", "int4 weights per group of 128, packed; 16-bit activations", 4),
    PackedA16("W8A16", "int8 weights per group of 128, packed; 16-bit activations", 8),
    PackedA16("W2A16", "int2 weights per group of 128, packed; 16-bit activations", 2, kOddBits),
    PackedA16("W3A16", "int3 weights per group of 128, packed; 16-bit activations", 3, kOddBits),
    PackedA16("W5A16", "int5 weights per group of 128, packed; 16-bit activations", 5, kOddBits),
    PackedA16("W6A16", "int6 weights per group of 128, packed; 16-bit activations", 6, kOddBits),
    PackedA16("W7A16", "int7 weights per group of 128, packed; 16-bit activations", 7, kOddBits),
    {
        .name = "W4A16_ASYM",
        .format = "pack-quantized",
        .summary = "int4 weights per group of 128 with zero points, packed; 16-bit activations",
        .weights_desc = "int4 asymmetric, scale + packed zero point per group of 128",
        .activations_desc = "none (16-bit)",
        .gpu = kMarlinInt,
        .weights = IntWeights(4, 128, /*symmetric=*/false),
        .input_activations = std::nullopt,
        .row_align = intq::kPackRowAlign,
        .kernel = intq::QuantizePacked,
        .scalar_kernel = intq::QuantizePackedScalar,
        .column_scales = true,
        .outputs = IntPackedOutputs,
        .check_shape = CheckGroupDivides,
    },
    {
        .name = "W4AFP8",
        // Stored pack-quantized, which vLLM's CompressedTensorsW4A8Fp8 reads, not the
        // reference's inferred int-quantized default (docs/reference-notes.md).
        .format = "pack-quantized",
        .summary = "int4 weights per group of 128, packed; FP8 dynamic per-token activations",
        .weights_desc = "int4, scale per group of 128 (weight dtype), packed in int32",
        .activations_desc = "FP8 E4M3 dynamic, per token",
        .gpu = "Hopper (CUTLASS W4A8-FP8 kernels)",
        .weights = IntWeights(4, 128),
        .input_activations = TokenDynamic("float", 8),
        .row_align = 1,
        .kernel = intq::QuantizePacked,
        .scalar_kernel = intq::QuantizePackedScalar,
        .column_scales = true,
        .outputs = IntPackedOutputs,
        .check_shape = CheckGroupDivides,
    },
    {
        .name = "NVFP4A16",
        .format = "nvfp4-pack-quantized",
        .summary = "FP4 E2M1 weights, E4M3 scale per 16, FP32 global scale shared by fused "
                   "layers; 16-bit activations",
        .weights_desc = "FP4 E2M1, E4M3 scale per 16 + FP32 global scale",
        .activations_desc = "none (16-bit)",
        .gpu = "Blackwell (native FP4); Ampere/Ada/Hopper weight-only via Marlin FP4",
        .weights = kNvfp4Weights,
        .input_activations = std::nullopt,
        .row_align = 1,
        .kernel = fp4::QuantizeNvfp4,
        .scalar_kernel = fp4::QuantizeNvfp4Scalar,
        .outputs = Nvfp4Outputs,
        .check_shape = CheckGroupDivides,
        .needs_global_scale = true,
    },
    Mx("MXFP4A16", 4, /*activations=*/false),
    Mx("MXFP4", 4, /*activations=*/true),
    Mx("MXFP8A16", 8, /*activations=*/false),
    Mx("MXFP8", 8, /*activations=*/true),
    // Presets whose activation scales are static: they need activation statistics
    // (--stats; src/calib/act_scales.h), which model_free_ptq cannot use at all ("Model Free
    // PTQ cannot calibrate activations"). needs_calibration is the refusal without them.
    {
        .name = "NVFP4",
        .format = "nvfp4-pack-quantized",
        .summary = "NVFP4 weights and FP4 activations with a static input_global_scale "
                   "(needs --stats)",
        .weights_desc = "FP4 E2M1, E4M3 scale per 16 + FP32 global scale",
        .activations_desc = "FP4 with a static per-layer input_global_scale",
        .gpu = "Blackwell",
        .weights = kNvfp4Weights,
        .input_activations = kNvfp4Activations,
        .row_align = 1,
        .kernel = fp4::QuantizeNvfp4,
        .scalar_kernel = fp4::QuantizeNvfp4Scalar,
        .outputs = Nvfp4Outputs,
        .check_shape = CheckGroupDivides,
        .needs_global_scale = true,
        .needs_calibration =
            "needs a per-layer input_global_scale computed from activation statistics (the "
            "absolute maximum of each layer's input over calibration data); use NVFP4A16 for "
            "weight-only FP4",
    },
    {
        .name = "FP8",
        .format = "float-quantized",
        .summary = "FP8 weights per tensor and a static per-tensor FP8 input scale (needs "
                   "--stats)",
        .weights_desc = "FP8 E4M3, one scale per tensor (weight dtype)",
        .activations_desc = "FP8 E4M3 with a static per-tensor input_scale",
        .gpu = "Ada/Hopper or newer",
        .weights = kFp8Tensor,
        .input_activations = kFp8TensorStatic,
        .row_align = 1,
        .kernel = fp8::QuantizeTensor,
        .scalar_kernel = fp8::QuantizeTensorScalar,
        .outputs = Fp8TensorOutputs,
        .needs_global_scale = true,
        .fuse_global_scale = false,
        .tensor_scale = fp8::TensorScale,
        .needs_calibration =
            "needs a static per-tensor input_scale computed from activation statistics (each "
            "layer's input absolute maximum over calibration data); use FP8_DYNAMIC for "
            "data-free FP8",
    },
};

}  // namespace

double SchemeInfo::BitsPerWeight(uint64_t rows, uint64_t cols) const {
  if (outputs == nullptr) return 0;
  uint64_t bytes = 0;
  for (const SchemeOutput& o : outputs(DType::kBF16, rows, cols, DefaultParams())) {
    bytes += o.nbytes;
  }
  return 8.0 * static_cast<double>(bytes) / static_cast<double>(rows * cols);
}

std::span<const SchemeInfo> SchemeTable() { return kSchemes; }

std::vector<SchemeOutput> WeightOutputs(const SchemeInfo& s, DType wd, uint64_t rows,
                                        uint64_t cols, const SchemeParams& p) {
  std::vector<SchemeOutput> o = s.outputs(wd, rows, cols, p);
  if (!p.static_input || !s.input_activations) return o;
  if (s.input_activations->strategy == "tensor_group") {
    o.push_back({"input_global_scale", DType::kF32, {1}, 4, 0, 0, Source::kStatic});
    return o;
  }
  const uint64_t sb = ScaleBytes(wd);
  o.push_back({"input_scale", wd, {1}, sb, 0, 0, Source::kStatic});
  if (!p.input_symmetric) {
    o.push_back({"input_zero_point", DType::kI8, {1}, 1, 0, 0, Source::kStatic});
  }
  return o;
}

bool CanMakeActivationsStatic(const SchemeInfo& s) {
  // vLLM's W4A8-FP8 kernel (pack-quantized weights) takes dynamic per-token activations only.
  return s.input_activations && s.input_activations->strategy == "token" &&
         s.input_activations->num_bits == 8 && s.format != "pack-quantized";
}

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
