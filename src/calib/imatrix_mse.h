// Importance-weighted clipping search for integer and FP4 weights, as llm-compressor
// 0.14.0.1's `imatrix_mse` observer runs it (observers/imatrix.py: IMatrixMSEObserver,
// _grid_search).
//
// Per group (a row's group_size columns; the whole row for the channel strategy), with the
// group's min and max m0, M0 (values of the weight dtype D):
//   for i = 0 .. max(1, int(maxshrink * grid)):        (0 .. 19 with the defaults)
//     p = 1 - i / grid;  mn = RNE_D(p * RNE_D(m0 * expand)); mx likewise with M0
//     scale, zp = calculate_qparams(mn, mx)             (intq::internal::ComputeParams)
//     q = fake_quantize(w, scale, zp) in D              (x/s, +zp, clamp, round; (q-zp)*s)
//     err = sum_j |q_j - w_j|^norm * imp_j              (norm 3; |d|^3 as d*d*d in f32)
//     a group whose f32(err) is below its best so far keeps (mn, mx)
//                                  (strict, in f32 as the reference's best_error: earliest wins)
//   the search stops after `patience` (5) steps in a row in which NO group of the whole
//   tensor improved.
// FP4 (ImatrixFormat::kNvfp4: groups of 16; kMxfp4: groups of 32, symmetric) runs the same
// grid; calculate_qparams and fake_quantize then follow the FP4 rules:
//   NVFP4: _grid_search drops scale_dtype for TENSOR_GROUP and passes no global scale, so a
//     step's scale is s = RNE_D(pos / 6) (0 -> finfo(D).eps), pos = max(|min(mn,0)|, max(mx,0));
//   MXFP4: s = the E8M0 scale of pos (fp4::Mxfp4GroupScale), the args unchanged;
//   q = RNE_D(E2M1(clamp(RNE_D(w / s), +-6)) * s).
// The chosen ranges then give the scales as min-max ones do: NVFP4's weight_global_scale is
// generate_gparam of the largest chosen pos over the fused set (Observer.get_global_scale
// reads the fused observers' searched min_vals / max_vals, not the weights' max |x|), and
// each group's E4M3 scale is computed from its chosen pos with that global scale.
//
// imp is the site's E[x^2] per input channel (sum_x2 / count, in f32), divided by its mean;
// with no usable importance (all zero, negative, non-finite) every weight counts 1, the
// reference's uniform fallback. The chosen (mn, mx) give the scales and zero points
// (calculate_qparams again) that the scheme's usual quantization and packing then use.
//
// The patience rule looks at the whole tensor, while the pipeline hands over row chunks, so
// one pass runs every step and records per group the steps at which its error improved
// (GroupSteps); StopStep turns the union over all groups into the last step the reference
// runs, and a group's result is its last improvement at or before that step (ChosenStep),
// which is what the reference's search over steps 0..stop keeps: the same result whatever
// the chunking, from one search instead of two.
#ifndef QUENCH_CALIB_IMATRIX_MSE_H_
#define QUENCH_CALIB_IMATRIX_MSE_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "schemes/chunk.h"

namespace quench::calib {

struct ImatrixOptions {
  int grid = 20;            // observer_kwargs "grid"
  double maxshrink = 0.95;  // "maxshrink"
  double norm = 3.0;        // "norm"
  int patience = 5;         // "patience" (0: never stop early)
  double expand = 1.0;      // "expand": each group's min and max times this, before the grid
};

// The number of the last grid step (shrink_steps = max(1, int(maxshrink * grid))).
int LastStep(const ImatrixOptions& o);

// The normalised importance from a site's per-channel sum of x^2 and its token count:
// imp = f32(sum) / f32(count), divided by (mean + FLT_MIN). Empty (uniform) when the values
// are unusable as the reference finds them: count 0, any non-finite or negative, all zero.
std::vector<float> NormalizedImportance(const std::vector<double>& sum_x2, double count);

// Bit i set when some group of the rows improved at step i (all steps run).
// `imp`: cols values, or empty for uniform weights. False on NaN/Inf or bad parameters.
bool AnyImproved(const WeightChunk& in, const std::vector<float>& imp, const ImatrixOptions& o,
                 uint32_t* steps);

// The last step the reference runs, given the union of AnyImproved over all rows.
int StopStep(uint32_t improved_steps, const ImatrixOptions& o);

enum class ImatrixFormat { kInt, kNvfp4, kMxfp4 };

// Columns per group of `in` in format f (0 when the shape or parameters are refused).
size_t GroupColumns(const WeightChunk& in, ImatrixFormat f);

// Every step on the rows: per group (row-major, rows x groups) bit i set when the group's
// error at step i was below its best so far. False on NaN/Inf or bad parameters.
bool GroupSteps(const WeightChunk& in, ImatrixFormat f, const std::vector<float>& imp,
                const ImatrixOptions& o, uint32_t* masks);

// Steps i0..i1 of the search over the rows: each group's error at each step against its best
// so far (`best`, rows x groups, FLT_MAX before step 0), updating best and setting bit i of
// the mask of every group that improved at step i, and of *improved. SearchSteps runs the
// Highway kernels (calib/imatrix_mse_kernel.h), SearchStepsScalar the scalar definition:
// the same results bit for bit. False on NaN/Inf or bad parameters. exact_best false: the
// caller reads masks and improved only, and best ends as a lower bound of each group's best
// error (the kernel then skips the definition's sums it does not need to decide a step).
// group_absmax, when given (rows x groups): each group's largest magnitude
// max(|m0|, |M0|), from the pass of the kernels that read the raw bf16 rows (AVX-512 BF16
// int4; AVX2 int4, int8, MXFP4) or read off the block's f32 copy while it is in cache (for
// ChosenPos and IntKeptScales).
// group_minmax, when given (rows x groups pairs): each group's min m0 and max M0 (for
// IntKeptParams), from the AVX2 asymmetric kernel's pass or the block's f32 copy.
// fresh (i0 == 0 only): best and masks are not set yet; the search takes every group's best
// as FLT_MAX and its mask as 0 (what the caller would have filled), and writes both.
bool SearchSteps(const WeightChunk& in, ImatrixFormat f, const std::vector<float>& imp,
                 const ImatrixOptions& o, int i0, int i1, double* best, uint32_t* masks,
                 uint32_t* improved, bool exact_best = true, float* group_absmax = nullptr,
                 float* group_minmax = nullptr, bool fresh = false);
bool SearchStepsScalar(const WeightChunk& in, ImatrixFormat f, const std::vector<float>& imp,
                       const ImatrixOptions& o, int i0, int i1, double* best, uint32_t* masks,
                       uint32_t* improved);

// One step of the search over the rows, step-major (the pipeline's whole-tensor pass, which
// so runs steps 0..stop only): each group's error at step i against its best so far
// (`best`, rows x groups, FLT_MAX before step 0), updating best and setting bit i of the
// mask of every group that improved; *improved says whether any did. The same comparisons as
// GroupSteps in another order. False on NaN/Inf or bad parameters.
bool StepUpdate(const WeightChunk& in, ImatrixFormat f, const std::vector<float>& imp,
                const ImatrixOptions& o, int i, double* best, uint32_t* masks, bool* improved);

// The step a group keeps when the search stops after step `stop`: its last improvement at or
// before it (step 0 always improves on a finite weight).
inline uint8_t ChosenStep(uint32_t mask, int stop) {
  const uint32_t m = stop >= 31 ? mask : mask & ((2u << stop) - 1u);
  return m == 0 ? 0 : static_cast<uint8_t>(31 - __builtin_clz(m));
}

// Per group the chosen range pos = max(|min(mn, 0)|, max(mx, 0)) of its chosen step (FP4),
// into `pos` (rows x groups). False on NaN/Inf or bad parameters.
bool ChosenRanges(const WeightChunk& in, ImatrixFormat f, const ImatrixOptions& o,
                  const uint8_t* steps, float* pos);

// Whether ChosenPos gives FP4's chosen ranges with these settings: every step's
// p = 1 - i / grid is > 0 (i <= LastStep(o) < grid; maxshrink 1 reaches p = 0).
bool ChosenPosApplies(const ImatrixOptions& o);

// ChosenRanges from each group's largest magnitude instead of the rows, where
// ChosenPosApplies(o): per group (n of them) with a = absmax[k] = max(|m0|, |M0|) and the
// step i = ChosenStep(masks[k], stop), pos = RNE_D(p_i RNE_D(a expand)), the value
// ChosenRanges gives (its comment has the proof), written in D's encoding (DTypeBits(d) / 8
// bytes each) at `pos`; returns the largest (0 for n = 0).
float ChosenPos(const float* absmax, const uint32_t* masks, size_t n, int stop,
                const ImatrixOptions& o, DType d, uint8_t* pos);

// The rows quantized with each group's chosen step (steps: rows x groups), written as the
// scheme's kernel writes them: int (src/schemes/int.h, `packed` or not), NVFP4 (with
// in.params.global_scale) or MXFP4 (src/schemes/fp4.h).
bool QuantizeChosen(const WeightChunk& in, ImatrixFormat f, const ImatrixOptions& o,
                    const uint8_t* steps, bool packed, const ChunkOutputs& out);

// Whether the search of `in` (its dtype, columns and parameters) keeps each group's largest
// magnitude for the quantize stage, which then needs no second pass over the rows for the
// chosen scales: packed symmetric int4 of bf16 where the AVX-512 BF16 or AVX2 int4 search
// (imatrix_mse_int_bf16.h, imatrix_mse_int_avx2.h) and the same family's codes
// (IntBf16Codes4, IntAvx2Codes4) take it; packed symmetric int8 (W8A16) and unpacked
// symmetric codes (W8A8, W4A8) of bf16 where one of those searches or the AVX2 int8 one
// (imatrix_mse_int8_avx2.h) takes the search and Int8Avx2Codes the codes, a byte each.
// SearchSteps' group_absmax is then read by IntKeptScales and the result by QuantizeIntKept.
bool IntScalesKept(const WeightChunk& in, const ImatrixOptions& o, bool packed);

// Where IntScalesKept(in, o, packed): n groups' chosen scales from their largest magnitudes
// (absmax, SearchSteps' group_absmax) and masks with the search stopped after `stop`, as
// QuantizeChosen computes them from the rows (IntAvx2ChosenScales at ChosenStep), in bf16's
// encoding (2 bytes each) at dst.
void IntKeptScales(const WeightChunk& in, const ImatrixOptions& o, const float* absmax,
                   const uint32_t* masks, size_t n, int stop, uint8_t* dst);

// QuantizeChosen's output (packed or not, as IntScalesKept or IntRangesKept took it) for the
// rows of `in` with their groups' chosen scales (scales: rows x groups, bf16's encoding) and,
// asymmetric, zero points (zps: rows x groups; nullptr: symmetric), from IntKeptScales or
// IntKeptParams: the same bytes.
bool QuantizeIntKept(const WeightChunk& in, const uint8_t* scales, const int8_t* zps,
                     const ChunkOutputs& out, bool packed = true);

// The same for packed asymmetric int4 of bf16 where the AVX2 kernels take both the search
// and the chosen codes (imatrix_mse_int_avx2_asym.h): the search keeps each group's min and
// max (SearchSteps' group_minmax), IntKeptParams turns them into the chosen scales (bf16's
// encoding, 2 bytes each) and zero points (1 byte each), and QuantizeIntKept writes
// QuantizeChosen's output from those, with no pass over the rows for the ranges.
bool IntRangesKept(const WeightChunk& in, const ImatrixOptions& o, bool packed);
void IntKeptParams(const WeightChunk& in, const ImatrixOptions& o, const float* minmax,
                   const uint32_t* masks, size_t n, int stop, uint8_t* scales, int8_t* zps);

// The search over steps 0..stop: per group (row-major, rows x n_groups) the chosen scale
// (a value of D) and zero point, and the codes (rows x cols, no offset).
struct ImatrixRows {
  std::vector<float> scales;
  std::vector<int8_t> zero_points;
  std::vector<int8_t> codes;
};
bool Search(const WeightChunk& in, const std::vector<float>& imp, const ImatrixOptions& o,
            int stop, ImatrixRows* out);

// Search, written as the int kernels write (src/schemes/int.h): packed or unpacked codes,
// scales, zero points.
bool SearchInto(const WeightChunk& in, const std::vector<float>& imp, const ImatrixOptions& o,
                int stop, bool packed, const ChunkOutputs& out);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_IMATRIX_MSE_H_
