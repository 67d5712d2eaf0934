#include "format/page_cache.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

namespace quench {
namespace {

// cachestat(2)'s number and structures, from <linux/mman.h> of Linux 6.5; the build's kernel
// headers may predate them, the running kernel may not.
#ifdef __NR_cachestat
constexpr long kCachestat = __NR_cachestat;
#elif defined(__x86_64__) || defined(__aarch64__) || defined(__riscv)
constexpr long kCachestat = 451;  // the same number on every architecture that has it
#else
constexpr long kCachestat = -1;
#endif

struct CachestatRange {
  uint64_t off;
  uint64_t len;
};

struct Cachestat {
  uint64_t nr_cache;
  uint64_t nr_dirty;
  uint64_t nr_writeback;
  uint64_t nr_evicted;
  uint64_t nr_recently_evicted;
};

// Cleared at the first ENOSYS (an older kernel, or a sandbox that filters the call), so that
// such a system pays one failed call per process, not one per range.
std::atomic<bool> g_available{kCachestat >= 0};

}  // namespace

bool RangeCached(int fd, uint64_t offset, uint64_t len) {
  if (len == 0) return true;
  if (fd < 0 || !g_available.load(std::memory_order_relaxed)) return false;
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  // The pages the range touches, and the range widened to them (cachestat counts pages).
  const uint64_t begin = offset / page * page;
  const uint64_t end = (offset + len + page - 1) / page * page;
  CachestatRange range{begin, end - begin};
  Cachestat st{};
  if (syscall(kCachestat, fd, &range, &st, 0) != 0) {
    if (errno == ENOSYS) g_available.store(false, std::memory_order_relaxed);
    return false;
  }
  // (Pages past the end of the file are never counted: such a range is not all cached.)
  return st.nr_cache >= (end - begin) / page;
}

}  // namespace quench
