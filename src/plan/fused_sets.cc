#include "plan/fused_sets.h"

#include "plan/matcher.h"

namespace quench {
namespace {

// Siblings are modules with the same parent and these last names.
constexpr FusedSetKind kFusedSetKinds[] = {
    {"qkv_proj", {"q_proj", "k_proj", "v_proj"}},            // attention, any parent
    {"gate_up_proj", {"gate_proj", "up_proj", ""}},          // dense MLP and every MoE expert
    {"w13", {"w1", "w3", ""}},                               // Mixtral/Llama-native naming
    {"fused_qkv_a_proj", {"q_a_proj", "kv_a_proj_with_mqa", ""}},  // DeepSeek MLA (HF naming)
    {"wqkv_a", {"wq_a", "wkv_a_with_mqa", ""}},              // DeepSeek MLA (native naming)
};

}  // namespace

std::span<const FusedSetKind> FusedSetKinds() { return kFusedSetKinds; }

std::string FusedSetKey(std::string_view module) {
  auto [parent, leaf] = SplitModuleParam(module);
  for (size_t k = 0; k < std::size(kFusedSetKinds); ++k) {
    for (std::string_view member : kFusedSetKinds[k].members) {
      if (!member.empty() && leaf == member) {
        return std::string(parent) + "|" + std::to_string(k);
      }
    }
  }
  return {};
}

}  // namespace quench
