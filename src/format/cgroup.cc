#include "format/cgroup.h"

#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace quench {
namespace {

// Every file named `file` in `mount` + `cgroup_path` and its ancestors up to `mount`.
void AlongPath(const std::string& mount, std::string cgroup_path, std::string_view file,
               std::vector<CgroupFile>& out) {
  while (!cgroup_path.empty() && cgroup_path.back() == '/') cgroup_path.pop_back();
  for (;;) {
    const std::string path = mount + cgroup_path + "/" + std::string(file);
    if (auto text = ReadSmallFile(path)) out.push_back({path, std::move(*text)});
    if (cgroup_path.empty()) break;
    cgroup_path.resize(cgroup_path.rfind('/'));
  }
}

// ceil(quota / period) cores, at least 1; none for a period of 0.
std::optional<size_t> QuotaCores(uint64_t quota, uint64_t period) {
  if (period == 0) return std::nullopt;
  return static_cast<size_t>(std::max<uint64_t>(1, (quota + period - 1) / period));
}

size_t AffinityCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  // More CPUs than a cpu_set_t holds (1024) fail with EINVAL: then every CPU counts.
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) {
    return static_cast<size_t>(CPU_COUNT(&set));
  }
  return std::max<size_t>(1, std::thread::hardware_concurrency());
}

}  // namespace

std::optional<uint64_t> ParseCgroupNumber(std::string_view text) {
  while (!text.empty() && (text.back() == ' ' || text.back() == '\n')) text.remove_suffix(1);
  if (text.empty()) return std::nullopt;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9' || v > (uint64_t{1} << 58)) return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return v;
}

std::optional<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream f(path);
  if (!f) return std::nullopt;
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return std::nullopt;
  return ss.str();
}

std::vector<CgroupFile> CgroupFilesAlongPath(const std::string& prefix, std::string_view v2_file,
                                             std::string_view v1_controller,
                                             std::string_view v1_file) {
  std::vector<CgroupFile> out;
  auto self = ReadSmallFile(prefix + "/proc/self/cgroup");
  if (!self) return out;
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
      AlongPath(prefix + "/sys/fs/cgroup", path, v2_file, out);
      continue;
    }
    std::istringstream names(controllers);
    for (std::string name; std::getline(names, name, ',');) {
      if (name != v1_controller) continue;
      // Mounted as "cpu,cpuacct" with a link "cpu" beside it on most systems; either will do.
      std::string mount = prefix + "/sys/fs/cgroup/" + controllers;
      std::error_code ec;
      if (controllers != name && !std::filesystem::is_directory(mount, ec)) {
        mount = prefix + "/sys/fs/cgroup/" + name;
      }
      AlongPath(mount, path, v1_file, out);
    }
  }
  return out;
}

std::string CgroupPrefix() {
  const char* root = std::getenv("QUENCH_CGROUP_ROOT");
  return root != nullptr ? root : "";
}

std::optional<CgroupCpuLimit> ReadCgroupCpuLimit(const std::string& prefix) {
  std::optional<CgroupCpuLimit> best;
  auto consider = [&](const CgroupFile& f, std::optional<size_t> cores) {
    if (!cores || (best && best->cores <= *cores)) return;
    std::string text = f.text;
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    best = CgroupCpuLimit{*cores, f.path, text};
  };
  for (const CgroupFile& f : CgroupFilesAlongPath(prefix, "cpu.max", "cpu", "cpu.cfs_quota_us")) {
    if (f.path.ends_with("/cpu.max")) {
      // "QUOTA PERIOD", the quota "max" when none (the kernel's cgroup-v2 documentation).
      const size_t space = f.text.find(' ');
      if (space == std::string::npos) continue;
      const auto quota = ParseCgroupNumber(std::string_view(f.text).substr(0, space));
      const auto period = ParseCgroupNumber(std::string_view(f.text).substr(space + 1));
      if (quota && period) consider(f, QuotaCores(*quota, *period));
      continue;
    }
    // v1: the quota in microseconds per cpu.cfs_period_us beside it, -1 when none.
    const std::string dir = f.path.substr(0, f.path.rfind('/'));
    const auto quota = ParseCgroupNumber(f.text);
    const auto period_text = ReadSmallFile(dir + "/cpu.cfs_period_us");
    const auto period = period_text ? ParseCgroupNumber(*period_text) : std::nullopt;
    if (quota && period) consider(f, QuotaCores(*quota, *period));
  }
  return best;
}

size_t AvailableCores(std::string* note) {
  struct Cores {
    size_t count;
    std::string note;
  };
  static const Cores cores = [] {
    const size_t affinity = AffinityCores();
    const std::optional<CgroupCpuLimit> quota = ReadCgroupCpuLimit(CgroupPrefix());
    if (!quota || quota->cores >= affinity) return Cores{affinity, ""};
    return Cores{quota->cores, "threads: " + std::to_string(quota->cores) +
                                   ", this process's cgroup CPU quota (" + quota->file + ": " +
                                   quota->text + ") on " + std::to_string(affinity) +
                                   " cores; --threads sets it"};
  }();
  if (note != nullptr) *note = cores.note;
  return cores.count;
}

}  // namespace quench
