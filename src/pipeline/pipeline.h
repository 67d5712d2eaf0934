// Executes a Plan's shards with a oneTBB parallel_pipeline: read (serial: pick the next chunk,
// ask for the input ahead) -> quantize (parallel: Highway kernels straight from the mapped
// input into a buffer aligned for direct writes) -> hand off (serial, in order: release the
// input pages, publish each finished shard) to writer threads that write the buffers at their
// planned offsets while the next chunks are computed. The chunks in flight and queued for
// writing, times the chunk size, are the memory bound.
#ifndef QUENCH_PIPELINE_PIPELINE_H_
#define QUENCH_PIPELINE_PIPELINE_H_

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "calib/seam.h"
#include "format/file_io.h"
#include "quench/convert.h"
#include "quench/plan.h"
#include "schemes/dequant.h"

namespace quench {

class BufferPrefault;

struct PipelineSizing {
  uint64_t chunk_bytes = 0;  // target input bytes per chunk
  int tokens = 0;            // chunks in flight
  int threads = 0;
  // What the budget leaves once the chunks in flight and the writers' queue are counted:
  // input pages the pre-pass may leave mapped for the pipeline (GlobalScales), so that they
  // are not faulted twice.
  uint64_t prepass_keep_bytes = 0;
  // Buffer bytes the writer threads may hold (the chunks' pooled buffers), queued or being
  // written.
  uint64_t write_queue_bytes = 0;
  // How output shards are written (ConvertOptions::direct_io).
  WriteMode write_mode = WriteMode::kDirect;
  // Whether resume markers are fsynced (WriteResumeMarker): a worker's are; a single run's,
  // removed when it publishes the folder, are not.
  bool durable_markers = true;
};

// The source shards' mappings, opened on first use and shared by the pre-passes and the
// pipeline: pages the NVFP4 pre-pass leaves mapped are then read by the pipeline without a
// second round of page faults. Get and Close may be called from different threads; a shard is
// closed only after every chunk of it has been written (the pipeline's order guarantees it).
class SourceMaps {
 public:
  explicit SourceMaps(const Plan& plan) : plan_(plan), maps_(plan.shards.size()) {}
  Result<const MappedFile*> Get(size_t shard);
  void Close(size_t shard);
  // Copies [offset, offset + len) of the shard with pread, under the lock, so that a reader
  // in another shard's chunk (a weight's scale stored elsewhere) never races that shard's
  // Close; a closed shard is opened again. For small reads (scales).
  Status Read(size_t shard, uint64_t offset, uint64_t len, uint8_t* dst);

 private:
  const Plan& plan_;
  std::mutex mu_;
  std::vector<MappedFile> maps_;
};

// Chooses chunk size and tokens so that tokens * (input + output buffer), the writers' queue
// (2 to 16 chunk buffers), the pre-pass's kept pages and a fixed reserve stay under
// `memory_limit`; 2 tokens per thread, as oneTBB's pipeline guide suggests.
// `buffers_per_chunk`: input pages plus output buffer (2), plus a pruning staging copy (3).
// `prepass_wanted_bytes`: what the NVFP4 pre-pass would keep mapped (the largest fused set);
// the budget left after the chunks in flight goes to it before a deeper writers' queue.
PipelineSizing SizePipeline(uint64_t memory_limit, int threads, int buffers_per_chunk = 2,
                            uint64_t prepass_wanted_bytes = 0);

// The smallest --memory-limit a plan can be converted under. A chunk holds at least one
// scheme row block of its tensor (FP8_BLOCK: 128 rows) however small the budget, so a wide
// tensor sets a floor: tokens x (input pages + output buffer [+ pruning staging]) of its
// largest chunk, the writers' smallest queue, the process's own resident memory with a staging
// buffer per output file open at once, the worker threads' scratch (ThreadScratchBytes) and
// the source pages mapped beyond the chunks (MappedOverhangBytes) and the plan's own memory
// (PlanResidentBytes). Every budget at or above it is honoured (tests/test_memory.cc).
struct MemoryFloor {
  uint64_t bytes = 0;
  size_t tensor = 0;        // the tensor whose chunk sets it
  uint64_t chunk_rows = 0;  // that chunk's rows
  uint64_t chunk_bytes = 0; // its input plus output bytes
  int tokens = 0;
  uint64_t plan_bytes = 0;  // of `bytes`, the plan's own (PlanResidentBytes)
};
MemoryFloor MinimumMemoryLimit(const Plan& plan, int threads, int buffers_per_chunk);

// What a run holds beside its chunks whatever the budget: the worker threads' scratch, the
// source pages mapped beyond the chunks and the plan itself (the three below).
// MinimumMemoryLimit counts it, and the caller of SizePipeline takes it (with calibration's
// state) from the budget before the chunks are sized.
uint64_t BesideChunksBytes(const Plan& plan, int threads);

// What the worker threads keep besides the chunks, all of them together: a decoded tile each
// where a source is decoded (ThreadDecodeTile: QuantizeDecoded and the NVFP4 pre-pass, the
// largest DecodeTileRows of the plan's decoded tensors), and the fused FP8-block kernels'
// tables for the widest such source (fp8::FusedWorkspaceBytes). Part of BesideChunksBytes.
uint64_t ThreadScratchBytes(const Plan& plan, int threads);

// Source pages a run maps beyond the chunks' input that MinimumMemoryLimit counts. One read
// fault maps a whole page-cache folio (kFaultBytes, format/file_io.h), so the chunks in
// flight, one contiguous stretch of the source (copies, scales and other side tensors are
// read with pread and map nothing), hold up to a folio beyond each end: two. The NVFP4
// pre-pass, run on the input stage while chunks are in flight, maps its own chunk per reader
// and releases it rounded out to folios: one folio per reader (at a small budget its chunks
// are a fraction of a folio; bench/README.md, memfloor2). An AutoAWQ weight, whose rows are
// read across all of it, stays mapped whole until its last chunk is written: two of the
// largest (ReadsAcrossWeight). Part of BesideChunksBytes.
uint64_t MappedOverhangBytes(const Plan& plan, int threads);

// The plan's resident memory beyond the few tensors the process's own figure includes:
// planning peaks at about it before the floor is checked and the run keeps it, so that a
// checkpoint of 10^4-10^5 tensors needs ~10^2 MiB before any chunk. Part of BesideChunksBytes.
uint64_t PlanResidentBytes(const Plan& plan);

// Writes every shard of `plan` under plan.dst (which must exist): each file under a temporary
// name, fsynced and renamed when its last chunk is written. `cancel` is polled between chunks.
// --report's error sample: one row in this many is decoded back and compared.
inline constexpr uint64_t kErrorRowStride = 8;
inline constexpr uint64_t kErrorSampleMinRows = 1024;  // smaller tensors: every row

// `zeroed` (optional) receives, per tensor, the positions pruning zeroed; `errors` (optional,
// costs a sampled decode) the quantization error per tensor. `before_tensor` (optional) runs
// in the input stage just before a tensor's first chunk is read (the NVFP4 pre-pass).
// `calib` (optional: null on the data-free path) quantizes the tensors it takes (GPTQ); its
// Prepare runs after `before_tensor`. `while_committing` (optional) runs on the calling
// thread once every chunk is written, while the last shards' commits (fsync, rename, resume
// marker) wait on the disk; not after a failure. `beside_first_chunk` (optional) runs once on
// a writer thread as soon as the input stage has handed out the first chunk (a writer has
// nothing to write until a chunk is converted; the other writer takes the chunks meanwhile),
// and is finished before RunShardPipeline returns; not at all where no chunk is handed out.
// `before_markers` (optional) runs on each shard's commit thread before the shard's resume
// marker is made (ShardFingerprint reads the plan's source header hashes): the caller's way
// to fill what only the markers read, late; it must be safe to call from several threads.
// `prefault` (optional): output buffers made ahead while the run was planned (StartPrefault),
// taken by the pool at its first chunk.
Status RunShardPipeline(const Plan& plan, const PipelineSizing& sizing, SourceMaps& maps,
                        const ConvertCallbacks& callbacks, const std::atomic<bool>* cancel,
                        std::vector<uint64_t>* zeroed = nullptr,
                        std::vector<ErrorSums>* errors = nullptr,
                        const std::function<Status(size_t tensor)>& before_tensor = nullptr,
                        ChunkCalibration* calib = nullptr,
                        const std::function<void()>& while_committing = nullptr,
                        const std::function<void()>& beside_first_chunk = nullptr,
                        const std::function<void()>& before_markers = nullptr,
                        BufferPrefault* prefault = nullptr);

// The pool's buffers for chunks of `chunk_bytes` input: their outputs are at most the input's
// size (narrower types), plus the padding that places each output like its file offset.
uint64_t PoolBufferBytes(uint64_t chunk_bytes);

// Output buffers for the pipeline made while `options` is planned (BufferPrefault), or null
// where none are worth making: a few chunks' buffers (a chunk in flight per token and the
// writers' smallest queue, as SizePipeline counts them within the budget, fewer where the
// source has fewer chunks of input), each touched as far as a chunk of the preset's bits
// writes from BF16 input. Only for a preset scheme, chunks sized from the budget, and a budget
// of which they take at most a sixteenth; planning's chunk size is guessed from the budget as
// SizePipeline sizes it with no pruning or calibration (where planning sizes otherwise, the
// pool unmaps them unused).
std::unique_ptr<BufferPrefault> StartPrefault(const ConvertOptions& options);

}  // namespace quench

#endif  // QUENCH_PIPELINE_PIPELINE_H_
