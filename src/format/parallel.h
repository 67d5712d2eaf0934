// Independent pieces of work (one per shard) spread over a few threads: reading the headers
// of a checkpoint of tens of thousands of tensors and planning it is serial work before any
// weight is read, and its shards do not depend on each other. (Here, the lowest layer with
// headers, so that the model folder and the planner share it.)
#ifndef QUENCH_FORMAT_PARALLEL_H_
#define QUENCH_FORMAT_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace quench {

// The number of threads for `n` pieces of work worth `items` units in all: at most `threads`
// (0: one per core), one per piece, and one per `items_per_thread` units (starting a thread
// costs about as much as a few thousand small items), never fewer than one.
inline size_t WorkThreads(int threads, size_t n, size_t items, size_t items_per_thread) {
  size_t t = threads > 0 ? static_cast<size_t>(threads)
                         : std::max<size_t>(1, std::thread::hardware_concurrency());
  return std::max<size_t>(1, std::min({t, n, items / items_per_thread}));
}

// Calls fn(i) for every i in [0, n), on the calling thread and up to `threads` - 1 more, each
// taking the next i in order as it finishes one. Where a thread cannot be started the others
// do its share. The first exception a call throws is rethrown here once every thread has
// stopped (the calls not yet started are skipped).
template <class Fn>
void ForEachIndex(size_t n, size_t threads, Fn&& fn) {
  std::atomic<size_t> next{0};
  std::mutex mu;
  std::exception_ptr failure;
  auto work = [&] {
    try {
      for (size_t i; (i = next.fetch_add(1)) < n;) fn(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!failure) failure = std::current_exception();
      next.store(n);
    }
  };
  std::vector<std::thread> helpers;
  helpers.reserve(threads);
  for (size_t k = 1; k < threads && k < n; ++k) {
    try {
      helpers.emplace_back(work);
    } catch (const std::system_error&) {
      break;
    }
  }
  work();
  for (std::thread& h : helpers) h.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace quench

#endif  // QUENCH_FORMAT_PARALLEL_H_
