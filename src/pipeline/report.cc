#include "pipeline/report.h"

#include <sys/resource.h>

#include <cmath>

#include "calib/composite.h"
#include "format/quant_config.h"

namespace quench {
namespace {

JsonValue Strings(const std::vector<std::string>& v) {
  JsonValue a = JsonValue::MakeArray();
  for (const std::string& s : v) a.Push(JsonValue(s));
  return a;
}

const TensorResult kNoResult;  // before a run

JsonValue Shape(const std::vector<uint64_t>& shape) {
  JsonValue a = JsonValue::MakeArray();
  for (uint64_t d : shape) a.Push(JsonValue(d));
  return a;
}

// The recipe's groups and ignore lists as planned.
JsonValue RecipeJson(const ConvertOptions& options, const Plan& plan) {
  JsonValue recipe = JsonValue::MakeObject();
  if (!options.recipe.empty()) recipe.Set("file", JsonValue(options.recipe.string()));
  JsonValue groups = JsonValue::MakeArray();
  for (const PlannedGroup& g : plan.groups) {
    JsonValue o = JsonValue::MakeObject();
    o.Set("key", JsonValue(g.key));
    o.Set("targets", Strings(g.targets));
    o.Set("scheme", g.scheme ? JsonValue(g.scheme->name) : JsonValue("none"));
    if (g.scheme != nullptr) {
      o.Set("format", JsonValue(g.scheme->format));
      o.Set("weights", QuantArgsJson(EffectiveWeights(*g.scheme, g.params)));
    }
    o.Set("tensors", JsonValue(static_cast<uint64_t>(g.tensors)));
    groups.Push(std::move(o));
  }
  recipe.Set("groups", std::move(groups));
  recipe.Set("ignore", Strings(options.ignore));
  recipe.Set("default_ignore", JsonValue(options.default_ignore));
  recipe.Set("written_ignore", Strings(plan.config_ignore));
  return recipe;
}

// A quantized tensor's fields: its scheme, its error (after a run that measured it), its
// group, which algorithm or observer took it, and the tensors it is fused with.
void SetQuantized(const ConvertOptions& options, const Plan& plan, size_t ti,
                  const TensorResult& result, bool ran, JsonValue& o) {
  const PlannedTensor& t = plan.tensors[ti];
  const PlannedCalibration& cal = t.calib.value_or_default();
  o.Set("action", JsonValue("quantize"));
  o.Set("scheme", JsonValue(t.scheme->name));
  if (result.error_count > 0) {
    // Against the (pruned, if pruning) input the kernel saw; rows sampled 1 in 8 for
    // tensors of 1024 rows or more.
    JsonValue err = JsonValue::MakeObject();
    const double signal = result.error_signal, noise = result.error_noise;
    err.Set("sampled_elements", JsonValue(result.error_count));
    err.Set("relative_rmse", JsonValue(signal > 0 ? std::sqrt(noise / signal) : 0.0));
    err.Set("sqnr_db", noise > 0 && signal > 0
                           ? JsonValue(10 * std::log10(signal / noise))
                           : JsonValue());  // exact (or all zero): no finite SQNR
    o.Set("error", std::move(err));
  }
  o.Set("group", JsonValue(plan.groups[static_cast<size_t>(t.group)].key));
  if (calib::HasAlgorithm(options.algorithm, "gptq")) {
    // Which weights GPTQ took, from which site, and why the others were rounded to nearest.
    const bool gptq = !cal.site.empty() && cal.note.empty();
    o.Set("algorithm", JsonValue(gptq ? "gptq" : "rtn"));
    if (!cal.site.empty()) o.Set("stats_site", JsonValue(cal.site));
    if (!cal.note.empty()) o.Set("calibration_note", JsonValue(cal.note));
    if (gptq && ran) o.Set("gptq_loss", JsonValue(cal.loss));
  } else if (!cal.imatrix_site.empty()) {  // the imatrix_mse observer (src/calib/imatrix_run.h)
    o.Set("observer", JsonValue("imatrix_mse"));
    o.Set("stats_site", JsonValue(cal.imatrix_site));
    if (!cal.note.empty()) o.Set("calibration_note", JsonValue(cal.note));
  }
  if (t.fused_set >= 0 && plan.fused_sets[static_cast<size_t>(t.fused_set)].size() > 1) {
    JsonValue with = JsonValue::MakeArray();
    for (size_t k : plan.fused_sets[static_cast<size_t>(t.fused_set)]) {
      if (k != ti) with.Push(JsonValue(plan.tensors[k].name));
    }
    o.Set("fused_with", std::move(with));
  }
}

// A pruned tensor's fields: the pruning asked for, which algorithm took it, and (after a run)
// the sparsity it got.
void SetPruned(const ConvertOptions& options, const Plan& plan, const PlannedTensor& t,
               const TensorResult& result, bool ran, JsonValue& o) {
  const PlannedCalibration& cal = t.calib.value_or_default();
  const uint64_t n = t.shape[0] * t.shape[1];
  o.Set("prune", JsonValue(plan.prune.text));
  if (calib::HasAlgorithm(options.algorithm, "sparsegpt")) {
    // Which weights SparseGPT took, from which site, and why the others were pruned by
    // magnitude.
    const bool sgpt = !cal.site.empty();  // a failed factor: H^-1 = I, noted
    o.Set("prune_algorithm", JsonValue(sgpt ? "sparsegpt" : "magnitude"));
    if (!cal.site.empty()) o.Set("stats_site", JsonValue(cal.site));
    if (!cal.note.empty()) o.Set("calibration_note", JsonValue(cal.note));
    // (Composed with GPTQ, cal.loss is GPTQ's: reported as gptq_loss above.)
    if (sgpt && ran && !calib::HasAlgorithm(options.algorithm, "gptq")) {
      o.Set("sparsegpt_loss", JsonValue(cal.loss));
    }
  }
  if (ran) {
    o.Set("sparsity",
          JsonValue(n ? static_cast<double>(result.prune_zeroed) / static_cast<double>(n) : 0.0));
  }
}

// The report's totals over its tensors.
struct TensorTotals {
  uint64_t quantized = 0, copied = 0, decoded = 0, q_in = 0, q_out = 0;
};

// One tensor's entry: what it is, what it becomes, and why; counted into `totals`.
JsonValue TensorJson(const ConvertOptions& options, const Plan& plan, size_t ti, bool ran,
                     TensorTotals& totals) {
  const PlannedTensor& t = plan.tensors[ti];
  const TensorResult& result = plan.results.empty() ? kNoResult : plan.results[ti];
  const PlannedShard& ps = plan.shards[t.shard];
  JsonValue o = JsonValue::MakeObject();
  o.Set("name", JsonValue(t.name));
  o.Set("shard", JsonValue(ps.rel_name));
  o.Set("dtype", JsonValue(DTypeName(t.dtype)));
  o.Set("shape", Shape(t.shape));
  o.Set("bytes_in", JsonValue(t.src_bytes));
  uint64_t out_bytes = 0;
  JsonValue outs = JsonValue::MakeArray();
  for (size_t oi : t.outputs) {
    const PlannedOutput& po = ps.outputs[oi];
    out_bytes += po.nbytes;
    JsonValue ot = JsonValue::MakeObject();
    ot.Set("name", JsonValue(po.name));
    ot.Set("dtype", JsonValue(DTypeName(po.dtype)));
    ot.Set("shape", Shape(po.shape));
    ot.Set("bytes", JsonValue(po.nbytes));
    outs.Push(std::move(ot));
  }
  o.Set("bytes_out", JsonValue(out_bytes));
  if (t.source_scale) {
    // Stored quantized in the source: what kernels (or the output, decoding alone) read is
    // the decoded BF16 rows.
    o.Set("decoded_with", JsonValue(t.source_scale->name));
  }
  if (t.action == TensorAction::kQuantize) {
    ++totals.quantized;
    totals.q_in += t.src_bytes;
    totals.q_out += out_bytes;
    SetQuantized(options, plan, ti, result, ran, o);
  } else if (t.action == TensorAction::kPrune) {
    o.Set("action", JsonValue("prune"));
  } else if (t.action == TensorAction::kDecode) {
    ++totals.decoded;
    o.Set("action", JsonValue("decode"));
    o.Set("why", JsonValue(t.why));
  } else {
    ++totals.copied;
    o.Set("action", JsonValue("copy"));
    o.Set("why", JsonValue(t.why));
  }
  if (t.prune) SetPruned(options, plan, t, result, ran, o);
  o.Set("outputs", std::move(outs));
  return o;
}

// SmoothQuant / AWQ: one entry per mapping, with what the run chose (after a run).
JsonValue SmoothingJson(const ConvertOptions& options, const Plan& plan, bool ran) {
  JsonValue sm = JsonValue::MakeArray();
  for (const PlannedSmoothing& m : plan.smoothing) {
    JsonValue e = JsonValue::MakeObject();
    e.Set("algorithm", JsonValue(options.algorithm));
    e.Set("smooth", JsonValue(m.smooth));
    e.Set("balance", Strings(m.balance));
    e.Set("stats_site", JsonValue(m.site));
    if (ran) {
      e.Set("min_scale", JsonValue(m.min_scale));
      e.Set("max_scale", JsonValue(m.max_scale));
      if (!m.loss_kind.empty()) {
        e.Set("loss", JsonValue(m.loss_kind));
        e.Set("ratio", JsonValue(m.ratio));
        e.Set("duo_scaling", JsonValue(m.duo));
        e.Set("proxy_loss", JsonValue(m.loss));
        // RTN's loss is exact unless the screen dropped RTN: then its estimate on the row
        // sample, and proxy_loss_rtn_exact says so.
        e.Set("proxy_loss_rtn", JsonValue(m.loss_rtn));
        e.Set("proxy_loss_rtn_exact", JsonValue(m.rtn_exact));
        e.Set("search", JsonValue(m.search));
        if (m.search == "screened") e.Set("finalists", JsonValue(uint64_t{m.finalists}));
      }
    }
    sm.Push(std::move(e));
  }
  return sm;
}

// The pruning asked for, and (after a run) what it zeroed.
JsonValue PruningJson(const Plan& plan, const ConvertSummary* summary) {
  JsonValue pr = JsonValue::MakeObject();
  pr.Set("spec", JsonValue(plan.prune.text));
  pr.Set("structure", JsonValue(plan.prune.structure));
  pr.Set("granularity", JsonValue(plan.prune.per_tensor ? "tensor" : "row"));
  if (summary != nullptr) {
    pr.Set("tensors", JsonValue(summary->pruned_tensors));
    pr.Set("elements", JsonValue(summary->pruned_elements));
    pr.Set("zeros", JsonValue(summary->zeroed));
    pr.Set("sparsity",
           JsonValue(summary->pruned_elements ? static_cast<double>(summary->zeroed) /
                                                    static_cast<double>(summary->pruned_elements)
                                              : 0.0));
  }
  return pr;
}

// Each layer's kept experts and every expert's score (magnitude: its router row's L1 norm;
// reap: its mean saliency in the statistics, with the tokens routed to it).
JsonValue ExpertPruningJson(const PlannedExpertPrune& e) {
  JsonValue ep = JsonValue::MakeObject();
  ep.Set("fraction", JsonValue(e.fraction));
  ep.Set("metric", JsonValue(e.metric));
  ep.Set("config_key", JsonValue(e.config_key));
  ep.Set("tensors_removed", JsonValue(e.tensors_removed));
  ep.Set("bytes_removed", JsonValue(e.bytes_removed));
  JsonValue layers = JsonValue::MakeArray();
  for (const PlannedExpertLayer& l : e.layers) {
    JsonValue o = JsonValue::MakeObject();
    o.Set("router", JsonValue(l.router));
    o.Set("experts", JsonValue(l.experts));
    JsonValue kept = JsonValue::MakeArray(), scores = JsonValue::MakeArray();
    for (uint32_t k : l.kept) kept.Push(JsonValue(static_cast<uint64_t>(k)));
    for (double sc : l.scores) scores.Push(JsonValue(sc));
    o.Set("kept", std::move(kept));
    o.Set("scores", std::move(scores));
    if (!l.tokens.empty()) {  // reap: tokens routed to each expert in the statistics
      JsonValue tokens = JsonValue::MakeArray();
      for (int64_t t : l.tokens) tokens.Push(JsonValue(t));
      o.Set("tokens", std::move(tokens));
    }
    layers.Push(std::move(o));
  }
  ep.Set("layers", std::move(layers));
  return ep;
}

}  // namespace

uint64_t PeakRssBytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

JsonValue BuildReport(const ConvertOptions& options, const Plan& plan,
                      const ConvertSummary* summary, const Status& status, bool dry_run) {
  const bool ran = summary != nullptr;
  TensorTotals counts;
  JsonValue tensors = JsonValue::MakeArray();
  for (size_t ti = 0; ti < plan.tensors.size(); ++ti) {
    tensors.Push(TensorJson(options, plan, ti, ran, counts));
  }
  JsonValue shards = JsonValue::MakeArray();
  for (const PlannedShard& ps : plan.shards) {
    JsonValue s = JsonValue::MakeObject();
    s.Set("name", JsonValue(ps.rel_name));
    s.Set("bytes", JsonValue(ps.file_size));
    s.Set("tensors", JsonValue(static_cast<uint64_t>(ps.outputs.size())));
    shards.Push(std::move(s));
  }
  JsonValue totals = JsonValue::MakeObject();
  totals.Set("tensors_quantized", JsonValue(counts.quantized));
  totals.Set("tensors_copied", JsonValue(counts.copied));
  totals.Set("tensors_decoded", JsonValue(counts.decoded));
  totals.Set("bytes_in", JsonValue(plan.bytes_in));
  totals.Set("bytes_out", JsonValue(plan.bytes_out));
  totals.Set("quantized_bytes_in", JsonValue(counts.q_in));
  totals.Set("quantized_bytes_out", JsonValue(counts.q_out));
  JsonValue errors = JsonValue::MakeArray();
  for (const Status& e : plan.errors) errors.Push(JsonValue(e.ToString()));

  JsonValue r = JsonValue::MakeObject();
  r.Set("quench_version", JsonValue(QUENCH_VERSION));
  r.Set("dry_run", JsonValue(dry_run));
  r.Set("source", JsonValue(plan.src.string()));
  r.Set("destination", JsonValue(options.dst.string()));
  r.Set("recipe", RecipeJson(options, plan));
  r.Set("tensors", std::move(tensors));
  r.Set("shards", std::move(shards));
  r.Set("totals", std::move(totals));
  r.Set("notes", Strings(plan.notes));
  if (!plan.smoothing.empty()) r.Set("smoothing", SmoothingJson(options, plan, ran));
  r.Set("errors", std::move(errors));
  r.Set("status", JsonValue(status.ok() ? "ok" : std::string(ErrorCodeName(status.code()))));
  r.Set("error", status.ok() ? JsonValue() : JsonValue(status.message()));
  if (plan.prune.kind != PlannedPrune::kNone) r.Set("pruning", PruningJson(plan, summary));
  if (plan.expert_prune) r.Set("expert_pruning", ExpertPruningJson(*plan.expert_prune));
  if (summary != nullptr) {
    r.Set("wall_seconds", JsonValue(summary->seconds));
    r.Set("chunk_bytes", JsonValue(summary->chunk_bytes));
    r.Set("chunks_in_flight", JsonValue(static_cast<int64_t>(summary->tokens)));
  }
  if (!dry_run) {
    r.Set("peak_rss_bytes", JsonValue(PeakRssBytes()));
    r.Set("memory_limit_bytes", JsonValue(options.memory_limit));
  }
  return r;
}

}  // namespace quench
