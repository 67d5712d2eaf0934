#include "pipeline/buffers.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstddef>
#include <new>

#include "format/file_io.h"

namespace quench {
namespace {

// `len` bytes (a multiple of the page size) mapped at a 2 MiB boundary, every whole 2 MiB
// stretch asked to be a huge page. Mapped directly rather than from malloc, so that only the
// pages used count (malloc's alignment slack, heap reuse and MALLOC_PERTURB_ filling made the
// 64 MiB memory test exceed its limit).
uint8_t* MapBuffer(uint64_t len) {
  const uint64_t slack = kHugePage;
  void* p = mmap(nullptr, len + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  const auto base = reinterpret_cast<uintptr_t>(p);
  const uintptr_t start = (base + kHugePage - 1) / kHugePage * kHugePage;
  if (start > base) munmap(p, start - base);
  const uintptr_t end = base + len + slack;
  if (end > start + len) munmap(reinterpret_cast<void*>(start + len), end - (start + len));
  if (len >= kHugePage) {
    madvise(reinterpret_cast<void*>(start), len / kHugePage * kHugePage, MADV_HUGEPAGE);
  }
  return reinterpret_cast<uint8_t*>(start);
}

}  // namespace

void Unmap::operator()(uint8_t* p) const { munmap(p, len); }

uint64_t AlignLike(uint64_t at, uint64_t file_offset) {
  const uint64_t a = DirectIoAlignment();
  return at + (file_offset % a + a - at % a) % a;
}

Buffer BufferPool::Get(uint64_t size) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    size_t best = free_.size();
    for (size_t i = 0; i < free_.size(); ++i) {
      if (free_[i].capacity < size) continue;
      if (best == free_.size() || Better(free_[i].touched, free_[best].touched, size)) best = i;
    }
    if (best < free_.size()) {
      Buffer b = std::move(free_[best]);
      free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(best));
      b.touched = std::max(b.touched, size);
      return b;
    }
    // Too small for this chunk: drop one so the pool never holds more than it gave out.
    if (!free_.empty()) free_.pop_back();
  }
  Buffer b;
  const uint64_t a = DirectIoAlignment();
  const uint64_t capacity = (std::max(size, min_capacity_) + a - 1) / a * a;
  // Aligned to 2 MiB, with every whole 2 MiB stretch asked to be a huge page (MapBuffer): a
  // direct write from physically contiguous memory reaches the disk in fewer, larger requests
  // (a virtio disk takes a bounded number of segments per request, so scattered 4 KiB pages
  // cap a request's size). Where THP is off, madvise does nothing and the buffers work as
  // before.
  b.data = std::unique_ptr<uint8_t, Unmap>(MapBuffer(capacity), Unmap{capacity});
  b.capacity = capacity;
  b.touched = size;
  return b;
}

void BufferPool::Put(Buffer b) {
  std::lock_guard<std::mutex> lock(mu_);
  free_.push_back(std::move(b));
}

}  // namespace quench
