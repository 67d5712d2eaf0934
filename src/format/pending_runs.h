// Bytes of a direct-written output file that are not written yet: small writes, and the
// unaligned ends of large ones, kept as runs of adjacent bytes so that they reach the disk in
// a few large requests instead of one request each (a checkpoint of many small tensors gives
// its writer hundreds of writes of a few kilobytes; bench/README.md "Small writes combined").
// Not thread-safe: OutputFile holds its lock around every call.
#ifndef QUENCH_FORMAT_PENDING_RUNS_H_
#define QUENCH_FORMAT_PENDING_RUNS_H_

#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace quench {

// Bytes taken out of PendingRuns, in memory aligned for a direct write.
struct AlignedBytes {
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  uint64_t offset = 0;  // file offset of the first byte
  uint64_t len = 0;
  std::unique_ptr<uint8_t, Free> data;
  explicit operator bool() const { return len > 0; }
};

class PendingRuns {
 public:
  // `block`: the direct-write alignment (a power of two).
  explicit PendingRuns(uint64_t block) : block_(block) {}

  // Holds bytes [offset, offset + len), joined to the runs they touch. False (and nothing
  // held) if they overlap bytes held already: each byte of a file is written once.
  bool Add(uint64_t offset, const uint8_t* p, uint64_t len);

  // The run holding byte `offset`, or ending exactly at it (end == offset), as [begin, end);
  // {offset, offset} when there is none.
  std::pair<uint64_t, uint64_t> RunAt(uint64_t offset) const;

  // Takes bytes [from, to) out of the run that holds them (one run, both ends multiples of
  // the block), leaving the run's bytes before and after as runs of their own. Null (len 0)
  // when from == to or the aligned copy cannot be allocated (then nothing is taken).
  AlignedBytes Take(uint64_t from, uint64_t to);

  // Takes every run out whole (unaligned), in file order.
  std::vector<std::pair<uint64_t, std::string>> TakeAll();

  // Every run, as [begin, end), in file order.
  std::vector<std::pair<uint64_t, uint64_t>> Runs() const;

  uint64_t bytes() const { return bytes_; }
  bool empty() const { return runs_.empty(); }

  uint64_t AlignUp(uint64_t x) const { return (x + block_ - 1) / block_ * block_; }
  uint64_t AlignDown(uint64_t x) const { return x / block_ * block_; }

 private:
  const uint64_t block_;
  std::map<uint64_t, std::string> runs_;  // by first byte's offset; never adjacent, never empty
  uint64_t bytes_ = 0;
};

}  // namespace quench

#endif  // QUENCH_FORMAT_PENDING_RUNS_H_
