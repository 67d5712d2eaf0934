// What a quantized module's tensors must look like in each compressed-tensors format: their
// parameter names, dtypes and shapes for an [out, in] weight, and which parameter names belong
// to quantization at all.
#ifndef QUENCH_VERIFY_LAYOUTS_H_
#define QUENCH_VERIFY_LAYOUTS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "quench/dtype.h"
#include "verify/config_groups.h"

namespace quench::verify {

inline uint64_t CeilDiv(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// One tensor `M.<suffix>` the format writes for module M.
struct Expected {
  std::string suffix;
  std::vector<DType> dtypes;  // any of these
  std::vector<uint64_t> shape;
};

// The tensors group `g`'s format writes for an [out, in] weight whose source dtype is
// `wdtype` (unknown without SRC: then any float scale dtype is accepted).
std::vector<Expected> ExpectedTensors(const Group& g, uint64_t out, uint64_t in,
                                      std::optional<DType> wdtype);

// Parameter names compressed-tensors writes for a quantized module: a DST tensor `M.<one of
// these>` belongs to M's quantization (weight itself only together with the others).
inline constexpr std::string_view kQuantSuffixes[] = {
    "weight_packed", "weight_scale",   "weight_zero_point", "weight_global_scale",
    "weight_shape",  "weight_g_idx",   "input_scale",       "input_zero_point",
    "input_global_scale",
};
bool IsQuantSuffix(std::string_view param);

}  // namespace quench::verify

#endif  // QUENCH_VERIFY_LAYOUTS_H_
