#include "format/units.h"

#include <cstdio>

namespace quench {

std::string FormatBytes(uint64_t bytes) {
  constexpr uint64_t kKiB = 1024, kMiB = kKiB * 1024, kGiB = kMiB * 1024;
  const auto fmt = [](uint64_t b, uint64_t unit, const char* name) {
    char buf[64];
    if (b % unit == 0) {
      std::snprintf(buf, sizeof buf, "%llu %s", static_cast<unsigned long long>(b / unit), name);
    } else {
      std::snprintf(buf, sizeof buf, "%.1f %s", static_cast<double>(b) / static_cast<double>(unit),
                    name);
    }
    return std::string(buf);
  };
  if (bytes >= kGiB) return fmt(bytes, kGiB, "GiB");
  if (bytes >= kMiB) return fmt(bytes, kMiB, "MiB");
  if (bytes >= kKiB) return fmt(bytes, kKiB, "KiB");
  return std::to_string(bytes) + " bytes";
}

}  // namespace quench
