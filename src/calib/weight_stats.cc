#include "calib/weight_stats.h"

#include <string>

#include "plan/expert_prune.h"

namespace quench::calib {

WeightStats FindWeightStats(const Statistics& stats, const Plan& plan, const PlannedTensor& t) {
  WeightStats out;
  const std::string name =
      plan.expert_prune ? SourceExpertName(*plan.expert_prune, t.name) : t.name;
  auto it = stats.consumers().find(name);
  if (it == stats.consumers().end()) return out;
  out.consumer = &it->second;
  // The statistics must be this model's: the manifest records each weight's shape.
  const JsonValue* model = stats.manifest().Find("model");
  const JsonValue* weights = model != nullptr ? model->Find("weights") : nullptr;
  const JsonValue* shape = weights != nullptr ? weights->Find(name) : nullptr;
  bool same = shape != nullptr && shape->is_array() && shape->as_array().size() == t.shape.size();
  for (size_t k = 0; same && k < t.shape.size(); ++k) {
    same = shape->as_array()[k].is_int() &&
           static_cast<uint64_t>(shape->as_array()[k].as_int()) == t.shape[k];
  }
  out.shape_matches = same && t.shape.size() == 2 &&
                      stats.sites().at(it->second.site).in_features == t.shape[1];
  return out;
}

}  // namespace quench::calib
