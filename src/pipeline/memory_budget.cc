#include "pipeline/memory_budget.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string_view>
#include <vector>

namespace quench {
namespace {

// cgroup v1 writes "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 with 4 KiB
// pages); anything this large is no limit on any machine.
constexpr uint64_t kUnlimited = 1ull << 60;

std::optional<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream f(path);
  if (!f) return std::nullopt;
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return std::nullopt;
  return ss.str();
}

// A limit file's value: a decimal number of bytes, or "max". None: no limit or unreadable.
std::optional<uint64_t> ParseLimit(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  if (text.empty() || text == "max") return std::nullopt;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    if (v > (UINT64_MAX - 9) / 10) return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v >= kUnlimited) return std::nullopt;
  return v;
}

// The smallest `file` in `mount` + `cgroup_path` and each of its ancestors up to `mount`.
// When the process's own folder is not visible (a container without a cgroup namespace sees
// its own cgroup at the mount point), the ancestors that exist, down to the mount, still count.
void TightestAlongPath(const std::string& mount, std::string cgroup_path, const char* file,
                       std::optional<CgroupMemoryLimit>& best) {
  while (!cgroup_path.empty() && cgroup_path.back() == '/') cgroup_path.pop_back();
  for (;;) {
    const std::string path = mount + cgroup_path + "/" + file;
    if (auto text = ReadSmallFile(path)) {
      if (auto v = ParseLimit(*text); v && (!best || *v < best->bytes)) best = {*v, path};
    }
    if (cgroup_path.empty()) break;
    cgroup_path.resize(cgroup_path.rfind('/'));
  }
}

}  // namespace

std::optional<CgroupMemoryLimit> ReadCgroupMemoryLimit(const std::string& prefix) {
  auto self = ReadSmallFile(prefix + "/proc/self/cgroup");
  if (!self) return std::nullopt;
  std::optional<CgroupMemoryLimit> best;
  std::istringstream lines(*self);
  std::string line;
  // Each line: hierarchy-ID:controller-list:cgroup-path. v2's single line is "0::/path".
  while (std::getline(lines, line)) {
    const size_t a = line.find(':');
    const size_t b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    const std::string path = line.substr(b + 1);
    if (path.empty() || path.front() != '/') continue;
    if (line.compare(0, a, "0") == 0 && controllers.empty()) {
      TightestAlongPath(prefix + "/sys/fs/cgroup", path, "memory.max", best);
      continue;
    }
    std::istringstream names(controllers);
    for (std::string name; std::getline(names, name, ',');) {
      if (name == "memory") {
        TightestAlongPath(prefix + "/sys/fs/cgroup/memory", path, "memory.limit_in_bytes", best);
      }
    }
  }
  return best;
}

std::string CgroupPrefix() {
  const char* root = std::getenv("QUENCH_CGROUP_ROOT");
  return root != nullptr ? root : "";
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
