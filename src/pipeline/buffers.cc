#include "pipeline/buffers.h"

#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstddef>
#include <new>
#include <system_error>
#include <utility>

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

uint64_t BufferPool::CapacityFor(uint64_t min_capacity) {
  const uint64_t a = DirectIoAlignment();
  return (min_capacity + a - 1) / a * a;
}

Buffer BufferPool::Get(uint64_t size) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (prefault_ != nullptr) {
      const uint64_t capacity = CapacityFor(min_capacity_);
      for (Buffer& b : prefault_->Take()) {
        if (b.capacity == capacity) free_.push_back(std::move(b));
      }
      prefault_ = nullptr;
    }
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
  const uint64_t capacity = CapacityFor(std::max(size, min_capacity_));
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

BufferPrefault::BufferPrefault(int count, uint64_t capacity, uint64_t touch)
    : capacity_(capacity) {
  try {
    thread_ = std::thread([this, count, touch] { Run(count, touch); });
  } catch (const std::system_error&) {
    // No thread: nothing made ahead; the pool maps every buffer itself.
  }
}

BufferPrefault::~BufferPrefault() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

std::vector<Buffer> BufferPrefault::Take() {
  std::lock_guard<std::mutex> lock(mu_);
  stop_ = true;
  return std::exchange(done_, {});
}

void BufferPrefault::Run(int count, uint64_t touch) {
  // At the process's own priority: a thread of lower priority preempted inside a page fault
  // would hold the mapping's lock (on kernels without per-VMA locks, the whole address
  // space's) while the pipeline's threads wait for it. Its faults are ones the pipeline would
  // take anyway, so where both cores are busy planning it costs no more than it saves.
  pthread_setname_np(pthread_self(), "quench-prefault");  // for profiles (perf, top -H)
  touch = std::min(touch, capacity_);
  for (int i = 0; i < count; ++i) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
    }
    Buffer b;
    try {
      b.data = std::unique_ptr<uint8_t, Unmap>(MapBuffer(capacity_), Unmap{capacity_});
    } catch (const std::bad_alloc&) {
      return;  // the pool will report it if it cannot map either
    }
    b.capacity = capacity_;
    // A huge page at a time, asking after each whether the pipeline has started.
    for (uint64_t at = 0; at < touch; at += kHugePage) {
      volatile uint8_t* p = b.data.get();
      for (uint64_t q = at; q < std::min(touch, at + kHugePage); q += 4096) p[q] = 0;
      b.touched = std::min(touch, at + kHugePage);
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;  // b, touched partly and not handed over, is unmapped here
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return;
    done_.push_back(std::move(b));
  }
}

void BufferPool::Put(Buffer b) {
  std::lock_guard<std::mutex> lock(mu_);
  free_.push_back(std::move(b));
}

}  // namespace quench
