#include "cli/worker_env.h"

#include <charconv>
#include <optional>
#include <vector>

namespace quench::cli {
namespace {

Status Usage(std::string msg) { return Error(ErrorCode::kUsage, std::move(msg)); }

// A whole decimal number (an optional leading '-' for Slurm's bounds), nothing else.
std::optional<long long> ParseInt(std::string_view s) {
  long long v = 0;
  const char* end = s.data() + s.size();
  auto [p, ec] = std::from_chars(s.data(), end, v);
  if (s.empty() || ec != std::errc() || p != end) return std::nullopt;
  return v;
}

struct Reader {
  const EnvLookup& env;
  const char* Get(const char* name) const { return env ? env(name) : nullptr; }
  // The variable as a number; kUsage when it is set but not a number.
  Result<std::optional<long long>> Int(const char* name) const {
    const char* v = Get(name);
    if (v == nullptr) return std::optional<long long>();
    auto n = ParseInt(v);
    if (!n) return Usage(std::string(name) + "='" + v + "' is not a whole number");
    return n;
  }
};

std::string Var(const char* name, long long v) {
  return std::string(name) + "=" + std::to_string(v);
}

// index and count checked against each other and kMaxWorkers.
Result<WorkerSlot> Slot(long long index, long long count, std::string source) {
  if (count < 1 || count > kMaxWorkers) {
    return Usage(source + ": the worker count must be 1 to " + std::to_string(kMaxWorkers));
  }
  if (index < 0 || index >= count) {
    return Usage(source + ": the worker index must be 0 to " + std::to_string(count - 1));
  }
  return WorkerSlot{static_cast<int>(index), static_cast<int>(count), std::move(source)};
}

// An index/count pair of one launcher; absent unless both are set.
Result<std::optional<WorkerSlot>> Pair(const Reader& r, const char* rank, const char* size,
                                       const char* launcher) {
  QUENCH_ASSIGN_OR_RETURN(auto i, r.Int(rank));
  QUENCH_ASSIGN_OR_RETURN(auto n, r.Int(size));
  if (!i || !n) return std::optional<WorkerSlot>();
  QUENCH_ASSIGN_OR_RETURN(
      WorkerSlot s,
      Slot(*i, *n, std::string(launcher) + " (" + Var(rank, *i) + ", " + Var(size, *n) + ")"));
  return std::optional<WorkerSlot>(std::move(s));
}

// Slurm job array: the worker is the task's position in MIN, MIN+STEP, ..., MAX (indices need
// not start at 0); COUNT must equal the number of positions, or the array is not evenly
// spaced (--array=1,4,9) and has no position to give.
Result<std::optional<WorkerSlot>> SlurmArray(const Reader& r) {
  QUENCH_ASSIGN_OR_RETURN(auto id, r.Int("SLURM_ARRAY_TASK_ID"));
  if (!id) return std::optional<WorkerSlot>();
  QUENCH_ASSIGN_OR_RETURN(auto min, r.Int("SLURM_ARRAY_TASK_MIN"));
  QUENCH_ASSIGN_OR_RETURN(auto max, r.Int("SLURM_ARRAY_TASK_MAX"));
  QUENCH_ASSIGN_OR_RETURN(auto step, r.Int("SLURM_ARRAY_TASK_STEP"));
  QUENCH_ASSIGN_OR_RETURN(auto count, r.Int("SLURM_ARRAY_TASK_COUNT"));
  if (!min || !max) {
    return Usage("Slurm job array: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_MIN or "
                 "SLURM_ARRAY_TASK_MAX is not; pass --worker I/N");
  }
  const long long st = step.value_or(1);
  const std::string where = "Slurm job array (" + Var("SLURM_ARRAY_TASK_ID", *id) + ", tasks " +
                            std::to_string(*min) + ".." + std::to_string(*max) + " step " +
                            std::to_string(st) + ")";
  if (st < 1 || *max < *min || *id < *min || *id > *max || (*id - *min) % st != 0) {
    return Usage(where + ": the task is not one of the array's indices");
  }
  const long long positions = (*max - *min) / st + 1;
  if (count && *count != positions) {
    return Usage(where + ": SLURM_ARRAY_TASK_COUNT=" + std::to_string(*count) +
                 " but the range holds " + std::to_string(positions) +
                 " indices, so the array is not evenly spaced and a task has no position; "
                 "submit with --array=A-B[:S], or pass --worker I/N");
  }
  QUENCH_ASSIGN_OR_RETURN(WorkerSlot s, Slot((*id - *min) / st, positions, where));
  return std::optional<WorkerSlot>(std::move(s));
}

// srun: the task's rank among its step's tasks. SLURM_STEP_NUM_TASKS is set by srun in each
// task; a batch script has SLURM_PROCID=0 and SLURM_NTASKS=N too but runs once (measured with
// slurm-wlm 22.05: `sbatch -n 3` gives the script no SLURM_STEP_NUM_TASKS), so SLURM_NTASKS
// alone must not make it worker 0 of N.
Result<std::optional<WorkerSlot>> Srun(const Reader& r) {
  return Pair(r, "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "srun");
}

}  // namespace

Result<WorkerSlot> ParseWorkerFlag(std::string_view text) {
  const size_t slash = text.find('/');
  const auto bad = [&] {
    return Usage("--worker needs I/N: this worker's index from 0 and the number of workers "
                 "(e.g. --worker 0/4), not '" + std::string(text) + "'");
  };
  if (slash == std::string_view::npos) return bad();
  const auto i = ParseInt(text.substr(0, slash));
  const auto n = ParseInt(text.substr(slash + 1));
  if (!i || !n) return bad();
  return Slot(*i, *n, "--worker " + std::string(text));
}

Result<WorkerSlot> ResolveWorker(std::string_view worker_flag, int workers_flag,
                                 const EnvLookup& env) {
  if (workers_flag < 0 || workers_flag > kMaxWorkers) {
    return Usage("--workers must be 1 to " + std::to_string(kMaxWorkers));
  }
  if (!worker_flag.empty()) {
    QUENCH_ASSIGN_OR_RETURN(WorkerSlot s, ParseWorkerFlag(worker_flag));
    if (workers_flag > 0 && workers_flag != s.count) {
      return Usage("--worker " + std::string(worker_flag) + " and --workers " +
                   std::to_string(workers_flag) + " disagree on the number of workers");
    }
    return s;
  }
  const Reader r{env};
  std::vector<WorkerSlot> found;
  const auto add = [&](Result<std::optional<WorkerSlot>> s) -> Status {
    if (!s.ok()) return s.status();
    if (s->has_value()) found.push_back(std::move(**s));
    return Status::Ok();
  };
  QUENCH_RETURN_IF_ERROR(add(SlurmArray(r)));
  QUENCH_RETURN_IF_ERROR(add(Srun(r)));
  // Kubernetes indexed jobs export the index only; the count is spec.completions, which the
  // user passes as --workers.
  QUENCH_ASSIGN_OR_RETURN(auto k8s, r.Int("JOB_COMPLETION_INDEX"));
  if (k8s) {
    if (workers_flag == 0) {
      return Usage("Kubernetes indexed job (" + Var("JOB_COMPLETION_INDEX", *k8s) +
                   ") but no --workers N: Kubernetes does not export the number of "
                   "completions; pass --workers with the job's spec.completions");
    }
    QUENCH_ASSIGN_OR_RETURN(
        WorkerSlot s, Slot(*k8s, workers_flag,
                           "Kubernetes indexed job (" + Var("JOB_COMPLETION_INDEX", *k8s) +
                               ", --workers " + std::to_string(workers_flag) + ")"));
    found.push_back(std::move(s));
  }
  QUENCH_RETURN_IF_ERROR(add(Pair(r, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "Open MPI")));
  QUENCH_RETURN_IF_ERROR(add(Pair(r, "PMI_RANK", "PMI_SIZE", "MPICH/Hydra/Cray PMI")));
  QUENCH_RETURN_IF_ERROR(add(Pair(r, "RANK", "WORLD_SIZE", "torchrun")));

  // One task is no split: a batch script's own environment, a single srun task.
  std::erase_if(found, [](const WorkerSlot& s) { return s.count == 1; });
  if (found.empty()) {
    if (workers_flag > 1) {
      return Usage("--workers " + std::to_string(workers_flag) +
                   " but nothing says which worker this is: pass --worker I/N, or run as a "
                   "Kubernetes indexed job (JOB_COMPLETION_INDEX)");
    }
    return WorkerSlot{};
  }
  for (const WorkerSlot& s : found) {
    if (s.index != found[0].index || s.count != found[0].count) {
      return Usage("launcher variables disagree about which worker this is: " + found[0].source +
                   " says " + std::to_string(found[0].index) + "/" +
                   std::to_string(found[0].count) + ", " + s.source + " says " +
                   std::to_string(s.index) + "/" + std::to_string(s.count) +
                   "; pass --worker I/N to say which one to use");
    }
  }
  if (workers_flag > 0 && workers_flag != found[0].count) {
    return Usage(found[0].source + " has " + std::to_string(found[0].count) +
                 " workers but --workers says " + std::to_string(workers_flag));
  }
  WorkerSlot s = found[0];
  for (size_t k = 1; k < found.size(); ++k) s.source += " and " + found[k].source;
  return s;
}

}  // namespace quench::cli
