// Byte counts as messages print them, for every layer's errors and notes (the memory budget's,
// the calibration stages' refusals).
#ifndef QUENCH_FORMAT_UNITS_H_
#define QUENCH_FORMAT_UNITS_H_

#include <cstdint>
#include <string>

namespace quench {

// "768 MiB", "2 GiB", "1.5 GiB", "1000 bytes".
std::string FormatBytes(uint64_t bytes);

}  // namespace quench

#endif  // QUENCH_FORMAT_UNITS_H_
