// The inventory of a Hugging Face checkpoint folder: every shard's header, the index, the
// config, and the other files to carry over. Reads headers only, never weights.
#ifndef QUENCH_FORMAT_MODEL_FOLDER_H_
#define QUENCH_FORMAT_MODEL_FOLDER_H_

#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "format/json.h"
#include "format/safetensors.h"
#include "quench/status.h"

namespace quench {

struct Shard {
  std::string rel_name;            // path relative to the folder, '/'-separated
  std::filesystem::path path;      // absolute
  uint64_t file_size = 0;
  SafetensorsHeader header;
  // The header's bytes, where LoadModelFolder was asked for them (`header_bytes`);
  // header.header_hash is then 0 until the caller hashes them (Fnv1a64).
  HeaderBytes header_bytes;
};

struct ModelFolder {
  std::filesystem::path root;
  std::vector<Shard> shards;                 // sorted by rel_name
  std::optional<std::string> index_rel;      // e.g. "model.safetensors.index.json"
  std::optional<std::string> config_rel;     // "config.json", else "params.json", else none
  std::optional<JsonValue> config;           // parsed config file
  std::vector<std::string> other_files;      // every other file, relative, sorted
  std::vector<std::string> linked_folders;   // symbolic links to folders: not followed, sorted
  // Shards the index names no tensor of (Mistral's consolidated.safetensors beside the
  // Hugging Face shards): read and converted like the others, as model_free_ptq reads every
  // *.safetensors file; sorted. Empty without an index.
  std::vector<std::string> unindexed;
  // Tensors SplitFusedExperts left whole ([E, in, out] expert stacks): copied unquantized,
  // so the planner covers their modules with the written ignore list.
  std::vector<std::string> kept_whole;
  // Tensors whose bytes are several ranges of their shard's data section ((begin, length),
  // relative like TensorInfo's, in order), set by expert pruning (src/plan/expert_prune.h);
  // their TensorInfo's begin is the first range's and nbytes() the total.
  std::map<std::string, std::vector<std::pair<uint64_t, uint64_t>>> gathered;
  // Every tensor expert pruning sliced to the kept experts' rows (routers, their biases,
  // stacks kept whole), gathered or, where the kept rows are adjacent, one range: only copied.
  std::set<std::string> sliced;
  // The same tensors by name: the source experts kept, ascending (messages name those).
  std::map<std::string, std::vector<uint32_t>> kept_experts;
  bool config_changed = false;  // `config` was edited (expert count): written, not copied
  // Expert pruning renumbered kept experts (src/plan/expert_prune.h), so that a shard's file
  // order (by old name) is no longer its tensors' name order, which outputs are written in.
  bool experts_renumbered = false;
  // Pieces SplitFusedExperts cut from a compressed-tensors expert stack's stored codes
  // ("...experts.gate_up_proj.weight_packed" [E, 2I, words] -> "...experts.<e>.gate_proj.
  // weight_packed" [I, words]), by piece name: the stack's codes tensor as it was, and the
  // piece's expert and first row. The stack's scales and other tensors stay whole; the
  // source detection (format/source_ct.h) decodes each piece from them.
  struct CtPiece {
    size_t shard = 0;
    TensorInfo stack;
    uint64_t expert = 0;
    uint64_t row0 = 0;
  };
  std::map<std::string, CtPiece> ct_pieces;
  // Pieces SplitFusedExperts cut from a BF16 expert stack stored [E, in, out] when asked to
  // linearize it (Llama 4; ExpertSplitOptions): expert e's gate_proj / up_proj / down_proj
  // weight [out, in] is columns [col0, col0 + out) of the expert's [in, cols] block,
  // transposed. By piece name; the piece's TensorInfo holds its share of the block's bytes
  // (gate the first half, up the second, down all of it) so that sizes and the pages a
  // chunk releases add up to the stack's, while decoding reads the block's columns
  // (PackedKind::kLinear, src/pipeline/source_decode_packed.h).
  struct LinearPiece {
    size_t shard = 0;
    std::string stack;        // the stack's name, for messages
    uint64_t block = 0;       // the expert's [in, cols] block: offset relative to data_start
    uint64_t in = 0, cols = 0;
    uint64_t expert = 0;      // the source expert, for messages
    uint64_t col0 = 0;
  };
  std::map<std::string, LinearPiece> linear_pieces;
  // A compressed-tensors stack's codes sliced by expert pruning and left 3-D (decoded whole,
  // --scheme BF16 or none), by name: the codes tensor as it was and the source experts kept
  // (ascending). The stack's other tensors (scales, zero points, g_idx, global scales,
  // weight_shape) keep every expert; decoding reads the kept experts' slices of them
  // (CtWeight::kept).
  struct CtKept {
    TensorInfo stack;
    std::vector<uint32_t> kept;
  };
  std::map<std::string, CtKept> ct_kept;
};

// Lists `root` recursively (skipping entries whose relative path starts with ".cache" or
// ".gitattributes", as the reference does), reads every `*.safetensors` header, parses the
// index and config, and checks that the index names only existing shards and tensors that
// are in the shard it names. Nothing else is skipped: a file or folder that cannot be read is
// kIo; a symbolic link loop, a dangling link or a special file is kInvalidInput, each naming
// the path. Links to files are followed; links to folders are not (as the reference's
// os.walk) and are listed in `linked_folders`.
//
// `headers_read`, when given, is called once with the number of tensors in all shards as
// soon as every shard's header is parsed, on the thread that parsed the last one, while the
// index may still be parsing on another and before the names and the index are checked: work
// that needs only that count (the planner's tensor array, made from it) fills what would
// otherwise be the tail of the parallel reads. It is not called when a header fails to read;
// the load may still fail after it (a name held twice, a wrong index).
//
// With `header_bytes`, every shard's header.header_hash is left 0 and its bytes are kept in
// Shard::header_bytes instead (ReadSafetensorsHeader's `keep`), for a caller that needs the
// hash only later, or never (a dry run).
Result<ModelFolder> LoadModelFolder(const std::filesystem::path& root,
                                    const std::function<void(size_t tensors)>& headers_read = {},
                                    bool header_bytes = false);

// model_free_ptq's view of fused 3-D MoE expert tensors (llm-compressor 0.14.0.1
// `converter.py::split_fused_moe_experts`, applied to every tensor before matching): a 3-D
// tensor whose name contains "gate_up_proj", [E, 2I, H], becomes per expert e the 2-D
// tensors NAME.replace("gate_up_proj", "<e>.gate_proj") (rows 0..I-1 of expert e) and
// "<e>.up_proj" (rows I..2I-1); one containing "down_proj", [E, H, I], becomes "<e>.down_proj";
// ".weight" is appended when missing. Every piece is a contiguous byte range of the original,
// so only the headers in `folder` are rewritten (names, shapes, offsets). An FP8 stack's block
// scales "NAME_scale_inv" ([E, rows/br, cols/bc]) split the same way into each piece's
// "<piece>.weight_scale_inv"; gate and up halves must each be whole blocks of the config's
// weight_block_size rows (kUnsupported otherwise).
// A compressed-tensors stack (quant_method "compressed-tensors": a 3-D weight_packed, or 3-D
// I8 / F8_E4M3 / U8 weight codes, of a module with a weight_scale) is split the same way,
// its codes only, each piece recorded in `ct_pieces`; its weight_scale, zero points, g_idx,
// global scale and weight_shape stay whole (compressed-tensors' 3-D layout: one 2-D slice per
// expert; the decoder reads each piece's expert slice). [E, in, out] is told by the decoded
// columns (weight_shape's last value for packed codes).
// Deliberate difference: a tensor stored [E, in, out] (Llama 4 and gpt-oss keep gate_up_proj
// as [E, H, 2I] and down_proj as [E, I, H]; told apart with config.json's hidden_size) is
// left whole, since splitting its dimension 1 would cut the hidden dimension, not the
// projections; it is then copied unquantized and listed in `kept_whole`. With `linearize`
// (a Llama 4 checkpoint converted with a scheme: LinearizesExpertStacks), a BF16 one is cut
// instead as llm-compressor's Llama 4 calibration module cuts it (modeling/llama4.py,
// SequentialLlama4TextExperts): expert e's gate_proj.weight = gate_up_proj[e][:, :I].T, its
// up_proj.weight = gate_up_proj[e][:, I:].T and its down_proj.weight = down_proj[e].T, named
// as the split above names pieces, recorded in `linear_pieces` (their bytes are no range of
// the stack) and counted in `linearized`.
struct ExpertSplitOptions {
  bool linearize = false;
};
struct ExpertSplit {
  size_t tensors_split = 0;             // 3-D tensors replaced by per-expert pieces
  size_t pieces = 0;                    // 2-D tensors they became
  size_t linearized = 0;                // of those, [E, in, out] stacks cut transposed
  size_t linear_pieces = 0;             // and the pieces they became
  // [E, in, out] tensors left as they are, other than those in `not_bf16`.
  std::vector<std::string> kept_whole;
  // [E, in, out] stacks `linearize` left whole because they, or their experts module's other
  // stack, are not BF16 (pieces are read as BF16, which would round F32 and F16 values). Both
  // lists are in ModelFolder::kept_whole.
  std::vector<std::string> not_bf16;
};
Result<ExpertSplit> SplitFusedExperts(ModelFolder& folder, ExpertSplitOptions options = {});

// Whether the folder is a Llama 4 checkpoint (config.json's model_type, or its text_config's,
// is llama4 or llama4_text), whose [E, in, out] expert stacks vLLM and transformers read as
// per-expert gate_proj / up_proj / down_proj weights in a compressed-tensors checkpoint
// (vLLM's llama4.py expert mapping; transformers 5.19 linearizes them when it loads one).
bool LinearizesExpertStacks(const ModelFolder& folder);

// config.json's quantization_config object: the top-level one or, where there is none, its
// text_config's (Kimi K2.5 and K2.6 keep their compressed-tensors config there, and
// llm-compressor reads it with quant_config_key="text_config.quantization_config"); nullptr
// when neither is an object.
const JsonValue* SourceQuantizationConfig(const ModelFolder& folder);
// True when SourceQuantizationConfig is text_config's.
bool QuantizationConfigInTextConfig(const ModelFolder& folder);

// SourceQuantizationConfig's quant_method ("fp8", "awq", "compressed-tensors", ...); empty when
// the folder has none.
std::string ConfigQuantMethod(const ModelFolder& folder);

// config.json's quantization_config says quant_method "compressed-tensors". Decoding such a
// folder alone (--scheme BF16) splits nothing: compressed-tensors' convert_checkpoint with
// its dequantizer writes every tensor under its own name and shape, stacks decoded whole.
bool IsCompressedTensors(const ModelFolder& folder);

// One `.safetensors` file on its own (for `quench inspect FILE`); with `header_bytes`, as
// LoadModelFolder's.
Result<Shard> LoadShard(const std::filesystem::path& file, std::string rel_name,
                        bool header_bytes = false);

}  // namespace quench

#endif  // QUENCH_FORMAT_MODEL_FOLDER_H_
