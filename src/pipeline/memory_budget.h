// The default --memory-limit inside a container: a pod whose cgroup allows less memory than
// the default budget would be OOM-killed halfway through a run, so the default is fitted
// under the cgroup's limit, leaving headroom for the rest of the process.
#ifndef QUENCH_PIPELINE_MEMORY_BUDGET_H_
#define QUENCH_PIPELINE_MEMORY_BUDGET_H_

#include <cstdint>
#include <optional>
#include <string>

#include "format/cgroup.h"  // CgroupPrefix, which this header declared before
#include "format/units.h"   // FormatBytes, likewise

namespace quench {

// The default budget takes this fraction of the cgroup's limit when the full default would
// not fit: the rest is headroom for what the budget does not count (the binary, TBB's
// threads, the allocator's slack, other processes of the container).
inline constexpr uint64_t kCgroupBudgetNumerator = 3;
inline constexpr uint64_t kCgroupBudgetDenominator = 4;

struct CgroupMemoryLimit {
  uint64_t bytes = 0;
  std::string file;  // the file it was read from, for messages
};

// The tightest memory limit on this process's cgroup: cgroup v2 `memory.max` or v1
// `memory.limit_in_bytes`, the smallest along the path from the process's own cgroup (named
// in /proc/self/cgroup) up to the hierarchy's root, since every ancestor's limit applies too.
// None when no limit is set ("max", or v1's near-2^63 "unlimited") or nothing can be read.
// Paths are read under `prefix` (format/cgroup.h: CgroupPrefix() in a run).
std::optional<CgroupMemoryLimit> ReadCgroupMemoryLimit(const std::string& prefix);

struct MemoryBudget {
  uint64_t bytes = 0;
  std::string note;  // empty, or a line saying how the budget was chosen / a warning
};

// `requested`: --memory-limit in bytes, 0 when not given. Not given: `default_bytes`, or
// 3/4 of the cgroup's limit when that is smaller (and a note says so). Given: honoured as
// given, with a warning when it is above the cgroup's limit.
MemoryBudget ChooseMemoryBudget(uint64_t requested, uint64_t default_bytes,
                                const std::optional<CgroupMemoryLimit>& cgroup);

}  // namespace quench

#endif  // QUENCH_PIPELINE_MEMORY_BUDGET_H_
