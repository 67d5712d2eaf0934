// The single table of quantization schemes (after ggml's type table): the CLI help, the size
// planner and the quantization_config writer all read this table, so a scheme is added in one
// place. SIMD-free: kernels are referenced through plain function pointers.
#ifndef QUENCH_SCHEME_H_
#define QUENCH_SCHEME_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "quench/dtype.h"

namespace quench {

struct WeightChunk;
struct ChunkOutputs;
using ChunkKernel = bool (*)(const WeightChunk& in, const ChunkOutputs& out);

// The knobs a user may change on a preset (the overrides compressed-tensors accepts).
struct SchemeParams {
  int bits = 8;
  std::optional<int> group_size;  // nullopt: not a group scheme; -1 would mean channel
  bool symmetric = true;
  // Activations with static per-tensor scales from activation statistics (src/calib/
  // act_scales.h): the FP8 and NVFP4 presets, or a dynamic per-token preset switched by
  // --static-activations or a recipe's `dynamic: false`; with a zero point unless symmetric.
  bool static_input = false;
  bool input_symmetric = true;
};

// compressed-tensors QuantizationArgs, as serialised into config.json.
struct QuantArgsDesc {
  int num_bits = 8;
  std::string_view type;       // "float" | "int"
  bool symmetric = true;
  std::optional<int> group_size;
  std::string_view strategy;   // "channel" | "block" | "group" | "tensor_group" | "token" | ...
  std::optional<std::pair<int, int>> block_structure;
  bool dynamic = false;
  bool dynamic_local = false;  // DynamicType.LOCAL, written "local" (NVFP4's activations)
  std::string_view observer;   // empty -> null
  std::string_view scale_dtype;  // empty -> null, else e.g. "torch.float8_e4m3fn"
  std::string_view zp_dtype;     // empty -> null
};

// One tensor a scheme writes per quantized weight `X.weight`.
struct SchemeOutput {
  std::string suffix;             // e.g. "weight", "weight_scale": written as "X.<suffix>"
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  uint64_t nbytes = 0;
  // Row-proportional layout: every `rows_per_slab` source rows produce `bytes_per_slab`
  // contiguous bytes, in order. A chunk whose first row is a multiple of the scheme's
  // row_align starts at byte (row / rows_per_slab) * bytes_per_slab.
  uint64_t rows_per_slab = 1;
  uint64_t bytes_per_slab = 0;
  // Not produced by the kernel: known at plan time (weight_shape) or after the pre-pass
  // (weight_global_scale), or from activation statistics at planning (kStatic: input_scale,
  // input_zero_point, input_global_scale). Such outputs come after the kernel's outputs.
  enum class Source { kKernel, kShape, kGlobalScale, kStatic } source = Source::kKernel;
};

struct SchemeInfo {
  std::string_view name;         // preset name, e.g. "FP8_DYNAMIC"
  std::string_view format;       // compressed-tensors format, e.g. "float-quantized"
  std::string_view summary;      // one line for `quench --help` / `quench schemes`
  std::string_view weights_desc;      // e.g. "FP8 E4M3, BF16 scale per output channel"
  std::string_view activations_desc;  // e.g. "FP8 dynamic per token"
  std::string_view gpu;               // vLLM hardware note
  QuantArgsDesc weights;
  std::optional<QuantArgsDesc> input_activations;
  // Chunks of rows handed to the kernel start at multiples of this (128 for 128x128 blocks).
  uint64_t row_align = 1;
  // Rows that the kernel needs as a unit cannot exceed the tensor; no other shape limits here:
  // group schemes check divisibility in CheckShape.
  ChunkKernel kernel = nullptr;         // Highway, dispatched
  ChunkKernel scalar_kernel = nullptr;  // the scalar definition
  // Both kernels honour WeightChunk::col_scale (the int kernels); others must not get one.
  bool column_scales = false;
  // Output tensors for a [rows, cols] weight of dtype `wdtype`: first those the kernel writes,
  // in its ChunkOutputs slot order, then constant ones.
  std::vector<SchemeOutput> (*outputs)(DType wdtype, uint64_t rows, uint64_t cols,
                                       const SchemeParams& p) = nullptr;
  // Extra validity check of a weight's shape; empty string when fine, else the rule broken.
  std::string (*check_shape)(uint64_t rows, uint64_t cols, const SchemeParams& p) = nullptr;
  // Needs the whole-tensor pre-pass (NVFP4's global scale over a fused set; FP8's per-tensor
  // weight scale). `fuse_global_scale`: one value per fused set (NVFP4), else per tensor.
  bool needs_global_scale = false;
  bool fuse_global_scale = true;
  // The pre-pass's value from the largest |x| (null: NVFP4's global scale), and the bytes of
  // the kGlobalScale output it writes in dtype `d` (null: F32).
  float (*tensor_scale)(float amax, DType d) = nullptr;
  // Presets that need calibration data: refused with this message (empty: data-free).
  std::string_view needs_calibration;

  SchemeParams DefaultParams() const {
    const bool static_act = input_activations && !input_activations->dynamic;
    return SchemeParams{weights.num_bits, weights.group_size, weights.symmetric, static_act,
                        true};
  }

  // Effective bits per weight including scales, for a BF16 weight of this shape.
  double BitsPerWeight(uint64_t rows, uint64_t cols) const;
};

std::span<const SchemeInfo> SchemeTable();
// Every tensor a quantized weight writes: the scheme's outputs, then with static activations
// (p.static_input) their scales as kStatic outputs: `input_scale` [1] in the weight dtype and,
// asymmetric, `input_zero_point` [1] I8; NVFP4's `input_global_scale` [1] F32. As
// compressed-tensors' initialize_qparams registers them for a TENSOR / TENSOR_GROUP strategy.
std::vector<SchemeOutput> WeightOutputs(const SchemeInfo& s, DType wdtype, uint64_t rows,
                                        uint64_t cols, const SchemeParams& p);
// Whether --static-activations can switch this scheme's activations to static per-tensor:
// 8-bit per-token dynamic activations on a layout vLLM runs with a static input scale.
bool CanMakeActivationsStatic(const SchemeInfo& s);
// Case-insensitive lookup (compressed-tensors upper-cases preset names); nullptr if unknown.
const SchemeInfo* FindScheme(std::string_view name);

}  // namespace quench

#endif  // QUENCH_SCHEME_H_
