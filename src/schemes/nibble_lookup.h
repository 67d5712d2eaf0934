// 4-bit codes to 16-bit values through a 16-entry table per run of columns: the inner step
// of decoding a compressed-tensors pack-quantized int4 source (schemes/ct_decode.cc). Each
// run's table holds the definition's own result for each of the 16 codes, so the lookup is
// exact by construction; the kernel only has to move bytes (pshufb-style lookups of the
// table's low and high bytes, interleaved). LookupNibblesScalar is the definition the Highway
// kernel must equal bit for bit on every target (tests/test_ct_decode_kernel.cc).
#ifndef QUENCH_SCHEMES_NIBBLE_LOOKUP_H_
#define QUENCH_SCHEMES_NIBBLE_LOOKUP_H_

#include <cstddef>
#include <cstdint>

namespace quench {

// Element c of the row is nibble c of `packed` (the low nibble of byte c / 2 for even c, the
// high one for odd c), and its 16-bit output (little-endian at out + 2c) is entry nibble of
// the table of run c / run: tables + 32 * (c / run) holds that run's 16 entries' low bytes,
// then their high bytes. cols and run are even; cols need not be a multiple of run.
void LookupNibbles(const uint8_t* packed, size_t cols, size_t run, const uint8_t* tables,
                   uint8_t* out);
void LookupNibblesScalar(const uint8_t* packed, size_t cols, size_t run, const uint8_t* tables,
                         uint8_t* out);

}  // namespace quench

#endif  // QUENCH_SCHEMES_NIBBLE_LOOKUP_H_
