// gpt-oss's MXFP4 expert stacks (src/format/source_mxfp4.cc) decoded to the BF16 parameter
// transformers holds: expert e's stored [rows = out, cols = in] codes, written transposed as
// [cols, rows]. Element (o, i) of an expert is E2M1 code i of row o (two a byte, the low
// nibble first) times 2^(s - 127), s the E8M0 scale of inputs 32k..32k+31 of row o
// (transformers' convert_moe_packed_tensors: FP4_VALUES looked up, then torch.ldexp in f32
// rounded to bf16). The product of an E2M1 value (at most two significant bits) and a power
// of two is exact in f32 and in bf16 down to 2^-133, so it is rounded only where it overflows
// (s = 254 with |code value| >= 2: Inf, which the caller refuses). Scale 0xFF is E8M0's NaN.
#ifndef QUENCH_SCHEMES_MXFP4_STACK_H_
#define QUENCH_SCHEMES_MXFP4_STACK_H_

#include <cstdint>

namespace quench {

// One expert's stored tensors: `blocks` rows * cols / 2 bytes, `scales` rows * cols / 32.
struct Mxfp4Expert {
  const uint8_t* blocks = nullptr;
  const uint8_t* scales = nullptr;
  uint64_t rows = 0;  // output features (the stored rows)
  uint64_t cols = 0;  // input features, a multiple of 32
};

// Rows [c0, c1) of the expert's transposed [cols, rows] BF16 weight (inputs c0..c1-1, each
// row the expert's `rows` outputs) into `out`, (c1 - c0) * rows values. Returns the index
// into `scales` of the first NaN scale (0xFF) among those read, or -1; sets *finite false if a
// value overflowed to Inf.
int64_t DecodeMxfp4Transposed(const Mxfp4Expert& x, uint64_t c0, uint64_t c1, uint16_t* out,
                              bool* finite);

// Element (o, i) of the expert by the definition above, one at a time (the tests' reference).
uint16_t Mxfp4ElementScalar(const Mxfp4Expert& x, uint64_t o, uint64_t i);

}  // namespace quench

#endif  // QUENCH_SCHEMES_MXFP4_STACK_H_
