// Checks over the folder as a whole: the index, quantization tensors on modules the config does
// not select, NVFP4 fused siblings' shared global scale, and with SRC every source tensor
// (copied byte for byte, pruned, or replaced by quantization) and every DST tensor accounted
// for.
#include <algorithm>
#include <cstring>
#include <string_view>
#include <unordered_set>

#include "plan/fused_sets.h"
#include "schemes/float_formats.h"
#include "verify/messages.h"
#include "verify/pruned_rows.h"
#include "verify/verifier.h"
#include "verify/zero_structure.h"

namespace quench::verify {

Status Verifier::CheckIndex() {
  const ModelFolder& f = dst_.folder;
  if (!f.index_rel) {
    if (f.shards.size() > 1) {
      Problem("", "", "index", "several shards but no *.safetensors.index.json");
    }
    return Status::Ok();
  }
  auto idx = ReadJsonFile((f.root / *f.index_rel).string());
  // An index the disk fails to give is no problem of the checkpoint: the run fails (exit 4).
  if (!idx.ok() && idx.status().code() == ErrorCode::kIo) return idx.status();
  if (!idx.ok()) {
    Problem(*f.index_rel, "", "index", idx.status().message());
    return Status::Ok();
  }
  const JsonValue* wm = idx->Find("weight_map");
  // The map's names in a hash set: a lookup per tensor in the object's list was quadratic
  // (47 s for the 141,218 tensors of a Kimi-shaped FP8 checkpoint).
  std::unordered_set<std::string_view> mapped;
  if (wm != nullptr && wm->is_object()) {
    mapped.reserve(wm->as_object().size());
    for (const auto& kv : wm->as_object()) mapped.insert(kv.first);
  }
  uint64_t total = 0;
  for (const Shard& s : f.shards) {
    for (const TensorInfo& t : s.header.tensors) {
      total += t.nbytes();
      if (!mapped.contains(t.name)) {
        Problem(*f.index_rel, t.name, "index", "tensor of " + s.rel_name + " is not in weight_map");
      }
    }
  }
  const JsonValue* md = idx->Find("metadata");
  const JsonValue* ts = md ? md->Find("total_size") : nullptr;
  if (ts != nullptr && ts->is_int() && ts->as_uint() != total) {
    Problem(*f.index_rel, "", "index",
            "metadata.total_size is " + std::to_string(ts->as_uint()) + ", the tensors hold " +
                std::to_string(total) + " bytes");
  }
  return Status::Ok();
}

// Quantization tensors on modules the config does not select (not a source copy): one
// not-selected problem per module, saying why the config leaves it alone.
void Verifier::CheckUnselectedModules() {
  std::map<std::string, std::vector<std::string>> unselected;
  for (const Shard& s : dst_.folder.shards) {
    for (const TensorInfo& t : s.header.tensors) {
      auto [module, param] = SplitModuleParam(t.name);
      if (!IsQuantSuffix(param) || quant_outputs_.count(t.name)) continue;
      if (src_ && src_->Find(t.name)) continue;
      if (selected_.count(std::string(module))) continue;
      unselected[std::string(module)].push_back(t.name);
      quant_outputs_.insert(t.name);
      if (const TensorInfo* w = dst_.Find(std::string(module) + ".weight")) {
        if (!IsQuantizableFloat(w->dtype)) quant_outputs_.insert(w->name);
      }
    }
  }
  for (const auto& [module, names] : unselected) {
    std::string why = EndsWith(module, "norm") ? "its name ends in \"norm\""
                      : ignore_.Matches(module)
                          ? "it matches quantization_config.ignore entry '" +
                                ignore_.entries()[ignore_.FirstMatch(module)] + "'"
                          : "no config group targets it";
    std::string list;
    for (const std::string& n : names)
      list += (list.empty() ? "" : ", ") + std::string(SplitModuleParam(n).second);
    Problem(
        dst_.FileOf(names.front()), module, "not-selected",
        "module is quantized (" + list + ") but quantization_config does not select it: " + why);
  }
}

// NVFP4 siblings vLLM fuses into one matrix (plan/fused_sets.h) must share one global scale.
void Verifier::CheckFusedSets() {
  std::map<std::string, std::vector<std::pair<std::string, float>>> sets;
  for (const auto& [module, gs] : global_scales_) {
    if (std::string key = FusedSetKey(module); !key.empty()) sets[key].push_back({module, gs});
  }
  for (const auto& [key, members] : sets) {
    if (members.size() < 2) continue;
    bool same = true;
    for (const auto& m : members) {
      if (F32ToBits(m.second) != F32ToBits(members[0].second)) same = false;
    }
    if (same) continue;
    std::string list;
    for (const auto& m : members) {
      list += (list.empty() ? "" : ", ") + std::string(SplitModuleParam(m.first).second) + " " +
              Fmt("%.9g", m.second);
    }
    const std::string name = members[0].first + ".weight_global_scale";
    Problem(dst_.FileOf(name), name, "fused-global-scale",
            "fused siblings under '" + std::string(SplitModuleParam(members[0].first).first) +
                "' have different weight_global_scale (" + list +
                "); vLLM runs them as one matrix with one global scale");
  }
}

void Verifier::CheckSource() {
  // Every source tensor: replaced by its quantized tensors, or copied unchanged.
  for (const Shard& s : src_->folder.shards) {
    for (const TensorInfo& t : s.header.tensors) {
      auto [module, param] = SplitModuleParam(t.name);
      if (param == "weight" && selected_.count(std::string(module))) continue;
      CheckSourceTensor(s, t);
    }
  }
  // Every DST tensor: a source tensor or a quantization output.
  for (const Shard& s : dst_.folder.shards) {
    for (const TensorInfo& t : s.header.tensors) {
      if (quant_outputs_.count(t.name) || src_->Find(t.name)) continue;
      // The KV cache's scales (their values: verify --stats).
      if (kv_cache_ && (t.name.ends_with(".k_scale") || t.name.ends_with(".v_scale"))) continue;
      Problem(s.rel_name, t.name, "extra", "not in the source and not written by quantization");
    }
  }
}

// Source tensor `t` (of shard `s`), not replaced by quantization: DST holds it byte for byte,
// or, pruning alone, as the source pruned by the spec. Compared in chunks whose pages are
// released as they are passed.
void Verifier::CheckSourceTensor(const Shard& s, const TensorInfo& t) {
  const TensorInfo* d = dst_.Find(t.name);
  if (auto w = scale_of_weight_.find(t.name); w != scale_of_weight_.end() && d == nullptr) {
    // An FP8 weight's scale is consumed when the weight is written decoded or quantized; it
    // must stay only beside a weight copied as FP8.
    const TensorInfo* dw = dst_.Find(w->second);
    const bool quantized = selected_.count(std::string(SplitModuleParam(w->second).first)) > 0;
    if (dw == nullptr || quantized || dw->dtype != DType::kF8E4M3) return;
  }
  if (d == nullptr) {
    Problem("SRC:" + s.rel_name, t.name, "missing", "source tensor absent from DST");
    return;
  }
  if (const SourceScale* sc = SourceScaleOf(t.name); sc != nullptr && d->dtype != t.dtype) {
    CheckDecodedTensor(s, t, *sc, *d);
    return;
  }
  const std::string& f = dst_.FileOf(t.name);
  if (d->dtype != t.dtype || d->shape != t.shape) {
    Problem(f, t.name, "changed",
            "copied tensor is " + std::string(DTypeName(d->dtype)) + " " + ShapeString(d->shape) +
                ", the source is " + std::string(DTypeName(t.dtype)) + " " + ShapeString(t.shape));
    return;
  }
  uint64_t so, doff;
  const MappedFile *sm, *dm;
  const uint8_t* sp = src_->Data(t.name, &so, &sm);
  const uint8_t* dp = dst_.Data(t.name, &doff, &dm);
  const uint64_t n = t.nbytes();
  uint64_t diff_at = n;
  for (uint64_t at = 0; at < n; at += kChunkBytes) {
    const uint64_t len = std::min(kChunkBytes, n - at);
    if (std::memcmp(sp + at, dp + at, len) != 0) {
      for (uint64_t i = at; i < at + len; ++i) {
        if (sp[i] != dp[i]) {
          diff_at = i;
          break;
        }
      }
    }
    sm->Release(so + at, len);
    dm->Release(doff + at, len);
    if (diff_at != n) break;
  }
  if (src_->folder.linear_pieces.contains(t.name)) src_->Release(t.name);  // assembled: freed
  rep_.bytes_compared += n;
  // An AutoAWQ or ModelOpt NVFP4 weight: SRC here is that source decoded (the CLI's temporary
  // folder), so DST written decoded holds this tensor bit for bit.
  const bool decoded = opt_.packed_source && opt_.packed_source->decoded.contains(t.name);
  if (diff_at != n && prune_only_) {
    std::string why;
    if (EqualsPrunedSource(t, sp, dp, &why)) {
      ++rep_.tensors_pruned;
    } else {
      Problem(f, t.name, "changed", why);
    }
    return;
  }
  if (diff_at != n) {
    Problem(f, t.name, "changed",
            std::string(decoded ? "differs from the packed source decoded to BF16"
                                : "copied tensor differs from the source") +
                ", first at byte " + std::to_string(diff_at) + " of " + std::to_string(n));
  } else if (decoded) {
    ++rep_.tensors_decoded;
  } else {
    ++rep_.tensors_copied;
  }
}

// Pruning alone: whether DST's tensor `t` (same dtype and shape as the source) is exactly the
// source pruned by the spec; if not, `why` says where it first differs.
bool Verifier::EqualsPrunedSource(const TensorInfo& t, const uint8_t* sp, const uint8_t* dp,
                                  std::string* why) {
  const std::string spec = PruneText(opt_.prune);
  if (t.shape.size() != 2 || !IsQuantizableFloat(t.dtype)) {
    *why = "copied tensor differs from the source (and is not a 2-D float weight --prune " +
           spec + " could have pruned)";
    return false;
  }
  const uint64_t rows = t.shape[0], cols = t.shape[1];
  const uint64_t row_bytes = cols * DTypeBits(t.dtype) / 8;
  if (opt_.prune_updates) return HasSparseGptZeros(t, dp, why);
  PrunedRows pr(opt_.prune, sp, t.dtype, rows, cols);
  uint64_t so, doff;
  const MappedFile *sm, *dm;
  src_->Data(t.name, &so, &sm);
  dst_.Data(t.name, &doff, &dm);
  if (!pr.Init([&](uint64_t bytes) { sm->Release(so, bytes); })) {
    *why = "differs from the source, which holds NaN or Inf and so cannot be pruned to compare";
    return false;
  }
  const uint64_t rows_per_chunk =
      std::max<uint64_t>(1, kChunkBytes / std::max<uint64_t>(1, row_bytes));
  for (uint64_t r = 0; r < rows; ++r) {
    const uint8_t* want = pr.Row(r);
    if (want == nullptr || std::memcmp(want, dp + r * row_bytes, row_bytes) != 0) {
      *why = "differs from both the source and the source pruned by --prune " + spec +
             ", first in row " + std::to_string(r);
      return false;
    }
    if ((r + 1) % rows_per_chunk == 0) {
      sm->Release(so, (r + 1) * row_bytes);
      dm->Release(doff, (r + 1) * row_bytes);
    }
  }
  sm->Release(so, rows * row_bytes);
  dm->Release(doff, rows * row_bytes);
  return true;
}

// Pruning alone with SparseGPT: DST's tensor (same dtype and shape as the source, 2-D float)
// has the zeros SparseGPT's mask leaves; its kept values are SparseGPT's updates, which no
// source-side computation reproduces, so they are not compared.
bool Verifier::HasSparseGptZeros(const TensorInfo& t, const uint8_t* dp, std::string* why) {
  const uint64_t rows = t.shape[0], cols = t.shape[1];
  const uint64_t row_bytes = cols * DTypeBits(t.dtype) / 8;
  uint64_t doff;
  const MappedFile* dm;
  dst_.Data(t.name, &doff, &dm);
  ZeroStructure zs(opt_.prune, rows, cols, opt_.prune_block);
  std::vector<uint8_t> zero(cols);
  const uint64_t rows_per_chunk =
      std::max<uint64_t>(1, kChunkBytes / std::max<uint64_t>(1, row_bytes));
  for (uint64_t r = 0; r < rows; ++r) {
    for (uint64_t c = 0; c < cols; ++c) zero[c] = LoadFloat(dp + r * row_bytes, t.dtype, c) == 0;
    zs.AddRow(r, zero);
    if ((r + 1) % rows_per_chunk == 0) dm->Release(doff, (r + 1) * row_bytes);
  }
  dm->Release(doff, rows * row_bytes);
  const std::string short_of = zs.Finish();
  if (short_of.empty()) return true;
  *why = "differs from the source and lacks the zeros SparseGPT " + PruneText(opt_.prune) +
         " leaves: " + short_of;
  return false;
}

}  // namespace quench::verify
