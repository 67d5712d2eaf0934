// Quantized sources: what a checkpoint's weights are stored as, read from config.json's
// `quantization_config` and checked against the tensors present, so that planning can decode
// them chunk by chunk. Today: FP8 E4M3 weights with `weight_scale_inv` multipliers per
// block (DeepSeek-V3/R1, Kimi-K2: 128x128) or per tensor, scales in F32, BF16 or F8_E8M0.
#ifndef QUENCH_FORMAT_SOURCE_QUANT_H_
#define QUENCH_FORMAT_SOURCE_QUANT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "format/model_folder.h"
#include "format/source_packed.h"
#include "quench/status.h"

namespace quench {

enum class SourceFormat { kPlain, kFp8, kAwq, kModelOptNvfp4, kCompressedTensors, kMxfp4 };

struct CtWeight;  // format/source_ct.h

// Where one quantized weight's scale lives, and the tile each scale covers.
struct SourceScale {
  size_t shard = 0;             // index into ModelFolder::shards
  std::string name;             // "X.weight_scale_inv"
  DType dtype = DType::kF32;    // F32, BF16 or F8_E8M0
  std::vector<uint64_t> shape;  // [ceil(rows/br), ceil(cols/bc)], or one element
  uint64_t offset = 0;          // absolute offset in the shard file
  uint64_t nbytes = 0;
  uint64_t block_rows = 0;      // rows and columns of the weight one scale covers
  uint64_t block_cols = 0;
  // compressed-tensors sources (format/source_ct.h): everything that decodes the weight.
  std::shared_ptr<const CtWeight> ct;
  // A piece of a 3-D stack (PlannedSourceScale's ct_expert, ct_row0).
  int64_t ct_expert = -1;
  uint64_t ct_row0 = 0;
};

struct SourceQuantization {
  SourceFormat format = SourceFormat::kPlain;
  std::string description;  // for notes, dry-run and inspect, e.g. "FP8 E4M3, 128x128 ..."
  uint64_t block_rows = 0;  // the config's weight_block_size; 0 when per tensor
  uint64_t block_cols = 0;
  // Per quantized weight (by name, "X.weight"): its scale.
  std::map<std::string, SourceScale> scales;
  size_t scale_tensors = 0;  // the scale tensors, consumed by decoding (not written)
  // compressed-tensors: stored code tensors named otherwise than their weight
  // ("X.weight_packed" -> "X.weight"), and the other tensors decoding reads or drops (zero
  // points, g_idx, global scales, weight_shape, activation and KV-cache scales): not written.
  std::map<std::string, std::string> renamed;
  std::vector<std::string> consumed;
  // AutoAWQ and ModelOpt NVFP4 (format/source_packed.h): per packed weight, by the name of
  // the weight it stands for ("X.weight"); the tensors read with them (not written); the
  // scheme whose output is their lossless repack, its group size, and the ignore list the
  // reference's converter writes with it.
  std::map<std::string, PackedSourceWeight> packed;
  std::vector<std::string> packed_aux;
  std::string own_scheme;
  uint64_t group_size = 0;
  std::vector<std::string> repack_ignore;
  // ModelOpt kv_cache_quant_algo "FP8": each attention's F32 k_scale / v_scale (stored under
  // k_proj / v_proj) by tensor name, with its value (also in packed_aux). The repack writes
  // them as BF16 and a kv_cache_scheme, as ModelOptNvfp4Converter(kv_cache_scheme=...) does;
  // any other scheme drops them, as the dequantizer does.
  bool kv_cache_fp8 = false;
  std::map<std::string, float> kv_scales;
};

// Reads `folder.config`'s quantization_config and pairs every quantized weight with its
// scale. A config without one gives kPlain. Refused (kInvalidInput, naming the tensor): an
// FP8 weight without its scale, a scale without its weight, a scale of the wrong shape or
// dtype; (kUnsupported) a quant_method or layout quench cannot decode yet.
Result<SourceQuantization> DetectSourceQuantization(const ModelFolder& folder);

// Decodes a scale element to the f32 multiplier it stands for (E8M0: 2^(e - 127), 0xFF NaN).
float SourceScaleToF32(DType dtype, const uint8_t* p);

// Decodes `n` scale elements stored from `p` into `out`, checking each: a multiplier must be
// finite and not negative (zero is allowed: its block decodes to zeros, as the reference
// computes it; -0 counts as zero). Returns the index of the first that is not, or n.
size_t SourceScalesToF32(DType dtype, const uint8_t* p, size_t n, float* out);

}  // namespace quench

#endif  // QUENCH_FORMAT_SOURCE_QUANT_H_
