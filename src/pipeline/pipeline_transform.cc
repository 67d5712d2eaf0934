// The ShardPipeline's parallel stage (shard_pipeline.h), run by the worker threads on each
// chunk: copied tensors read into a pooled buffer; pruned rows (by magnitude or Wanda's
// scores) into a staging buffer; a source-quantized tensor's rows decoded, whole or tile by
// tile; and the scheme kernels run from the mapping (or the staging copy) into one pooled
// buffer, every output placed like its file offset, smoothing's row transform applied a tile
// at a time. The chunk leaves this stage needing none of its input pages.
#include "pipeline/shard_pipeline.h"

namespace quench {

bool ShardPipeline::PruneRowsOf(const PlannedTensor& t, const uint8_t* src, uint8_t* dst,
                                DType dtype, size_t rows, uint64_t* zeroed) const {
  if (t.prune_scale >= 0) {
    return calib::WandaPruneRows(src, dst, dtype, rows, t.shape[1], prune_spec_,
                                 plan_.prune_scales[static_cast<size_t>(t.prune_scale)].data(),
                                 zeroed);
  }
  return prune::PruneRows(src, dst, dtype, rows, t.shape[1], prune_spec_, zeroed);
}

std::vector<const uint8_t*> ShardPipeline::Prune(Chunk* c) {
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

std::vector<const uint8_t*> ShardPipeline::Decode(Chunk* c) {
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

Chunk* ShardPipeline::Transform(Chunk* c) {
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

void ShardPipeline::Copy(Chunk* c) {
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

void ShardPipeline::Quantize(Chunk* c, const std::vector<const uint8_t*>& rows_of) {
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

void ShardPipeline::QuantizeTransformed(Piece& p, const PlannedTensor& t, const WeightChunk& in,
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

void ShardPipeline::QuantizeDecoded(Chunk* c, Piece& p, const PlannedTensor& t,
                                    const WeightChunk& in, const ChunkOutputs& outs) {
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
  for (uint64_t r = p.begin; r < p.end; r += tile_rows) {
    const uint64_t r1 = std::min(p.end, r + tile_rows);
    uint8_t* tile = ThreadDecodeTile((r1 - r) * ComputeRowBytes(t));
    bool finite = true;
    if (Status st = DecodeSourceRows(plan_, t, maps_,
                                     c->map->data() + p.src_offset + (r - p.begin) * in_row, r,
                                     r1, tile, &finite);
        !st.ok()) {
      Fail(st);
      return;
    }
    if (finite && t.prune) {
      finite = PruneRowsOf(t, tile, tile, t.compute_dtype, r1 - r, &p.zeroed);
    }
    WeightChunk sub = in;
    sub.data = tile;
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

}  // namespace quench
