// The compressed-tensors `quantization_config` block and the safetensors index, built the way
// llm-compressor's model_free writes them (entrypoints/model_free/save_utils.py and
// compressed_tensors/utils/safetensors_load.py::update_safetensors_index).
#ifndef QUENCH_FORMAT_QUANT_CONFIG_H_
#define QUENCH_FORMAT_QUANT_CONFIG_H_

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "format/json.h"
#include "quench/scheme.h"

namespace quench {

// The compressed-tensors release whose format quench writes; it is the `version` field.
inline constexpr const char* kCompressedTensorsVersion = "0.19.0";

struct ConfigGroup {
  std::string key;                   // the preset as the user spelled it, e.g. "FP8_DYNAMIC"
  const SchemeInfo* scheme = nullptr;
  SchemeParams params;               // with the user's overrides
  std::vector<std::string> targets;  // ["Linear"] when the user gave none
  // Calibrated runs write the weight args as llm-compressor's oneshot does (GPTQModifier):
  // the actorder it resolved (empty: null) and the observer that made the scales (empty: the
  // scheme table's, null for model_free).
  std::string actorder;
  std::string weights_observer;
  // The weights' observer_kwargs (empty: {}), written as given.
  JsonValue weights_observer_kwargs;
};

JsonValue QuantArgsJson(const QuantArgsDesc& a);
// The preset's weight args with overrides applied (group size -1 means strategy "channel").
QuantArgsDesc EffectiveWeights(const SchemeInfo& scheme, const SchemeParams& p);

// The input activations' args as written: the preset's, or with p.static_input a dynamic
// per-token preset's made static per tensor (observer static_minmax).
std::optional<QuantArgsDesc> EffectiveInputActivations(const SchemeInfo& scheme,
                                                       const SchemeParams& p);

// `quantization_config` with every key compressed-tensors' QuantizationConfig dumps.
// `kv_cache`: the kv_cache_scheme's args (null: none).
JsonValue BuildQuantizationConfig(const std::vector<ConfigGroup>& groups,
                                  const std::vector<std::string>& ignore,
                                  const QuantArgsDesc* kv_cache = nullptr);

// The index: {"metadata": {"total_size": N}, "weight_map": {name: shard}} written with
// json.dump(indent=2, sort_keys=True); total_size is the sum of tensor bytes (no headers).
std::string BuildIndexJson(std::vector<std::pair<std::string_view, std::string_view>> weight_map,
                           uint64_t total_size);
// The length of BuildIndexJson's text without writing it: `entries` entries whose
// IndexEntrySize()s sum to `entry_bytes`. IndexEntrySize takes the name's and the shard's
// JsonStringPythonSize (a string's length as AppendJsonStringPython writes it, quotes
// included).
uint64_t JsonStringPythonSize(std::string_view s);
constexpr uint64_t IndexEntrySize(uint64_t name_json, uint64_t shard_json) {
  return 4 + name_json + 2 + shard_json;  // `    "name": "shard"`
}
uint64_t IndexJsonSize(uint64_t entries, uint64_t entry_bytes, uint64_t total_size);

}  // namespace quench

#endif  // QUENCH_FORMAT_QUANT_CONFIG_H_
