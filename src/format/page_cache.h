// Whether a file's bytes are in the page cache, asked of the kernel without touching them.
#ifndef QUENCH_FORMAT_PAGE_CACHE_H_
#define QUENCH_FORMAT_PAGE_CACHE_H_

#include <cstdint>

namespace quench {

// True when every page of [offset, offset + len) of the open file `fd` is in the page cache
// (cachestat(2), Linux 6.5 and later; one walk over the range's folios, so cheaper than
// anything that looks at pages one by one). False when some page is not, when the kernel has
// no cachestat, or on any error: a caller that would otherwise ask for the bytes to be read
// (MADV_WILLNEED) then asks, as it always did. `len` 0 is true.
bool RangeCached(int fd, uint64_t offset, uint64_t len);

}  // namespace quench

#endif  // QUENCH_FORMAT_PAGE_CACHE_H_
