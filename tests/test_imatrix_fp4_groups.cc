// The NVFP4 imatrix_mse search with lanes across groups (src/calib/imatrix_mse_fp4_groups.cc)
// against the scalar definition (src/calib/imatrix_mse_scalar.cc), on every Highway target
// this CPU runs: per group the improvement masks and best errors (bit for bit), and from
// them the chosen steps, the NVFP4 global scale of the chosen ranges, the E4M3 group scales
// and the packed E2M1 codes, byte for byte. Groups of every kind the search meets: all
// zeros, all equal, one nonzero, two nonzero (the two-term bound equal to the error but for
// its margin), signed zeros, E2M1 midpoints of a scale, identical groups
// side by side (ties between lanes), heavy tails, values near the dtype's largest and
// smallest (the latter outside the bf16 reciprocal's range: the scalar path), and groups
// whose outlier sits in a column of importance 0, so that their best step is the last.
#include <doctest/doctest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "calib/imatrix_mse.h"
#include "calib/imatrix_mse_kernel.h"
#include "kernel_test_util.h"
#include "quench/dtype.h"
#include "schemes/chunk.h"
#include "schemes/float_formats.h"
#include "schemes/fp4.h"
#include "schemes/int_shared.h"

namespace quench::testing {
namespace {

using calib::ImatrixFormat;

// One group of 16 of kind `kind` (see the file comment); `prev` is the group before it.
void FillGroup(std::mt19937& rng, DType d, int kind, const float* prev, size_t outlier_col,
               float* g) {
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  const float big = DTypeMax(d) * 0.75f;
  const float tiny = d == DType::kF16 ? 6e-8f : d == DType::kBF16 ? 1e-38f : 1e-40f;
  const float scale = std::pow(10.f, -3.f + 4.f * u(rng));
  for (size_t j = 0; j < 16; ++j) {
    float x = normal(rng) * scale;
    switch (kind) {
      case 0: x = 0.f; break;
      case 1: x = 0.375f; break;
      case 2: x = j == 5 ? -1.25f : 0.f; break;
      case 3: x = (j % 2 ? -0.f : 0.f) * x; break;
      case 4: x = 0.25f * static_cast<float>(j % 13) - 1.5f; break;  // E2M1 midpoints of 0.5
      case 5: x = u(rng) < 0.15f ? x * 12.f : x; break;
      case 6: x = (j % 2 ? big : -big) * (j % 3 ? 1.f : 0.5f); break;
      case 7: x = tiny * static_cast<float>(j % 7) * (j % 2 ? 1.f : -1.f); break;
      case 8: x = prev[j]; break;  // identical to the group before
      case 9: x = j == outlier_col ? 40.f * scale : x; break;  // best step: the last
      case 10: x = -std::fabs(x); break;
      case 11: x = j == 3 ? x : j == 12 ? -2.75f * x : 0.f; break;  // two terms: E = t1 + t2
      default: x = (j > 0 && u(rng) < 0.3f) ? g[j - 1] : x; break;  // duplicates
    }
    g[j] = x;
  }
}

struct Data {
  std::vector<uint8_t> raw;
  std::vector<float> imp;
  WeightChunk in;
};

// rows x (16 ng) weights of dtype d, group kinds cycling; importance log-uniform with zeros,
// 0 in each group's column 9 (where kind 9 puts its outlier), or uniform (empty).
Data MakeData(std::mt19937& rng, DType d, size_t rows, size_t ng, bool uniform) {
  std::uniform_real_distribution<float> u(0.f, 1.f);
  const size_t cols = 16 * ng;
  std::vector<float> v(rows * cols);
  for (size_t g = 0; g < rows * ng; ++g) {
    float* p = v.data() + g * 16;
    FillGroup(rng, d, static_cast<int>((g * 7 + g / 13) % 13), g > 0 ? p - 16 : p, 9, p);
  }
  Data w;
  w.raw.resize(v.size() * ElemBytes(d));
  for (size_t i = 0; i < v.size(); ++i) PutElem(&w.raw[i * ElemBytes(d)], d, v[i]);
  if (!uniform) {
    w.imp.resize(cols);
    for (size_t c = 0; c < cols; ++c) {
      w.imp[c] = c % 16 == 9 || u(rng) < 0.05f ? 0.f : std::pow(10.f, -2.f + 4.f * u(rng));
    }
  }
  w.in.data = w.raw.data();
  w.in.dtype = d;
  w.in.rows = rows;
  w.in.cols = cols;
  return w;
}

// Group g's 16 values in f32, decoded by the test from the chunk's bytes.
void GroupValues(const Data& w, size_t g, float* x) {
  for (size_t j = 0; j < 16; ++j) {
    const uint8_t* e = w.in.data + (g * 16 + j) * ElemBytes(w.in.dtype);
    uint32_t bits = 0;
    std::memcpy(&bits, e, ElemBytes(w.in.dtype));
    x[j] = w.in.dtype == DType::kF32    ? BitsToF32(bits)
           : w.in.dtype == DType::kBF16 ? BF16ToF32(static_cast<uint16_t>(bits))
                                        : F16ToF32(static_cast<uint16_t>(bits));
  }
}

// The chosen steps' NVFP4 outputs: global scale, E4M3 scales and packed codes.
struct Quantized {
  float global_scale = 0.f;
  std::vector<uint8_t> packed, scales;
};

Quantized QuantizeSteps(const Data& w, const calib::ImatrixOptions& o,
                        const std::vector<uint32_t>& masks, int stop) {
  const size_t groups = masks.size();
  std::vector<uint8_t> steps(groups);
  for (size_t g = 0; g < groups; ++g) steps[g] = calib::ChosenStep(masks[g], stop);
  std::vector<float> pos(groups);
  REQUIRE(calib::ChosenRanges(w.in, ImatrixFormat::kNvfp4, o, steps.data(), pos.data()));
  // Each chosen range as the definition states it: the group's min and max, StepRange, Pos.
  size_t pos_diff = 0;
  for (size_t g = 0; g < groups; ++g) {
    float x[16];
    GroupValues(w, g, x);
    float mn, mx;
    calib::internal::StepRange(*std::min_element(x, x + 16), *std::max_element(x, x + 16),
                               steps[g], o.grid, o.expand, w.in.dtype, &mn, &mx);
    const float want = calib::internal::Pos(mn, mx);
    pos_diff += std::memcmp(&want, &pos[g], sizeof(float)) != 0;
  }
  CHECK(pos_diff == 0);
  Quantized q;
  q.global_scale =
      fp4::Nvfp4GlobalScale(*std::max_element(pos.begin(), pos.end()), w.in.dtype);
  q.packed.resize(w.in.rows * w.in.cols / 2);
  q.scales.resize(groups);
  WeightChunk c = w.in;
  c.params.global_scale = q.global_scale;
  ChunkOutputs out;
  out.out[0] = q.packed.data();
  out.out[1] = q.scales.data();
  REQUIRE(calib::QuantizeChosen(c, ImatrixFormat::kNvfp4, o, steps.data(), false, out));
  return q;
}

// The kernel (as the conversion runs it, and in two step ranges with exact bests) against
// the definition; returns how many groups chose the last step.
size_t Compare(const Data& w, const calib::ImatrixOptions& o) {
  const std::vector<float>& imp = w.imp;
  const size_t groups = w.in.rows * w.in.cols / 16;
  const int last = calib::LastStep(o);
  std::vector<double> best_s(groups, FLT_MAX), best_k(groups, FLT_MAX), best_l(groups, FLT_MAX);
  std::vector<uint32_t> masks_s(groups, 0u), masks_k(groups, 0u), masks_l(groups, 0u);
  uint32_t any_s = 0, any_k = 0, any_l = 0;
  REQUIRE(calib::SearchStepsScalar(w.in, ImatrixFormat::kNvfp4, imp, o, 0, last,
                                   best_s.data(), masks_s.data(), &any_s));
  REQUIRE(calib::SearchSteps(w.in, ImatrixFormat::kNvfp4, imp, o, 0, last / 2, best_k.data(),
                             masks_k.data(), &any_k));
  REQUIRE(calib::SearchSteps(w.in, ImatrixFormat::kNvfp4, imp, o, last / 2 + 1, last,
                             best_k.data(), masks_k.data(), &any_k));
  REQUIRE(calib::SearchSteps(w.in, ImatrixFormat::kNvfp4, imp, o, 0, last, best_l.data(),
                             masks_l.data(), &any_l, /*exact_best=*/false));
  CHECK(any_k == any_s);
  CHECK(any_l == any_s);
  size_t diff = 0, diff_l = 0;
  for (size_t g = 0; g < groups; ++g) {
    if (std::memcmp(&best_k[g], &best_s[g], sizeof(double)) != 0 || masks_k[g] != masks_s[g]) {
      if (diff++ < 3) {
        MESSAGE("group " << g << ": kernel " << best_k[g] << " mask " << masks_k[g]
                         << ", scalar " << best_s[g] << " mask " << masks_s[g]);
      }
    }
    // exact_best false: the same masks, best only a lower bound of the definition's.
    if ((masks_l[g] != masks_s[g] || !(best_l[g] <= best_s[g])) && diff_l++ < 3) {
      MESSAGE("exact_best false, group " << g << ": mask " << masks_l[g] << ", scalar "
                                         << masks_s[g]);
    }
  }
  CHECK(diff == 0);
  CHECK(diff_l == 0);
  // As the conversion runs it: each group's largest magnitude asked for (ChosenPos), which
  // the kernel writes itself where it reads bf16 rows raw (Fp4GroupsRawHandles), from the
  // f32 copy otherwise. Masks the definition's; max |x_j| (+0 for zeros) by the test's own
  // decoding, bit for bit.
  // (fresh: best and masks not set by the caller; they start as garbage here.)
  std::vector<double> best_a(groups, -1.0);
  std::vector<uint32_t> masks_a(groups, 0xFFFFFFFFu);
  std::vector<float> absmax(groups, -1.f);
  uint32_t any_a = 0;
  REQUIRE(calib::SearchSteps(w.in, ImatrixFormat::kNvfp4, imp, o, 0, last, best_a.data(),
                             masks_a.data(), &any_a, /*exact_best=*/false, absmax.data(),
                             nullptr, /*fresh=*/true));
  CHECK(any_a == any_s);
  size_t diff_a = 0;
  for (size_t g = 0; g < groups; ++g) {
    float x[16];
    GroupValues(w, g, x);
    float want = 0.f;
    for (float v : x) want = std::max(want, std::fabs(v));
    if ((masks_a[g] != masks_s[g] || std::memcmp(&want, &absmax[g], sizeof(float)) != 0) &&
        diff_a++ < 3) {
      MESSAGE("with absmax, group " << g << ": mask " << masks_a[g] << ", scalar "
                                    << masks_s[g] << "; max |x| " << absmax[g] << ", want "
                                    << want);
    }
  }
  CHECK(diff_a == 0);
  const int stop = calib::StopStep(any_s, o);
  const Quantized qs = QuantizeSteps(w, o, masks_s, stop);
  const Quantized ql = QuantizeSteps(w, o, masks_l, calib::StopStep(any_l, o));
  CHECK(std::memcmp(&ql.global_scale, &qs.global_scale, sizeof(float)) == 0);
  CHECK(ql.scales == qs.scales);
  CHECK(ql.packed == qs.packed);
  size_t at_last = 0;
  for (uint32_t m : masks_s) at_last += calib::ChosenStep(m, stop) == last;
  return at_last;
}

TEST_CASE("NVFP4 imatrix_mse across groups equals the scalar definition, every target") {
  size_t at_last = 0, runs = 0;
  const auto targets = ForEachTarget([&](const std::string& target) {
    std::mt19937 rng(1804);
    for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
      for (double norm : {3.0, 2.0}) {
        for (bool uniform : {false, true}) {
          // ng 24: tiles that straddle rows (importance gathered on 16 lanes); 32: the
          // transposed importance reused per row; 29 rows of 24 groups end mid-tile.
          for (size_t ng : {size_t{24}, size_t{32}}) {
            const size_t rows = ng == 24 ? 29 : 9;
            Data w = MakeData(rng, d, rows, ng, uniform);
            CAPTURE(target);
            CAPTURE(DTypeLabel(d));
            CAPTURE(norm);
            CAPTURE(uniform);
            CAPTURE(ng);
            calib::ImatrixOptions o;
            o.norm = norm;
            at_last += Compare(w, o);
            // observer_kwargs: expand, and a finer grid of 31 steps. (With expand 1.8 the
            // largest element's code is below 6 at the first bounded steps, p > 2 / 3:
            // the one-term bounds' general form.)
            o.expand = 1.3;
            Compare(w, o);
            o.expand = 1.8;
            Compare(w, o);
            o.expand = 1.0;
            o.grid = 40;
            o.maxshrink = 0.78;
            Compare(w, o);
            ++runs;
          }
        }
      }
    }
  });
  MESSAGE("targets: " << targets.size() << ", groups choosing the last step: " << at_last);
  CHECK(!targets.empty());
  CHECK(runs == 24 * targets.size());
  CHECK(at_last > 0);  // the data reach the grid's end
}

// Many random rows (heavy tails, duplicates, a scale per row over four decades) on the
// target the conversion runs: every group's masks, best and outputs.
TEST_CASE("NVFP4 imatrix_mse across groups: random rows") {
  std::mt19937 rng(77);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  const size_t rows = 64, cols = 16 * 40;
  std::vector<float> v(rows * cols);
  for (size_t r = 0; r < rows; ++r) {
    const float scale = std::pow(10.f, -3.f + 4.f * u(rng));
    for (size_t c = 0; c < cols; ++c) {
      float x = normal(rng) * scale;
      if (u(rng) < 0.02f) x *= 8.f;
      if (c > 0 && u(rng) < 0.05f) x = v[r * cols + c - 1];
      v[r * cols + c] = x;
    }
  }
  Data w;
  w.raw.resize(v.size() * 2);
  for (size_t i = 0; i < v.size(); ++i) PutElem(&w.raw[i * 2], DType::kBF16, v[i]);
  w.imp.resize(cols);
  for (size_t c = 0; c < cols; ++c) {
    w.imp[c] = u(rng) < 0.05f ? 0.f : std::pow(10.f, -2.f + 4.f * u(rng));
  }
  w.in.data = w.raw.data();
  w.in.dtype = DType::kBF16;
  w.in.rows = rows;
  w.in.cols = cols;
  Compare(w, calib::ImatrixOptions());
}

// bf16 rows whose groups end mid-tile (the last tile's lanes gathered from fewer groups
// than lanes; the kernel reads them raw on AVX2): 7 rows of 3 groups, one row of 1 and of
// 5, each group kind among the rows, on every target.
TEST_CASE("NVFP4 imatrix_mse across groups: partial tiles of bf16 rows, every target") {
  const auto targets = ForEachTarget([&](const std::string& target) {
    std::mt19937 rng(2718);
    for (const auto& [rows, ng] : {std::pair<size_t, size_t>{7, 3}, {1, 1}, {1, 5}, {13, 7}}) {
      for (bool uniform : {false, true}) {
        CAPTURE(target);
        CAPTURE(rows);
        CAPTURE(ng);
        CAPTURE(uniform);
        Data w = MakeData(rng, DType::kBF16, rows, ng, uniform);
        calib::ImatrixOptions o;
        Compare(w, o);
        o.expand = 1.8;
        o.norm = 2.0;
        Compare(w, o);
      }
    }
  });
  CHECK(!targets.empty());
}

// An Inf or NaN anywhere in bf16 rows is refused (SearchSteps false), as the definition
// refuses it: the kernel that reads the rows raw checks them itself (no ToF32 before it).
// Each special value at the first element, inside a full tile, in the last group (a
// partial tile) and at the last element; with and without the largest magnitudes asked.
TEST_CASE("NVFP4 imatrix_mse refuses Inf and NaN in bf16 rows, every target") {
  const auto targets = ForEachTarget([&](const std::string& target) {
    std::mt19937 rng(99);
    const size_t rows = 7, ng = 3, groups = rows * ng;  // 21 groups: 2 full tiles and 5
    const Data clean = MakeData(rng, DType::kBF16, rows, ng, false);
    for (uint16_t special : {uint16_t{0x7F80}, uint16_t{0xFF80}, uint16_t{0x7FC0},
                             uint16_t{0xFFC1}, uint16_t{0x7F81}}) {
      for (size_t at : {size_t{0}, size_t{16 * 9 + 5}, size_t{16 * 20 + 3},
                        size_t{16 * groups - 1}}) {
        CAPTURE(target);
        CAPTURE(special);
        CAPTURE(at);
        Data w = clean;
        w.in.data = w.raw.data();
        std::memcpy(&w.raw[2 * at], &special, 2);
        calib::ImatrixOptions o;
        std::vector<double> best(groups, FLT_MAX);
        std::vector<uint32_t> masks(groups, 0u);
        std::vector<float> absmax(groups);
        uint32_t any = 0;
        CHECK_FALSE(calib::SearchStepsScalar(w.in, ImatrixFormat::kNvfp4, w.imp, o, 0,
                                             calib::LastStep(o), best.data(), masks.data(),
                                             &any));
        CHECK_FALSE(calib::SearchSteps(w.in, ImatrixFormat::kNvfp4, w.imp, o, 0,
                                       calib::LastStep(o), best.data(), masks.data(), &any));
        CHECK_FALSE(calib::SearchSteps(w.in, ImatrixFormat::kNvfp4, w.imp, o, 0,
                                       calib::LastStep(o), best.data(), masks.data(), &any,
                                       /*exact_best=*/false, absmax.data()));
      }
    }
  });
  CHECK(!targets.empty());
}

// The kernel's bf16 search scale RNE_bf16(pos * f32(1 / 6)) (imatrix_mse_fp4_groups.cc)
// equals the definition's RNE_bf16(pos / 6) for every finite bf16 pos >= 0 whose scale the
// kernel keeps (at least 2^-100; smaller ones go to the scalar definition). IEEE f32
// operations one at a time, as the lanes do them.
TEST_CASE("NVFP4 bf16 search scale by the reciprocal of 6 equals the division") {
  using intq::internal::RoundToDType;
  volatile float six = 6.0f, one = 1.0f;
  const float sixth = one / six;
  size_t checked = 0, mismatched = 0;
  for (uint32_t bits = 0; bits < 0x7F80u; ++bits) {  // +0 .. the largest finite bf16
    volatile float pos = BF16ToF32(static_cast<uint16_t>(bits));
    const float by_mul = RoundToDType(pos * sixth, DType::kBF16);
    if (by_mul < 0x1p-100f) continue;
    ++checked;
    mismatched += by_mul != RoundToDType(pos / six, DType::kBF16);
  }
  MESSAGE("bf16 ranges checked: " << checked);
  CHECK(checked > 20000);
  CHECK(mismatched == 0);
}

// Every term the search computes (its four forms: lanes across groups; the live pairs' dq
// looked up in the step's table; the one-term bound's, dq = RNE_D(6 s) where 5.5 s <= ax;
// the first step's for bf16, dq from s and RNE_bf16(1.5 s)) against the definition's f32
// term for x = +ax and x = -ax (GroupErrorScalar of one element, norms 3 and 2), on every
// target: every finite bf16 and f16 magnitude at scales of every mantissa across the
// exponent range (bf16: the reciprocal's range [2^-100, 2^100]), and random f32 magnitudes;
// importance cycling over five values.
void CompareTerms(DType d, const std::vector<float>& ax, const std::vector<float>& scales,
                  size_t* terms, size_t* by_six) {
  const float kImp[5] = {1.0f, 0.3f, 1e-3f, 7.5f, 3e5f};
  std::vector<float> imp(ax.size()), out(ax.size()), want(ax.size() * 2);
  for (size_t i = 0; i < ax.size(); ++i) imp[i] = kImp[i % 5];
  calib::internal::Block b;
  b.format = ImatrixFormat::kNvfp4;
  b.dtype = d;
  for (const int norm : {3, 2}) {
    b.norm = norm;
    for (const float s : scales) {
      for (size_t i = 0; i < ax.size(); ++i) {
        for (const float sign : {1.0f, -1.0f}) {
          const float x = sign * ax[i];
          want[2 * i + (sign < 0)] = static_cast<float>(
              calib::internal::GroupErrorScalar(b, &x, &imp[i], 1, {s, 0.f}));
        }
      }
      ForEachTarget([&](const std::string& target) {
        for (const int form : {0, 1, 2, 3}) {
          calib::internal::Fp4TermsForTest(d, norm, form, ax.data(), imp.data(), ax.size(), s,
                                           out.data());
          size_t bad = 0;
          for (size_t i = 0; i < ax.size(); ++i) {
            for (size_t k = 0; k < 2; ++k) {
              bad += std::memcmp(&out[i], &want[2 * i + k], 4) != 0;
              if (bad == 1 && std::memcmp(&out[i], &want[2 * i + k], 4) != 0) {
                MESSAGE(target << " form " << form << " norm " << norm << " s " << s
                               << " ax " << ax[i] << ": " << out[i] << " want "
                               << want[2 * i + k]);
              }
            }
          }
          *terms += ax.size();
          if (form == 2) {  // the elements form 2 takes by RNE_D(6 s) (bf16, f16 scales)
            for (size_t i = 0; i < ax.size(); ++i) {
              *by_six += d != DType::kF32 && 5.5f * s <= ax[i];
            }
          }
          REQUIRE(bad == 0);
        }
      });
    }
  }
}

TEST_CASE("NVFP4 search terms equal the definition's, every finite bf16 and f16") {
  size_t terms = 0, by_six = 0;
  {
    std::vector<float> ax;
    for (uint32_t bits = 0; bits < 0x7F80u; ++bits) {
      ax.push_back(BF16ToF32(static_cast<uint16_t>(bits)));
    }
    while (ax.size() % 16 != 0) ax.push_back(0.f);
    std::vector<float> scales;
    for (const int e : {-100, -41, -7, -1, 0, 1, 6, 37, 99}) {
      for (int m = 0; m < 128; ++m) scales.push_back(std::ldexp(1.0f + m / 128.0f, e));
    }
    CompareTerms(DType::kBF16, ax, scales, &terms, &by_six);
  }
  {
    std::vector<float> ax;
    for (uint32_t bits = 0; bits < 0x7C00u; ++bits) {
      ax.push_back(F16ToF32(static_cast<uint16_t>(bits)));
    }
    while (ax.size() % 16 != 0) ax.push_back(0.f);
    std::vector<float> scales;
    for (const int e : {-24, -17, -14, -3, 0, 1, 9, 15}) {
      for (int m = 0; m < 1024; m += 16) {
        scales.push_back(F16ToF32(F32ToF16(std::ldexp(1.0f + m / 1024.0f, e))));
      }
    }
    CompareTerms(DType::kF16, ax, scales, &terms, &by_six);
  }
  {
    std::mt19937 rng(7);
    std::vector<float> ax;
    while (ax.size() < 65536) {
      const float v = BitsToF32(static_cast<uint32_t>(rng()) & 0x7FFFFFFFu);
      if (std::isfinite(v)) ax.push_back(v);
    }
    std::vector<float> scales;
    for (const int e : {-120, -30, -1, 0, 3, 40, 110}) {
      for (int m = 0; m < 8; ++m) scales.push_back(std::ldexp(1.0f + m / 8.0f + 0x1p-20f * m, e));
    }
    CompareTerms(DType::kF32, ax, scales, &terms, &by_six);
  }
  MESSAGE("terms compared: " << terms << ", of which form 2 took by RNE_D(6 s): " << by_six);
  CHECK(by_six > terms / 20);
}

}  // namespace
}  // namespace quench::testing
