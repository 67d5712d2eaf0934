// The ShardPipeline behind RunShardPipeline (pipeline.h): one conversion's oneTBB
// parallel_pipeline over a Plan's shards and the state its three stages share. The class is
// declared here so that its stages can live in files of their own: pipeline_input.cc (the
// serial input stage: cursors over the plan, chunks sized and filled, read-ahead),
// pipeline_transform.cc (the parallel stage: pruning, decoding, copying and quantizing a chunk
// into its pooled buffer), pipeline_output.cc (the serial in-order hand-off to the writer
// threads, the writes, and each shard's commit); pipeline.cc runs it. Internal to
// src/pipeline/: nothing outside the pipeline's own files includes it.
#ifndef QUENCH_PIPELINE_SHARD_PIPELINE_H_
#define QUENCH_PIPELINE_SHARD_PIPELINE_H_

#include <tbb/parallel_pipeline.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "calib/wanda.h"
#include "format/file_io.h"
#include "format/map_guard.h"
#include "pipeline/buffers.h"
#include "pipeline/chunks.h"
#include "pipeline/pipeline.h"
#include "pipeline/resume.h"
#include "pipeline/source_decode.h"
#include "pipeline/source_decode_packed.h"
#include "plan/planner.h"
#include "schemes/chunk.h"
#include "schemes/dequant.h"
#include "schemes/float_formats.h"
#include "schemes/prune.h"

namespace quench {

constexpr uint64_t kMiB = 1ull << 20;
// Two writer threads keep a write in flight while the other waits for its own to finish;
// one was slower in interleaved runs (bench/README.md).
constexpr int kWriterThreads = 2;
// How far the input stage asks for input ahead of the chunk it hands out (page cache, not
// resident set): asking only for the chunk being handed out left the disk idle while it was
// converted (cold runs, bench/README.md); 16 to 256 MiB ahead measured alike. The I/O floor
// (bench/iofloor.cc) reads ahead by the same amount.
constexpr uint64_t kReadAheadBytes = 64 * kMiB;

class ShardPipeline {
 public:
  ShardPipeline(const Plan& plan, const PipelineSizing& sizing, SourceMaps& maps,
                const ConvertCallbacks& cb, const std::atomic<bool>* cancel,
                std::vector<uint64_t>* zeroed, std::vector<ErrorSums>* errors,
                const std::function<Status(size_t tensor)>& before_tensor,
                ChunkCalibration* calib)
      : plan_(plan), sizing_(sizing), cb_(cb), cancel_(cancel), maps_(maps),
        files_(plan.shards.size()), zeroed_(zeroed), errors_(errors),
        before_tensor_(before_tensor), calib_(calib), prune_spec_(ToPruneSpec(plan.prune)),
        pool_(PoolBufferBytes(sizing.chunk_bytes)) {
    if (zeroed_ != nullptr) zeroed_->assign(plan.tensors.size(), 0);
    if (errors_ != nullptr) errors_->assign(plan.tensors.size(), ErrorSums{});
    shard_bytes_.assign(plan.shards.size(), StreamBytes{});
    shard_issued_.assign(plan.shards.size(), StreamBytes{});
    for (const PlannedTensor& t : plan.tensors) {
      total_ += t.src_bytes;
      if (!plan.shards[t.shard].already_done) shard_bytes_[t.shard].Of(IsCopy(t)) += t.src_bytes;
    }
  }

  // Runs `f` once every chunk is written, while the last commits wait (RunShardPipeline).
  void SetWhileCommitting(std::function<void()> f) { while_committing_ = std::move(f); }
  void SetBesideFirstChunk(std::function<void()> f) { beside_first_chunk_ = std::move(f); }
  void SetBeforeMarkers(std::function<void()> f) { before_markers_ = std::move(f); }
  void SetPrefault(BufferPrefault* prefault) { pool_.SetPrefault(prefault); }
  Status Run();

 private:
  // The three stages: read (serial, in order), transform (parallel), write (serial, in order).
  void RunStages();

  bool failed() const { return has_error_.load(std::memory_order_relaxed); }

  void Fail(Status s) {
    std::lock_guard<std::mutex> lock(error_mu_);
    if (first_error_.ok()) first_error_ = std::move(s);
    has_error_.store(true);
  }

  // Runs a stage's work so that what the machine does cannot kill the process: a failed
  // allocation, or a mapped source file (`file`) that shrank or failed to read under the map
  // (SIGBUS), becomes the run's error and the run stops as for any other. False if so.
  template <class Fn>
  bool Contained(const std::string& file, Fn&& fn) {
    try {
      Status st = GuardMappedReads(file, [&] {
        fn();
        return Status::Ok();
      });
      if (st.ok()) return true;
      Fail(std::move(st));
    } catch (const std::bad_alloc&) {
      Fail(Error(ErrorCode::kIo, "out of memory: an allocation failed while converting; "
                                 "lower --memory-limit or free memory (nothing is published)"));
    }
    return false;
  }

  // Serial input stage: the next chunk, its input pages prefetched. Two cursors walk the plan:
  // one over the tensors to quantize or prune, one over the tensors copied as they are. Within
  // a shard, copy pieces are handed out in proportion to the other chunks; a shard's copies
  // are done when its other tensors are, and before any chunk of the next shard, so shards
  // still finish in order. In plan order, a shard that starts with its embedding or lm_head
  // (the bench's do, as do many Llama-style checkpoints) gave the disk a fifth of the shard's
  // input to write at once while the cores waited for the queue, then little to write while
  // they quantized. Spread out, copies are written while the cores compute, as the I/O floor
  // (bench/iofloor.cc) assumes (measured: bench/README.md, "Copies spread through their
  // shard").
  Chunk* Next(tbb::flow_control& fc);

  static constexpr size_t kNoShard = ~size_t{0};

  // Input bytes of a shard's copied tensors and of its others.
  struct StreamBytes {
    uint64_t copy = 0, other = 0;
    uint64_t& Of(bool is_copy) { return is_copy ? copy : other; }
  };

  // A walk over the plan's copied tensors (copies) or over the others: the tensor and the
  // position in it (rows, or bytes for a copy) of the next chunk; the input bytes handed out;
  // and ReadAhead's own walk over the same tensors, `ahead` bytes in.
  struct Cursor {
    bool copies = false;
    size_t tensor = 0;
    uint64_t pos = 0;
    uint64_t issued = 0;
    size_t ahead_tensor = 0;
    uint64_t ahead_pos = 0, ahead = 0;
  };

  static bool IsCopy(const PlannedTensor& t) { return t.action == TensorAction::kCopy; }

  static uint64_t Minus(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

  // Runs the pre-pass (before_tensor_) for every tensor before `upto` not yet prepared.
  Status PrepareBefore(size_t upto);

  // Appends to `c` the tensors after the cursor's, whole, while they are in the first one's
  // shard, of its kind (same action and pruning) and within what the chunk may still take:
  // `in_left` input bytes (counting a block of padding per tensor, which a pruned copy or a
  // copied tensor may need in its buffer) and `out_left` buffer bytes for kernel outputs.
  Status AddSmallTensors(Chunk& c, Cursor& cur, const PlannedTensor& first, uint64_t in_left,
                         uint64_t out_left);

  // A copied tensor gathered from several source ranges (a router sliced to the kept
  // experts: one range per run of kept rows, 2-12 KiB each) gets its next whole ranges as
  // further pieces of the chunk its first range opened, while they fit in `in_left` input
  // bytes; returns what is left. They are dense in the output, so the chunk still writes one
  // run. A chunk per range cost each a pooled buffer, a huge page zeroed for a few KiB, a
  // slot in the writers' queue and 4 KiB direct writes of the blocks the ranges shared
  // (bench/README.md, "Routers sliced in one chunk").
  uint64_t AddGatheredRuns(Chunk& c, Cursor& cur, const PlannedTensor& t, uint64_t in_left);
  // Next's parts: the pipeline stopped (with `st` recorded where it is an error); whether
  // the next chunk is a copy piece (the copy cursor still in an earlier shard, or this
  // shard's copies behind its other tensors: copied / copy total <= others done / others
  // total); a chunk's first piece of rows at the main cursor, or of copied bytes at the copy
  // cursor, with what the chunk may still take (input bytes; quantizing, output bytes).
  Chunk* Stop(tbb::flow_control& fc, Status st = Status::Ok());
  bool TakeCopy(size_t main_shard, size_t copy_shard) const;
  Piece FirstRowsPiece(const PlannedTensor& t, const Cursor& cur, uint64_t* in_left,
                       uint64_t* out_left) const;
  Piece FirstCopyPiece(const PlannedTensor& t, const Cursor& cur, uint64_t* in_left) const;

  // Whether the cursor passes over tensor i: not its kind, or in a shard done before.
  bool Passes(const Cursor& c, size_t i) const {
    const PlannedTensor& t = plan_.tensors[i];
    return IsCopy(t) != c.copies || plan_.shards[t.shard].already_done;
  }

  void SkipDone(Cursor& c) const {
    while (c.tensor < plan_.tensors.size() &&
           (Passes(c, c.tensor) || c.pos >= Extent(plan_.tensors[c.tensor]))) {
      ++c.tensor;
      c.pos = 0;
    }
  }

  size_t ShardAt(const Cursor& c) const {
    return c.tensor < plan_.tensors.size() ? plan_.tensors[c.tensor].shard : kNoShard;
  }

  // Asks the kernel (MADV_WILLNEED) for the input kReadAheadBytes beyond what the cursor has
  // handed out (the bytes its chunks will read, in the same order and with the same skips),
  // so that a cold read keeps the disk busy beyond the few chunks in flight. The pages go to
  // the page cache, not to this process's resident set. A shard that cannot be opened is left
  // alone here; the input stage reports it when it gets there.
  void ReadAhead(Cursor& c);

  uint64_t OutputBytes(const PlannedTensor& t, uint64_t rows) const {
    return ChunkOutputBytes(plan_, t, rows);
  }

  // Fewer rows (a multiple of `align`, at least 3/4 of `rows`) where that lets the chunk's
  // outputs fit one huge page fewer: buffers are mapped as huge pages, and a page a buffer
  // touches first costs a fault and zeroing (BufferPool::Get): a 16 MiB BF16 chunk's int4
  // outputs just over two huge pages fit in two with a few percent fewer rows. Rows are rows:
  // the output bytes are the same.
  uint64_t FitHugePages(const PlannedTensor& t, uint64_t rows, uint64_t align) const;

  // Input bytes of a whole tensor as a chunk holds them: decoded (BF16 staging) for a
  // source-quantized one, else as read.
  static uint64_t StagedBytes(const PlannedTensor& t) {
    return t.source_scale ? t.shape[0] * ComputeRowBytes(t) : t.src_bytes;
  }

  // Where byte `pos` of tensor `t`'s input is in its source file, and how many bytes follow
  // it there contiguously: tensors gathered from several ranges (expert pruning) are read a
  // range at a time.
  static std::pair<uint64_t, uint64_t> SourceAt(const PlannedTensor& t, uint64_t pos) {
    if (t.src_ranges.empty()) return {t.src_offset + pos, t.src_bytes - pos};
    for (const auto& [at, len] : t.src_ranges) {
      if (pos < len) return {at + pos, len - pos};
      pos -= len;
    }
    return {t.src_offset, 0};  // past the end: callers stop at src_bytes first
  }

  uint64_t Extent(const PlannedTensor& t) const {
    if (!IsCopy(t)) return t.src_bytes == 0 ? 0 : t.shape[0];
    return t.src_bytes;
  }

  // Where the rows of piece `p` go in the output file, when they are written as they are
  // (copied or pruned alone); for a quantized tensor, where its first output's rows would.
  uint64_t RowsFileOffset(const Piece& p, const PlannedTensor& t) const {
    const uint64_t o = plan_.shards[t.shard].outputs[t.outputs[0]].file_offset;
    return IsCopy(t) ? o + p.begin : o + p.begin * ComputeRowBytes(t);
  }

  // Per-row pruning of one tensor's rows: by magnitude, or by Wanda's scores where planning
  // gave the tensor column scales (calib/wanda.h).
  bool PruneRowsOf(const PlannedTensor& t, const uint8_t* src, uint8_t* dst, DType dtype,
                   size_t rows, uint64_t* zeroed) const;

  // Pruning: each piece's rows, pruned, into a staging buffer (one pass from the mapping); the
  // kernel (or, pruning alone, the writer) then reads the staging buffer, with no copy made
  // first and pruned in place (that copy was a large share of a pruned run's CPU).
  // Returns where each piece's pruned rows start.
  std::vector<const uint8_t*> Prune(Chunk* c);

  // Source-quantized tensors (an FP8 checkpoint's weights) written decoded (kDecode) or pruned
  // alone: each piece's rows decoded to BF16 into a pooled staging buffer, placed like the
  // rows' output offsets so that they go out from it as they are; pruned there in place when
  // pruning. (Quantized ones are decoded tile by tile in Quantize instead.) Returns where each
  // piece's decoded rows start.
  std::vector<const uint8_t*> Decode(Chunk* c);

  // Parallel stage: quantize rows straight from the mapping (or from the pruned staging copy)
  // into a pooled buffer; copied tensors are copied into one. A writer thread writes the
  // buffer, so no chunk needs its input pages once it leaves this stage.
  Chunk* Transform(Chunk* c);

  // Copied tensors: read into a pooled buffer, each piece placed like its file offset, with
  // one read for pieces that follow each other in both the input and the buffer.
  void Copy(Chunk* c);

  // Runs the kernel of each piece into one pooled buffer, every output placed like its file
  // offset (Placement), and adds the outputs' writes to the chunk.
  void Quantize(Chunk* c, const std::vector<const uint8_t*>& rows_of);

  // Rows per tile for a kernel fed tile by tile (DecodeTileRows).
  uint64_t TileRows(const PlannedTensor& t) const { return DecodeTileRows(plan_, t); }

  // A piece whose rows smoothing transforms (TransformRows), a tile at a time, each tile
  // quantized at once from the cache into its place in the outputs: transforming the whole
  // piece first wrote and read back two bytes a weight through memory (bench/README.md,
  // "AWQ pre-pass and smoothing overhead"). The kernel sees what a smaller chunk would show
  // it, and the transform is element-wise: the bytes are the same.
  void QuantizeTransformed(Piece& p, const PlannedTensor& t, const WeightChunk& in,
                           const ChunkOutputs& outs);

  // A piece of a source-quantized tensor: its rows decoded (and pruned) a tile at a time into a
  // small per-thread buffer that stays in cache, each tile quantized at once into its place in
  // the chunk's outputs. Decoding the whole piece first wrote and read back two bytes a weight
  // through memory (bench/README.md, "FP8 sources"). Tiles are whole output slabs, so the
  // kernel sees what a smaller chunk would show it: the bytes are the same.
  void QuantizeDecoded(Chunk* c, Piece& p, const PlannedTensor& t, const WeightChunk& in,
                       const ChunkOutputs& outs);

  // Creates the shard's temporary file and queues its header for the writer threads.
  Status EnsureOpen(size_t s);

  // Writes the shard's constant tensors (weight_shape, weight_global_scale). Called once every
  // tensor of the shard has passed the input stage, so the pre-pass has filled them all.
  // Constants next to each other in the file (one per quantized tensor, sorted together) go
  // out as one write.
  Status WriteConstants(size_t s);

  // Publishes every shard before `s` (in plan order all their chunks are written): fsync and
  // rename happen on a helper thread so the pipeline does not wait for the disk.
  void FinishShardsBefore(size_t s);

  // On a writer thread: the chunk's bytes at their planned offsets, then its buffers back to
  // the pool.
  void WriteChunk(std::unique_ptr<Chunk> c);

  // Why a kernel (or pruning) refused a piece: a NaN or Inf in its rows, named by row; or,
  // when its rows are all finite, parameters the planner should never have let through.
  Status PieceFailure(const Chunk& c, const Piece& p) const;

  // PieceFailure for a source-quantized tensor's piece: a NaN code, named by row and column; a
  // code times its scale beyond BF16's range; or, when the decoded rows are finite, a bug.
  Status DecodedPieceFailure(const PlannedTensor& t, const Piece& p, const uint8_t* codes,
                             const std::string& where) const;

  // Serial output stage, in plan order: report a non-finite piece, publish finished shards,
  // release the chunk's input pages (its output is in its buffer), hand it to the writer.
  void Write(Chunk* c);

  const Plan& plan_;
  const PipelineSizing sizing_;
  const ConvertCallbacks& cb_;
  const std::atomic<bool>* cancel_;
  SourceMaps& maps_;
  std::vector<std::unique_ptr<OutputFile>> files_;
  std::vector<uint64_t>* zeroed_;
  std::vector<ErrorSums>* errors_;
  const std::function<Status(size_t tensor)>& before_tensor_;
  std::function<void()> while_committing_;  // see RunShardPipeline
  std::function<void()> beside_first_chunk_;  // see RunShardPipeline; empty once queued
  std::function<void()> before_markers_;  // see RunShardPipeline
  ChunkCalibration* calib_;  // null: data-free
  size_t tensors_prepared_ = 0;  // before_tensor_ has run for tensors below this
  const prune::PruneSpec prune_spec_;
  std::vector<std::future<Status>> commits_;
  size_t next_to_finish_ = 0;
  BufferPool pool_;
  std::unique_ptr<WriteQueue<Chunk>> writer_;  // created by Run, after everything it calls exists
  Cursor main_{.copies = false};
  Cursor copy_{.copies = true};
  std::vector<StreamBytes> shard_bytes_;   // per shard, to hand out (shards not done before)
  std::vector<StreamBytes> shard_issued_;  // per shard, handed out so far
  uint64_t done_ = 0, total_ = 0;
  std::chrono::steady_clock::time_point last_progress_{};
  std::atomic<bool> has_error_{false};
  std::mutex error_mu_;
  Status first_error_;
};

}  // namespace quench

#endif  // QUENCH_PIPELINE_SHARD_PIPELINE_H_
