// What the AVX-512 BF16 kernels (fp8_bf16.cc, int4_bf16.cc, nvfp4_bf16.cc, awq_table.cc)
// share: the target attribute their functions compile under, the CPU check that gates them,
// the on/off switch tests use to run the Highway kernels on the same chunks, and bf16's
// rounding of f32 lanes. Include
// from those kernel files only.
#ifndef QUENCH_SCHEMES_AVX512BF16_H_
#define QUENCH_SCHEMES_AVX512BF16_H_

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

using Switch = cpu::KernelSwitch;

#ifdef QUENCH_AVX512BF16_X86
// RNE_bf16 of non-NaN f32 lanes, as f32 (int_shared.h's RoundToDType for bf16: c10's
// round_to_nearest_even, valid for every non-NaN pattern).
QUENCH_AVX512BF16 inline __m512 RoundBf16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb));
  return _mm512_castsi512_ps(
      _mm512_and_si512(r, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}
#endif

}  // namespace quench::avx512bf16

#endif  // QUENCH_SCHEMES_AVX512BF16_H_
