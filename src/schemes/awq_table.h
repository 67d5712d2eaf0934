// One AutoAWQ group's 16-entry decode table (the table LookupNibbles reads, nibble_lookup.h):
// entry q is compressed-tensors' _dequantize of code q in the scale's dtype F16, (q - z) * s
// rounded to F16 (the f32 product is exact: 5 bits times 11), then .to(bfloat16).
// AwqGroupTableScalar is the definition (software F16 rounding, float_formats.h); AwqGroupTable
// computes the 16 entries in one vector with the CPU's F16 conversion (VCVTPS2PH, round to
// nearest even, overflow to Inf, subnormals kept) where AVX-512 is there (avx512bf16.h's
// gate), else the definition. Equal for every F16 scale and zero point
// (tests/test_awq_table.cc).
#ifndef QUENCH_SCHEMES_AWQ_TABLE_H_
#define QUENCH_SCHEMES_AWQ_TABLE_H_

#include <cstdint>

namespace quench {

// table[q] = low byte, table[16 + q] = high byte of entry q's BF16 bits, for q = 0..15;
// `scale` holds F16 bits, `zero` is 0..15. Returns whether all 16 entries are finite.
bool AwqGroupTable(uint16_t scale, int zero, uint8_t* table);
bool AwqGroupTableScalar(uint16_t scale, int zero, uint8_t* table);

}  // namespace quench

#endif  // QUENCH_SCHEMES_AWQ_TABLE_H_
