// One conversion over many machines: which output shards each worker writes, the part
// marker a worker leaves when its shards are durable, and finalize, which publishes the
// folder once every part is present and every worker planned the same conversion.
//
// DST/.quench-parts/part-IIIII-of-NNNNN.json (one per worker, written only by it) records the
// worker's plan fingerprint (PlanFingerprint: source headers, recipe and options as planned,
// output layout, quench's version), the shards it owns with each one's resume marker, size and
// mtime, and what finalize publishes (the other files, the index, config.json). A worker also
// holds DST/.quench-parts/worker-IIIII.lock (FsLock) while it runs, so two workers given the
// same index never write the same files; finalize holds finalize.lock.
#ifndef QUENCH_PIPELINE_WORKERS_H_
#define QUENCH_PIPELINE_WORKERS_H_

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "format/json.h"
#include "pipeline/fs_lock.h"
#include "quench/convert.h"
#include "quench/plan.h"
#include "quench/status.h"

namespace quench {

inline constexpr const char* kPartsDir = ".quench-parts";

// The worker (0..workers-1) that writes each shard, balanced by bytes: shards in decreasing
// cost (ties: lower index first) each go to the worker with the least cost so far (ties: the
// lower index) — the LPT rule, within 4/3 of the best balance. A pure function of the costs.
std::vector<int> AssignShards(const std::vector<uint64_t>& costs, int workers);

// A shard's cost: its source file's bytes (what it reads; what it writes is in proportion for
// one scheme). Depending on the source alone, the share is the same whatever the options, so
// a worker started with the wrong scheme overwrites only shards of its own share.
std::vector<uint64_t> ShardCosts(const Plan& plan);

// "worker I/N", as every message names a worker.
std::string WorkerName(int index, int count);

std::filesystem::path PartPath(const std::filesystem::path& dst, int index, int count);
std::filesystem::path WorkerLockPath(const std::filesystem::path& dst, int index);
// Whether a worker is writing DST now (a worker lock held, not stale): `*who` then says
// which lock file and its holder ("worker-00001.lock: host H, pid P, since T"). kIo where
// DST's parts folder exists but cannot be listed.
Result<bool> AnyWorkerRunning(const std::filesystem::path& dst, std::string* who);

// A part marker as read back.
struct PartShard {
  std::string name;
  uint64_t bytes = 0;
  int64_t mtime_ns = 0;   // of the shard when the worker finished
  std::string marker;     // its resume marker's contents
  uint64_t header_bytes = 0;    // its safetensors header (names, dtypes, shapes, offsets)
  std::string header_fnv1a64;   // and that header's hash
};
struct PartRecord {
  std::filesystem::path path;
  int index = 0, count = 0;
  std::string version, fingerprint, description, launcher;
  std::vector<std::string> plan_shards;   // every output shard of the plan, in plan order
  std::vector<uint64_t> plan_costs;       // ShardCosts, to recompute the assignment
  std::vector<PartShard> shards;          // the ones this worker wrote
  std::vector<PlannedFile> files;         // what finalize publishes, in order
  JsonValue summary;                      // the worker's run (bytes, tensors, seconds)
};

// The part marker of worker `index` of `count` for `plan` (its own shards written, their
// resume markers in place): written atomically.
Status WritePart(const Plan& plan, int index, int count, const std::string& description,
                 const std::string& launcher, const JsonValue& summary);

Result<PartRecord> ReadPart(const std::filesystem::path& path);

// Whether the worker's recorded shards are still as it left them (size, mtime, header bytes,
// resume marker);
// otherwise an error naming the first shard that is not.
Status CheckPartShards(const std::filesystem::path& dst, const PartRecord& part);

struct FinalizeResult {
  int workers = 0;
  size_t shards = 0;
  bool published = false;   // false: another process holds finalize.lock (`holder` says who)
  bool already_published = false;  // DST was published before this call (nothing done but cleanup)
  std::string holder;
  std::vector<JsonValue> summaries;  // each worker's, in worker order
};

// On a DST already published (its config file in place: a stopped finalizer's cleanup left
// to do) removes the parts and markers and returns published and already_published.
// Otherwise checks that parts 0..count-1 are all present (count 0: the one count the parts agree
// on), planned with one fingerprint, and that every shard is as its worker left it; then writes the
// other files, the index and config.json (each atomically, config.json last) and removes the
// parts and resume markers. A missing, corrupt or mismatched part is named with the worker that
// owes it, and nothing is published (kInvalidInput).
Result<FinalizeResult> FinalizeParts(const std::filesystem::path& dst, int count,
                                     const ConvertCallbacks& callbacks);

// A published folder's last step: DST's resume markers and worker parts (finalize.lock with
// them) removed. What cannot be removed goes to callbacks.leftover (the folder is complete and
// the next run or finalize removes it); kIo only where DST cannot be synced.
Status RemoveMarkersAndParts(const std::filesystem::path& dst, const ConvertCallbacks& callbacks);

// Releases a lock a run held to its successful end (FsLock::Release); a lock file left behind
// goes to callbacks.leftover.
void ReleaseLock(std::unique_ptr<FsLock>& lock, const ConvertCallbacks& callbacks);

// FinalizeParts, waiting while another process holds finalize.lock, which publishes or gives
// up (a `quench finalize` run before the last part was in finds it missing: exit 3, nothing
// published), and then trying again; up to kFinalizeWaitSeconds (a dead holder's lock is
// taken over: FsLock). `published` is false only where the wait ran out.
inline constexpr int kFinalizeWaitSeconds = 600;
Result<FinalizeResult> FinalizePartsWaiting(const std::filesystem::path& dst, int count,
                                            const ConvertCallbacks& callbacks);

// A published DST whose finalizer was killed after config.json and before its cleanup still
// holds the parts and resume markers: removes them, as that finalizer's last step would have,
// unless a finalizer holds finalize.lock now (it removes them itself). Without
// DST/.quench-parts, only markers a finalizer could not remove are left to remove.
Status RemoveFinalizeLeftovers(const std::filesystem::path& dst, const ConvertCallbacks& callbacks);

// Set up a worker's run (worker_run.cc): refuses a DST finished by another conversion (or,
// with --overwrite, unpublishes it), takes the worker's lock (busy: the same index runs
// elsewhere, kUsage), marks every shard outside the worker's share already_done, and finds a
// part this worker completed before (a rerun: nothing to do).
struct WorkerStart {
  std::unique_ptr<FsLock> lock;
  bool finalized = false;      // DST is already this conversion, published
  bool part_complete = false;  // this worker's part is in and its shards unchanged
  size_t owned = 0;            // shards in this worker's share
  std::vector<bool> mine;      // per shard: in this worker's share
};
Result<WorkerStart> StartWorker(Plan& plan, const ConvertOptions& options,
                                const ConvertCallbacks& callbacks);

// The options that decide the output, in words, for messages about mismatched parts.
std::string DescribeOptions(const ConvertOptions& options);

// A worker's summary as recorded in its part (and merged by finalize's report).
JsonValue SummaryJson(const ConvertSummary& summary, int index, int count,
                      const std::string& launcher);

// After a worker's part is written: if every part of `count` is in (each looked up by name,
// which NFS revalidates, rather than from a cached listing), finalizes (FinalizePartsWaiting);
// returns whether this process published DST (or found it published).
Result<bool> FinalizeIfLast(const std::filesystem::path& dst, int index, int count,
                            const ConvertCallbacks& callbacks);

}  // namespace quench

#endif  // QUENCH_PIPELINE_WORKERS_H_
