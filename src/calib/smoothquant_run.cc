// SmoothQuant in a conversion (see smoothquant_run.h).
#include "calib/smoothquant_run.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include <tbb/global_control.h>
#include <tbb/parallel_for.h>
#include <string>
#include <vector>

#include "calib/awq.h"
#include "calib/mappings.h"
#include "calib/smoothquant.h"
#include "calib/stats.h"
#include "calib/user_mappings.h"
#include "format/file_io.h"
#include "format/json.h"
#include "format/safetensors.h"
#include "plan/expert_prune.h"
#include "plan/matcher.h"

namespace quench::calib {
namespace {

std::string Join(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

bool HasField(const StatsSite& site, const std::string& f) {
  return std::any_of(site.fields.begin(), site.fields.end(),
                     [&](const StatsField& x) { return x.name == f; });
}

// Checks one resolved mapping against the plan and the statistics; fills `out` or says why
// the mapping is refused.
Status CheckMapping(const Plan& plan, const std::map<std::string, size_t>& index,
                    const Statistics& stats, const ResolvedMapping& m, bool awq,
                    PlannedSmoothing* out) {
  const std::string what = std::string(awq ? "AWQ" : "SmoothQuant") + " mapping [" +
                           Join(m.balance) + "] <- " + m.smooth + ": ";
  auto refuse = [&](const std::string& why) { return Error(ErrorCode::kUnsupported, what + why); };
  out->smooth = m.smooth;
  out->balance = m.balance;
  const auto sw = index.find(m.smooth + ".weight");
  if (sw == index.end()) return refuse("the smooth layer has no weight in the checkpoint");
  const PlannedTensor& s = plan.tensors[sw->second];
  uint64_t n = 0;
  DType dtype = DType::kBF16;
  const PlannedTensor* first = nullptr;
  for (const std::string& b : m.balance) {
    const auto it = index.find(b + ".weight");
    if (it == index.end()) return refuse("balance layer " + b + " has no weight");
    const PlannedTensor& t = plan.tensors[it->second];
    if (t.shape.size() != 2) return refuse(b + ".weight is not 2-D");
    // AWQ's registry balances routers (mlp.gate), which stay unquantized: scaled and copied,
    // outside the loss, as the reference does. Otherwise an unquantized member is refused.
    const bool copied = t.action == TensorAction::kCopy && awq;
    if (t.action != TensorAction::kQuantize && !copied) {
      return refuse("balance layer " + b + " is left unquantized (" + t.why +
                    "); smoothing would change an unquantized weight: ignore all of the "
                    "mapping's balance layers or none");
    }
    if (awq && !copied && t.scheme->weights.type != "int") {
      return refuse(b + " is to be " + std::string(t.scheme->name) +
                    "; AWQ's search quantizes with the integer schemes so far");
    }
    if (copied) {
      out->tensors.push_back(it->second);  // width and dtype checked below
      continue;
    }
    // Row-wise pruning sees the smoothed rows (src/calib/composite.h); a tensor-wide
    // magnitude threshold is found by a pre-pass over the unsmoothed source.
    if (t.prune && plan.prune.per_tensor) {
      return refuse(b + " is pruned with a tensor-wide threshold (--prune-granularity tensor), "
                    "found before smoothing; use row granularity");
    }
    // The global-scale pre-pass (NVFP4) reads the source's weights, not the smoothed ones.
    if (t.action == TensorAction::kQuantize && t.scheme->needs_global_scale) {
      return refuse(b + " is to be " + std::string(t.scheme->name) +
                    ", whose global scale is computed before smoothing (not built yet)");
    }
    if (t.source_scale) return refuse(b + " is stored quantized in the source (not built yet)");
    if (first == nullptr) {
      first = &t;
      n = t.shape[1];
      dtype = t.dtype;
    } else if (t.scheme != first->scheme || t.params.bits != first->params.bits ||
               t.params.group_size != first->params.group_size ||
               t.params.symmetric != first->params.symmetric) {
      return refuse("its balance layers are split across schemes (" + m.balance.front() + ": " +
                    std::string(first->scheme->name) + ", " + b + ": " + std::string(t.scheme->name) +
                    ")");
    }
    if (t.shape[1] != n) return refuse("balance layers have different input widths");
    if (t.dtype != dtype) return refuse("balance layers have different dtypes");
    out->tensors.push_back(it->second);
  }
  // The smooth layer: a norm's weight [n] (and bias), or a linear's weight [n, k] (and bias).
  if (first == nullptr) return refuse("none of its balance layers is quantized");
  for (size_t k : out->tensors) {
    if (plan.tensors[k].shape[1] != n || plan.tensors[k].dtype != dtype) {
      return refuse("balance layer " + plan.tensors[k].name + " differs in width or dtype");
    }
  }
  const bool norm = s.shape.size() == 1;
  // AWQ divides the last n rows of a wider linear (a fused qkv before o_proj).
  if ((norm && s.shape[0] != n) ||
      (!norm && (s.shape.size() != 2 || s.shape[0] < n || (!awq && s.shape[0] != n)))) {
    return refuse("the smooth layer's output width does not equal the balance layers' input (" +
                  std::to_string(n) + ")");
  }
  if (s.dtype != dtype) return refuse("the smooth layer's dtype differs from the balance layers'");
  // A quantized smooth layer is divided before it is pruned (per-row rankings are unchanged
  // by a row's scale); a pruned-only one would be written without the division.
  if (s.source_scale || (s.prune && s.action != TensorAction::kQuantize)) {
    return refuse("the smooth layer is source-quantized or pruned (not built yet)");
  }
  out->tensors.push_back(sw->second);
  if (const auto bias = index.find(m.smooth + ".bias"); bias != index.end()) {
    const PlannedTensor& b = plan.tensors[bias->second];
    if (b.shape.size() != 1 || b.shape[0] != n || b.dtype != dtype ||
        b.action != TensorAction::kCopy) {
      return refuse("the smooth layer's bias is not a copied [" + std::to_string(n) + "] tensor");
    }
    out->tensors.push_back(bias->second);
  }
  // The statistics of the balance layers' shared input, named as in the source (expert
  // pruning renumbers the survivors).
  const std::string first_weight = m.balance.front() + ".weight";
  const auto c = stats.consumers().find(
      plan.expert_prune ? SourceExpertName(*plan.expert_prune, first_weight) : first_weight);
  if (c == stats.consumers().end()) {
    return refuse("the statistics have no site for " + m.balance.front() +
                  ".weight (the collector did not reach it)");
  }
  const StatsSite& site = stats.sites().at(c->second.site);
  if (site.in_features != n) {
    return refuse("site " + site.name + " is not " + std::to_string(n) + " wide");
  }
  if (!awq && site.experts) return refuse("site " + site.name + " is per-expert");
  if (!awq && (!HasField(site, "min") || !HasField(site, "max"))) {
    return refuse("site " + site.name + " has no min and max");
  }
  if (awq && !HasField(site, "sum_abs")) return refuse("site " + site.name + " has no sum_abs");
  if (awq) {
    out->loss_kind = HasField(site, "hessian") ? "full Hessian" : "diagonal sum_x2";
    if (!HasField(site, "hessian") && !HasField(site, "sum_x2")) {
      return refuse("site " + site.name + " has neither a Hessian nor sum_x2");
    }
  }
  out->site = site.name;
  out->expert = c->second.expert;
  return Status::Ok();
}

// AWQ's _check_layers_are_compatible: a v_proj whose outputs are not o_proj's inputs (GQA),
// or a fused qkv_proj whose outputs are not three times them, is skipped.
bool Incompatible(const Plan& plan, const std::map<std::string, size_t>& index,
                  const ResolvedMapping& m) {
  const auto sw = index.find(m.smooth + ".weight");
  if (sw == index.end() || plan.tensors[sw->second].shape.size() != 2) return false;
  const uint64_t out = plan.tensors[sw->second].shape[0];
  auto ends = [](const std::string& a, const std::string& b) {
    return a.size() >= b.size() && a.compare(a.size() - b.size(), b.size(), b) == 0;
  };
  for (const std::string& b : m.balance) {
    const auto bw = index.find(b + ".weight");
    if (bw == index.end() || !ends(b, ".o_proj") || plan.tensors[bw->second].shape.size() != 2) {
      continue;
    }
    const uint64_t in = plan.tensors[bw->second].shape[1];
    if ((ends(m.smooth, ".v_proj") && out != in) || (ends(m.smooth, ".qkv_proj") && out != 3 * in)) {
      return true;
    }
  }
  return false;
}

}  // namespace

Status PlanSmoothQuant(Plan& plan, const ConvertOptions& options) {
  const bool awq = options.algorithm == "awq";
  const std::string algo = awq ? "AWQ" : "SmoothQuant";
  const double a = options.smoothing_strength;
  if (!std::isfinite(a) || a < 0 || a > 1) {
    return Error(ErrorCode::kUsage, "--smoothing-strength must be in [0, 1]");
  }
  if (awq) {
    QUENCH_RETURN_IF_ERROR(ParseDuoScaling(options.awq_duo_scaling).status());
    QUENCH_RETURN_IF_ERROR(ParseAwqSearch(options.awq_search).status());
    if (options.awq_n_grid < 2) return Error(ErrorCode::kUsage, "--awq-n-grid must be >= 2");
  }
  // With expert pruning the mappings resolve on the pruned model's modules (the survivors,
  // renumbered: pruned experts have no mapping, fused sets are the survivors'); statistics
  // are looked up under the source's names (CheckMapping).
  if (options.stats.empty()) {
    return Error(ErrorCode::kUsage,
                 "--algorithm " + options.algorithm + " needs --stats STATS (collect them with "
                 "scripts/collect-stats MODEL_DIR --text FILE -o STATS)");
  }
  QUENCH_ASSIGN_OR_RETURN(Statistics stats, Statistics::Open(options.stats));
  QUENCH_ASSIGN_OR_RETURN(JsonValue config, ReadJsonFile((plan.src / "config.json").string()));
  const JsonValue* archs = config.Find("architectures");
  const std::string arch = archs != nullptr && archs->is_array() && !archs->as_array().empty() &&
                                   archs->as_array()[0].is_string()
                               ? archs->as_array()[0].as_string()
                               : std::string();
  bool fallback = false;
  const bool user = !options.smoothing_mappings.empty();
  const std::vector<MappingSpec> specs =
      user ? std::vector<MappingSpec>()
           : MappingsFor(awq ? MappingFamily::kAwq : MappingFamily::kSmoothQuant, arch, &fallback);
  std::map<std::string, size_t> index;
  std::vector<std::string> modules;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const std::string& name = plan.tensors[i].name;
    index[name] = i;
    const auto [module, param] = SplitModuleParam(name);
    if (param == "weight") modules.emplace_back(module);
  }
  auto resolved = user ? ResolveUserMappings(options.smoothing_mappings, modules)
                       : ResolveMappings(specs, modules);
  if (!resolved.ok()) {
    plan.errors.push_back(resolved.status());
    return Status::Ok();
  }
  QUENCH_ASSIGN_OR_RETURN(const size_t ignored,
                          DropIgnoredMappings(options.smoothing_ignore, *resolved));
  if (resolved->empty() && ignored > 0) {
    plan.errors.push_back(Error(ErrorCode::kUnsupported,
                                "SmoothQuantModifier.ignore leaves no mapping to smooth"));
    return Status::Ok();
  }
  if (resolved->empty()) {
    plan.errors.push_back(Error(ErrorCode::kUnsupported,
                                "--algorithm " + options.algorithm + ": no mapping of " +
                                    (arch.empty() ? std::string("this model") : arch) +
                                    " matches the checkpoint's modules"));
    return Status::Ok();
  }
  size_t rewritten = 0, incompatible = 0;
  for (const ResolvedMapping& m : *resolved) {
    if (awq && Incompatible(plan, index, m)) {
      ++incompatible;
      continue;
    }
    PlannedSmoothing ps;
    if (Status st = CheckMapping(plan, index, stats, m, awq, &ps); !st.ok()) {
      plan.errors.push_back(st);
      continue;
    }
    // A tensor may belong to two mappings (AWQ: v_proj is balanced by the norm's mapping,
    // then smooths o_proj's); its transforms apply in mapping order, as the reference's.
    for (size_t t : ps.tensors) {
      rewritten += !plan.tensors[t].smoothed;
      plan.tensors[t].smoothed = true;
    }
    plan.smoothing.push_back(std::move(ps));
  }
  char alpha[32];
  std::snprintf(alpha, sizeof alpha, "%.17g", a);
  std::string settings =
      awq ? "duo_scaling " + options.awq_duo_scaling + ", n_grid " +
                std::to_string(options.awq_n_grid) + ", search " + options.awq_search
          : "alpha " + std::string(alpha);
  // The recipe's mappings and ignore change which tensors are rewritten: part of the
  // settings, so of the resume fingerprint.
  const std::string own = DescribeUserMappings(options.smoothing_mappings, options.smoothing_ignore);
  if (!own.empty()) settings += ", " + own;
  plan.notes.push_back(algo + " (" + settings + ") from " +
                       options.stats.string() + ": " + std::to_string(plan.smoothing.size()) +
                       " mappings of " + (arch.empty() ? "an unnamed architecture" : arch) +
                       (user ? " (the recipe's)" : "") +
                       (fallback ? " (not in llm-compressor's registry: its default mappings)"
                                 : "") +
                       ", rewriting " + std::to_string(rewritten) + " tensors");
  if (ignored > 0) {
    plan.notes.push_back("SmoothQuant: " + std::to_string(ignored) + " mapping set(s) skipped, "
                         "every member in SmoothQuantModifier.ignore");
  }
  if (incompatible > 0) {
    plan.notes.push_back("AWQ: " + std::to_string(incompatible) +
                         " v_proj/qkv_proj -> o_proj mapping(s) skipped, their shapes "
                         "incompatible (grouped-query attention), as the reference skips them");
  }
  QUENCH_ASSIGN_OR_RETURN(std::string manifest,
                          ReadFileToString(options.stats / "manifest.json"));
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx",
                static_cast<unsigned long long>(Fnv1a64(manifest)));
  plan.calib_fingerprint = options.algorithm + " " + settings + " stats " + hash;
  return Status::Ok();
}

namespace {

class SmoothRunImpl : public SmoothRun {
 public:
  explicit SmoothRunImpl(const Plan& plan)
      : plan_(plan), ops_(plan.tensors.size()), results_(plan.smoothing.size()) {}

  // The pre-pass: per mapping, the scales from the balance weights (mapped, released after)
  // and the statistics; then each rewritten tensor's transforms, in mapping order.
  Status Compute(const Statistics& stats, const ConvertOptions& o, const SmoothSource& source) {
    if (o.algorithm != "awq") return ComputeSmoothQuant(stats, o, source);
    const size_t count = plan_.smoothing.size();
    // Mappings are searched in parallel, a batch of one per core at a time, so that only that
    // many mappings' balance weights are resident (their pages are released after the batch).
    const size_t batch = std::max<size_t>(
        1, o.threads > 0 ? size_t(o.threads) : std::thread::hardware_concurrency());
    for (size_t b0 = 0; b0 < count; b0 += batch) {
      const size_t b1 = std::min(count, b0 + batch);
      std::vector<std::vector<AwqLayer>> layers(b1 - b0);
      for (size_t mi = b0; mi < b1; ++mi) {
        const PlannedSmoothing& m = plan_.smoothing[mi];
        for (size_t k = 0; k < m.balance.size(); ++k) {
          const PlannedTensor& t = plan_.tensors[m.tensors[k]];
          QUENCH_ASSIGN_OR_RETURN(const MappedFile* map, Map(t.shard));
          AwqLayer l;
          l.data = map->data() + t.src_offset;
          l.dtype = t.dtype;
          l.rows = t.shape[0];
          l.cols = t.shape[1];
          l.quantized = t.action == TensorAction::kQuantize;
          if (l.quantized) {
            l.q.bits = t.params.bits;
            l.q.group_size = t.params.group_size.value_or(0) > 0 ? *t.params.group_size : 0;
            l.q.symmetric = t.params.symmetric;
          }
          layers[mi - b0].push_back(l);
        }
      }
      std::vector<std::vector<double>> scales(b1 - b0);
      std::vector<Status> status(b1 - b0);
      tbb::parallel_for(b0, b1, [&](size_t mi) {
        const PlannedSmoothing& m = plan_.smoothing[mi];
        status[mi - b0] = Awq(stats, o, m, layers[mi - b0], &results_[mi], &scales[mi - b0]);
      });
      for (size_t mi = b0; mi < b1; ++mi) {
        QUENCH_RETURN_IF_ERROR(status[mi - b0]);
        const PlannedSmoothing& m = plan_.smoothing[mi];
        for (size_t k = 0; k < m.balance.size(); ++k) {
          const PlannedTensor& t = plan_.tensors[m.tensors[k]];
          maps_.at(t.shard)->Release(t.src_offset, t.src_bytes);
        }
        Fold(mi, std::move(scales[mi - b0]));
      }
    }
    return Status::Ok();
  }

  // SmoothQuant's pre-pass, mapping after mapping (the scales need only each balance
  // column's max |W|): every balance weight read once, in row blocks on all cores (a max is
  // the same in any order), through the pipeline's mappings when given, its pages left
  // mapped for the pipeline while they fit source.keep_bytes (else released block by block).
  Status ComputeSmoothQuant(const Statistics& stats, const ConvertOptions& o,
                            const SmoothSource& source) {
    // Row blocks of about 4 MiB: enough blocks to spread a mapping's read over the cores,
    // few enough that each block's max vector (one per column) costs nothing.
    constexpr uint64_t kBlockBytes = 4ull << 20;
    std::optional<tbb::global_control> gc;
    if (o.threads > 0) {
      gc.emplace(tbb::global_control::max_allowed_parallelism, static_cast<size_t>(o.threads));
    }
    for (size_t mi = 0; mi < plan_.smoothing.size(); ++mi) {
      const PlannedSmoothing& m = plan_.smoothing[mi];
      struct Block {
        const MappedFile* map;
        const PlannedTensor* t;
        uint64_t r0, r1;
      };
      std::vector<Block> blocks;
      uint64_t bytes = 0;
      bool keepable = source.map != nullptr;
      for (size_t k = 0; k < m.balance.size(); ++k) {
        const PlannedTensor& t = plan_.tensors[m.tensors[k]];
        bytes += t.src_bytes;
        keepable &= !plan_.shards[t.shard].already_done;
      }
      const bool keep = keepable && kept_ + bytes <= source.keep_bytes;
      for (size_t k = 0; k < m.balance.size(); ++k) {
        const PlannedTensor& t = plan_.tensors[m.tensors[k]];
        const MappedFile* map = nullptr;
        if (source.map) {
          QUENCH_ASSIGN_OR_RETURN(map, source.map(t.shard));
        } else {
          QUENCH_ASSIGN_OR_RETURN(map, Map(t.shard));
        }
        // Ask for the whole mapping's pages first: a cold read is then one deep queue.
        map->Prefetch(t.src_offset, t.src_bytes);
        const uint64_t row_bytes = t.shape[1] * (DTypeBits(t.dtype) / 8);
        const uint64_t rows = std::max<uint64_t>(1, kBlockBytes / std::max<uint64_t>(1, row_bytes));
        for (uint64_t r0 = 0; r0 < t.shape[0]; r0 += rows) {
          blocks.push_back(Block{map, &t, r0, std::min(t.shape[0], r0 + rows)});
        }
      }
      if (keep) kept_ += bytes;
      const uint64_t n = plan_.tensors[m.tensors.front()].shape[1];
      std::vector<std::vector<float>> part(blocks.size());
      std::atomic<bool> finite{true};
      tbb::parallel_for(size_t{0}, blocks.size(), [&](size_t b) {
        const Block& bl = blocks[b];
        const uint64_t row_bytes = n * (DTypeBits(bl.t->dtype) / 8);
        const uint64_t off = bl.t->src_offset + bl.r0 * row_bytes;
        part[b].assign(n, 0.f);
        if (!ColumnAbsMax(bl.map->data() + off, bl.t->dtype, bl.r1 - bl.r0, n, part[b].data())) {
          finite = false;
        }
        if (!keep) bl.map->Release(off, (bl.r1 - bl.r0) * row_bytes);
      });
      if (!finite) {
        return Error(ErrorCode::kNonFinite, "SmoothQuant: a balance weight of " + m.smooth +
                                                "'s mapping holds NaN or Inf");
      }
      std::vector<float> absmax(n, 0.f);
      for (const std::vector<float>& p : part) {
        for (uint64_t j = 0; j < n; ++j) absmax[j] = std::max(absmax[j], p[j]);
      }
      std::vector<double> scales;
      QUENCH_RETURN_IF_ERROR(SmoothQuant(stats, o, m, absmax, &scales));
      Fold(mi, std::move(scales));
    }
    return Status::Ok();
  }

  // Mapping mi's scales folded into its tensors' transforms: the balance layers' columns
  // multiplied; the smooth layer's weight (a norm's elements, a linear's last n rows) and
  // bias divided.
  void Fold(size_t mi, std::vector<double> scales) {
    const PlannedSmoothing& m = plan_.smoothing[mi];
    auto shared = std::make_shared<const std::vector<double>>(std::move(scales));
    const auto shared32 = F32Scales(*shared);
    for (size_t k = 0; k < m.tensors.size(); ++k) {
      const size_t t = m.tensors[k];
      const PlannedTensor& pt = plan_.tensors[t];
      SmoothOp op{SmoothOp::kMulCols, shared, 0, shared32};
      if (k >= m.balance.size()) {
        op.kind = pt.shape.size() == 2 ? SmoothOp::kDivRows : SmoothOp::kDivElems;
        if (pt.shape.size() == 2) op.row_offset = pt.shape[0] - shared->size();
      }
      ops_[t].push_back(op);
    }
    const auto [lo, hi] = std::minmax_element(shared->begin(), shared->end());
    results_[mi].min_scale = *lo;
    results_[mi].max_scale = *hi;
  }

  uint64_t KeptBytes() const override { return kept_; }

  Result<const MappedFile*> Map(size_t shard) {
    auto& map = maps_[shard];
    if (!map) {
      QUENCH_ASSIGN_OR_RETURN(MappedFile f, MappedFile::Open(plan_.shards[shard].src_path));
      map = std::make_shared<MappedFile>(std::move(f));
    }
    return map.get();
  }

  // One field of the mapping's site, the expert's slice for a per-expert site.
  Result<std::vector<double>> Field(const Statistics& stats, const PlannedSmoothing& m,
                                    const std::string& field, size_t per_expert) {
    std::vector<double> v;
    {
      std::lock_guard<std::mutex> lock(stats_mu_);  // Statistics maps its files on first use
      QUENCH_ASSIGN_OR_RETURN(v, stats.ReadField(m.site, field));
    }
    if (!m.expert) return v;
    const size_t e = *m.expert;
    if ((e + 1) * per_expert > v.size()) {
      return Error(ErrorCode::kInvalidInput, "statistics: site " + m.site + "'s " + field +
                                                 " is shorter than its experts");
    }
    return std::vector<double>(v.begin() + e * per_expert, v.begin() + (e + 1) * per_expert);
  }

  // The mapping's scales from its balance columns' max |W| and the statistics' ranges.
  Status SmoothQuant(const Statistics& stats, const ConvertOptions& o, const PlannedSmoothing& m,
                     const std::vector<float>& absmax, std::vector<double>* out) {
    const uint64_t n = absmax.size();
    QUENCH_ASSIGN_OR_RETURN(std::vector<double> mn, Field(stats, m, "min", n));
    QUENCH_ASSIGN_OR_RETURN(std::vector<double> mx, Field(stats, m, "max", n));
    std::vector<float> fmn(mn.begin(), mn.end()), fmx(mx.begin(), mx.end());
    for (uint64_t j = 0; j < n; ++j) {
      if (!std::isfinite(fmn[j]) || !std::isfinite(fmx[j])) {
        return Error(ErrorCode::kInvalidInput,
                     "statistics: site " + m.site + " never saw channel " + std::to_string(j) +
                         " (min/max not finite); SmoothQuant needs every channel's range");
      }
    }
    const std::vector<float> s = SmoothQuantScales(plan_.tensors[m.tensors.front()].dtype,
                                                   o.smoothing_strength, fmn, fmx, absmax);
    out->assign(s.begin(), s.end());
    return Status::Ok();
  }

  Status Awq(const Statistics& stats, const ConvertOptions& o, const PlannedSmoothing& m,
             const std::vector<AwqLayer>& layers, PlannedSmoothing* result,
             std::vector<double>* out) {
    const uint64_t n = layers.front().cols;
    QUENCH_ASSIGN_OR_RETURN(std::vector<double> count, Field(stats, m, "count", 1));
    QUENCH_ASSIGN_OR_RETURN(std::vector<double> sum_abs, Field(stats, m, "sum_abs", n));
    if (count.empty() || count[0] <= 0) {
      return Error(ErrorCode::kInvalidInput, "statistics: site " + m.site + " saw no tokens");
    }
    // x_sum / count: the reference's f32 sum over f32 count.
    std::vector<float> x_mean(n);
    for (uint64_t j = 0; j < n; ++j) x_mean[j] = float(sum_abs[j]) / float(count[0]);
    const bool full = m.loss_kind == "full Hessian";
    std::vector<double> h;
    if (full) {
      QUENCH_ASSIGN_OR_RETURN(std::vector<double> packed, Field(stats, m, "hessian", n * (n + 1) / 2));
      h.assign(n * n, 0.0);
      size_t k = 0;
      for (uint64_t i = 0; i < n; ++i) {
        for (uint64_t j = i; j < n; ++j, ++k) h[i * n + j] = h[j * n + i] = packed[k];
      }
    } else {
      QUENCH_ASSIGN_OR_RETURN(h, Field(stats, m, "sum_x2", n));
    }
    QUENCH_ASSIGN_OR_RETURN(DuoScaling duo, ParseDuoScaling(o.awq_duo_scaling));
    QUENCH_ASSIGN_OR_RETURN(AwqSearchKind search, ParseAwqSearch(o.awq_search));
    // Pruned: the report gives only the chosen loss and RTN's, which pruning keeps.
    auto r = AwqSearch(layers, x_mean, h, full, count[0], o.awq_n_grid, duo, /*prune=*/true,
                       search);
    if (!r.ok()) {
      return Error(r.status().code(), r.status().message() + " (mapping of " + m.smooth + ")");
    }
    result->ratio = r->ratio;
    result->duo = r->duo;
    result->loss = r->loss;
    result->loss_rtn = r->loss_rtn;
    result->search = r->search == AwqSearchKind::kScreened ? "screened" : "exact";
    result->rtn_exact = r->rtn_exact;
    result->finalists = r->finalists;
    *out = std::move(r->scales);
    return Status::Ok();
  }

  bool Takes(size_t) const override { return false; }
  Status Prepare(size_t) override { return Status::Ok(); }
  bool Quantize(size_t, const WeightChunk&, const ChunkOutputs&) override { return false; }
  void Done(size_t) override {}

  bool Transforms(size_t t) const override {
    return !ops_[t].empty() && plan_.tensors[t].action == TensorAction::kQuantize;
  }
  const uint8_t* TransformRows(size_t t, uint64_t row0, const WeightChunk& in) override {
    thread_local std::vector<uint8_t> rows;
    const uint64_t bytes = in.rows * in.cols * (DTypeBits(in.dtype) / 8);
    rows.resize(bytes);
    ApplySmoothOpsFrom(ops_[t], in.dtype, in.cols, row0 * in.cols, in.rows * in.cols, in.data,
                       rows.data());
    return rows.data();
  }
  // A balance layer of one mapping only, its factors f32 values (SmoothQuant's always are):
  // the kernel multiplies as ApplySmoothOpsFrom's f32 path does (src/schemes/int.cc).
  const float* ColumnFactors(size_t t) const override {
    const std::vector<SmoothOp>& ops = ops_[t];
    if (ops.size() != 1 || ops[0].kind != SmoothOp::kMulCols || !ops[0].s32 ||
        plan_.tensors[t].action != TensorAction::kQuantize) {
      return nullptr;
    }
    return ops[0].s32->data();
  }
  bool RewritesCopy(size_t t) const override {
    return !ops_[t].empty() && plan_.tensors[t].action == TensorAction::kCopy;
  }
  void RewriteCopy(size_t t, uint64_t begin, uint8_t* data, uint64_t len) override {
    const PlannedTensor& pt = plan_.tensors[t];
    const uint64_t esz = DTypeBits(pt.dtype) / 8;
    const uint64_t cols = pt.shape.size() == 2 ? pt.shape[1] : 1;
    ApplySmoothOps(ops_[t], pt.dtype, cols, begin / esz, len / esz, data);
  }

  ColumnScales InputScales() const override {
    ColumnScales out(ops_.size());
    for (size_t t = 0; t < ops_.size(); ++t) {
      std::vector<double> s;
      for (const SmoothOp& op : ops_[t]) {
        if (op.kind != SmoothOp::kMulCols) continue;
        if (s.empty()) s.assign(op.s->size(), 1.0);
        for (size_t j = 0; j < s.size(); ++j) s[j] *= (*op.s)[j];
      }
      if (!s.empty()) out[t] = std::make_shared<const std::vector<double>>(std::move(s));
    }
    return out;
  }

  void Finish(Plan& plan) override {
    for (size_t i = 0; i < plan.smoothing.size(); ++i) {
      PlannedSmoothing& p = plan.smoothing[i];
      const PlannedSmoothing& r = results_[i];
      p.min_scale = r.min_scale;
      p.max_scale = r.max_scale;
      p.ratio = r.ratio;
      p.duo = r.duo;
      p.loss = r.loss;
      p.loss_rtn = r.loss_rtn;
      p.search = r.search;
      p.rtn_exact = r.rtn_exact;
      p.finalists = r.finalists;
    }
  }

 private:
  const Plan& plan_;
  std::vector<std::vector<SmoothOp>> ops_;  // per plan tensor, in mapping order
  std::vector<PlannedSmoothing> results_;  // per mapping: scale range, AWQ's choice
  std::map<size_t, std::shared_ptr<MappedFile>> maps_;  // source shards, for the pre-pass
  uint64_t kept_ = 0;  // balance bytes left mapped for the pipeline
  std::mutex stats_mu_;
};

}  // namespace

uint64_t SmoothBalanceBytes(const Plan& plan) {
  uint64_t bytes = 0;
  for (const PlannedSmoothing& m : plan.smoothing) {
    for (size_t k = 0; k < m.balance.size(); ++k) bytes += plan.tensors[m.tensors[k]].src_bytes;
  }
  return bytes;
}

Result<std::unique_ptr<SmoothRun>> MakeSmoothRun(const Plan& plan, const ConvertOptions& options,
                                                 const SmoothSource& source) {
  if (plan.smoothing.empty()) return std::unique_ptr<SmoothRun>();
  QUENCH_ASSIGN_OR_RETURN(Statistics stats, Statistics::Open(options.stats));
  auto run = std::make_unique<SmoothRunImpl>(plan);
  QUENCH_RETURN_IF_ERROR(run->Compute(stats, options, source));
  return std::unique_ptr<SmoothRun>(std::move(run));
}

}  // namespace quench::calib
