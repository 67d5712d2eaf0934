// What the imatrix_mse golden suites (test_imatrix, test_imatrix_kwargs) share: the dtype
// names the generators write, and the comparison of an integer search with the reference
// observer's scale, zero point and codes, whole and in row chunks.
#ifndef QUENCH_TESTS_IMATRIX_GOLDEN_H_
#define QUENCH_TESTS_IMATRIX_GOLDEN_H_

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "calib/imatrix_mse.h"
#include "golden_file.h"
#include "quench/dtype.h"
#include "schemes/int_shared.h"

namespace quench::testing {

inline DType ParseDType(const std::string& s) {
  return s == "F32" ? DType::kF32 : s == "F16" ? DType::kF16 : DType::kBF16;
}

// Searches `in` whole and in chunks of `chunk_rows` rows (each searched alone up to the common
// stop) and requires the reference's scale (dtype of the weight) and zero point (int8), row-major
// [rows, n_groups], and codes, every one of them.
inline void CheckIntSearch(const GoldenFile& f, const WeightChunk& in,
                           const std::vector<float>& imp, const calib::ImatrixOptions& o,
                           int stop, size_t chunk_rows) {
  const std::string want_scale = f.Raw("scale");
  const std::vector<int8_t> want_zp = f.Tensor<int8_t>("zero_point");
  const std::vector<int8_t> want_codes = f.Tensor<int8_t>("codes");
  const size_t rows = in.rows, cols = in.cols, ng = want_zp.size() / rows;
  const size_t ssz = DTypeBits(in.dtype) / 8;
  for (size_t chunk : {rows, chunk_rows}) {
    CAPTURE(chunk);
    size_t scale_diff = 0, zp_diff = 0, code_diff = 0;
    for (size_t r0 = 0; r0 < rows; r0 += chunk) {
      WeightChunk c = in;
      c.rows = std::min(chunk, rows - r0);
      c.data = in.data + r0 * cols * ssz;
      calib::ImatrixRows got;
      REQUIRE(calib::Search(c, imp, o, stop, &got));
      for (size_t i = 0; i < c.rows * ng; ++i) {
        uint8_t enc[4];
        intq::internal::StoreScale(enc, got.scales[i], in.dtype);
        scale_diff += std::memcmp(enc, want_scale.data() + (r0 * ng + i) * ssz, ssz) != 0;
        zp_diff += got.zero_points[i] != want_zp[r0 * ng + i];
      }
      for (size_t i = 0; i < c.rows * cols; ++i) {
        code_diff += got.codes[i] != want_codes[r0 * cols + i];
      }
    }
    CHECK(scale_diff == 0);
    CHECK(zp_diff == 0);
    CHECK(code_diff == 0);
  }
}

}  // namespace quench::testing

#endif  // QUENCH_TESTS_IMATRIX_GOLDEN_H_
