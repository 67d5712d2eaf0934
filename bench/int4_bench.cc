// The int4 kernels' CPU per weight (bench/README.md, "int4 from bf16 with AVX-512 BF16" and
// "int4 groups on AVX2"): QuantizePacked on BF16 weights [rows, cols] (default 512 x 1024, the
// pruned-MoE bench's 1 MiB experts), group 128, with both hand-written kernels
// (src/schemes/int4_bf16*.{h,cc}) switched off (the best Highway target), with the AVX2 one
// on, and with the AVX-512 BF16 one on, interleaved, on one thread. "hot": one tensor again
// and again (in L2); "cold": N different tensors (N MiB, past the L2 and, for N >= 64, the
// L3). Thread CPU time, best of 15 rounds, so other jobs on a shared machine matter less.
//
//   quench-int4-bench [N=64] [SYMMETRIC=1] [ROWS=512] [COLS=1024]
//   -> "highway: hot H cold C | avx2: hot H cold C | bf16: hot H cold C ns/weight" ("-" for a
//      kernel this CPU does not run)

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bf16_tensors.h"
#include "hwy/targets.h"
#include "schemes/float_formats.h"
#include "schemes/int.h"
#include "schemes/int4_bf16.h"
#include "schemes/int4_bf16_avx2.h"
#include "thread_cpu.h"

int main(int argc, char** argv) {
  using namespace quench;  // NOLINT
  const size_t ntens = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 64;
  const bool sym = argc > 2 ? std::atoi(argv[2]) != 0 : true;
  const size_t rows = argc > 3 ? std::strtoul(argv[3], nullptr, 10) : 512;
  const size_t cols = argc > 4 ? std::strtoul(argv[4], nullptr, 10) : 1024;
  const size_t n = rows * cols;
  if (ntens == 0 || cols % 128 != 0 || rows == 0) {
    std::fprintf(stderr, "usage: quench-int4-bench [N] [SYMMETRIC] [ROWS] [COLS %% 128 == 0]\n");
    return 2;
  }
  const std::vector<uint16_t> data = SyntheticBf16Tensors(n, ntens);
  std::vector<uint8_t> w(n / 2), s(n / 128 * 2), z((rows + 7) / 8 * (cols / 128) * 4);
  ChunkOutputs out;
  out.out[0] = w.data();
  out.out[1] = s.data();
  out.out[2] = z.data();
  WeightChunk in;
  in.dtype = DType::kBF16;
  in.rows = rows;
  in.cols = cols;
  in.params.bits = 4;
  in.params.group_size = 128;
  in.params.symmetric = sym;
  // Paths: 0 Highway (both kernels off), 1 the AVX2 kernel, 2 the AVX-512 BF16 kernel. The
  // dispatcher takes the AVX2 kernel from Highway's AVX2 target only, so path 1 needs a CPU
  // whose best target is AVX2 (as this VM's); elsewhere it reports "-".
  auto set_path = [](int path) {
    intq::internal::SetInt4Bf16Enabled(path == 2);
    intq::internal::SetInt4Bf16Avx2Enabled(path == 1);
  };
  const int64_t targets = hwy::SupportedTargets();
  const bool best_avx2 = (targets & -targets) == HWY_AVX2;  // the lowest bit: the best target
  const bool have[3] = {true, best_avx2 && intq::Int4Bf16Avx2Handles(in),
                        intq::Int4Bf16Available()};
  double best[3][2] = {{1e9, 1e9}, {1e9, 1e9}, {1e9, 1e9}};  // [path][hot, cold], ns a weight
  for (int round = 0; round < 15; ++round) {
    for (int path = 0; path < 3; ++path) {
      if (!have[path]) continue;
      set_path(path);
      for (int cold = 0; cold < 2; ++cold) {
        const size_t runs = cold ? ntens : 64;
        const double t0 = ThreadCpu();
        for (size_t t = 0; t < runs; ++t) {
          in.data = reinterpret_cast<const uint8_t*>(&data[(cold ? t : 0) * n]);
          if (!intq::QuantizePacked(in, out)) return 1;
        }
        const double ns = (ThreadCpu() - t0) / static_cast<double>(n * runs) * 1e9;
        best[path][cold] = std::min(best[path][cold], ns);
      }
    }
  }
  intq::internal::SetInt4Bf16Enabled(true);
  intq::internal::SetInt4Bf16Avx2Enabled(true);
  std::printf("%s, %zu x %zu:", sym ? "symmetric" : "asymmetric", rows, cols);
  const char* names[3] = {"highway", "avx2", "bf16"};
  for (int path = 0; path < 3; ++path) {
    if (have[path]) {
      std::printf("%s %s: hot %.3f cold %.3f", path ? " |" : "", names[path], best[path][0],
                  best[path][1]);
    } else {
      std::printf(" | %s: -", names[path]);
    }
  }
  std::printf(" ns/weight\n");
  return 0;
}
