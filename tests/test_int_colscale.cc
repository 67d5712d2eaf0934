// Column factors folded into the int kernels (WeightChunk::col_scale, smoothing's balance
// weights): on every compiled Highway target the kernel with factors equals (1) the scalar
// definition with factors, bit for bit, and (2) the kernel run on rows smoothed beforehand
// by calib::ApplySmoothOpsFrom (the transform the SmoothQuant golden tests check against the
// reference), so folding the product into the kernel changes no byte. The scalar definition
// with factors is itself checked against the scalar definition on the pre-smoothed rows.
// Every int layout (unpacked and packed, channel and group, symmetric and asymmetric, the
// bf16 int4 pair path), every weight dtype, vector tails, unaligned rows, and products that
// overflow the dtype (the chunk is refused, as a smoothed copy holding Inf is).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "calib/smoothquant.h"
#include "int_kernel_run.h"
#include "kernel_test_util.h"
#include "schemes/float_formats.h"
#include "schemes/int.h"

namespace quench::intq {
using namespace quench::testing;  // NOLINT: shared kernel-test helpers
using namespace testing_int;      // NOLINT: Config, Outputs, MakeChunk, Run

namespace {

// Runs the kernel (or the scalar definition) on `rows` x `cols` elements at `data`, with the
// column factors `s` (or none), into guard-filled outputs sized as int.h lays them out.
Outputs Run(const Config& cfg, bool kernel, DType d, const uint8_t* data, size_t rows,
            size_t cols, const float* s) {
  WeightChunk in = MakeChunk(data, d, rows, cols, cfg);
  in.col_scale = s;
  return testing_int::Run(cfg, kernel, in);
}

// Factors as SmoothQuant makes them: f32 values over many binades (2^-12 .. 2^12), its floor
// 1e-5, exact 1 and powers of two; `huge` adds factors that overflow the dtype's largest
// elements, and an infinite one.
std::vector<float> Factors(size_t cols, std::mt19937& rng, bool huge) {
  std::uniform_real_distribution<float> mant(1.0f, 2.0f);
  std::vector<float> s(cols);
  for (size_t c = 0; c < cols; ++c) {
    switch (rng() % 8) {
      case 0: s[c] = 1e-5f; break;
      case 1: s[c] = 1.0f; break;
      case 2: s[c] = std::ldexp(1.0f, static_cast<int>(rng() % 17) - 8); break;
      default: s[c] = std::ldexp(mant(rng), static_cast<int>(rng() % 25) - 12); break;
    }
  }
  if (huge) {
    s[rng() % cols] = 3e38f;
    // An infinite factor: Inf products, and NaN ones (0 * Inf) where its column holds a zero.
    if (cols > 1) s[rng() % cols] = INFINITY;
  }
  return s;
}

// Rows of dtype d: N(0, sigma) with sigma changing per row over 2^-10 .. 2^5, a few
// subnormals, zeros and the dtype's largest values mixed in.
std::vector<uint8_t> Rows(DType d, size_t rows, size_t cols, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint8_t> data(rows * cols * ElemBytes(d) + 8);
  for (size_t r = 0; r < rows; ++r) {
    const float sigma = std::ldexp(1.0f, static_cast<int>(r % 16) - 10);
    for (size_t c = 0; c < cols; ++c) {
      uint8_t* e = data.data() + (r * cols + c) * ElemBytes(d);
      switch (rng() % 32) {
        case 0: PutBits(e, d, rng() % 7); break;  // subnormal or zero
        case 1: PutElem(e, d, -0.0f); break;
        case 2: PutElem(e, d, (rng() & 1 ? -1.0f : 1.0f) * std::ldexp(DTypeMax(d), -14)); break;
        default: PutElem(e, d, normal(rng) * sigma); break;
      }
    }
  }
  return data;
}

// Rows smoothed by calib::ApplySmoothOpsFrom with one column product (the balance layers'
// transform before this change), from `src`.
std::vector<uint8_t> Smoothed(DType d, const uint8_t* src, size_t rows, size_t cols,
                              const std::vector<float>& s) {
  calib::SmoothOp op;
  op.kind = calib::SmoothOp::kMulCols;
  op.s = std::make_shared<const std::vector<double>>(s.begin(), s.end());
  op.s32 = calib::F32Scales(*op.s);
  REQUIRE(op.s32 != nullptr);
  std::vector<uint8_t> out(rows * cols * ElemBytes(d));
  calib::ApplySmoothOpsFrom({op}, d, cols, 0, rows * cols, src, out.data());
  return out;
}

void Check(const Config& cfg, size_t rows, size_t cols, std::mt19937& rng,
           std::set<std::string>& targets, size_t* refused) {
  for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (bool huge : {false, true}) {
      for (size_t offset : {0, 2}) {  // aligned rows, and rows misaligned by one element
        CAPTURE(cfg.bits);
        CAPTURE(cfg.group_size);
        CAPTURE(cfg.symmetric);
        CAPTURE(cfg.packed);
        const std::string dtype = DTypeLabel(d);
        CAPTURE(dtype);
        CAPTURE(rows);
        CAPTURE(cols);
        CAPTURE(huge);
        CAPTURE(offset);
        std::vector<uint8_t> storage = Rows(d, rows, cols, rng);
        if (offset != 0) storage.insert(storage.begin(), offset, uint8_t{0});
        const uint8_t* data = storage.data() + offset;
        const std::vector<float> s = Factors(cols, rng, huge);
        const std::vector<uint8_t> smoothed = Smoothed(d, data, rows, cols, s);
        const Outputs want = Run(cfg, false, d, smoothed.data(), rows, cols, nullptr);
        // The definition with factors is the definition on the smoothed rows.
        REQUIRE(Run(cfg, false, d, data, rows, cols, s.data()) == want);
        *refused += !want.ok;
        targets.merge(ForEachTarget([&](const std::string& target) {
          CAPTURE(target);
          REQUIRE(Run(cfg, true, d, data, rows, cols, s.data()) == want);
          REQUIRE(Run(cfg, true, d, smoothed.data(), rows, cols, nullptr) == want);
        }));
      }
    }
  }
}

}  // namespace

TEST_SUITE("int_colscale") {

TEST_CASE("column factors in the kernel equal the smoothed copy's quantization on every target") {
  std::mt19937 rng(20261204);
  std::set<std::string> targets;
  size_t refused = 0;
  const Config configs[] = {
      {8, 0, true, false},     // W8A8: int8 per channel
      {8, 0, false, false},    // asymmetric int8 per channel
      {8, 64, true, false},    // unpacked groups
      {4, 128, true, true},    // W4A16: the bf16 int4 pair path
      {4, 32, false, true},    // W4A16_ASYM-like, packed zero points
      {4, 0, true, true},      // packed per channel
      {8, 32, true, true},     // W8A16
      {3, 32, false, true},    // odd widths through the packer's scratch row
  };
  for (const Config& cfg : configs) {
    if (cfg.group_size > 0) {
      const size_t g = static_cast<size_t>(cfg.group_size);
      Check(cfg, 37, 3 * g, rng, targets, &refused);
      Check(cfg, 2, 37 * g, rng, targets, &refused);
    } else {
      for (size_t cols : {1, 5, 17, 33, 100, 129, 300}) {
        Check(cfg, 1 + cols % 7, cols, rng, targets, &refused);
      }
    }
  }
  MESSAGE("targets: " << targets.size() << ", refused chunks (Inf products): " << refused);
  CHECK(refused > 0);           // the overflowing factors were exercised
  CHECK(targets.size() >= 2);   // at least one SIMD target besides the baseline
}

}  // TEST_SUITE

}  // namespace quench::intq
