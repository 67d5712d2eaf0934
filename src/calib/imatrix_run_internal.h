// What the imatrix_mse observer's planning (imatrix_plan.cc) and its run (imatrix_run.cc)
// share (no other file includes this header): a site's values for one weight, the key of a
// site's slice, the search format of a scheme, a tensor's rows as the search takes them, and
// the bound on searches kept ahead.
#ifndef QUENCH_CALIB_IMATRIX_RUN_INTERNAL_H_
#define QUENCH_CALIB_IMATRIX_RUN_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "calib/imatrix_mse.h"
#include "calib/stats.h"
#include "quench/plan.h"
#include "quench/scheme.h"
#include "quench/status.h"
#include "schemes/chunk.h"

namespace quench::calib {

// The chosen ranges of searches kept ahead for Prepare (ImatrixRunImpl::SearchedAbsMax) stay
// within this many bytes.
inline constexpr uint64_t kKeepBytes = uint64_t{256} << 20;

// A site's sum_x2 and count for one weight (the expert's slice of a per-expert site).
struct SiteValues {
  std::vector<double> sum_x2;
  double count = 0;
};

// Site `site`'s values for a weight of n input channels (expert `expert`'s slice where the
// site is per expert); refused where the arrays are short or sum_x2 holds NaN, Inf or
// negative values.
Result<SiteValues> ReadSite(const Statistics& s, const std::string& site,
                            std::optional<uint64_t> expert, uint64_t n);

// The key of a site's slice: "site" or "site#expert".
std::string SiteKey(const std::string& site, std::optional<uint64_t> expert);

// The search format of a scheme's weights; nullopt for schemes the observer does not cover
// (FP8, MXFP8: the reference's search would run, but they are not asked for here yet).
std::optional<ImatrixFormat> FormatOf(const SchemeInfo& s);

// n rows of tensor t at src as the search and the kernels take them (t's dtype, columns and
// quantization parameters).
WeightChunk RowsOf(const PlannedTensor& t, const uint8_t* src, size_t n);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_IMATRIX_RUN_INTERNAL_H_
