// The plan's fused sets (plan/fused_sets.h's table applied to the planned tensors): which
// quantized tensors share one NVFP4 global scale, and the check that every member of a set vLLM
// fuses got the same scheme. Run by the planner once every shard is planned.
#ifndef QUENCH_PLAN_FUSED_PLAN_H_
#define QUENCH_PLAN_FUSED_PLAN_H_

#include <deque>
#include <string>
#include <vector>

#include "format/name_table.h"
#include "quench/plan.h"

namespace quench {

// Groups quantized tensors needing a global scale into fused sets (singletons otherwise).
void PlanFusedSets(Plan& plan);

// vLLM runs each fused set (q/k/v, gate/up, ...) as one matrix, so its members must all get
// the same scheme or all stay unquantized; anything else cannot be loaded. Each mixed set is
// an error in plan.errors.
void CheckFusedConsistency(Plan& plan);

// CheckFusedConsistency in parts, for a planner with a second thread: each part scans a range
// of plan.tensors (reading names, shapes and groups only), the parts are merged in range
// order, and Report appends the errors CheckFusedConsistency appends.
class FusedSetScan {
 public:
  FusedSetScan(const Plan& plan, size_t begin, size_t end);
  // Moved, never copied: the table's views point into keys_, whose strings a move keeps in
  // place and a copy would not. (Not copyable, it is also moved where its move may throw,
  // e.g. by a growing std::vector, which would otherwise copy.)
  FusedSetScan(FusedSetScan&&) = default;
  FusedSetScan& operator=(FusedSetScan&&) = default;
  FusedSetScan(const FusedSetScan&) = delete;
  FusedSetScan& operator=(const FusedSetScan&) = delete;
  // `later` scanned the range right after this one's.
  void Merge(FusedSetScan&& later);
  void Report(Plan& plan) const;

 private:
  static constexpr size_t kNone = ~size_t{0};
  // What a set needs is its first member and the first later one whose group differs from
  // the first's (members come in plan order).
  struct Set {
    size_t first;          // its first member
    size_t mixed = kNone;  // its first member of another group than `first`'s
  };
  const Plan* plan_;
  std::deque<std::string> keys_;  // per set, stable storage for the table's views
  std::vector<Set> sets_;
  NameTable set_of_;
};

}  // namespace quench

#endif  // QUENCH_PLAN_FUSED_PLAN_H_
