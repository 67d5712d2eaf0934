// `quench convert --dry-run`: the plan printed, without reading a weight (dry_run.cc).
#ifndef QUENCH_CLI_DRY_RUN_H_
#define QUENCH_CLI_DRY_RUN_H_

#include "quench/convert.h"

namespace quench::cli {

// The plan as a table on stdout, notes (not with `quiet`) and errors on stderr; the exit code a
// real run would stop with (0 when the plan has no errors).
int PrintDryRun(const ConvertOptions& o, bool quiet);

}  // namespace quench::cli

#endif  // QUENCH_CLI_DRY_RUN_H_
