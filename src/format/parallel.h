// Independent pieces of work (one per shard) spread over a few threads: reading the headers
// of a checkpoint of tens of thousands of tensors and planning it is serial work before any
// weight is read, and its shards do not depend on each other. (Here, the lowest layer with
// headers, so that the model folder and the planner share it.)
#ifndef QUENCH_FORMAT_PARALLEL_H_
#define QUENCH_FORMAT_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include "format/cgroup.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif
#ifdef __linux__
#include <sys/mman.h>
#endif

namespace quench {

// Gives the free pages of the process's heap back to the kernel (glibc's malloc_trim(0);
// nothing elsewhere): they are otherwise freed when the process exits.
inline void TrimHeap() {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

// Asks for transparent huge pages under the 2 MiB-aligned part of [p, p + n), a buffer of
// several MiB about to be written for the first time (planning's large arrays: the plan's
// tensor array, a shard's outputs and header, a header read). The kernel then faults in 2 MiB
// at a time instead of 4 KiB (planning a 70k-tensor checkpoint took ~35k page faults, a third
// of its CPU) and frees them faster at exit. Only where THP is "madvise" or "always"; smaller
// buffers (every one of a small checkpoint) are left alone, so that a run under a tight
// --memory-limit keeps the resident set it had.
inline void AdviseHugePages(const void* p, size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (n < 2 * kHuge) return;
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + n) & ~(kHuge - 1);
  if (e > b) (void)madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);
#else
  (void)p;
  (void)n;
#endif
}

// The threads a --threads value asks for: `threads`, or with 0 (or less) one per core the
// process may use (AvailableCores: its affinity mask and cgroup CPU quota); at least one.
inline size_t ThreadCount(int threads) {
  return threads > 0 ? static_cast<size_t>(threads) : AvailableCores();
}

// The number of threads for `n` pieces of work worth `items` units in all: at most `threads`
// (0: one per core), one per piece, and one per `items_per_thread` units (starting a thread
// costs about as much as a few thousand small items), never fewer than one.
inline size_t WorkThreads(int threads, size_t n, size_t items, size_t items_per_thread) {
  return std::max<size_t>(1, std::min({ThreadCount(threads), n, items / items_per_thread}));
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

// Destroys `value` on a thread of its own, so that the caller does not wait for it: a plan of
// ~10^5 tensors is a few hundred thousand small allocations, freed one by one after a
// conversion's last write. Where no thread can be started (or the move's allocation fails) it
// is destroyed on the calling thread as usual. A process that exits meanwhile ends the thread
// with it; the thread touches nothing but `value`.
template <class T>
void ReleaseInBackground(T&& value) {
  static_assert(!std::is_lvalue_reference_v<T>,
                "pass ownership: ReleaseInBackground(std::move(x))");
  try {
    auto owned = std::make_unique<T>(std::move(value));
    // On failure the thread's copy of the lambda, and with it `owned`, is destroyed here.
    std::thread([owned = std::move(owned)]() mutable { owned.reset(); }).detach();
  } catch (const std::system_error&) {
  } catch (const std::bad_alloc&) {
  }
}

}  // namespace quench

#endif  // QUENCH_FORMAT_PARALLEL_H_
