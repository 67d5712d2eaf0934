// What the AWQ row-kernel suites (tests/test_awq_kernel.cc, the exact kernel;
// tests/test_awq_bound.cc, the bound kernel; tests/test_awq_screen.cc, the screened search)
// share: the quantization layouts they run, the activation statistics, and the sweep of
// random rows, importances and candidate scales they compare on.
#ifndef QUENCH_TESTS_AWQ_ROWS_H_
#define QUENCH_TESTS_AWQ_ROWS_H_

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "schemes/chunk.h"
#include "schemes/float_formats.h"

namespace quench::testing {

inline float Bf16Value(uint16_t b) { return std::bit_cast<float>(uint32_t{b} << 16); }

// Activation means over two decades, sum_x2 to match (64 tokens of exactly the mean each):
// the statistics the AWQ searches take.
inline void Activations(std::mt19937& rng, size_t cols, std::vector<float>* x_mean,
                        std::vector<double>* h) {
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  x_mean->resize(cols);
  h->resize(cols);
  for (size_t c = 0; c < cols; ++c) {
    (*x_mean)[c] = static_cast<float>(std::exp(2.3 * u(rng)));
    (*h)[c] = double((*x_mean)[c]) * (*x_mean)[c] * 64.0;
  }
}

// A row of `cols` bf16 weights: normal-ish values of scale `mag`, some zeros and exact
// repeats (ties in min/max), a few outliers.
inline std::vector<uint16_t> AwqRow(std::mt19937& rng, size_t cols, float mag) {
  std::normal_distribution<float> nd(0.f, mag);
  std::uniform_int_distribution<int> pick(0, 99);
  std::vector<uint16_t> w(cols);
  for (size_t c = 0; c < cols; ++c) {
    const int k = pick(rng);
    float v = nd(rng);
    if (k < 5) v = 0.f;
    if (k == 5) v = -0.f;
    if (k == 6) v = 40.f * mag;
    if (k == 7 && c > 0) v = Bf16Value(w[c - 1]);
    w[c] = F32ToBF16(v);
  }
  return w;
}

struct AwqCase {
  int bits;
  size_t group;  // 0: channel
  bool symmetric;
};

// One BF16 row of `cols` columns quantized as `k` (no data: the kernels take the row apart).
inline WeightChunk AwqRowChunk(const AwqCase& k, size_t cols) {
  WeightChunk in;
  in.dtype = DType::kBF16;
  in.rows = 1;
  in.cols = cols;
  in.params.bits = k.bits;
  in.params.group_size = static_cast<int>(k.group);
  in.params.symmetric = k.symmetric;
  return in;
}

// int4/int8 (and int3), symmetric and asymmetric, groups of 16 to 128 and channels.
inline constexpr AwqCase kAwqCases[] = {{4, 128, true}, {4, 128, false}, {4, 64, true},
                                        {4, 32, false}, {8, 128, true},  {8, 0, false},
                                        {4, 0, true},   {3, 16, true}};

// For each of kAwqCases, 256 and 1024 columns and four magnitudes: w = row(rng, cols, mag),
// importances h in [e^-3, e^3], and three candidates: duo scaling's f64 scales over two
// decades, the same as f32 values, all ones (RTN); `check(w, s, h, case, what)` says whether
// the kernel ran. Returns (rows the kernel ran on, rows). One rng, seeded `seed`, in that order.
template <class RowFn, class CheckFn>
std::pair<size_t, size_t> SweepAwqRows(unsigned seed, const std::string& target, RowFn row,
                                       CheckFn check) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  size_t ran = 0, rows = 0;
  for (const AwqCase& k : kAwqCases) {
    for (size_t cols : {size_t{256}, size_t{1024}}) {
      for (float mag : {0.02f, 1.0f, 3e-5f, 2e4f}) {
        const auto w = row(rng, cols, mag);
        std::vector<double> h(cols);
        for (double& x : h) x = std::exp(3.0 * u(rng));
        std::vector<double> duo(cols), f32(cols), ones(cols, 1.0);
        for (size_t c = 0; c < cols; ++c) {
          duo[c] = std::exp(2.3 * u(rng));
          f32[c] = static_cast<float>(duo[c]);
        }
        for (const auto* s : {&duo, &f32, &ones}) {
          const std::string what = target + " bits " + std::to_string(k.bits) + " group " +
                                   std::to_string(k.group) + (k.symmetric ? " sym" : " asym") +
                                   " cols " + std::to_string(cols) + " mag " +
                                   std::to_string(mag);
          ran += check(w, *s, h, k, what);
          ++rows;
        }
      }
    }
  }
  return {ran, rows};
}

}  // namespace quench::testing

#endif  // QUENCH_TESTS_AWQ_ROWS_H_
