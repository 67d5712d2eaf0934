// The ShardPipeline's serial output stage and writers (shard_pipeline.h): in plan order, a
// chunk's non-finite pieces are reported (named by tensor, row and column), its input pages
// released, its per-tensor counts (pruned zeros, sampled error, calibration's done) recorded
// and progress reported, and the chunk handed to the writer threads, which write its bytes at
// their planned offsets. A shard whose chunks are all handed off is committed: its constant
// tensors written, then fsync, resume marker and rename on a helper thread.
#include "pipeline/shard_pipeline.h"

#include "format/parallel.h"
#include "pipeline/source_decode_packed.h"

namespace quench {

Status ShardPipeline::EnsureOpen(size_t s) {
  if (files_[s]) return Status::Ok();
  const PlannedShard& ps = plan_.shards[s];
  QUENCH_ASSIGN_OR_RETURN(files_[s], OutputFile::Create(plan_.dst / ps.rel_name, ps.file_size,
                                                        sizing_.write_mode));
  // The header goes to the writers as a chunk of its own (no pooled buffer, so it never
  // waits for room in their queue): a shard of many tensors has megabytes of it (7 MB for
  // 29k experts), and written here it held the serial stage that opens the shard, before
  // the run's first chunk or while the workers ran out of chunks, for its whole direct write.
  // The writers take items in order, so it is written before the shard's commit (queued
  // after the shard's last chunk), and OutputFile takes its bytes in any order with the
  // chunks'.
  try {
    auto c = std::make_unique<Chunk>();
    c->file = files_[s].get();
    c->writes.push_back(
        {0, reinterpret_cast<const uint8_t*>(ps.header.data()), ps.header.size()});
    writer_->Submit(std::move(c), 0);
  } catch (const std::bad_alloc&) {
    return Error(ErrorCode::kIo, "out of memory: cannot queue the header of " + ps.rel_name +
                                     "; free memory or lower --memory-limit");
  }
  return Status::Ok();
}

Status ShardPipeline::WriteConstants(size_t s) {
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

void ShardPipeline::FinishShardsBefore(size_t s) {
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
    // shard's last chunk is here, and the plan outlives Run. What the caller fills in late
    // for the markers (`before_markers`: the source header hashes) is filled in first.
    const std::filesystem::path marker = ResumeMarkerPath(plan_.dst, plan_.shards[k].rel_name);
    // The commit waits on its own thread; one that cannot start (no memory for its stack,
    // e.g. under `ulimit -v`) is an exhausted resource: the shard stays unpublished.
    try {
      const bool durable = sizing_.durable_markers;
      commits_.push_back(std::async(std::launch::async, [&plan = plan_, k, f, all_ok, marker,
                                                         durable, &before = before_markers_] {
        std::string fingerprint;
        try {
          if (before) before();
          fingerprint = ShardFingerprint(plan, k);
        } catch (const std::bad_alloc&) {
          if (!all_ok.get()) return Status::Ok();  // the write's own error comes first
          return Error(ErrorCode::kIo, "out of memory: cannot make the resume marker of " +
                                           plan.shards[k].rel_name +
                                           "; free memory or lower --memory-limit");
        }
        if (!all_ok.get()) return Status::Ok();
        QUENCH_RETURN_IF_ERROR(f->Commit());
        QUENCH_RETURN_IF_ERROR(WriteResumeMarker(marker, fingerprint, durable));
        // Once, while the later shards stream: the heap pages planning freed (the model
        // folder, the index's parse; ~40 MB for 70k tensors) given back to the kernel here,
        // on a thread that waits on the disk anyway, instead of by the kernel after the
        // process's last write, when it exits.
        if (k == 0 && plan.shards.size() > 1) TrimHeap();
        return Status::Ok();
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

void ShardPipeline::WriteChunk(std::unique_ptr<Chunk> c) {
  const bool finite = c->finite();
  for (const WriteRange& w : c->writes) {
    if (!finite || failed()) break;
    if (Status st = c->file->WriteAt(w.off, w.src, w.len); !st.ok()) Fail(st);
  }
  if (c->buf.data) pool_.Put(std::move(c->buf));
  if (c->staging.data) pool_.Put(std::move(c->staging));
}

Status ShardPipeline::PieceFailure(const Chunk& c, const Piece& p) const {
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
  if (t.smoothed) {
    // Finite as stored, but SmoothQuant / AWQ multiplied its input columns by scales from
    // the statistics before the kernel saw them (src/calib/smoothquant_run.h).
    return Error(ErrorCode::kNonFinite,
                 where + " rows " + std::to_string(p.begin) + ".." +
                     std::to_string(p.end - 1) + " overflow " +
                     std::string(DTypeName(t.compute_dtype)) +
                     " once smoothed: the smoothing scales, from --stats' activation ranges, "
                     "are too large; check its site's ranges (quench stats inspect) or leave "
                     "the layer out of the smoothing mappings");
  }
  return Error(ErrorCode::kInternal,
               where + " rows " + std::to_string(p.begin) + ".." + std::to_string(p.end - 1) +
                   ": the " + std::string(t.scheme != nullptr ? t.scheme->name : "pruning") +
                   " kernel refused finite input (" + std::string(DTypeName(t.dtype)) +
                   ", " + std::to_string(cols) + " columns); this is a bug in quench");
}

Status ShardPipeline::DecodedPieceFailure(const PlannedTensor& t, const Piece& p,
                                          const uint8_t* codes, const std::string& where) const {
  const uint64_t rows = p.end - p.begin, cols = t.shape[1];
  // E4M3 codes only: packed integer or FP4 bytes have no NaN.
  const bool e4m3 = t.source_scale->packed_kind == PackedKind::kNone && t.dtype == DType::kF8E4M3;
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

void ShardPipeline::Write(Chunk* c) {
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
  // One release per stretch of input the pieces read back to back. An AutoAWQ weight's
  // chunks each read across the whole weight, so a row range of it is not this chunk's alone:
  // its pages go once its last chunk is here (in order: every chunk of it has been
  // transformed).
  uint64_t from = 0, len = 0;
  for (const Piece& p : c->pieces) {
    if (ReadsAcrossWeight(plan_.tensors[p.tensor])) continue;
    if (p.src_offset != from + len) {
      c->map->Release(from, len);
      from = p.src_offset;
      len = 0;
    }
    len += p.src_len;
  }
  c->map->Release(from, len);
  // (Rows are asked of AutoAWQ and calibrated weights only, which are 2-D: a copied
  // tensor's piece counts bytes, and a 0-D tensor has no shape[0].)
  for (const Piece& p : c->pieces) {
    const PlannedTensor& t = plan_.tensors[p.tensor];
    if (ReadsAcrossWeight(t) && p.end == t.shape[0]) {
      const auto [offset, bytes] = AcrossRange(t);
      c->map->Release(offset, bytes);
    }
  }
  for (const Piece& p : c->pieces) {
    // In order: every chunk of the tensor has been transformed once its last one is here.
    if (calib_ != nullptr && calib_->Takes(p.tensor) &&
        p.end == plan_.tensors[p.tensor].shape[0]) {
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

}  // namespace quench
