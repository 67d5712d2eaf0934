// GPTQ's speed against its arithmetic floor (scripts/bench-gptq): one Llama-shaped weight
// [rows, n] with a Hessian of correlated activations, timed through FactorHessian and
// QuantizeRows on row chunks (one thread; the pipeline runs chunks in parallel), against the
// sweep's flops (about 2 x rows x n^2 for the lazy updates) at the SGEMM rate measured here on
// the same shapes. Prints one line of figures.
//
// Modes for scripts/bench --gptq (scripts/bench_gptq.py):
//   quench-gptq-bench --sgemm M N K    one thread's SGEMM rate on [M, K] x [K, N] per CPU
//                                      second (OpenBLAS as GPTQ loads it): "SGEMM_GFLOPS x"
//   quench-gptq-bench --raw W H ROWS N GPTQ (W4A16, group 128, actorder static, block 128,
//                                      dampening 0.01) of a raw BF16 weight [ROWS, N] with a
//                                      raw f32 normalised Hessian [N, N], on one thread in row
//                                      chunks of 1024: "QUENCH_GPTQ {factor_s, sweep_s, cpu_s}"
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "calib/blas.h"
#include "calib/gptq.h"

using Clock = std::chrono::steady_clock;
static double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

static double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

template <class T>
static bool ReadRaw(const char* path, std::vector<T>* v) {
  std::ifstream f(path, std::ios::binary);
  f.read(reinterpret_cast<char*>(v->data()), std::streamsize(v->size() * sizeof(T)));
  return bool(f);
}

static int Sgemm(size_t m, size_t n, size_t k, const quench::calib::Blas& blas) {
  std::vector<float> a(m * k, 0.5f), b(k * n, 0.25f), c(m * n, 0.f);
  blas.sgemm_nn(int(m), int(n), int(k), -1.f, a.data(), int(k), b.data(), int(n), 1.f, c.data(),
                int(n));  // warm-up
  // The rate per CPU second (this process's user + system time), not per wall second: on a
  // shared machine the wall clock counts other processes' turns too.
  const double c0 = CpuSeconds();
  int reps = 0;
  do {
    blas.sgemm_nn(int(m), int(n), int(k), -1.f, a.data(), int(k), b.data(), int(n), 1.f,
                  c.data(), int(n));
    ++reps;
  } while (CpuSeconds() - c0 < 3.0);
  std::printf("SGEMM_GFLOPS %.3f\n",
              2.0 * double(m) * double(n) * double(k) * reps / (CpuSeconds() - c0) / 1e9);
  return 0;
}

static int Raw(const char* wpath, const char* hpath, size_t rows, size_t n) {
  std::vector<uint16_t> w(rows * n);
  std::vector<float> h(n * n);
  if (!ReadRaw(wpath, &w) || !ReadRaw(hpath, &h)) return std::fprintf(stderr, "short input\n"), 1;
  quench::calib::GptqOptions opt;
  const double c0 = CpuSeconds();
  auto t0 = Clock::now();
  auto f = quench::calib::FactorHessian(std::move(h), n, opt);
  if (!f.ok()) return 1;
  const double t_factor = Since(t0);
  t0 = Clock::now();
  for (size_t r0 = 0; r0 < rows; r0 += 1024) {
    quench::WeightChunk in;
    in.data = reinterpret_cast<const uint8_t*>(w.data() + r0 * n);
    in.dtype = quench::DType::kBF16;
    in.rows = std::min<size_t>(1024, rows - r0);
    in.cols = n;
    in.params = {.bits = 4, .group_size = 128, .symmetric = true};
    quench::calib::GptqRows out;
    if (!quench::calib::QuantizeRows(*f, in, opt, &out)) return 1;
  }
  std::printf("QUENCH_GPTQ {\"factor_s\": %.3f, \"sweep_s\": %.3f, \"cpu_s\": %.3f}\n", t_factor,
              Since(t0), CpuSeconds() - c0);
  return 0;
}

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--sgemm" && argc == 5) {
    auto blas = quench::calib::LoadBlas();
    if (!blas.ok()) return std::fprintf(stderr, "%s\n", blas.status().ToString().c_str()), 1;
    return Sgemm(std::strtoul(argv[2], nullptr, 10), std::strtoul(argv[3], nullptr, 10),
                 std::strtoul(argv[4], nullptr, 10), **blas);
  }
  if (argc > 1 && std::string(argv[1]) == "--raw" && argc == 6) {
    return Raw(argv[2], argv[3], std::strtoul(argv[4], nullptr, 10),
               std::strtoul(argv[5], nullptr, 10));
  }
  const size_t rows = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 4096;
  const size_t n = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 4096;
  const size_t chunk = 1024;
  auto blas = quench::calib::LoadBlas();
  if (!blas.ok()) return std::fprintf(stderr, "%s\n", blas.status().ToString().c_str()), 1;
  std::mt19937 rng(19);
  std::normal_distribution<float> g;
  // H = X^T X for X [2n tokens, n], by SGEMM (not timed).
  std::vector<float> x(2 * n * n), xt(2 * n * n), h(n * n, 0.f);
  for (float& v : x) v = g(rng);
  for (size_t t = 0; t < 2 * n; ++t)
    for (size_t j = 0; j < n; ++j) xt[j * 2 * n + t] = x[t * n + j];
  (*blas)->sgemm_nn(int(n), int(n), int(2 * n), 1.f / float(n), xt.data(), int(2 * n), x.data(),
                    int(n), 0.f, h.data(), int(n));
  std::vector<uint16_t> w(rows * n);
  for (auto& v : w) {
    const float f = g(rng) * 0.02f;
    uint32_t b;
    std::memcpy(&b, &f, 4);
    v = uint16_t(b >> 16);
  }
  quench::calib::GptqOptions opt;
  auto t0 = Clock::now();
  auto f = quench::calib::FactorHessian(h, n, opt);
  const double t_factor = Since(t0);
  if (!f.ok()) return 1;
  t0 = Clock::now();
  for (size_t r0 = 0; r0 < rows; r0 += chunk) {
    quench::WeightChunk in;
    in.data = reinterpret_cast<const uint8_t*>(w.data() + r0 * n);
    in.dtype = quench::DType::kBF16;
    in.rows = std::min(chunk, rows - r0);
    in.cols = n;
    in.params = {.bits = 4, .group_size = 128, .symmetric = true};
    quench::calib::GptqRows out;
    if (!quench::calib::QuantizeRows(*f, in, opt, &out)) return 1;
  }
  const double t_sweep = Since(t0);
  // SGEMM rate on the sweep's shape: [chunk, 128] x [128, n].
  std::vector<float> a(chunk * 128, 0.5f), b(128 * n, 0.25f), c(chunk * n, 0.f);
  t0 = Clock::now();
  int reps = 0;
  do {
    (*blas)->sgemm_nn(int(chunk), int(n), 128, -1.f, a.data(), 128, b.data(), int(n), 1.f,
                      c.data(), int(n));
    ++reps;
  } while (Since(t0) < 2.0);
  const double rate = 2.0 * double(chunk) * 128 * double(n) * reps / Since(t0);
  const double flops =
      double(rows) * double(n) * double(n);  // sum over blocks of 2 x rows x 128 x (n - i2)
  std::printf("rows %zu n %zu: factor %.2f s, sweep %.2f s, sgemm %.1f GFLOP/s, floor %.2f s, "
              "sweep/floor %.2f\n",
              rows, n, t_factor, t_sweep, rate / 1e9, flops / rate, t_sweep / (flops / rate));
  return 0;
}
