// Synthetic BF16 weights for the kernel microbenchmarks in bench/ (int4_bench, nvfp4_bench).
#ifndef QUENCH_BENCH_BF16_TENSORS_H_
#define QUENCH_BENCH_BF16_TENSORS_H_

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "schemes/float_formats.h"

// `ntens` tensors of `n` N(0, 0.02) weights, back to back; the others differ from the first
// in their low mantissa bits, so that a run over them reads memory the first did not warm.
inline std::vector<uint16_t> SyntheticBf16Tensors(size_t n, size_t ntens) {
  std::vector<uint16_t> data(n * ntens);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 0.02f);
  for (size_t i = 0; i < n; ++i) data[i] = quench::F32ToBF16(nd(rng));
  for (size_t i = n; i < n * ntens; ++i) data[i] = data[i % n] ^ static_cast<uint16_t>(i / n & 7);
  return data;
}

#endif  // QUENCH_BENCH_BF16_TENSORS_H_
