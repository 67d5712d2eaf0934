// The plan's fused sets: NVFP4's shared global scale and the consistency of each set vLLM
// fuses (declared in plan/fused_plan.h). Moved out of planner.cc: they read only the
// planned tensors, not the planner's state.
#include "plan/fused_plan.h"

#include <algorithm>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "format/name_table.h"
#include "plan/fused_sets.h"
#include "plan/matcher.h"

namespace quench {

void PlanFusedSets(Plan& plan) {
  std::map<std::string, size_t> set_of;  // FusedSetKey -> fused set
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    PlannedTensor& t = plan.tensors[i];
    if (t.action != TensorAction::kQuantize || !t.scheme->needs_global_scale) continue;
    if (t.source_scale && t.source_scale->repack) continue;  // the source's own scales
    // FP8's per-tensor weight scales are each tensor's own (vLLM requantizes a fused set to
    // its largest); NVFP4's global scale is the set's.
    const std::string key = t.scheme->fuse_global_scale
                                ? FusedSetKey(SplitModuleParam(t.name).first)
                                : std::string();
    size_t set = plan.fused_sets.size();  // not fusable: a set of its own
    if (!key.empty()) set = set_of.emplace(key, set).first->second;
    if (set == plan.fused_sets.size()) plan.fused_sets.emplace_back();
    plan.fused_sets[set].push_back(i);
    t.fused_set = static_cast<int>(set);
  }
}

// vLLM runs each fused set (q/k/v, gate/up, ...) as one matrix, so its members must all get
// the same scheme or all stay unquantized; anything else cannot be loaded.
void CheckFusedConsistency(Plan& plan) {
  FusedSetScan(plan, 0, plan.tensors.size()).Report(plan);
}

// Sets found with a table of their keys (a std::map of 10^5 keys cost a tenth of planning an
// MoE checkpoint); problems reported in key order. No member list: the key of each module
// is written into one buffer, stored only for a new set.
FusedSetScan::FusedSetScan(const Plan& plan, size_t begin, size_t end)
    : plan_(&plan), set_of_(end - begin) {
  std::string module_key;  // the key of the module at hand
  size_t last = kNone;  // the set of the module before (a gate_proj's up_proj follows it)
  for (size_t i = begin; i < end; ++i) {
    const PlannedTensor& t = plan.tensors[i];
    auto [module, param] = SplitModuleParam(t.name);
    if (param != "weight" || t.shape.size() != 2) continue;
    if (!FusedSetKeyInto(module, &module_key)) continue;
    size_t set = kNone;
    if (last != kNone && keys_[last] == module_key) {
      set = last;
    } else if (const std::optional<uint32_t> found = set_of_.Find(module_key)) {
      set = *found;
    } else {
      set = sets_.size();
      keys_.push_back(module_key);
      set_of_.Insert(keys_.back(), static_cast<uint32_t>(set));
      sets_.push_back({i});
    }
    last = set;
    Set& s = sets_[set];
    if (s.mixed == kNone && t.group != plan.tensors[s.first].group) s.mixed = i;
  }
}

void FusedSetScan::Merge(FusedSetScan&& later) {
  for (size_t k = 0; k < later.sets_.size(); ++k) {
    const Set& b = later.sets_[k];
    const std::optional<uint32_t> found = set_of_.Find(later.keys_[k]);
    if (!found) {
      keys_.push_back(std::move(later.keys_[k]));
      set_of_.Insert(keys_.back(), static_cast<uint32_t>(sets_.size()));
      sets_.push_back(b);
      continue;
    }
    // The set's first member is this part's; every member here is of its group unless
    // `mixed` is set; the later part's first member of another group is then its first, or
    // the first of another group than its first's, which is of this part's first's group.
    Set& a = sets_[*found];
    if (a.mixed != kNone) continue;
    const int group = plan_->tensors[a.first].group;
    a.mixed = plan_->tensors[b.first].group != group ? b.first : b.mixed;
  }
}

void FusedSetScan::Report(Plan& plan) const {
  std::vector<std::pair<std::string_view, size_t>> mixed;  // key, first differing member
  for (size_t k = 0; k < sets_.size(); ++k) {
    if (sets_[k].mixed != kNone) mixed.emplace_back(keys_[k], sets_[k].mixed);
  }
  std::sort(mixed.begin(), mixed.end());
  for (const auto& [key, i] : mixed) {
    const PlannedTensor& first = plan.tensors[sets_[*set_of_.Find(key)].first];
    const PlannedTensor& t = plan.tensors[i];
    auto describe = [&](const PlannedTensor& x) {
      return x.group >= 0 ? "group '" + plan.groups[static_cast<size_t>(x.group)].key + "'"
                          : "unquantized (" + x.why + ")";
    };
    plan.errors.push_back(Error(
        ErrorCode::kUsage,
        "fused set of '" + first.name + "': '" + first.name + "' is " + describe(first) +
            " but '" + t.name + "' is " + describe(t) +
            "; vLLM runs these as one matrix, so give them the same scheme (or ignore all)"));
  }
}

}  // namespace quench
