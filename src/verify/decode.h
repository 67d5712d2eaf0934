// Element decoders for the stored formats, and the per-element error bound verify applies:
// a quantized module described once (ModuleView), then decoded row by row into the quotient
// domain (grid value, grid gap, effective scale and zero point per column).
#ifndef QUENCH_VERIFY_DECODE_H_
#define QUENCH_VERIFY_DECODE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "format/source_quant.h"
#include "quench/dtype.h"
#include "verify/config_groups.h"

namespace quench::verify {

// Element i of a float tensor (BF16, F16, F32, F8_E4M3) as a double; NaN for other dtypes.
double LoadFloat(const uint8_t* p, DType d, uint64_t i);
// Element i of an integer tensor (I8, U8, I32, I64); 0 for other dtypes.
int64_t LoadInt(const uint8_t* p, DType d, uint64_t i);

// Half-ulp relative rounding of a quotient computed in fp32 and rounded to the weight dtype:
// the part of the error bound that is not the grid's.
double QuotientRounding(DType d);

// One quantized module, fully described, ready to be walked row by row.
struct ModuleView {
  std::string module;
  const Group* g = nullptr;
  uint64_t out = 0, in = 0;
  const uint8_t* w = nullptr;       // weight / weight_packed
  const uint8_t* scale = nullptr;
  DType sdt = DType::kBF16;
  std::vector<uint64_t> sshape;
  const uint8_t* zp = nullptr;
  DType zdt = DType::kI8;
  float gs = 1;                     // NVFP4 global scale
  const uint8_t* x = nullptr;       // source weight, when SRC
  DType xdt = DType::kBF16;          // as compared: BF16 for a weight decoded from FP8
  // An FP8 source weight: x holds its E4M3 codes, decoded to BF16 rows by the walk.
  const SourceScale* xscale = nullptr;
  double qmin = 0, qmax = 0;        // grid ends in the quotient domain
  // The lossless repack of a packed SRC (VerifyOptions::packed_source): every element must
  // dequantize to the decoded source exactly.
  bool lossless = false;
};

// One decoded row, per column.
struct RowBuffers {
  std::vector<double> q, gap, s, zp;  // grid value, grid gap at it, scale, zero point
  std::vector<uint8_t> bad_code;      // 1: invalid code at this column
};

// Decodes row r into the quotient domain: q (grid value), gap, effective scale and zero point.
void DecodeRow(const ModuleView& v, uint64_t r, RowBuffers& b);

// Column c of a decoded row dequantized as compressed-tensors does, rounded to BF16 (int codes
// with their scale and zero point, and NVFP4; verify/lossless.cc).
uint16_t CtDequantizedBF16(const ModuleView& v, const RowBuffers& b, uint64_t c);

}  // namespace quench::verify

#endif  // QUENCH_VERIFY_DECODE_H_
