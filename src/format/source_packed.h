// Quantized sources whose weights are 4-bit codes packed with group scales: AutoAWQ GEMM
// (src/format/source_awq.cc), ModelOpt NVFP4 (src/format/source_modelopt.cc) and gpt-oss's
// MXFP4 expert stacks (src/format/source_mxfp4.cc). Detection
// pairs every packed weight with the tensors it is decoded from and checks their dtypes and
// shapes against each other and the config; decoding and the lossless repack are in
// src/pipeline/source_decode_packed.*.
#ifndef QUENCH_FORMAT_SOURCE_PACKED_H_
#define QUENCH_FORMAT_SOURCE_PACKED_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "format/model_folder.h"
#include "quench/status.h"

namespace quench {

struct SourceQuantization;

// One source tensor a packed weight is read from.
struct SourceTensorRef {
  size_t shard = 0;  // index into ModelFolder::shards
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  uint64_t offset = 0;  // absolute offset in the shard file
  uint64_t nbytes = 0;
};

struct PackedSourceWeight {
  std::string source_name;  // the tensor planned in its place: "X.qweight" or "X.weight"
  uint64_t rows = 0;        // the weight it stands for: [out, in]
  uint64_t cols = 0;
  uint64_t group = 0;       // inputs per scale
  // gpt-oss MXFP4: a stack of this many experts, each [rows, cols] as stored and written
  // transposed, [experts, cols, rows] (transformers' layout); 0 for a 2-D weight.
  uint64_t experts = 0;
  // A stack expert pruning sliced (format/model_folder.h `gathered`): each kept expert's
  // codes and scales, absolute offsets in their shards; empty where the tensor is one run.
  std::vector<uint64_t> codes_at, scales_at;
  std::vector<uint32_t> kept;  // and the source experts kept (messages name them)
  // AWQ qweight I32 [in, out/8]; ModelOpt weight U8 [out, in/2]; MXFP4 _blocks U8
  // [experts, out, in/32, 16].
  SourceTensorRef codes;
  // AWQ scales F16 [in/g, out]; ModelOpt weight_scale E4M3 [out, in/16]; MXFP4 _scales U8
  // [experts, out, in/32].
  SourceTensorRef scales;
  std::optional<SourceTensorRef> zeros;  // AWQ qzeros I32 [in/g, out/8] (zero_point true)
  // ModelOpt: the per-tensor weight_scale_2 and input_scale values, read while planning
  // (4 bytes each) so that a bad one is refused before any weight is read.
  float weight_scale_2 = 0.f;
  std::optional<float> input_scale;
};

// quant_method "awq": fills `out` (format kAwq) or refuses the folder naming the tensor.
Status DetectAwq(const ModelFolder& folder, const JsonValue& q, const std::string& where,
                 SourceQuantization* out);

// ModelOpt NVFP4: `q` is config.json's quantization_config (quant_method "modelopt") or the
// "quantization" object of hf_quant_config.json. Fills `out` (format kModelOptNvfp4).
// `file_only`: described by hf_quant_config.json alone, which compressed-tensors' converters
// (and quench, matching them) copy into dequantized outputs: with no NVFP4 tensor the folder is
// such an output and reads as plain.
Status DetectModelOpt(const ModelFolder& folder, const JsonValue& q, const std::string& where,
                      bool file_only, SourceQuantization* out);

// Where the ModelOpt description is, if the folder is a ModelOpt checkpoint: config.json's
// quantization_config with quant_method "modelopt", else hf_quant_config.json's
// "quantization". Sets *found false when neither, and *file_only when config.json does not
// say modelopt; refuses the two disagreeing.
Result<std::optional<JsonValue>> FindModelOptConfig(const ModelFolder& folder, bool* found,
                                                    bool* file_only);

// quant_method "mxfp4" (gpt-oss): fills `out` (format kMxfp4), keyed by the parameter each
// P_blocks / P_scales pair stands for (P), or refuses the folder naming the tensor.
Status DetectGptOssMxfp4(const ModelFolder& folder, const std::string& where,
                         SourceQuantization* out);

// A tensor of a folder and the shard it lies in.
struct LocatedTensor {
  size_t shard = 0;  // index into ModelFolder::shards
  const TensorInfo* info = nullptr;
};

// Every tensor of `folder` by name: the packed detectors pair a weight's tensors by name,
// wherever their shards.
std::map<std::string, LocatedTensor> TensorsByName(const ModelFolder& folder);

// `l` as a SourceTensorRef (its absolute offset in its shard).
SourceTensorRef RefOf(const ModelFolder& folder, const LocatedTensor& l);

// Python's re.escape (3.7+), as the AutoAWQ converter escapes modules_to_not_convert.
std::string PythonReEscape(const std::string& s);

}  // namespace quench

#endif  // QUENCH_FORMAT_SOURCE_PACKED_H_
