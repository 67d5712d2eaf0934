// The fused FP8-block source -> NVFP4 / int4 kernels' CPU per weight (bench/README.md, "FP8
// source -> NVFP4: tables by bounds"): fp8::QuantizeSourceNvfp4 and QuantizeSourceInt4 on
// chunks laid out as the bench checkpoint's (`make_bench_checkpoint.py --layout fp8`: random
// finite E4M3 codes, 128x128 block multipliers in 2^-12..2^-6), one thread. "hot": one chunk
// again and again (in L2); "cold": N different chunks (N x ROWS x COLS bytes of codes, past
// the 32 MiB L3 for the defaults). Thread CPU time, best of REPEATS rounds, so other jobs on a
// shared machine matter less.
//
//   quench-fp8-source-bench [N=64] [ROWS=256] [COLS=4096] [REPEATS=15] [WHICH=all|nvfp4|int4]
//                           [OFFSET=0]
//   -> "nvfp4: hot H cold C | int4 g128: hot H cold C ns/weight"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "quench/dtype.h"
#include "schemes/fp4.h"
#include "schemes/fp8.h"
#include "schemes/fp8_source_quant.h"
#include "thread_cpu.h"

int main(int argc, char** argv) {
  using namespace quench;  // NOLINT
  const size_t ntens = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 64;
  const size_t rows = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 256;
  const size_t cols = argc > 3 ? std::strtoul(argv[3], nullptr, 10) : 4096;
  const int repeats = argc > 4 ? std::atoi(argv[4]) : 15;
  // WHICH: "all", or one kernel's cold runs alone ("nvfp4" / "int4", for a profile).
  const std::string which = argc > 5 ? argv[5] : "all";
  const size_t offset = argc > 6 ? std::strtoul(argv[6], nullptr, 10) % 64 : 0;
  if (ntens == 0 || rows == 0 || cols % 128 != 0 || repeats <= 0) {
    std::fprintf(stderr,
                 "usage: quench-fp8-source-bench [N] [ROWS] [COLS %% 128 == 0] [REPEATS]\n");
    return 2;
  }
  if (!fp8::FusedSourceAvailable()) {
    std::printf("neither AVX-512 VBMI nor AVX2: the fused kernels decline every chunk\n");
    return 0;
  }
  const size_t n = rows * cols;
  const size_t bands = (rows + 127) / 128, scale_cols = cols / 128;
  std::mt19937 rng(7);
  std::vector<uint8_t> codes(n * ntens);
  for (auto& c : codes) {
    c = static_cast<uint8_t>(rng());
    if ((c & 0x7F) == 0x7F) c ^= 1;  // NaN codes replaced by their neighbours
  }
  std::uniform_real_distribution<float> sdist(std::ldexp(1.0f, -12), std::ldexp(1.0f, -6));
  std::vector<float> scales(bands * scale_cols * ntens);
  float smax = 0.f;
  for (auto& s : scales) smax = std::max(smax, s = sdist(rng));
  const float gs = fp4::Nvfp4GlobalScale(448.0f * smax, DType::kBF16);
  // The packed output starts OFFSET bytes past a 64-byte boundary (a tensor's data lies
  // wherever the output file's layout puts it; the kernels stream whole aligned lines).
  const size_t packed_bytes = (offset + n / 2 * ntens + 63) / 64 * 64;
  std::unique_ptr<uint8_t, decltype(&std::free)> packed_buf(
      static_cast<uint8_t*>(std::aligned_alloc(64, packed_bytes)), &std::free);
  std::vector<uint8_t> gscales(n / 8 * ntens);
  if (packed_buf == nullptr) return 1;
  std::memset(packed_buf.get(), 0, packed_bytes);
  uint8_t* const packed = packed_buf.get() + offset;

  auto run = [&](size_t copies, bool nvfp4) {
    double best = 1e30;
    for (int rep = 0; rep < repeats; ++rep) {
      const double t0 = ThreadCpu();
      for (size_t k = 0; k < copies; ++k) {
        fp8::SourceChunk in;
        in.codes = codes.data() + k * n;
        in.rows = rows;
        in.cols = cols;
        in.scales = scales.data() + k * bands * scale_cols;
        in.scale_cols = scale_cols;
        ChunkOutputs out;
        out.out[0] = packed + k * n / 2;
        out.out[1] = gscales.data() + k * n / 8;
        const fp8::FusedResult r =
            nvfp4 ? fp8::QuantizeSourceNvfp4(in, gs, out) : fp8::QuantizeSourceInt4(in, 128, out);
        if (r != fp8::FusedResult::kOk) std::abort();
      }
      best = std::min(best, (ThreadCpu() - t0) * 1e9 / static_cast<double>(n * copies));
    }
    return best;
  };
  if (which != "all") {
    std::printf("%s cold %.3f ns/weight\n", which.c_str(), run(ntens, which == "nvfp4"));
    return 0;
  }
  const double nh = run(1, true), nc = run(ntens, true);
  const double ih = run(1, false), ic = run(ntens, false);
  std::printf("nvfp4: hot %.3f cold %.3f | int4 g128: hot %.3f cold %.3f ns/weight\n", nh, nc,
              ih, ic);
  return 0;
}
