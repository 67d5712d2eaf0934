// What the pipeline hands from stage to stage: a chunk (one piece of a large tensor, or whole
// small tensors of one shard), the writes it leaves for the writer threads, and how its byte
// ranges are placed in one buffer.
#ifndef QUENCH_PIPELINE_CHUNKS_H_
#define QUENCH_PIPELINE_CHUNKS_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "format/file_io.h"
#include "pipeline/buffers.h"
#include "quench/plan.h"
#include "schemes/dequant.h"

namespace quench {

// One tensor's share of a chunk: rows [begin, end) of a tensor to quantize or prune, or bytes
// [begin, end) of a copied one, and what came of them.
struct Piece {
  size_t tensor = 0;
  uint64_t begin = 0, end = 0;
  uint64_t src_offset = 0, src_len = 0;  // absolute input range this piece reads
  uint64_t zeroed = 0;                   // pruned positions
  ErrorSums error;                       // --report: sampled quantization error
  bool finite = true;
};

// Bytes of the pooled buffer a chunk of `rows` rows of `t` uses: each kernel output's slabs,
// placed like its file offset (up to one alignment unit of padding before each).
uint64_t ChunkOutputBytes(const Plan& plan, const PlannedTensor& t, uint64_t rows);

// Bytes bound for the output file: `len` bytes at file offset `off`, from `src`.
struct WriteRange {
  uint64_t off = 0;
  const uint8_t* src = nullptr;
  uint64_t len = 0;
};

// The unit the pipeline hands from stage to stage: one piece of a large tensor, or several
// whole small tensors of one shard, all of one kind (copied, pruned alone, or quantized), so
// that tensors of a few kilobytes cost a chunk's overheads (a token, a hand-off, page
// releases, writes) together rather than each.
struct Chunk {
  OutputFile* file = nullptr;        // the shard's output
  const MappedFile* map = nullptr;   // the source shard
  std::vector<Piece> pieces;         // in plan order
  uint64_t src_len = 0;              // input bytes of all pieces
  std::vector<WriteRange> writes;    // what the writer writes, from `buf` or `staging`
  Buffer buf;
  Buffer staging;  // pruned copies of the input rows (pruning only)

  bool finite() const {
    return std::all_of(pieces.begin(), pieces.end(), [](const Piece& p) { return p.finite; });
  }
};

// Where a chunk's byte ranges go in one buffer: each at an address with its file offset's
// remainder modulo DirectIoAlignment() (so that a direct write takes it without a copy), and
// ranges that follow each other in the file one after the other, so that they go out as one
// write. `ranges` holds (file offset, length); Place returns the buffer bytes needed and sets
// each range's place in the buffer (`at`) and the writes (`runs`, sources relative to the
// buffer's start until Bind).
class Placement {
 public:
  uint64_t Place(const std::vector<std::pair<uint64_t, uint64_t>>& ranges);
  uint64_t at(size_t i) const { return at_[i]; }
  // Appends the writes, their sources in `base`.
  void Bind(const uint8_t* base, std::vector<WriteRange>* writes) const;

 private:
  std::vector<uint64_t> at_;
  std::vector<size_t> order_;
  std::vector<WriteRange> runs_;
  std::vector<uint64_t> run_at_;
};

}  // namespace quench

#endif  // QUENCH_PIPELINE_CHUNKS_H_
