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
  // A stack of 2-D weights [experts, rows, cols] (fused MoE experts): compressed-tensors
  // 0.19.0 packs and scales each expert's slice as its own 2-D weight, so every tensor above
  // carries a leading experts dimension and rows, cols, code_row_bytes, scale_cols and
  // scale_row_span are one expert's. 0 for a 2-D weight. (src/schemes/ct_stack.h slices it.)
  uint64_t experts = 0;
  // A stack sliced by expert pruning (src/plan/expert_prune.h): its expert e is the source's
  // expert kept[e] (ascending, experts of them); the tensors above stay the source's whole
  // stacks, so each is read at the kept experts' slices only. Empty: expert e is slice e.
  std::vector<uint32_t> kept;
};

// Expert `e` of a stack (stack.experts > e) as a 2-D weight: each present tensor narrowed to
// its slice of source expert s = kept[e] (or e): offset + s * nbytes / stored experts (its
// leading dimension), that dimension dropped; the slice of a [E] tensor is [1]. What
// compressed-tensors 0.19.0 compresses per slice decodes per slice.
inline CtWeight CtExpertSlice(const CtWeight& stack, uint64_t e) {
  CtWeight w = stack;
  w.experts = 0;
  w.kept.clear();
  const uint64_t s = stack.kept.empty() ? e : stack.kept[e];
  for (CtTensor* t : {&w.codes, &w.scale, &w.zero_point, &w.g_idx, &w.global_scale}) {
    if (!t->present || t->shape.empty() || t->shape[0] == 0) continue;
    const uint64_t slice = t->nbytes / t->shape[0];
    t->offset += s * slice;
    t->nbytes = slice;
    t->shape.erase(t->shape.begin());
    if (t->shape.empty()) t->shape = {1};
  }
  return w;
}

}  // namespace quench

#endif  // QUENCH_CT_WEIGHT_H_
