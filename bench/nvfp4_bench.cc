// The NVFP4 kernel's and the global-scale pre-pass's CPU per weight (bench/README.md,
// "W4A16 and NVFP4A16 beyond FP8_DYNAMIC"): QuantizeNvfp4 and AbsMax on BF16 weights
// [rows, cols] (default 32 x 4096, a Llama row block), with the AVX-512 BF16 pass and the
// AVX2 kernel (src/schemes/nvfp4_bf16.*, nvfp4_bf16_avx2.*) switched off (the best Highway
// target) and on (whichever this CPU runs), interleaved, on one thread. "hot": one tensor
// again and again (in L2); "cold": N different tensors of the same shape (N x 256 KiB, past
// the L2 and, for N >= 256, the L3). Thread CPU time, best of 15 rounds.
//
//   quench-nvfp4-bench [N=512] [ROWS=32] [COLS=4096]
//   -> "highway: hot H cold C | bf16: hot H cold C | amax: hot H cold C ns/weight"
//      ("bf16" is "avx2" on CPUs without AVX-512 BF16)
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bf16_tensors.h"
#include "schemes/float_formats.h"
#include "schemes/fp4.h"
#include "schemes/nvfp4_bf16.h"
#include "schemes/nvfp4_bf16_avx2.h"
#include "thread_cpu.h"

int main(int argc, char** argv) {
  using namespace quench;  // NOLINT
  const size_t ntens = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 512;
  const size_t rows = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 32;
  const size_t cols = argc > 3 ? std::strtoul(argv[3], nullptr, 10) : 4096;
  const size_t n = rows * cols;
  if (ntens == 0 || cols % 16 != 0 || rows == 0) {
    std::fprintf(stderr, "usage: quench-nvfp4-bench [N] [ROWS] [COLS %% 16 == 0]\n");
    return 2;
  }
  const std::vector<uint16_t> data = SyntheticBf16Tensors(n, ntens);
  std::vector<uint8_t> w(n / 2), s(n / 16);
  ChunkOutputs out;
  out.out[0] = w.data();
  out.out[1] = s.data();
  WeightChunk in;
  in.dtype = DType::kBF16;
  in.rows = rows;
  in.cols = cols;
  in.params.global_scale = fp4::Nvfp4GlobalScale(0.1f, DType::kBF16);
  const bool avx512 = fp4::Nvfp4Bf16Available();
  const bool bf16 = avx512 || fp4::Nvfp4Bf16Avx2Available();
  double best[3][2] = {{1e9, 1e9}, {1e9, 1e9}, {1e9, 1e9}};  // [path][hot, cold], ns a weight
  for (int round = 0; round < 15; ++round) {
    for (int path = 0; path < 3; ++path) {
      if (path == 1 && !bf16) continue;
      fp4::internal::SetNvfp4Bf16Enabled(path == 1);
      fp4::internal::SetNvfp4Bf16Avx2Enabled(path == 1);
      for (int cold = 0; cold < 2; ++cold) {
        const size_t runs = cold ? ntens : 64;
        const double t0 = ThreadCpu();
        float amax = 0.f;
        for (size_t t = 0; t < runs; ++t) {
          in.data = reinterpret_cast<const uint8_t*>(&data[(cold ? t : 0) * n]);
          const bool ok = path == 2 ? fp4::AbsMax(in, &amax) : fp4::QuantizeNvfp4(in, out);
          if (!ok) return 1;
        }
        const double ns = (ThreadCpu() - t0) / static_cast<double>(n * runs) * 1e9;
        best[path][cold] = std::min(best[path][cold], ns);
      }
    }
  }
  fp4::internal::SetNvfp4Bf16Enabled(true);
  fp4::internal::SetNvfp4Bf16Avx2Enabled(true);
  std::printf("%zu x %zu: highway: hot %.3f cold %.3f | %s: ", rows, cols, best[0][0],
              best[0][1], avx512 || !bf16 ? "bf16" : "avx2");
  if (bf16) {
    std::printf("hot %.3f cold %.3f", best[1][0], best[1][1]);
  } else {
    std::printf("- (no AVX-512 BF16 or AVX2 here)");
  }
  std::printf(" | amax: hot %.3f cold %.3f ns/weight\n", best[2][0], best[2][1]);
  return 0;
}
