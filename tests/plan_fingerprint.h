// The resume fingerprint of the first shard a conversion would write (pipeline/resume.h), for
// the tests that check which settings it covers: --resume must not keep a shard made otherwise.
#ifndef QUENCH_TESTS_PLAN_FINGERPRINT_H_
#define QUENCH_TESTS_PLAN_FINGERPRINT_H_

#include <doctest/doctest.h>

#include <string>

#include "pipeline/resume.h"
#include "quench/convert.h"

namespace quench::testing {

// `o` planned without errors, and shard 0's fingerprint.
inline std::string FirstShardFingerprint(const ConvertOptions& o) {
  auto plan = MakePlan(o);
  REQUIRE_MESSAGE(plan.ok(), plan.status().ToString());
  REQUIRE(plan->errors.empty());
  return ShardFingerprint(*plan, 0);
}

}  // namespace quench::testing

#endif  // QUENCH_TESTS_PLAN_FINGERPRINT_H_
