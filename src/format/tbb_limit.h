// oneTBB's thread limit (--threads), set for the rest of the process.
#ifndef QUENCH_FORMAT_TBB_LIMIT_H_
#define QUENCH_FORMAT_TBB_LIMIT_H_

#include <cstddef>

namespace quench {

// Limits oneTBB to `threads` threads (0: leaves the limit as it is) from now on. A
// tbb::global_control restores the previous limit when it is destroyed, and raising the
// limit may start a thread right there: one that cannot start (no memory or threads left)
// throws out of that destructor, which ends the process in std::terminate (found by
// scripts/fuzz-io). So the limit is an object made once per value and never destroyed; a
// different value (tests run conversions with several in one process) replaces it.
void LimitTbbThreads(size_t threads);

}  // namespace quench

#endif  // QUENCH_FORMAT_TBB_LIMIT_H_
