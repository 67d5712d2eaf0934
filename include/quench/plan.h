// The plan: for every source tensor what happens to it, and for every output file its exact
// bytes layout, all computed from headers before any weight is read (llama.cpp-style
// plan-before-stream). The pipeline only executes it.
#ifndef QUENCH_PLAN_H_
#define QUENCH_PLAN_H_

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "quench/boxed.h"
#include "quench/dtype.h"
#include "quench/scheme.h"
#include "quench/status.h"

namespace quench {

// What planning reads of a conversion's options: the selection of tensors, their schemes and
// pruning. ConvertOptions extends it with how the run executes (memory, threads, I/O, resume).
struct PlanOptions {
  std::filesystem::path dst;
  std::string scheme;                  // preset name as the user typed it (the config key)
  std::filesystem::path recipe;        // instead of scheme/targets: a recipe file
  std::vector<std::string> targets;    // empty: every Linear ("Linear")
  std::vector<std::string> ignore;     // the user's ignore entries, in order
  bool default_ignore = true;          // also leave lm_head, embeddings, router gates alone
  std::optional<int> group_size;       // override of the preset's group size (-1: channel)
  std::optional<bool> symmetric;       // override of the preset's symmetry (int schemes)
  std::string prune;                   // "unstructured:0.5", "2:4", ... (empty: none)
  std::string prune_granularity = "row";  // "row" or "tensor" (unstructured only)
  // Whole-expert pruning: the fraction of routed experts removed per MoE layer, in [0, 1]
  // (unset: none), scored by `expert_metric` ("magnitude": L1 norm of the router row).
  std::optional<double> prune_experts;
  std::string expert_metric = "magnitude";
  // Calibration from activation statistics (docs/statistics-format.md; src/calib/).
  std::filesystem::path stats;         // --stats: a statistics folder (empty: data-free)
  // "rtn" (round to nearest), "gptq", "sparsegpt", "smoothquant", "awq", or a comma list
  // composing them (src/calib/composite.h).
  std::string algorithm = "rtn";
  int gptq_block_size = 128;           // GPTQ: columns per lazy-update block
  double dampening = 0.01;             // GPTQ: fraction of mean(diag H) added to the diagonal
  std::string actorder = "static";     // GPTQ: "static" (= "weight") or "none"
  // Static per-tensor activation scales from --stats for schemes with dynamic per-token
  // activations (--static-activations), asymmetric (with a zero point) if asked.
  bool static_activations = false;
  bool asymmetric_activations = false;
  // KV-cache quantization from --stats' key/value ranges: "fp8" writes k_scale / v_scale per
  // attention layer and kv_cache_scheme (empty: none).
  std::string kv_cache;
  // Weight observer for groups made from flags: "minmax" (default) or "imatrix_mse" (the
  // importance-weighted clipping search from --stats; src/calib/imatrix_mse.h). Recipes set
  // it per group (weights.observer).
  std::string observer = "minmax";
  // --observer-arg KEY=VALUE: the imatrix_mse observer's observer_kwargs (maxshrink,
  // patience, grid, norm, expand, strict; src/plan/observer_kwargs.h) for flag-made groups.
  std::vector<std::string> observer_args;
  std::string prune_metric = "magnitude";  // --prune-metric: "magnitude" or "wanda" (--stats)
  double smoothing_strength = 0.5;     // SmoothQuant: alpha, in [0, 1]
  std::string awq_duo_scaling = "true";  // AWQ: "true", "false" or "both"
  int awq_n_grid = 20;                   // AWQ: grid points
  // AWQ: "screened" (candidates dropped on row-sample estimates, the survivors' exact losses
  // decide) or "exact" (src/calib/awq.h AwqSearchKind); changes bytes where the choice
  // differs, so it is in the settings and the resume fingerprint.
  std::string awq_search = "screened";
  // Smoothing mappings a recipe gives (AWQModifier / SmoothQuantModifier `mappings`): the
  // smooth layer's target and the balance layers' ("re:" regexes or names). Empty: the
  // registry's for config.json's architecture (src/calib/mappings.h).
  struct SmoothingMapping {
    std::string smooth;
    std::vector<std::string> balance;
    bool operator==(const SmoothingMapping&) const = default;
  };
  std::vector<SmoothingMapping> smoothing_mappings;
  // SmoothQuantModifier.ignore: a mapping is skipped when its smooth layer and every balance
  // layer match one of these (the reference's rule).
  std::vector<std::string> smoothing_ignore;
};

// kPrune: magnitude pruning alone (--scheme none): same name, dtype and shape, zeros written.
// kDecode: a weight stored quantized in the source (FP8), written decoded to BF16.
enum class TensorAction { kCopy, kQuantize, kPrune, kDecode };

// How a source weight's bytes become its values where they are not plain elements scaled
// by blocks (PlannedSourceScale::packed_kind). The numbers are part of the resume markers'
// plan descriptor (src/pipeline/resume.cc): never renumber.
enum class PackedKind : int {
  kNone = 0,           // elements (BF16, FP8 with block scales, compressed-tensors)
  kAwq = 1,            // AutoAWQ qweight / qzeros / scales
  kModelOptNvfp4 = 2,  // ModelOpt NVFP4 codes and scales
  kMxfp4 = 3,          // gpt-oss MXFP4 blocks and E8M0 scales
  kLinear = 4,         // a piece of a Llama 4 BF16 expert stack, read transposed
};

// Where a source-quantized weight's scale is (an FP8 checkpoint's weight_scale_inv): the
// weight's rows are decoded to BF16 with it, chunk by chunk, before anything else reads them.
struct PlannedSourceScale {
  std::string name;           // "X.weight_scale_inv", for messages
  size_t shard = 0;           // the scale's shard: not always the weight's
  uint64_t offset = 0;        // absolute offset of the scale tensor in that file
  uint64_t nbytes = 0;
  DType dtype = DType::kF32;  // F32, BF16 or F8_E8M0
  uint64_t block_rows = 0;    // weight rows and columns one scale covers
  uint64_t block_cols = 0;
  uint64_t scale_cols = 0;    // scales per tile row: ceil(cols / block_cols)
  // A compressed-tensors source (src/format/source_ct.h): the tensors that decode the weight.
  std::shared_ptr<const struct CtWeight> ct;
  // A piece of a 3-D compressed-tensors stack planned as its own weight (one expert's gate,
  // up or down rows, as model_free_ptq splits fused experts): the expert and the piece's
  // first row in that expert's weight. -1: the whole weight (a stack decoded whole is planned
  // [experts * rows, cols]).
  int64_t ct_expert = -1;
  uint64_t ct_row0 = 0;
  // AutoAWQ, ModelOpt NVFP4 and gpt-oss MXFP4 sources, and linearized BF16 expert stacks
  // (below) (src/pipeline/source_decode_packed.h): the scale above is AWQ's `scales` /
  // ModelOpt's `weight_scale` / MXFP4's `_scales`; the codes are the planned tensor's own
  // bytes. `repack`: written as the source's own scheme from the stored codes and scales
  // unchanged (lossless), not decoded.
  PackedKind packed_kind = PackedKind::kNone;
  bool repack = false;
  uint64_t group = 0;             // inputs per scale
  std::optional<std::pair<size_t, uint64_t>> zeros;  // AWQ qzeros: shard, absolute offset
  float weight_scale_2 = 0.f;     // ModelOpt per-tensor values
  float input_scale = 0.f;
  // An MXFP4 stack sliced by expert pruning: each kept expert's codes and scales (absolute
  // offsets); empty where each is one run.
  std::vector<uint64_t> codes_at, scales_at;
  std::vector<uint32_t> kept;  // the source experts kept, for messages
  // A piece of a BF16 stack stored [E, in, out], linearized (kLinear, format/model_folder.h
  // `linear_pieces`): `name` is the stack's, `offset` the absolute offset of the expert's
  // [in, stack_cols] block and `nbytes` its size; the piece is columns [col0, col0 + rows)
  // of the block, transposed.
  uint64_t stack_cols = 0, col0 = 0, expert = 0;
};

// Magnitude pruning as planned (src/schemes/prune.h holds the definition).
struct PlannedPrune {
  enum Kind { kNone, kUnstructured, kNM } kind = kNone;
  double fraction = 0;
  int n = 0, m = 0;
  bool per_tensor = false;
  std::string text;        // as the user wrote it, e.g. "2:4"
  std::string structure;   // "2:4", "unstructured"
};

// One tensor in an output shard, at an absolute offset of that file.
struct PlannedOutput {
  std::string name;
  DType dtype = DType::kBF16;
  std::vector<uint64_t> shape;
  uint64_t file_offset = 0;
  uint64_t nbytes = 0;
  uint64_t rows_per_slab = 1;   // see SchemeOutput
  uint64_t bytes_per_slab = 0;
  // Outputs not produced by the kernel: written when the file is created.
  SchemeOutput::Source source = SchemeOutput::Source::kKernel;
  std::string constant;         // kShape: the bytes; kGlobalScale: filled by the pre-pass
};

// One MoE layer as expert pruning left it: the router, how many experts it had, which it keeps
// (old indices, ascending; new index = position) and every expert's score.
struct PlannedExpertLayer {
  std::string prefix;  // "<P>" of the experts' names "<P>.experts.<i>.*"
  std::string router;
  uint64_t experts = 0;
  std::vector<uint32_t> kept;
  std::vector<double> scores;  // magnitude: router row L1 norms; reap: mean saliency
  std::vector<int64_t> tokens;  // reap: tokens routed to each expert in the statistics
};

// Whole-expert pruning as planned (src/plan/expert_prune.h).
struct PlannedExpertPrune {
  double fraction = 0;
  std::string metric;               // "magnitude" or "reap"
  std::string config_key;           // config.json's expert count key, e.g. "num_experts"
  std::vector<PlannedExpertLayer> layers;
  uint64_t tensors_removed = 0;     // source tensors not written at all
  uint64_t bytes_removed = 0;       // source bytes not read (removed tensors and sliced rows)
};

// Per-tensor pruning's threshold, from the pre-pass (--prune-granularity tensor): threshold
// magnitude bits, how many elements equal to it are pruned (the first ones in row-major
// order), the total pruned, and per row the count of threshold-equal elements before it.
struct PlannedPruneThreshold {
  uint32_t magnitude = 0;
  uint64_t equal = 0;
  uint64_t total = 0;
  std::vector<uint64_t> equal_before;
};

// A weight's calibration from activation statistics (src/calib/). GPTQ: the statistics site
// whose Hessian its sweep uses (and, for a per-expert site, the expert); empty where the
// weight is rounded to nearest. `note` says why a weight GPTQ was asked for is not (no
// Hessian for its site, ...), or, after the run, that its Hessian could not be factored;
// `loss` is GPTQ's loss after the run. (GPTQ and SparseGPT of one composed run read the same
// Hessian site.) The imatrix_mse observer: the site whose E[x^2] weights its search (and
// expert); empty where the observer is not used. Kept apart from `site` so that algorithms
// compose.
struct PlannedCalibration {
  std::string site;
  std::optional<uint64_t> expert;
  std::string note;
  double loss = 0;
  std::string imatrix_site;
  std::optional<uint64_t> imatrix_expert;
};

// One source tensor and what happens to it. An MoE checkpoint has ~10^5 of these, so what few
// tensors use (a quantized source's description, per-tensor pruning thresholds, calibration)
// is boxed (quench/boxed.h): one pointer here, allocated only where set.
struct PlannedTensor {
  std::string name;
  std::vector<uint64_t> shape;
  DType dtype = DType::kBF16;
  TensorAction action = TensorAction::kCopy;
  DType compute_dtype = DType::kBF16;  // what kernels read: dtype, or BF16 when decoded
  bool prune = false;                  // magnitude pruning before quantizing (or alone)
  // Rewritten by smoothing (SmoothQuant): its elements are scaled before they are quantized or
  // copied (Plan::smoothing says by which mappings).
  bool smoothed = false;
  size_t shard = 0;             // source and output shard index (same relative name)
  uint64_t src_offset = 0;      // absolute offset in the source file
  uint64_t src_bytes = 0;
  // Set for a tensor gathered from several ranges of its source shard (expert pruning: a
  // router's kept rows, a 3-D expert stack's kept experts): absolute (offset, length) pieces in
  // output order; src_offset is the first's and src_bytes their sum. Such tensors are only
  // copied, a piece at a time, so nothing else of the source tensor is read.
  std::vector<std::pair<uint64_t, uint64_t>> src_ranges;
  // Set for a weight stored quantized in the source: kernels then see its rows decoded, in
  // `compute_dtype` (BF16), instead of `dtype`.
  Boxed<PlannedSourceScale> source_scale;
  const SchemeInfo* scheme = nullptr;  // when quantized
  SchemeParams params;                 // the preset's parameters with the user's overrides
  int group = -1;                      // index into Plan::groups when quantized
  int fused_set = -1;                  // index into Plan::fused_sets (NVFP4 global scale)
  float global_scale = 0.f;            // NVFP4: set by the pre-pass
  // Wanda (--prune-metric wanda): index into Plan::prune_scales of this weight's per-column
  // sqrt(E[x^2]) (-1: magnitude pruning).
  int prune_scale = -1;
  size_t kernel_outputs = 0;           // leading entries of `outputs` the kernel writes
  Boxed<PlannedPruneThreshold> prune_threshold;  // per-tensor pruning, from the pre-pass
  Boxed<PlannedCalibration> calib;     // set where calibration planned something for it
  std::vector<size_t> outputs;  // indices into the shard's outputs, in the scheme's slot order
  std::string why;              // for copies: the rule that left it alone
};

// What a run measured of one tensor (Plan::results).
struct TensorResult {
  // With --report: sums over the sampled rows of x^2 and (x - dequantized)^2.
  double error_signal = 0, error_noise = 0;
  uint64_t error_count = 0;
  uint64_t prune_zeroed = 0;  // positions pruning zeroed
};

// One smoothing mapping (SmoothQuant or AWQ) as planned (src/calib/smoothquant_run.h): the
// smooth layer whose output channels are divided by the scales, the balance layers whose
// input columns are multiplied by them, and the statistics site their shared input was
// recorded at (and, per-expert, the expert); AWQ's choice and losses after the run.
struct PlannedSmoothing {
  std::string smooth;                  // module name
  std::vector<std::string> balance;    // module names
  std::string site;
  std::optional<uint64_t> expert;
  std::vector<size_t> tensors;         // plan tensors rewritten (balance, smooth weight/bias)
  double min_scale = 0, max_scale = 0;  // after the run
  // AWQ: the loss used ("full Hessian" or "diagonal sum_x2"), the chosen grid point, its proxy
  // loss and ratio 0's (round to nearest).
  std::string loss_kind;
  double ratio = -1;
  bool duo = false;
  double loss = 0, loss_rtn = 0;
  // The search that ran for this mapping ("exact" or "screened"), whether loss_rtn is exact
  // (screened: RTN dropped on an estimate gives its estimate) and the screen's survivors.
  std::string search;
  bool rtn_exact = true;
  size_t finalists = 0;
};

// A config group as applied: written to quantization_config.config_groups under `key`.
struct PlannedGroup {
  std::string key;
  const SchemeInfo* scheme = nullptr;
  SchemeParams params;
  std::vector<std::string> targets;
  size_t tensors = 0;  // how many tensors it quantizes
  std::string observer;  // weights' observer: empty (min-max) or "imatrix_mse"
  // Its observer_kwargs as config.json writes them (Python JSON text; "" for {}).
  std::string observer_kwargs;
};

struct PlannedShard {
  std::string rel_name;
  std::filesystem::path src_path;
  uint64_t src_size = 0;         // source file size and header hash: the resume fingerprint
  uint64_t src_header_hash = 0;
  bool already_done = false;     // --resume found this shard complete and matching
  std::string header;           // bytes [0, data_start) of the output file
  uint64_t file_size = 0;
  std::vector<PlannedOutput> outputs;  // sorted as safetensors' writer sorts them
};

struct PlannedFile {
  std::string rel_name;
  std::filesystem::path copy_from;  // empty: write `contents`
  std::string contents;
};

struct Plan {
  std::filesystem::path src;
  std::filesystem::path dst;
  std::vector<PlannedShard> shards;
  std::vector<PlannedGroup> groups;     // in the order the recipe (or flags) gave them
  PlannedPrune prune;
  std::optional<PlannedExpertPrune> expert_prune;
  std::vector<PlannedTensor> tensors;   // in source shard order, then header offset order
  // Non-safetensors files: copies of the source's other files, then the index and the config,
  // which are published last so a folder without them is visibly unfinished.
  std::vector<PlannedFile> files;
  // Tensors (indices into `tensors`) that must share one NVFP4 global scale, as vLLM fuses
  // them (q/k/v, gate/up, w1/w3, MLA q_a/kv_a); singletons are sets of one.
  std::vector<std::vector<size_t>> fused_sets;
  std::vector<std::string> notes;       // warnings and information for the user
  // What the source's weights are stored as ("" for BF16/F16/F32 checkpoints), e.g. "FP8 E4M3,
  // 128x128 block scales (F32), 7 weights".
  std::string source_format;
  // Every problem found while planning (a real run stops at the first; --dry-run lists all).
  std::vector<Status> errors;
  std::vector<std::string> config_ignore;  // the ignore list written to quantization_config
  // Memory calibration holds besides the pipeline's chunks (GPTQ: the Hessians being factored
  // and in use), taken from the budget before the chunks are sized.
  uint64_t calib_bytes = 0;
  // What calib_bytes holds, for the budget's refusal (src/pipeline/convert.cc): each stage's
  // largest holder, e.g. "GPTQ: the largest Hessian (site X) 3 x 4 MiB"; stages joined by
  // " and ". Empty when calib_bytes is 0.
  std::string calib_holds;
  // Wanda: per statistics site (and expert), sqrt(E[x^2]) per input column (src/calib/wanda.h).
  std::vector<std::vector<float>> prune_scales;
  // What else decides calibrated tensors' bytes (GPTQ's options and the statistics' manifest
  // hash): part of the resume fingerprint of shards holding them. A composed run joins every
  // stage's ("smoothquant{...} gptq{...}", src/calib/composite.h).
  std::string calib_fingerprint;
  std::vector<PlannedSmoothing> smoothing;  // in mapping order
  // After a run: per tensor, indexed as `tensors` (empty before, and when nothing was
  // measured: no --report and no pruning).
  std::vector<TensorResult> results;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
};

}  // namespace quench

#endif  // QUENCH_PLAN_H_
