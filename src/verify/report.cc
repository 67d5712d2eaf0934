// VerifyReportJson: the report as JSON for `quench verify --json`.
#include <cmath>

#include "verify/verify.h"

namespace quench {
namespace {

// Figures rounded to 3 decimals; infinities as the strings "inf" / "-inf" (JSON has no
// literal for them), NaN as null.
JsonValue Figure(double d) {
  if (std::isinf(d)) return JsonValue(d > 0 ? "inf" : "-inf");
  if (std::isnan(d)) return JsonValue();
  return JsonValue(std::round(d * 1000) / 1000);
}

JsonValue SummaryJson(const VerifyReport& r) {
  JsonValue sum = JsonValue::MakeObject();
  sum.Set("shards", JsonValue(r.shards));
  sum.Set("tensors", JsonValue(r.tensors));
  sum.Set("modules_quantized", JsonValue(r.modules_quantized));
  sum.Set("tensors_copied", JsonValue(r.tensors_copied));
  sum.Set("tensors_pruned", JsonValue(r.tensors_pruned));
  sum.Set("tensors_decoded", JsonValue(r.tensors_decoded));
  sum.Set("static_scales_checked", JsonValue(r.static_scales_checked));
  sum.Set("bytes_compared", JsonValue(r.bytes_compared));
  sum.Set("problems", JsonValue(static_cast<uint64_t>(r.problems.size())));
  return sum;
}

JsonValue ProblemJson(const VerifyProblem& p) {
  JsonValue o = JsonValue::MakeObject();
  o.Set("file", JsonValue(p.file));
  o.Set("tensor", JsonValue(p.tensor));
  o.Set("rule", JsonValue(p.rule));
  o.Set("message", JsonValue(p.message));
  return o;
}

JsonValue QualityJson(const TensorQuality& q) {
  JsonValue o = JsonValue::MakeObject();
  o.Set("module", JsonValue(q.module));
  o.Set("file", JsonValue(q.file));
  o.Set("group", JsonValue(q.group));
  o.Set("kind", JsonValue(q.kind));
  o.Set("elements", JsonValue(q.elements));
  o.Set("sqnr_db", Figure(q.sqnr_db));
  o.Set("threshold_db", Figure(q.threshold_db));
  o.Set("worst_bound_ratio", Figure(q.worst_bound_ratio));
  o.Set("bound_violations", JsonValue(q.bound_violations));
  return o;
}

}  // namespace

JsonValue VerifyReportJson(const VerifyReport& r) {
  JsonValue root = JsonValue::MakeObject();
  root.Set("ok", JsonValue(r.ok()));
  root.Set("dst", JsonValue(r.dst.string()));
  root.Set("src", r.src ? JsonValue(r.src->string()) : JsonValue());
  root.Set("summary", SummaryJson(r));
  JsonValue probs = JsonValue::MakeArray();
  for (const VerifyProblem& p : r.problems) probs.Push(ProblemJson(p));
  root.Set("problems", std::move(probs));
  JsonValue ts = JsonValue::MakeArray();
  for (const TensorQuality& q : r.quality) ts.Push(QualityJson(q));
  root.Set("tensors", std::move(ts));
  return root;
}

}  // namespace quench
