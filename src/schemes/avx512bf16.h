// What the AVX-512 BF16 kernels (fp8_bf16.cc, int4_bf16.cc, nvfp4_bf16.cc, awq_table.cc)
// share: the target attribute their functions compile under, the CPU check that gates them
// and the on/off switch tests use to run the Highway kernels on the same chunks. Include
// from those kernel files only.
#ifndef QUENCH_SCHEMES_AVX512BF16_H_
#define QUENCH_SCHEMES_AVX512BF16_H_

#include <atomic>

#include "schemes/cpu_x86.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QUENCH_AVX512BF16_X86 1
#include <immintrin.h>
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_*().
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define QUENCH_AVX512BF16                                                                 \
  __attribute__((target("avx2,bmi,bmi2,avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi," \
                        "avx512bf16")))
#endif

namespace quench::avx512bf16 {

// True when this CPU has AVX-512 F/BW/VL/DQ, VBMI and BF16 (and BMI2, for _bzhi).
inline bool Available() {
#ifdef QUENCH_AVX512BF16_X86
  return cpu::HasAvx512Bf16();
#else
  return false;
#endif
}

// Whether a kernel may be used (default on). Relaxed: tests flip it between conversions,
// never during one.
class Switch {
 public:
  bool on() const { return on_.load(std::memory_order_relaxed); }
  void Set(bool on) { on_.store(on, std::memory_order_relaxed); }

 private:
  std::atomic<bool> on_{true};
};

}  // namespace quench::avx512bf16

#endif  // QUENCH_SCHEMES_AVX512BF16_H_
