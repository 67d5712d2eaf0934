#include "pipeline/prepass.h"

#include <tbb/parallel_for.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "format/file_io.h"
#include "format/tbb_limit.h"
#include "pipeline/source_decode.h"
#include "pipeline/source_decode_packed.h"
#include "schemes/chunk.h"
#include "schemes/float_formats.h"
#include "schemes/fp4.h"
#include "schemes/prune.h"

namespace quench {

namespace {

// Per-tensor pruning threshold: histogram pass(es) over the tensor's rows (F32 needs a
// refinement pass), then a count of threshold-equal elements per row, so that each pipeline
// chunk knows how many equal elements precede it (prune.h's deterministic tie rule).
Status PrunePrePass(Plan& plan, const PipelineSizing& sizing, SourceMaps& maps,
                    const std::atomic<bool>* cancel) {
  for (PlannedTensor& t : plan.tensors) {
    // Shards done before (--resume) or another worker's are not written by this run.
    if (!t.prune || !plan.prune.per_tensor || t.src_bytes == 0) continue;
    if (plan.shards[t.shard].already_done) continue;
    QUENCH_ASSIGN_OR_RETURN(const MappedFile* map, maps.Get(t.shard));
    const MappedFile& m = *map;
    const uint64_t rows = t.shape[0], cols = t.shape[1];
    const uint64_t row_bytes = cols * DTypeBits(t.dtype) / 8;
    const uint64_t chunk_rows = std::max<uint64_t>(1, sizing.chunk_bytes / row_bytes);
    auto rows_at = [&](uint64_t r) { return m.data() + t.src_offset + r * row_bytes; };
    auto interrupted = [&] { return cancel != nullptr && cancel->load(); };
    const std::string where = plan.shards[t.shard].rel_name + ": tensor '" + t.name + "'";
    prune::TensorThreshold th;
    switch (prune::FindTensorThreshold(
        rows_at(0), t.dtype, rows, cols, prune::PruneCount(plan.prune.fraction, rows * cols),
        chunk_rows,
        [&](uint64_t r, uint64_t n) {
          m.Release(t.src_offset + r * row_bytes, n * row_bytes);
          return !interrupted();
        },
        &th)) {
      case prune::ThresholdWalk::kComplete: break;
      case prune::ThresholdWalk::kNonFinite:
        return Error(ErrorCode::kNonFinite, where + " contains NaN or Inf; refusing to prune it");
      case prune::ThresholdWalk::kStopped:
        return Error(ErrorCode::kInterrupted, "interrupted during the pre-pass");
    }
    PlannedPruneThreshold& pth = t.prune_threshold.emplace();
    pth.magnitude = th.magnitude;
    pth.equal = th.prune_equal;
    pth.total = th.pruned;
    pth.equal_before.assign(rows + 1, 0);
    for (uint64_t r = 0; r < rows; r += chunk_rows) {
      const uint64_t n = std::min(chunk_rows, rows - r);
      for (uint64_t i = 0; i < n; ++i) {
        pth.equal_before[r + i + 1] =
            pth.equal_before[r + i] +
            prune::CountEqual(rows_at(r + i), t.dtype, 1, cols, th.magnitude);
      }
      m.Release(t.src_offset + r * row_bytes, n * row_bytes);
    }
  }
  return Status::Ok();
}

}  // namespace

Status RunPrunePrePass(Plan& plan, const PipelineSizing& sizing, SourceMaps& maps,
                       const std::atomic<bool>* cancel) {
  if (!plan.prune.per_tensor) return Status::Ok();
  return PrunePrePass(plan, sizing, maps, cancel);
}

GlobalScales::GlobalScales(Plan& plan, const PipelineSizing& sizing, SourceMaps& maps,
                           const std::atomic<bool>* cancel)
    : plan_(plan), sizing_(sizing), maps_(maps), cancel_(cancel),
      done_(plan.fused_sets.size(), false) {}

Status GlobalScales::ForTensor(size_t ti) {
  const PlannedTensor& t = plan_.tensors[ti];
  if (t.fused_set < 0 || done_[static_cast<size_t>(t.fused_set)]) return Status::Ok();
  const size_t k = static_cast<size_t>(t.fused_set);
  // Sets whose members have all entered the pipeline hold no more kept pages than the chunks
  // in flight (the pipeline releases each chunk's pages once it is written).
  std::erase_if(kept_, [&](const Kept& e) { return e.last_tensor < ti; });
  uint64_t kept = 0;
  for (const Kept& e : kept_) kept += e.bytes;
  // This shard's members stay mapped for the pipeline if they fit what the budget leaves;
  // members in later shards are released (the pipeline reaches them much later).
  uint64_t here = 0;
  size_t last = ti;
  for (size_t m : plan_.fused_sets[k]) {
    if (plan_.tensors[m].shard != t.shard) continue;
    here += plan_.tensors[m].src_bytes;
    last = std::max(last, m);
  }
  const bool keep = kept + here <= sizing_.prepass_keep_bytes;
  QUENCH_RETURN_IF_ERROR(ComputeSet(k, keep ? static_cast<int64_t>(t.shard) : -1));
  if (keep) kept_.push_back(Kept{last, here});
  return Status::Ok();
}

Status GlobalScales::All() {
  LimitTbbThreads(static_cast<size_t>(sizing_.threads));
  for (size_t k = 0; k < plan_.fused_sets.size(); ++k) {
    // Only sets with a member this run writes (another worker's shards are already_done).
    bool needed = false;
    for (size_t m : plan_.fused_sets[k])
      needed |= !plan_.shards[plan_.tensors[m].shard].already_done;
    if (!done_[k] && needed) QUENCH_RETURN_IF_ERROR(ComputeSet(k, -1));
  }
  return Status::Ok();
}

Status GlobalScales::NonFinite(const PlannedTensor& t) const {
  return Error(ErrorCode::kNonFinite,
               plan_.shards[t.shard].rel_name + ": tensor '" + t.name +
                   "' contains NaN or Inf; refusing to quantize it (fix the checkpoint or "
                   "add it to --ignore)");
}

// Largest |x| over the set's members (each read once in row chunks in parallel), then the
// set's weight_global_scale. Pages are released after use except those of members in
// `keep_shard`, which the pipeline reads next. Pruning never changes the largest |x|: every
// mode keeps the largest magnitudes (fraction < 1, N >= 1).
Status GlobalScales::ComputeSet(size_t k, int64_t keep_shard) {
  const std::vector<size_t>& set = plan_.fused_sets[k];
  // Ask for every member's pages first, so that a cold read of the set is one deep queue of
  // requests rather than member after member.
  for (size_t ti : set) {
    const PlannedTensor& t = plan_.tensors[ti];
    if (t.src_bytes == 0 || IsFp8BlockSource(t)) continue;  // FP8: a few blocks read, below
    QUENCH_ASSIGN_OR_RETURN(const MappedFile* map, maps_.Get(t.shard));
    map->Prefetch(t.src_offset, t.src_bytes);
  }
  float a = 0.f;
  for (size_t ti : set) {
    const PlannedTensor& t = plan_.tensors[ti];
    if (t.src_bytes == 0) continue;
    if (member_amax_) {
      QUENCH_ASSIGN_OR_RETURN(std::optional<float> searched, member_amax_(ti));
      if (searched) {
        a = std::max(a, *searched);
        continue;
      }
    }
    QUENCH_ASSIGN_OR_RETURN(const MappedFile* map, maps_.Get(t.shard));
    const bool release = static_cast<int64_t>(t.shard) != keep_shard;
    QUENCH_ASSIGN_OR_RETURN(const float amax, IsFp8BlockSource(t)
                                                  ? Fp8BlockAbsMax(t, *map, release)
                                                  : RowsAbsMax(t, *map, release));
    a = std::max(a, amax);
  }
  SetScale(set, a);
  done_[k] = true;
  return Status::Ok();
}

// Only the blocks that can hold the largest |x| (fp8_source_amax.cc's proof). The rows read
// are released once they add up to a chunk (a search may read many blocks, or a per-tensor
// scale's whole weight); the last ones stay mapped when the pipeline reads this member next.
Result<float> GlobalScales::Fp8BlockAbsMax(const PlannedTensor& t, const MappedFile& m,
                                           bool release) {
  const uint64_t row_bytes = SourceRowBytes(t);
  std::vector<std::pair<uint64_t, uint64_t>> pending;
  uint64_t pending_bytes = 0;
  auto flush = [&] {
    for (const auto& [r0, r1] : pending) {
      m.Release(t.src_offset + r0 * row_bytes, (r1 - r0) * row_bytes);
    }
    pending.clear();
    pending_bytes = 0;
  };
  auto rows_read = [&](uint64_t r0, uint64_t r1) {
    if (r1 <= r0) return;
    pending.emplace_back(r0, r1);
    pending_bytes += (r1 - r0) * row_bytes;
    if (pending_bytes >= sizing_.chunk_bytes) flush();
  };
  float amax = 0.f;
  bool ok = true;
  QUENCH_RETURN_IF_ERROR(
      SearchSourceAbsMax(plan_, t, maps_, m.data() + t.src_offset, &amax, &ok, rows_read));
  if (release) flush();
  if (!ok) return NonFinite(t);
  return amax;
}

Result<float> GlobalScales::RowsAbsMax(const PlannedTensor& t, const MappedFile& m,
                                       bool release) {
  const uint64_t rows = t.shape[0], cols = t.shape[1];
  const uint64_t row_bytes = SourceRowBytes(t);
  // A source-quantized member's largest |x| is its decoded rows' (the global scale is the
  // decoded model's, as the reference computes it): compressed-tensors, AutoAWQ and
  // ModelOpt sources decode their rows here (FP8 sources took the search above).
  const bool decode = t.source_scale.has_value();
  const bool across = ReadsAcrossWeight(t);
  // A chunk is at most a folio of source (kFaultBytes), so that each reader maps about one
  // folio at a time whatever the budget (MappedOverhangBytes counts one per reader; chunks
  // of the pipeline's size, up to 16 MiB each, were counted nowhere).
  const uint64_t chunk_rows = std::max<uint64_t>(
      1, std::min(sizing_.chunk_bytes, kFaultBytes) / std::max(row_bytes, ComputeRowBytes(t)));
  const uint64_t n_chunks = (rows + chunk_rows - 1) / chunk_rows;
  std::vector<float> part(n_chunks, 0.f);
  std::atomic<bool> finite{true};
  std::mutex error_mu;
  Status error;
  tbb::parallel_for(uint64_t{0}, n_chunks, [&](uint64_t c) {
    if (cancel_ != nullptr && cancel_->load()) return;
    const uint64_t r0 = c * chunk_rows, r1 = std::min(rows, r0 + chunk_rows);
    const uint8_t* src = m.data() + t.src_offset + r0 * row_bytes;
    WeightChunk in;
    in.data = src;
    in.dtype = t.compute_dtype;
    in.rows = r1 - r0;
    in.cols = cols;
    if (decode) {
      bool ok = true;
      Status st = SourceRowsAbsMax(plan_, t, maps_, src, r0, r1, &part[c], &ok);
      if (!st.ok()) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (error.ok()) error = std::move(st);
        return;
      }
      if (!ok) finite = false;
    } else if (!fp4::AbsMax(in, &part[c])) {
      finite = false;
    }
    if (release && !across) m.Release(t.src_offset + r0 * row_bytes, (r1 - r0) * row_bytes);
  });
  // An AutoAWQ member's (or a linearized piece's) chunks each read across the whole weight
  // (expert block): released whole.
  if (release && across) {
    const auto [offset, bytes] = AcrossRange(t);
    m.Release(offset, bytes);
  }
  if (cancel_ != nullptr && cancel_->load()) {
    return Error(ErrorCode::kInterrupted, "interrupted while computing NVFP4 global scales");
  }
  QUENCH_RETURN_IF_ERROR(error);
  if (!finite) return NonFinite(t);
  return *std::max_element(part.begin(), part.end());
}

// NVFP4's weight_global_scale (F32), or the scheme's own per-tensor value (FP8's
// weight_scale, a value of the weight dtype, stored in it).
void GlobalScales::SetScale(const std::vector<size_t>& set, float amax) {
  const PlannedTensor& first = plan_.tensors[set.front()];
  const float gs = first.scheme->tensor_scale != nullptr
                       ? first.scheme->tensor_scale(amax, first.compute_dtype)
                       : fp4::Nvfp4GlobalScale(amax, first.compute_dtype);
  for (size_t ti : set) {
    PlannedTensor& t = plan_.tensors[ti];
    t.global_scale = gs;
    for (size_t oi : t.outputs) {
      PlannedOutput& o = plan_.shards[t.shard].outputs[oi];
      if (o.source != SchemeOutput::Source::kGlobalScale) continue;
      // Little-endian (x86 and Arm hosts).
      if (o.dtype == DType::kBF16 || o.dtype == DType::kF16) {
        const uint16_t bits = o.dtype == DType::kBF16 ? F32ToBF16(gs) : F32ToF16(gs);
        o.constant.assign(2, '\0');
        std::memcpy(o.constant.data(), &bits, 2);
      } else {
        o.constant.assign(4, '\0');
        std::memcpy(o.constant.data(), &gs, 4);
      }
    }
  }
}

}  // namespace quench
