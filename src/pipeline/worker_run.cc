// A worker's side of a conversion split over machines: starting (StartWorker) and, once its
// part is in, finalizing when it is the last (FinalizeIfLast).
#include <system_error>

#include "format/file_io.h"
#include "pipeline/resume.h"
#include "pipeline/workers.h"

namespace quench {
namespace fs = std::filesystem;

namespace {

// Whether DST is already this conversion, published: every file the plan publishes holds
// what it would hold, and every shard has its planned size.
bool IsPublished(const Plan& plan) {
  if (!PlannedFilesInPlace(plan)) return false;
  std::error_code ec;
  for (const PlannedShard& ps : plan.shards) {
    if (fs::file_size(plan.dst / ps.rel_name, ec) != ps.file_size || ec) return false;
  }
  return true;
}

}  // namespace

std::string DescribeOptions(const ConvertOptions& o) {
  std::string d = o.recipe.empty() ? "--scheme " + o.scheme : "--recipe " + o.recipe.string();
  for (const std::string& t : o.targets) d += " --targets " + t;
  for (const std::string& t : o.ignore) d += " --ignore " + t;
  if (!o.default_ignore) d += " --no-default-ignore";
  if (o.group_size) d += " --group-size " + std::to_string(*o.group_size);
  if (o.symmetric) d += *o.symmetric ? " --symmetric" : " --asymmetric";
  if (!o.prune.empty()) d += " --prune " + o.prune + " --prune-granularity " + o.prune_granularity;
  return d;
}

JsonValue SummaryJson(const ConvertSummary& s, int index, int count, const std::string& launcher) {
  JsonValue j = JsonValue::MakeObject();
  j.Set("worker", index);
  j.Set("workers", count);
  j.Set("launcher", launcher);
  j.Set("shards_written", s.worker_shards - s.shards_resumed);
  j.Set("shards_resumed", s.shards_resumed);
  j.Set("bytes_in", s.bytes_in);
  j.Set("bytes_out", s.bytes_out);
  j.Set("tensors_quantized", s.tensors_quantized);
  j.Set("tensors_copied", s.tensors_copied);
  j.Set("tensors_pruned_only", s.tensors_pruned_only);
  j.Set("seconds", s.seconds);
  return j;
}

Result<WorkerStart> StartWorker(Plan& plan, const ConvertOptions& o, const ConvertCallbacks& cb) {
  const int index = o.worker_index, count = o.workers;
  WorkerStart start;
  std::error_code ec;
  const auto note = [&](const std::string& s) {
    if (cb.note) cb.note(WorkerName(index, count) + ": " + s);
  };
  // The worker's share; the other workers' shards are not this run's to write.
  const std::vector<int> owner = AssignShards(ShardCosts(plan), count);
  start.mine.assign(plan.shards.size(), false);
  for (size_t k = 0; k < plan.shards.size(); ++k) {
    start.mine[k] = owner[k] == index;
    if (owner[k] == index) ++start.owned;
    else plan.shards[k].already_done = true;  // another worker's
  }
  // A published folder: this conversion (a rerun after finalize: nothing to do), or another
  // one, which a worker replaces only with --overwrite, unpublishing it first (config.json
  // first) so that the folder is visibly unfinished while the workers run.
  if (!plan.files.empty() && fs::exists(plan.dst / plan.files.back().rel_name, ec)) {
    if (IsPublished(plan)) {
      // A finalizer killed between config.json and its cleanup left parts and markers.
      QUENCH_RETURN_IF_ERROR(RemoveFinalizeLeftovers(plan.dst, cb));
      note("DST is already this conversion, finalized; nothing to do");
      start.finalized = true;
      return start;
    }
    if (!o.overwrite) {
      return Error(ErrorCode::kUsage,
                   plan.dst.string() + " holds a finished checkpoint of another conversion (" +
                       plan.files.back().rel_name + " differs); pass --overwrite to replace it");
    }
    for (auto f = plan.files.rbegin(); f != plan.files.rend(); ++f)
      fs::remove(plan.dst / f->rel_name, ec);
  }
  fs::create_directories(plan.dst / kPartsDir, ec);
  if (ec) {
    return Error(ErrorCode::kIo,
                 (plan.dst / kPartsDir).string() + ": cannot create: " + ec.message());
  }
  std::string holder;
  QUENCH_ASSIGN_OR_RETURN(start.lock, FsLock::TryAcquire(WorkerLockPath(plan.dst, index), &holder));
  if (!start.lock) {
    return Error(ErrorCode::kUsage,
                 WorkerName(index, count) + " is already running (" + holder +
                     "): two workers were given the same index, or this worker's previous run is "
                     "still alive");
  }
  // A single run writing DST (it checks the workers' locks after taking its own).
  if (FsLock::IsHeld(plan.dst / kRunLock, &holder)) {
    return Error(ErrorCode::kUsage, plan.dst.string() + " is being written by a single quench "
                                    "run (" + holder + "); wait for it to end");
  }
  const fs::path part_path = PartPath(plan.dst, index, count);
  if (fs::exists(part_path, ec)) {
    auto part = ReadPart(part_path);
    // Unreadable is an I/O error to report; only a part that says otherwise is redone.
    if (!part.ok() && part.status().code() == ErrorCode::kIo) return part.status();
    Status shards = part.ok() && part->fingerprint == PlanFingerprint(plan)
                        ? CheckPartShards(plan.dst, *part)
                        : Error(ErrorCode::kInvalidInput, "another plan");
    if (shards.code() == ErrorCode::kIo) return shards;
    if (shards.ok()) {
      note("its part is complete (" + std::to_string(start.owned) + " shards); nothing to redo");
      start.part_complete = true;
      return start;
    }
    // A part from another plan, or whose shards changed: it no longer vouches for anything.
    note("its previous part no longer matches (" +
         (part.ok() ? std::string("another plan, or changed shards") : part.status().message()) +
         "); converting its share again");
    fs::remove(part_path, ec);
  }
  note(std::to_string(start.owned) + " of " + std::to_string(plan.shards.size()) +
       " output shards are this worker's share (chosen by " + o.worker_source + ")");
  return start;
}

Result<bool> FinalizeIfLast(const fs::path& dst, int index, int count, const ConvertCallbacks& cb) {
  std::error_code ec;
  int waiting = 0;
  for (int i = 0; i < count; ++i) waiting += !fs::exists(PartPath(dst, i, count), ec);
  if (waiting > 0) {
    if (cb.note) {
      cb.note(WorkerName(index, count) + ": part written; " + std::to_string(waiting) +
              " more part(s) to come; the last worker to finish (or `quench finalize " +
              dst.string() + "`) publishes the folder");
    }
    return false;
  }
  // (Another worker that published first, removing the parts meanwhile, is seen there.)
  QUENCH_ASSIGN_OR_RETURN(const FinalizeResult r, FinalizePartsWaiting(dst, count, cb));
  if (!r.published && cb.note) {
    cb.note("another process is still finalizing " + dst.string() + " (" + r.holder +
            "); if it fails, run `quench finalize " + dst.string() + "`");
  }
  return r.published;
}

}  // namespace quench
