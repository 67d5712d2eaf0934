// Tensor element types as safetensors names them. The enumerator order is the order of
// safetensors' `Dtype` enum (safetensors/src/tensor.rs); `prepare()` sorts tensors by it, so
// byte-identical output files depend on it.
#ifndef QUENCH_DTYPE_H_
#define QUENCH_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace quench {

enum class DType : uint8_t {
  kBool,
  kF4,
  kF6E2M3,
  kF6E3M2,
  kU8,
  kI8,
  kF8E5M2,
  kF8E4M3,
  kF8E8M0,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kC64,
  kF64,
  kI64,
  kU64,
};

// "BF16", "F8_E4M3", ...
std::string_view DTypeName(DType dtype);
std::optional<DType> ParseDType(std::string_view name);
// Bits per element (4 for F4, 6 for F6_*).
size_t DTypeBits(DType dtype);
// Bytes for `count` elements; nullopt when sub-byte types do not fill whole bytes.
std::optional<uint64_t> DTypeBytes(DType dtype, uint64_t count);
// Rank used by safetensors' writer: tensors are sorted by dtype descending.
inline int DTypeSortRank(DType dtype) { return static_cast<int>(dtype); }
// True for the weight dtypes quench can quantize (BF16, F16, F32).
inline bool IsQuantizableFloat(DType d) {
  return d == DType::kBF16 || d == DType::kF16 || d == DType::kF32;
}
// torch's name, e.g. "torch.bfloat16", as compressed-tensors writes dtypes into config.json;
// empty for the dtypes torch has no counterpart of.
std::string_view TorchDTypeName(DType dtype);
// The reverse, from the same table: "torch.bfloat16" -> kBF16; torch's aliases ("torch.half",
// "torch.float", ...) are accepted too. nullopt for any other text.
std::optional<DType> ParseTorchDType(std::string_view torch_name);

}  // namespace quench

#endif  // QUENCH_DTYPE_H_
