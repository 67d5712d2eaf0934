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

#include "calib/act_scales.h"
#include "calib/composite.h"
#include "calib/gptq_run.h"
#include "calib/imatrix_run.h"
#include "calib/kv_cache.h"
#include "calib/smoothquant_run.h"
#include "format/file_io.h"
#include "format/model_folder.h"
#include "format/parallel.h"
#include "pipeline/buffers.h"
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

}  // namespace

namespace {

Result<ConvertSummary> ConvertPlanned(Plan& plan, const LateIndex& late,
                                      std::optional<ModelFolder>& folder,
                                      const ConvertOptions& options,
                                      const ConvertCallbacks& callbacks,
                                      std::chrono::steady_clock::time_point t0,
                                      BufferPrefault* prefault);

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

namespace {

Result<ConvertSummary> ConvertPlanned(Plan& plan, const LateIndex& late,
                                      std::optional<ModelFolder>& folder,
                                      const ConvertOptions& options,
                                      const ConvertCallbacks& callbacks,
                                      std::chrono::steady_clock::time_point t0,
                                      BufferPrefault* prefault) {
  if (callbacks.note) {
    for (const std::string& n : plan.notes) callbacks.note(n);
  }
  if (!plan.errors.empty()) {
    Status first = plan.errors.front();
    std::string msg = first.message();
    if (plan.errors.size() > 1) {
      msg += " (and " + std::to_string(plan.errors.size() - 1) +
             " more planning errors; --dry-run lists them all)";
    }
    return Error(first.code(), msg);
  }
  std::error_code ec;
  const bool worker = options.workers > 0;
  // A worker never removes DST: others may be about to write into it.
  bool created = !worker && !fs::exists(options.dst, ec);
  fs::create_directories(options.dst, ec);
  if (ec) return Error(ErrorCode::kIo, options.dst.string() + ": cannot create: " + ec.message());
  plan.dst = ResolvePath(options.dst);
  WorkerStart start;
  std::unique_ptr<FsLock> run_lock;  // a single run's; a worker holds its own (StartWorker)
  if (worker) {
    QUENCH_ASSIGN_OR_RETURN(start, StartWorker(plan, options, callbacks));
  } else {
    auto lock = TakeRunLock(plan.dst, &created);
    if (!lock.ok()) {
      if (created) fs::remove(plan.dst, ec);  // only when empty
      return lock.status();
    }
    run_lock = std::move(*lock);
  }
  const RunLockBlock run_lock_block = run_lock ? RunLockBlock::kHeld : RunLockBlock::kNone;

  // On failure: remove what this run created, so nothing half-done is left behind (temporary
  // files are removed by their owners). An interrupted run keeps its complete shards and their
  // resume markers, so that --resume can finish it; the folder has no config.json, so it does
  // not look like a finished checkpoint.
  std::vector<fs::path> published;
  std::optional<StagedFiles> staged;  // the written files, while the shards stream
  bool marked = false;  // MarkCompleteShards has said which shards are complete
  auto cleanup = [&](Status s) -> Status {
    if (staged) staged->Abandon();
    if (s.code() == ErrorCode::kInterrupted) {
      size_t complete = 0;
      for (const PlannedShard& ps : plan.shards) {
        complete += ps.already_done || fs::exists(ResumeMarkerPath(plan.dst, ps.rel_name), ec);
      }
      if (complete > 0) {
        return Error(ErrorCode::kInterrupted,
                     "interrupted: " + std::to_string(complete) + " of " +
                         std::to_string(plan.shards.size()) + " output shards are complete in " +
                         plan.dst.string() + "; run the same command with --resume to finish");
      }
    }
    for (const fs::path& p : published) fs::remove(p, ec);
    if (worker || options.resume) {
      // Only the markers of shards this run was to write: the other workers' shards, and
      // those an earlier run completed (kept, or not yet examined), stay vouched for, so
      // that a --resume failing on, say, a full disk leaves them to the next one. (A worker
      // marks the others' shards done at its start.)
      if (worker || marked) {
        for (const PlannedShard& ps : plan.shards) {
          if (!ps.already_done) fs::remove(ResumeMarkerPath(plan.dst, ps.rel_name), ec);
        }
      }
      if (!worker) fs::remove(plan.dst / kResumeDir, ec);  // only when empty
    } else {
      fs::remove_all(plan.dst / kResumeDir, ec);
    }
    run_lock.reset();  // its file removed, so that DST can be
    if (created) fs::remove(plan.dst, ec);  // only succeeds when empty
    return s;
  };

  if (start.finalized || start.part_complete) {
    ConvertSummary done;
    done.worker_shards = done.shards_resumed = start.owned;
    done.part_was_complete = start.part_complete;
    done.published = start.finalized;
    if (start.part_complete && options.worker_finalize) {
      QUENCH_ASSIGN_OR_RETURN(done.published, FinalizeIfLast(plan.dst, options.worker_index,
                                                             options.workers, callbacks));
    }
    ReleaseLock(start.lock, callbacks);
    return done;
  }
  // The index's text (a line per tensor: megabytes for a many-tensor MoE) is made after the first
  // chunk is handed out, on a writer thread (RunShardPipeline's beside_first_chunk), instead
  // of before any weight is read; the free-space check counts its length (BuildPlan's). It is
  // staged then, and published as before: fsynced with the other staged files, renamed after
  // the shards. The model folder is freed there too. Where no chunk is handed out, both are
  // done before the staged files' fsync.
  bool index_made = late.file >= plan.files.size();
  Status index_status;
  // The source header hashes, where planning left them to this run (the folder kept with
  // its headers' bytes): only the shards' resume markers read them, so they are made on the
  // first commit thread that makes one (RunShardPipeline's before_markers), while later
  // shards stream, rather than by the header reads before the first write (bench/README.md,
  // kimi-s37). The bytes are taken here; the folder itself is freed beside the first chunk.
  std::vector<HeaderBytes> header_bytes(plan.shards.size());
  if (folder) {
    auto from = folder->shards.begin();
    for (size_t k = 0; k < plan.shards.size(); ++k) {
      const std::string& name = plan.shards[k].rel_name;
      auto it = std::find_if(from, folder->shards.end(),
                             [&](const Shard& s) { return s.rel_name == name; });
      if (it == folder->shards.end()) {
        it = std::find_if(folder->shards.begin(), folder->shards.end(),
                          [&](const Shard& s) { return s.rel_name == name; });
      }
      if (it == folder->shards.end()) continue;
      header_bytes[k] = std::move(it->header_bytes);
      from = it;
    }
  }
  std::once_flag hashed;
  const auto hash_headers = [&] {
    std::call_once(hashed, [&] {
      for (size_t k = 0; k < header_bytes.size(); ++k) {
        if (header_bytes[k].owner) {
          plan.shards[k].src_header_hash = Fnv1a64(header_bytes[k].bytes);
        }
      }
      header_bytes = {};
    });
  };
  const auto make_index = [&] {
    folder.reset();
    if (index_made) return;
    index_made = true;
    try {
      plan.files[late.file].contents = PlanIndexJson(plan);
    } catch (const std::bad_alloc&) {
      index_status = Error(ErrorCode::kIo, "out of memory: cannot make " +
                                               plan.files[late.file].rel_name +
                                               "; free memory or lower --memory-limit");
      return;
    }
    if (staged) staged->Stage(late.file);
  };
  // --resume (and a worker, which always resumes its own run) checks once it knows which
  // shards are complete (below).
  if (!options.resume && !worker) {
    if (Status s = CheckFreeSpace(plan, run_lock_block, late); !s.ok()) return cleanup(s);
  }
  for (const PlannedShard& ps : plan.shards) {
    if (Status s = MakeFolders((plan.dst / ps.rel_name).parent_path()); !s.ok()) {
      return cleanup(s);
    }
  }

  const bool pruning = plan.prune.kind != PlannedPrune::kNone;
  uint64_t largest_set = 0;  // what the NVFP4 pre-pass keeps mapped for one fused set
  for (const std::vector<size_t>& set : plan.fused_sets) {
    uint64_t bytes = 0;
    for (size_t m : set) bytes += plan.tensors[m].src_bytes;
    largest_set = std::max(largest_set, bytes);
  }
  // The stages of a composed calibration (src/calib/composite.h), each given its options.
  // (Its failures go through cleanup, as the checks' above do.)
  auto parsed = calib::ParseAlgorithms(options.algorithm);
  if (!parsed.ok()) return cleanup(parsed.status());
  const calib::Algorithms algos = *parsed;
  std::unique_ptr<calib::GptqRun> sparse, gptq;
  std::unique_ptr<calib::SmoothRun> smooth;
  if (algos.sparsegpt) {
    auto made = calib::MakeSparseGptRun(plan, options);
    if (!made.ok()) return cleanup(made.status());
    sparse = std::move(*made);
  }
  if (algos.gptq) {
    auto made = calib::MakeGptqRun(plan, calib::StageOptions(options, "gptq"));
    if (!made.ok()) return cleanup(made.status());
    gptq = std::move(*made);
  }
  auto made_imatrix = calib::MakeImatrixRun(plan, options);
  if (!made_imatrix.ok()) return cleanup(made_imatrix.status());
  std::unique_ptr<calib::ImatrixRun> imatrix = std::move(*made_imatrix);
  // GPTQ holds its Hessians outside the chunks (plan.calib_bytes), and each chunk's sweep an
  // f32 copy of its rows (twice a BF16 chunk) and their codes: two more buffers' worth. The
  // worker threads' scratch, the source pages mapped beyond the chunks and the plan itself
  // are outside them too (BesideChunksBytes; CheckMemoryFloor counts them all).
  const uint64_t beside = plan.calib_bytes + BesideChunksBytes(plan, options.threads);
  const uint64_t chunk_budget = options.memory_limit > beside ? options.memory_limit - beside
                                                              : options.memory_limit / 2;
  const bool smoothing = !algos.smoothing.empty() && !plan.smoothing.empty();
  // As CheckMemoryFloor's (the stages made above are the ones it counts).
  PipelineSizing sizing = SizePipeline(
      chunk_budget, options.threads, RunBuffersPerChunk(plan, algos),
      std::max(largest_set, smoothing ? calib::SmoothBalanceBytes(plan) : 0));
  SourceMaps maps(plan);
  if (smoothing) {
    // Smoothing's pre-pass reads the balance weights for their scales here, before any
    // tensor streams; later stages then see the smoothed model's statistics. What it leaves
    // mapped for the pipeline is taken from the pre-passes' share of the budget; nothing
    // when shards may be skipped (--resume, workers: which ones is known only later).
    calib::SmoothSource source;
    source.map = [&maps](size_t shard) { return maps.Get(shard); };
    source.keep_bytes = options.resume || worker ? 0 : sizing.prepass_keep_bytes;
    auto made = calib::MakeSmoothRun(plan, calib::StageOptions(options, algos.smoothing), source);
    if (!made.ok()) return cleanup(made.status());
    smooth = std::move(*made);
    sizing.prepass_keep_bytes -= std::min(sizing.prepass_keep_bytes, smooth->KeptBytes());
  }
  if (smooth) {
    const calib::ColumnScales scales = smooth->InputScales();
    if (sparse) {
      sparse->SetColumnScales(scales);
      sparse->SetRowTransform(smooth.get());  // unstructured: the whole weight smoothed
    }
    if (gptq) gptq->SetColumnScales(scales);
    if (Status s = calib::ApplySmoothingToPlan(plan, options, scales); !s.ok()) return cleanup(s);
  }
  ChunkCalibration* quantizer = gptq ? static_cast<ChunkCalibration*>(gptq.get()) : imatrix.get();
  std::unique_ptr<calib::CompositeCalibration> composite;
  if (smooth || sparse || quantizer != nullptr) {
    composite = std::make_unique<calib::CompositeCalibration>(plan, smooth.get(), sparse.get(),
                                                              quantizer);
  }
  ChunkCalibration* calib = composite.get();
  if (options.chunk_bytes != 0) {
    sizing.chunk_bytes = std::min(sizing.chunk_bytes, options.chunk_bytes);
  }
  sizing.write_mode = options.direct_io ? WriteMode::kDirect : WriteMode::kBuffered;
  sizing.durable_markers = worker;
  static std::atomic<bool> no_cancel{false};
  const std::atomic<bool>* cancel = callbacks.cancel ? callbacks.cancel : &no_cancel;
  if (Status s = RunPrunePrePass(plan, sizing, maps, cancel); !s.ok()) return cleanup(s);
  GlobalScales global_scales(plan, sizing, maps, cancel);
  if (imatrix) global_scales.SetMemberAbsMax([&](size_t t) { return imatrix->SearchedAbsMax(t); });
  uint64_t resumed = 0;
  bool finished_before = false;
  if (options.resume || worker) {
    // Fingerprints include the global scales, so all of them are needed first. A worker
    // always resumes its own earlier run (what a job engine's requeue expects).
    if (Status s = global_scales.All(); !s.ok()) return cleanup(s);
    resumed = MarkCompleteShards(plan, callbacks, /*own_shards_only=*/worker);
    marked = true;
    // A finished folder (its markers possibly left by a run killed after publishing) is left
    // as it is, rather than its files rewritten. (A worker never gets here in one.)
    if (!worker && resumed == plan.shards.size() && PlannedFilesInPlace(plan)) {
      fs::remove_all(plan.dst / kResumeDir, ec);
      if (Status s = SyncDirectory(plan.dst); !s.ok()) return cleanup(s);
      if (callbacks.note) {
        callbacks.note("resume: " + plan.dst.string() + " is already complete; nothing to do");
      }
      finished_before = true;
    } else if (Status s = CheckFreeSpace(plan, run_lock_block); !s.ok()) {
      return cleanup(s);
    }
  }
  // A run that rewrites DST's shards first takes away the config file a finished folder holds
  // (an earlier output under --overwrite, another conversion's under --resume), so that DST
  // never looks finished while its shards are mixed or, after a failure, gone.
  if (!worker && !finished_before && !plan.files.empty()) {
    const fs::path config = plan.dst / plan.files.back().rel_name;
    if (fs::exists(config, ec)) {
      if (!fs::remove(config, ec) || ec) {
        return cleanup(Error(ErrorCode::kIo,
                             config.string() + ": cannot remove the finished folder's config "
                                               "before rewriting it: " + ec.message()));
      }
      if (Status s = SyncDirectory(plan.dst); !s.ok()) return cleanup(s);
    }
  }
  // The index and config.json written (not yet published) before the shards stream.
  if (!worker && !finished_before) staged.emplace(plan, late.file);
  std::vector<uint64_t> zeroed;
  std::vector<ErrorSums> errors;
  Status st = finished_before
                  ? Status::Ok()
                  : RunShardPipeline(plan, sizing, maps, callbacks, cancel, &zeroed,
                                     options.report.empty() ? nullptr : &errors,
                                     [&](size_t tensor) { return global_scales.ForTensor(tensor); },
                                     calib,
                                     // The index's and config.json's fsyncs beside the last
                                     // shard's, rather than after it.
                                     [&] {
                                       make_index();  // where no chunk was handed out
                                       if (staged) staged->Sync();
                                     },
                                     make_index, hash_headers, prefault);
  if (st.ok() && !index_status.ok()) st = index_status;
  if (smooth) {
    smooth->Finish(plan);
    if (callbacks.note && algos.smoothing == "awq") {
      for (const PlannedSmoothing& m : plan.smoothing) {
        char line[200];
        std::snprintf(line, sizeof line,
                      ": ratio %.4f%s, proxy loss %.4g (RTN %s%.4g, %s, %s search)", m.ratio,
                      m.duo ? " (duo)" : "", m.loss, m.rtn_exact ? "" : "~", m.loss_rtn,
                      m.loss_kind.c_str(), m.search.c_str());
        callbacks.note("AWQ " + m.smooth + line);
      }
    }
  }
  if (sparse) sparse->Finish(plan);
  if (gptq) {
    gptq->Finish(plan);
    if (callbacks.note) {
      for (const PlannedTensor& t : plan.tensors) {
        if (t.calib && !t.calib->site.empty() && !t.calib->note.empty()) {
          callbacks.note(t.name + ": " + t.calib->note);
        }
      }
    }
  }
  for (const PlannedShard& ps : plan.shards) {
    if (!ps.already_done) published.push_back(plan.dst / ps.rel_name);
  }
  if (!st.ok()) return cleanup(st);

  ConvertSummary sum;
  const auto counted = [&](size_t shard) { return !worker || start.mine[shard]; };
  for (const PlannedTensor& t : plan.tensors) {
    if (!counted(t.shard)) continue;
    if (t.action == TensorAction::kQuantize) ++sum.tensors_quantized;
    if (t.action == TensorAction::kCopy) ++sum.tensors_copied;
    if (t.action == TensorAction::kPrune) ++sum.tensors_pruned_only;
    if (t.action == TensorAction::kDecode) ++sum.tensors_decoded;
  }
  // What this run read and wrote: shards --resume kept, or another worker's, were neither.
  for (const PlannedTensor& t : plan.tensors) {
    if (!plan.shards[t.shard].already_done) sum.bytes_in += t.src_bytes;
  }
  for (const PlannedShard& ps : plan.shards) {
    if (!ps.already_done) sum.bytes_out += ps.file_size;
  }
  sum.chunk_bytes = sizing.chunk_bytes;
  sum.shards_resumed = resumed;
  if (!errors.empty() || pruning) plan.results.resize(plan.tensors.size());
  for (size_t i = 0; i < errors.size(); ++i) {
    plan.results[i].error_signal = errors[i].signal;
    plan.results[i].error_noise = errors[i].noise;
    plan.results[i].error_count = errors[i].count;
  }
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& t = plan.tensors[i];
    if (!t.prune || plan.shards[t.shard].already_done) continue;
    ++sum.pruned_tensors;
    sum.pruned_elements += t.shape[0] * t.shape[1];
    sum.zeroed += zeroed[i];
    plan.results[i].prune_zeroed = zeroed[i];
  }
  sum.tokens = sizing.tokens;
  sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  if (worker) {
    // The part vouches for this worker's shards (durable, with their markers); the worker
    // completing the last part publishes the folder.
    sum.worker_shards = start.owned;
    if (Status d = SyncDirectory(plan.dst); !d.ok()) return cleanup(d);
    if (Status w = WritePart(plan, options.worker_index, options.workers, DescribeOptions(options),
                             options.worker_source,
                             SummaryJson(sum, options.worker_index, options.workers,
                                         options.worker_source));
        !w.ok()) {
      return cleanup(w);
    }
    if (options.worker_finalize) {
      QUENCH_ASSIGN_OR_RETURN(sum.published, FinalizeIfLast(plan.dst, options.worker_index,
                                                            options.workers, callbacks));
    }
    ReleaseLock(start.lock, callbacks);
    return sum;
  }

  // Other files, then the index, then config.json: the folder is a loadable checkpoint only
  // once its config is in place.
  for (size_t i = 0; !finished_before && i < plan.files.size(); ++i) {
    st = staged->Publish(i);
    if (!st.ok()) return cleanup(st);
    published.push_back(plan.dst / plan.files[i].rel_name);
  }
  // An earlier split run's parts vouch for nothing now either.
  st = RemoveMarkersAndParts(plan.dst, callbacks);
  if (!st.ok()) return cleanup(st);
  sum.published = true;
  ReleaseLock(run_lock, callbacks);
  return sum;
}

}  // namespace

}  // namespace quench
