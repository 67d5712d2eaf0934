#include "pipeline/pipeline.h"

#include <tbb/parallel_pipeline.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "calib/wanda.h"
#include "format/file_io.h"
#include "format/map_guard.h"
#include "format/parallel.h"
#include "format/tbb_limit.h"
#include "pipeline/buffers.h"
#include "pipeline/chunks.h"
#include "pipeline/resume.h"
#include "pipeline/shard_pipeline.h"
#include "pipeline/source_decode.h"
#include "pipeline/source_decode_packed.h"
#include "plan/planner.h"
#include "schemes/chunk.h"
#include "schemes/dequant.h"
#include "schemes/float_formats.h"
#include "schemes/fp8_source_quant.h"
#include "schemes/prune.h"

namespace quench {
namespace {

// Resident memory not used by chunks: code, TBB, the plan, headers, stacks, and per
// direct-written output file (two while one shard is being committed) its 4 MiB staging
// buffer and up to 4 MiB of small writes held to be joined (format/file_io.cc).
constexpr uint64_t kReserve = 32 * kMiB;
// What the process holds before any chunk, besides the outputs' staging buffers: measured
// 8 MiB (ru_maxrss of a conversion of data/tiny-llama under --memory-limit 1M).
constexpr uint64_t kProcessBytes = 8 * kMiB;
// Output files written at once: the shard being written and the one being committed.
constexpr uint64_t kOpenOutputs = 2;
// The process and the direct-written outputs' staging buffers: SizePipeline's smallest
// reserve, and MinimumMemoryLimit's base for plans of more than one shard (StagingOutputs).
constexpr uint64_t kBaseline = kProcessBytes + kOpenOutputs * kDirectStagingBytes;

// Output files a plan may have open at once, each with its staging buffer: one for a plan of
// one shard (there is no next file while it is committed), else kOpenOutputs.
uint64_t StagingOutputs(const Plan& plan) {
  return std::min<uint64_t>(kOpenOutputs, plan.shards.size());
}
// SizePipeline's smallest chunk.
constexpr uint64_t kMinChunkBytes = 256 * 1024;
// Chunk buffers the writers may hold (queued or being written): at least enough
// that the workers need not wait for a write to finish before starting the next chunk, and
// up to kMaxWriteQueueChunks where the budget allows, so that the disk keeps writing through
// the workers' uneven stretches (a fused set's NVFP4 pre-pass, copied tensors). Each queued
// chunk holds a pooled buffer, so the pool grows to the queue's depth, and each buffer's
// pages are zeroed on first touch, which on some hosts costs more than the depth saves. The
// depth was chosen by measurement: bench/README.md, "The writers' queue 16 deep, merged"
// (and the sections it names).
constexpr uint64_t kMinWriteQueueChunks = 2;
constexpr uint64_t kMaxWriteQueueChunks = 16;

}  // namespace

Status ShardPipeline::Run() {
  LimitTbbThreads(static_cast<size_t>(sizing_.threads));
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
  // Every chunk's buffers are back in the pool: unmapped while the last shard's commit (its
  // fsync) runs, not after it (where their munmap would add to the main thread's end).
  pool_.Clear();
  if (failed()) {
    for (auto& f : commits_) f.wait();
    OutputFile::ReleaseSpareStaging();
    return first_error_;
  }
  if (while_committing_) while_committing_();
  for (auto& f : commits_) {
    Status s = f.get();
    if (!s.ok() && first_error_.ok()) first_error_ = s;
  }
  // The shards' staging buffers passed from one output file to the next (format/file_io.cc);
  // with every file committed, the spares are freed.
  OutputFile::ReleaseSpareStaging();
  return first_error_;
}

void ShardPipeline::RunStages() {
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
            if (!Contained(file, [&] {
                  c = Next(fc);
                  if (c != nullptr && beside_first_chunk_) {
                    writer_->After(std::exchange(beside_first_chunk_, nullptr));
                  }
                })) {
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

PipelineSizing SizePipeline(uint64_t memory_limit, int threads, int buffers_per_chunk,
                            uint64_t prepass_wanted_bytes) {
  PipelineSizing s;
  s.threads = static_cast<int>(ThreadCount(threads));
  s.tokens = 2 * s.threads;
  // Per token: the chunk's resident input pages plus its output buffer (at most the input
  // size for every scheme, since outputs are narrower than BF16 inputs; F32 copies aside).
  // The reserve is half the budget between kBaseline and kReserve: a budget just above
  // MinimumMemoryLimit (which counts kBaseline or less) gets chunks no larger than the floor
  // assumed.
  const uint64_t reserve = std::clamp(memory_limit / 2, kBaseline, kReserve);
  const uint64_t usable = memory_limit > reserve ? memory_limit - reserve : 0;
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
  const int th = static_cast<int>(ThreadCount(threads));
  f.tokens = 2 * th;  // as SizePipeline
  // The smallest chunk SizePipeline makes (its clamp), for inputs and outputs alike.
  uint64_t in_unit = kMinChunkBytes, out_unit = kMinChunkBytes;
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
  const uint64_t per_token =
      in_unit * static_cast<uint64_t>(std::max(1, buffers_per_chunk - 1)) + out_unit;
  f.bytes = kProcessBytes + StagingOutputs(plan) * kDirectStagingBytes +
            static_cast<uint64_t>(f.tokens) * per_token + kMinWriteQueueChunks * out_unit;
  // The worker threads' decoded tiles and fused tables; the file pages mapped beyond them;
  // the plan itself (named apart in the refusal).
  f.bytes += BesideChunksBytes(plan, th);
  f.plan_bytes = PlanResidentBytes(plan);
  return f;
}

uint64_t BesideChunksBytes(const Plan& plan, int threads) {
  return ThreadScratchBytes(plan, threads) + MappedOverhangBytes(plan, threads) +
         PlanResidentBytes(plan);
}

uint64_t PlanResidentBytes(const Plan& plan) {
  // kProcessBytes was measured with a plan of a few tensors; a checkpoint's own grows with its
  // tensors and their outputs (entries, names, layouts) and with the texts built from them (the
  // output headers, the index). Counted above what dry runs of 24k and 70k tensors hold, for
  // FP8_DYNAMIC (two outputs a weight) and NVFP4A16 (four) alike (bench/README.md, "The
  // plan's own memory in the --memory-limit floor").
  constexpr uint64_t kBytesPerTensor = 1024;
  constexpr uint64_t kBytesPerOutput = 384;
  uint64_t bytes = plan.tensors.size() * kBytesPerTensor;
  for (const PlannedShard& ps : plan.shards) {
    bytes += ps.outputs.size() * kBytesPerOutput + ps.header.size();
  }
  for (const PlannedFile& f : plan.files) bytes += f.contents.size();
  return bytes;
}

uint64_t MappedOverhangBytes(const Plan& plan, int threads) {
  // The pre-pass's readers: a thread each where a member's rows are read in parallel chunks
  // (BF16 and decoded sources); one where only FP8 sources' blocks are searched.
  uint64_t readers = 0;
  for (const std::vector<size_t>& set : plan.fused_sets) {
    for (size_t m : set) {
      const PlannedTensor& t = plan.tensors[m];
      if (t.src_bytes == 0) continue;
      readers = std::max<uint64_t>(readers, IsFp8BlockSource(t) ? 1 : ThreadCount(threads));
    }
  }
  // An AutoAWQ weight is mapped whole from its first chunk (or pre-pass scan) until its last
  // chunk is written (ReadsAcrossWeight): the one whose last chunks are in flight and the one
  // the input stage has reached (its chunks, or the pre-pass scanning one member at a time).
  // Weights wholly between them are within the chunks in flight, counted per token.
  uint64_t across = 0, expert = 0, block = 0;
  for (const PlannedTensor& t : plan.tensors) {
    if (t.action == TensorAction::kCopy) continue;
    const bool linear = t.source_scale && t.source_scale->packed_kind == PackedKind::kLinear;
    // (A linearized piece's block is counted below, apart.)
    if (ReadsAcrossWeight(t) && !linear) across = std::max(across, t.src_bytes);
    if (linear) {
      block = std::max(block, StackExpertBytes(t));
    } else {
      expert = std::max(expert, StackExpertBytes(t));
    }
  }
  // A chunk of a gpt-oss MXFP4 stack reads its rows' columns from every stored row of its
  // expert (or two experts), beyond its own byte range, released with the chunks' ranges: at
  // most two experts' bytes per chunk in flight.
  // A chunk of a linearized stack's piece reads across its one expert block, which stays
  // mapped until the piece's last chunk is written (AcrossRange): the blocks of the pieces
  // with a chunk in flight, of the piece the input stage is in (its chunks so far written, the
  // next not yet read) and of the NVFP4 pre-pass's member being scanned.
  const uint64_t tokens = 2 * ThreadCount(threads);  // as SizePipeline
  return (2 + readers) * kFaultBytes + 2 * across + 2 * tokens * expert + (tokens + 2) * block;
}

uint64_t ThreadScratchBytes(const Plan& plan, int threads) {
  const int th = static_cast<int>(ThreadCount(threads));
  uint64_t tile = 0, workspace = 0;
  for (const PlannedTensor& t : plan.tensors) {
    if (t.action == TensorAction::kCopy || t.shape.size() != 2 || t.src_bytes == 0 ||
        !t.source_scale) {
      continue;
    }
    // The largest decode tile (ThreadDecodeTile) a thread is asked for: QuantizeDecoded's
    // and the NVFP4 pre-pass's, both DecodeTileRows rows (or the tensor's, if fewer).
    tile = std::max(tile, t.scheme != nullptr
                              ? std::min(DecodeTileRows(plan, t), t.shape[0]) * ComputeRowBytes(t)
                              : kDecodeTileBytes);
    if (FusedSourceTensor(t)) {
      workspace = std::max(workspace, fp8::FusedWorkspaceBytes(t.source_scale->scale_cols));
    }
  }
  return static_cast<uint64_t>(th) * (tile + workspace);
}

uint64_t PoolBufferBytes(uint64_t chunk_bytes) {
  return chunk_bytes + (ChunkOutputs::kMax + 1) * DirectIoAlignment();
}

std::unique_ptr<BufferPrefault> StartPrefault(const ConvertOptions& options) {
  if (options.chunk_bytes != 0 || !options.recipe.empty()) return nullptr;
  const SchemeInfo* scheme = FindScheme(options.scheme);
  if (scheme == nullptr || options.memory_limit == 0) return nullptr;
  const PipelineSizing s = SizePipeline(options.memory_limit, options.threads);
  // The source's weights: a listing of the folder (no file is opened).
  std::error_code ec;
  uint64_t src_bytes = 0;
  for (std::filesystem::directory_iterator it(options.src, ec), end; !ec && it != end;
       it.increment(ec)) {
    std::error_code size_ec;
    const uint64_t size = it->is_regular_file(size_ec) && it->path().extension() == ".safetensors"
                              ? it->file_size(size_ec)
                              : 0;
    if (!size_ec) src_bytes += size;
  }
  const uint64_t count = std::min<uint64_t>(static_cast<uint64_t>(s.tokens) + kMinWriteQueueChunks,
                                            src_bytes / s.chunk_bytes);
  // A chunk of BF16 input written at the preset's bits, in whole huge pages (the pool's
  // buffers are huge pages: a chunk touches them whole).
  const uint64_t out = s.chunk_bytes / 16 * static_cast<uint64_t>(scheme->weights.num_bits);
  const uint64_t touch = (out + kHugePage - 1) / kHugePage * kHugePage;
  if (count < 2 || count * touch > options.memory_limit / 16) return nullptr;
  return std::make_unique<BufferPrefault>(static_cast<int>(count),
                                          BufferPool::CapacityFor(PoolBufferBytes(s.chunk_bytes)),
                                          touch);
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
                        ChunkCalibration* calib,
                        const std::function<void()>& while_committing,
                        const std::function<void()>& beside_first_chunk,
                        const std::function<void()>& before_markers,
                        BufferPrefault* prefault) {
  ShardPipeline p(plan, sizing, maps, callbacks, cancel, zeroed, errors, before_tensor, calib);
  p.SetPrefault(prefault);
  p.SetWhileCommitting(while_committing);
  p.SetBesideFirstChunk(beside_first_chunk);
  p.SetBeforeMarkers(before_markers);
  return p.Run();
}

}  // namespace quench
