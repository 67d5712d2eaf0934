// The x86 CPU features the hand-written kernels need, checked once at run time:
// fp8_source_quant.cc / fp8_source_nvfp4.cc (VBMI tables; AVX2 thresholds otherwise) and the
// AVX-512 BF16 kernels (avx512bf16.h) share the same base set; the AVX2 kernels (avx2.h) need
// HasAvx2. Also the switch every hand-written kernel has for tests.
#ifndef QUENCH_SCHEMES_CPU_X86_H_
#define QUENCH_SCHEMES_CPU_X86_H_

#include <atomic>
#include <string>

namespace quench::cpu {

// Whether a hand-written kernel may be used (default on); tests turn it off to run the
// Highway kernels on the same chunks. Relaxed: tests flip it between conversions, never
// during one.
class KernelSwitch {
 public:
  bool on() const { return on_.load(std::memory_order_relaxed); }
  void Set(bool on) { on_.store(on, std::memory_order_relaxed); }

 private:
  std::atomic<bool> on_{true};
};

// True when this CPU has AVX-512 F/BW/VL/DQ and VBMI, and BMI2 (for _bzhi).
inline bool HasAvx512Vbmi() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool ok = __builtin_cpu_supports("avx512f") &&
                         __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") &&
                         __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("bmi2");
  return ok;
#else
  return false;
#endif
}

// True when this CPU has AVX2 (the fused FP8-source kernels' fallback without VBMI,
// fp8_source_avx2.cc).
inline bool HasAvx2() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2") &&
                         __builtin_cpu_supports("popcnt");
  return ok;
#else
  return false;
#endif
}

// HasAvx512Vbmi() and AVX-512 BF16.
inline bool HasAvx512Bf16() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool ok = HasAvx512Vbmi() && __builtin_cpu_supports("avx512bf16");
  return ok;
#else
  return false;
#endif
}

// "Highway TARGET; hand-written AVX-512 BF16 yes|no, AVX-512 VBMI yes|no, AVX2 yes|no": the
// SIMD paths this CPU takes (`quench --version`; every path writes the same bytes, their speed
// differs).
std::string KernelPathsLine();

}  // namespace quench::cpu

#endif  // QUENCH_SCHEMES_CPU_X86_H_
