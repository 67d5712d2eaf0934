// BF16 weights -> NVFP4 nibbles by comparisons, on CPUs with AVX-512 (the AVX-512 BF16 set
// of avx512bf16.h): the same bytes as fp4.cc's definition, at less CPU than its Highway
// kernel (bench/README.md, "W4A16 and NVFP4A16 beyond FP8_DYNAMIC").
//
// Why it is exact: the definition packs Fp4Nibble(x / eff) per element, eff = f32(s / gs) for
// the group's E4M3 scale code s. fp4_bounds.h proves that for a bf16 x this nibble is a
// function of bits(|x|) against eight bounds of eff (Nvfp4Bounds): the E2M1 index is the
// number of bounds 1..7 that bits(|x|) meets, and the sign bit is set iff x is negative and
// bits(|x|) meets bound 0. eff depends only on the scale code (given the chunk's global
// scale), so the bounds of every code are made once per global scale (a 128-entry table), and
// a group's nibbles are found by a binary search over its eight bounds, 32 elements (two
// groups) at a time. fp4.cc's kernel still computes the codes (passes 1 and 2); this file
// does pass 3. tests/test_nvfp4_bf16.cc compares it with the definition for every finite
// bf16 x under every scale code of several global scales.
#ifndef QUENCH_SCHEMES_NVFP4_BF16_H_
#define QUENCH_SCHEMES_NVFP4_BF16_H_

#include <cstddef>
#include <cstdint>

namespace quench::fp4 {

// True when this CPU runs the pass (avx512bf16.h's Available) and the switch below is on.
bool Nvfp4Bf16Available();

// The per-code bounds for global scale gs: bound[8 * code + k] = Nvfp4Bounds(E4M3(code) /
// gs)[k] for every positive finite code (1..126; others unused). Cached per thread for the
// last gs, so a chunk's rows share one table.
const uint16_t* Nvfp4Bf16Table(float gs);

// Pass 3 of NVFP4 for one row of n_groups groups of 16 bf16 elements at `row`: the scale
// codes `codes` (n_groups, each 1..126) and Nvfp4Bf16Table(gs) give the packed nibbles,
// n_groups * 8 bytes to dst (even element in the low nibble). `next` (or null): the next
// row, asked for alongside. Call only where Nvfp4Bf16Available().
void Nvfp4Bf16PackRow(const uint8_t* row, size_t n_groups, const uint8_t* codes,
                      const uint16_t* table, const uint8_t* next, uint8_t* dst);

namespace internal {
// Whether the NVFP4 kernel may use this pass (default true); tests and the bench turn it off
// to run the Highway kernels on the same chunks. Not for concurrent use with conversions.
void SetNvfp4Bf16Enabled(bool enabled);
}  // namespace internal

}  // namespace quench::fp4

#endif  // QUENCH_SCHEMES_NVFP4_BF16_H_
