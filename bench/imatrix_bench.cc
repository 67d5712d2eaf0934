// The imatrix_mse search's CPU per weight (bench/README.md, "imatrix_mse"): SearchSteps over
// all steps (exact_best false, as the conversion runs it) on one thread, for int4 g128
// (W4A16) and NVFP4 groups, on raw rows dumped from a checkpoint: ROWS x COLS bf16 values
// (little-endian) and COLS f64 sums of x^2 (a statistics site's sum_x2) with its token count.
// Thread CPU time, best of R rounds; prints the popcount of the masks (the improving steps)
// so that two builds can be checked to decide the same. QUENCH_BENCH_NO_AVX2=1 in the
// environment switches the AVX2 int kernels off (imatrix_mse_int_avx2.h and
// imatrix_mse_int_avx2_asym.h: the Highway kernel on f32 copies, as before them), for an A/B
// run with one binary; it also switches off the AVX2 MXFP4 kernel (imatrix_mse_mx_avx2.h).
// QUENCH_BENCH_NO_AVX512=1 switches Highway's AVX-512 targets off (the AVX2 kernels then run
// on an AVX-512 CPU).
// `asym`: int4 g128 with zero points (W4A16_ASYM), `mxfp4` (MXFP4's groups of 32, each
// group's largest magnitude kept as the conversion keeps it), `int8` (int8 g128, W8A16) and
// `int8ch` (int8 per channel, W8A8's weights), run only when named. QUENCH_BENCH_NO_AVX2=1
// also switches off the AVX2 int8 kernel (imatrix_mse_int8_avx2.h).
//
//   quench-imatrix-bench WEIGHTS.bf16 SUMX2.f64 ROWS COLS COUNT [ROUNDS=5]
//       [int|nvfp4|asym|mxfp4|int8|int8ch]

#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "calib/imatrix_mse.h"
#include "calib/imatrix_mse_int8_avx2.h"
#include "calib/imatrix_mse_int_avx2.h"
#include "calib/imatrix_mse_mx_avx2.h"
#include "hwy/targets.h"
#include "thread_cpu.h"

namespace {


template <class T>
bool ReadAll(const char* path, std::vector<T>* v) {
  FILE* f = std::fopen(path, "rb");
  if (f == nullptr) return false;
  const size_t got = std::fread(v->data(), sizeof(T), v->size(), f);
  std::fclose(f);
  return got == v->size();
}

}  // namespace

int main(int argc, char** argv) {
  using namespace quench;  // NOLINT
  if (argc < 6) {
    std::fprintf(stderr,
                 "usage: quench-imatrix-bench W.bf16 SUMX2.f64 ROWS COLS COUNT [ROUNDS] "
                 "[int|nvfp4|asym|mxfp4|int8|int8ch]\n");
    return 2;
  }
  const size_t rows = std::strtoul(argv[3], nullptr, 10), cols = std::strtoul(argv[4], nullptr, 10);
  const double count = std::strtod(argv[5], nullptr);
  const int rounds = argc > 6 ? std::atoi(argv[6]) : 5;
  const std::string only = argc > 7 ? argv[7] : "";  // one format only
  std::vector<uint16_t> w(rows * cols);
  std::vector<double> sum_x2(cols);
  if (!ReadAll(argv[1], &w) || !ReadAll(argv[2], &sum_x2)) {
    std::fprintf(stderr, "cannot read the inputs\n");
    return 2;
  }
  const char* no_avx2 = std::getenv("QUENCH_BENCH_NO_AVX2");
  if (no_avx2 != nullptr && std::string(no_avx2) == "1") {
    calib::internal::SetIntAvx2Enabled(false);
    calib::internal::SetMxAvx2Enabled(false);
    calib::internal::SetInt8Avx2Enabled(false);
  }
  // QUENCH_BENCH_NO_AVX512=1: Highway's AVX-512 targets off, so that the AVX2 kernels run on an
  // AVX-512 CPU (an A/B of the two on one host).
  const char* no_avx512 = std::getenv("QUENCH_BENCH_NO_AVX512");
  if (no_avx512 != nullptr && std::string(no_avx512) == "1") {
    hwy::DisableTargets(HWY_AVX3 | HWY_AVX3_DL);
  }
  const std::vector<float> imp = calib::NormalizedImportance(sum_x2, count);
  const calib::ImatrixOptions o;
  for (const char* mode : {"int", "nvfp4", "asym", "mxfp4", "int8", "int8ch"}) {
    const std::string m = mode;
    const bool int8 = m == "int8" || m == "int8ch";
    if (only.empty() ? m == "asym" || m == "mxfp4" || int8 : only != m) continue;
    const calib::ImatrixFormat f = m == "nvfp4"   ? calib::ImatrixFormat::kNvfp4
                                   : m == "mxfp4" ? calib::ImatrixFormat::kMxfp4
                                                  : calib::ImatrixFormat::kInt;
    WeightChunk in;
    in.data = reinterpret_cast<const uint8_t*>(w.data());
    in.dtype = DType::kBF16;
    in.rows = rows;
    in.cols = cols;
    in.params.bits = int8 ? 8 : 4;
    in.params.group_size = m == "mxfp4" ? 32 : m == "int8ch" ? 0 : 128;  // 0: per channel
    in.params.symmetric = m != "asym";
    const size_t groups = rows * cols / calib::GroupColumns(in, f);
    // Blocks of 16 rows, as the conversion's row blocks of ~64K weights.
    const size_t block = 16;
    double best_t = 1e30;
    uint64_t pop = 0;
    for (int r = 0; r < rounds; ++r) {
      std::vector<double> best(groups, FLT_MAX);
      std::vector<uint32_t> masks(groups, 0u);
      std::vector<float> absmax(m == "mxfp4" || m == "nvfp4" ? groups : 0);
      const size_t gpr = groups / rows;
      const double t0 = ThreadCpu();
      for (size_t r0 = 0; r0 < rows; r0 += block) {
        WeightChunk c = in;
        c.data = in.data + r0 * cols * 2;
        c.rows = std::min(block, rows - r0);
        uint32_t bits = 0;
        calib::SearchSteps(c, f, imp, o, 0, calib::LastStep(o), best.data() + r0 * gpr,
                           masks.data() + r0 * gpr, &bits, /*exact_best=*/false,
                           absmax.empty() ? nullptr : absmax.data() + r0 * gpr);
      }
      best_t = std::min(best_t, ThreadCpu() - t0);
      pop = 0;
      for (uint32_t m : masks) pop += static_cast<uint64_t>(__builtin_popcount(m));
    }
    std::printf("%s: %.3f ns/weight, %llu improving steps over %zu groups\n",
                m == "int"    ? "int4 g128"
                : m == "asym" ? "int4 g128 asym"
                : m == "int8" ? "int8 g128"
                : m == "int8ch" ? "int8 channel"
                              : m.c_str(),
                best_t * 1e9 / static_cast<double>(rows * cols),
                static_cast<unsigned long long>(pop), groups);
  }
  return 0;
}
