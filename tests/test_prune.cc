// Magnitude pruning (src/schemes/prune.h): exact masks on hand-worked examples (ties, negative
// values, -0, k = 0, k = cols - 1), N:M for several N:M, per-row and per-tensor granularity,
// chunked per-tensor equal to unchunked, and randomized comparison with an oracle that fully
// sorts (|x|, position) keys (a different algorithm from the counting select / nth_element /
// group ranking under test). ParsePruneSpec's errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kernel_test_util.h"
#include "schemes/float_formats.h"
#include "schemes/prune.h"

namespace quench::prune {
namespace {

size_t ElemBytes(DType d) { return d == DType::kF32 ? 4 : 2; }

// In place: the out-of-place entry points with the same buffer as source and destination.
bool PruneRows(uint8_t* rows, DType dtype, size_t n_rows, size_t cols, const PruneSpec& spec,
               uint64_t* zeroed) {
  return prune::PruneRows(rows, rows, dtype, n_rows, cols, spec, zeroed);
}
using prune::PruneRows;

// A whole tensor held in memory, pruned in place by any spec: per row directly; per tensor by
// the protocol the pipeline runs (FindTensorThreshold over chunks of `chunk_rows` rows, 0: all,
// then each chunk pruned with the count of threshold-equal elements before it).
bool PruneTensor(uint8_t* data, DType dtype, size_t rows, size_t cols, const PruneSpec& spec,
                 uint64_t* zeroed, size_t chunk_rows = 0) {
  if (!(spec.kind == PruneSpec::kUnstructured && spec.per_tensor))
    return PruneRows(data, dtype, rows, cols, spec, zeroed);
  if (chunk_rows == 0) chunk_rows = rows == 0 ? 1 : rows;
  const size_t row_bytes = cols * ElemBytes(dtype);
  TensorThreshold t;
  if (FindTensorThreshold(data, dtype, rows, cols, PruneCount(spec.fraction, uint64_t{rows} * cols),
                          chunk_rows, nullptr, &t) != ThresholdWalk::kComplete) {
    return false;
  }
  uint64_t equal_before = 0;
  for (size_t r = 0; r < rows; r += chunk_rows) {
    const size_t nr = std::min(chunk_rows, rows - r);
    uint8_t* p = data + r * row_bytes;
    const uint64_t eq = CountEqual(p, dtype, nr, cols, t.magnitude);
    if (!PruneRowsTensor(p, p, dtype, nr, cols, t, equal_before, zeroed)) return false;
    equal_before += eq;
  }
  return true;
}

std::string Label(DType d) {
  return d == DType::kBF16 ? "BF16" : d == DType::kF16 ? "F16" : "F32";
}

// Raw element bits <-> bytes.
std::vector<uint8_t> ToBytes(const std::vector<uint32_t>& bits, DType d) {
  std::vector<uint8_t> out(bits.size() * ElemBytes(d));
  for (size_t i = 0; i < bits.size(); ++i) {
    if (d == DType::kF32) {
      std::memcpy(&out[4 * i], &bits[i], 4);
    } else {
      const uint16_t b = static_cast<uint16_t>(bits[i]);
      std::memcpy(&out[2 * i], &b, 2);
    }
  }
  return out;
}
std::vector<uint32_t> FromBytes(const std::vector<uint8_t>& bytes, DType d) {
  std::vector<uint32_t> out(bytes.size() / ElemBytes(d));
  for (size_t i = 0; i < out.size(); ++i) {
    if (d == DType::kF32) {
      std::memcpy(&out[i], &bytes[4 * i], 4);
    } else {
      uint16_t b;
      std::memcpy(&b, &bytes[2 * i], 2);
      out[i] = b;
    }
  }
  return out;
}

uint32_t Encode(DType d, float v) {
  return d == DType::kF32 ? F32ToBits(v) : d == DType::kBF16 ? F32ToBF16(v) : F32ToF16(v);
}
std::vector<uint32_t> Encode(DType d, const std::vector<float>& v) {
  std::vector<uint32_t> out;
  for (float x : v) out.push_back(Encode(d, x));
  return out;
}
uint32_t Mag(DType d, uint32_t bits) {
  return d == DType::kF32 ? bits & 0x7FFFFFFFu : bits & 0x7FFFu;
}

// ---- oracle: full sort of (magnitude, position) keys; the smallest `k` are pruned ----

void OraclePrune(std::vector<uint32_t>* bits, DType d, size_t begin, size_t count, size_t k) {
  std::vector<size_t> idx(count);
  std::iota(idx.begin(), idx.end(), begin);
  std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
    const uint32_t ma = Mag(d, (*bits)[a]), mb = Mag(d, (*bits)[b]);
    return ma != mb ? ma < mb : a < b;
  });
  for (size_t i = 0; i < k; ++i) (*bits)[idx[i]] = 0;
}

std::vector<uint32_t> Oracle(std::vector<uint32_t> bits, DType d, size_t rows, size_t cols,
                             const PruneSpec& spec) {
  if (spec.kind == PruneSpec::kUnstructured && spec.per_tensor) {
    const size_t k = static_cast<size_t>(spec.fraction * static_cast<double>(rows * cols));
    OraclePrune(&bits, d, 0, rows * cols, k);
  } else if (spec.kind == PruneSpec::kUnstructured) {
    const size_t k = static_cast<size_t>(spec.fraction * static_cast<double>(cols));
    for (size_t r = 0; r < rows; ++r) OraclePrune(&bits, d, r * cols, cols, k);
  } else if (spec.kind == PruneSpec::kNM) {
    for (size_t g = 0; g < rows * cols; g += spec.m)
      OraclePrune(&bits, d, g, spec.m, spec.m - spec.n);
  }
  return bits;
}

std::vector<uint32_t> Run(const std::vector<uint32_t>& bits, DType d, size_t rows, size_t cols,
                          const PruneSpec& spec, size_t chunk_rows = 0,
                          uint64_t* zeroed_out = nullptr) {
  std::vector<uint8_t> bytes = ToBytes(bits, d);
  uint64_t zeroed = 0;
  REQUIRE(PruneTensor(bytes.data(), d, rows, cols, spec, &zeroed, chunk_rows));
  CHECK(zeroed == PrunedElements(spec, rows, cols));
  if (zeroed_out) *zeroed_out = zeroed;
  return FromBytes(bytes, d);
}

PruneSpec Unstructured(double f, bool per_tensor = false) {
  PruneSpec s;
  s.kind = PruneSpec::kUnstructured;
  s.fraction = f;
  s.per_tensor = per_tensor;
  return s;
}
PruneSpec NM(int n, int m) {
  PruneSpec s;
  s.kind = PruneSpec::kNM;
  s.n = n;
  s.m = m;
  return s;
}

// Expected result from a keep-mask over the input values (pruned -> bit pattern 0).
std::vector<uint32_t> Masked(DType d, const std::vector<float>& v, const std::vector<int>& keep) {
  std::vector<uint32_t> out = Encode(d, v);
  for (size_t i = 0; i < out.size(); ++i)
    if (!keep[i]) out[i] = 0;
  return out;
}

constexpr DType kDTypes[] = {DType::kBF16, DType::kF16, DType::kF32};

// Random finite bit pattern; `ties` draws from a handful of values (both signs, +-0) instead.
uint32_t RandomBits(std::mt19937& rng, DType d, bool ties) {
  if (ties) {
    static const float kVals[] = {0.f, -0.f, 0.5f, -0.5f, 1.f, -1.f, 0.25f, 2.f, -2.f, 0.125f};
    return Encode(d, kVals[rng() % 10]);
  }
  for (;;) {
    const uint32_t b = d == DType::kF32 ? static_cast<uint32_t>(rng()) : rng() & 0xFFFFu;
    const uint32_t inf = d == DType::kF32 ? 0x7F800000u : d == DType::kBF16 ? 0x7F80u : 0x7C00u;
    if (Mag(d, b) < inf) return b;
  }
}

// Normal-ish weights as real checkpoints hold them (many equal BF16 magnitudes).
uint32_t WeightBits(std::mt19937& rng, DType d) {
  std::normal_distribution<float> nd(0.f, 0.02f);
  return Encode(d, nd(rng));
}

TEST_SUITE("prune") {

TEST_CASE("unstructured per row: ties, negatives, -0 (worked by hand)") {
  for (DType d : kDTypes) {
    CAPTURE(Label(d));
    // |x| = 1 1 .5 0 0 2 3 .5; k = 4: the keys (0,3) (0,4) (.5,2) (.5,7) are pruned; the -0 at
    // column 3 becomes +0.
    const std::vector<float> v = {1, -1, 0.5f, -0.f, 0, 2, -3, 0.5f};
    CHECK(Run(Encode(d, v), d, 1, 8, Unstructured(0.5)) ==
          Masked(d, v, {1, 1, 0, 0, 0, 1, 1, 0}));
    CHECK(Run(Encode(d, v), d, 1, 8, Unstructured(0.5))[3] == 0u);
    // All equal: the lower columns are pruned first.
    const std::vector<float> eq = {-1, 1, -1, 1};
    CHECK(Run(Encode(d, eq), d, 1, 4, Unstructured(0.5)) == Masked(d, eq, {0, 0, 1, 1}));
    // k = 2 of 5 with a three-way tie at the threshold: columns 1 and 2 go, column 3 stays.
    const std::vector<float> t3 = {2, 1, -1, 1, 3};
    CHECK(Run(Encode(d, t3), d, 1, 5, Unstructured(0.4)) == Masked(d, t3, {1, 0, 0, 1, 1}));
    // Two rows are independent.
    const std::vector<float> two = {4, 3, 2, 1, 1, 2, 3, 4};
    CHECK(Run(Encode(d, two), d, 2, 4, Unstructured(0.5)) ==
          Masked(d, two, {1, 1, 0, 0, 0, 0, 1, 1}));
  }
}

TEST_CASE("unstructured per row: k = 0 and k = cols - 1, rounding down") {
  for (DType d : kDTypes) {
    CAPTURE(Label(d));
    const std::vector<float> v = {1, -2, 3, -4, 5, -6, 7, -8};
    const std::vector<uint32_t> in = Encode(d, v);
    CHECK(Run(in, d, 1, 8, Unstructured(0.0)) == in);   // fraction 0
    CHECK(Run(in, d, 1, 8, Unstructured(0.1)) == in);   // floor(0.8) = 0
    CHECK(Run(in, d, 1, 8, Unstructured(0.124)) == in); // floor(0.992) = 0
    CHECK(Run(in, d, 1, 8, Unstructured(0.125)) == Masked(d, v, {0, 1, 1, 1, 1, 1, 1, 1}));
    CHECK(Run(in, d, 1, 8, Unstructured(0.99)) == Masked(d, v, {0, 0, 0, 0, 0, 0, 0, 1}));
    const std::vector<float> ones(8, 1.f);
    CHECK(Run(Encode(d, ones), d, 1, 8, Unstructured(0.9)) ==
          Masked(d, ones, {0, 0, 0, 0, 0, 0, 0, 1}));
  }
  CHECK(PruneCount(0.5, 11) == 5);
  CHECK(PruneCount(0.29, 100) == 28);  // 0.29 * 100 = 28.999999999999996, as Python's int()
  CHECK(PruneCount(0.0, 100) == 0);
  CHECK(PruneCount(0.999, 10) == 9);
}

TEST_CASE("N:M (worked by hand)") {
  for (DType d : kDTypes) {
    CAPTURE(Label(d));
    // 2:4: keep the two largest |x| per group; equal magnitudes keep the higher column.
    const std::vector<float> v = {1, -4, 3, -2, 0.5f, -0.5f, 0.5f, 0.5f, -0.f, 0, 0, 1};
    CHECK(Run(Encode(d, v), d, 1, 12, NM(2, 4)) ==
          Masked(d, v, {0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1}));
    // 1:4
    CHECK(Run(Encode(d, v), d, 1, 12, NM(1, 4)) ==
          Masked(d, v, {0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1}));
    // 4:8 over two rows
    const std::vector<float> w = {8, -7, 6, -5, 4, -3, 2, -1, 1, 1, 1, 1, 2, 2, 2, 2};
    CHECK(Run(Encode(d, w), d, 2, 8, NM(4, 8)) ==
          Masked(d, w, {1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1}));
    // 3:16: the three largest; a tie at third place keeps the higher column.
    std::vector<float> x(16, 0.25f);
    x[2] = -9;
    x[5] = 3;
    x[9] = 1;
    x[14] = -1;
    std::vector<int> keep(16, 0);
    keep[2] = keep[5] = keep[14] = 1;
    CHECK(Run(Encode(d, x), d, 1, 16, NM(3, 16)) == Masked(d, x, keep));
    // N = M keeps everything.
    CHECK(Run(Encode(d, x), d, 1, 16, NM(4, 4)) == Encode(d, x));
  }
}

TEST_CASE("unstructured per tensor (worked by hand)") {
  for (DType d : kDTypes) {
    CAPTURE(Label(d));
    // 2 x 4, k = floor(0.5 * 8) = 4: |x| sorted: 0(-0,@1) .5(@2) .5(@5) 1(@0) 1(@4) 1(@6) 3 4.
    // The fourth smallest is T = 1 with one equal pruned: the first in row-major order (@0).
    const std::vector<float> v = {1, -0.f, 0.5f, 4, -1, -0.5f, 1, -3};
    CHECK(Run(Encode(d, v), d, 2, 4, Unstructured(0.5, true)) ==
          Masked(d, v, {0, 0, 0, 1, 1, 0, 1, 1}));
    // Per row prunes two in each row instead (row 2: -1 and 1 tie, the lower column goes).
    CHECK(Run(Encode(d, v), d, 2, 4, Unstructured(0.5)) == Masked(d, v, {1, 0, 0, 1, 0, 0, 1, 1}));
    // Chunked one row at a time: same result.
    CHECK(Run(Encode(d, v), d, 2, 4, Unstructured(0.5, true), 1) ==
          Masked(d, v, {0, 0, 0, 1, 1, 0, 1, 1}));
    CHECK(Run(Encode(d, v), d, 2, 4, Unstructured(0.0, true)) == Encode(d, v));
    CHECK(Run(Encode(d, v), d, 2, 4, Unstructured(0.9, true)) ==
          Masked(d, v, {0, 0, 0, 1, 0, 0, 0, 0}));
  }
}

TEST_CASE("threshold API: F32 takes two passes, 16-bit one") {
  const std::vector<float> v = {1, -2, 3, -4, 5, -6, 7, -8};
  for (DType d : kDTypes) {
    CAPTURE(Label(d));
    const std::vector<uint8_t> bytes = ToBytes(Encode(d, v), d);
    MagnitudeHistogram h(d);
    REQUIRE(AccumulateHistogram(&h, bytes.data(), 2, 4));
    TensorThreshold t = FindThreshold(&h, 3);
    if (d == DType::kF32) {
      CHECK_FALSE(t.complete);
      REQUIRE(AccumulateHistogram(&h, bytes.data(), 2, 4));
      t = FindThreshold(&h, 3);
    }
    REQUIRE(t.complete);
    CHECK(t.magnitude == Mag(d, Encode(d, 3.f)));
    CHECK(t.prune_equal == 1);
    CHECK(t.pruned == 3);
    CHECK(CountEqual(bytes.data(), d, 2, 4, t.magnitude) == 1);
  }
}

TEST_CASE("randomized against the full-sort oracle") {
  std::mt19937 rng(12345);
  const size_t kCols[] = {1, 3, 8, 16, 48, 129, 256, 1000};
  const double kFractions[] = {0.0, 0.1, 0.25, 0.5, 0.7, 0.9, 0.999};
  const int kNM[][2] = {{1, 4}, {2, 4}, {3, 4}, {4, 8}, {2, 8}, {3, 16}, {8, 16}, {1, 1},
                        {1, 2}, {5, 12}, {16, 16}};
  int cases = 0;
  for (DType d : kDTypes) {
    for (int mode = 0; mode < 3; ++mode) {  // 0 random bits, 1 few values (ties), 2 weights
      for (size_t cols : kCols) {
        const size_t rows = 1 + rng() % 9;
        std::vector<uint32_t> in(rows * cols);
        for (auto& b : in) b = mode == 2 ? WeightBits(rng, d) : RandomBits(rng, d, mode == 1);
        CAPTURE(Label(d));
        CAPTURE(mode);
        CAPTURE(rows);
        CAPTURE(cols);
        for (double f : kFractions) {
          CAPTURE(f);
          CHECK(Run(in, d, rows, cols, Unstructured(f)) ==
                Oracle(in, d, rows, cols, Unstructured(f)));
          const std::vector<uint32_t> want = Oracle(in, d, rows, cols, Unstructured(f, true));
          CHECK(Run(in, d, rows, cols, Unstructured(f, true)) == want);
          for (size_t chunk : {size_t{1}, size_t{2}, size_t{3}})
            CHECK(Run(in, d, rows, cols, Unstructured(f, true), chunk) == want);
          cases += 5;
        }
        for (const auto& nm : kNM) {
          if (cols % nm[1] != 0) continue;
          CAPTURE(nm[0]);
          CAPTURE(nm[1]);
          CHECK(Run(in, d, rows, cols, NM(nm[0], nm[1])) ==
                Oracle(in, d, rows, cols, NM(nm[0], nm[1])));
          ++cases;
        }
      }
    }
  }
  MESSAGE(cases << " randomized comparisons");
}

TEST_CASE("large rows against the oracle (counting select paths)") {
  std::mt19937 rng(7);
  for (DType d : kDTypes) {
    for (size_t cols : {size_t{4096}, size_t{11008}}) {
      const size_t rows = 4;
      std::vector<uint32_t> in(rows * cols);
      for (size_t i = 0; i < in.size(); ++i)
        in[i] = i < in.size() / 2 ? WeightBits(rng, d) : RandomBits(rng, d, i % 3 == 0);
      CAPTURE(Label(d));
      CAPTURE(cols);
      for (double f : {0.3, 0.5, 0.8}) {
        CHECK(Run(in, d, rows, cols, Unstructured(f)) ==
              Oracle(in, d, rows, cols, Unstructured(f)));
        CHECK(Run(in, d, rows, cols, Unstructured(f, true), 3) ==
              Oracle(in, d, rows, cols, Unstructured(f, true)));
      }
      for (int n = 1; n <= 4; ++n)
        CHECK(Run(in, d, rows, cols, NM(n, 4)) == Oracle(in, d, rows, cols, NM(n, 4)));
      CHECK(Run(in, d, rows, cols, NM(2, 8)) == Oracle(in, d, rows, cols, NM(2, 8)));
    }
  }
}

TEST_CASE("unaligned buffers") {
  std::mt19937 rng(3);
  for (DType d : kDTypes) {
    const size_t rows = 3, cols = 64;
    std::vector<uint32_t> in(rows * cols);
    for (auto& b : in) b = RandomBits(rng, d, false);
    for (const PruneSpec& spec : {Unstructured(0.5), NM(2, 4)}) {
      std::vector<uint8_t> bytes = ToBytes(in, d);
      std::vector<uint8_t> buf(bytes.size() + 1);
      std::memcpy(buf.data() + 1, bytes.data(), bytes.size());
      REQUIRE(PruneRows(buf.data() + 1, d, rows, cols, spec, nullptr));
      std::memcpy(bytes.data(), buf.data() + 1, bytes.size());
      CHECK(FromBytes(bytes, d) == Oracle(in, d, rows, cols, spec));
    }
  }
}

// Out of place (the pipeline prunes from the read-only input mapping into a staging buffer):
// the oracle's result in `dst`, `src` untouched, at every alignment of either side, for each
// kernel (N:4 SWAR, general N:M, both unstructured select widths, per-tensor threshold).
TEST_CASE("out of place: oracle result, source untouched, any alignment") {
  std::mt19937 rng(11);
  for (DType d : kDTypes) {
    CAPTURE(Label(d));
    for (size_t cols : {64, 2048}) {
      const size_t rows = 3;
      CAPTURE(cols);
      std::vector<uint32_t> in(rows * cols);
      for (auto& b : in) b = RandomBits(rng, d, true);
      const std::vector<uint8_t> bytes = ToBytes(in, d);
      for (const PruneSpec& spec :
           {Unstructured(0.5), Unstructured(0.0), NM(2, 4), NM(1, 4), NM(3, 8),
            Unstructured(0.3, true)}) {
        CAPTURE(SparsityStructure(spec));
        CAPTURE(spec.per_tensor);
        const std::vector<uint32_t> want = Oracle(in, d, rows, cols, spec);
        for (size_t src_mis : {0, 1}) {
          for (size_t dst_mis : {0, 1}) {
            CAPTURE(src_mis);
            CAPTURE(dst_mis);
            std::vector<uint8_t> src(bytes.size() + 1), dst(bytes.size() + 1, 0xAB);
            std::memcpy(src.data() + src_mis, bytes.data(), bytes.size());
            const std::vector<uint8_t> src_before = src;
            uint64_t zeroed = 0;
            if (spec.per_tensor) {
              MagnitudeHistogram h(d);
              TensorThreshold t;
              do {
                REQUIRE(AccumulateHistogram(&h, bytes.data(), rows, cols));
                t = FindThreshold(&h, PruneCount(spec.fraction, rows * cols));
              } while (!t.complete);
              REQUIRE(PruneRowsTensor(src.data() + src_mis, dst.data() + dst_mis, d, rows, cols,
                                      t, 0, &zeroed));
            } else {
              REQUIRE(PruneRows(src.data() + src_mis, dst.data() + dst_mis, d, rows, cols, spec,
                                &zeroed));
            }
            CHECK(src == src_before);
            CHECK(zeroed == PrunedElements(spec, rows, cols));
            std::vector<uint8_t> got(dst.begin() + dst_mis,
                                     dst.begin() + dst_mis + bytes.size());
            CHECK(FromBytes(got, d) == want);
          }
        }
      }
    }
  }
}

// The 16-bit N:4 path runs a Highway kernel: on every target, for element counts that leave
// every remainder of groups past a whole vector (up to 8 groups per vector), at both
// alignments, it equals the scalar SWAR reference and the oracle, and leaves the source alone.
// NaN / Inf anywhere, also in the last groups, makes both refuse.
TEST_CASE("N:4 kernel on every target against the scalar reference and the oracle") {
  std::mt19937 rng(29);
  std::set<std::string> targets;
  for (DType d : {DType::kBF16, DType::kF16}) {
    CAPTURE(Label(d));
    for (size_t groups : {1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 1027}) {
      const size_t cols = 4 * groups;
      CAPTURE(cols);
      std::vector<uint32_t> in(cols);
      for (size_t i = 0; i < cols; ++i) {
        in[i] = i % 3 == 0 ? WeightBits(rng, d) : RandomBits(rng, d, i % 2 == 0);
      }
      const std::vector<uint8_t> bytes = ToBytes(in, d);
      for (int n = 1; n <= 4; ++n) {
        CAPTURE(n);
        const std::vector<uint32_t> want = Oracle(in, d, 1, cols, NM(n, 4));
        std::vector<uint8_t> ref(bytes.size());
        REQUIRE(PruneN4Scalar(bytes.data(), ref.data(), d, cols, n));
        CHECK(FromBytes(ref, d) == want);
        for (size_t mis : {0, 1}) {
          CAPTURE(mis);
          targets.merge(testing::ForEachTarget([&](const std::string& target) {
            CAPTURE(target);
            std::vector<uint8_t> src(bytes.size() + 1), dst(bytes.size() + 1 + 8, 0xAB);
            std::memcpy(src.data() + mis, bytes.data(), bytes.size());
            const std::vector<uint8_t> src_before = src;
            REQUIRE(PruneRows(src.data() + mis, dst.data() + mis, d, 1, cols, NM(n, 4),
                              nullptr));
            CHECK(src == src_before);
            CHECK(std::vector<uint8_t>(dst.begin() + mis, dst.begin() + mis + bytes.size()) ==
                  ref);
            // Nothing written past the rows.
            for (size_t i = mis + bytes.size(); i < dst.size(); ++i) CHECK(dst[i] == 0xAB);
          }));
        }
      }
      // A NaN or Inf in the first or the last group.
      const uint32_t inf = d == DType::kBF16 ? 0x7F80u : 0x7C00u;
      for (size_t at : {size_t{0}, cols - 1}) {
        for (uint32_t bad : {inf, inf | 1u, inf | 0x8000u}) {
          std::vector<uint32_t> broken = in;
          broken[at] = bad;
          const std::vector<uint8_t> b = ToBytes(broken, d);
          std::vector<uint8_t> out(b.size());
          CHECK_FALSE(PruneN4Scalar(b.data(), out.data(), d, cols, 2));
          testing::ForEachTarget([&](const std::string& target) {
            CAPTURE(target);
            CHECK_FALSE(PruneRows(b.data(), out.data(), d, 1, cols, NM(2, 4), nullptr));
          });
        }
      }
    }
  }
  for (const auto& t : targets) MESSAGE("N:4 kernel tested on target " << t);
  CHECK(targets.size() >= 2);
}

TEST_CASE("NaN and Inf are refused") {
  for (DType d : kDTypes) {
    CAPTURE(Label(d));
    const uint32_t inf = d == DType::kF32 ? 0x7F800000u : d == DType::kBF16 ? 0x7F80u : 0x7C00u;
    for (uint32_t bad : {inf, inf | 1u, inf | (d == DType::kF32 ? 0x80000000u : 0x8000u)}) {
      std::vector<uint32_t> in = Encode(d, {1, 2, 3, 4, 5, 6, 7, 8});
      in[5] = bad;
      for (const PruneSpec& spec : {Unstructured(0.5), Unstructured(0.0), NM(2, 4)}) {
        std::vector<uint8_t> bytes = ToBytes(in, d);
        CHECK_FALSE(PruneRows(bytes.data(), d, 2, 4, spec, nullptr));
      }
      std::vector<uint8_t> bytes = ToBytes(in, d);
      CHECK_FALSE(PruneTensor(bytes.data(), d, 2, 4, Unstructured(0.5, true), nullptr));
    }
  }
}

TEST_CASE("ParsePruneSpec") {
  auto ok = ParsePruneSpec("unstructured:0.5");
  REQUIRE(ok.ok());
  CHECK(ok->kind == PruneSpec::kUnstructured);
  CHECK(ok->fraction == 0.5);
  CHECK_FALSE(ok->per_tensor);
  CHECK(ParsePruneSpec("unstructured:0")->fraction == 0.0);
  CHECK(ParsePruneSpec("unstructured:.25")->fraction == 0.25);
  auto nm = ParsePruneSpec("2:4");
  REQUIRE(nm.ok());
  CHECK(nm->kind == PruneSpec::kNM);
  CHECK(nm->n == 2);
  CHECK(nm->m == 4);
  CHECK(ParsePruneSpec("3:16")->m == 16);
  CHECK(ParsePruneSpec("16:16")->n == 16);
  CHECK(ParsePruneSpec("none")->kind == PruneSpec::kNone);
  for (const char* bad : {"", "unstructured", "unstructured:", "unstructured:1",
                          "unstructured:1.0", "unstructured:-0.1", "unstructured:nan",
                          "unstructured:inf", "unstructured:0.5x", "unstructured:0x1",
                          "5:4", "0:4", "2:0", "1:17", "2:32", "a:4", "2:b", "2:4:8", "-2:4",
                          "2 :4", "structured:0.5", "2:", ":4", "0.5"}) {
    CAPTURE(bad);
    auto r = ParsePruneSpec(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == ErrorCode::kUsage);
    CHECK(r.status().message().find('\n') == std::string::npos);
    CHECK(r.status().message().find(std::string("'") + bad + "'") != std::string::npos);
  }
  CHECK(ParsePruneSpec("1:17").status().message().find("at most 16") != std::string::npos);
  CHECK(ParsePruneSpec("5:4").status().message().find("N must not exceed M") !=
        std::string::npos);
  CHECK(ParsePruneSpec("unstructured:1").status().message().find("[0, 1)") !=
        std::string::npos);

  PruneSpec s = *ParsePruneSpec("unstructured:0.5");
  CHECK(ApplyGranularity("tensor", &s).ok());
  CHECK(s.per_tensor);
  CHECK(ApplyGranularity("row", &s).ok());
  CHECK_FALSE(s.per_tensor);
  CHECK(ApplyGranularity("column", &s).code() == ErrorCode::kUsage);
  PruneSpec t = *ParsePruneSpec("2:4");
  CHECK(ApplyGranularity("tensor", &t).code() == ErrorCode::kUsage);
  CHECK(CheckShape(t, 8, 12).ok());
  CHECK(CheckShape(t, 8, 10).code() == ErrorCode::kUnsupported);
  CHECK(SparsityStructure(t) == "2:4");
  CHECK(SparsityStructure(s) == "unstructured");
  CHECK(PrunedElements(t, 3, 8) == 12);
  CHECK(PrunedElements(s, 3, 9) == 12);
  s.per_tensor = true;
  CHECK(PrunedElements(s, 3, 9) == 13);
}

}  // TEST_SUITE

}  // namespace
}  // namespace quench::prune
