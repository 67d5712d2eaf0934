// The pipeline's memory for output: pooled buffers aligned for direct writes (BufferPool), and
// the writer threads that write finished chunks from them while the workers compute the next
// ones (WriteQueue). The buffers held by chunks in flight and by the writers are what the
// memory budget counts (SizePipeline in pipeline.h).
#ifndef QUENCH_PIPELINE_BUFFERS_H_
#define QUENCH_PIPELINE_BUFFERS_H_

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace quench {

inline constexpr uint64_t kHugePage = 2ull << 20;

struct Unmap {
  uint64_t len = 0;
  void operator()(uint8_t* p) const;
};

// A reusable output buffer; chunks in flight are bounded, so are buffers. Aligned for direct
// writes (DirectIoAlignment), so that a chunk's output goes to the disk without a copy.
struct Buffer {
  std::unique_ptr<uint8_t, Unmap> data;
  uint64_t capacity = 0;
  uint64_t touched = 0;  // bytes from the start ever handed out: the pages it already has
};

// Where in an aligned buffer to put bytes bound for `file_offset`, at or after `at`: the
// same remainder modulo DirectIoAlignment(), so that OutputFile writes them without a copy.
uint64_t AlignLike(uint64_t at, uint64_t file_offset);

// Output buffers made before the pipeline starts, on a helper thread started before planning:
// while one thread plans, the other core idles, and the pages the pool's first chunks would
// fault in (each zeroed by the kernel) on the critical path are touched there instead
// (bench/README.md, "Output buffers made while planning"). `count` buffers of `capacity`
// bytes, one after another, each with its first `touch` bytes touched (a byte per 4 KiB page:
// one fault per huge page). The caller keeps them within the pool's budget (StartPrefault);
// the pool takes them at its first Get (BufferPool::SetPrefault).
class BufferPrefault {
 public:
  BufferPrefault(int count, uint64_t capacity, uint64_t touch);
  // Stops the thread, once it has touched the page it is touching, and unmaps what was not
  // taken.
  ~BufferPrefault();
  BufferPrefault(const BufferPrefault&) = delete;
  BufferPrefault& operator=(const BufferPrefault&) = delete;

  // Stops making buffers and hands over those whose touch is finished; the one being touched
  // stays with the thread, which unmaps it. Called once the pipeline needs its first buffer;
  // later calls return nothing.
  std::vector<Buffer> Take();

  // Waits until the thread has made every buffer (tests). Not while another thread calls Take.
  void Wait() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Run(int count, uint64_t touch);

  const uint64_t capacity_;
  std::mutex mu_;
  std::vector<Buffer> done_;  // touched, not taken
  bool stop_ = false;
  std::thread thread_;  // last: started once the members above exist
};

class BufferPool {
 public:
  // Every buffer holds at least `min_capacity` bytes, so that buffers suit any chunk and are
  // reused rather than freed and allocated again (fresh pages cost a fault and zeroing each).
  explicit BufferPool(uint64_t min_capacity) : min_capacity_(min_capacity) {}

  // A free buffer whose pages already cover `size` (the least used of those, keeping the
  // larger ones for larger chunks), else the one that has the most of them: a page a buffer
  // touches for the first time costs a fault and zeroing, a reused one neither. (Taking the
  // first free buffer spread chunks over every buffer, so each one ended up with pages for the
  // largest chunk it ever held.) A new buffer is mapped when none is free.
  Buffer Get(uint64_t size);
  void Put(Buffer b);
  // Buffers made ahead (BufferPrefault) are taken on the first Get, so that they are touched
  // for as long as possible; those not of this pool's capacity (planning sized the chunks
  // otherwise than the prefault guessed) are unmapped. `prefault` must outlive the pool's use.
  void SetPrefault(BufferPrefault* prefault) {
    std::lock_guard<std::mutex> lock(mu_);
    prefault_ = prefault;
  }
  // The capacity of every buffer the pool maps for chunks up to min_capacity.
  static uint64_t CapacityFor(uint64_t min_capacity);
  // Unmaps every free buffer now (the pool stays usable).
  void Clear() {
    std::vector<Buffer> gone;
    std::lock_guard<std::mutex> lock(mu_);
    gone.swap(free_);
  }

 private:
  // Whether a buffer that has touched `a` bytes suits a chunk of `size` better than one that
  // has touched `b`: covering beats not covering; among covering, fewer; else more.
  static bool Better(uint64_t a, uint64_t b, uint64_t size) {
    const bool a_covers = a >= size, b_covers = b >= size;
    if (a_covers != b_covers) return a_covers;
    return a_covers ? a < b : a > b;
  }

  const uint64_t min_capacity_;
  std::mutex mu_;
  std::vector<Buffer> free_;
  BufferPrefault* prefault_ = nullptr;  // until the first Get takes its buffers
};

// The writers: threads that write finished items (chunks) while the workers compute the next
// ones, so that the disk and the cores stay busy at the same time. (Writing from the workers,
// a direct write held a core idle for its whole duration.) Several of them, so that a write is
// in flight while another writer, its own write done, waits for a core the workers hold. The
// bytes queued or being written are bounded (`limit`); Submit waits while they exceed it.
template <typename Item>
class WriteQueue {
 public:
  // `write` writes one item and disposes of it (from any writer thread); `limit` bounds the
  // bytes queued or being written.
  WriteQueue(uint64_t limit, int threads, std::function<void(std::unique_ptr<Item>)> write)
      : limit_(limit), write_(std::move(write)) {
    // Each writer holds at most one item in flight: reserved here, so a writer thread never
    // allocates (an allocation failure there could only end in std::terminate).
    in_flight_.reserve(static_cast<size_t>(threads));
    try {
      for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
    } catch (...) {
      Finish();  // a thread that did start is joined, not left to std::terminate
      throw;
    }
  }
  ~WriteQueue() { Finish(); }

  void Submit(std::unique_ptr<Item> c, uint64_t bytes) {
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait(lock, [&] { return pending_ == 0 || pending_ + bytes <= limit_; });
    pending_ += bytes;
    jobs_.push_back(Job{next_seq_++, std::move(c), bytes, nullptr});
    changed_.notify_all();
  }
  // Runs `f` on a writer thread once every item submitted before it is written.
  void After(std::function<void()> f) {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.push_back(Job{next_seq_++, nullptr, 0, std::move(f)});
    changed_.notify_all();
  }
  // Writes what is queued and stops the threads.
  void Finish() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      changed_.notify_all();
    }
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  struct Job {
    uint64_t seq = 0;
    std::unique_ptr<Item> item;
    uint64_t bytes = 0;
    std::function<void()> after;
  };

  void Loop() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        changed_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
        if (jobs_.empty()) return;  // stop_ and nothing left
        job = std::move(jobs_.front());
        jobs_.pop_front();
        if (job.after) {
          // Jobs leave the queue in order, so every earlier item is written or being written.
          changed_.wait(lock, [&] {
            return in_flight_.empty() ||
                   *std::min_element(in_flight_.begin(), in_flight_.end()) > job.seq;
          });
        } else {
          in_flight_.push_back(job.seq);  // within the reserved capacity: no allocation
        }
      }
      if (job.item) write_(std::move(job.item));
      if (job.after) job.after();
      std::lock_guard<std::mutex> lock(mu_);
      if (!job.after) {
        in_flight_.erase(std::find(in_flight_.begin(), in_flight_.end(), job.seq));
      }
      pending_ -= job.bytes;
      changed_.notify_all();
    }
  }

  const uint64_t limit_;
  std::function<void(std::unique_ptr<Item>)> write_;
  std::mutex mu_;
  std::condition_variable changed_;  // queue, in-flight set or pending bytes changed
  std::deque<Job> jobs_;
  std::vector<uint64_t> in_flight_;  // sequence numbers of items being written (<= threads)
  uint64_t next_seq_ = 0;
  uint64_t pending_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;  // last: started once the members above exist
};

}  // namespace quench

#endif  // QUENCH_PIPELINE_BUFFERS_H_
