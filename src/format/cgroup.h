// What the process's control groups allow it: the files of its cgroup and of each ancestor
// (every ancestor's limit applies too), read for the memory budget's default
// (pipeline/memory_budget.h) and for the cores a run uses by default (AvailableCores), as
// container runtimes and Kubernetes set them: cgroup v2's single hierarchy or v1's
// per-controller ones.
#ifndef QUENCH_FORMAT_CGROUP_H_
#define QUENCH_FORMAT_CGROUP_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace quench {

// A file's contents, or none when it cannot be read.
std::optional<std::string> ReadSmallFile(const std::string& path);

// A limit file's number: decimal digits, then only spaces or newlines; none for anything else
// ("max", "-1") or above about 2.9 * 10^18 (far beyond any limit a machine has).
std::optional<uint64_t> ParseCgroupNumber(std::string_view text);

// One limit file found along the process's cgroup path: its path and text.
struct CgroupFile {
  std::string path;
  std::string text;
};

// The readable files named `v2_file` in the process's cgroup v2 folder and its ancestors up
// to the mount point, and `v1_file` in its folders of the v1 hierarchy that holds
// `v1_controller` (mounted under its comma-joined controller list, or under the controller's
// own name). The process's cgroups are named in /proc/self/cgroup. When its own folder is not
// visible (a container without a cgroup namespace sees its own cgroup at the mount point), the
// ancestors that exist, down to the mount, still count. Paths are read under `prefix` ("" for
// the real /proc and /sys; tests pass a fake tree).
std::vector<CgroupFile> CgroupFilesAlongPath(const std::string& prefix, std::string_view v2_file,
                                             std::string_view v1_controller,
                                             std::string_view v1_file);

// The prefix the readers use in a run: $QUENCH_CGROUP_ROOT when set (tests only: a folder
// holding proc/self/cgroup and sys/fs/cgroup/...), else "".
std::string CgroupPrefix();

struct CgroupCpuLimit {
  size_t cores = 0;   // the quota in whole cores, rounded up: at least 1
  std::string file;   // the file it was read from, for messages
  std::string text;   // its value, as written there
};

// The tightest CPU quota on the process's cgroups: cgroup v2 `cpu.max` ("QUOTA PERIOD", or
// "max PERIOD" for none) or v1 `cpu.cfs_quota_us` over the `cpu.cfs_period_us` beside it (-1
// for none), as cores: ceil(quota / period). None when no quota is set or none can be read.
std::optional<CgroupCpuLimit> ReadCgroupCpuLimit(const std::string& prefix);

// The cores a run uses when --threads is not given: the CPUs of the process's affinity mask
// (taskset, a container's cpuset), no more than its cgroup's CPU quota (a container's --cpus,
// a Kubernetes CPU limit): more threads than the quota only take turns, each costing its
// memory in the budget's floor. At least 1. Read once per process. `note`: where given, set
// to a line saying so when the quota is what limits it, else "".
size_t AvailableCores(std::string* note = nullptr);

}  // namespace quench

#endif  // QUENCH_FORMAT_CGROUP_H_
