// FP4 imatrix_mse chosen ranges from the search's per-group largest magnitudes
// (src/calib/imatrix_run.cc keeps them instead of reading the weights twice more):
// GroupAbsMax (src/calib/imatrix_mse_rows.cc) against max |x| element by element on every
// Highway target (and ToF32GroupAbsMax, which widens the rows too), and SearchSteps'
// group_absmax + ChosenPos against the definition's chosen range, pos = max(|min(mn, 0)|,
// max(mx, 0)) of StepRange(min, max of the group, chosen step) (imatrix_mse.h), for NVFP4
// and MXFP4, bf16 / f16 / f32, several grids and expands.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "calib/imatrix_mse.h"
#include "calib/imatrix_mse_kernel.h"
#include "calib/imatrix_mse_rows.h"
#include "kernel_test_util.h"
#include "quench/dtype.h"
#include "schemes/chunk.h"
#include "schemes/float_formats.h"

namespace quench::testing {
namespace {

using calib::ImatrixFormat;

TEST_CASE("GroupAbsMax is each group's largest |x|, every target") {
  const auto targets = ForEachTarget([&](const std::string& target) {
    std::mt19937 rng(18);
    std::normal_distribution<float> normal(0.f, 1.f);
    // Groups of part vectors (8, 24), whole vectors (16, 32, 64); group counts that fill
    // whole tiles of groups and that leave some over.
    for (size_t group : {size_t{8}, size_t{16}, size_t{24}, size_t{32}, size_t{64}}) {
      for (size_t ng : {size_t{1}, size_t{15}, size_t{16}, size_t{37}, size_t{64}}) {
        std::vector<float> x(group * ng);
        for (size_t i = 0; i < x.size(); ++i) {
          const int kind = static_cast<int>(i / group % 4);
          // kind 0: signed zeros only; 1: one outlier; 2: all negative; 3: normal values.
          x[i] = kind == 0 ? (i % 2 ? -0.f : 0.f)
               : kind == 1 ? (i % group == group / 3 ? -40.f : normal(rng))
               : kind == 2 ? -std::fabs(normal(rng)) - 1e-3f
                           : normal(rng) * 3.f;
        }
        std::vector<float> got(ng, -1.f);
        calib::internal::GroupAbsMax(x.data(), ng, group, got.data());
        for (size_t g = 0; g < ng; ++g) {
          float want = 0.f;
          for (size_t j = 0; j < group; ++j) want = std::max(want, std::fabs(x[g * group + j]));
          CAPTURE(target);
          CAPTURE(group);
          CAPTURE(ng);
          CAPTURE(g);
          CHECK(got[g] == want);
        }
      }
    }
  });
  CHECK(!targets.empty());
}

// ToF32GroupAbsMax (one pass for bf16 groups of 16 on 8-lane targets, two elsewhere): the
// f32 values element by element, each group's max |x|, and false for an Inf or NaN anywhere.
TEST_CASE("ToF32GroupAbsMax widens and takes each group's largest |x|, every target") {
  size_t runs = 0;
  const auto targets = ForEachTarget([&](const std::string& target) {
    std::mt19937 rng(21);
    std::normal_distribution<float> normal(0.f, 1.f);
    for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
      for (size_t group : {size_t{16}, size_t{32}}) {
        for (size_t ng : {size_t{1}, size_t{8}, size_t{29}, size_t{64}}) {
          const size_t n = group * ng;
          std::vector<uint8_t> raw(n * ElemBytes(d));
          for (size_t i = 0; i < n; ++i) {
            const int kind = static_cast<int>(i / group % 4);
            const float v = kind == 0 ? (i % 2 ? -0.f : 0.f)
                            : kind == 1 ? (i % group == group / 3 ? -40.f : normal(rng))
                            : kind == 2 ? -std::fabs(normal(rng)) - 1e-3f
                                        : normal(rng) * 3.f;
            PutElem(raw.data() + i * ElemBytes(d), d, v);
          }
          std::vector<float> x(n, -1.f), amax(ng, -1.f);
          CAPTURE(target);
          CAPTURE(DTypeLabel(d));
          CAPTURE(group);
          CAPTURE(ng);
          REQUIRE(calib::internal::ToF32GroupAbsMax(raw.data(), d, ng, group, x.data(),
                                                    amax.data()));
          size_t bad = 0;
          for (size_t g = 0; g < ng; ++g) {
            float want = 0.f;
            for (size_t j = 0; j < group; ++j) {
              const float v = ElementToF32(raw.data(), d, g * group + j);
              bad += std::memcmp(&v, &x[g * group + j], 4) != 0;
              want = std::max(want, std::fabs(v));
            }
            bad += amax[g] != want;
          }
          CHECK(bad == 0);
          // An Inf or a NaN in the first, a middle or the last element: false.
          for (const size_t at : {size_t{0}, n / 2 + 3, n - 1}) {
            for (const float bad_v : {INFINITY, -INFINITY, NAN}) {
              std::vector<uint8_t> r2 = raw;
              PutElem(r2.data() + at * ElemBytes(d), d, bad_v);
              CHECK_FALSE(calib::internal::ToF32GroupAbsMax(r2.data(), d, ng, group, x.data(),
                                                            amax.data()));
            }
          }
          ++runs;
        }
      }
    }
  });
  CHECK(!targets.empty());
  CHECK(runs == 24 * targets.size());
}

TEST_CASE("ChosenPos from the search's group maxima equals the definition's chosen range") {
  size_t checked = 0, shrunk = 0;
  const auto targets = ForEachTarget([&](const std::string& target) {
  std::mt19937 rng(1805);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  for (ImatrixFormat f : {ImatrixFormat::kNvfp4, ImatrixFormat::kMxfp4}) {
    const size_t group = f == ImatrixFormat::kNvfp4 ? 16 : 32;
    for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
      for (int setting = 0; setting < 3; ++setting) {
        calib::ImatrixOptions o;
        if (setting == 1) o.expand = 1.3;
        if (setting == 2) {
          o.grid = 40;
          o.maxshrink = 0.78;
        }
        REQUIRE(calib::ChosenPosApplies(o));
        const size_t rows = 19, ng = 12, cols = ng * group;
        std::vector<uint8_t> data(rows * cols * ElemBytes(d));
        std::vector<float> imp(cols);
        for (float& v : imp) v = u(rng) * 2.f;
        for (size_t i = 0; i < rows * cols; ++i) {
          // Heavy tails in some groups (their best step shrinks), all-negative ones, zeros.
          const size_t g = i / group;
          float v = normal(rng);
          if (g % 5 == 1 && u(rng) < 0.1f) v *= 30.f;
          if (g % 5 == 2) v = -std::fabs(v);
          if (g % 7 == 3) v = 0.f;
          PutElem(data.data() + i * ElemBytes(d), d, v);
        }
        WeightChunk in;
        in.data = data.data();
        in.dtype = d;
        in.rows = rows;
        in.cols = cols;
        std::vector<double> best(rows * ng, 3.4028234663852886e38);
        std::vector<uint32_t> masks(rows * ng, 0u);
        std::vector<float> absmax(rows * ng, -1.f);
        uint32_t improved = 0;
        REQUIRE(calib::SearchSteps(in, f, imp, o, 0, calib::LastStep(o), best.data(),
                                   masks.data(), &improved, /*exact_best=*/false,
                                   absmax.data()));
        const int stop = calib::StopStep(improved, o);
        std::vector<uint8_t> pos(rows * ng * ElemBytes(d));
        const float largest =
            calib::ChosenPos(absmax.data(), masks.data(), rows * ng, stop, o, d, pos.data());
        float want_largest = 0.f;
        for (size_t k = 0; k < rows * ng; ++k) {
          float m0 = INFINITY, M0 = -INFINITY;
          for (size_t j = 0; j < group; ++j) {
            const float v = ElementToF32(data.data(), d, k * group + j);
            m0 = std::min(m0, v);
            M0 = std::max(M0, v);
          }
          float mn, mx;
          calib::internal::StepRange(m0, M0, calib::ChosenStep(masks[k], stop), o.grid,
                                     o.expand, d, &mn, &mx);
          const float want = std::max(std::fabs(std::min(mn, 0.f)), std::max(mx, 0.f));
          CAPTURE(DTypeLabel(d));
          CAPTURE(setting);
          CAPTURE(k);
          CHECK(ElementToF32(pos.data(), d, k) == want);
          want_largest = std::max(want_largest, want);
          ++checked;
          shrunk += calib::ChosenStep(masks[k], stop) > 0;
        }
        CAPTURE(target);
        CHECK(largest == want_largest);
      }
    }
  }
  });
  CHECK(checked == targets.size() * 2 * 3 * 3 * 19 * 12);
  CHECK(shrunk > checked / 10);  // chosen steps other than 0 are among those checked
}

TEST_CASE(
    "ChosenPosRow takes the highest step bit at or below stop, every mask form, every target") {
  // Masks with bits everywhere (bit 31, runs of 24 and more ones, single bits, none): the
  // step index against a bit-by-bit search, pos against RNE_D of the products.
  std::vector<uint32_t> masks = {0u, 1u, 2u, 3u, ~0u, 0x80000000u, 0x7FFFFFFFu, 0x00FFFFFFu,
                                 0x01FFFFFFu, 0xFFFFFF00u, 0xAAAAAAAAu, 0x55555555u};
  for (int i = 0; i < 32; ++i) {
    masks.push_back(1u << i);
    masks.push_back((1u << i) - 1u);
    masks.push_back(~0u << i);
  }
  std::mt19937 rng(77);
  while (masks.size() % 8 != 5) masks.push_back(rng());  // a tail past the vectors
  for (int r = 0; r < 64; ++r) masks.push_back(rng() >> (r % 32));
  while (masks.size() % 8 != 3) masks.push_back(rng());
  const size_t n = masks.size();
  std::uniform_real_distribution<float> u(0.f, 1.f);
  std::vector<float> absmax(n);
  for (float& a : absmax) a = u(rng) * 4.f;
  float p[32];
  for (int i = 0; i < 32; ++i) p[i] = static_cast<float>(1.0 - i / 40.0);
  const auto targets = ForEachTarget([&](const std::string& target) {
    for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
      // (Stops on both sides of 8 and 16: on AVX2 p[i] is looked up in one, two or four
      // vectors of eight factors, on AVX-512 in one or two of sixteen.)
      for (int stop : {0, 1, 5, 7, 8, 12, 15, 16, 19, 23, 24, 25, 30, 31}) {
        CAPTURE(target);
        CAPTURE(DTypeLabel(d));
        CAPTURE(stop);
        const size_t esz = ElemBytes(d);
        auto rne = [&](float v) {
          std::vector<uint8_t> b(esz);
          PutElem(b.data(), d, v);
          return ElementToF32(b.data(), d, 0);
        };
        std::vector<uint8_t> got(n * esz, 0xA5), want(n * esz);
        const float largest = calib::internal::ChosenPosRow(absmax.data(), masks.data(), n, stop,
                                                            p, 1.25f, d, got.data());
        float want_largest = 0.f;
        for (size_t k = 0; k < n; ++k) {
          int i = 0;
          for (int b = stop; b >= 0; --b) {
            if ((masks[k] >> b) & 1u) {
              i = b;
              break;
            }
          }
          const float pos = rne(p[i] * rne(absmax[k] * 1.25f));
          PutElem(want.data() + k * esz, d, pos);
          want_largest = std::max(want_largest, pos);
        }
        CHECK(got == want);
        CHECK(largest == want_largest);
      }
    }
  });
  CHECK(targets.size() >= 1);
}

TEST_CASE("ChosenPos does not apply where a step's p reaches 0") {
  calib::ImatrixOptions o;
  CHECK(calib::ChosenPosApplies(o));
  o.maxshrink = 1.0;  // step 20 of 20: p = 0
  CHECK(!calib::ChosenPosApplies(o));
}

}  // namespace
}  // namespace quench::testing
