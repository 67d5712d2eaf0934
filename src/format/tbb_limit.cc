#include "format/tbb_limit.h"

#include <tbb/global_control.h>

#include <mutex>

namespace quench {

void LimitTbbThreads(size_t threads) {
  static std::mutex mu;
  static size_t current = 0;
  static tbb::global_control* limit = nullptr;  // never destroyed (see the header)
  if (threads == 0) return;
  std::lock_guard<std::mutex> lock(mu);
  if (threads == current) return;
  delete limit;
  limit = new tbb::global_control(tbb::global_control::max_allowed_parallelism, threads);
  current = threads;
}

}  // namespace quench
