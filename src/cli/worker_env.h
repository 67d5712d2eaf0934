// Which part of a multi-machine conversion this process is: from --worker I/N, or from the
// variables the job engine sets (Slurm job arrays and srun steps, Kubernetes indexed jobs, Open
// MPI, MPICH/Hydra/Cray PMI, torchrun). Pure: the environment is read through a lookup function,
// so the rules are tested with fake environments (tests/test_worker_env.cc).
#ifndef QUENCH_CLI_WORKER_ENV_H_
#define QUENCH_CLI_WORKER_ENV_H_

#include <functional>
#include <string>
#include <string_view>

#include "quench/status.h"

namespace quench::cli {

struct WorkerSlot {
  int index = 0;       // 0-based
  int count = 0;       // 0: not a worker run (no flag, no launcher with more than one task)
  std::string source;  // what decided it, e.g. "Open MPI (OMPI_COMM_WORLD_RANK=1, ..._SIZE=3)"
};

// Returns the variable's value or nullptr (getenv's contract).
using EnvLookup = std::function<const char*(const char* name)>;

// The most workers one conversion may have (a bound on malformed input, not a design limit).
inline constexpr int kMaxWorkers = 100000;

// Parses "I/N" (0 <= I < N <= kMaxWorkers); kUsage otherwise.
Result<WorkerSlot> ParseWorkerFlag(std::string_view text);

// `worker_flag`: --worker's value or empty; `workers_flag`: --workers N or 0.
// The flag, when given, decides (launcher variables are then not read). Otherwise every
// launcher whose variables are set proposes (index, count); proposals of one task are
// ignored (a batch script, a single srun task); the others must agree, or the run is refused
// (kUsage) naming them. Kubernetes exports only JOB_COMPLETION_INDEX: its count is
// --workers. Malformed or out-of-range values are kUsage errors naming the variable.
Result<WorkerSlot> ResolveWorker(std::string_view worker_flag, int workers_flag,
                                 const EnvLookup& env);

}  // namespace quench::cli

#endif  // QUENCH_CLI_WORKER_ENV_H_
