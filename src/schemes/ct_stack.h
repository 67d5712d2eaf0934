// 3-D compressed-tensors weights (fused MoE expert stacks, quench/ct_weight.h `experts`):
// compressed-tensors 0.19.0 stores each expert's 2-D weight as one slice of every tensor
// (pack_to_int32 / unpack_from_int32 per slice, scales [E, out, groups], zero points, g_idx
// and global scales with a leading expert dimension), so expert e decodes exactly as the
// 2-D weight made of its slices: ct_decode.h on that view. Rows of a stack are numbered
// across experts (expert e's row r is row e * rows + r), so a chunk of rows may span experts;
// each expert's part is decoded on its own, only its scale and zero-point rows read.
#ifndef QUENCH_SCHEMES_CT_STACK_H_
#define QUENCH_SCHEMES_CT_STACK_H_

#include <cstdint>
#include <string>

#include "quench/ct_weight.h"
#include "schemes/ct_decode.h"

namespace quench {

// Rows [r0, r1) of `w` decoded to BF16 as DecodeCtWeightRows does, `codes` holding those rows:
//   w 2-D (experts 0), expert < 0: the weight's rows [row0 + r0, row0 + r1);
//   expert >= 0: rows [row0 + r0, row0 + r1) of that expert's slice (a piece of the stack,
//     such as one expert's gate rows, planned as its own weight);
//   expert < 0 on a stack: rows across experts, each expert's part decoded from its slice.
// Errors name the expert (kInvalidInput as DecodeCtWeightRows).
Status DecodeCtStackRows(const CtWeight& w, int64_t expert, uint64_t row0, const CtReader& read,
                         const std::string& weight, const uint8_t* codes, uint64_t r0,
                         uint64_t r1, uint8_t* out, bool* finite);

}  // namespace quench

#endif  // QUENCH_SCHEMES_CT_STACK_H_
