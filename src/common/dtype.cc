// Dtype names, sizes and torch names, in one table read both ways. The names are the strings
// safetensors writes in headers (serde's variant names of `Dtype` in safetensors/src/tensor.rs);
// the torch names are what compressed-tensors writes into config.json (`str(torch.dtype)`).
#include "quench/dtype.h"

#include <array>

namespace quench {
namespace {

struct DTypeEntry {
  DType dtype;
  std::string_view name;
  size_t bits;
  // Empty when torch has no dtype for it (the F6 types have no torch counterpart).
  std::string_view torch_name;
};

// Indexed by the enumerator value, which is also safetensors' enum order.
constexpr std::array<DTypeEntry, 20> kDTypes = {{
    {DType::kBool, "BOOL", 8, "torch.bool"},
    // safetensors stores torch.float4_e2m1fn_x2 as F4 with the last dimension doubled.
    {DType::kF4, "F4", 4, "torch.float4_e2m1fn_x2"},
    {DType::kF6E2M3, "F6_E2M3", 6, ""},
    {DType::kF6E3M2, "F6_E3M2", 6, ""},
    {DType::kU8, "U8", 8, "torch.uint8"},
    {DType::kI8, "I8", 8, "torch.int8"},
    {DType::kF8E5M2, "F8_E5M2", 8, "torch.float8_e5m2"},
    {DType::kF8E4M3, "F8_E4M3", 8, "torch.float8_e4m3fn"},
    {DType::kF8E8M0, "F8_E8M0", 8, "torch.float8_e8m0fnu"},
    {DType::kI16, "I16", 16, "torch.int16"},
    {DType::kU16, "U16", 16, "torch.uint16"},
    {DType::kF16, "F16", 16, "torch.float16"},
    {DType::kBF16, "BF16", 16, "torch.bfloat16"},
    {DType::kI32, "I32", 32, "torch.int32"},
    {DType::kU32, "U32", 32, "torch.uint32"},
    {DType::kF32, "F32", 32, "torch.float32"},
    {DType::kC64, "C64", 64, "torch.complex64"},
    {DType::kF64, "F64", 64, "torch.float64"},
    {DType::kI64, "I64", 64, "torch.int64"},
    {DType::kU64, "U64", 64, "torch.uint64"},
}};

// Other names torch gives the same dtypes (`torch.half is torch.float16`, ...); str() of a
// dtype never yields them, but a hand-written config may.
struct TorchAlias {
  std::string_view name;
  DType dtype;
};
constexpr TorchAlias kTorchAliases[] = {
    {"torch.half", DType::kF16},  {"torch.float", DType::kF32}, {"torch.double", DType::kF64},
    {"torch.short", DType::kI16}, {"torch.int", DType::kI32},   {"torch.long", DType::kI64},
    {"torch.cfloat", DType::kC64},
};

constexpr bool TableFollowsEnum() {
  for (size_t i = 0; i < kDTypes.size(); ++i) {
    if (static_cast<size_t>(kDTypes[i].dtype) != i) return false;
  }
  return true;
}
static_assert(TableFollowsEnum(), "kDTypes must be indexed by DType");

const DTypeEntry& Entry(DType dtype) { return kDTypes[static_cast<size_t>(dtype)]; }

}  // namespace

std::string_view DTypeName(DType dtype) { return Entry(dtype).name; }

std::optional<DType> ParseDType(std::string_view name) {
  // Exact, case-sensitive match: serde rejects "bf16" as an unknown variant.
  for (const DTypeEntry& e : kDTypes) {
    if (e.name == name) return e.dtype;
  }
  return std::nullopt;
}

size_t DTypeBits(DType dtype) { return Entry(dtype).bits; }

std::optional<uint64_t> DTypeBytes(DType dtype, uint64_t count) {
  const uint64_t bits = DTypeBits(dtype);
  // count * bits / 8 without overflowing the intermediate product: whole groups of 8 elements
  // always fill whole bytes; the remainder must too, or a sub-byte tensor would end mid-byte
  // (the crate rejects that as a misaligned slice). Overflow of the result also yields nullopt;
  // callers that must tell the two apart check the element count first (see safetensors.cc).
  const uint64_t rem_bits = (count % 8) * bits;
  if (rem_bits % 8 != 0) return std::nullopt;
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(count / 8, bits, &bytes)) return std::nullopt;
  if (__builtin_add_overflow(bytes, rem_bits / 8, &bytes)) return std::nullopt;
  return bytes;
}

std::string_view TorchDTypeName(DType dtype) { return Entry(dtype).torch_name; }

std::optional<DType> ParseTorchDType(std::string_view torch_name) {
  for (const DTypeEntry& e : kDTypes) {
    if (!e.torch_name.empty() && e.torch_name == torch_name) return e.dtype;
  }
  for (const TorchAlias& a : kTorchAliases) {
    if (a.name == torch_name) return a.dtype;
  }
  return std::nullopt;
}

}  // namespace quench
