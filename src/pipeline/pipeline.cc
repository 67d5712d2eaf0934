#include "pipeline/pipeline.h"

#include <tbb/global_control.h>
#include <tbb/parallel_pipeline.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <vector>

#include "format/file_io.h"
#include "format/safetensors.h"
#include "plan/planner.h"
#include "schemes/chunk.h"
#include "schemes/dequant.h"
#include "schemes/prune.h"

namespace quench {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
// Resident memory not used by chunks: code, TBB, the plan, headers, stacks.
constexpr uint64_t kReserve = 32 * kMiB;
// How far the input stage asks for input ahead of the chunk it hands out (page cache, not
// resident set). On the 2-core test VM, converting a cold 2 GB checkpoint to W4A16 took 2.70 s
// (mean of 6) when each chunk was only asked for as it was handed out, 2.24 s with 64 MiB
// ahead; 16, 64 and 256 MiB ahead measured alike (2.01 / 1.94 / 1.95 s). The I/O floor
// (bench/iofloor.cc) reads ahead by the same amount.
constexpr uint64_t kReadAheadBytes = 64 * kMiB;

// A reusable output buffer; chunks in flight are bounded, so are buffers.
struct Buffer {
  std::unique_ptr<uint8_t[]> data;
  uint64_t capacity = 0;
};

class BufferPool {
 public:
  Buffer Get(uint64_t size) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 0; i < free_.size(); ++i) {
        if (free_[i].capacity >= size) {
          Buffer b = std::move(free_[i]);
          free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
          return b;
        }
      }
      // Too small for this chunk: drop one so the pool never holds more than it gave out.
      if (!free_.empty()) free_.pop_back();
    }
    Buffer b;
    b.data.reset(new uint8_t[size]);
    b.capacity = size;
    return b;
  }
  void Put(Buffer b) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(std::move(b));
  }

 private:
  std::mutex mu_;
  std::vector<Buffer> free_;
};

struct Chunk {
  size_t tensor = 0;
  // Quantize: rows [begin, end). Copy: bytes [begin, end) of the tensor.
  uint64_t begin = 0, end = 0;
  uint64_t src_offset = 0, src_len = 0;   // absolute input range this chunk reads
  const MappedFile* map = nullptr;        // the source shard
  Buffer buf;
  Buffer staging;      // pruned copy of the input rows (pruning only)
  uint64_t zeroed = 0; // pruned positions in this chunk
  ErrorSums error;     // --report: sampled quantization error of this chunk
  uint64_t out_file_off[ChunkOutputs::kMax] = {};
  uint64_t out_len[ChunkOutputs::kMax] = {};
  bool finite = true;
};

class ShardPipeline {
 public:
  ShardPipeline(const Plan& plan, const PipelineSizing& sizing, SourceMaps& maps,
                const ConvertCallbacks& cb, const std::atomic<bool>* cancel,
                std::vector<uint64_t>* zeroed, std::vector<ErrorSums>* errors,
                const std::function<Status(size_t tensor)>& before_tensor)
      : plan_(plan), sizing_(sizing), cb_(cb), cancel_(cancel), maps_(maps),
        files_(plan.shards.size()), zeroed_(zeroed), errors_(errors),
        before_tensor_(before_tensor), prune_spec_(ToPruneSpec(plan.prune)) {
    if (zeroed_ != nullptr) zeroed_->assign(plan.tensors.size(), 0);
    if (errors_ != nullptr) errors_->assign(plan.tensors.size(), ErrorSums{});
    for (const PlannedTensor& t : plan.tensors) total_ += t.src_bytes;
  }

  Status Run() {
    tbb::global_control gc(tbb::global_control::max_allowed_parallelism,
                           static_cast<size_t>(sizing_.threads));
    tbb::parallel_pipeline(
        static_cast<size_t>(sizing_.tokens),
        tbb::make_filter<void, Chunk*>(tbb::filter_mode::serial_in_order,
                                       [this](tbb::flow_control& fc) { return Next(fc); }) &
            tbb::make_filter<Chunk*, Chunk*>(tbb::filter_mode::parallel,
                                             [this](Chunk* c) { return Transform(c); }) &
            tbb::make_filter<Chunk*, void>(tbb::filter_mode::serial_in_order,
                                           [this](Chunk* c) { Write(c); }));
    if (failed()) {
      for (auto& f : commits_) f.wait();
      return first_error_;
    }
    FinishShardsBefore(plan_.shards.size());
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

  // Serial input stage: the next chunk in plan order, its input pages prefetched.
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
    while (tensor_ < plan_.tensors.size() &&
           (pos_ >= Extent(plan_.tensors[tensor_]) ||
            plan_.shards[plan_.tensors[tensor_].shard].already_done)) {
      ++tensor_;
      pos_ = 0;
    }
    // Prepare every tensor up to this chunk's (all of them at the end, empty ones included).
    const size_t upto = std::min(tensor_ + 1, plan_.tensors.size());
    for (; tensors_prepared_ < upto; ++tensors_prepared_) {
      if (!before_tensor_) continue;
      if (Status st = before_tensor_(tensors_prepared_); !st.ok()) {
        Fail(st);
        fc.stop();
        return nullptr;
      }
    }
    if (tensor_ >= plan_.tensors.size()) {
      fc.stop();
      return nullptr;
    }
    // Empty tensors have no extent, so a chunk always reads some bytes of its shard.
    const PlannedTensor& t = plan_.tensors[tensor_];
    auto map = maps_.Get(t.shard);
    if (!map.ok()) {
      Fail(map.status());
      fc.stop();
      return nullptr;
    }
    auto* c = new Chunk;
    c->map = map.value();
    c->tensor = tensor_;
    c->begin = pos_;
    if (t.action != TensorAction::kCopy) {
      const uint64_t cols = t.shape[1];
      const uint64_t row_bytes = cols * (DTypeBits(t.dtype) / 8);
      const uint64_t align = t.scheme != nullptr ? t.scheme->row_align : 1;
      uint64_t rows = std::max<uint64_t>(1, sizing_.chunk_bytes / std::max<uint64_t>(row_bytes, 1));
      rows = std::max(align, rows / align * align);
      c->end = std::min(t.shape[0], pos_ + rows);
      c->src_offset = t.src_offset + c->begin * row_bytes;
      c->src_len = (c->end - c->begin) * row_bytes;
    } else {
      c->end = std::min(t.src_bytes, pos_ + sizing_.chunk_bytes);
      c->src_offset = t.src_offset + c->begin;
      c->src_len = c->end - c->begin;
    }
    pos_ = c->end;
    issued_ += c->src_len;
    ReadAhead(issued_ + kReadAheadBytes);  // this chunk's range included
    return c;
  }

  // Asks the kernel (MADV_WILLNEED) for the input up to `upto` bytes of plan order (the bytes
  // of the chunks the input stage hands out, in the same order and with the same skips), so
  // that a cold read keeps the disk busy beyond the few chunks in flight. The pages go to the
  // page cache, not to this process's resident set. A shard that cannot be opened is left
  // alone here; the input stage reports it when it gets there.
  void ReadAhead(uint64_t upto) {
    while (ahead_ < upto && ahead_tensor_ < plan_.tensors.size()) {
      const PlannedTensor& t = plan_.tensors[ahead_tensor_];
      if (ahead_pos_ >= t.src_bytes || plan_.shards[t.shard].already_done) {
        ++ahead_tensor_;
        ahead_pos_ = 0;
        continue;
      }
      auto map = maps_.Get(t.shard);
      if (!map.ok()) return;
      const uint64_t n = std::min(t.src_bytes - ahead_pos_, upto - ahead_);
      map.value()->Prefetch(t.src_offset + ahead_pos_, n);
      ahead_pos_ += n;
      ahead_ += n;
    }
  }

  uint64_t Extent(const PlannedTensor& t) const {
    if (t.action != TensorAction::kCopy) return t.src_bytes == 0 ? 0 : t.shape[0];
    return t.src_bytes;
  }

  // Pruning: copies the chunk's rows into a staging buffer and zeroes the pruned positions;
  // the kernel (or, pruning alone, the writer) then reads the staging buffer.
  const uint8_t* Prune(Chunk* c, const PlannedTensor& t) {
    c->staging = pool_.Get(std::max<uint64_t>(c->src_len, 1));
    std::memcpy(c->staging.data.get(), c->map->data() + c->src_offset, c->src_len);
    const size_t rows = c->end - c->begin, cols = t.shape[1];
    bool finite;
    if (plan_.prune.per_tensor) {
      prune::TensorThreshold th;
      th.magnitude = t.prune_magnitude;
      th.prune_equal = t.prune_equal;
      th.pruned = t.prune_total;
      finite = prune::PruneRowsTensor(c->staging.data.get(), t.dtype, rows, cols, th,
                                      t.prune_equal_before[c->begin], &c->zeroed);
    } else {
      finite = prune::PruneRows(c->staging.data.get(), t.dtype, rows, cols, prune_spec_,
                                &c->zeroed);
    }
    if (!finite) c->finite = false;
    return c->staging.data.get();
  }

  // Parallel stage: quantize rows straight from the mapping (or from the pruned staging copy)
  // into a pooled buffer.
  Chunk* Transform(Chunk* c) {
    const PlannedTensor& t = plan_.tensors[c->tensor];
    if (t.action == TensorAction::kCopy || failed()) return c;
    const uint8_t* rows = t.prune ? Prune(c, t) : c->map->data() + c->src_offset;
    if (t.action == TensorAction::kPrune) return c;
    const PlannedShard& ps = plan_.shards[t.shard];
    uint64_t total = 0;
    const size_t n_kernel = t.kernel_outputs;  // the rest are constants
    for (size_t j = 0; j < n_kernel; ++j) {
      const PlannedOutput& o = ps.outputs[t.outputs[j]];
      const uint64_t first = c->begin / o.rows_per_slab;
      const uint64_t last = (c->end + o.rows_per_slab - 1) / o.rows_per_slab;
      const uint64_t off = first * o.bytes_per_slab;
      const uint64_t end = std::min(o.nbytes, last * o.bytes_per_slab);
      c->out_file_off[j] = o.file_offset + off;
      c->out_len[j] = end - off;
      total += end - off;
    }
    c->buf = pool_.Get(std::max<uint64_t>(total, 1));
    ChunkOutputs outs;
    uint64_t at = 0;
    for (size_t j = 0; j < n_kernel; ++j) {
      outs.out[j] = c->buf.data.get() + at;
      at += c->out_len[j];
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
    return c;
  }

  // Creates the shard's temporary file and writes its header.
  Status EnsureOpen(size_t s) {
    if (files_[s]) return Status::Ok();
    const PlannedShard& ps = plan_.shards[s];
    QUENCH_ASSIGN_OR_RETURN(files_[s], OutputFile::Create(plan_.dst / ps.rel_name, ps.file_size));
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
      // After the shard is durable under its final name, its resume marker records what it
      // was made from; a shard without a matching marker is redone by --resume.
      const std::filesystem::path marker = ResumeMarkerPath(plan_.dst, plan_.shards[k].rel_name);
      std::string fingerprint = ShardFingerprint(plan_, k);
      commits_.push_back(std::async(std::launch::async, [f, marker, fingerprint] {
        QUENCH_RETURN_IF_ERROR(f->Commit());
        std::error_code ec;
        std::filesystem::create_directories(marker.parent_path(), ec);
        return WriteFileAtomic(marker, fingerprint);
      }));
    }
  }

  // Serial output stage, in plan order.
  void Write(Chunk* c) {
    std::unique_ptr<Chunk> owned(c);
    const PlannedTensor& t = plan_.tensors[c->tensor];
    if (!failed()) {
      FinishShardsBefore(t.shard);
      Status st = EnsureOpen(t.shard);
      if (st.ok() && !c->finite) {
        st = Error(ErrorCode::kNonFinite,
                   plan_.shards[t.shard].rel_name + ": tensor '" + t.name +
                       "' contains NaN or Inf in rows " + std::to_string(c->begin) + ".." +
                       std::to_string(c->end - 1) +
                       "; refusing to quantize it (fix the checkpoint or add it to --ignore)");
      }
      if (st.ok()) {
        OutputFile& f = *files_[t.shard];
        if (t.action == TensorAction::kQuantize) {
          uint64_t at = 0;
          for (size_t j = 0; j < t.kernel_outputs && st.ok(); ++j) {
            st = f.WriteAt(c->out_file_off[j], c->buf.data.get() + at, c->out_len[j]);
            at += c->out_len[j];
          }
        } else if (t.action == TensorAction::kPrune) {
          const PlannedOutput& o = plan_.shards[t.shard].outputs[t.outputs[0]];
          const uint64_t row_bytes = t.shape[1] * (DTypeBits(t.dtype) / 8);
          st = f.WriteAt(o.file_offset + c->begin * row_bytes, c->staging.data.get(), c->src_len);
        } else {
          const PlannedOutput& o = plan_.shards[t.shard].outputs[t.outputs[0]];
          st = f.WriteAt(o.file_offset + c->begin, c->map->data() + c->src_offset,
                         c->src_len);
        }
      }
      if (!st.ok()) Fail(st);
    }
    c->map->Release(c->src_offset, c->src_len);
    if (c->buf.data) pool_.Put(std::move(c->buf));
    if (c->staging.data) pool_.Put(std::move(c->staging));
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
  size_t tensor_ = 0;
  uint64_t pos_ = 0;
  uint64_t issued_ = 0;  // input bytes of the chunks handed out so far
  // ReadAhead's cursor: plan tensor, bytes into it, and bytes of plan order asked for.
  size_t ahead_tensor_ = 0;
  uint64_t ahead_pos_ = 0, ahead_ = 0;
  uint64_t done_ = 0, total_ = 0;
  std::chrono::steady_clock::time_point last_progress_{};
  std::atomic<bool> has_error_{false};
  std::mutex error_mu_;
  Status first_error_;
};

}  // namespace

std::filesystem::path ResumeMarkerPath(const std::filesystem::path& dst, const std::string& rel) {
  return dst / kResumeDir / (rel + ".json");
}

// What a complete output shard depends on: the source shard (size and header bytes), the
// output layout (header bytes), each tensor's action and scheme parameters, the NVFP4 global
// scales (which depend on other shards) and quench's version.
std::string ShardFingerprint(const Plan& plan, size_t s) {
  const PlannedShard& ps = plan.shards[s];
  uint64_t h = Fnv1a64(QUENCH_VERSION);
  h = Fnv1a64(ps.header, h);
  for (const PlannedTensor& t : plan.tensors) {
    if (t.shard != s) continue;
    std::string d = t.name + (t.action == TensorAction::kQuantize ? "|q|"
                              : t.action == TensorAction::kPrune  ? "|p|"
                                                                  : "|c|");
    if (t.prune) d += "prune " + plan.prune.text + "|" + std::to_string(plan.prune.per_tensor) + "|";
    if (t.scheme != nullptr) {
      d += std::string(t.scheme->name) + "|" + std::to_string(t.params.bits) + "|" +
           std::to_string(t.params.group_size.value_or(0)) + "|" +
           std::to_string(t.params.symmetric) + "|";
      uint32_t gs;
      std::memcpy(&gs, &t.global_scale, 4);
      d += std::to_string(gs);
    }
    h = Fnv1a64(d, h);
  }
  char hex[17];
  auto hexed = [&](uint64_t v) {
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(v));
    return std::string(hex);
  };
  return "{\"source\": \"" + ps.rel_name + "\", \"source_bytes\": " + std::to_string(ps.src_size) +
         ", \"source_header_fnv1a64\": \"" + hexed(ps.src_header_hash) + "\", \"output_bytes\": " +
         std::to_string(ps.file_size) + ", \"plan_fnv1a64\": \"" + hexed(h) + "\"}\n";
}

PipelineSizing SizePipeline(uint64_t memory_limit, int threads, int buffers_per_chunk) {
  PipelineSizing s;
  s.threads = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  s.tokens = 2 * s.threads;
  // Per token: the chunk's resident input pages plus its output buffer (at most the input
  // size for every scheme, since outputs are narrower than BF16 inputs; F32 copies aside).
  const uint64_t usable = memory_limit > 2 * kReserve ? memory_limit - kReserve : memory_limit / 2;
  // Capped at 16 MiB even with a large budget: small enough that the pipeline fills and
  // drains quickly on small shards, large enough to amortise per-chunk costs.
  s.chunk_bytes = std::clamp<uint64_t>(
      usable / (static_cast<uint64_t>(buffers_per_chunk) * static_cast<uint64_t>(s.tokens)),
      256 * 1024, 16 * kMiB);
  const uint64_t in_flight =
      static_cast<uint64_t>(buffers_per_chunk) * static_cast<uint64_t>(s.tokens) * s.chunk_bytes;
  s.prepass_keep_bytes = usable > in_flight ? usable - in_flight : 0;
  return s;
}

Result<const MappedFile*> SourceMaps::Get(size_t shard) {
  std::lock_guard<std::mutex> lock(mu_);
  if (maps_[shard].data() == nullptr) {
    QUENCH_ASSIGN_OR_RETURN(maps_[shard], MappedFile::Open(plan_.shards[shard].src_path));
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
