// A compressed-tensors source weight as the planner found it (src/format/source_ct.h) and as the
// decoder reads it (src/schemes/ct_decode.h): the format of its config group, its arguments
// and where each tensor that decodes it lies. Plain data, free of layers.
#ifndef QUENCH_CT_WEIGHT_H_
#define QUENCH_CT_WEIGHT_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "quench/dtype.h"

namespace quench {

enum class CtFormat { kNaive, kFloat, kInt, kPack, kNvfp4, kMxfp4, kMxfp8 };
enum class CtStrategy { kTensor, kChannel, kGroup, kTensorGroup, kBlock };

std::string_view CtFormatName(CtFormat f);

// A tensor read with a weight: where it is and what it holds.
struct CtTensor {
  bool present = false;
  std::string name;
  size_t shard = 0;
  uint64_t offset = 0;  // absolute offset in the shard file
  uint64_t nbytes = 0;
  DType dtype = DType::kF32;
  std::vector<uint64_t> shape;
};

// How one compressed-tensors weight ("X.weight", stored as X.weight or X.weight_packed) is
// decoded to BF16. Rows of the stored codes are rows of the weight in every format, so a chunk
// of rows is read alone; its scale and zero-point rows are read with it.
struct CtWeight {
  CtFormat format = CtFormat::kNaive;
  std::string group;     // the config group's name
  int num_bits = 8;
  bool is_float = false;  // weights.type "float"
  bool symmetric = true;
  CtStrategy strategy = CtStrategy::kTensor;
  uint64_t group_size = 0;              // group / tensor_group: columns per scale
  uint64_t block_rows = 0, block_cols = 0;  // block
  uint64_t rows = 0, cols = 0;          // the decoded weight's shape
  uint64_t code_row_bytes = 0;          // bytes of one row of the stored codes
  CtTensor codes;                       // X.weight (F8_E4M3 / I8) or X.weight_packed (I32 / U8)
  CtTensor scale;                       // X.weight_scale
  CtTensor zero_point;                  // X.weight_zero_point (asymmetric)
  CtTensor g_idx;                       // X.weight_g_idx (activation order "group")
  CtTensor global_scale;                // X.weight_global_scale (NVFP4)
  uint64_t scale_cols = 1;              // scales per scale row
  // Rows of the weight one row of `scale` covers (block: block_rows, tensor: rows, else 1).
  uint64_t scale_row_span = 1;
};

}  // namespace quench

#endif  // QUENCH_CT_WEIGHT_H_
