// Planning a conversion (convert.h: MakePlan, DryRun, and Convert's first half): the
// destination checked, the memory budget and its floor, expert pruning's router reads, the
// plan built from the model folder's headers, the free space the run needs.
#include "pipeline/convert_internal.h"

#include <sys/statvfs.h>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "calib/composite.h"
#include "calib/gptq_run.h"
#include "calib/imatrix_run.h"
#include "calib/kv_cache.h"
#include "calib/reap.h"
#include "calib/smoothquant_run.h"
#include "format/file_io.h"
#include "format/model_folder.h"
#include "format/parallel.h"
#include "pipeline/dry_run.h"
#include "pipeline/memory_budget.h"
#include "pipeline/prepass.h"
#include "pipeline/report.h"
#include "pipeline/resume.h"
#include "plan/expert_prune.h"
#include "plan/groups.h"
#include "plan/planner.h"
#include "plan/recipe_calib.h"

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
    // Workers share DST: it fills while each starts.
    if (!o.overwrite && !o.resume && o.workers == 0 && !fs::is_empty(o.dst, ec)) {
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
// for each folder it may create under DST (.quench-resume and subfolders). Shards --resume
// keeps are on the disk already and not counted.
// `late`: a file whose contents are made later (the index), and its size.
uint64_t DiskBytesNeeded(const Plan& plan, uint64_t block, const LateIndex& late) {
  const auto blocks = [block](uint64_t bytes) { return (bytes + block - 1) / block * block; };
  uint64_t total = 0;
  std::set<fs::path> folders;
  const auto add_folders = [&folders](const fs::path& rel) {
    for (fs::path d = rel.parent_path(); !d.empty(); d = d.parent_path()) folders.insert(d);
  };
  for (size_t k = 0; k < plan.shards.size(); ++k) {
    const PlannedShard& ps = plan.shards[k];
    if (ps.already_done) continue;  // kept by --resume (already on the disk), or another worker's
    total += blocks(ps.file_size) + blocks(ShardMarkerBytes(plan, k) + kMarkerSlack);
    add_folders(ps.rel_name);
    add_folders(fs::path(kResumeDir) / (ps.rel_name + ".json"));
  }
  for (size_t i = 0; i < plan.files.size(); ++i) {
    const PlannedFile& f = plan.files[i];
    std::error_code ec;
    // A copied file that cannot be examined fails when it is copied; it is counted empty.
    const uintmax_t size = i == late.file         ? late.size
                           : f.copy_from.empty() ? f.contents.size()
                                                 : fs::file_size(f.copy_from, ec);
    total += blocks(ec ? 0 : static_cast<uint64_t>(size));
    add_folders(f.rel_name);
  }
  return total + folders.size() * block;
}

// --prune-experts: the one read before planning. Scoring experts needs the routers' values, so
// the router tensors (and nothing else) are read here, each once with pread, and their scores
// handed to PruneExperts, which rewrites the folder's headers; the plan is then made from
// headers as always (src/plan/expert_prune.h).
Result<PlannedExpertPrune> PlanExpertPrune(ModelFolder& folder, double fraction) {
  QUENCH_ASSIGN_OR_RETURN(std::vector<MoeLayer> layers, FindMoeLayers(folder));
  std::vector<std::vector<float>> scores;
  size_t open_shard = ~size_t{0};
  MappedFile map;
  std::vector<uint8_t> bytes;
  for (const MoeLayer& l : layers) {
    const Shard& shard = folder.shards[l.shard];
    if (l.shard != open_shard) {
      QUENCH_ASSIGN_OR_RETURN(map, MappedFile::Open(shard.path, /*keep_fd=*/true));
      open_shard = l.shard;
    }
    bytes.resize(l.router_info.nbytes());
    QUENCH_RETURN_IF_ERROR(
        map.ReadInto(shard.header.data_start + l.router_info.begin, bytes.size(), bytes.data()));
    QUENCH_ASSIGN_OR_RETURN(std::vector<float> s,
                            RouterScores(bytes.data(), l.router_info.dtype, l.router_info.shape[0],
                                         l.router_info.shape[1], l.router));
    scores.push_back(std::move(s));
  }
  return PruneExperts(folder, layers, std::move(scores), fraction);
}

}  // namespace

namespace convert_internal {

// Fails early when the destination's file system cannot hold the output: asked of DST, or of
// its nearest existing folder where DST is not made yet (a dry run). The lock's block counts
// in what the run needs; where it is held, also in what was free, so that both figures read
// as before the run began.
Status CheckFreeSpace(const Plan& plan, RunLockBlock lock, const LateIndex& late) {
  std::error_code ec;
  fs::path at = plan.dst;
  while (!fs::exists(at, ec) && at.has_relative_path() && at != at.parent_path()) {
    at = at.parent_path();
  }
  struct statvfs sv {};
  if (statvfs(at.c_str(), &sv) != 0) return Status::Ok();  // unknown: let writes decide
  const uint64_t block = sv.f_frsize > 0 ? sv.f_frsize : (sv.f_bsize > 0 ? sv.f_bsize : 4096);
  const uint64_t lock_block = lock == RunLockBlock::kNone ? 0 : block;
  const uint64_t needed = DiskBytesNeeded(plan, block, late) + lock_block;
  const uint64_t avail = static_cast<uint64_t>(sv.f_bavail) * block +
                         (lock == RunLockBlock::kHeld ? lock_block : 0);
  if (avail < needed) {
    return Error(ErrorCode::kIo, plan.dst.string() + ": needs " + std::to_string(needed) +
                                     " bytes (every file rounded up to the file system's " +
                                     std::to_string(block) + "-byte blocks) but only " +
                                     std::to_string(avail) + " are free");
  }
  return Status::Ok();
}

// The options a run executes with: the memory budget chosen (the default fitted under the
// cgroup's memory limit), with a note saying how when it matters, and one line more when a
// CPU quota sets the default thread count.
ConvertOptions WithMemoryBudget(const ConvertOptions& options, std::vector<std::string>* notes) {
  ConvertOptions o = options;
  const MemoryBudget budget = ChooseMemoryBudget(options.memory_limit, kDefaultMemoryLimit,
                                                 ReadCgroupMemoryLimit(CgroupPrefix()));
  o.memory_limit = budget.bytes;
  if (!budget.note.empty()) notes->push_back(budget.note);
  // Without --threads, a CPU quota below the cores the run sees says so (AvailableCores).
  std::string threads_note;
  if (options.threads <= 0) AvailableCores(&threads_note);
  if (!threads_note.empty()) notes->push_back(threads_note);
  return o;
}

// Buffers per chunk the run's pipeline is sized with (SizePipeline): input pages and output
// buffer (2), a pruning staging copy (3); GPTQ's and SparseGPT's sweep an f32 copy of the
// rows (twice a BF16 chunk) and their codes, three more; the imatrix_mse observer and
// smoothing one more each. Read from the plan as the calibration stages are made from it
// (MakeGptqRun, MakeSparseGptRun and MakeImatrixRun make none where no weight is theirs; an
// imatrix_mse site is planned with --algorithm rtn only), so that the floor checked at
// planning and the pipeline run agree.
int RunBuffersPerChunk(const Plan& plan, const calib::Algorithms& algos) {
  bool gptq = false, sparse = false, imatrix = false;
  for (const PlannedTensor& t : plan.tensors) {
    const PlannedCalibration& c = t.calib.value_or_default();
    gptq = gptq || (algos.gptq && !c.site.empty() && t.action == TensorAction::kQuantize);
    sparse = sparse || (algos.sparsegpt && !c.site.empty() && t.prune);
    imatrix = imatrix || !c.imatrix_site.empty();
  }
  const bool pruning = plan.prune.kind != PlannedPrune::kNone;
  const bool smoothing = !algos.smoothing.empty() && !plan.smoothing.empty();
  return (pruning ? 3 : 2) + (gptq || sparse ? 3 : 0) + (imatrix ? 1 : 0) + (smoothing ? 1 : 0);
}

// The one memory check: a budget below the pipeline's floor for the run's chunks
// (MinimumMemoryLimit) plus what calibration holds beside them (plan.calib_bytes, taken from
// the budget before the chunks are sized: ConvertRun::Run) would be exceeded, not honoured.
// Such a plan is refused, naming what the figure holds and the figure to pass instead.
Status CheckMemoryFloor(const ConvertOptions& requested, const ConvertOptions& options,
                        Plan* plan) {
  QUENCH_ASSIGN_OR_RETURN(const calib::Algorithms algos, calib::ParseAlgorithms(options.algorithm));
  const MemoryFloor f =
      MinimumMemoryLimit(*plan, options.threads, RunBuffersPerChunk(*plan, algos));
  const uint64_t need = f.bytes + plan->calib_bytes;
  if (options.memory_limit >= need) return Status::Ok();
  // Rounded up to whole MiB, so that the figure can be passed back as it is printed.
  const uint64_t mib = (need + (1ull << 20) - 1) >> 20;
  std::string why;
  if (f.chunk_rows > 0) {
    const PlannedTensor& t = plan->tensors[f.tensor];
    why = std::to_string(f.tokens) + " chunks in flight; tensor '" + t.name + "' needs " +
          std::to_string(f.chunk_rows) + " row(s) per chunk" +
          (t.scheme != nullptr ? " for " + std::string(t.scheme->name) : std::string()) + ", " +
          FormatBytes(f.chunk_bytes) + " of input and output";
  }
  // Source pages mapped beyond the chunks, named where they are a visible part: a chunk of a
  // gpt-oss MXFP4 stack or of a linearized Llama 4 stack reads across its expert's whole
  // block (168 MB for Llama 4 Scout's gate_up_proj), an AutoAWQ chunk across its weight.
  if (const uint64_t mapped = MappedOverhangBytes(*plan, options.threads);
      mapped >= (64ull << 20)) {
    why += (why.empty() ? "" : "; ") + FormatBytes(mapped) +
           " of it for source pages mapped beside the chunks (expert blocks that chunks of "
           "MXFP4 or linearized Llama 4 stacks read across, AutoAWQ weights read whole)";
  }
  // The plan's own memory named where it is a visible part (checkpoints of many tensors).
  if (f.plan_bytes >= (4ull << 20)) {
    why += (why.empty() ? "" : "; ") + FormatBytes(f.plan_bytes) + " of it for the plan of " +
           std::to_string(plan->tensors.size()) + " tensors";
  }
  why = why.empty() ? "" : " (" + why + ")";
  if (plan->calib_bytes > 0) {
    why = ": the pipeline's " + FormatBytes(f.bytes) + why + " and " +
          FormatBytes(plan->calib_bytes) + " held by calibration (" +
          (plan->calib_holds.empty() ? "its state" : plan->calib_holds) + ")";
  }
  const std::string given = requested.memory_limit != 0
                                ? "--memory-limit " + FormatBytes(options.memory_limit)
                                : "the default memory budget, " +
                                      FormatBytes(options.memory_limit) + ",";
  plan->errors.push_back(Error(ErrorCode::kUsage,
                               given + " is below what this conversion needs: " +
                                   std::to_string(mib) + " MiB" + why + "; pass --memory-limit " +
                                   std::to_string(mib) + "M or more (or fewer --threads)"));
  return Status::Ok();
}

namespace {

// The checks that read no weight, in the order a user meets them: the source exists, --report
// is outside it, the destination (whose usage problems go in `*dst`, reported with the plan,
// so that --dry-run shows them along with everything else), --prune-experts' fraction and
// metric.
Status CheckFlags(const ConvertOptions& options, Status* dst) {
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
  *dst = CheckDestination(options);
  // Usage errors about flags come before reading anything; a destination problem is
  // reported with the plan, so that --dry-run shows it along with everything else.
  if (!dst->ok() && dst->code() != ErrorCode::kUsage) return *dst;
  const bool reap = options.expert_metric == "reap";
  if (options.prune_experts) {
    if (options.expert_metric != "magnitude" && !reap) {
      return Error(ErrorCode::kUsage, "--expert-metric " + options.expert_metric +
                                          ": magnitude (router L1 norms) or reap (saliency "
                                          "from --stats)");
    }
    if (reap && options.stats.empty()) {
      return Error(ErrorCode::kUsage,
                   "--expert-metric reap needs --stats STATS with REAP saliency (collect it "
                   "with scripts/collect-stats MODEL_DIR --text FILE --reap -o STATS)");
    }
    const double f = *options.prune_experts;
    if (!(f >= 0 && f <= 1)) {
      return Error(ErrorCode::kUsage, "--prune-experts must be a fraction in [0, 1]");
    }
  }
  return Status::Ok();
}

// Calibration (src/calib) only when asked for: the data-free path never reaches it. Each stage's
// planner sees its own algorithm; their fingerprints (the resume fingerprint) and held bytes
// are combined into the plan's. `reap_pruned`: the statistics are REAP's, read by expert
// pruning.
Status PlanCalibration(Plan& plan, const ConvertOptions& options, const calib::Algorithms& algos,
                       bool reap_pruned) {
  std::string fingerprint;  // every stage's settings (the resume fingerprint)
  uint64_t calib_bytes = 0;  // every stage's factors are held at once
  std::string calib_holds;   // and what each stage's are
  const auto add_holds = [&calib_holds](const std::string& holds) {
    if (!holds.empty()) calib_holds += (calib_holds.empty() ? "" : " and ") + holds;
  };
  auto stage = [&](const std::string& algorithm, auto planner) -> Status {
    plan.calib_fingerprint.clear();
    plan.calib_bytes = 0;
    plan.calib_holds.clear();
    QUENCH_RETURN_IF_ERROR(planner(plan, calib::StageOptions(options, algorithm)));
    calib::AppendFingerprint(algorithm, plan.calib_fingerprint, &fingerprint);
    calib_bytes += plan.calib_bytes;
    add_holds(plan.calib_holds);
    return Status::Ok();
  };
  if (algos.Any() || !options.stats.empty()) {
    if (!algos.smoothing.empty()) {
      QUENCH_RETURN_IF_ERROR(stage(algos.smoothing, calib::PlanSmoothQuant));
    }
    if (algos.sparsegpt) QUENCH_RETURN_IF_ERROR(stage("sparsegpt", calib::PlanGptq));
    if (algos.gptq) QUENCH_RETURN_IF_ERROR(stage("gptq", calib::PlanGptq));
    if (!algos.Any() && !reap_pruned) {
      // (With rtn, PlanGptq only notes statistics nothing reads; REAP reads them.)
      QUENCH_RETURN_IF_ERROR(calib::PlanGptq(plan, options));
    }
    QUENCH_RETURN_IF_ERROR(calib::PlanActScales(plan, options));
    QUENCH_RETURN_IF_ERROR(calib::PlanKvScales(plan, options));
  }
  if (!options.stats.empty()) {  // sequential statistics fit one scheme and algorithm
    std::string seq = calib::SequentialStatsNote(options.stats, options.scheme, options.algorithm,
                                                 options.recipe.string());
    if (!seq.empty()) plan.notes.push_back(std::move(seq));
  }
  // The imatrix_mse observer and Wanda scores (no-op unless a group or --prune-metric asks).
  plan.calib_fingerprint.clear();
  plan.calib_bytes = 0;  // the imatrix_mse search's state, set by PlanImatrixWanda
  plan.calib_holds.clear();
  QUENCH_RETURN_IF_ERROR(calib::PlanImatrixWanda(plan, options));
  calib::AppendFingerprint("weighting", plan.calib_fingerprint, &fingerprint);
  plan.calib_fingerprint = fingerprint;
  plan.calib_bytes += calib_bytes;
  add_holds(plan.calib_holds);
  plan.calib_holds = std::move(calib_holds);
  return Status::Ok();
}

// What the expert split and the folder's inventory did that the user should hear of.
void NoteSplitAndLinks(const ExpertSplit& split, const ModelFolder& folder,
                       const ConvertOptions& options, Plan& plan) {
  if (split.tensors_split > split.linearized) {
    plan.notes.push_back("split " + std::to_string(split.tensors_split - split.linearized) +
                         " fused 3-D expert tensor(s) (gate_up_proj, down_proj) into " +
                         std::to_string(split.pieces - split.linear_pieces) +
                         " per-expert weights, as model_free_ptq does");
  }
  if (split.linearized > 0) {
    plan.notes.push_back(
        "linearized " + std::to_string(split.linearized) + " Llama 4 expert stack(s) stored "
        "[experts, in, out] into " + std::to_string(split.linear_pieces) + " per-expert "
        "gate_proj / up_proj / down_proj weights (each "
        "expert's slice transposed), as llm-compressor's Llama 4 calibration module does and as "
        "vLLM reads them");
  }
  if (!split.not_bf16.empty()) {
    plan.notes.push_back(
        "left whole and unquantized: " + std::to_string(split.not_bf16.size()) + " Llama 4 "
        "expert stack(s) of experts modules with a stack not stored BF16 (e.g. " +
        split.not_bf16.front() + "); quench linearizes BF16 stacks only");
  }
  if (!split.kept_whole.empty() && ConfigQuantMethod(folder) == "mxfp4") {
    // gpt-oss's MXFP4 stacks (format/source_mxfp4.cc): decoded whole, and with a scheme that
    // is not BF16 the output's experts outgrow the source's fourfold, which the user should
    // hear of before a 100 GB run.
    if (!IsDecodeOnly(options)) {
      plan.notes.push_back(
          "left unquantized: " + std::to_string(split.kept_whole.size()) +
          " MXFP4 expert stack(s) (e.g. " + split.kept_whole.front() + "), decoded to BF16 "
          "[experts, in, out] (quench does not quantize [experts, in, out] stacks yet): the "
          "output's experts take 4x the source's bytes");
    }
  } else if (!split.kept_whole.empty()) {
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
}

}  // namespace

// MakePlan; where `late_index` is given, BuildPlan's (the index's text not made). Where
// `keep_folder` is given, the model folder read is moved there rather than freed (its names
// and shapes: a cost the caller spends later, off the critical path). With `header_bytes`, the
// plan's source header hashes are left 0 and the headers' bytes kept in the folder
// (LoadModelFolder's `header_bytes`): for a caller that hashes them later (ConvertRun,
// for the resume markers), or never reads the hashes.
Result<Plan> MakePlanImpl(const ConvertOptions& options, LateIndex* late_index,
                          std::optional<ModelFolder>* keep_folder, bool header_bytes) {
  Status dst;
  QUENCH_RETURN_IF_ERROR(CheckFlags(options, &dst));
  const bool reap = options.expert_metric == "reap";
  // The plan's tensor array (~250 bytes per tensor, 17.5 MB for 70k) is made on the thread
  // that read the last shard header, while the other parses the index and before the names
  // are checked, instead of on its own after them. Not with expert pruning, which leaves far
  // fewer tensors than the headers hold. A failure to allocate leaves it to the planner,
  // which then fails as it always has.
  std::vector<PlannedTensor> tensors;
  std::function<void(size_t)> make_tensors;
  if (!options.prune_experts) {
    make_tensors = [&tensors](size_t n) {
      try {
        tensors.reserve(n);
        AdviseHugePages(tensors.data(), n * sizeof(PlannedTensor));
        tensors.resize(n);
      } catch (const std::bad_alloc&) {
        tensors = {};
      }
    };
  }
  QUENCH_ASSIGN_OR_RETURN(ModelFolder folder,
                          LoadModelFolder(options.src, make_tensors, header_bytes));
  // Fused 3-D MoE experts become per-expert 2-D weights, named as model_free_ptq names them;
  // expert pruning alone leaves them whole, as compressed-tensors' convert_checkpoint does.
  const bool none =
      (options.scheme == "none" || options.scheme == "NONE") && options.recipe.empty();
  const bool experts_only = options.prune_experts && options.prune.empty() && none;
  // (An FP8-block source decodes 2-D weights only: its stacks are split even then, and the
  // output is what --scheme BF16 writes.)
  const bool fp8 = ConfigQuantMethod(folder) == "fp8";
  // Llama 4's [E, in, out] stacks are cut into per-expert weights where they may be
  // quantized: the layout llm-compressor writes for Llama 4 and vLLM and transformers read in
  // a compressed-tensors checkpoint. Decoding alone, or a scheme of none, keeps them whole.
  ExpertSplitOptions split_options;
  split_options.linearize = !IsDecodeOnly(options) && !none && LinearizesExpertStacks(folder);
  ExpertSplit split;
  if ((!experts_only || fp8) && !(IsDecodeOnly(options) && IsCompressedTensors(folder))) {
    QUENCH_ASSIGN_OR_RETURN(split, SplitFusedExperts(folder, split_options));
  }
  std::optional<PlannedExpertPrune> experts;
  if (options.prune_experts) {
    if (reap) {
      QUENCH_ASSIGN_OR_RETURN(experts,
                              calib::PlanReapPrune(folder, *options.prune_experts, options.stats));
    } else {
      QUENCH_ASSIGN_OR_RETURN(experts, PlanExpertPrune(folder, *options.prune_experts));
    }
  }
  // Calibration stages (src/calib/composite.h): each planner sees its own algorithm.
  QUENCH_ASSIGN_OR_RETURN(const calib::Algorithms algos, calib::ParseAlgorithms(options.algorithm));
  const std::string primary = algos.gptq        ? "gptq"
                              : algos.sparsegpt ? "sparsegpt"
                              : algos.smoothing.empty() ? "rtn"
                                                        : algos.smoothing;
  QUENCH_ASSIGN_OR_RETURN(Plan plan, BuildPlan(folder, calib::StageOptions(options, primary),
                                               options.threads, std::move(tensors), late_index));
  if (experts) {
    const PlannedExpertPrune& e = *experts;
    plan.notes.push_back(
        "expert pruning (" + e.metric + "): " + std::to_string(e.layers.size()) +
        " MoE layer(s) keep " + std::to_string(e.layers.front().kept.size()) + " of " +
        std::to_string(e.layers.front().experts) + " experts; " +
        std::to_string(e.tensors_removed) + " tensors and " + std::to_string(e.bytes_removed) +
        " source bytes not read; config.json " + e.config_key + " = " +
        std::to_string(e.layers.front().kept.size()));
    plan.expert_prune = std::move(experts);
  }
  QUENCH_RETURN_IF_ERROR(PlanCalibration(plan, options, algos, reap && plan.expert_prune));
  NoteSplitAndLinks(split, folder, options, plan);
  if (!dst.ok()) plan.errors.insert(plan.errors.begin(), dst);
  if (keep_folder != nullptr) keep_folder->emplace(std::move(folder));
  return plan;
}

}  // namespace convert_internal

using convert_internal::CheckFreeSpace;
using convert_internal::CheckMemoryFloor;
using convert_internal::MakePlanImpl;
using convert_internal::RunLockBlock;
using convert_internal::WithMemoryBudget;

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
  // 2^64 and above is no uint64 (the conversion would be undefined): 99999999999999999999T
  // once read as 0, "must be more than 0".
  if (value * mult >= 0x1p64) {
    return Error(ErrorCode::kUsage, "size '" + std::string(text) + "' is too large");
  }
  return static_cast<uint64_t>(value * mult);
}

Result<Plan> MakePlan(const ConvertOptions& options) {
  return MakePlanImpl(options, nullptr, nullptr);
}

namespace {

// DryRun; `listing`: DryRunListing's (the index's text not made).
Result<Plan> DryRunImpl(const ConvertOptions& requested, bool listing) {
  std::vector<std::string> budget_notes;
  ConvertOptions options = WithMemoryBudget(requested, &budget_notes);
  QUENCH_RETURN_IF_ERROR(ApplyRecipeCalibration(options));  // a recipe's GPTQ/SparseGPT
  // A worker's share reads the index's text and the source header hashes (the plan's
  // fingerprint); the listing and --report read neither.
  LateIndex late;
  const bool listing_only = listing && options.workers == 0;
  QUENCH_ASSIGN_OR_RETURN(Plan plan, MakePlanImpl(options, listing_only ? &late : nullptr,
                                                  nullptr, /*header_bytes=*/listing_only));
  plan.notes.insert(plan.notes.begin(), budget_notes.begin(), budget_notes.end());
  QUENCH_RETURN_IF_ERROR(CheckMemoryFloor(requested, options, &plan));
  // The free-space check a real run makes before writing (CheckFreeSpace), where the dry run
  // can count as it does: not for --resume or a worker, which count only the shards left.
  if (plan.errors.empty() && !options.resume && options.workers == 0) {
    // DST as the real run names it (absolute, resolved), for the check and its message.
    const fs::path dst = std::exchange(plan.dst, ResolvePath(options.dst));
    Status s = CheckFreeSpace(plan, RunLockBlock::kToCome, late);
    plan.dst = dst;
    if (!s.ok()) plan.errors.push_back(std::move(s));
  }
  if (!options.report.empty()) {
    const Status outcome = plan.errors.empty() ? Status::Ok() : plan.errors.front();
    QUENCH_RETURN_IF_ERROR(WriteFileAtomic(
        options.report,
        DumpPythonJson(BuildReport(options, plan, nullptr, outcome, /*dry_run=*/true)) + "\n"));
  }
  return plan;
}

}  // namespace

Result<Plan> DryRun(const ConvertOptions& options) { return DryRunImpl(options, false); }

Result<Plan> DryRunListing(const ConvertOptions& options) { return DryRunImpl(options, true); }

}  // namespace quench
