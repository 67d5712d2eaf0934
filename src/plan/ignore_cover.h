// Ignore entries for modules quench leaves unquantized although the config groups target
// them (1-D weights, 3-D expert stacks kept whole), so that every reader of
// quantization_config (compressed-tensors, transformers, vLLM) agrees on what is quantized.
#ifndef QUENCH_PLAN_IGNORE_COVER_H_
#define QUENCH_PLAN_IGNORE_COVER_H_

#include <set>
#include <string>
#include <vector>

namespace quench {

// Entries covering every module of `unquantized` and none of `quantized`, in first-seen
// order: a module whose dotted name has all-digit parts (layer and expert indices) is written
// as one regex over all indices, `re:encoder\.layer\.[0-9]+\.output\.LayerNorm$`, when no
// quantized module matches it; otherwise (and for names with no index) its exact name.
// A module of `with_children` (an experts module whose stacks are kept whole) is covered with
// the names under it as well, `re:model\.layers\.[0-9]+\.mlp\.experts(\..*)?$`: vLLM decides
// a fused MoE layer's scheme by the per-expert names `<experts>.0.gate_proj` (and up, down)
// (compressed_tensors_moe.py get_moe_method), transformers by the module's own name.
std::vector<std::string> CoverWithIgnore(const std::vector<std::string>& unquantized,
                                         const std::vector<std::string>& quantized,
                                         const std::set<std::string>& with_children = {});

}  // namespace quench

#endif  // QUENCH_PLAN_IGNORE_COVER_H_
