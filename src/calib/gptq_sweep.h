// The GPTQ sweep shared by the integer (gptq.cc) and float (gptq_float.cc) weight formats:
// everything of llm-compressor 0.14.0.1's quantize_weight except the fake quantization of one
// element, which the format supplies (gptq_block_update's fake_quantize with the column's
// scale from column_scale_window).
#ifndef QUENCH_CALIB_GPTQ_SWEEP_H_
#define QUENCH_CALIB_GPTQ_SWEEP_H_

#include <algorithm>
#include <cstddef>
#include <vector>

#include "calib/blas.h"
#include "calib/gptq.h"

namespace quench::calib::internal {

// Sweep position -> original column: perm (actorder) or the identity.
inline std::vector<size_t> SweepColumns(const GptqFactor& f) {
  std::vector<size_t> col(f.n);
  for (size_t p = 0; p < f.n; ++p) col[p] = f.perm.empty() ? p : static_cast<size_t>(f.perm[p]);
  return col;
}

// The working weight in sweep order: apply_activation_ordering's gather of W's columns, and
// factorize_hessian's dead columns (diag H == 0) zeroed.
inline std::vector<float> SweepWeight(const GptqFactor& f, const std::vector<float>& orig,
                                      size_t rows, const std::vector<size_t>& col) {
  const size_t n = f.n;
  std::vector<float> w(rows * n);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t p = 0; p < n; ++p) w[r * n + p] = f.dead[p] ? 0.0f : orig[r * n + col[p]];
  }
  return w;
}

// The blocked sweep (section 3.4 of arXiv 2203.07259) on `w` (rows x n, sweep order), in
// place: within a block, column by column, q = fq(r, p, x) (the fake quantization of element
// (r, sweep position p)), e = (x - q) / U[p][p], the block's later columns -= e * U[p][p:];
// then the lazy update W[:, i2:] -= Err1 @ U[i1:i2, i2:] as one SGEMM. Leaves q in w and
// returns the reference's loss sum(e^2) / 2.
template <class Fq>
double Sweep(const GptqFactor& f, const Blas& blas, size_t rows, size_t block_size,
             std::vector<float>& w, Fq&& fq) {
  const size_t n = f.n, bs = block_size;
  std::vector<float> w1(rows * bs), err(rows * bs);
  double loss = 0;
  for (size_t i1 = 0; i1 < n; i1 += bs) {
    const size_t i2 = std::min(i1 + bs, n), bw = i2 - i1;
    for (size_t r = 0; r < rows; ++r) {
      std::copy_n(w.data() + r * n + i1, bw, w1.data() + r * bw);
    }
    for (size_t i = 0; i < bw; ++i) {
      const float* urow = f.u.data() + (i1 + i) * n + i1;  // U[i1+i][i1 .. i2)
      const float d = urow[i];
      for (size_t r = 0; r < rows; ++r) {
        float* wr = w1.data() + r * bw;
        const float x = wr[i];
        const float q = fq(r, i1 + i, x);
        const float e = (x - q) / d;
        w[r * n + i1 + i] = q;
        err[r * bw + i] = e;
        loss += static_cast<double>(e * e);
        for (size_t j = i; j < bw; ++j) wr[j] -= e * urow[j];
      }
    }
    if (i2 < n) {
      blas.sgemm_nn(static_cast<int>(rows), static_cast<int>(n - i2), static_cast<int>(bw),
                    -1.0f, err.data(), static_cast<int>(bw), f.u.data() + i1 * n + i2,
                    static_cast<int>(n), 1.0f, w.data() + i2, static_cast<int>(n));
    }
  }
  return loss / 2;
}

}  // namespace quench::calib::internal

#endif  // QUENCH_CALIB_GPTQ_SWEEP_H_
