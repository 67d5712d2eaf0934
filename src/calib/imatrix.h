// llama.cpp importance matrices (tools/imatrix/imatrix.cpp) imported as activation statistics
// (docs/statistics-format.md): both file layouts, the GGUF-to-Hugging-Face tensor names, and
// `quench stats import-imatrix FILE --model SRC -o STATS`.
//
// What an imatrix holds per weight: per input channel the sum over tokens of x^2, and the
// token count (per expert for MoE `*_exps` weights, counting the tokens routed to each
// expert). That is a site's `count` and `sum_x2`; there is no sum |x|, no min/max and no
// Hessian, so the imported sites list only those two fields.
#ifndef QUENCH_CALIB_IMATRIX_H_
#define QUENCH_CALIB_IMATRIX_H_

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "quench/status.h"

namespace quench::calib {

// One weight's entry, named as llama.cpp names the weight ("blk.0.attn_q.weight").
struct ImatrixEntry {
  std::string name;
  // GGUF: in_sum2's shape, ne[0] columns (input features) by ne[1] matrices (experts).
  // Legacy .dat: 0 (unknown until the model says how many input features the weight has).
  uint64_t cols = 0, mats = 0;
  std::vector<double> sum_x2;   // per matrix, per column: sum over tokens of x^2
  std::vector<int64_t> counts;  // per matrix (GGUF) or one for every matrix (legacy)
};

struct Imatrix {
  std::string layout;  // "gguf" or "dat"
  uint32_t gguf_version = 0;
  std::vector<ImatrixEntry> entries;  // sorted by name
  std::vector<std::string> datasets;  // imatrix.datasets, or the legacy trailer's file name
  std::optional<uint64_t> chunk_count, chunk_size;  // imatrix.chunk_count / chunk_size
  // Legacy: the chunk size the counts assume (llama.cpp's reader takes its -c; the file does
  // not store it), and the chunk count of the trailer.
  std::optional<uint64_t> assumed_chunk_size, last_chunk;
};

// Reads either layout (GGUF when the file starts with "GGUF"). Legacy values are stored as
// mean(x^2) * ncall with ncall the count in chunks, so sums and counts are rebuilt as
// llama.cpp's own reader does: sum = value * chunk_size, count = ncall * chunk_size (the mean
// sum / count is exact whatever chunk size is assumed). Refuses (kInvalidInput, naming file and
// entry) truncated files, sums without counts, counts that do not match the sums' matrices,
// NaN, Inf or negative sums and counts.
Result<Imatrix> ReadImatrix(const std::filesystem::path& file, uint64_t legacy_chunk_size = 512);

// Where one imatrix weight goes in a Hugging Face checkpoint of the given model_type.
struct ImatrixTarget {
  // Checkpoint weight name; per-expert weights hold "{E}" for the expert index.
  std::string weight;
  bool per_expert = false;
  // Weights that read one activation share a site: `group` is the same for them, and the site
  // is named after the present member with the lowest `rank` (the one the model runs first).
  std::string group;
  int rank = 0;
  std::string site;  // the site's name when this member names it
  // Set for weights llama.cpp has but a Hugging Face checkpoint reads differently (DeepSeek's
  // absorbed MLA attn_k_b / attn_v_b): the entry is left out, with this reason.
  std::string skip_reason;
};

// Architectures whose names are mapped: llama, mistral, qwen2, qwen3, qwen3_moe, mixtral,
// deepseek_v2, deepseek_v3 and kimi_k2 (llama.cpp's deepseek2).
bool ImatrixArchitectureKnown(const std::string& model_type);

// Where a checkpoint keeps its language model: the decoder layers' prefix ("model.layers."; a
// multimodal checkpoint's "language_model.model.layers." or "model.language_model.layers.")
// and the output head's module ("lm_head", "language_model.lm_head").
struct LanguageModelNames {
  std::string layers = "model.layers.";
  std::string head = "lm_head";
};

// The target of an imatrix entry name; kInvalidInput for a name the architecture lacks.
Result<ImatrixTarget> MapImatrixName(const std::string& model_type, const std::string& name,
                                     const LanguageModelNames& names = {});
// The reverse, for a checkpoint weight: the imatrix name that would carry its statistics
// (expert index dropped), or "" when none does (norms, embeddings, biases).
std::string ImatrixNameOf(const std::string& model_type, const std::string& weight,
                          const LanguageModelNames& names = {});

struct ImportOptions {
  uint64_t legacy_chunk_size = 512;  // llama-imatrix's default context (-c 512)
};

// Reads `file`, maps every entry onto the checkpoint in `model_dir` (names and input widths
// checked against its safetensors headers and config.json), and writes statistics folder
// `out`: built in a temporary folder beside it and renamed into place, so `out` either does
// not appear or is complete. `out` must not exist or be empty.
Status ImportImatrix(const std::filesystem::path& file, const std::filesystem::path& model_dir,
                     const std::filesystem::path& out, const ImportOptions& options = {});

}  // namespace quench::calib

#endif  // QUENCH_CALIB_IMATRIX_H_
