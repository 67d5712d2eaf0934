// `quench verify`: checks a compressed-tensors checkpoint (quench's or anyone's) against its
// quantization_config and, optionally, against the source checkpoint it was made from.
//
// Structure (DST alone): every module the config selects (compressed-tensors' rule: 2-D
// `M.weight`, M not ending in "norm", matching a group's targets and no ignore entry; first
// group wins) has exactly the tensors its group's format writes, with the right dtypes and
// shapes; no module the config does not select carries quantization tensors; codes are valid
// (no E4M3 NaN codes, int values and zero points in range, finite positive scales);
// weight_shape agrees with the packed tensors; NVFP4 fused siblings (q/k/v, gate/up incl.
// per-expert, w1/w3, MLA q_a/kv_a) share one weight_global_scale; the index lists every tensor.
//
// An FP8-quantized SRC (quant_method fp8, weight_scale_inv): its weights are compared decoded
// to BF16 (FP8BlockDequantizer's arithmetic); a weight DST stores unquantized must equal the
// decoded source byte for byte, and its scale tensor is then absent from DST.
//
// Against SRC: nothing is missing or extra (every source tensor is either copied byte for byte
// or replaced by its quantized tensors), and every quantized tensor dequantizes close to the
// source: per-tensor SQNR at or above its format's threshold, and every element within the
// format's hard bound (one grid step at its code, plus the rounding of the quotient in the
// weight dtype; values beyond the grid's end must sit on the end code).
//
// Pruning (VerifyOptions::prune, which the checkpoint does not record): quantized tensors are
// compared with the source pruned by the spec, or, without SRC, their dequantized zeros must
// have its structure; a prune-only checkpoint is checked tensor by tensor against SRC.
//
// Memory is bounded: files are memory-mapped and every tensor is walked in row chunks whose
// pages are released after use (small tensors' in batches of up to kChunkBytes per thread);
// no tensor or shard is ever copied into memory. The selected modules are checked on every
// core, their findings merged in module order (the report is a single thread's).
#ifndef QUENCH_VERIFY_VERIFY_H_
#define QUENCH_VERIFY_VERIFY_H_

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "format/json.h"
#include "quench/dtype.h"
#include "quench/status.h"
#include "schemes/prune.h"

namespace quench {

struct VerifyOptions {
  std::filesystem::path dst;
  std::optional<std::filesystem::path> src;  // the checkpoint DST was made from
  // Added to every SQNR threshold (for experiments; 0 in normal use).
  double sqnr_margin_db = 0;
  // The pruning DST was made with (`--prune`; kind kNone: none). The checkpoint does not
  // record it (compressed-tensors' sparsity_config is written empty), so verify is told.
  // Quantized modules: with SRC, compared against the source pruned by this spec (elements
  // zero there must dequantize to exactly 0); without, the dequantized zeros must have the
  // spec's structure. A checkpoint with no quantization_config (pruning alone): with SRC,
  // every tensor is the source or the source pruned by this spec.
  prune::PruneSpec prune;
  // --stats: the statistics DST's static scales came from. With SRC, the conversion is planned
  // again from SRC, the statistics and what the config records (its one preset group, static
  // or asymmetric activations, kv_cache_scheme), and every input_scale, input_zero_point,
  // input_global_scale, k_scale and v_scale of DST must equal the planned bytes
  // (src/verify/static_scales.cc).
  std::optional<std::filesystem::path> stats;
  // `--algorithm sparsegpt`: the pruning chose its own mask (OBS saliency) and updated the
  // weights it kept, so DST is not compared with the source pruned by magnitude, nor its values
  // with the source's: its zeros must have the structure SparseGPT's definition fixes (N:M per
  // row; unstructured: per block of `prune_block` columns over all rows, at least
  // int(rows * width * F) zeros), with or without SRC (verify/zero_structure.h).
  bool prune_updates = false;
  uint64_t prune_block = 128;
  // SRC was an AutoAWQ or ModelOpt NVFP4 checkpoint (the CLI gives `src` as it decoded to
  // BF16, src/cli/verify_packed_source.h). A module DST stores in the source's own format
  // (`format`, `bits`, `group_size`, `symmetric`) is its lossless repack: its scales are
  // expected in `weight_dtype` (the dtype AutoAWQ's F16 scales stand for), and every element
  // must dequantize, as compressed-tensors dequantizes it, to the decoded source bit for bit
  // (rule "lossless"; the error bound alone allows one grid step), zero scales included (the
  // source's). Only the source's `modules` (the Linear layers it quantized or its config
  // left out) are selected by a "Linear" target: its other float weights (embeddings) are not
  // Linear, as the converters' ignore lists assume.
  struct PackedSource {
    std::string format;  // compressed-tensors format name: "pack-quantized", "nvfp4-pack-quantized"
    int bits = 4;
    uint64_t group_size = 0;
    bool symmetric = true;
    DType weight_dtype = DType::kBF16;
    std::set<std::string> modules;
    // The weights ("X.weight") the source stores packed: in `src` they are decoded, so a DST
    // written decoded (no quantization_config) must hold each bit for bit.
    std::set<std::string> decoded;
    // ModelOpt NVFP4: per module, the weight_global_scale a repack writes (1 / the source's
    // weight_scale_2). A DST module holds to the lossless rule only where it has these
    // (AutoAWQ: its F16 scales): converting with pruning, statistics, an observer or
    // another selection requantizes the decoded weights instead (src/plan/planner_sources.cc
    // RepackMode), and those are held to the error bound like any other.
    std::map<std::string, float> global_scales;
  };
  std::optional<PackedSource> packed_source;
};

// One thing wrong. `rule` is a short stable identifier (listed in verifier.h).
struct VerifyProblem {
  std::string file;    // path relative to DST (or "SRC:<rel>" for a source file), may be empty
  std::string tensor;  // tensor or module name, may be empty
  std::string rule;
  std::string message;
  // "model.safetensors: tensor 'x.weight_scale': dtype: expected BF16, found F32"
  std::string ToString() const;
};

// Quality of one quantized module measured against the source.
struct TensorQuality {
  std::string module;        // M (the tensors are M.weight / M.weight_packed, ...)
  std::string file;          // DST shard holding M's weight tensor
  std::string group;         // config group key
  std::string kind;          // "fp8", "int4", "nvfp4", ... (the threshold family)
  uint64_t elements = 0;
  double sqnr_db = 0;        // +inf when the error is exactly zero
  double threshold_db = 0;
  double worst_bound_ratio = 0;  // max over elements of deviation / hard bound (<= 1 passes)
  uint64_t bound_violations = 0;
};

struct VerifyReport {
  std::filesystem::path dst;
  std::optional<std::filesystem::path> src;
  std::vector<VerifyProblem> problems;
  std::vector<TensorQuality> quality;  // one per quantized module checked against SRC
  uint64_t shards = 0;
  uint64_t tensors = 0;               // tensors in DST
  uint64_t modules_quantized = 0;     // modules the config selects (and DST quantizes)
  uint64_t tensors_copied = 0;        // source tensors found unchanged (SRC only)
  uint64_t tensors_pruned = 0;        // pruning alone: tensors equal to the pruned source
  uint64_t tensors_decoded = 0;       // FP8 SRC weights DST stores decoded (BF16), equal to
                                      // the decoded source
  uint64_t static_scales_checked = 0;  // --stats: scales equal to the statistics' values
  uint64_t bytes_compared = 0;        // source bytes compared or dequantized against (SRC only)
  bool ok() const { return problems.empty(); }
};

// Errors (as a Status) only when DST cannot be examined at all (missing folder, I/O failure);
// a malformed or inconsistent checkpoint is reported as problems in the report.
Result<VerifyReport> Verify(const VerifyOptions& options);

// The --stats check alone (Verify runs it when options.stats is set); problems go to report.
Status CheckStaticScales(const VerifyOptions& options, VerifyReport& report);

// The SQNR threshold (dB) below which a quantized tensor is an error, for a threshold family
// ("fp8", "int2".."int8", "nvfp4", "mxfp4") and whether scales are per channel (coarser than
// groups). Set with a margin under what the reference's own outputs reach; see layouts.cc.
double SqnrThresholdDb(std::string_view kind, bool per_channel);

// {"ok", "dst", "src", "summary": {...}, "problems": [...], "tensors": [...]}.
JsonValue VerifyReportJson(const VerifyReport& report);

}  // namespace quench

#endif  // QUENCH_VERIFY_VERIFY_H_
