#include "pipeline/prepass.h"

#include <tbb/global_control.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "format/file_io.h"
#include "schemes/chunk.h"
#include "schemes/fp4.h"
#include "schemes/prune.h"

namespace quench {

namespace {

// Per-tensor pruning threshold: histogram pass(es) over the tensor's rows (F32 needs a
// refinement pass), then a count of threshold-equal elements per row, so that each pipeline
// chunk knows how many equal elements precede it (prune.h's deterministic tie rule).
Status PrunePrePass(Plan& plan, const PipelineSizing& sizing, std::vector<MappedFile>& maps,
                    const std::atomic<bool>* cancel) {
  for (PlannedTensor& t : plan.tensors) {
    if (!t.prune || !plan.prune.per_tensor || t.src_bytes == 0) continue;
    if (maps[t.shard].data() == nullptr) {
      QUENCH_ASSIGN_OR_RETURN(maps[t.shard], MappedFile::Open(plan.shards[t.shard].src_path));
    }
    const MappedFile& m = maps[t.shard];
    const uint64_t rows = t.shape[0], cols = t.shape[1];
    const uint64_t row_bytes = cols * (DTypeBits(t.dtype) / 8);
    const uint64_t chunk_rows = std::max<uint64_t>(1, sizing.chunk_bytes / row_bytes);
    auto rows_at = [&](uint64_t r) { return m.data() + t.src_offset + r * row_bytes; };
    auto interrupted = [&] { return cancel != nullptr && cancel->load(); };
    const std::string where = plan.shards[t.shard].rel_name + ": tensor '" + t.name + "'";
    prune::MagnitudeHistogram h(t.dtype);
    prune::TensorThreshold th;
    const uint64_t k = prune::PruneCount(plan.prune.fraction, rows * cols);
    for (;;) {
      for (uint64_t r = 0; r < rows; r += chunk_rows) {
        if (interrupted()) return Error(ErrorCode::kInterrupted, "interrupted during the pre-pass");
        const uint64_t n = std::min(chunk_rows, rows - r);
        if (!prune::AccumulateHistogram(&h, rows_at(r), n, cols)) {
          return Error(ErrorCode::kNonFinite, where + " contains NaN or Inf; refusing to prune it");
        }
        m.Release(t.src_offset + r * row_bytes, n * row_bytes);
      }
      th = prune::FindThreshold(&h, k);
      if (th.complete) break;
    }
    t.prune_magnitude = th.magnitude;
    t.prune_equal = th.prune_equal;
    t.prune_total = th.pruned;
    t.prune_equal_before.assign(rows + 1, 0);
    for (uint64_t r = 0; r < rows; r += chunk_rows) {
      const uint64_t n = std::min(chunk_rows, rows - r);
      for (uint64_t i = 0; i < n; ++i) {
        t.prune_equal_before[r + i + 1] =
            t.prune_equal_before[r + i] + prune::CountEqual(rows_at(r + i), t.dtype, 1, cols, th.magnitude);
      }
      m.Release(t.src_offset + r * row_bytes, n * row_bytes);
    }
  }
  return Status::Ok();
}

}  // namespace

Status RunPrunePrePass(Plan& plan, const PipelineSizing& sizing,
                       const std::atomic<bool>* cancel) {
  if (!plan.prune.per_tensor) return Status::Ok();
  std::vector<MappedFile> maps(plan.shards.size());
  return PrunePrePass(plan, sizing, maps, cancel);
}

GlobalScales::GlobalScales(Plan& plan, const PipelineSizing& sizing,
                           const std::atomic<bool>* cancel)
    : plan_(plan), sizing_(sizing), cancel_(cancel), done_(plan.fused_sets.size(), false) {}

Status GlobalScales::ForShard(size_t shard) {
  for (size_t k = 0; k < plan_.fused_sets.size(); ++k) {
    if (done_[k]) continue;
    const auto& set = plan_.fused_sets[k];
    if (std::any_of(set.begin(), set.end(),
                    [&](size_t ti) { return plan_.tensors[ti].shard == shard; })) {
      QUENCH_RETURN_IF_ERROR(ComputeSet(k));
    }
  }
  return Status::Ok();
}

Status GlobalScales::All() {
  tbb::global_control gc(tbb::global_control::max_allowed_parallelism,
                         static_cast<size_t>(sizing_.threads));
  for (size_t k = 0; k < plan_.fused_sets.size(); ++k) {
    if (!done_[k]) QUENCH_RETURN_IF_ERROR(ComputeSet(k));
  }
  return Status::Ok();
}

// Largest |x| over the set's members (each read once in row chunks in parallel, pages released
// after use), then the set's weight_global_scale. Pruning never changes the largest |x|: every
// mode keeps the largest magnitudes (fraction < 1, N >= 1).
Status GlobalScales::ComputeSet(size_t k) {
  const std::vector<size_t>& set = plan_.fused_sets[k];
  float a = 0.f;
  for (size_t ti : set) {
    const PlannedTensor& t = plan_.tensors[ti];
    if (t.src_bytes == 0) continue;
    QUENCH_ASSIGN_OR_RETURN(MappedFile m, MappedFile::Open(plan_.shards[t.shard].src_path));
    const uint64_t rows = t.shape[0], cols = t.shape[1];
    const uint64_t row_bytes = cols * (DTypeBits(t.dtype) / 8);
    const uint64_t chunk_rows = std::max<uint64_t>(1, sizing_.chunk_bytes / row_bytes);
    const uint64_t n_chunks = (rows + chunk_rows - 1) / chunk_rows;
    std::vector<float> part(n_chunks, 0.f);
    std::atomic<bool> finite{true};
    tbb::parallel_for(uint64_t{0}, n_chunks, [&](uint64_t c) {
      if (cancel_ != nullptr && cancel_->load()) return;
      const uint64_t r0 = c * chunk_rows, r1 = std::min(rows, r0 + chunk_rows);
      WeightChunk in;
      in.data = m.data() + t.src_offset + r0 * row_bytes;
      in.dtype = t.dtype;
      in.rows = r1 - r0;
      in.cols = cols;
      if (!fp4::AbsMax(in, &part[c])) finite = false;
      m.Release(t.src_offset + r0 * row_bytes, (r1 - r0) * row_bytes);
    });
    if (cancel_ != nullptr && cancel_->load()) {
      return Error(ErrorCode::kInterrupted, "interrupted while computing NVFP4 global scales");
    }
    if (!finite) {
      return Error(ErrorCode::kNonFinite,
                   plan_.shards[t.shard].rel_name + ": tensor '" + t.name +
                       "' contains NaN or Inf; refusing to quantize it (fix the checkpoint or "
                       "add it to --ignore)");
    }
    a = std::max(a, *std::max_element(part.begin(), part.end()));
  }
  const float gs = fp4::Nvfp4GlobalScale(a, plan_.tensors[set.front()].dtype);
  for (size_t ti : set) {
    PlannedTensor& t = plan_.tensors[ti];
    t.global_scale = gs;
    for (size_t oi : t.outputs) {
      PlannedOutput& o = plan_.shards[t.shard].outputs[oi];
      if (o.source != SchemeOutput::Source::kGlobalScale) continue;
      o.constant.assign(4, '\0');
      std::memcpy(o.constant.data(), &gs, 4);  // F32 little-endian (x86 and Arm hosts)
    }
  }
  done_[k] = true;
  return Status::Ok();
}

}  // namespace quench
