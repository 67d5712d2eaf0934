// quench verify: see verify.h for what is checked and verifier.h for where each check lives.
// This file runs them: it opens DST (and SRC), reads the quantization_config, selects the
// modules the config quantizes, and hands each to the checks (modules in parallel, their
// findings merged in module order).
#include "verify/verify.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

#include <tbb/enumerable_thread_specific.h>
#include <tbb/parallel_for.h>

#include "verify/verifier.h"

namespace quench {
namespace verify {
namespace fs = std::filesystem;

namespace {

// Whether DST holds a tensor of `whole` that `split` replaced (a fused expert stack kept
// whole). False where DST is malformed (OpenDestination reports that); kIo where it cannot
// be read.
Result<bool> DstHoldsAny(const fs::path& dst, const ModelFolder& whole, const ModelFolder& split) {
  auto df = LoadModelFolder(dst);
  // Unreadable is an I/O error for the run; malformed is OpenDestination's to report.
  if (!df.ok() && df.status().code() == ErrorCode::kIo) return df.status();
  if (!df.ok()) return false;
  std::set<std::string_view> after;
  for (const Shard& sh : split.shards) {
    for (const TensorInfo& t : sh.header.tensors) after.insert(t.name);
  }
  std::set<std::string_view> stacks;
  for (const Shard& sh : whole.shards) {
    for (const TensorInfo& t : sh.header.tensors) {
      if (!after.contains(t.name)) stacks.insert(t.name);
    }
  }
  for (const Shard& sh : df->shards) {
    for (const TensorInfo& t : sh.header.tensors) {
      if (stacks.contains(t.name)) return true;
    }
  }
  return false;
}

}  // namespace

// Opens SRC: its inventory, with fused 3-D experts named per expert as the converter split
// them, and its shards mapped.
Status Verifier::OpenSource() {
  std::error_code ec;
  if (!fs::is_directory(*opt_.src, ec)) {
    return Error(ErrorCode::kInvalidInput, opt_.src->string() + ": not a folder");
  }
  auto sf = LoadModelFolder(*opt_.src);
  if (!sf.ok()) {
    return Error(sf.status().code(), "SRC " + sf.status().message());
  }
  src_.emplace();
  src_->folder = std::move(sf).value();
  // A DST without quantization_config keeps the source's names: a compressed-tensors SRC
  // written decoded (--scheme BF16) keeps its expert stacks whole, as convert_checkpoint does,
  // and so does expert pruning alone (--scheme none --prune-experts) of a BF16 SRC, while
  // pruning's 2-D weights are the split ones: DST's names tell which.
  auto dc = ReadJsonFile((opt_.dst / "config.json").string());
  if (!dc.ok() && dc.status().code() == ErrorCode::kIo &&
      fs::exists(opt_.dst / "config.json", ec)) {
    return dc.status();  // there but unreadable: not a DST without a config
  }
  const bool unquantized =
      dc.ok() && dc->is_object() && dc->Find("quantization_config") == nullptr;
  const bool decoded_whole = unquantized && IsCompressedTensors(src_->folder);
  // SRC split with `o`, unless DST holds a tensor the split replaced (then left as it is);
  // whether it was split.
  auto split_as_dst = [&](ExpertSplitOptions o) -> Result<bool> {
    ModelFolder split_folder = src_->folder;
    auto split = SplitFusedExperts(split_folder, o);
    if (!split.ok()) return Error(split.status().code(), "SRC " + split.status().message());
    bool holds = false;
    if (split->tensors_split > 0) {
      QUENCH_ASSIGN_OR_RETURN(holds, DstHoldsAny(opt_.dst, src_->folder, split_folder));
    }
    if (!holds) src_->folder = std::move(split_folder);
    return !holds;
  };
  if (!unquantized) {
    // A quantized DST of a Llama 4 SRC holds its [E, in, out] stacks linearized, or whole
    // where an earlier quench wrote it: DST's names tell which.
    bool split = false;
    if (LinearizesExpertStacks(src_->folder)) {
      QUENCH_ASSIGN_OR_RETURN(split, split_as_dst(ExpertSplitOptions{.linearize = true}));
    }
    if (!split) {
      auto s = SplitFusedExperts(src_->folder);
      if (!s.ok()) return Error(s.status().code(), "SRC " + s.status().message());
    }
  } else if (!decoded_whole) {
    QUENCH_RETURN_IF_ERROR(split_as_dst(ExpertSplitOptions{}).status());
  }
  auto q = DetectSourceQuantization(src_->folder);
  if (!q.ok()) return Error(q.status().code(), "SRC " + q.status().message());
  src_quant_ = std::move(q).value();
  for (const auto& [weight, sc] : src_quant_.scales) scale_of_weight_[sc.name] = weight;
  if (src_quant_.format == SourceFormat::kCompressedTensors) LogicalCtSource();
  if (pruning() && !src_quant_.scales.empty()) {
    return Error(ErrorCode::kUnsupported,
                 "SRC is " + src_quant_.description +
                     "; verify --prune cannot compare against a quantized source yet");
  }
  return OpenMaps(*src_);
}

// Opens DST. False when the folder is malformed (reported as a problem: nothing more can be
// checked); an error only when it cannot be read at all.
Result<bool> Verifier::OpenDestination() {
  auto df = LoadModelFolder(opt_.dst);
  if (!df.ok()) {
    if (df.status().code() == ErrorCode::kIo) return df.status();
    Problem("", "", "safetensors", df.status().message());
    return false;
  }
  dst_.folder = std::move(df).value();
  QUENCH_RETURN_IF_ERROR(OpenMaps(dst_));
  rep_.shards = dst_.folder.shards.size();
  for (const Shard& s : dst_.folder.shards) rep_.tensors += s.header.tensors.size();
  return true;
}

// Pruning alone (`--scheme none --prune`): no quantization_config is written, and each tensor
// is the source's, pruned or not; only SRC can tell which.
void Verifier::CheckPruneOnly() {
  prune_only_ = true;
  if (src_) {
    CheckSource();
  } else {
    Problem(*dst_.folder.config_rel, "", "config",
            "no \"quantization_config\" (pruning alone, --scheme none): give SRC to check "
            "each tensor against the source pruned by --prune");
  }
}

// Reads quantization_config: quant_method, the top-level format, the ignore list and every
// config group. False when any of it is missing or wrong (each reported as a config problem);
// groups_ then holds the groups that could still be read.
bool Verifier::LoadConfig() {
  const ModelFolder& f = dst_.folder;
  if (!f.config_rel || !f.config) {
    Problem("", "", "config", "no config.json or params.json with a quantization_config");
    return false;
  }
  config_file_ = *f.config_rel;
  const JsonValue* q = f.config->Find("quantization_config");
  if (q == nullptr || !q->is_object()) {
    Problem(config_file_, "", "config", "no \"quantization_config\" object");
    return false;
  }
  if (const JsonValue* m = q->Find("quant_method");
      m == nullptr || !m->is_string() || m->as_string() != "compressed-tensors") {
    Problem(config_file_, "", "config", "quant_method is not \"compressed-tensors\"");
    return false;
  }
  const JsonValue* kv = q->Find("kv_cache_scheme");
  kv_cache_ = kv != nullptr && kv->is_object();
  std::string global_format;
  if (const JsonValue* gf = q->Find("format"); gf && gf->is_string())
    global_format = gf->as_string();
  std::vector<std::string> ignore;
  if (const JsonValue* ig = q->Find("ignore"); ig && ig->is_array()) {
    for (const JsonValue& e : ig->as_array()) {
      if (e.is_string()) ignore.push_back(e.as_string());
    }
  }
  auto im = NameMatcher::Compile(ignore, "quantization_config.ignore");
  if (!im.ok()) {
    Problem(config_file_, "", "config", im.status().message());
    return false;
  }
  ignore_ = std::move(im).value();
  const JsonValue* cg = q->Find("config_groups");
  if (cg == nullptr || !cg->is_object() || cg->as_object().empty()) {
    Problem(config_file_, "", "config", "quantization_config has no config_groups");
    return false;
  }
  bool ok = true;
  for (const auto& [key, gj] : cg->as_object()) {
    auto bad = [&](const std::string& why) {
      Problem(config_file_, "", "config", "config group '" + key + "': " + why);
      ok = false;
    };
    if (std::optional<Group> g = ParseConfigGroup(key, gj, global_format, bad)) {
      groups_.push_back(std::move(*g));
    }
  }
  return ok;
}

// compressed-tensors' selection: not ending in "norm", no ignore entry, first group that
// targets it.
const Group* Verifier::GroupFor(std::string_view module) const {
  if (EndsWith(module, "norm")) return nullptr;
  if (ignore_.Matches(module)) return nullptr;
  for (const Group& g : groups_) {
    if ((g.all && LinearTargetSelects(module)) || g.targets.Matches(module)) return &g;
  }
  return nullptr;
}

// Fills selected_: every module with a 2-D weight (the source's when there is one, else DST's
// M.weight or M.weight_packed) that a quantizing group selects.
void Verifier::SelectModules() {
  std::map<std::string, bool> candidates;  // module -> 2-D
  auto consider = [&](const TensorInfo& t, bool from_src) {
    auto [module, param] = SplitModuleParam(t.name);
    if (param == "weight") {
      auto [it, inserted] = candidates.emplace(std::string(module), t.shape.size() == 2);
      if (from_src) it->second = t.shape.size() == 2;  // the source decides
    } else if (param == "weight_packed" && !from_src) {
      candidates.emplace(std::string(module), true);
    }
  };
  if (src_) {
    for (const Shard& s : src_->folder.shards) {
      for (const TensorInfo& t : s.header.tensors) consider(t, true);
    }
  }
  for (const Shard& s : dst_.folder.shards) {
    for (const TensorInfo& t : s.header.tensors) {
      // (Not a tensor SRC holds under the same name: that is a copy, whatever its name says.)
      if (!src_ || (!src_->Find(std::string(SplitModuleParam(t.name).first) + ".weight") &&
                    !src_->Find(t.name))) {
        consider(t, false);
      }
    }
  }
  for (const auto& [module, two_d] : candidates) {
    if (!two_d) continue;
    const Group* g = GroupFor(module);
    if (g == nullptr || g->format == Format::kDense || g->format == Format::kUnsupported) continue;
    selected_[module] = g;
  }
}

Status Verifier::Run() {
  std::error_code ec;
  if (!fs::is_directory(opt_.dst, ec)) {
    return Error(ErrorCode::kInvalidInput, opt_.dst.string() + ": not a folder");
  }
  rep_.dst = opt_.dst;
  rep_.src = opt_.src;
  if (opt_.src) QUENCH_RETURN_IF_ERROR(OpenSource());
  QUENCH_ASSIGN_OR_RETURN(const bool opened, OpenDestination());
  if (!opened) return Status::Ok();
  if (src_) QUENCH_RETURN_IF_ERROR(MatchPrunedExperts());
  QUENCH_RETURN_IF_ERROR(CheckIndex());
  if (pruning() && dst_.folder.config &&
      dst_.folder.config->Find("quantization_config") == nullptr) {
    CheckPruneOnly();
    return Status::Ok();
  }
  if (src_ && dst_.folder.config && dst_.folder.config->Find("quantization_config") == nullptr) {
    // Nothing quantized (--scheme BF16 or none, e.g. experts pruned alone): no
    // quantization_config, and every tensor is the source's (as expert pruning left it), a
    // quantized source's weights decoded (FP8 and compressed-tensors here; AutoAWQ and
    // ModelOpt NVFP4 by the CLI first, VerifyOptions::packed_source).
    CheckSource();
    return Status::Ok();
  }
  if (!LoadConfig() && groups_.empty()) return Status::Ok();
  SelectModules();
  CheckSelectedModules();
  CheckUnselectedModules();
  CheckFusedSets();
  if (src_) CheckSource();
  return Status::Ok();
}

thread_local ModuleOutcome* Verifier::outcome_ = nullptr;
thread_local ReleaseBatch* Verifier::releases_ = nullptr;

void ReleaseBatch::Add(const MappedFile* m, uint64_t offset, uint64_t len) {
  if (m == nullptr || m->data() == nullptr || len == 0) return;
  const auto [begin, end] = m->ReleaseRange(offset, len);
  ranges_.push_back({m, begin, end});
  bytes_ += len;
  if (bytes_ >= kChunkBytes) Flush();
}

void ReleaseBatch::Flush() {
  std::sort(ranges_.begin(), ranges_.end(), [](const Range& a, const Range& b) {
    return a.m != b.m ? std::less<const MappedFile*>()(a.m, b.m) : a.begin < b.begin;
  });
  for (size_t i = 0; i < ranges_.size();) {
    const MappedFile* m = ranges_[i].m;
    uint64_t begin = ranges_[i].begin, end = ranges_[i].end;
    size_t j = i + 1;
    for (; j < ranges_.size() && ranges_[j].m == m && ranges_[j].begin <= end; ++j) {
      end = std::max(end, ranges_[j].end);
    }
    m->Release(begin, end - begin);
    i = j;
  }
  ranges_.clear();
  bytes_ = 0;
}

void Verifier::ReleaseTensor(const Checkpoint& c, const std::string& name) const {
  const TensorInfo* t = c.Find(name);
  if (t == nullptr) return;
  if (releases_ == nullptr) {
    c.Release(name);
    return;
  }
  uint64_t off;
  const MappedFile* m;
  c.Data(name, &off, &m);
  releases_->Add(m, off, t->nbytes());
}

void Verifier::CheckSelectedModules() {
  const std::vector<std::pair<std::string, const Group*>> modules(selected_.begin(),
                                                                   selected_.end());
  std::vector<ModuleOutcome> outcomes(modules.size());
  tbb::enumerable_thread_specific<ReleaseBatch> batches;
  // Each module's checks read the mapped folders and write only their own outcome (a module
  // at a time per task: a large one's rows are walked in chunks either way; nothing they call
  // runs TBB work, so no task of another module interleaves on the thread).
  tbb::parallel_for(size_t{0}, modules.size(), [&](size_t i) {
    struct Scope {  // the thread's sinks, reset however CheckModule leaves
      Scope(ModuleOutcome* o, ReleaseBatch* b) { outcome_ = o, releases_ = b; }
      ~Scope() { outcome_ = nullptr, releases_ = nullptr; }
    } scope(&outcomes[i], &batches.local());
    CheckModule(modules[i].first, *modules[i].second);
    const std::string w = modules[i].first + ".weight";
    if (src_ && src_->folder.linear_pieces.contains(w)) src_->Release(w);  // assembled: freed
  });
  for (ReleaseBatch& b : batches) b.Flush();
  for (ModuleOutcome& o : outcomes) {
    for (VerifyProblem& p : o.problems) rep_.problems.push_back(std::move(p));
    rep_.modules_quantized += o.modules_quantized;
    rep_.bytes_compared += o.bytes_compared;
    for (TensorQuality& q : o.quality) rep_.quality.push_back(std::move(q));
    for (const std::string& n : o.quant_outputs) quant_outputs_.insert(n);
    for (const auto& [m, gs] : o.global_scales) global_scales_[m] = gs;
  }
}

}  // namespace verify

std::string VerifyProblem::ToString() const {
  std::string s;
  if (!file.empty()) s += file + ": ";
  if (!tensor.empty()) s += "tensor '" + tensor + "': ";
  s += rule + ": " + message;
  return s;
}

Result<VerifyReport> Verify(const VerifyOptions& options) {
  VerifyReport report;
  verify::Verifier v(options, report);
  QUENCH_RETURN_IF_ERROR(v.Run());
  if (options.stats) QUENCH_RETURN_IF_ERROR(CheckStaticScales(options, report));
  return report;
}

}  // namespace quench
