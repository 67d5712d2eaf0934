// The ShardPipeline's serial input stage (shard_pipeline.h): two cursors walk the plan, one
// over the tensors to quantize or prune and one over those copied as they are, and hand out
// chunks in plan order, a shard's copies spread through its other chunks. A chunk takes a
// tensor's rows (fewer where that saves a huge page of output), or small tensors of one kind
// batched whole, or a sliced router's gathered ranges; the NVFP4 pre-pass runs just before a
// tensor's first chunk, and the input beyond the chunks handed out is asked for ahead
// (MADV_WILLNEED) so that a cold read keeps the disk busy.
#include "pipeline/shard_pipeline.h"

namespace quench {

Chunk* ShardPipeline::Stop(tbb::flow_control& fc, Status st) {
  if (!st.ok()) Fail(std::move(st));
  fc.stop();
  return nullptr;
}

bool ShardPipeline::TakeCopy(size_t main_shard, size_t copy_shard) const {
  if (copy_shard != main_shard) return copy_shard < main_shard;
  const StreamBytes& total = shard_bytes_[copy_shard];
  const StreamBytes& issued = shard_issued_[copy_shard];
  return static_cast<unsigned __int128>(issued.copy) * total.other <=
         static_cast<unsigned __int128>(issued.other) * total.copy;
}

Piece ShardPipeline::FirstRowsPiece(const PlannedTensor& t, const Cursor& cur, uint64_t* in_left,
                                    uint64_t* out_left) const {
  Piece first;
  first.tensor = cur.tensor;
  first.begin = cur.pos;
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
  *in_left = Minus(sizing_.chunk_bytes, (first.end - first.begin) * work_row + DirectIoAlignment());
  *out_left = Minus(sizing_.chunk_bytes, OutputBytes(t, first.end - first.begin));
  return first;
}

Piece ShardPipeline::FirstCopyPiece(const PlannedTensor& t, const Cursor& cur,
                                    uint64_t* in_left) const {
  Piece first;
  first.tensor = cur.tensor;
  first.begin = cur.pos;
  // A quarter chunk: no more than a quantized chunk's output (int4 from BF16 is a quarter
  // of its input), so that copies land in pages the pool's buffers already have rather
  // than touching new ones (BufferPool::Get).
  // The first piece ends on a file block boundary, so that with the lead-in AlignLike
  // gives it the buffer holds exactly a quarter chunk; later pieces start aligned.
  const uint64_t copy_bytes = std::max<uint64_t>(sizing_.chunk_bytes / 4, 1);
  const uint64_t dst = plan_.shards[t.shard].outputs[t.outputs[0]].file_offset + cur.pos;
  const uint64_t lead = dst % DirectIoAlignment();
  first.end =
      std::min(t.src_bytes, cur.pos + (copy_bytes > 2 * lead ? copy_bytes - lead : copy_bytes));
  const auto [at, run] = SourceAt(t, first.begin);  // a gathered tensor: one run at a time
  first.end = std::min(first.end, first.begin + run);
  // A tensor the calibration rewrites is cut between whole elements.
  if (calib_ != nullptr && calib_->RewritesCopy(cur.tensor) && first.end < t.src_bytes) {
    const uint64_t esz = std::max<uint64_t>(1, DTypeBits(t.dtype) / 8);
    first.end = std::max(first.begin + esz, first.end / esz * esz);
  }
  first.src_offset = at;
  first.src_len = first.end - first.begin;
  *in_left = Minus(copy_bytes, lead + first.src_len);
  return first;
}

Chunk* ShardPipeline::Next(tbb::flow_control& fc) {
  if (failed()) return Stop(fc);
  if (cancel_ != nullptr && cancel_->load(std::memory_order_relaxed)) {
    return Stop(
        fc, Error(ErrorCode::kInterrupted, "interrupted; no output shard in progress was kept"));
  }
  SkipDone(main_);
  SkipDone(copy_);
  // Prepare every tensor up to the next main chunk's (all of them at the end, empty ones
  // included); copies need no preparation.
  if (Status st = PrepareBefore(std::min(main_.tensor + 1, plan_.tensors.size())); !st.ok()) {
    return Stop(fc, std::move(st));
  }
  const size_t main_shard = ShardAt(main_), copy_shard = ShardAt(copy_);
  if (main_shard == kNoShard && copy_shard == kNoShard) return Stop(fc);
  const bool take_copy = TakeCopy(main_shard, copy_shard);
  Cursor& cur = take_copy ? copy_ : main_;
  // Empty tensors have no extent, so a chunk always reads some bytes of its shard.
  const PlannedTensor& t = plan_.tensors[cur.tensor];
  auto map = maps_.Get(t.shard);
  if (!map.ok()) return Stop(fc, map.status());
  auto c = std::make_unique<Chunk>();
  c->map = map.value();
  // What the chunk may still take: input bytes, and (quantizing) bytes of its buffer.
  uint64_t in_left = 0, out_left = 0;
  const Piece first =
      take_copy ? FirstCopyPiece(t, cur, &in_left) : FirstRowsPiece(t, cur, &in_left, &out_left);
  cur.pos = first.end;
  c->src_len = first.src_len;
  c->pieces.push_back(first);
  if (take_copy) in_left = AddGatheredRuns(*c, cur, t, in_left);
  const bool whole = first.begin == 0 && cur.pos == Extent(t);
  // Whole small tensors after a whole one join its chunk while they fit.
  if (whole) {
    if (Status st = AddSmallTensors(*c, cur, t, in_left, out_left); !st.ok()) {
      return Stop(fc, std::move(st));
    }
  }
  shard_issued_[t.shard].Of(take_copy) += c->src_len;
  // Opened here, where the chunk learns its file; a writer thread writes into it.
  if (Status st = EnsureOpen(t.shard); !st.ok()) return Stop(fc, std::move(st));
  c->file = files_[t.shard].get();
  cur.issued += c->src_len;
  ReadAhead(cur);  // this chunk's range included
  return c.release();
}

Status ShardPipeline::PrepareBefore(size_t upto) {
  for (; tensors_prepared_ < upto; ++tensors_prepared_) {
    if (before_tensor_) QUENCH_RETURN_IF_ERROR(before_tensor_(tensors_prepared_));
    if (calib_ != nullptr && calib_->Takes(tensors_prepared_) &&
        !plan_.shards[plan_.tensors[tensors_prepared_].shard].already_done) {
      QUENCH_RETURN_IF_ERROR(calib_->Prepare(tensors_prepared_));
    }
  }
  return Status::Ok();
}

Status ShardPipeline::AddSmallTensors(Chunk& c, Cursor& cur, const PlannedTensor& first,
                                      uint64_t in_left, uint64_t out_left) {
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

uint64_t ShardPipeline::AddGatheredRuns(Chunk& c, Cursor& cur, const PlannedTensor& t,
                                        uint64_t in_left) {
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

void ShardPipeline::ReadAhead(Cursor& c) {
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

uint64_t ShardPipeline::FitHugePages(const PlannedTensor& t, uint64_t rows, uint64_t align) const {
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

}  // namespace quench
