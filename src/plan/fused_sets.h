// Sibling modules that vLLM loads as one fused matrix. Members of one set must get the same
// scheme (or all stay unquantized), and under NVFP4 one shared weight_global_scale. The
// planner groups tensors by it, checks fused consistency with it, and verify checks the
// written global scales with it: one table, one key function.
#ifndef QUENCH_PLAN_FUSED_SETS_H_
#define QUENCH_PLAN_FUSED_SETS_H_

#include <array>
#include <span>
#include <string>
#include <string_view>

namespace quench {

struct FusedSetKind {
  std::string_view fused;                   // what vLLM calls the fused module
  std::array<std::string_view, 4> members;  // last names of the siblings; "" pads
};

// Data, so a new architecture's names are one line.
std::span<const FusedSetKind> FusedSetKinds();

// The fused set `module` (a module name, without ".weight") belongs to, as "PARENT|KIND":
// modules with equal keys are one fused matrix. Empty when its last name is in no set.
std::string FusedSetKey(std::string_view module);
// The same key written into `*key` (replacing its contents, reusing its buffer), or false
// (and `*key` left as it was) when `module` is in no set: for callers that ask for 10^5 keys.
bool FusedSetKeyInto(std::string_view module, std::string* key);

}  // namespace quench

#endif  // QUENCH_PLAN_FUSED_SETS_H_
