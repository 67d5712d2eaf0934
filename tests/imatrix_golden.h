// What the imatrix_mse golden suites (test_imatrix, test_imatrix_kwargs, test_imatrix_fp4,
// test_imatrix_convert) share: the dtype names the generators write, the comparison of an
// integer search with the reference observer's scale, zero point and codes, whole and in row
// chunks, and MiniLM converted with the observer on the golden statistics.
#ifndef QUENCH_TESTS_IMATRIX_GOLDEN_H_
#define QUENCH_TESTS_IMATRIX_GOLDEN_H_

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "calib/imatrix_mse.h"
#include "format/json.h"
#include "golden_file.h"
#include "quench/convert.h"
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

// all-MiniLM-L6-v2 converted with `scheme` and the imatrix_mse observer on the statistics in
// data/golden/imatrix-minilm, and that folder's `expected` file: hashes of what
// llm-compressor's oneshot wrote with the same observer on the same samples
// (scripts/make_golden_imatrix_minilm.py).
struct MiniLmImatrix {
  JsonValue expected;
  fs::path dst;
  std::map<std::string, Loaded> out;
};
inline MiniLmImatrix ConvertMiniLmImatrix(const TempDir& tmp, const std::string& scheme,
                                          const std::string& expected) {
  const fs::path golden = DataDir() / "golden" / "imatrix-minilm";
  auto want = ReadJsonFile((golden / expected).string());
  REQUIRE(want.ok());
  ConvertOptions o;
  o.src = MiniLmDir();
  o.dst = tmp / "out";
  o.scheme = scheme;
  o.observer = "imatrix_mse";
  o.stats = golden / "stats";
  auto r = Convert(o);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  return {*want, o.dst, LoadAll(o.dst)};
}

}  // namespace quench::testing

#endif  // QUENCH_TESTS_IMATRIX_GOLDEN_H_
