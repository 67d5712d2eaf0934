// Convert(): inventory -> plan -> pipeline -> finalize.
#include "quench/convert.h"

#include <sys/statvfs.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <set>
#include <system_error>

#include "calib/gptq_run.h"
#include "format/file_io.h"
#include "format/model_folder.h"
#include "pipeline/memory_budget.h"
#include "pipeline/pipeline.h"
#include "pipeline/prepass.h"
#include "pipeline/report.h"
#include "pipeline/resume.h"
#include "plan/planner.h"

namespace quench {
namespace fs = std::filesystem;

namespace {

Status CheckDestination(const ConvertOptions& o) {
  if (o.dst.empty()) return Error(ErrorCode::kUsage, "no output folder given");
  if (IsSameOrInside(o.dst, o.src)) {
    return Error(ErrorCode::kUsage, "output folder " + o.dst.string() +
                                        " is the source folder or inside it; quench never "
                                        "writes into a source checkpoint");
  }
  std::error_code ec;
  const fs::file_status st = fs::status(o.dst, ec);
  if (fs::exists(st)) {
    if (!fs::is_directory(st)) {
      return Error(ErrorCode::kUsage, o.dst.string() + " exists and is not a folder");
    }
    if (!o.overwrite && !o.resume && !fs::is_empty(o.dst, ec)) {
      return Error(ErrorCode::kUsage, o.dst.string() +
                                          " exists and is not empty; pass --overwrite to "
                                          "replace the files quench writes there, or --resume "
                                          "to finish an interrupted run");
    }
  }
  return Status::Ok();
}

// A resume marker is one short JSON line; the NVFP4 global scales it holds are not known
// yet when space is checked, so their digits are allowed for.
constexpr uint64_t kMarkerSlack = 256;

// What the run will occupy on DST's file system, in `block`-byte allocation units: every file
// it writes rounded up to whole blocks (the shards, their resume markers, the other files, the
// index and config.json, all present at once before the markers are removed) and one block
// for each folder it may create under DST (.quench-resume and subfolders).
uint64_t DiskBytesNeeded(const Plan& plan, uint64_t block) {
  const auto blocks = [block](uint64_t bytes) { return (bytes + block - 1) / block * block; };
  uint64_t total = 0;
  std::set<fs::path> folders;
  const auto add_folders = [&folders](const fs::path& rel) {
    for (fs::path d = rel.parent_path(); !d.empty(); d = d.parent_path()) folders.insert(d);
  };
  for (size_t k = 0; k < plan.shards.size(); ++k) {
    const PlannedShard& ps = plan.shards[k];
    total += blocks(ps.file_size) + blocks(ShardFingerprint(plan, k).size() + kMarkerSlack);
    add_folders(ps.rel_name);
    add_folders(fs::path(kResumeDir) / (ps.rel_name + ".json"));
  }
  for (const PlannedFile& f : plan.files) {
    std::error_code ec;
    // A copied file that cannot be examined fails when it is copied; it is counted empty.
    const uintmax_t size = f.copy_from.empty() ? f.contents.size() : fs::file_size(f.copy_from, ec);
    total += blocks(ec ? 0 : static_cast<uint64_t>(size));
    add_folders(f.rel_name);
  }
  return total + folders.size() * block;
}

// Fails early when the destination's file system cannot hold the output.
Status CheckFreeSpace(const Plan& plan) {
  struct statvfs sv {};
  if (statvfs(plan.dst.c_str(), &sv) != 0) return Status::Ok();  // unknown: let writes decide
  const uint64_t block = sv.f_frsize > 0 ? sv.f_frsize : (sv.f_bsize > 0 ? sv.f_bsize : 4096);
  const uint64_t needed = DiskBytesNeeded(plan, block);
  const uint64_t avail = static_cast<uint64_t>(sv.f_bavail) * block;
  if (avail < needed) {
    return Error(ErrorCode::kIo, plan.dst.string() + ": needs " + std::to_string(needed) +
                                     " bytes (every file rounded up to the file system's " +
                                     std::to_string(block) + "-byte blocks) but only " +
                                     std::to_string(avail) + " are free");
  }
  return Status::Ok();
}

// The options a run executes with: the memory budget chosen (the default fitted under the
// cgroup's memory limit), with a note saying how when it matters.
ConvertOptions WithMemoryBudget(const ConvertOptions& options, std::string* note) {
  ConvertOptions o = options;
  const MemoryBudget budget = ChooseMemoryBudget(options.memory_limit, kDefaultMemoryLimit,
                                                 ReadCgroupMemoryLimit(CgroupPrefix()));
  o.memory_limit = budget.bytes;
  *note = budget.note;
  return o;
}

}  // namespace

Result<uint64_t> ParseByteSize(std::string_view text) {
  double value = 0;
  const char* first = text.data();
  const char* last = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(first, last, value);
  if (ec != std::errc() || value < 0 || !std::isfinite(value)) {
    return Error(ErrorCode::kUsage, "invalid size '" + std::string(text) +
                                        "' (examples: 512M, 2G, 1.5GiB, 1000000)");
  }
  std::string unit(ptr, last);
  for (char& ch : unit) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  if (unit.ends_with("IB")) unit.resize(unit.size() - 2);
  else if (unit.size() > 1 && unit.ends_with("B")) unit.resize(unit.size() - 1);
  double mult = 1;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "K") mult = 1024.0;
  else if (unit == "M") mult = 1024.0 * 1024;
  else if (unit == "G") mult = 1024.0 * 1024 * 1024;
  else if (unit == "T") mult = 1024.0 * 1024 * 1024 * 1024;
  else {
    return Error(ErrorCode::kUsage, "invalid size unit in '" + std::string(text) +
                                        "' (use K, M, G or T; powers of 1024)");
  }
  return static_cast<uint64_t>(value * mult);
}

Result<Plan> MakePlan(const ConvertOptions& options) {
  std::error_code ec;
  // A path that cannot be examined (a symbolic link loop, no permission) is reported by the
  // inventory below, naming the reason.
  if (!fs::exists(options.src, ec) && !ec) {
    return Error(ErrorCode::kUsage, options.src.string() + ": no such folder");
  }
  if (!options.report.empty() && IsSameOrInside(options.report, options.src)) {
    return Error(ErrorCode::kUsage, "--report " + options.report.string() +
                                        " is inside the source folder; quench never writes "
                                        "into a source checkpoint");
  }
  const Status dst = CheckDestination(options);
  // Usage errors about flags come before reading anything; a destination problem is
  // reported with the plan, so that --dry-run shows it along with everything else.
  if (!dst.ok() && dst.code() != ErrorCode::kUsage) return dst;
  QUENCH_ASSIGN_OR_RETURN(ModelFolder folder, LoadModelFolder(options.src));
  // Fused 3-D MoE experts become per-expert 2-D weights, named as model_free_ptq names them.
  QUENCH_ASSIGN_OR_RETURN(ExpertSplit split, SplitFusedExperts(folder));
  QUENCH_ASSIGN_OR_RETURN(Plan plan, BuildPlan(folder, options));
  // Calibration (src/calib) only when asked for: the data-free path never reaches it.
  if (options.algorithm != "rtn" || !options.stats.empty()) {
    QUENCH_RETURN_IF_ERROR(calib::PlanGptq(plan, options));
  }
  if (split.tensors_split > 0) {
    plan.notes.push_back("split " + std::to_string(split.tensors_split) +
                         " fused 3-D expert tensor(s) (gate_up_proj, down_proj) into " +
                         std::to_string(split.pieces) + " per-expert weights, as model_free_ptq does");
  }
  if (!split.kept_whole.empty()) {
    plan.notes.push_back(
        "left unquantized: " + std::to_string(split.kept_whole.size()) +
        " fused 3-D expert tensor(s) stored [experts, in, out] (Llama 4 / gpt-oss layout, e.g. " +
        split.kept_whole.front() + "); model_free_ptq would split them across the hidden "
        "dimension, which vLLM cannot load; they are copied");
  }
  if (!folder.linked_folders.empty()) {
    plan.notes.push_back("not followed: " + std::to_string(folder.linked_folders.size()) +
                         " symbolic link(s) to folders (e.g. " + folder.linked_folders.front() +
                         "); their files are not carried over, as model_free_ptq does");
  }
  if (!dst.ok()) plan.errors.insert(plan.errors.begin(), dst);
  return plan;
}

Result<Plan> DryRun(const ConvertOptions& requested) {
  std::string budget_note;
  const ConvertOptions options = WithMemoryBudget(requested, &budget_note);
  QUENCH_ASSIGN_OR_RETURN(Plan plan, MakePlan(options));
  if (!budget_note.empty()) plan.notes.insert(plan.notes.begin(), budget_note);
  if (!options.report.empty()) {
    const Status outcome = plan.errors.empty() ? Status::Ok() : plan.errors.front();
    QUENCH_RETURN_IF_ERROR(WriteFileAtomic(
        options.report,
        DumpPythonJson(BuildReport(options, plan, nullptr, outcome, /*dry_run=*/true)) + "\n"));
  }
  return plan;
}

namespace {

Result<ConvertSummary> ConvertPlanned(Plan& plan, const ConvertOptions& options,
                                      const ConvertCallbacks& callbacks,
                                      std::chrono::steady_clock::time_point t0);

}  // namespace

Result<ConvertSummary> Convert(const ConvertOptions& requested,
                               const ConvertCallbacks& callbacks) {
  const auto t0 = std::chrono::steady_clock::now();
  std::string budget_note;
  const ConvertOptions options = WithMemoryBudget(requested, &budget_note);
  QUENCH_ASSIGN_OR_RETURN(Plan plan, MakePlan(options));
  if (!budget_note.empty()) plan.notes.insert(plan.notes.begin(), budget_note);
  Result<ConvertSummary> r = ConvertPlanned(plan, options, callbacks, t0);
  if (!options.report.empty()) {
    const Status outcome = r.ok() ? Status::Ok() : r.status();
    Status w = WriteFileAtomic(
        options.report,
        DumpPythonJson(BuildReport(options, plan, r.ok() ? &r.value() : nullptr, outcome,
                                   /*dry_run=*/false)) + "\n");
    if (r.ok() && !w.ok()) return w;
  }
  return r;
}

namespace {

Result<ConvertSummary> ConvertPlanned(Plan& plan, const ConvertOptions& options,
                                      const ConvertCallbacks& callbacks,
                                      std::chrono::steady_clock::time_point t0) {
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
  // Decoding FP8 sources is planned and shown by --dry-run; the pipeline's decoding stage is
  // not built yet (issue 17), so a run stops here rather than write undecoded bytes.
  if (!plan.source_format.empty()) {
    return Error(ErrorCode::kUnsupported,
                 "the source is " + plan.source_format + "; quench plans its conversion "
                 "(--dry-run) but cannot convert quantized sources yet");
  }
  std::error_code ec;
  const bool created = !fs::exists(options.dst, ec);
  fs::create_directories(options.dst, ec);
  if (ec) return Error(ErrorCode::kIo, options.dst.string() + ": cannot create: " + ec.message());
  plan.dst = ResolvePath(options.dst);

  // On failure: remove what this run created, so nothing half-done is left behind (temporary
  // files are removed by their owners). An interrupted run keeps its complete shards and their
  // resume markers, so that --resume can finish it; the folder has no config.json, so it does
  // not look like a finished checkpoint.
  std::vector<fs::path> published;
  auto cleanup = [&](Status s) -> Status {
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
    fs::remove_all(plan.dst / kResumeDir, ec);
    if (created) fs::remove(plan.dst, ec);  // only succeeds when empty
    return s;
  };

  if (Status s = CheckFreeSpace(plan); !s.ok()) return cleanup(s);
  for (const PlannedShard& ps : plan.shards) {
    fs::create_directories((plan.dst / ps.rel_name).parent_path(), ec);
  }

  const bool pruning = plan.prune.kind != PlannedPrune::kNone;
  uint64_t largest_set = 0;  // what the NVFP4 pre-pass keeps mapped for one fused set
  for (const std::vector<size_t>& set : plan.fused_sets) {
    uint64_t bytes = 0;
    for (size_t m : set) bytes += plan.tensors[m].src_bytes;
    largest_set = std::max(largest_set, bytes);
  }
  QUENCH_ASSIGN_OR_RETURN(std::unique_ptr<calib::GptqRun> gptq,
                          calib::MakeGptqRun(plan, options));
  // GPTQ holds its Hessians outside the chunks (plan.calib_bytes), and each chunk's sweep an
  // f32 copy of its rows (twice a BF16 chunk) and their codes: two more buffers' worth.
  const uint64_t chunk_budget = options.memory_limit > plan.calib_bytes
                                    ? options.memory_limit - plan.calib_bytes
                                    : options.memory_limit / 2;
  PipelineSizing sizing = SizePipeline(chunk_budget, options.threads,
                                       (pruning ? 3 : 2) + (gptq ? 3 : 0), largest_set);
  sizing.write_mode = options.direct_io ? WriteMode::kDirect : WriteMode::kBuffered;
  static std::atomic<bool> no_cancel{false};
  const std::atomic<bool>* cancel = callbacks.cancel ? callbacks.cancel : &no_cancel;
  SourceMaps maps(plan);
  if (Status s = RunPrunePrePass(plan, sizing, maps, cancel); !s.ok()) return cleanup(s);
  GlobalScales global_scales(plan, sizing, maps, cancel);
  uint64_t resumed = 0;
  if (options.resume) {
    // Fingerprints include the global scales, so all of them are needed first.
    if (Status s = global_scales.All(); !s.ok()) return cleanup(s);
    resumed = MarkCompleteShards(plan, callbacks);
  }
  std::vector<uint64_t> zeroed;
  std::vector<ErrorSums> errors;
  Status st = RunShardPipeline(plan, sizing, maps, callbacks, cancel, &zeroed,
                               options.report.empty() ? nullptr : &errors,
                               [&](size_t tensor) { return global_scales.ForTensor(tensor); },
                               gptq.get());
  if (gptq) {
    gptq->Finish(plan);
    if (callbacks.note) {
      for (const PlannedTensor& t : plan.tensors) {
        if (!t.calib_site.empty() && !t.calib_note.empty()) callbacks.note(t.name + ": " + t.calib_note);
      }
    }
  }
  for (const PlannedShard& ps : plan.shards) {
    if (!ps.already_done) published.push_back(plan.dst / ps.rel_name);
  }
  if (!st.ok()) return cleanup(st);

  // Other files, then the index, then config.json: the folder is a loadable checkpoint only
  // once its config is in place.
  for (const PlannedFile& f : plan.files) {
    const fs::path to = plan.dst / f.rel_name;
    fs::create_directories(to.parent_path(), ec);
    st = f.copy_from.empty() ? WriteFileAtomic(to, f.contents) : CopyFileAtomic(f.copy_from, to);
    if (!st.ok()) return cleanup(st);
    published.push_back(to);
  }
  fs::remove_all(plan.dst / kResumeDir, ec);
  st = SyncDirectory(plan.dst);
  if (!st.ok()) return cleanup(st);

  ConvertSummary sum;
  for (const PlannedTensor& t : plan.tensors) {
    if (t.action == TensorAction::kQuantize) ++sum.tensors_quantized;
    if (t.action == TensorAction::kCopy) ++sum.tensors_copied;
    if (t.action == TensorAction::kPrune) ++sum.tensors_pruned_only;
  }
  sum.bytes_in = plan.bytes_in;
  sum.bytes_out = plan.bytes_out;
  sum.chunk_bytes = sizing.chunk_bytes;
  sum.shards_resumed = resumed;
  for (size_t i = 0; i < errors.size(); ++i) {
    plan.tensors[i].error_signal = errors[i].signal;
    plan.tensors[i].error_noise = errors[i].noise;
    plan.tensors[i].error_count = errors[i].count;
  }
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& t = plan.tensors[i];
    if (!t.prune || plan.shards[t.shard].already_done) continue;
    ++sum.pruned_tensors;
    sum.pruned_elements += t.shape[0] * t.shape[1];
    sum.zeroed += zeroed[i];
    plan.tensors[i].prune_zeroed = zeroed[i];
  }
  sum.tokens = sizing.tokens;
  sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return sum;
}

}  // namespace

}  // namespace quench
