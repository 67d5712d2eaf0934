// Bytes of a direct-written output file that are not written yet: small writes, and the
// unaligned ends of large ones, kept as runs of adjacent bytes so that they reach the disk in
// a few large requests instead of one request each (a checkpoint of many small tensors gives
// its writer hundreds of writes of a few kilobytes; bench/README.md "Small writes joined").
// Each write's bytes are kept as given (one allocation of its own size, never grown or moved),
// so that what is held costs its bytes and no more. Not thread-safe: OutputFile holds its lock
// around every call.
#ifndef QUENCH_FORMAT_PENDING_RUNS_H_
#define QUENCH_FORMAT_PENDING_RUNS_H_

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace quench {

// Bytes at a file offset.
struct HeldPiece {
  uint64_t at = 0;
  std::string bytes;
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

  // Takes bytes [from, to) out of the run that holds them all, in file order, leaving the
  // run's bytes before and after as runs of their own. Empty if from >= to or no one run
  // holds them all (then nothing is taken).
  std::vector<HeldPiece> Take(uint64_t from, uint64_t to);

  // Takes every run out, in file order.
  std::vector<HeldPiece> TakeAll();

  // Every run, as [begin, end), in file order.
  std::vector<std::pair<uint64_t, uint64_t>> Runs() const;

  uint64_t bytes() const { return bytes_; }
  bool empty() const { return runs_.empty(); }

  uint64_t AlignUp(uint64_t x) const { return (x + block_ - 1) / block_ * block_; }
  uint64_t AlignDown(uint64_t x) const { return x / block_ * block_; }

 private:
  struct Run {
    uint64_t end = 0;
    std::vector<HeldPiece> pieces;  // in file order, back to back from the run's start
  };
  const uint64_t block_;
  std::map<uint64_t, Run> runs_;  // by first byte's offset; never adjacent, never empty
  uint64_t bytes_ = 0;
};

// Copies `pieces` (back to back in the file) into `dst`.
void CopyPieces(const std::vector<HeldPiece>& pieces, uint8_t* dst);

}  // namespace quench

#endif  // QUENCH_FORMAT_PENDING_RUNS_H_
