// Ignore entries for modules quench leaves unquantized although the config groups target
// them (1-D weights, 3-D expert stacks kept whole), so that every reader of
// quantization_config (compressed-tensors, transformers, vLLM) agrees on what is quantized.
#ifndef QUENCH_PLAN_IGNORE_COVER_H_
#define QUENCH_PLAN_IGNORE_COVER_H_

#include <string>
#include <vector>

namespace quench {

// Entries covering every module of `unquantized` and none of `quantized`, in first-seen
// order: a module whose dotted name has all-digit parts (layer and expert indices) is written
// as one regex over all indices, `re:encoder\.layer\.[0-9]+\.output\.LayerNorm$`, when no
// quantized module matches it; otherwise (and for names with no index) its exact name.
std::vector<std::string> CoverWithIgnore(const std::vector<std::string>& unquantized,
                                         const std::vector<std::string>& quantized);

}  // namespace quench

#endif  // QUENCH_PLAN_IGNORE_COVER_H_
