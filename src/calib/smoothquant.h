// SmoothQuant (llm-compressor's SmoothQuantModifier, modifiers/transform/smoothquant/base.py)
// from statistics: the per-channel scales, and the element transforms that fold them into the
// checkpoint (balance layers' columns multiplied, the smooth layer's weight and bias divided),
// each rounded as torch rounds them so that the result equals the reference bit for bit.
#ifndef QUENCH_CALIB_SMOOTHQUANT_H_
#define QUENCH_CALIB_SMOOTHQUANT_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "quench/dtype.h"

namespace quench::calib {

// The reference's floor on a smoothing scale (MINIMUM_SMOOTHING_SCALE).
inline constexpr float kMinSmoothingScale = 1e-5f;

// Element `i` of `dtype` data (BF16, F16, F32) as an f32, and `v` rounded to `dtype` (round to
// nearest even, as torch's copy_ into a parameter of that dtype rounds).
float LoadElement(const uint8_t* p, DType dtype, uint64_t i);
void StoreElement(uint8_t* p, DType dtype, uint64_t i, float v);
float RoundTo(DType dtype, float v);

// Per-column max |W| of `rows` rows of a weight with `cols` columns, folded into `acc` (cols
// entries, start them at 0). False for NaN or Inf.
bool ColumnAbsMax(const uint8_t* rows, DType dtype, uint64_t nrows, uint64_t cols, float* acc);

// SmoothQuant's scales for one mapping, as _calculate_smoothing_scales and _apply_smoothing
// compute them for a model in `dtype` (the smooth layer's output dtype, that of its weights):
//   range  = dtype(max - min)                   the hook's per-channel dynamic range
//   wmax   = 2 * max over balance layers |W[:, j]|
//   s      = dtype(dtype(range^a) / dtype(wmax^(1-a)))   where wmax > 0, else range
//   scales = max(s, 1e-5f)                      an f32 tensor (torch.Tensor([1e-5]) promotes)
// `min` and `max` hold the statistics' values (f32); they are first rounded to `dtype`, the
// activations' dtype in the reference's forward pass.
std::vector<float> SmoothQuantScales(DType dtype, double alpha, const std::vector<float>& min,
                                     const std::vector<float>& max,
                                     const std::vector<float>& weight_absmax);

// One step of folding scales into a tensor: kMulCols multiplies column j of a 2-D weight by
// s[j] (balance layers), kDivRows divides row row_offset + i by s[i] (a linear smooth layer:
// AWQ divides the last s.size() rows, its edge case for a fused qkv before o_proj), kDivElems
// divides element i of a 1-D tensor by s[i] (a norm's weight or any smooth layer's bias).
// torch promotes the weight to the scales' dtype (f32 for SmoothQuant and AWQ without duo
// scaling, f64 with it), computes there and copies the result back into the parameter's
// dtype (through f32). Here each product or quotient is taken in f64 and rounded to f32 then
// to the dtype: for f32 scales that is the correctly rounded f32 result (an f64 product or
// quotient of two f32 values rounds to f32 as the f32 operation does).
struct SmoothOp {
  enum Kind { kMulCols, kDivRows, kDivElems } kind = kMulCols;
  std::shared_ptr<const std::vector<double>> s;
  uint64_t row_offset = 0;  // kDivRows: rows before it are left alone
  // The same scales as f32, where every one is an f32 value (SmoothQuant's, AWQ's without
  // duo scaling; F32Scales): a BF16 weight's column product is then one f32 multiply, which
  // rounds the exact product (8 + 24 significant bits, exact in f64) once, as the f64
  // product rounded to f32 does. Null otherwise.
  std::shared_ptr<const std::vector<float>> s32;
};

// `s` as f32 values, or null when one of them is not an f32 value.
std::shared_ptr<const std::vector<float>> F32Scales(const std::vector<double>& s);

// Applies `ops` in order to elements [first, first + count) of a tensor of `dtype` with
// `cols` columns (1 for 1-D tensors), in place; `data` points at element `first`.
void ApplySmoothOps(const std::vector<SmoothOp>& ops, DType dtype, uint64_t cols,
                    uint64_t first, uint64_t count, uint8_t* data);
// The same from `src` into `data` (count elements each): one pass over the bytes where the
// pipeline would copy the rows first and then transform them.
void ApplySmoothOpsFrom(const std::vector<SmoothOp>& ops, DType dtype, uint64_t cols,
                        uint64_t first, uint64_t count, const uint8_t* src, uint8_t* data);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_SMOOTHQUANT_H_
