// Launcher variables -> worker slot (src/cli/worker_env.cc), driven by fake environments: the
// variables each launcher documents, set as it sets them.
#include <doctest/doctest.h>

#include <map>
#include <string>

#include "cli/worker_env.h"

namespace quench::cli {
namespace {

using Env = std::map<std::string, std::string>;

Result<WorkerSlot> Resolve(const Env& env, std::string_view flag = "", int workers = 0) {
  return ResolveWorker(flag, workers, [&env](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

void CheckSlot(const Result<WorkerSlot>& r, int index, int count, std::string_view source_has) {
  REQUIRE_MESSAGE(r.ok(), r.status().message());
  CHECK(r->index == index);
  CHECK(r->count == count);
  CHECK_MESSAGE(r->source.find(source_has) != std::string::npos, r->source);
}

void CheckUsage(const Result<WorkerSlot>& r, std::string_view message_has) {
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == ErrorCode::kUsage);
  CHECK_MESSAGE(r.status().message().find(message_has) != std::string::npos, r.status().message());
}

TEST_CASE("no flag and no launcher: the whole conversion") {
  const auto r = Resolve({{"HOME", "/root"}});
  REQUIRE(r.ok());
  CHECK(r->count == 0);
}

TEST_CASE("--worker I/N decides, and is checked") {
  CheckSlot(Resolve({}, "2/5"), 2, 5, "--worker 2/5");
  CheckSlot(Resolve({}, "0/1"), 0, 1, "--worker");
  // The flag wins over launcher variables (it is how a user settles a disagreement).
  CheckSlot(Resolve({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "3"}}, "0/2"), 0, 2,
            "--worker");
  for (const char* bad : {"5/5", "-1/3", "3", "a/3", "1/0", "1/", "/3", "1/3x", "1/100001"}) {
    CAPTURE(bad);
    CheckUsage(Resolve({}, bad), "");
  }
  CheckUsage(Resolve({}, "1/4", 3), "disagree");
}

TEST_CASE("Slurm job arrays: the position in MIN, MIN+STEP, ..., MAX") {
  // --array=0-3
  CheckSlot(Resolve({{"SLURM_ARRAY_TASK_ID", "2"}, {"SLURM_ARRAY_TASK_MIN", "0"},
                     {"SLURM_ARRAY_TASK_MAX", "3"}, {"SLURM_ARRAY_TASK_COUNT", "4"},
                     {"SLURM_ARRAY_TASK_STEP", "1"}}),
            2, 4, "Slurm job array");
  // --array=5-9: indices need not start at 0
  CheckSlot(Resolve({{"SLURM_ARRAY_TASK_ID", "5"}, {"SLURM_ARRAY_TASK_MIN", "5"},
                     {"SLURM_ARRAY_TASK_MAX", "9"}, {"SLURM_ARRAY_TASK_COUNT", "5"}}),
            0, 5, "SLURM_ARRAY_TASK_ID=5");
  // --array=10-30:10 (10, 20, 30): not contiguous
  CheckSlot(Resolve({{"SLURM_ARRAY_TASK_ID", "30"}, {"SLURM_ARRAY_TASK_MIN", "10"},
                     {"SLURM_ARRAY_TASK_MAX", "30"}, {"SLURM_ARRAY_TASK_STEP", "10"},
                     {"SLURM_ARRAY_TASK_COUNT", "3"}}),
            2, 3, "step 10");
  // --array=1,4,9: no even spacing, so no position
  CheckUsage(Resolve({{"SLURM_ARRAY_TASK_ID", "4"}, {"SLURM_ARRAY_TASK_MIN", "1"},
                      {"SLURM_ARRAY_TASK_MAX", "9"}, {"SLURM_ARRAY_TASK_STEP", "1"},
                      {"SLURM_ARRAY_TASK_COUNT", "3"}}),
             "not evenly spaced");
  // A task id off the step's grid, or outside the range.
  CheckUsage(Resolve({{"SLURM_ARRAY_TASK_ID", "15"}, {"SLURM_ARRAY_TASK_MIN", "10"},
                      {"SLURM_ARRAY_TASK_MAX", "30"}, {"SLURM_ARRAY_TASK_STEP", "10"}}),
             "not one of the array's indices");
  CheckUsage(Resolve({{"SLURM_ARRAY_TASK_ID", "x"}, {"SLURM_ARRAY_TASK_MIN", "0"},
                      {"SLURM_ARRAY_TASK_MAX", "3"}}),
             "SLURM_ARRAY_TASK_ID='x' is not a whole number");
  CheckUsage(Resolve({{"SLURM_ARRAY_TASK_ID", "1"}}), "SLURM_ARRAY_TASK_MIN");
  // The array's batch script also has SLURM_PROCID=0 and SLURM_NTASKS=1: one task, no conflict.
  CheckSlot(Resolve({{"SLURM_ARRAY_TASK_ID", "1"}, {"SLURM_ARRAY_TASK_MIN", "0"},
                     {"SLURM_ARRAY_TASK_MAX", "2"}, {"SLURM_ARRAY_TASK_COUNT", "3"},
                     {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}, {"SLURM_STEP_NUM_TASKS", "1"}}),
            1, 3, "Slurm job array");
  // A one-task array is no split.
  const auto one = Resolve({{"SLURM_ARRAY_TASK_ID", "7"}, {"SLURM_ARRAY_TASK_MIN", "7"},
                            {"SLURM_ARRAY_TASK_MAX", "7"}, {"SLURM_ARRAY_TASK_COUNT", "1"}});
  REQUIRE(one.ok());
  CHECK(one->count == 0);
}

TEST_CASE("srun: SLURM_PROCID among SLURM_STEP_NUM_TASKS") {
  // What `srun -n 3` gives each task (slurm-wlm 22.05, scripts/test-launchers).
  CheckSlot(Resolve({{"SLURM_PROCID", "2"}, {"SLURM_NTASKS", "3"}, {"SLURM_STEP_NUM_TASKS", "3"}}),
            2, 3, "srun (SLURM_PROCID=2, SLURM_STEP_NUM_TASKS=3)");
  // The step's own count wins over the allocation's.
  CheckSlot(Resolve({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "8"}, {"SLURM_STEP_NUM_TASKS", "2"}}),
            1, 2, "SLURM_STEP_NUM_TASKS=2");
  CheckUsage(Resolve({{"SLURM_PROCID", "3"}, {"SLURM_STEP_NUM_TASKS", "3"}}),
             "index must be 0 to 2");
  // What `sbatch -n 3` gives its batch script, which runs once: not a split.
  for (const Env& env :
       {Env{{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "3"}}, Env{{"SLURM_PROCID", "0"}}}) {
    const auto r = Resolve(env);
    REQUIRE(r.ok());
    CHECK(r->count == 0);
  }
}

TEST_CASE("Kubernetes indexed jobs: the index from the pod, the count from --workers") {
  CheckSlot(Resolve({{"JOB_COMPLETION_INDEX", "3"}}, "", 4), 3, 4, "Kubernetes");
  CheckUsage(Resolve({{"JOB_COMPLETION_INDEX", "3"}}), "--workers");
  CheckUsage(Resolve({{"JOB_COMPLETION_INDEX", "4"}}, "", 4), "index must be 0 to 3");
  // --workers with nothing saying which worker this is.
  CheckUsage(Resolve({}, "", 4), "nothing says which worker");
}

TEST_CASE("MPI launchers and torchrun") {
  CheckSlot(Resolve({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "3"}}), 1, 3,
            "Open MPI");
  CheckSlot(Resolve({{"PMI_RANK", "0"}, {"PMI_SIZE", "2"}}), 0, 2, "PMI");
  CheckSlot(Resolve({{"RANK", "7"}, {"WORLD_SIZE", "8"}}), 7, 8, "torchrun");
  CheckUsage(Resolve({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "three"}}),
             "OMPI_COMM_WORLD_SIZE='three'");
  // Launchers that agree (srun with PMI-2 sets both): one slot, both named.
  CheckSlot(Resolve({{"SLURM_PROCID", "1"},
                     {"SLURM_STEP_NUM_TASKS", "2"},
                     {"PMI_RANK", "1"},
                     {"PMI_SIZE", "2"}}),
            1, 2, "srun (SLURM_PROCID=1, SLURM_STEP_NUM_TASKS=2) and MPICH");
  // --workers agreeing with a launcher is fine; disagreeing is refused.
  CheckSlot(Resolve({{"RANK", "1"}, {"WORLD_SIZE", "2"}}, "", 2), 1, 2, "torchrun");
  CheckUsage(Resolve({{"RANK", "1"}, {"WORLD_SIZE", "2"}}, "", 3), "--workers says 3");
}

TEST_CASE("conflicting launcher variables are refused, naming both") {
  CheckUsage(Resolve({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "3"},
                      {"RANK", "0"}, {"WORLD_SIZE", "3"}}),
             "Open MPI (OMPI_COMM_WORLD_RANK=1, OMPI_COMM_WORLD_SIZE=3) says 1/3, torchrun "
             "(RANK=0, WORLD_SIZE=3) says 0/3");
  CheckUsage(Resolve({{"SLURM_ARRAY_TASK_ID", "1"},
                      {"SLURM_ARRAY_TASK_MIN", "0"},
                      {"SLURM_ARRAY_TASK_MAX", "3"},
                      {"SLURM_PROCID", "1"},
                      {"SLURM_STEP_NUM_TASKS", "2"}}),
             "pass --worker I/N");
  CheckUsage(Resolve({{"JOB_COMPLETION_INDEX", "0"}, {"PMI_RANK", "1"}, {"PMI_SIZE", "2"}}, "", 2),
             "disagree");
}

}  // namespace
}  // namespace quench::cli
