#include "pipeline/memory_budget.h"

#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "format/cgroup.h"

namespace quench {
namespace {

// cgroup v1 writes "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 with 4 KiB
// pages); anything this large is no limit on any machine.
constexpr uint64_t kUnlimited = 1ull << 60;

// A limit file's value: a decimal number of bytes, or "max". None: no limit or unreadable.
std::optional<uint64_t> ParseLimit(std::string_view text) {
  const std::optional<uint64_t> v = ParseCgroupNumber(text);  // "max" is none
  if (!v || *v >= kUnlimited) return std::nullopt;
  return v;
}

}  // namespace

std::optional<CgroupMemoryLimit> ReadCgroupMemoryLimit(const std::string& prefix) {
  std::optional<CgroupMemoryLimit> best;
  for (const CgroupFile& f :
       CgroupFilesAlongPath(prefix, "memory.max", "memory", "memory.limit_in_bytes")) {
    if (auto v = ParseLimit(f.text); v && (!best || *v < best->bytes)) best = {*v, f.path};
  }
  return best;
}

MemoryBudget ChooseMemoryBudget(uint64_t requested, uint64_t default_bytes,
                                const std::optional<CgroupMemoryLimit>& cgroup) {
  MemoryBudget b;
  if (requested != 0) {
    b.bytes = requested;
    if (cgroup && requested > cgroup->bytes) {
      b.note = "warning: --memory-limit " + FormatBytes(requested) +
               " is above this process's cgroup memory limit, " + FormatBytes(cgroup->bytes) +
               " (" + cgroup->file + "); the kernel may kill quench before the budget is reached";
    }
    return b;
  }
  b.bytes = default_bytes;
  if (cgroup) {
    const uint64_t fitted =
        cgroup->bytes / kCgroupBudgetDenominator * kCgroupBudgetNumerator +
        cgroup->bytes % kCgroupBudgetDenominator * kCgroupBudgetNumerator /
            kCgroupBudgetDenominator;
    if (fitted < default_bytes) {
      b.bytes = fitted;
      b.note = "memory limit " + FormatBytes(fitted) + ": 3/4 of this process's cgroup memory " +
               "limit, " + FormatBytes(cgroup->bytes) + " (" + cgroup->file +
               "), since the default " + FormatBytes(default_bytes) +
               " would not fit; --memory-limit sets it";
    }
  }
  return b;
}

}  // namespace quench
