// Resume markers: once an output shard is durable under its final name, a marker in
// DST/.quench-resume/<shard>.json records what it was made from (ShardFingerprint). --resume
// keeps a shard whose file has the planned size and whose marker matches what this run would
// write, and redoes the others. The folder is removed when a run completes.
#ifndef QUENCH_PIPELINE_RESUME_H_
#define QUENCH_PIPELINE_RESUME_H_

#include <cstdint>
#include <filesystem>
#include <string>

#include "quench/convert.h"
#include "quench/plan.h"
#include "quench/status.h"

namespace quench {

inline constexpr const char* kResumeDir = ".quench-resume";
// Held (an FsLock) by a single run while it writes DST: a second run into the same DST
// (a retried pipeline step, --resume or --overwrite while the first is alive) would write the
// same temporary files and remove each other's.
inline constexpr const char* kRunLock = ".quench-run.lock";

std::filesystem::path ResumeMarkerPath(const std::filesystem::path& dst, const std::string& rel);

// The marker's contents for shard `s` (valid once the pre-pass has run).
std::string ShardFingerprint(const Plan& plan, size_t s);
// Its length, known before the pre-pass and without hashing the shard's tensors.
size_t ShardMarkerBytes(const Plan& plan, size_t s);

// The whole plan's fingerprint from headers alone (16 hex digits): source shards' sizes and
// headers, output layout, every tensor's action and scheme, the published files, quench's
// version. Workers of one conversion must agree on it.
std::string PlanFingerprint(const Plan& plan);

// Writes `fingerprint` to `marker` atomically (a temporary name, then rename), creating its
// folder. `durable`: fsynced before the rename, as a worker's markers must be (its part
// vouches for them). A marker written without fsync may be lost or left empty by a crash;
// its shard then does not match and --resume converts it again: slower, never wrong. Single
// runs write them so because the run removes them when it publishes the folder, and unlinking
// a file that was never written back frees no disk block: removing fsynced markers was most
// of a short run's tail (bench/README.md, "the run's tail").
Status WriteResumeMarker(const std::filesystem::path& marker, const std::string& fingerprint,
                         bool durable = true);

// --resume: sets PlannedShard::already_done for every shard that is complete and matches
// (plan.dst resolved, the pre-pass run), removes the interrupted run's temporary files, and
// returns how many shards are kept. A shard without a marker in a folder that a finished run
// left (PlannedFilesInPlace, and the shard's size and header bytes as planned) is kept too:
// a finished run removes its markers, and --resume on its folder must not redo it. Shards
// already marked done (another worker's) are left alone; with `own_shards_only` only the
// temporary files of this run's shards are removed (a worker shares DST with others still
// writing theirs).
uint64_t MarkCompleteShards(Plan& plan, const ConvertCallbacks& callbacks,
                            bool own_shards_only = false);

// True when every file of the plan other than the shards (config.json, the index, the
// copied files) is in DST with the bytes this run would write: the last things a run
// publishes, so together with complete shards they make a finished folder.
bool PlannedFilesInPlace(const Plan& plan);

}  // namespace quench

#endif  // QUENCH_PIPELINE_RESUME_H_
