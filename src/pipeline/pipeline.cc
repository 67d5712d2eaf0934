#include "pipeline/pipeline.h"

#include <tbb/global_control.h>
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
#include "pipeline/resume.h"
#include "pipeline/source_decode.h"
#include "pipeline/source_decode_packed.h"
#include "plan/planner.h"
#include "schemes/chunk.h"
#include "schemes/dequant.h"
#include "schemes/float_formats.h"
#include "schemes/prune.h"

namespace quench {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
// Resident memory not used by chunks: code, TBB, the plan, headers, stacks, and per
// direct-written output file (two while one shard is being committed) its 4 MiB staging
// buffer and up to 4 MiB of small writes held to be joined (format/file_io.cc).
constexpr uint64_t kReserve = 32 * kMiB;
// What the process holds before any chunk: measured 8 MiB (ru_maxrss of a conversion of
// data/tiny-llama under --memory-limit 1M), plus the two 4 MiB staging buffers of
// direct-written outputs. MinimumMemoryLimit's base.
constexpr uint64_t kBaseline = 16 * kMiB;
// SizePipeline's smallest chunk.
constexpr uint64_t kMinChunkBytes = 256 * 1024;
// Chunk buffers the writers may hold (queued or being written): at least enough
// that the workers need not wait for a write to finish before starting the next chunk, and
// up to kMaxWriteQueueChunks where the budget allows, so that the disk keeps writing through
// the workers' uneven stretches (a fused set's NVFP4 pre-pass, copied tensors). The depth
// was chosen by measurement: bench/README.md, "Figures and their history".
constexpr uint64_t kMinWriteQueueChunks = 2;
constexpr uint64_t kMaxWriteQueueChunks = 32;
// Two writer threads keep a write in flight while the other waits for its own to finish;
// one was slower in interleaved runs (bench/README.md).
constexpr int kWriterThreads = 2;
// How far the input stage asks for input ahead of the chunk it hands out (page cache, not
// resident set): asking only for the chunk being handed out left the disk idle while it was
// converted (cold runs, bench/README.md); 16 to 256 MiB ahead measured alike. The I/O floor
// (bench/iofloor.cc) reads ahead by the same amount.
constexpr uint64_t kReadAheadBytes = 64 * kMiB;
// Decoded rows of a source-quantized tensor per tile (QuantizeDecoded): small enough to stay
// in a core's cache between decoding and quantizing. One tile buffer per worker thread, in
// kReserve.
constexpr uint64_t kDecodeTileBytes = 256 * 1024;

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
        // A chunk's outputs are at most its input's size (narrower types), plus the padding
        // that places each output like its file offset.
        pool_(sizing.chunk_bytes + (ChunkOutputs::kMax + 1) * DirectIoAlignment()) {
    if (zeroed_ != nullptr) zeroed_->assign(plan.tensors.size(), 0);
    if (errors_ != nullptr) errors_->assign(plan.tensors.size(), ErrorSums{});
    shard_bytes_.assign(plan.shards.size(), StreamBytes{});
    shard_issued_.assign(plan.shards.size(), StreamBytes{});
    for (const PlannedTensor& t : plan.tensors) {
      total_ += t.src_bytes;
      if (!plan.shards[t.shard].already_done) shard_bytes_[t.shard].Of(IsCopy(t)) += t.src_bytes;
    }
  }

  Status Run() {
    tbb::global_control gc(tbb::global_control::max_allowed_parallelism,
                           static_cast<size_t>(sizing_.threads));
    try {
      writer_ = std::make_unique<WriteQueue<Chunk>>(
          sizing_.write_queue_bytes, kWriterThreads, [this](std::unique_ptr<Chunk> c) {
            Contained(plan_.src.native(), [&] { WriteChunk(std::move(c)); });
          });
    } catch (const std::system_error& e) {  // no memory for a thread's stack, or no threads
      return Error(ErrorCode::kIo, std::string("cannot start the writer threads (") + e.what() +
                                       "); free memory or lower --memory-limit");
    }
    // oneTBB starts its worker threads on first use and reports a thread it cannot create
    // (no memory for its stack, e.g. under `ulimit -v`) as a std::runtime_error naming
    // pthread_create: an exhausted resource, reported as such, never as a bug.
    try {
      RunStages();
    } catch (const std::runtime_error& e) {
      if (std::string_view(e.what()).find("pthread_create") == std::string_view::npos) throw;
      Fail(Error(ErrorCode::kIo, std::string("out of memory: cannot start the worker threads (") +
                                     e.what() + "); free memory or lower --memory-limit"));
    }
    if (!failed()) FinishShardsBefore(plan_.shards.size());
    writer_->Finish();
    if (failed()) {
      for (auto& f : commits_) f.wait();
      return first_error_;
    }
    for (auto& f : commits_) {
      Status s = f.get();
      if (!s.ok() && first_error_.ok()) first_error_ = s;
    }
    return first_error_;
  }

 private:
  // The three stages: read (serial, in order), transform (parallel), write (serial, in order).
  void RunStages() {
    tbb::parallel_pipeline(
        static_cast<size_t>(sizing_.tokens),
        tbb::make_filter<void, Chunk*>(
            tbb::filter_mode::serial_in_order,
            [this](tbb::flow_control& fc) {
              Chunk* c = nullptr;
              // The pre-pass a chunk may run first reads the tensor's shard.
              const size_t t = tensors_prepared_;
              const std::string& file = t < plan_.tensors.size()
                                            ? plan_.shards[plan_.tensors[t].shard].src_path.native()
                                            : plan_.src.native();
              if (!Contained(file, [&] { c = Next(fc); })) {
                fc.stop();
              }
              return c;
            }) &
            tbb::make_filter<Chunk*, Chunk*>(
                tbb::filter_mode::parallel,
                [this](Chunk* c) {
                  const size_t shard = plan_.tensors[c->pieces.front().tensor].shard;
                  Contained(plan_.shards[shard].src_path.native(), [&] { Transform(c); });
                  return c;
                }) &
            tbb::make_filter<Chunk*, void>(tbb::filter_mode::serial_in_order,
                                           [this](Chunk* c) { Write(c); }));
  }

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
  Chunk* Next(tbb::flow_control& fc) {
    if (failed()) {
      fc.stop();
      return nullptr;
    }
    if (cancel_ != nullptr && cancel_->load(std::memory_order_relaxed)) {
      Fail(Error(ErrorCode::kInterrupted, "interrupted; no output shard in progress was kept"));
      fc.stop();
      return nullptr;
    }
    SkipDone(main_);
    SkipDone(copy_);
    // Prepare every tensor up to the next main chunk's (all of them at the end, empty ones
    // included); copies need no preparation.
    if (Status st = PrepareBefore(std::min(main_.tensor + 1, plan_.tensors.size())); !st.ok()) {
      Fail(st);
      fc.stop();
      return nullptr;
    }
    const size_t main_shard = ShardAt(main_), copy_shard = ShardAt(copy_);
    if (main_shard == kNoShard && copy_shard == kNoShard) {
      fc.stop();
      return nullptr;
    }
    // A copy piece when the copy cursor is still in an earlier shard, or when this shard's
    // copies are behind the other tensors: copied / copy total <= others done / others total.
    bool take_copy = copy_shard < main_shard;
    if (copy_shard == main_shard) {
      const StreamBytes& total = shard_bytes_[copy_shard];
      const StreamBytes& issued = shard_issued_[copy_shard];
      take_copy = static_cast<unsigned __int128>(issued.copy) * total.other <=
                  static_cast<unsigned __int128>(issued.other) * total.copy;
    }
    Cursor& cur = take_copy ? copy_ : main_;
    // Empty tensors have no extent, so a chunk always reads some bytes of its shard.
    const PlannedTensor& t = plan_.tensors[cur.tensor];
    auto map = maps_.Get(t.shard);
    if (!map.ok()) {
      Fail(map.status());
      fc.stop();
      return nullptr;
    }
    auto c = std::make_unique<Chunk>();
    c->map = map.value();
    Piece first;
    first.tensor = cur.tensor;
    first.begin = cur.pos;
    // What the chunk may still take: input bytes, and (quantizing) bytes of its buffer.
    uint64_t in_left = 0, out_left = 0;
    if (!take_copy) {
      const uint64_t row_bytes = SourceRowBytes(t);
      // A decoded source row takes more room in its staging buffer (BF16) than in the input
      // (E4M3): the chunk is sized by the larger, so that staging fits a pooled buffer.
      const uint64_t work_row = std::max(row_bytes, ComputeRowBytes(t));
      const uint64_t align = t.scheme != nullptr ? t.scheme->row_align : 1;
      uint64_t rows = std::max<uint64_t>(1, sizing_.chunk_bytes / std::max<uint64_t>(work_row, 1));
      rows = std::max(align, rows / align * align);
      if (t.action == TensorAction::kQuantize) rows = FitHugePages(t, rows, align);
      first.end = std::min(t.shape[0], cur.pos + rows);
      first.src_offset = t.src_offset + first.begin * row_bytes;
      if (!t.src_ranges.empty() && row_bytes > 0) {
        // A gathered tensor (a compressed expert stack sliced to the kept experts, decoded
        // whole): one range, whole rows, at a time.
        const auto [at, run] = SourceAt(t, first.begin * row_bytes);
        first.end = std::min(first.end, first.begin + std::max<uint64_t>(1, run / row_bytes));
        first.src_offset = at;
      }
      first.src_len = (first.end - first.begin) * row_bytes;
      in_left = Minus(sizing_.chunk_bytes,
                      (first.end - first.begin) * work_row + DirectIoAlignment());
      out_left = Minus(sizing_.chunk_bytes, OutputBytes(t, first.end - first.begin));
    } else {
      // A quarter chunk: no more than a quantized chunk's output (int4 from BF16 is a quarter
      // of its input), so that copies land in pages the pool's buffers already have rather
      // than touching new ones (BufferPool::Get).
      // The first piece ends on a file block boundary, so that with the lead-in AlignLike
      // gives it the buffer holds exactly a quarter chunk; later pieces start aligned.
      const uint64_t copy_bytes = std::max<uint64_t>(sizing_.chunk_bytes / 4, 1);
      const uint64_t dst = plan_.shards[t.shard].outputs[t.outputs[0]].file_offset + cur.pos;
      const uint64_t lead = dst % DirectIoAlignment();
      first.end = std::min(t.src_bytes,
                           cur.pos + (copy_bytes > 2 * lead ? copy_bytes - lead : copy_bytes));
      const auto [at, run] = SourceAt(t, first.begin);  // a gathered tensor: one run at a time
      first.end = std::min(first.end, first.begin + run);
      // A tensor the calibration rewrites is cut between whole elements.
      if (calib_ != nullptr && calib_->RewritesCopy(cur.tensor) && first.end < t.src_bytes) {
        const uint64_t esz = std::max<uint64_t>(1, DTypeBits(t.dtype) / 8);
        first.end = std::max(first.begin + esz, first.end / esz * esz);
      }
      first.src_offset = at;
      first.src_len = first.end - first.begin;
      in_left = Minus(copy_bytes, lead + first.src_len);
    }
    cur.pos = first.end;
    c->src_len = first.src_len;
    c->pieces.push_back(first);
    if (take_copy) in_left = AddGatheredRuns(*c, cur, t, in_left);
    const bool whole = first.begin == 0 && cur.pos == Extent(t);
    // Whole small tensors after a whole one join its chunk while they fit.
    if (whole) {
      if (Status st = AddSmallTensors(*c, cur, t, in_left, out_left); !st.ok()) {
        Fail(st);
        fc.stop();
        return nullptr;
      }
    }
    shard_issued_[t.shard].Of(take_copy) += c->src_len;
    // Opened here, where the chunk learns its file; a writer thread writes into it.
    if (Status st = EnsureOpen(t.shard); !st.ok()) {
      Fail(st);
      fc.stop();
      return nullptr;
    }
    c->file = files_[t.shard].get();
    cur.issued += c->src_len;
    ReadAhead(cur);  // this chunk's range included
    return c.release();
  }

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
  Status PrepareBefore(size_t upto) {
    for (; tensors_prepared_ < upto; ++tensors_prepared_) {
      if (before_tensor_) QUENCH_RETURN_IF_ERROR(before_tensor_(tensors_prepared_));
      if (calib_ != nullptr && calib_->Takes(tensors_prepared_) &&
          !plan_.shards[plan_.tensors[tensors_prepared_].shard].already_done) {
        QUENCH_RETURN_IF_ERROR(calib_->Prepare(tensors_prepared_));
      }
    }
    return Status::Ok();
  }

  // Appends to `c` the tensors after the cursor's, whole, while they are in the first one's
  // shard, of its kind (same action and pruning) and within what the chunk may still take:
  // `in_left` input bytes (counting a block of padding per tensor, which a pruned copy or a
  // copied tensor may need in its buffer) and `out_left` buffer bytes for kernel outputs.
  Status AddSmallTensors(Chunk& c, Cursor& cur, const PlannedTensor& first, uint64_t in_left,
                         uint64_t out_left) {
    const uint64_t a = DirectIoAlignment();
    for (;;) {
      SkipDone(cur);
      if (cur.tensor >= plan_.tensors.size()) return Status::Ok();
      const PlannedTensor& t = plan_.tensors[cur.tensor];
      if (t.shard != first.shard || t.action != first.action || t.prune != first.prune ||
          t.source_scale.has_value() != first.source_scale.has_value() ||
          t.src_ranges.size() > 1) {  // a gathered tensor is not one piece
        return Status::Ok();
      }
      const uint64_t in = StagedBytes(t) + a;
      const uint64_t out = IsCopy(t) ? 0 : OutputBytes(t, t.shape[0]);
      if (in > in_left || out > out_left) return Status::Ok();
      in_left -= in;
      out_left -= out;
      if (!IsCopy(t)) QUENCH_RETURN_IF_ERROR(PrepareBefore(cur.tensor + 1));
      Piece p;
      p.tensor = cur.tensor;
      p.end = Extent(t);
      p.src_offset = t.src_offset;
      p.src_len = t.src_bytes;
      c.pieces.push_back(p);
      c.src_len += p.src_len;
      cur.pos = p.end;
    }
  }

  // A copied tensor gathered from several source ranges (a router sliced to the kept
  // experts: one range per run of kept rows, 2-12 KiB each) gets its next whole ranges as
  // further pieces of the chunk its first range opened, while they fit in `in_left` input
  // bytes; returns what is left. They are dense in the output, so the chunk still writes one
  // run. A chunk per range cost each a pooled buffer, a huge page zeroed for a few KiB, a
  // slot in the writers' queue and 4 KiB direct writes of the blocks the ranges shared
  // (bench/README.md, "Routers sliced in one chunk").
  uint64_t AddGatheredRuns(Chunk& c, Cursor& cur, const PlannedTensor& t, uint64_t in_left) {
    while (t.src_ranges.size() > 1 && cur.pos < t.src_bytes) {
      const auto [at, run] = SourceAt(t, cur.pos);
      if (run > in_left) break;
      Piece p;
      p.tensor = cur.tensor;
      p.begin = cur.pos;
      p.end = cur.pos + run;
      p.src_offset = at;
      p.src_len = run;
      c.pieces.push_back(p);
      c.src_len += run;
      in_left -= run;
      cur.pos = p.end;
    }
    return in_left;
  }

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
  void ReadAhead(Cursor& c) {
    const uint64_t upto = c.issued + kReadAheadBytes;
    // One request per stretch of input the walk covers back to back in one shard.
    const MappedFile* map = nullptr;
    uint64_t from = 0, len = 0;
    while (c.ahead < upto && c.ahead_tensor < plan_.tensors.size()) {
      const PlannedTensor& t = plan_.tensors[c.ahead_tensor];
      if (Passes(c, c.ahead_tensor) || c.ahead_pos >= t.src_bytes) {
        ++c.ahead_tensor;
        c.ahead_pos = 0;
        continue;
      }
      auto m = maps_.Get(t.shard);
      if (!m.ok()) break;
      const auto [at, run] = SourceAt(t, c.ahead_pos);  // only the kept experts' bytes
      const uint64_t n = std::min({t.src_bytes - c.ahead_pos, upto - c.ahead, run});
      if (m.value() != map || at != from + len) {
        if (map != nullptr) map->Prefetch(from, len);
        map = m.value();
        from = at;
        len = 0;
      }
      len += n;
      c.ahead_pos += n;
      c.ahead += n;
    }
    if (map != nullptr) map->Prefetch(from, len);
  }

  uint64_t OutputBytes(const PlannedTensor& t, uint64_t rows) const {
    return ChunkOutputBytes(plan_, t, rows);
  }

  // Fewer rows (a multiple of `align`, at least 3/4 of `rows`) where that lets the chunk's
  // outputs fit one huge page fewer: buffers are mapped as huge pages, and a page a buffer
  // touches first costs a fault and zeroing (BufferPool::Get): a 16 MiB BF16 chunk's int4
  // outputs just over two huge pages fit in two with a few percent fewer rows. Rows are rows:
  // the output bytes are the same.
  uint64_t FitHugePages(const PlannedTensor& t, uint64_t rows, uint64_t align) const {
    const uint64_t pages = OutputBytes(t, rows) / kHugePage;  // whole pages the outputs pass
    if (pages == 0) return rows;
    uint64_t lo = 0, hi = rows / align;  // in units of `align` rows; largest fitting count
    while (lo < hi) {
      const uint64_t mid = (lo + hi + 1) / 2;
      if (OutputBytes(t, mid * align) <= pages * kHugePage) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    const uint64_t fit = lo * align;
    return fit >= rows - rows / 4 && fit > 0 ? fit : rows;
  }

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
                   size_t rows, uint64_t* zeroed) const {
    if (t.prune_scale >= 0) {
      return calib::WandaPruneRows(src, dst, dtype, rows, t.shape[1], prune_spec_,
                                   plan_.prune_scales[static_cast<size_t>(t.prune_scale)].data(),
                                   zeroed);
    }
    return prune::PruneRows(src, dst, dtype, rows, t.shape[1], prune_spec_, zeroed);
  }

  // Pruning: each piece's rows, pruned, into a staging buffer (one pass from the mapping); the
  // kernel (or, pruning alone, the writer) then reads the staging buffer, with no copy made
  // first and pruned in place (that copy was a large share of a pruned run's CPU).
  // Returns where each piece's pruned rows start.
  std::vector<const uint8_t*> Prune(Chunk* c) {
    // Placed for a direct write of the rows when pruning is all there is to do.
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (const Piece& p : c->pieces) {
      ranges.emplace_back(RowsFileOffset(p, plan_.tensors[p.tensor]), p.src_len);
    }
    Placement place;
    c->staging = pool_.Get(std::max<uint64_t>(place.Place(ranges), 1));
    if (plan_.tensors[c->pieces.front().tensor].action == TensorAction::kPrune) {
      place.Bind(c->staging.data.get(), &c->writes);
    }
    std::vector<const uint8_t*> rows_of(c->pieces.size());
    for (size_t i = 0; i < c->pieces.size(); ++i) {
      Piece& p = c->pieces[i];
      const PlannedTensor& t = plan_.tensors[p.tensor];
      uint8_t* rows_copy = c->staging.data.get() + place.at(i);
      const uint8_t* src = c->map->data() + p.src_offset;
      const size_t rows = p.end - p.begin, cols = t.shape[1];
      // Smoothing comes first (src/calib/composite.h): the rows are pruned as smoothed, and
      // the kernel then takes them as they are.
      if (calib_ != nullptr && calib_->Transforms(p.tensor)) {
        WeightChunk in;
        in.data = src;
        in.dtype = t.dtype;
        in.rows = rows;
        in.cols = cols;
        src = calib_->TransformRows(p.tensor, p.begin, in);
      }
      if (calib_ != nullptr && calib_->PrunesTensor(p.tensor)) {
        // SparseGPT's mask and updates instead of magnitude pruning (src/calib/sparsegpt_run.cc).
        p.finite = calib_->Prune(p.tensor, src, rows_copy, p.begin, rows, &p.zeroed);
      } else if (plan_.prune.per_tensor) {
        const PlannedPruneThreshold& pth = *t.prune_threshold;  // from the pre-pass
        prune::TensorThreshold th;
        th.magnitude = pth.magnitude;
        th.prune_equal = pth.equal;
        th.pruned = pth.total;
        p.finite = prune::PruneRowsTensor(src, rows_copy, t.dtype, rows, cols, th,
                                          pth.equal_before[p.begin], &p.zeroed);
      } else {
        p.finite = PruneRowsOf(t, src, rows_copy, t.dtype, rows, &p.zeroed);
      }
      rows_of[i] = rows_copy;
    }
    return rows_of;
  }

  // Source-quantized tensors (an FP8 checkpoint's weights) written decoded (kDecode) or pruned
  // alone: each piece's rows decoded to BF16 into a pooled staging buffer, placed like the
  // rows' output offsets so that they go out from it as they are; pruned there in place when
  // pruning. (Quantized ones are decoded tile by tile in Quantize instead.) Returns where each
  // piece's decoded rows start.
  std::vector<const uint8_t*> Decode(Chunk* c) {
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (const Piece& p : c->pieces) {
      const PlannedTensor& t = plan_.tensors[p.tensor];
      ranges.emplace_back(RowsFileOffset(p, t), (p.end - p.begin) * ComputeRowBytes(t));
    }
    Placement place;
    c->staging = pool_.Get(std::max<uint64_t>(place.Place(ranges), 1));
    place.Bind(c->staging.data.get(), &c->writes);
    std::vector<const uint8_t*> rows_of(c->pieces.size());
    for (size_t i = 0; i < c->pieces.size(); ++i) {
      Piece& p = c->pieces[i];
      const PlannedTensor& t = plan_.tensors[p.tensor];
      uint8_t* rows = c->staging.data.get() + place.at(i);
      bool finite = true;
      if (Status st = DecodeSourceRows(plan_, t, maps_, c->map->data() + p.src_offset, p.begin,
                                       p.end, rows, &finite);
          !st.ok()) {
        Fail(st);
        return rows_of;
      }
      p.finite = finite;
      // Row pruning in place (per-tensor thresholds are refused for quantized sources at
      // planning: their pre-pass reads whole tensors).
      if (p.finite && t.prune) {
        p.finite = PruneRowsOf(t, rows, rows, t.compute_dtype, p.end - p.begin, &p.zeroed);
      }
      rows_of[i] = rows;
    }
    return rows_of;
  }

  // Parallel stage: quantize rows straight from the mapping (or from the pruned staging copy)
  // into a pooled buffer; copied tensors are copied into one. A writer thread writes the
  // buffer, so no chunk needs its input pages once it leaves this stage.
  Chunk* Transform(Chunk* c) {
    if (failed()) return c;
    const PlannedTensor& t0 = plan_.tensors[c->pieces.front().tensor];
    if (IsCopy(t0)) {
      Copy(c);
      return c;
    }
    std::vector<const uint8_t*> rows_of;
    if (t0.source_scale && t0.action != TensorAction::kQuantize) {
      rows_of = Decode(c);  // written decoded (or pruned alone): staged whole
      return c;             // Decode placed the writes
    } else if (t0.source_scale) {
      rows_of.assign(c->pieces.size(), nullptr);  // decoded tile by tile in Quantize
    } else if (t0.prune) {
      rows_of = Prune(c);
    } else {
      for (const Piece& p : c->pieces) rows_of.push_back(c->map->data() + p.src_offset);
    }
    if (t0.action == TensorAction::kPrune) return c;  // Prune placed the writes
    Quantize(c, rows_of);
    // The kernel's output is in c->buf: the pruned rows are not needed any more, and their
    // buffer goes back to the pool now rather than when the chunk is written (so the writers'
    // queue does not hold input-sized buffers, each a chunk of pages the pool must touch).
    if (c->staging.data) {
      pool_.Put(std::move(c->staging));
      c->staging = Buffer();  // the queue's bound counts what the chunk still holds
    }
    return c;
  }

  // Copied tensors: read into a pooled buffer, each piece placed like its file offset, with
  // one read for pieces that follow each other in both the input and the buffer.
  void Copy(Chunk* c) {
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (const Piece& p : c->pieces) {
      ranges.emplace_back(RowsFileOffset(p, plan_.tensors[p.tensor]), p.src_len);
    }
    Placement place;
    c->buf = pool_.Get(std::max<uint64_t>(place.Place(ranges), 1));
    uint8_t* base = c->buf.data.get();
    size_t i = 0;
    while (i < c->pieces.size()) {
      size_t j = i + 1;
      uint64_t len = c->pieces[i].src_len;
      while (j < c->pieces.size() &&
             c->pieces[j].src_offset == c->pieces[i].src_offset + len &&
             place.at(j) == place.at(i) + len) {
        len += c->pieces[j].src_len;
        ++j;
      }
      if (Status st = c->map->ReadInto(c->pieces[i].src_offset, len, base + place.at(i));
          !st.ok()) {
        Fail(Error(st.code(), st.message() + " (tensor '" +
                                  plan_.tensors[c->pieces[i].tensor].name + "')"));
        return;
      }
      i = j;
    }
    // Tensors smoothing rewrites (norm weights, biases), in place in the buffer.
    for (size_t k = 0; calib_ != nullptr && k < c->pieces.size(); ++k) {
      const Piece& p = c->pieces[k];
      if (calib_->RewritesCopy(p.tensor)) {
        calib_->RewriteCopy(p.tensor, p.begin, base + place.at(k), p.src_len);
      }
    }
    place.Bind(base, &c->writes);
  }

  // Runs the kernel of each piece into one pooled buffer, every output placed like its file
  // offset (Placement), and adds the outputs' writes to the chunk.
  void Quantize(Chunk* c, const std::vector<const uint8_t*>& rows_of) {
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (const Piece& p : c->pieces) {
      const PlannedTensor& t = plan_.tensors[p.tensor];
      const PlannedShard& ps = plan_.shards[t.shard];
      for (size_t j = 0; j < t.kernel_outputs; ++j) {  // the rest are constants
        const PlannedOutput& o = ps.outputs[t.outputs[j]];
        const uint64_t first = p.begin / o.rows_per_slab;
        const uint64_t last = (p.end + o.rows_per_slab - 1) / o.rows_per_slab;
        const uint64_t off = first * o.bytes_per_slab;
        const uint64_t end = std::min(o.nbytes, last * o.bytes_per_slab);
        ranges.emplace_back(o.file_offset + off, end - off);
      }
    }
    Placement place;
    c->buf = pool_.Get(std::max<uint64_t>(place.Place(ranges), 1));
    place.Bind(c->buf.data.get(), &c->writes);
    size_t k = 0;  // index into `ranges`
    for (size_t i = 0; i < c->pieces.size(); ++i) {
      Piece& p = c->pieces[i];
      const PlannedTensor& t = plan_.tensors[p.tensor];
      ChunkOutputs outs;
      for (size_t j = 0; j < t.kernel_outputs; ++j) outs.out[j] = c->buf.data.get() + place.at(k++);
      WeightChunk in;
      in.data = rows_of[i];
      in.dtype = t.compute_dtype;
      in.rows = p.end - p.begin;
      in.cols = t.shape[1];
      in.params.bits = t.params.bits;
      in.params.group_size = t.params.group_size.value_or(0);
      in.params.symmetric = t.params.symmetric;
      in.params.global_scale = t.global_scale;
      in.row0 = p.begin;
      if (!p.finite) continue;  // pruning found NaN or Inf: nothing of the chunk is written
      if (t.source_scale && t.source_scale->repack) {  // AutoAWQ: its own scheme, lossless
        if (Status st = RepackAwqRows(plan_, t, maps_, p.begin, p.end, outs); !st.ok()) Fail(st);
        continue;
      }
      if (t.source_scale) {
        QuantizeDecoded(c, p, t, in, outs);
        continue;
      }
      // GPTQ never takes a decoded source's weight (calib::PlanGptq rounds those to nearest).
      const bool calibrated = calib_ != nullptr && calib_->Takes(p.tensor);
      // Smoothing's scales folded into the rows first (calib::PlanSmoothQuant refuses
      // decoded weights; pruned ones were smoothed before pruning, in Prune): by the kernel
      // itself where it can (column factors, no smoothed copy of the rows; the error report
      // compares against `in`'s rows, so it takes the copy).
      if (calib_ != nullptr && calib_->Transforms(p.tensor) && !t.prune) {
        const float* f = t.scheme->column_scales && !calibrated && errors_ == nullptr
                             ? calib_->ColumnFactors(p.tensor)
                             : nullptr;
        if (f != nullptr) {
          in.col_scale = f;
        } else if (!calibrated && errors_ == nullptr) {
          QuantizeTransformed(p, t, in, outs);
          continue;
        } else {
          in.data = calib_->TransformRows(p.tensor, p.begin, in);
        }
      }
      if (!(calibrated ? calib_->Quantize(p.tensor, in, outs) : t.scheme->kernel(in, outs))) {
        p.finite = false;
      } else if (errors_ != nullptr) {
        // One row in kErrorRowStride of large tensors (a deterministic sample, so the report
        // costs little); every row of small ones, where a sample would be too noisy.
        const uint64_t stride = t.shape[0] >= kErrorSampleMinRows ? kErrorRowStride : 1;
        AccumulateChunkError(*t.scheme, in, outs, p.begin, stride, &p.error);
      }
    }
  }

  // Rows per tile for a kernel fed tile by tile: about kDecodeTileBytes of compute rows, whole
  // output slabs (so each tile's outputs start at a slab, as a smaller chunk's would).
  uint64_t TileRows(const PlannedTensor& t) const {
    const PlannedShard& ps = plan_.shards[t.shard];
    uint64_t align = std::max<uint64_t>(1, t.scheme->row_align);
    for (size_t j = 0; j < t.kernel_outputs; ++j) {
      align = std::lcm(align, std::max<uint64_t>(1, ps.outputs[t.outputs[j]].rows_per_slab));
    }
    return std::max<uint64_t>(1, kDecodeTileBytes / ComputeRowBytes(t) / align) * align;
  }

  // A piece whose rows smoothing transforms (TransformRows), a tile at a time, each tile
  // quantized at once from the cache into its place in the outputs: transforming the whole
  // piece first wrote and read back two bytes a weight through memory (bench/README.md,
  // "AWQ pre-pass and smoothing overhead"). The kernel sees what a smaller chunk would show
  // it, and the transform is element-wise: the bytes are the same.
  void QuantizeTransformed(Piece& p, const PlannedTensor& t, const WeightChunk& in,
                           const ChunkOutputs& outs) {
    const PlannedShard& ps = plan_.shards[t.shard];
    const uint64_t tile_rows = TileRows(t);
    const uint64_t row_bytes = in.cols * (DTypeBits(in.dtype) / 8);
    for (uint64_t r = p.begin; r < p.end; r += tile_rows) {
      WeightChunk sub = in;
      sub.data = in.data + (r - p.begin) * row_bytes;
      sub.rows = std::min(p.end, r + tile_rows) - r;
      sub.row0 = r;
      sub.data = calib_->TransformRows(p.tensor, r, sub);
      ChunkOutputs so;
      for (size_t j = 0; j < t.kernel_outputs; ++j) {
        const PlannedOutput& o = ps.outputs[t.outputs[j]];
        so.out[j] = outs.out[j] + (r - p.begin) / o.rows_per_slab * o.bytes_per_slab;
      }
      if (!t.scheme->kernel(sub, so)) {
        p.finite = false;
        return;
      }
    }
  }

  // A piece of a source-quantized tensor: its rows decoded (and pruned) a tile at a time into a
  // small per-thread buffer that stays in cache, each tile quantized at once into its place in
  // the chunk's outputs. Decoding the whole piece first wrote and read back two bytes a weight
  // through memory (bench/README.md, "FP8 sources"). Tiles are whole output slabs, so the
  // kernel sees what a smaller chunk would show it: the bytes are the same.
  void QuantizeDecoded(Chunk* c, Piece& p, const PlannedTensor& t, const WeightChunk& in,
                       const ChunkOutputs& outs) {
    const PlannedShard& ps = plan_.shards[t.shard];
    const uint64_t tile_rows = TileRows(t);
    const uint64_t in_row = SourceRowBytes(t);
    if (!t.prune && errors_ == nullptr) {
      // FP8-block codes straight to int4 / NVFP4 outputs by table (fp8_source_quant.h).
      bool handled = false, finite = true;
      if (Status st = QuantizeSourceRows(plan_, t, maps_, c->map->data() + p.src_offset, p.begin,
                                         p.end, t.scheme->kernel, in.params, outs, &handled,
                                         &finite);
          !st.ok()) {
        Fail(st);
        return;
      }
      if (handled) {
        if (!finite) p.finite = false;
        return;
      }
    }
    thread_local std::vector<uint8_t> tile;
    for (uint64_t r = p.begin; r < p.end; r += tile_rows) {
      const uint64_t r1 = std::min(p.end, r + tile_rows);
      tile.resize((r1 - r) * ComputeRowBytes(t));
      bool finite = true;
      if (Status st = DecodeSourceRows(plan_, t, maps_,
                                       c->map->data() + p.src_offset + (r - p.begin) * in_row, r,
                                       r1, tile.data(), &finite);
          !st.ok()) {
        Fail(st);
        return;
      }
      if (finite && t.prune) {
        finite = PruneRowsOf(t, tile.data(), tile.data(), t.compute_dtype, r1 - r, &p.zeroed);
      }
      WeightChunk sub = in;
      sub.data = tile.data();
      sub.rows = r1 - r;
      ChunkOutputs so;
      for (size_t j = 0; j < t.kernel_outputs; ++j) {
        const PlannedOutput& o = ps.outputs[t.outputs[j]];
        so.out[j] = outs.out[j] + (r - p.begin) / o.rows_per_slab * o.bytes_per_slab;
      }
      if (!finite || !t.scheme->kernel(sub, so)) {
        p.finite = false;
        return;
      }
      if (errors_ != nullptr) {
        const uint64_t stride = t.shape[0] >= kErrorSampleMinRows ? kErrorRowStride : 1;
        AccumulateChunkError(*t.scheme, sub, so, r, stride, &p.error);
      }
    }
  }

  // Creates the shard's temporary file and writes its header.
  Status EnsureOpen(size_t s) {
    if (files_[s]) return Status::Ok();
    const PlannedShard& ps = plan_.shards[s];
    QUENCH_ASSIGN_OR_RETURN(files_[s], OutputFile::Create(plan_.dst / ps.rel_name, ps.file_size,
                                                          sizing_.write_mode));
    return files_[s]->WriteAt(0, ps.header.data(), ps.header.size());
  }

  // Writes the shard's constant tensors (weight_shape, weight_global_scale). Called once every
  // tensor of the shard has passed the input stage, so the pre-pass has filled them all.
  // Constants next to each other in the file (one per quantized tensor, sorted together) go
  // out as one write.
  Status WriteConstants(size_t s) {
    const PlannedShard& ps = plan_.shards[s];
    std::string run;
    uint64_t run_off = 0;
    for (const PlannedOutput& o : ps.outputs) {
      if (o.source == SchemeOutput::Source::kKernel) continue;
      if (o.constant.size() != o.nbytes) {
        return Error(ErrorCode::kInternal, ps.rel_name + ": tensor '" + o.name +
                                               "' has no value from the plan or pre-pass");
      }
      if (o.file_offset != run_off + run.size()) {
        if (!run.empty()) QUENCH_RETURN_IF_ERROR(files_[s]->WriteAt(run_off, run.data(), run.size()));
        run.clear();
        run_off = o.file_offset;
      }
      run += o.constant;
    }
    return run.empty() ? Status::Ok() : files_[s]->WriteAt(run_off, run.data(), run.size());
  }

  // Publishes every shard before `s` (in plan order all their chunks are written): fsync and
  // rename happen on a helper thread so the pipeline does not wait for the disk.
  void FinishShardsBefore(size_t s) {
    for (; next_to_finish_ < s; ++next_to_finish_) {
      const size_t k = next_to_finish_;
      if (plan_.shards[k].already_done) continue;
      Status st = EnsureOpen(k);
      if (st.ok()) st = WriteConstants(k);
      if (!st.ok()) {
        Fail(st);
        return;
      }
      maps_.Close(k);
      std::shared_ptr<OutputFile> f(std::move(files_[k]));
      // The writer may still hold chunks of this shard: it says when they are written, and
      // whether every write so far succeeded. A shard with a failed write is not published
      // (the pipeline reports the error; the temporary file is removed with `f`).
      auto written = std::make_shared<std::promise<bool>>();
      std::shared_future<bool> all_ok = written->get_future().share();
      writer_->After([this, written] { written->set_value(!failed()); });
      // After the shard is durable under its final name, its resume marker records what it
      // was made from; a shard without a matching marker is redone by --resume. The
      // fingerprint (a walk over the plan's tensors) is made on the commit's thread, not in
      // this serial stage, while the writer still writes the shard's last chunks: what it
      // reads of the plan (this shard's tensors, their global scales) is final once the
      // shard's last chunk is here, and the plan outlives Run.
      const std::filesystem::path marker = ResumeMarkerPath(plan_.dst, plan_.shards[k].rel_name);
      // The commit waits on its own thread; one that cannot start (no memory for its stack,
      // e.g. under `ulimit -v`) is an exhausted resource: the shard stays unpublished.
      try {
        const bool durable = sizing_.durable_markers;
        commits_.push_back(std::async(std::launch::async, [&plan = plan_, k, f, all_ok, marker,
                                                           durable] {
          std::string fingerprint;
          try {
            fingerprint = ShardFingerprint(plan, k);
          } catch (const std::bad_alloc&) {
            if (!all_ok.get()) return Status::Ok();  // the write's own error comes first
            return Error(ErrorCode::kIo, "out of memory: cannot make the resume marker of " +
                                             plan.shards[k].rel_name +
                                             "; free memory or lower --memory-limit");
          }
          if (!all_ok.get()) return Status::Ok();
          QUENCH_RETURN_IF_ERROR(f->Commit());
          return WriteResumeMarker(marker, fingerprint, durable);
        }));
      } catch (const std::system_error& e) {
        Fail(Error(ErrorCode::kIo, "out of memory: cannot start a thread to commit " +
                                       plan_.shards[k].rel_name + " (" + e.what() +
                                       "); free memory or lower --memory-limit"));
        return;
      } catch (const std::bad_alloc&) {
        Fail(Error(ErrorCode::kIo, "out of memory: cannot queue the commit of " +
                                       plan_.shards[k].rel_name +
                                       "; free memory or lower --memory-limit"));
        return;
      }
    }
  }

  // On a writer thread: the chunk's bytes at their planned offsets, then its buffers back to
  // the pool.
  void WriteChunk(std::unique_ptr<Chunk> c) {
    const bool finite = c->finite();
    for (const WriteRange& w : c->writes) {
      if (!finite || failed()) break;
      if (Status st = c->file->WriteAt(w.off, w.src, w.len); !st.ok()) Fail(st);
    }
    if (c->buf.data) pool_.Put(std::move(c->buf));
    if (c->staging.data) pool_.Put(std::move(c->staging));
  }

  // Why a kernel (or pruning) refused a piece: a NaN or Inf in its rows, named by row; or,
  // when its rows are all finite, parameters the planner should never have let through.
  Status PieceFailure(const Chunk& c, const Piece& p) const {
    const PlannedTensor& t = plan_.tensors[p.tensor];
    const std::string where = plan_.shards[t.shard].rel_name + ": tensor '" + t.name + "'";
    const uint8_t* rows = c.map->data() + p.src_offset;
    const uint64_t cols = t.shape[1];
    if (t.source_scale) return DecodedPieceFailure(t, p, rows, where);
    for (uint64_t r = 0; r < p.end - p.begin; ++r) {
      for (uint64_t k = 0; k < cols; ++k) {
        if (!std::isfinite(ElementToF32(rows, t.dtype, r * cols + k))) {
          return Error(ErrorCode::kNonFinite,
                       where + " contains NaN or Inf (row " + std::to_string(p.begin + r) +
                           ", column " + std::to_string(k) +
                           "); refusing to quantize it (fix the checkpoint or add it to --ignore)");
        }
      }
    }
    return Error(ErrorCode::kInternal,
                 where + " rows " + std::to_string(p.begin) + ".." + std::to_string(p.end - 1) +
                     ": the " + std::string(t.scheme != nullptr ? t.scheme->name : "pruning") +
                     " kernel refused finite input (" + std::string(DTypeName(t.dtype)) +
                     ", " + std::to_string(cols) + " columns); this is a bug in quench");
  }

  // PieceFailure for a source-quantized tensor's piece: a NaN code, named by row and column; a
  // code times its scale beyond BF16's range; or, when the decoded rows are finite, a bug.
  Status DecodedPieceFailure(const PlannedTensor& t, const Piece& p, const uint8_t* codes,
                             const std::string& where) const {
    const uint64_t rows = p.end - p.begin, cols = t.shape[1];
    // E4M3 codes only: packed integer or FP4 bytes have no NaN.
    const bool e4m3 = t.source_scale->packed_kind == 0 && t.dtype == DType::kF8E4M3;
    for (uint64_t i = 0; e4m3 && i < rows * cols; ++i) {
      if ((codes[i] & 0x7F) == 0x7F) {
        return Error(ErrorCode::kNonFinite,
                     where + " holds a NaN E4M3 code (row " + std::to_string(p.begin + i / cols) +
                         ", column " + std::to_string(i % cols) +
                         "); refusing to decode it (fix the checkpoint or add it to --ignore)");
      }
    }
    std::vector<uint8_t> decoded(rows * ComputeRowBytes(t));
    bool finite = true;
    if (Status st = DecodeSourceRows(plan_, t, maps_, codes, p.begin, p.end, decoded.data(),
                                     &finite);
        !st.ok()) {
      return st;
    }
    if (!finite) {
      return Error(ErrorCode::kNonFinite,
                   where + " rows " + std::to_string(p.begin) + ".." +
                       std::to_string(p.end - 1) + " decode beyond BF16's range (a code times "
                       "its scale overflows); refusing to quantize them (fix the scale)");
    }
    return Error(ErrorCode::kInternal,
                 where + " rows " + std::to_string(p.begin) + ".." + std::to_string(p.end - 1) +
                     ": the " + std::string(t.scheme != nullptr ? t.scheme->name : "pruning") +
                     " kernel refused finite decoded input; this is a bug in quench");
  }

  // Serial output stage, in plan order: report a non-finite piece, publish finished shards,
  // release the chunk's input pages (its output is in its buffer), hand it to the writer.
  void Write(Chunk* c) {
    std::unique_ptr<Chunk> owned(c);
    const size_t shard = plan_.tensors[c->pieces.front().tensor].shard;
    if (!failed()) {
      FinishShardsBefore(shard);
      for (const Piece& p : c->pieces) {
        if (p.finite) continue;
        Fail(PieceFailure(*c, p));
        break;
      }
    }
    // One release per stretch of input the pieces read back to back.
    uint64_t from = 0, len = 0;
    for (const Piece& p : c->pieces) {
      if (p.src_offset != from + len) {
        c->map->Release(from, len);
        from = p.src_offset;
        len = 0;
      }
      len += p.src_len;
    }
    c->map->Release(from, len);
    for (const Piece& p : c->pieces) {
      // In order: every chunk of the tensor has been transformed once its last one is here.
      if (calib_ != nullptr && p.end == plan_.tensors[p.tensor].shape[0] &&
          calib_->Takes(p.tensor)) {
        calib_->Done(p.tensor);
      }
      if (zeroed_ != nullptr) (*zeroed_)[p.tensor] += p.zeroed;
      if (errors_ != nullptr) {
        ErrorSums& e = (*errors_)[p.tensor];
        e.signal += p.error.signal;
        e.noise += p.error.noise;
        e.count += p.error.count;
      }
    }
    done_ += c->src_len;
    if (cb_.progress) {
      const auto now = std::chrono::steady_clock::now();
      if (now - last_progress_ > std::chrono::milliseconds(200) || done_ == total_) {
        last_progress_ = now;
        cb_.progress(Progress{done_, total_, plan_.tensors[c->pieces.back().tensor].name});
      }
    }
    // The queue's bound counts the memory the chunk holds (its pooled buffers), not the bytes
    // it writes: a buffer keeps the pages it has ever had, so that is what the budget must see.
    const uint64_t bytes = c->buf.capacity + c->staging.capacity;
    writer_->Submit(std::move(owned), bytes);
  }

  const Plan& plan_;
  const PipelineSizing sizing_;
  const ConvertCallbacks& cb_;
  const std::atomic<bool>* cancel_;
  SourceMaps& maps_;
  std::vector<std::unique_ptr<OutputFile>> files_;
  std::vector<uint64_t>* zeroed_;
  std::vector<ErrorSums>* errors_;
  const std::function<Status(size_t tensor)>& before_tensor_;
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

}  // namespace

PipelineSizing SizePipeline(uint64_t memory_limit, int threads, int buffers_per_chunk,
                            uint64_t prepass_wanted_bytes) {
  PipelineSizing s;
  s.threads = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  s.tokens = 2 * s.threads;
  // Per token: the chunk's resident input pages plus its output buffer (at most the input
  // size for every scheme, since outputs are narrower than BF16 inputs; F32 copies aside).
  const uint64_t usable = memory_limit > 2 * kReserve ? memory_limit - kReserve : memory_limit / 2;
  // Capped at 16 MiB even with a large budget: small enough that the pipeline fills and
  // drains quickly on small shards, large enough to amortise per-chunk costs.
  // The writers hold at least kMinWriteQueueChunks more output buffers.
  const uint64_t buffers =
      static_cast<uint64_t>(buffers_per_chunk) * static_cast<uint64_t>(s.tokens) +
      kMinWriteQueueChunks;
  s.chunk_bytes = std::clamp<uint64_t>(usable / buffers, kMinChunkBytes, 16 * kMiB);
  const uint64_t in_flight = buffers * s.chunk_bytes;
  const uint64_t left = usable > in_flight ? usable - in_flight : 0;
  // What is left goes first to the pre-pass's kept pages (up to what it wants), then to a
  // deeper writers' queue, then back to the pre-pass.
  const uint64_t spare = left > prepass_wanted_bytes ? left - prepass_wanted_bytes : 0;
  const uint64_t extra_queue =
      std::min(spare, (kMaxWriteQueueChunks - kMinWriteQueueChunks) * s.chunk_bytes);
  s.write_queue_bytes = kMinWriteQueueChunks * s.chunk_bytes + extra_queue;
  s.prepass_keep_bytes = left - extra_queue;
  return s;
}

MemoryFloor MinimumMemoryLimit(const Plan& plan, int threads, int buffers_per_chunk) {
  MemoryFloor f;
  const int th = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  f.tokens = 2 * th;  // as SizePipeline
  // The smallest chunk SizePipeline makes (its clamp), for inputs and outputs alike.
  uint64_t in_unit = kMinChunkBytes, out_unit = kMinChunkBytes;
  bool decoding = false;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& t = plan.tensors[i];
    if (t.action == TensorAction::kCopy || t.shape.size() != 2 || t.src_bytes == 0) continue;
    const uint64_t align = t.scheme != nullptr ? t.scheme->row_align : 1;
    const uint64_t rows = std::min<uint64_t>(t.shape[0], align);
    const uint64_t in = rows * SourceRowBytes(t) + DirectIoAlignment();
    // A source-quantized tensor written decoded (or pruned alone) is staged whole, decoded, in
    // the chunk's buffer; quantized, it is decoded through a per-thread tile (below).
    const uint64_t out = t.source_scale && t.action != TensorAction::kQuantize
                             ? rows * ComputeRowBytes(t) + DirectIoAlignment()
                             : ChunkOutputBytes(plan, t, rows);
    decoding = decoding || t.source_scale.has_value();
    if (in + out > f.chunk_bytes) {
      f.tensor = i;
      f.chunk_rows = rows;
      f.chunk_bytes = in + out;
    }
    in_unit = std::max(in_unit, in);
    out_unit = std::max(out_unit, out);
  }
  // Input pages (and a pruning staging copy of them) and the output buffer per token; the
  // writers hold kMinWriteQueueChunks output buffers more.
  const uint64_t per_token = in_unit * static_cast<uint64_t>(std::max(1, buffers_per_chunk - 1)) + out_unit;
  f.bytes = kBaseline + static_cast<uint64_t>(f.tokens) * per_token + kMinWriteQueueChunks * out_unit;
  // Decoded tiles: one per worker thread (QuantizeDecoded).
  if (decoding) f.bytes += static_cast<uint64_t>(th) * kDecodeTileBytes;
  return f;
}

Result<const MappedFile*> SourceMaps::Get(size_t shard) {
  std::lock_guard<std::mutex> lock(mu_);
  if (maps_[shard].data() == nullptr) {
    QUENCH_ASSIGN_OR_RETURN(maps_[shard],
                            MappedFile::Open(plan_.shards[shard].src_path, /*keep_fd=*/true));
  }
  return &maps_[shard];
}

Status SourceMaps::Read(size_t shard, uint64_t offset, uint64_t len, uint8_t* dst) {
  std::lock_guard<std::mutex> lock(mu_);
  if (maps_[shard].data() == nullptr) {
    QUENCH_ASSIGN_OR_RETURN(maps_[shard],
                            MappedFile::Open(plan_.shards[shard].src_path, /*keep_fd=*/true));
  }
  return maps_[shard].ReadInto(offset, len, dst);
}

void SourceMaps::Close(size_t shard) {
  std::lock_guard<std::mutex> lock(mu_);
  maps_[shard] = MappedFile();
}

Status RunShardPipeline(const Plan& plan, const PipelineSizing& sizing, SourceMaps& maps,
                        const ConvertCallbacks& callbacks, const std::atomic<bool>* cancel,
                        std::vector<uint64_t>* zeroed, std::vector<ErrorSums>* errors,
                        const std::function<Status(size_t tensor)>& before_tensor,
                        ChunkCalibration* calib) {
  ShardPipeline p(plan, sizing, maps, callbacks, cancel, zeroed, errors, before_tensor, calib);
  return p.Run();
}

}  // namespace quench
