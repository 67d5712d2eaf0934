// Convert(): inventory -> plan -> pipeline -> finalize. Planning's half is
// convert_plan.cc's (through convert_internal.h); this file runs the plan.
#include "quench/convert.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

#include "calib/imatrix_run.h"
#include "calib/smoothquant_run.h"
#include "format/file_io.h"
#include "format/model_folder.h"
#include "format/parallel.h"
#include "pipeline/buffers.h"
#include "pipeline/calib_stages.h"
#include "pipeline/convert_internal.h"
#include "pipeline/fs_lock.h"
#include "pipeline/memory_budget.h"
#include "pipeline/pipeline.h"
#include "pipeline/prepass.h"
#include "pipeline/report.h"
#include "pipeline/resume.h"
#include "pipeline/staged_files.h"
#include "pipeline/workers.h"
#include "plan/planner.h"
#include "plan/recipe_calib.h"

namespace quench {
namespace fs = std::filesystem;

using convert_internal::CheckFreeSpace;
using convert_internal::CheckMemoryFloor;
using convert_internal::MakePlanImpl;
using convert_internal::RunBuffersPerChunk;
using convert_internal::RunLockBlock;
using convert_internal::WithMemoryBudget;

namespace {

// A single run's hold on DST (kRunLock, for the whole run), or why it cannot have it (kUsage):
// another run holds it, or workers hold theirs. `*created`: set where DST had to be made again.
Result<std::unique_ptr<FsLock>> TakeRunLock(const fs::path& dst, bool* created) {
  std::error_code ec;
  std::string holder;
  auto lock = FsLock::TryAcquire(dst / kRunLock, &holder);
  // Another run that had made DST, failing, removed it (empty once its lock was gone) between
  // this run's making sure of DST and taking the lock: made again, as this run's.
  for (int again = 0; again < 3 && !lock.ok() && !fs::exists(dst, ec); ++again) {
    fs::create_directories(dst, ec);
    *created = true;
    lock = FsLock::TryAcquire(dst / kRunLock, &holder);
  }
  if (!lock.ok()) return lock.status();
  if (!*lock) {
    return Error(ErrorCode::kUsage, dst.string() + " is being written by another quench run (" +
                                        holder + "); wait for it to end, or stop it and run "
                                        "again with --resume");
  }
  // Workers writing this DST (each checks this run's lock after taking its own) would write
  // the same shards. Their parts and markers, once they are gone, serve a --resume like its own.
  std::string who;
  QUENCH_ASSIGN_OR_RETURN(const bool workers, AnyWorkerRunning(dst, &who));
  if (workers) {
    return Error(ErrorCode::kUsage, dst.string() + " is being written by workers (" + who +
                                        "); wait for them to end, or stop them and run again "
                                        "with --resume");
  }
  return std::move(*lock);
}

// The first of the plan's errors, with how many more there are (--dry-run lists them all).
Status PlanningError(const Plan& plan) {
  const Status& first = plan.errors.front();
  std::string msg = first.message();
  if (plan.errors.size() > 1) {
    msg += " (and " + std::to_string(plan.errors.size() - 1) +
           " more planning errors; --dry-run lists them all)";
  }
  return Error(first.code(), msg);
}

// One run of a plan: DST made and held, the calibration stages and the pipeline run, the
// summary made, and the folder published (a worker: its part written, and the folder
// published where its part is the last). On failure, what the run created is removed
// (Cleanup). Made and run by ConvertPlanned, so that its locks and staged files are gone when
// that returns.
class ConvertRun {
 public:
  ConvertRun(Plan& plan, const LateIndex& late, std::optional<ModelFolder>& folder,
             const ConvertOptions& options, const ConvertCallbacks& callbacks)
      : plan_(plan),
        late_(late),
        folder_(folder),
        options_(options),
        callbacks_(callbacks),
        worker_(options.workers > 0),
        index_made_(late.file >= plan.files.size()) {}

  Result<ConvertSummary> Run(std::chrono::steady_clock::time_point t0, BufferPrefault* prefault);

 private:
  Status TakeDst();
  Result<ConvertSummary> AlreadyDone();
  Status Cleanup(Status s);
  void TakeHeaderBytes();
  void HashHeaders();
  void MakeIndex();
  Status Resume(GlobalScales& global_scales, RunLockBlock run_lock_block);
  Status RemoveFinishedConfig();
  ConvertSummary Summarize(const PipelineSizing& sizing, const std::vector<uint64_t>& zeroed,
                           const std::vector<ErrorSums>& errors,
                           std::chrono::steady_clock::time_point t0);
  Result<ConvertSummary> FinishWorker(ConvertSummary sum);
  Result<ConvertSummary> Publish(ConvertSummary sum);

  Plan& plan_;
  const LateIndex& late_;
  std::optional<ModelFolder>& folder_;
  const ConvertOptions& options_;
  const ConvertCallbacks& callbacks_;
  const bool worker_;
  bool created_ = false;  // DST made by this run (never by a worker: others may write in it)
  WorkerStart start_;     // a worker's hold on its shards (StartWorker)
  std::unique_ptr<FsLock> run_lock_;   // a single run's; a worker holds its own (start_.lock)
  std::vector<fs::path> published_;    // what Cleanup removes
  std::optional<StagedFiles> staged_;  // the written files, while the shards stream
  bool marked_ = false;                // MarkCompleteShards has said which shards are complete
  uint64_t resumed_ = 0;               // shards complete before this run (--resume, workers)
  bool finished_before_ = false;       // DST was already this conversion, complete (--resume)
  // The index's text, made late (MakeIndex); where planning made it, made already.
  bool index_made_;
  Status index_status_;
  // The source header bytes, per planned shard, where planning left their hashes to the run
  // (HashHeaders).
  std::vector<HeaderBytes> header_bytes_;
  std::once_flag hashed_;
};

// Makes DST where it is missing and takes the run's hold on it: a single run's lock, or a
// worker's start (its lock, and whether its part or the whole folder is done already).
Status ConvertRun::TakeDst() {
  std::error_code ec;
  created_ = !worker_ && !fs::exists(options_.dst, ec);
  fs::create_directories(options_.dst, ec);
  if (ec) return Error(ErrorCode::kIo, options_.dst.string() + ": cannot create: " + ec.message());
  plan_.dst = ResolvePath(options_.dst);
  if (worker_) {
    QUENCH_ASSIGN_OR_RETURN(start_, StartWorker(plan_, options_, callbacks_));
    return Status::Ok();
  }
  auto lock = TakeRunLock(plan_.dst, &created_);
  if (!lock.ok()) {
    if (created_) fs::remove(plan_.dst, ec);  // only when empty
    return lock.status();
  }
  run_lock_ = std::move(*lock);
  return Status::Ok();
}

// A worker whose part (or the whole folder) was done before: nothing written; the folder
// published where the part is the last in and the worker finalizes.
Result<ConvertSummary> ConvertRun::AlreadyDone() {
  ConvertSummary done;
  done.worker_shards = done.shards_resumed = start_.owned;
  done.part_was_complete = start_.part_complete;
  done.published = start_.finalized;
  if (start_.part_complete && options_.worker_finalize) {
    QUENCH_ASSIGN_OR_RETURN(done.published, FinalizeIfLast(plan_.dst, options_.worker_index,
                                                           options_.workers, callbacks_));
  }
  ReleaseLock(start_.lock, callbacks_);
  return done;
}

// On failure: removes what this run created, so nothing half-done is left behind (temporary
// files are removed by their owners), and returns `s`. An interrupted run keeps its complete
// shards and their resume markers, so that --resume can finish it; the folder has no
// config.json, so it does not look like a finished checkpoint.
Status ConvertRun::Cleanup(Status s) {
  std::error_code ec;
  if (staged_) staged_->Abandon();
  if (s.code() == ErrorCode::kInterrupted) {
    size_t complete = 0;
    for (const PlannedShard& ps : plan_.shards) {
      complete += ps.already_done || fs::exists(ResumeMarkerPath(plan_.dst, ps.rel_name), ec);
    }
    if (complete > 0) {
      return Error(ErrorCode::kInterrupted,
                   "interrupted: " + std::to_string(complete) + " of " +
                       std::to_string(plan_.shards.size()) + " output shards are complete in " +
                       plan_.dst.string() + "; run the same command with --resume to finish");
    }
  }
  for (const fs::path& p : published_) fs::remove(p, ec);
  if (worker_ || options_.resume) {
    // Only the markers of shards this run was to write: the other workers' shards, and
    // those an earlier run completed (kept, or not yet examined), stay vouched for, so
    // that a --resume failing on, say, a full disk leaves them to the next one. (A worker
    // marks the others' shards done at its start.)
    if (worker_ || marked_) {
      for (const PlannedShard& ps : plan_.shards) {
        if (!ps.already_done) fs::remove(ResumeMarkerPath(plan_.dst, ps.rel_name), ec);
      }
    }
    if (!worker_) fs::remove(plan_.dst / kResumeDir, ec);  // only when empty
  } else {
    fs::remove_all(plan_.dst / kResumeDir, ec);
  }
  run_lock_.reset();                        // its file removed, so that DST can be
  if (created_) fs::remove(plan_.dst, ec);  // only succeeds when empty
  return s;
}

// The source header hashes, where planning left them to this run (the folder kept with its
// headers' bytes): only the shards' resume markers read them, so they are made on the first
// commit thread that makes one (RunShardPipeline's before_markers), while later shards
// stream, rather than by the header reads before the first write (bench/README.md,
// kimi-s37). The bytes are taken here; the folder itself is freed beside the first chunk.
void ConvertRun::TakeHeaderBytes() {
  header_bytes_.resize(plan_.shards.size());
  if (!folder_) return;
  auto from = folder_->shards.begin();
  for (size_t k = 0; k < plan_.shards.size(); ++k) {
    const std::string& name = plan_.shards[k].rel_name;
    auto it = std::find_if(from, folder_->shards.end(),
                           [&](const Shard& s) { return s.rel_name == name; });
    if (it == folder_->shards.end()) {
      it = std::find_if(folder_->shards.begin(), folder_->shards.end(),
                        [&](const Shard& s) { return s.rel_name == name; });
    }
    if (it == folder_->shards.end()) continue;
    header_bytes_[k] = std::move(it->header_bytes);
    from = it;
  }
}

// Once, from any commit thread: the hashes of the bytes TakeHeaderBytes took.
void ConvertRun::HashHeaders() {
  std::call_once(hashed_, [&] {
    for (size_t k = 0; k < header_bytes_.size(); ++k) {
      if (header_bytes_[k].owner) plan_.shards[k].src_header_hash = Fnv1a64(header_bytes_[k].bytes);
    }
    header_bytes_ = {};
  });
}

// The index's text (a line per tensor: megabytes for a many-tensor MoE) is made after the
// first chunk is handed out, on a writer thread (RunShardPipeline's beside_first_chunk),
// instead of before any weight is read; the free-space check counts its length (BuildPlan's).
// It is staged then, and published as before: fsynced with the other staged files, renamed
// after the shards. The model folder is freed there too. Where no chunk is handed out, both
// are done before the staged files' fsync.
void ConvertRun::MakeIndex() {
  folder_.reset();
  if (index_made_) return;
  index_made_ = true;
  try {
    plan_.files[late_.file].contents = PlanIndexJson(plan_);
  } catch (const std::bad_alloc&) {
    index_status_ =
        Error(ErrorCode::kIo, "out of memory: cannot make " + plan_.files[late_.file].rel_name +
                                  "; free memory or lower --memory-limit");
    return;
  }
  if (staged_) staged_->Stage(late_.file);
}

// --resume and a worker (which always resumes its own earlier run, as a job engine's requeue
// expects): which shards are complete already, then the free-space check for the others.
Status ConvertRun::Resume(GlobalScales& global_scales, RunLockBlock run_lock_block) {
  // Fingerprints include the global scales, so all of them are needed first.
  QUENCH_RETURN_IF_ERROR(global_scales.All());
  resumed_ = MarkCompleteShards(plan_, callbacks_, /*own_shards_only=*/worker_);
  marked_ = true;
  // A finished folder (its markers possibly left by a run killed after publishing) is left
  // as it is, rather than its files rewritten. (A worker never gets here in one.)
  if (!worker_ && resumed_ == plan_.shards.size() && PlannedFilesInPlace(plan_)) {
    std::error_code ec;
    fs::remove_all(plan_.dst / kResumeDir, ec);
    QUENCH_RETURN_IF_ERROR(SyncDirectory(plan_.dst));
    if (callbacks_.note) {
      callbacks_.note("resume: " + plan_.dst.string() + " is already complete; nothing to do");
    }
    finished_before_ = true;
    return Status::Ok();
  }
  return CheckFreeSpace(plan_, run_lock_block);
}

// A run that rewrites DST's shards first takes away the config file a finished folder holds
// (an earlier output under --overwrite, another conversion's under --resume), so that DST
// never looks finished while its shards are mixed or, after a failure, gone.
Status ConvertRun::RemoveFinishedConfig() {
  if (worker_ || finished_before_ || plan_.files.empty()) return Status::Ok();
  std::error_code ec;
  const fs::path config = plan_.dst / plan_.files.back().rel_name;
  if (!fs::exists(config, ec)) return Status::Ok();
  if (!fs::remove(config, ec) || ec) {
    return Error(ErrorCode::kIo, config.string() + ": cannot remove the finished folder's "
                                                   "config before rewriting it: " + ec.message());
  }
  return SyncDirectory(plan_.dst);
}

// What the run did, counted over the shards it wrote (a worker: its own); the per-tensor
// errors and pruning counts go to plan.results (the report's).
ConvertSummary ConvertRun::Summarize(const PipelineSizing& sizing,
                                     const std::vector<uint64_t>& zeroed,
                                     const std::vector<ErrorSums>& errors,
                                     std::chrono::steady_clock::time_point t0) {
  ConvertSummary sum;
  const auto counted = [&](size_t shard) { return !worker_ || start_.mine[shard]; };
  for (const PlannedTensor& t : plan_.tensors) {
    if (!counted(t.shard)) continue;
    if (t.action == TensorAction::kQuantize) ++sum.tensors_quantized;
    if (t.action == TensorAction::kCopy) ++sum.tensors_copied;
    if (t.action == TensorAction::kPrune) ++sum.tensors_pruned_only;
    if (t.action == TensorAction::kDecode) ++sum.tensors_decoded;
  }
  // What this run read and wrote: shards --resume kept, or another worker's, were neither.
  for (const PlannedTensor& t : plan_.tensors) {
    if (!plan_.shards[t.shard].already_done) sum.bytes_in += t.src_bytes;
  }
  for (const PlannedShard& ps : plan_.shards) {
    if (!ps.already_done) sum.bytes_out += ps.file_size;
  }
  sum.chunk_bytes = sizing.chunk_bytes;
  sum.shards_resumed = resumed_;
  const bool pruning = plan_.prune.kind != PlannedPrune::kNone;
  if (!errors.empty() || pruning) plan_.results.resize(plan_.tensors.size());
  for (size_t i = 0; i < errors.size(); ++i) {
    plan_.results[i].error_signal = errors[i].signal;
    plan_.results[i].error_noise = errors[i].noise;
    plan_.results[i].error_count = errors[i].count;
  }
  for (size_t i = 0; i < plan_.tensors.size(); ++i) {
    const PlannedTensor& t = plan_.tensors[i];
    if (!t.prune || plan_.shards[t.shard].already_done) continue;
    ++sum.pruned_tensors;
    sum.pruned_elements += t.shape[0] * t.shape[1];
    sum.zeroed += zeroed[i];
    plan_.results[i].prune_zeroed = zeroed[i];
  }
  sum.tokens = sizing.tokens;
  sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return sum;
}

// A worker's end: the part vouches for its shards (durable, with their markers); the worker
// completing the last part publishes the folder.
Result<ConvertSummary> ConvertRun::FinishWorker(ConvertSummary sum) {
  sum.worker_shards = start_.owned;
  if (Status d = SyncDirectory(plan_.dst); !d.ok()) return Cleanup(d);
  if (Status w = WritePart(
          plan_, options_.worker_index, options_.workers, DescribeOptions(options_),
          options_.worker_source,
          SummaryJson(sum, options_.worker_index, options_.workers, options_.worker_source));
      !w.ok()) {
    return Cleanup(w);
  }
  if (options_.worker_finalize) {
    QUENCH_ASSIGN_OR_RETURN(sum.published, FinalizeIfLast(plan_.dst, options_.worker_index,
                                                          options_.workers, callbacks_));
  }
  ReleaseLock(start_.lock, callbacks_);
  return sum;
}

// A single run's end: other files, then the index, then config.json: the folder is a loadable
// checkpoint only once its config is in place.
Result<ConvertSummary> ConvertRun::Publish(ConvertSummary sum) {
  for (size_t i = 0; !finished_before_ && i < plan_.files.size(); ++i) {
    if (Status st = staged_->Publish(i); !st.ok()) return Cleanup(st);
    published_.push_back(plan_.dst / plan_.files[i].rel_name);
  }
  // An earlier split run's parts vouch for nothing now either.
  if (Status st = RemoveMarkersAndParts(plan_.dst, callbacks_); !st.ok()) return Cleanup(st);
  sum.published = true;
  ReleaseLock(run_lock_, callbacks_);
  return sum;
}

Result<ConvertSummary> ConvertRun::Run(std::chrono::steady_clock::time_point t0,
                                       BufferPrefault* prefault) {
  if (callbacks_.note) {
    for (const std::string& n : plan_.notes) callbacks_.note(n);
  }
  if (!plan_.errors.empty()) return PlanningError(plan_);
  QUENCH_RETURN_IF_ERROR(TakeDst());
  if (start_.finalized || start_.part_complete) return AlreadyDone();
  const RunLockBlock run_lock_block = run_lock_ ? RunLockBlock::kHeld : RunLockBlock::kNone;
  TakeHeaderBytes();
  // --resume (and a worker, which always resumes its own run) checks once it knows which
  // shards are complete (Resume).
  if (!options_.resume && !worker_) {
    if (Status s = CheckFreeSpace(plan_, run_lock_block, late_); !s.ok()) return Cleanup(s);
  }
  for (const PlannedShard& ps : plan_.shards) {
    if (Status s = MakeFolders((plan_.dst / ps.rel_name).parent_path()); !s.ok()) {
      return Cleanup(s);
    }
  }

  uint64_t largest_set = 0;  // what the NVFP4 pre-pass keeps mapped for one fused set
  for (const std::vector<size_t>& set : plan_.fused_sets) {
    uint64_t bytes = 0;
    for (size_t m : set) bytes += plan_.tensors[m].src_bytes;
    largest_set = std::max(largest_set, bytes);
  }
  // The stages of a composed calibration. (Its failures go through Cleanup, as the checks'
  // above do.)
  Result<CalibStages> stages = CalibStages::Make(plan_, options_);
  if (!stages.ok()) return Cleanup(stages.status());
  // GPTQ holds its Hessians outside the chunks (plan.calib_bytes), and each chunk's sweep an
  // f32 copy of its rows (twice a BF16 chunk) and their codes: two more buffers' worth. The
  // worker threads' scratch, the source pages mapped beyond the chunks and the plan itself
  // are outside them too (BesideChunksBytes; CheckMemoryFloor counts them all).
  const uint64_t beside = plan_.calib_bytes + BesideChunksBytes(plan_, options_.threads);
  const uint64_t chunk_budget =
      options_.memory_limit > beside ? options_.memory_limit - beside : options_.memory_limit / 2;
  // As CheckMemoryFloor's (the stages made above are the ones it counts).
  PipelineSizing sizing = SizePipeline(
      chunk_budget, options_.threads, RunBuffersPerChunk(plan_, stages->algos()),
      std::max(largest_set, stages->Smoothing(plan_) ? calib::SmoothBalanceBytes(plan_) : 0));
  SourceMaps maps(plan_);
  // What smoothing's pre-pass leaves mapped for the pipeline comes from the pre-passes' share
  // of the budget; nothing when shards may be skipped (--resume, workers: which ones is known
  // only later).
  if (Status s =
          stages->Smooth(plan_, options_, maps,
                         options_.resume || worker_ ? 0 : sizing.prepass_keep_bytes, &sizing);
      !s.ok()) {
    return Cleanup(s);
  }
  ChunkCalibration* calib = stages->Compose(plan_);
  if (options_.chunk_bytes != 0) {
    sizing.chunk_bytes = std::min(sizing.chunk_bytes, options_.chunk_bytes);
  }
  sizing.write_mode = options_.direct_io ? WriteMode::kDirect : WriteMode::kBuffered;
  sizing.durable_markers = worker_;
  static std::atomic<bool> no_cancel{false};
  const std::atomic<bool>* cancel = callbacks_.cancel ? callbacks_.cancel : &no_cancel;
  if (Status s = RunPrunePrePass(plan_, sizing, maps, cancel); !s.ok()) return Cleanup(s);
  GlobalScales global_scales(plan_, sizing, maps, cancel);
  if (calib::ImatrixRun* imatrix = stages->imatrix()) {
    global_scales.SetMemberAbsMax([imatrix](size_t t) { return imatrix->SearchedAbsMax(t); });
  }
  if (options_.resume || worker_) {
    if (Status s = Resume(global_scales, run_lock_block); !s.ok()) return Cleanup(s);
  }
  if (Status s = RemoveFinishedConfig(); !s.ok()) return Cleanup(s);
  // The index and config.json written (not yet published) before the shards stream.
  if (!worker_ && !finished_before_) staged_.emplace(plan_, late_.file);
  std::vector<uint64_t> zeroed;
  std::vector<ErrorSums> errors;
  Status st = finished_before_
                  ? Status::Ok()
                  : RunShardPipeline(
                        plan_, sizing, maps, callbacks_, cancel, &zeroed,
                        options_.report.empty() ? nullptr : &errors,
                        [&](size_t tensor) { return global_scales.ForTensor(tensor); }, calib,
                        // The index's and config.json's fsyncs beside the last shard's,
                        // rather than after it.
                        [&] {
                          MakeIndex();  // where no chunk was handed out
                          if (staged_) staged_->Sync();
                        },
                        [&] { MakeIndex(); }, [&] { HashHeaders(); }, prefault);
  if (st.ok() && !index_status_.ok()) st = index_status_;
  stages->Finish(plan_, callbacks_);
  for (const PlannedShard& ps : plan_.shards) {
    if (!ps.already_done) published_.push_back(plan_.dst / ps.rel_name);
  }
  if (!st.ok()) return Cleanup(st);
  ConvertSummary sum = Summarize(sizing, zeroed, errors, t0);
  return worker_ ? FinishWorker(std::move(sum)) : Publish(std::move(sum));
}

Result<ConvertSummary> ConvertPlanned(Plan& plan, const LateIndex& late,
                                      std::optional<ModelFolder>& folder,
                                      const ConvertOptions& options,
                                      const ConvertCallbacks& callbacks,
                                      std::chrono::steady_clock::time_point t0,
                                      BufferPrefault* prefault) {
  ConvertRun run(plan, late, folder, options, callbacks);
  return run.Run(t0, prefault);
}

}  // namespace

Result<ConvertSummary> Convert(const ConvertOptions& requested,
                               const ConvertCallbacks& callbacks) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::string> budget_notes;
  ConvertOptions options = WithMemoryBudget(requested, &budget_notes);
  QUENCH_RETURN_IF_ERROR(ApplyRecipeCalibration(options));  // a recipe's GPTQ/SparseGPT
  // Before planning, while it leaves a core idle: the pipeline's first output buffers.
  const std::unique_ptr<BufferPrefault> prefault = StartPrefault(options);
  // The index's text is made once the first chunk is converting, and the model folder freed
  // then (ConvertPlanned), but where the run reads the text before: --resume (a finished
  // folder's files compared) and workers (the plan's fingerprint). The same runs read the
  // source header hashes before the pipeline (markers compared, the plan's fingerprint);
  // the others need them only for their shards' markers, and hash the headers then.
  const bool index_later = !options.resume && options.workers == 0;
  LateIndex late;
  std::optional<ModelFolder> folder;
  QUENCH_ASSIGN_OR_RETURN(Plan plan, MakePlanImpl(options, index_later ? &late : nullptr,
                                                  index_later ? &folder : nullptr,
                                                  /*header_bytes=*/index_later));
  plan.notes.insert(plan.notes.begin(), budget_notes.begin(), budget_notes.end());
  QUENCH_RETURN_IF_ERROR(CheckMemoryFloor(requested, options, &plan));
  Result<ConvertSummary> r =
      ConvertPlanned(plan, late, folder, options, callbacks, t0, prefault.get());
  if (!options.report.empty()) {
    const Status outcome = r.ok() ? Status::Ok() : r.status();
    Status w = WriteFileAtomic(
        options.report,
        DumpPythonJson(BuildReport(options, plan, r.ok() ? &r.value() : nullptr, outcome,
                                   /*dry_run=*/false)) + "\n");
    if (r.ok() && !w.ok()) {
      ReleaseInBackground(std::move(plan));
      return w;
    }
  }
  // After the last write: the caller need not wait for the plan's ~10^5 entries to be freed.
  ReleaseInBackground(std::move(plan));
  return r;
}

}  // namespace quench
