// The imatrix_mse search's inner loop: per group of a block of rows, its error at every grid
// step of a range, against its best so far. Two implementations of one definition:
//   SearchBlockScalar: the definition, group by group, step by step (GroupErrorScalar;
//     src/calib/imatrix_mse_scalar.cc).
//   SearchBlock: Highway kernels (dynamic dispatch in src/calib/imatrix_mse_kernel.cc; shared
//     per-target pieces in imatrix_mse-inl.h), equal to the scalar definition bit for bit on
//     every target: groups of whole vectors by the certified search
//     (imatrix_mse_certified.cc, SearchCertified: per group, f32 sums with a rigorous bound
//     on the definition's value, most steps ruled out by one term or one vector of terms,
//     the definition's own sums only for near ties; masks and improved always the
//     definition's, best too when Block::exact_best; NVFP4's groups of 16 the same
//     decisions with lanes across groups, imatrix_mse_fp4_groups.cc), narrower ones in tiles
//     as below (imatrix_mse_tiles.cc).
//
// The definition (imatrix_mse.h has where each rule comes from): per group, with m0, M0 its
// min and max, e = f32(expand), and step i's range mn = RNE_D(p_i * RNE_D(m0 * e)),
// mx = RNE_D(p_i * RNE_D(M0 * e)):
//   int:  scale, zp = calculate_qparams(mn, mx);  q = round(clamp(RNE_D(RNE_D(x / s) + zp)))
//         (no + zp when symmetric);  dq = RNE_D((q - zp) * s)
//   FP4:  s = the search scale of pos = max(|min(mn, 0)|, max(mx, 0));
//         dq = RNE_D(E2M1(RNE_D(x / s)) * s)
//   e_j = |dq_j - x_j|^norm * imp_j, in f32 (norm 3: (d * d) * d; 2: d * d; else powf)
//   err = ((0 + e_0) + e_1) + ... + e_{n-1}, each + in f64 (the e_j widened exactly)
//   f32(err) < best (strict) -> best = f32(err), bit i of the group's mask set, bit i of
//   *improved set (ErrorF32: the reference's best_error is f32, so sums that round to the
//   same f32 tie and the earlier step stays).
// (torch sums err in f32 in its own vectorised order, which depends on the CPU; the f64 sum
// in element order is quench's fixed stand-in since the observer was built, and the golden
// tests against the reference's bytes pin that it chooses the same steps.)
//
// How the kernels keep those bytes while doing less work:
//  - lanes run across groups (lane l of a tile is one group, its elements down the tile), so
//    each lane adds its group's terms in the definition's order, in f64: the sums are the
//    scalar sums bit for bit whatever the vector width;
//  - the terms are non-negative, so the partial sums never decrease: a group whose partial
//    sum reached its best cannot improve, and a tile stops once every lane has (exact; best
//    is an f32 value and rounding to f32 is monotone, so err >= best gives f32(err) >= best:
//    the skips below rule out only groups whose rounded error does not improve either);
//  - before a tile's full pass, each group's term of its element of largest |x|^3 * imp (the
//    one clipping hurts most) is computed: the sequential f64 sum of all n terms is at least
//    (1 - (n + K) 2^-53) times any f64 sum of K of them (here K = 1, where it is at least
//    the term itself), so a group whose bound times 1 - (n + K + 4) 2^-52 is already >= best
//    cannot improve either (exact: the margin covers every rounding of both sums and of the
//    product), and a tile all of whose groups are ruled out is skipped;
//  - the step parameters are computed lane-wise (int, NVFP4) with calculate_qparams'
//    operations, and each block's rows are transposed into tiles once for all its steps
//    (with each group's min and max already times expand, rounded to D);
//  - f32 arithmetic is compiled without contraction (no FMA), as the definition rounds each
//    product and difference.
#ifndef QUENCH_CALIB_IMATRIX_MSE_KERNEL_H_
#define QUENCH_CALIB_IMATRIX_MSE_KERNEL_H_

#include <cstddef>
#include <cstdint>

#include "calib/imatrix_mse.h"
#include "quench/dtype.h"
#include "schemes/int_shared.h"

namespace quench::calib::internal {

// One block of rows in f32 (finite values), searched over steps i0..i1.
struct Block {
  ImatrixFormat format = ImatrixFormat::kInt;
  DType dtype = DType::kBF16;
  intq::internal::Layout layout{};  // kInt: bits, qmin, qmax (group and n_groups unused)
  bool symmetric = true;            // kInt only (FP4 is symmetric)
  double norm = 3.0;
  int grid = 20;                    // p_i = 1 - i / grid
  double expand = 1.0;              // each group's min and max times this before the grid
  const float* x = nullptr;         // rows x cols
  // Instead of x, for blocks IntBf16Handles, IntAvx2Handles (and the other AVX2 int
  // kernels), MxAvx2Handles or Fp4GroupsRawHandles takes: the rows' bf16 encoding, read and
  // widened by that kernel itself (no f32 copy of the block). The AVX2 int, MXFP4 and NVFP4
  // kernels refuse an Inf or NaN there themselves (SearchBlock false).
  const uint8_t* raw = nullptr;
  size_t rows = 0, cols = 0, group = 0;
  const float* imp = nullptr;       // cols values, or nullptr (every weight counts 1)
  int i0 = 0, i1 = 0;
  double* best = nullptr;           // rows x (cols / group), f32 values; FLT_MAX before step 0
  uint32_t* masks = nullptr;        // rows x (cols / group)
  uint32_t* improved = nullptr;     // |= bit i when some group improved at step i
  // False: the caller reads only masks and improved; best then ends as a lower bound of each
  // group's best error (the certified search skips the definition's sums it does not need).
  bool exact_best = true;
  // When set (only for blocks read raw by IntAvx2Handles, MxAvx2Handles or
  // Fp4GroupsRawHandles): rows x (cols / group), each group's largest magnitude max |x|
  // (before expand), as the kernel's pass finds it.
  float* absmax = nullptr;
  // When set (only for blocks IntAvx2AsymHandles takes): rows x (cols / group) pairs, each
  // group's min and max (before expand), as that kernel's pass finds them.
  float* minmax = nullptr;
  // Only for blocks Fp4GroupsRawHandles takes, with i0 == 0: best and masks hold nothing yet;
  // the kernel takes each group's best as FLT_MAX and its mask as 0, and writes both.
  bool fresh = false;
};

// min_val = amin * expand: the tensor-times-scalar product in f32 (the scalar cast to f32),
// rounded to D (expand 1.0 leaves a D value as it is).
inline float Expanded(float v, double expand, DType d) {
  return intq::internal::RoundToDType(v * static_cast<float>(expand), d);
}

// Step i's shrink factor p = 1 - i / grid, computed in double and rounded to f32 (the
// reference's python float, cast to the f32 tensor's type when it multiplies).
inline float StepFactor(int i, int grid) {
  return static_cast<float>(1.0 - static_cast<double>(i) / grid);
}

// Step i's range (mn, mx) of a group with min m0 and max M0: each times expand (Expanded),
// then p = StepFactor(i, grid), p * tensor multiplied in f32 and rounded to D.
inline void StepRange(float m0, float M0, int i, int grid, double expand, DType d, float* mn,
                      float* mx) {
  const float p = StepFactor(i, grid);
  *mn = intq::internal::RoundToDType(p * Expanded(m0, expand, d), d);
  *mx = intq::internal::RoundToDType(p * Expanded(M0, expand, d), d);
}

// The error as the reference compares it: its sum is an f32 tensor (best_error is f32), so
// two steps whose sums round to the same f32 tie and the earlier stays. The f64 sum rounded
// once to f32 stands for torch's f32 sum: without it, exact FP4 representations at two
// steps (an outlier at 4 s and at 6 s', the rest rounding to 0) differ by ~1e-15 in f64 and
// the later step won, where the reference keeps the earlier (MiniLM, expand 1.8).
inline double ErrorF32(double err) { return static_cast<float>(err); }

// calculate_qparams' max_val_pos: max(|min(mn, 0)|, |max(mx, 0)|).
float Pos(float mn, float mx);

// The scale (and zero point, int) a group's step range gives during the search.
struct StepParams {
  float scale;
  float zp;  // 0 for symmetric and FP4
};
StepParams ParamsOf(const Block& b, float mn, float mx);

// One group's error (the definition) with the given parameters.
double GroupErrorScalar(const Block& b, const float* x, const float* imp, size_t n,
                        StepParams p);

// The definition, and the kernel (dynamic dispatch); both return false on bad parameters.
bool SearchBlockScalar(const Block& b);
bool SearchBlock(const Block& b);

// Whether SearchBlock's NVFP4 search reads this block's rows as bf16 (Block::raw) on this
// CPU: NVFP4 of bf16, groups of 16, norm 2 or 3, at most 32 steps, an 8-lane target.
bool Fp4GroupsRawHandles(const Block& b);

// The kernel's per-group error for given parameters (one per group of the block's rows):
// err[g] equals GroupErrorScalar whenever that is below bound[g]; otherwise it is some value
// >= bound[g] (the kernel stopped early). For the kernel test.
void GroupErrorsKernel(const Block& b, const StepParams* params, const double* bound,
                       double* err);

// For the kernel test: the NVFP4 groups search's terms (imatrix_mse_fp4_groups.cc) of
// magnitudes ax[i] (f32 values of D) with importance imp[i] at scale s (a D value; bf16: in
// [2^-100, 2^100]), norm 2 or 3, D bf16, f16 or f32; `form` 0: lanes across groups; 1: the
// live pairs' form (dq looked up in the step's table; the same as form 0 on targets without
// 8 lanes); 2: the one-term bound's (Fp4TermLargest: dq = RNE_D(6 s) in lanes where
// 5.5 s <= ax, form 0 in the others); 3: the first step's for bf16 on 8-lane targets
// (Fp4TermTwoBase: dq from s and RNE(1.5 s); form 0 otherwise). n: a multiple of 16; out[i]
// must equal the definition's term of x = +-ax[i].
void Fp4TermsForTest(DType d, int norm, int form, const float* ax, const float* imp,
                     size_t n, float s, float* out);

// For the kernel test: the MXFP4 search's lane-wise scales (imatrix_mse-inl.h MxScaleVec) of
// ranges whose f32 products p * min, p * max are pm0[i], pM0[i] (finite), D bf16 or f32; n: a
// multiple of 16. s[i] must equal fp4::Mxfp4GroupScale(Pos(RNE_D(pm0[i]), RNE_D(pM0[i])), D).
void MxScalesForTest(DType d, const float* pm0, const float* pM0, size_t n, float* s);

// For the kernel test: the MXFP4 search's terms of bf16 weights (imatrix_mse_certified.cc
// TermMxPow2) of x[i] (bf16 values) with importance imp[i] at a power-of-two scale s in
// [2^-100, 2^100], norm 2 or 3; n: a multiple of 16. out[i] must equal the definition's term.
void MxTermsForTest(int norm, const float* x, const float* imp, size_t n, float s, float* out);

}  // namespace quench::calib::internal

#endif  // QUENCH_CALIB_IMATRIX_MSE_KERNEL_H_
