// Smoothing mappings (smooth layer -> balance layers) as data, copied from llm-compressor
// 0.14.0.1 (modifiers/transform/smoothquant/utils.py MAPPINGS_REGISTRY and
// modifiers/transform/awq/mappings.py AWQ_MAPPING_REGISTRY), chosen by config.json's
// architecture, and resolved against a checkpoint's module names the way compressed-tensors'
// match_modules_set groups modules by their lowest common ancestor.
#ifndef QUENCH_CALIB_MAPPINGS_H_
#define QUENCH_CALIB_MAPPINGS_H_

#include <string>
#include <vector>

#include "quench/status.h"

namespace quench::calib {

// One mapping as the registries write it: targets ("re:" regexes or exact names).
struct MappingSpec {
  std::string smooth;
  std::vector<std::string> balance;
};

enum class MappingFamily { kSmoothQuant, kAwq };

// The registry's mappings for `architecture` (config.json's architectures[0]); `fallback` is
// set when the architecture is not listed and the registry's default was taken, as the
// reference does. BertModel / BertForMaskedLM and friends get quench's explicit mapping
// (attention.self.value -> attention.output.dense, the one exact pair of a post-norm encoder).
std::vector<MappingSpec> MappingsFor(MappingFamily family, const std::string& architecture,
                                     bool* fallback);

// One mapping resolved: module names (a weight is the module's name + ".weight").
struct ResolvedMapping {
  std::string smooth;
  std::vector<std::string> balance;  // by target, then in module order (the reference's)
};

// Resolves `specs` against `modules` (every module with a weight, in any order: they are put
// in natural order, numbers compared as numbers, as a model's named_modules lists them).
// match_modules_set's rules: the targets of one mapping are matched module by module, a set
// is complete once every target has a match and ends where the lowest common ancestor would
// change; a module matched by two targets, a last set missing a target, or a set with more
// than one smooth layer is refused (kInvalidInput, naming the mapping).
Result<std::vector<ResolvedMapping>> ResolveMappings(const std::vector<MappingSpec>& specs,
                                                     std::vector<std::string> modules);

// "re:.*q_proj, re:.*k_proj <- re:.*input_layernorm", for messages.
std::string DescribeMapping(const MappingSpec& spec);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_MAPPINGS_H_
