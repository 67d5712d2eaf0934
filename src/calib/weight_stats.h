// Finding a planned weight's entry in activation statistics: shared by every algorithm that
// reads them (GPTQ, SparseGPT, imatrix_mse, Wanda, static activation scales).
#ifndef QUENCH_CALIB_WEIGHT_STATS_H_
#define QUENCH_CALIB_WEIGHT_STATS_H_

#include "calib/stats.h"
#include "quench/plan.h"

namespace quench::calib {

struct WeightStats {
  const StatsConsumer* consumer = nullptr;  // null: the statistics have no entry for it
  // Whether the manifest's recorded shape and the site's width are the weight's (false:
  // another model's statistics). Meaningful only with a consumer.
  bool shape_matches = false;
};

// Weight t's entry, looked up under its source name: statistics name the source's experts,
// and expert pruning renumbers the survivors.
WeightStats FindWeightStats(const Statistics& stats, const Plan& plan, const PlannedTensor& t);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_WEIGHT_STATS_H_
