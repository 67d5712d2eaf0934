#include "pipeline/pipeline.h"

#include <tbb/global_control.h>
#include <tbb/parallel_pipeline.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "format/file_io.h"
#include "pipeline/buffers.h"
#include "pipeline/resume.h"
#include "plan/planner.h"
#include "schemes/chunk.h"
#include "schemes/dequant.h"
#include "schemes/prune.h"

namespace quench {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
// Resident memory not used by chunks: code, TBB, the plan, headers, stacks, and the 4 MiB
// staging buffer of a direct-written output file (two while one shard is being committed).
constexpr uint64_t kReserve = 32 * kMiB;
// Chunk buffers the writers may hold (queued or being written): at least enough
// that the workers need not wait for a write to finish before starting the next chunk, and
// up to kMaxWriteQueueChunks where the budget allows, so that the disk keeps writing through
// the workers' uneven stretches (a fused set's NVFP4 pre-pass, copied tensors). Warm, 2 GB,
// interleaved runs (the bound counted output bytes then): FP8_DYNAMIC 0.78 -> 0.66 s median
// with 6 chunks, 0.72 -> 0.66 s from 6 to 12; NVFP4A16 0.65 -> 0.58 s (6), 0.66 -> 0.55 s
// (6 to 12). Counting buffers, 12 -> 32: NVFP4A16 0.51 -> 0.46 s, W4A16_ASYM 0.53 -> 0.51 s.
constexpr uint64_t kMinWriteQueueChunks = 2;
constexpr uint64_t kMaxWriteQueueChunks = 32;
// On the 2-core VM, 2 GB to FP8_DYNAMIC: 1.02 s median with one writer, 0.94 s with two
// (5 interleaved runs each; W4A16 and NVFP4A16 alike within the noise).
constexpr int kWriterThreads = 2;
// How far the input stage asks for input ahead of the chunk it hands out (page cache, not
// resident set). On the 2-core test VM, converting a cold 2 GB checkpoint to W4A16 took 2.70 s
// (mean of 6) when each chunk was only asked for as it was handed out, 2.24 s with 64 MiB
// ahead; 16, 64 and 256 MiB ahead measured alike (2.01 / 1.94 / 1.95 s). The I/O floor
// (bench/iofloor.cc) reads ahead by the same amount.
constexpr uint64_t kReadAheadBytes = 64 * kMiB;

struct Chunk {
  size_t tensor = 0;
  OutputFile* file = nullptr;  // the shard's output
  // What the writer writes: `n_writes` ranges of `buf` (or `staging`) at file offsets.
  size_t n_writes = 0;
  const uint8_t* write_src[ChunkOutputs::kMax] = {};
  uint64_t write_off[ChunkOutputs::kMax] = {};
  uint64_t write_len[ChunkOutputs::kMax] = {};
  // Quantize: rows [begin, end). Copy: bytes [begin, end) of the tensor.
  uint64_t begin = 0, end = 0;
  uint64_t src_offset = 0, src_len = 0;   // absolute input range this chunk reads
  const MappedFile* map = nullptr;        // the source shard
  Buffer buf;
  Buffer staging;      // pruned copy of the input rows (pruning only)
  uint64_t staging_at = 0;  // where the copy starts in staging
  uint64_t zeroed = 0; // pruned positions in this chunk
  ErrorSums error;     // --report: sampled quantization error of this chunk
  bool finite = true;

  void AddWrite(uint64_t off, const uint8_t* src, uint64_t len) {
    write_off[n_writes] = off;
    write_src[n_writes] = src;
    write_len[n_writes] = len;
    ++n_writes;
  }
};

class ShardPipeline {
 public:
  ShardPipeline(const Plan& plan, const PipelineSizing& sizing, SourceMaps& maps,
                const ConvertCallbacks& cb, const std::atomic<bool>* cancel,
                std::vector<uint64_t>* zeroed, std::vector<ErrorSums>* errors,
                const std::function<Status(size_t tensor)>& before_tensor)
      : plan_(plan), sizing_(sizing), cb_(cb), cancel_(cancel), maps_(maps),
        files_(plan.shards.size()), zeroed_(zeroed), errors_(errors),
        before_tensor_(before_tensor), prune_spec_(ToPruneSpec(plan.prune)),
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
    writer_ = std::make_unique<WriteQueue<Chunk>>(
        sizing_.write_queue_bytes, kWriterThreads,
        [this](std::unique_ptr<Chunk> c) { WriteChunk(std::move(c)); });
    tbb::parallel_pipeline(
        static_cast<size_t>(sizing_.tokens),
        tbb::make_filter<void, Chunk*>(tbb::filter_mode::serial_in_order,
                                       [this](tbb::flow_control& fc) { return Next(fc); }) &
            tbb::make_filter<Chunk*, Chunk*>(tbb::filter_mode::parallel,
                                             [this](Chunk* c) { return Transform(c); }) &
            tbb::make_filter<Chunk*, void>(tbb::filter_mode::serial_in_order,
                                           [this](Chunk* c) { Write(c); }));
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
  bool failed() const { return has_error_.load(std::memory_order_relaxed); }

  void Fail(Status s) {
    std::lock_guard<std::mutex> lock(error_mu_);
    if (first_error_.ok()) first_error_ = std::move(s);
    has_error_.store(true);
  }

  // Serial input stage: the next chunk, its input pages prefetched. Two cursors walk the plan:
  // one over the tensors to quantize or prune, one over the tensors copied as they are. Within
  // a shard, copy pieces are handed out in proportion to the other chunks; a shard's copies
  // are done when its other tensors are, and before any chunk of the next shard, so shards
  // still finish in order. In plan order, a shard that starts with its embedding or lm_head
  // (the bench's do, as do many Llama-style checkpoints) gave the disk a fifth of the shard's
  // input to write at once while the cores waited for the queue, then little to write while
  // they quantized. Spread out, copies are written while the cores compute, as the I/O floor
  // (bench/iofloor.cc) assumes. Warm, 2 GB, 12-16 rounds of both builds and the floor, each
  // round in random order, median: NVFP4A16 0.516 -> 0.462 s, W4A16_ASYM 0.518 -> 0.497 s;
  // FP8_DYNAMIC, W4A16 alike within the noise.
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
    const size_t upto = std::min(main_.tensor + 1, plan_.tensors.size());
    for (; tensors_prepared_ < upto; ++tensors_prepared_) {
      if (!before_tensor_) continue;
      if (Status st = before_tensor_(tensors_prepared_); !st.ok()) {
        Fail(st);
        fc.stop();
        return nullptr;
      }
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
    auto* c = new Chunk;
    c->map = map.value();
    c->tensor = cur.tensor;
    c->begin = cur.pos;
    if (!take_copy) {
      const uint64_t cols = t.shape[1];
      const uint64_t row_bytes = cols * (DTypeBits(t.dtype) / 8);
      const uint64_t align = t.scheme != nullptr ? t.scheme->row_align : 1;
      uint64_t rows = std::max<uint64_t>(1, sizing_.chunk_bytes / std::max<uint64_t>(row_bytes, 1));
      rows = std::max(align, rows / align * align);
      if (t.action == TensorAction::kQuantize) rows = FitHugePages(t, rows, align);
      c->end = std::min(t.shape[0], cur.pos + rows);
      c->src_offset = t.src_offset + c->begin * row_bytes;
      c->src_len = (c->end - c->begin) * row_bytes;
    } else {
      // A quarter chunk: no more than a quantized chunk's output (int4 from BF16 is a quarter
      // of its input), so that copies land in pages the pool's buffers already have rather
      // than touching new ones (BufferPool::Get).
      // The first piece ends on a file block boundary, so that with the lead-in AlignLike
      // gives it the buffer holds exactly a quarter chunk; later pieces start aligned.
      const uint64_t copy_bytes = std::max<uint64_t>(sizing_.chunk_bytes / 4, 1);
      const uint64_t dst = plan_.shards[t.shard].outputs[t.outputs[0]].file_offset + cur.pos;
      const uint64_t lead = dst % DirectIoAlignment();
      c->end = std::min(t.src_bytes,
                        cur.pos + (copy_bytes > 2 * lead ? copy_bytes - lead : copy_bytes));
      c->src_offset = t.src_offset + c->begin;
      c->src_len = c->end - c->begin;
    }
    cur.pos = c->end;
    shard_issued_[t.shard].Of(take_copy) += c->src_len;
    // Opened here, where the chunk learns its file; a writer thread writes into it.
    if (Status st = EnsureOpen(t.shard); !st.ok()) {
      delete c;
      Fail(st);
      fc.stop();
      return nullptr;
    }
    c->file = files_[t.shard].get();
    cur.issued += c->src_len;
    ReadAhead(cur);  // this chunk's range included
    return c;
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
    while (c.ahead < upto && c.ahead_tensor < plan_.tensors.size()) {
      const PlannedTensor& t = plan_.tensors[c.ahead_tensor];
      if (Passes(c, c.ahead_tensor) || c.ahead_pos >= t.src_bytes) {
        ++c.ahead_tensor;
        c.ahead_pos = 0;
        continue;
      }
      auto map = maps_.Get(t.shard);
      if (!map.ok()) return;
      const uint64_t n = std::min(t.src_bytes - c.ahead_pos, upto - c.ahead);
      map.value()->Prefetch(t.src_offset + c.ahead_pos, n);
      c.ahead_pos += n;
      c.ahead += n;
    }
  }

  // Bytes of the pooled buffer a chunk of `rows` rows of `t` uses: each kernel output's slabs,
  // placed like its file offset (up to one alignment unit of padding before each).
  uint64_t OutputBytes(const PlannedTensor& t, uint64_t rows) const {
    const PlannedShard& ps = plan_.shards[t.shard];
    uint64_t total = 0;
    for (size_t j = 0; j < t.kernel_outputs; ++j) {
      const PlannedOutput& o = ps.outputs[t.outputs[j]];
      total += (rows + o.rows_per_slab - 1) / o.rows_per_slab * o.bytes_per_slab +
               DirectIoAlignment();
    }
    return total;
  }

  // Fewer rows (a multiple of `align`, at least 3/4 of `rows`) where that lets the chunk's
  // outputs fit one huge page fewer: buffers are mapped as huge pages, and a page a buffer
  // touches first costs a fault and zeroing (BufferPool::Get). A 16 MiB BF16 chunk gives
  // 4.3 MiB of int4 outputs (3 huge pages; 2 with 7% fewer rows) or 8 MiB + scales of FP8
  // (5 pages; 4 with 0.5% fewer rows). Rows are rows: the output bytes are the same.
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

  uint64_t Extent(const PlannedTensor& t) const {
    if (!IsCopy(t)) return t.src_bytes == 0 ? 0 : t.shape[0];
    return t.src_bytes;
  }

  // Pruning: the chunk's rows, pruned, into a staging buffer (one pass from the mapping); the
  // kernel (or, pruning alone, the writer) then reads the staging buffer. Warm, 2 GB, 2:4:
  // copying the rows and then pruning them in place spent 14% of all samples in memmove.
  const uint8_t* Prune(Chunk* c, const PlannedTensor& t) {
    // Placed for a direct write of the copy when pruning is all there is to do.
    const PlannedOutput& o = plan_.shards[t.shard].outputs[t.outputs[0]];
    c->staging_at = AlignLike(0, o.file_offset + c->begin * t.shape[1] * (DTypeBits(t.dtype) / 8));
    c->staging = pool_.Get(std::max<uint64_t>(c->staging_at + c->src_len, 1));
    uint8_t* rows_copy = c->staging.data.get() + c->staging_at;
    const uint8_t* src = c->map->data() + c->src_offset;
    const size_t rows = c->end - c->begin, cols = t.shape[1];
    bool finite;
    if (plan_.prune.per_tensor) {
      prune::TensorThreshold th;
      th.magnitude = t.prune_magnitude;
      th.prune_equal = t.prune_equal;
      th.pruned = t.prune_total;
      finite = prune::PruneRowsTensor(src, rows_copy, t.dtype, rows, cols, th,
                                      t.prune_equal_before[c->begin], &c->zeroed);
    } else {
      finite = prune::PruneRows(src, rows_copy, t.dtype, rows, cols, prune_spec_,
                                &c->zeroed);
    }
    if (!finite) c->finite = false;
    return rows_copy;
  }

  // Parallel stage: quantize rows straight from the mapping (or from the pruned staging copy)
  // into a pooled buffer; copied tensors are copied into one. A writer thread writes the
  // buffer, so no chunk needs its input pages once it leaves this stage.
  Chunk* Transform(Chunk* c) {
    if (failed()) return c;
    const PlannedTensor& t = plan_.tensors[c->tensor];
    const PlannedOutput& o0 = plan_.shards[t.shard].outputs[t.outputs[0]];
    if (IsCopy(t)) {
      // Placed like its file offset, so that a direct write takes it without another copy.
      const uint64_t dst = o0.file_offset + c->begin;
      const uint64_t at = AlignLike(0, dst);
      c->buf = pool_.Get(std::max<uint64_t>(at + c->src_len, 1));
      if (Status st = c->map->ReadInto(c->src_offset, c->src_len, c->buf.data.get() + at);
          !st.ok()) {
        Fail(Error(st.code(), st.message() + " (tensor '" + t.name + "')"));
        return c;
      }
      c->AddWrite(dst, c->buf.data.get() + at, c->src_len);
      return c;
    }
    const uint8_t* rows = t.prune ? Prune(c, t) : c->map->data() + c->src_offset;
    if (t.action == TensorAction::kPrune) {
      const uint64_t row_bytes = t.shape[1] * (DTypeBits(t.dtype) / 8);
      c->AddWrite(o0.file_offset + c->begin * row_bytes, rows, c->src_len);
      return c;
    }
    Quantize(c, t, rows);
    // The kernel's output is in c->buf: the pruned rows are not needed any more, and their
    // buffer goes back to the pool now rather than when the chunk is written (so the writers'
    // queue does not hold input-sized buffers, each a chunk of pages the pool must touch).
    if (c->staging.data) {
      pool_.Put(std::move(c->staging));
      c->staging = Buffer();  // the queue's bound counts what the chunk still holds
    }
    return c;
  }

  // Runs the kernel into a pooled buffer, each output placed like its file offset, and adds
  // the outputs' writes to the chunk.
  void Quantize(Chunk* c, const PlannedTensor& t, const uint8_t* rows) {
    const PlannedShard& ps = plan_.shards[t.shard];
    uint64_t total = 0;
    const size_t n_kernel = t.kernel_outputs;  // the rest are constants
    uint64_t file_off[ChunkOutputs::kMax], len[ChunkOutputs::kMax], at[ChunkOutputs::kMax];
    for (size_t j = 0; j < n_kernel; ++j) {
      const PlannedOutput& o = ps.outputs[t.outputs[j]];
      const uint64_t first = c->begin / o.rows_per_slab;
      const uint64_t last = (c->end + o.rows_per_slab - 1) / o.rows_per_slab;
      const uint64_t off = first * o.bytes_per_slab;
      const uint64_t end = std::min(o.nbytes, last * o.bytes_per_slab);
      file_off[j] = o.file_offset + off;
      len[j] = end - off;
      at[j] = total = AlignLike(total, file_off[j]);
      total += len[j];
    }
    c->buf = pool_.Get(std::max<uint64_t>(total, 1));
    ChunkOutputs outs;
    for (size_t j = 0; j < n_kernel; ++j) {
      outs.out[j] = c->buf.data.get() + at[j];
      c->AddWrite(file_off[j], outs.out[j], len[j]);
    }
    WeightChunk in;
    in.data = rows;
    in.dtype = t.dtype;
    in.rows = c->end - c->begin;
    in.cols = t.shape[1];
    in.params.bits = t.params.bits;
    in.params.group_size = t.params.group_size.value_or(0);
    in.params.symmetric = t.params.symmetric;
    in.params.global_scale = t.global_scale;
    if (!t.scheme->kernel(in, outs)) {
      c->finite = false;
    } else if (errors_ != nullptr) {
      // One row in kErrorRowStride of large tensors (a deterministic sample, so the report
      // costs little); every row of small ones, where a sample would be too noisy.
      const uint64_t stride = t.shape[0] >= kErrorSampleMinRows ? kErrorRowStride : 1;
      AccumulateChunkError(*t.scheme, in, outs, c->begin, stride, &c->error);
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
  Status WriteConstants(size_t s) {
    const PlannedShard& ps = plan_.shards[s];
    for (const PlannedOutput& o : ps.outputs) {
      if (o.source == SchemeOutput::Source::kKernel) continue;
      if (o.constant.size() != o.nbytes) {
        return Error(ErrorCode::kInternal, ps.rel_name + ": tensor '" + o.name +
                                               "' has no value from the plan or pre-pass");
      }
      QUENCH_RETURN_IF_ERROR(files_[s]->WriteAt(o.file_offset, o.constant.data(), o.nbytes));
    }
    return Status::Ok();
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
      // was made from; a shard without a matching marker is redone by --resume.
      const std::filesystem::path marker = ResumeMarkerPath(plan_.dst, plan_.shards[k].rel_name);
      std::string fingerprint = ShardFingerprint(plan_, k);
      commits_.push_back(std::async(std::launch::async, [f, all_ok, marker, fingerprint] {
        if (!all_ok.get()) return Status::Ok();
        QUENCH_RETURN_IF_ERROR(f->Commit());
        return WriteResumeMarker(marker, fingerprint);
      }));
    }
  }

  // On a writer thread: the chunk's bytes at their planned offsets, then its buffers back to
  // the pool.
  void WriteChunk(std::unique_ptr<Chunk> c) {
    for (size_t j = 0; j < c->n_writes && c->finite && !failed(); ++j) {
      if (Status st = c->file->WriteAt(c->write_off[j], c->write_src[j], c->write_len[j]);
          !st.ok()) {
        Fail(st);
      }
    }
    if (c->buf.data) pool_.Put(std::move(c->buf));
    if (c->staging.data) pool_.Put(std::move(c->staging));
  }

  // Serial output stage, in plan order: report a non-finite chunk, publish finished shards,
  // release the chunk's input pages (its output is in its buffer), hand it to the writer.
  void Write(Chunk* c) {
    std::unique_ptr<Chunk> owned(c);
    const PlannedTensor& t = plan_.tensors[c->tensor];
    if (!failed()) {
      FinishShardsBefore(t.shard);
      if (!c->finite) {
        Fail(Error(ErrorCode::kNonFinite,
                   plan_.shards[t.shard].rel_name + ": tensor '" + t.name +
                       "' contains NaN or Inf in rows " + std::to_string(c->begin) + ".." +
                       std::to_string(c->end - 1) +
                       "; refusing to quantize it (fix the checkpoint or add it to --ignore)"));
      }
    }
    c->map->Release(c->src_offset, c->src_len);
    if (zeroed_ != nullptr) (*zeroed_)[c->tensor] += c->zeroed;
    if (errors_ != nullptr) {
      ErrorSums& e = (*errors_)[c->tensor];
      e.signal += c->error.signal;
      e.noise += c->error.noise;
      e.count += c->error.count;
    }
    done_ += c->src_len;
    if (cb_.progress) {
      const auto now = std::chrono::steady_clock::now();
      if (now - last_progress_ > std::chrono::milliseconds(200) || done_ == total_) {
        last_progress_ = now;
        cb_.progress(Progress{done_, total_, t.name});
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
  s.chunk_bytes = std::clamp<uint64_t>(usable / buffers, 256 * 1024, 16 * kMiB);
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

Result<const MappedFile*> SourceMaps::Get(size_t shard) {
  std::lock_guard<std::mutex> lock(mu_);
  if (maps_[shard].data() == nullptr) {
    QUENCH_ASSIGN_OR_RETURN(maps_[shard],
                            MappedFile::Open(plan_.shards[shard].src_path, /*keep_fd=*/true));
  }
  return &maps_[shard];
}

void SourceMaps::Close(size_t shard) {
  std::lock_guard<std::mutex> lock(mu_);
  maps_[shard] = MappedFile();
}

Status RunShardPipeline(const Plan& plan, const PipelineSizing& sizing, SourceMaps& maps,
                        const ConvertCallbacks& callbacks, const std::atomic<bool>* cancel,
                        std::vector<uint64_t>* zeroed, std::vector<ErrorSums>* errors,
                        const std::function<Status(size_t tensor)>& before_tensor) {
  ShardPipeline p(plan, sizing, maps, callbacks, cancel, zeroed, errors, before_tensor);
  return p.Run();
}

}  // namespace quench
