// quantization_config's config groups as verify reads them: each group's weights arguments,
// the storage format they select, and the module names the group targets.
#ifndef QUENCH_VERIFY_CONFIG_GROUPS_H_
#define QUENCH_VERIFY_CONFIG_GROUPS_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "format/json.h"
#include "plan/matcher.h"
#include "quench/dtype.h"

namespace quench::verify {

// The compressed-tensors formats verify knows the tensors of (kDense: written unquantized).
enum class Format { kFloat, kInt, kPack, kNvfp4, kMxfp4, kMxfp8, kDense, kUnsupported };

struct Group {
  std::string key;
  std::string format_name;
  Format format = Format::kUnsupported;
  std::string type;  // "int" | "float"
  int bits = 8;
  bool symmetric = true;
  std::string strategy;  // tensor | channel | group | tensor_group | block
  uint64_t group_size = 0;
  uint64_t bh = 0, bw = 0;
  std::optional<DType> scale_dtype;  // from weights.scale_dtype when set
  bool g_idx = false;                // actorder "group": weight_g_idx allowed
  bool static_inputs = false;        // input_scale / input_global_scale allowed
  bool all = false;                  // targets contain "Linear"
  // False when the weights arguments do not fit the format or the strategy lacks its sizes
  // (each reported as a config problem): the modules' structure is still checked, their
  // values are not decoded (the decoders take bits of 1-8 and the sizes as given).
  bool decodable = true;
  NameMatcher targets;

  bool per_channel() const { return strategy == "channel" || strategy == "tensor"; }
  // The SQNR threshold family ("fp8", "int4", "nvfp4", ...; "" for dense / unsupported).
  std::string kind() const;
};

// Reads config group `key` (its JSON `group`) of a quantization_config whose top-level
// "format" is `global_format`. Every inconsistency is passed to `bad` (one line each); the
// group comes back unless it cannot be used at all (not an object, no weights arguments,
// targets that do not compile).
std::optional<Group> ParseConfigGroup(const std::string& key, const JsonValue& group,
                                      const std::string& global_format,
                                      const std::function<void(const std::string&)>& bad);

// True when `s` ends in `suffix` (compressed-tensors skips modules whose name ends in "norm").
inline bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace quench::verify

#endif  // QUENCH_VERIFY_CONFIG_GROUPS_H_
