// compressed-tensors checkpoints as sources (quant_method "compressed-tensors"): every format
// quench writes (float-, int-, naive-, pack-, nvfp4-pack-, mxfp4-pack-, mxfp8-quantized, and
// mixed-precision configs whose groups use several), each weight paired with the tensors that
// decode it. The format of a group is inferred from its weights' arguments exactly as
// compressed-tensors' infer_module_format does (CompressedTensorsDequantizer ignores the
// written "format"); the tensors present must agree with it, or planning stops naming the
// tensor. Decoding (the arithmetic) is src/pipeline/source_decode_ct.cc.
#ifndef QUENCH_FORMAT_SOURCE_CT_H_
#define QUENCH_FORMAT_SOURCE_CT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "format/model_folder.h"
#include "quench/ct_weight.h"
#include "quench/status.h"

namespace quench {

struct SourceQuantization;

// Fills `out` (format kCompressedTensors) from `q`, config.json's quantization_config, and
// the folder's tensors. Refused with kInvalidInput naming the tensor: a quantized weight whose
// tensors contradict its group (missing or extra scale, zero point, shape or global scale;
// wrong dtype or shape), a weight no group targets, a quantized weight the config ignores;
// with kUnsupported: layouts quench does not decode (3-D weights, num_bits the reference
// cannot pack, a group size that does not divide the columns).
Status DetectCompressedTensors(const ModelFolder& folder, const JsonValue& q,
                               const std::string& where, SourceQuantization* out);

}  // namespace quench

#endif  // QUENCH_FORMAT_SOURCE_CT_H_
