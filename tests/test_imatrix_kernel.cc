// The imatrix_mse search kernels (src/calib/imatrix_mse_kernel.h, imatrix_mse_rows.h)
// against the scalar definition, on every Highway target this CPU runs: the same best
// errors (bit for bit), improvement masks and improved steps, on random weights and on
// adversarial ones (ties between steps and between groups, constant and all-zero groups,
// signed zeros, near-overflow ranges that the scalar path takes, subnormals, zero and huge
// importance), and per group errors compared against bounds at the definition's value and
// one ulp either side of it (where a best step changes at the last ulp); with expand != 1
// (each group's min and max widened or narrowed before the grid, up to 31 steps) and the f32
// tie rule (errors equal once rounded to f32: the earlier step stays).
#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "calib/imatrix_mse.h"
#include "calib/imatrix_mse_kernel.h"
#include "calib/imatrix_mse_rows.h"
#include "kernel_test_util.h"
#include "quench/dtype.h"
#include "schemes/float_formats.h"
#include "schemes/fp4.h"
#include "schemes/int_shared.h"
#include "schemes/nvfp4_bf16_avx2.h"

namespace quench::testing {
namespace {

using calib::ImatrixFormat;

struct Case {
  DType dtype;
  ImatrixFormat format;
  int bits = 4;
  int group = 128;  // int only (0: one group per row)
  bool symmetric = true;
  double norm = 3.0;
  bool uniform = false;
  double expand = 1.0;  // observer_kwargs: expand, grid, maxshrink
  int grid = 20;
  double maxshrink = 0.95;
};

calib::ImatrixOptions OptionsOf(const Case& c) {
  calib::ImatrixOptions o;
  o.norm = c.norm;
  o.expand = c.expand;
  o.grid = c.grid;
  o.maxshrink = c.maxshrink;
  return o;
}

std::string Label(const Case& c) {
  const char* f = c.format == ImatrixFormat::kInt     ? "int"
                  : c.format == ImatrixFormat::kNvfp4 ? "nvfp4"
                                                      : "mxfp4";
  return std::string(DTypeLabel(c.dtype)) + " " + f + " b" + std::to_string(c.bits) + " g" +
         std::to_string(c.group) + (c.symmetric ? " sym" : " asym") + " norm " +
         std::to_string(c.norm) + (c.uniform ? " uniform" : "") + " expand " +
         std::to_string(c.expand) + " grid " + std::to_string(c.grid) + " maxshrink " +
         std::to_string(c.maxshrink);
}

// Weights of the case's dtype: rows x cols raw bytes from f32 values (rounded to D).
struct Weights {
  std::vector<uint8_t> raw;
  std::vector<float> imp;
  WeightChunk in;
};

Weights Make(const Case& c, size_t rows, size_t cols, const std::vector<float>& values,
             const std::vector<float>& imp) {
  Weights w;
  w.raw.resize(rows * cols * ElemBytes(c.dtype));
  for (size_t i = 0; i < rows * cols; ++i)
    PutElem(&w.raw[i * ElemBytes(c.dtype)], c.dtype, values[i]);
  w.imp = c.uniform ? std::vector<float>() : imp;
  w.in.data = w.raw.data();
  w.in.dtype = c.dtype;
  w.in.rows = rows;
  w.in.cols = cols;
  w.in.params.bits = c.bits;
  w.in.params.group_size = c.group;
  w.in.params.symmetric = c.symmetric;
  return w;
}

// Runs every step (0..last) with the kernel and the definition and compares all results.
void CompareSearch(const Case& c, const Weights& w) {
  const calib::ImatrixOptions o = OptionsOf(c);
  const size_t gc = calib::GroupColumns(w.in, c.format);
  REQUIRE(gc > 0);
  const size_t groups = w.in.rows * (w.in.cols / gc);
  std::vector<double> best_k(groups, FLT_MAX), best_s(groups, FLT_MAX);
  std::vector<uint32_t> masks_k(groups, 0u), masks_s(groups, 0u);
  uint32_t imp_k = 0, imp_s = 0;
  const int last = calib::LastStep(o);
  REQUIRE(calib::SearchStepsScalar(w.in, c.format, w.imp, o, 0, last, best_s.data(),
                                   masks_s.data(), &imp_s));
  // In two ranges of steps, as a caller may run them.
  REQUIRE(calib::SearchSteps(w.in, c.format, w.imp, o, 0, 6, best_k.data(), masks_k.data(),
                             &imp_k));
  REQUIRE(calib::SearchSteps(w.in, c.format, w.imp, o, 7, last, best_k.data(), masks_k.data(),
                             &imp_k));
  CHECK(imp_k == imp_s);
  // As the conversion runs it (exact_best false): the same masks and improved steps; best is
  // then only a lower bound of the definition's.
  std::vector<double> best_l(groups, FLT_MAX);
  std::vector<uint32_t> masks_l(groups, 0u);
  uint32_t imp_l = 0;
  REQUIRE(calib::SearchSteps(w.in, c.format, w.imp, o, 0, last, best_l.data(), masks_l.data(),
                             &imp_l, /*exact_best=*/false));
  CHECK(imp_l == imp_s);
  size_t diff_l = 0;
  for (size_t g = 0; g < groups; ++g) {
    if ((masks_l[g] != masks_s[g] || !(best_l[g] <= best_s[g])) && diff_l++ < 3) {
      MESSAGE("exact_best false, group " << g << ": mask " << masks_l[g] << " best "
                                         << best_l[g] << ", scalar " << masks_s[g] << " "
                                         << best_s[g]);
    }
  }
  CHECK(diff_l == 0);
  size_t diff = 0;
  for (size_t g = 0; g < groups; ++g) {
    if (std::memcmp(&best_k[g], &best_s[g], sizeof(double)) != 0 || masks_k[g] != masks_s[g]) {
      if (diff++ < 3) {
        MESSAGE("group " << g << ": kernel " << best_k[g] << " mask " << masks_k[g]
                         << ", scalar " << best_s[g] << " mask " << masks_s[g]);
      }
    }
  }
  CHECK(diff == 0);
}

// Per group errors: the kernel's against the definition's with bounds at the value and one
// ulp (of f64) either side, +Inf and 0.
void CompareErrors(const Case& c, const Weights& w, int step) {
  const calib::ImatrixOptions o = OptionsOf(c);
  const size_t gc = calib::GroupColumns(w.in, c.format);
  const size_t groups = w.in.rows * (w.in.cols / gc);
  std::vector<float> x(w.in.rows * w.in.cols);
  for (size_t i = 0; i < x.size(); ++i) x[i] = ElementToF32(w.in.data, c.dtype, i);
  calib::internal::Block b;
  b.format = c.format;
  b.dtype = c.dtype;
  REQUIRE(intq::internal::MakeLayout(w.in, &b.layout));
  b.symmetric = c.format != ImatrixFormat::kInt || c.symmetric;
  b.norm = c.norm;
  b.grid = o.grid;
  b.expand = o.expand;
  b.x = x.data();
  b.rows = w.in.rows;
  b.cols = w.in.cols;
  b.group = gc;
  b.imp = w.imp.empty() ? nullptr : w.imp.data();
  std::vector<calib::internal::StepParams> params(groups);
  std::vector<double> want(groups);
  const size_t ng = w.in.cols / gc;
  for (size_t g = 0; g < groups; ++g) {
    const float* xg = x.data() + g * gc;
    float mn, mx;
    calib::internal::StepRange(*std::min_element(xg, xg + gc), *std::max_element(xg, xg + gc),
                               step, o.grid, o.expand, c.dtype, &mn, &mx);
    params[g] = calib::internal::ParamsOf(b, mn, mx);
    want[g] = calib::internal::GroupErrorScalar(
        b, xg, b.imp == nullptr ? nullptr : b.imp + (g % ng) * gc, gc, params[g]);
  }
  for (int which = 0; which < 5; ++which) {
    std::vector<double> bound(groups), got(groups);
    for (size_t g = 0; g < groups; ++g) {
      bound[g] = which == 0   ? HUGE_VAL
                 : which == 1 ? want[g]
                 : which == 2 ? std::nextafter(want[g], HUGE_VAL)
                 : which == 3 ? std::nextafter(want[g], -HUGE_VAL)
                              : 0.0;
    }
    calib::internal::GroupErrorsKernel(b, params.data(), bound.data(), got.data());
    size_t diff = 0;
    for (size_t g = 0; g < groups; ++g) {
      const bool below = want[g] < bound[g];
      const bool ok = below ? std::memcmp(&got[g], &want[g], sizeof(double)) == 0
                            : !(got[g] < bound[g]);
      if (!ok && diff++ < 3) {
        MESSAGE("bound kind " << which << " group " << g << ": want " << want[g] << " got "
                              << got[g] << " bound " << bound[g]);
      }
    }
    CHECK(diff == 0);
  }
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
    cases.push_back({d, ImatrixFormat::kInt, 4, 128, true});
    cases.push_back({d, ImatrixFormat::kInt, 4, 32, false});
    cases.push_back({d, ImatrixFormat::kInt, 8, 0, true});     // channel
    cases.push_back({d, ImatrixFormat::kInt, 2, 8, false});    // groups narrower than a vector
    cases.push_back({d, ImatrixFormat::kInt, 4, 16, true, 2.0});
    cases.push_back({d, ImatrixFormat::kInt, 4, 16, true, 3.0, true});
    cases.push_back({d, ImatrixFormat::kInt, 3, 32, false, 2.5});  // powf: the definition
    cases.push_back({d, ImatrixFormat::kNvfp4});
    cases.push_back({d, ImatrixFormat::kNvfp4, 4, 128, true, 2.0, true});
    cases.push_back({d, ImatrixFormat::kMxfp4});
    // observer_kwargs: widened and narrowed ranges, the recommended NVFP4 setting (31 steps).
    cases.push_back({d, ImatrixFormat::kInt, 4, 32, false, 3.0, false, 1.25});
    cases.push_back({d, ImatrixFormat::kInt, 8, 0, true, 2.0, false, 1.5, 30, 0.9});
    cases.push_back({d, ImatrixFormat::kInt, 4, 16, true, 3.0, false, 0.85});
    cases.push_back({d, ImatrixFormat::kNvfp4, 4, 128, true, 2.4, false, 1.8, 54, 0.5556});
    cases.push_back({d, ImatrixFormat::kNvfp4, 4, 128, true, 3.0, true, 1.25});
    cases.push_back({d, ImatrixFormat::kMxfp4, 4, 128, true, 3.0, false, 1.5, 31, 1.0});
  }
  return cases;
}

// Random weights: per row a scale over four decades, heavy-tailed values (a few outliers per
// group), some exact duplicates; importance log-uniform over four decades with zeros.
void RandomValues(std::mt19937& rng, size_t rows, size_t cols, std::vector<float>* v,
                  std::vector<float>* imp) {
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  v->resize(rows * cols);
  for (size_t r = 0; r < rows; ++r) {
    const float scale = std::pow(10.f, -3.f + 4.f * u(rng));
    for (size_t c = 0; c < cols; ++c) {
      float x = normal(rng) * scale;
      if (u(rng) < 0.02f) x *= 8.f;
      if (c > 0 && u(rng) < 0.05f) x = (*v)[r * cols + c - 1];
      (*v)[r * cols + c] = x;
    }
  }
  imp->resize(cols);
  for (size_t c = 0; c < cols; ++c) {
    (*imp)[c] = u(rng) < 0.05f ? 0.f : std::pow(10.f, -2.f + 4.f * u(rng));
  }
}

// Adversarial rows (cols = 128): constant groups, all zeros, signed zeros at the extremes,
// one nonzero, identical groups side by side, values at the dtype's limits (whose int
// ranges overflow D: the scalar path), subnormals, halves and E2M1 midpoints of a scale.
void AdversarialValues(DType d, size_t cols, std::vector<float>* v, std::vector<float>* imp) {
  const float big = DTypeMax(d);
  const float tiny = d == DType::kF16 ? 6e-8f : d == DType::kBF16 ? 1e-38f : 1e-40f;
  std::vector<std::vector<float>> rows;
  rows.push_back(std::vector<float>(cols, 0.f));
  rows.push_back(std::vector<float>(cols, 0.75f));
  rows.push_back(std::vector<float>(cols, -3.f));
  std::vector<float> r(cols, 0.f);
  for (size_t c = 0; c < cols; c += 2) r[c] = -0.f;
  rows.push_back(r);
  r.assign(cols, 0.f);
  r[5] = 1.f;
  r[cols - 1] = -0.f;
  rows.push_back(r);
  for (size_t c = 0; c < cols; ++c) r[c] = (c % 16) * 0.25f - 2.f;  // identical groups
  rows.push_back(r);
  for (size_t c = 0; c < cols; ++c) r[c] = (c % 2 ? big : -big) * (c % 3 ? 1.f : 0.5f);
  rows.push_back(r);
  for (size_t c = 0; c < cols; ++c) r[c] = tiny * static_cast<float>(c % 7) * (c % 2 ? 1 : -1);
  rows.push_back(r);
  for (size_t c = 0; c < cols; ++c) r[c] = 0.5f + 0.25f * static_cast<float>(c % 24);
  rows.push_back(r);
  for (size_t c = 0; c < cols; ++c) r[c] = (c % 8 == 0 ? 6.f : 0.f) + 0.25f * (c % 5);
  rows.push_back(r);
  v->clear();
  for (const auto& row : rows) v->insert(v->end(), row.begin(), row.end());
  imp->assign(cols, 1.f);
  for (size_t c = 0; c < cols; ++c) {
    (*imp)[c] = c % 11 == 0 ? 0.f : c % 13 == 0 ? 1e30f : c % 17 == 0 ? -0.f : 1.f + c % 3;
  }
}

TEST_CASE("imatrix_mse kernel equals the scalar definition on random weights, every target") {
  const auto targets = ForEachTarget([&](const std::string& target) {
    std::mt19937 rng(18);
    for (const Case& c : Cases()) {
      for (size_t cols : {size_t{128}, size_t{384}}) {
        const size_t rows = cols == 128 ? 37 : 5;  // tiles that end mid-row and padded lanes
        std::vector<float> v, imp;
        RandomValues(rng, rows, cols, &v, &imp);
        const Weights w = Make(c, rows, cols, v, imp);
        CAPTURE(target);
        CAPTURE(Label(c));
        CAPTURE(cols);
        CompareSearch(c, w);
        CompareErrors(c, w, 0);
        CompareErrors(c, w, std::min(9, calib::LastStep(OptionsOf(c))));
      }
    }
  });
  MESSAGE("targets: " << targets.size());
  CHECK(!targets.empty());
}

// The MXFP4 search's lane-wise E8M0 scales (imatrix_mse-inl.h MxScaleVec) equal the scalar
// definition's, fp4::Mxfp4GroupScale of Pos(RNE_D(p m0), RNE_D(p M0)), for every finite bf16
// pattern as the min or the max (the other 0, or the negated neighbour: both signs' largest
// magnitude), and for f32 at every exponent with the mantissas at round_to_power_2's edges
// (0.75 rounds up), subnormals, the largest finite (2^128: +Inf) and unrounded f32 products.
TEST_CASE("imatrix_mse MXFP4 search scales lane-wise equal the scalar definition") {
  std::vector<float> lo, hi;
  auto add = [&](float a, float b) {
    lo.push_back(a);
    hi.push_back(b);
  };
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float v = BF16ToF32(static_cast<uint16_t>(b));
    if (!std::isfinite(v)) continue;
    add(std::min(v, 0.f), std::max(v, 0.f));
    add(-std::fabs(v) * 0.999f, std::fabs(v));
  }
  std::mt19937 rng(36);
  for (uint32_t e = 0; e < 255; ++e) {
    for (uint32_t m : {0u, 1u, 0x10000u, 0x3FFFFFu, 0x400000u, 0x5F7FFFu, 0x5F8000u, 0x5FFFFFu,
                       0x600000u, 0x7FFFFFu, static_cast<uint32_t>(rng()) & 0x7FFFFFu}) {
      const float v = std::bit_cast<float>(e << 23 | m);
      add(-v, v * 0.5f);
      add(-v * 0.25f, v);
    }
  }
  while (lo.size() % 16 != 0) add(0.f, 0.f);
  std::vector<float> s(lo.size());
  const auto targets = ForEachTarget([&](const std::string& target) {
    for (DType d : {DType::kBF16, DType::kF32}) {
      calib::internal::MxScalesForTest(d, lo.data(), hi.data(), lo.size(), s.data());
      size_t bad = 0;
      for (size_t i = 0; i < lo.size(); ++i) {
        const float want = fp4::Mxfp4GroupScale(
            calib::internal::Pos(intq::internal::RoundToDType(lo[i], d),
                                 intq::internal::RoundToDType(hi[i], d)),
            d);
        if (std::bit_cast<uint32_t>(s[i]) != std::bit_cast<uint32_t>(want) && bad++ < 5) {
          MESSAGE(target << " " << DTypeName(d) << " min " << lo[i] << " max " << hi[i]
                         << ": " << s[i] << " want " << want);
        }
      }
      CHECK(bad == 0);
    }
  });
  CHECK(!targets.empty());
}

// The MXFP4 search's term of bf16 weights at power-of-two scales (imatrix_mse_certified.cc
// TermMxPow2: no rounding of x / s or of dq, no signs) equals the definition's term
// (GroupErrorScalar of one element) for every finite bf16 x, at scales 2^j across the range
// the search takes it ([2^-100, 2^100]: quotients in f32's subnormals and beyond f32's range
// included), norms 3 and 2, importance cycling over five values.
TEST_CASE("imatrix_mse MXFP4 term at power-of-two scales equals the definition's, every bf16 x") {
  std::vector<float> x;
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float v = BF16ToF32(static_cast<uint16_t>(b));
    if (std::isfinite(v)) x.push_back(v);
  }
  while (x.size() % 16 != 0) x.push_back(0.f);
  const float kImp[5] = {1.0f, 0.3f, 1e-3f, 7.5f, 3e5f};
  std::vector<float> imp(x.size()), out(x.size()), want(x.size());
  for (size_t i = 0; i < x.size(); ++i) imp[i] = kImp[i % 5];
  std::vector<int> exps;
  for (int j = -100; j <= 100; ++j) {
    if (j <= -90 || j >= 90 || (j >= -8 && j <= 8) || j % 9 == 0) exps.push_back(j);
  }
  calib::internal::Block b;
  b.format = ImatrixFormat::kMxfp4;
  b.dtype = DType::kBF16;
  size_t terms = 0;
  const auto targets = ForEachTarget([&](const std::string& target) {
    for (const int norm : {3, 2}) {
      b.norm = norm;
      for (const int j : exps) {
        const float s = std::ldexp(1.0f, j);
        for (size_t i = 0; i < x.size(); ++i) {
          want[i] = static_cast<float>(
              calib::internal::GroupErrorScalar(b, &x[i], &imp[i], 1, {s, 0.f}));
        }
        calib::internal::MxTermsForTest(norm, x.data(), imp.data(), x.size(), s, out.data());
        size_t bad = 0;
        for (size_t i = 0; i < x.size(); ++i) {
          if (std::memcmp(&out[i], &want[i], 4) != 0 && bad++ < 5) {
            MESSAGE(target << " norm " << norm << " s 2^" << j << " x " << x[i] << ": "
                           << out[i] << " want " << want[i]);
          }
        }
        terms += x.size();
        REQUIRE(bad == 0);
      }
    }
  });
  MESSAGE("terms checked: " << terms);
  CHECK(!targets.empty());
}

// The bf16 kernels' quotient from the scale's reciprocal (imatrix_mse-inl.h QuotientBf16):
// x * f32(1 / s) rounded to bf16, to nearest even and (what the kernels do) with its
// magnitude rounded half up, equals the definition's RNE_bf16(x / s) for every bf16 x and
// every bf16 scale mantissa, at the ends of the range the kernels take (2^-100 .. 2^100) and
// in between, wherever |x / s| is in [2^-120, 2^20]; outside it the int codes (round half to
// even of the value clamped to [-8, 7] and to [-128, 127]) and the E2M1 value agree. The same
// IEEE f32 operations as the vector lanes (no contraction in this test: products rounded one
// at a time).
TEST_CASE("imatrix_mse bf16 quotient from the scale's reciprocal equals the division") {
  using intq::internal::RoundToDType;
  auto code = [](float v) { return std::nearbyint(std::min(std::max(v, -8.0f), 7.0f)); };
  auto code8 = [](float v) { return std::nearbyint(std::min(std::max(v, -128.0f), 127.0f)); };
  auto half_up = [](float v) {
    return std::bit_cast<float>((std::bit_cast<uint32_t>(v) + 0x8000u) & 0xFFFF0000u);
  };
  size_t checked = 0, mismatched = 0;
  for (int e : {-100, -60, -7, -3, 0, 5, 40, 99}) {
    for (uint32_t b = 128; b < 256; ++b) {
      const float s = std::ldexp(static_cast<float>(b) / 128.0f, e);  // a bf16 value
      volatile float one = 1.0f;
      const float r = one / s;
      for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
        const float x = BF16ToF32(static_cast<uint16_t>(bits));
        if (!std::isfinite(x)) continue;
        volatile float xv = x;
        const float quot = xv / s;
        const float prod = xv * r;
        const float vq = RoundToDType(quot, DType::kBF16);
        const float a = std::fabs(quot);
        for (const float vp : {RoundToDType(prod, DType::kBF16), half_up(prod)}) {
          ++checked;
          if (a >= 0x1p-120f && a <= 0x1p20f) {
            if (std::bit_cast<uint32_t>(vq) != std::bit_cast<uint32_t>(vp)) ++mismatched;
          } else if (code(vq) != code(vp) || code8(vq) != code8(vp) ||
                     fp4::RoundToE2M1(std::min(std::max(vq, -6.0f), 6.0f)) !=
                         fp4::RoundToE2M1(std::min(std::max(vp, -6.0f), 6.0f))) {
            ++mismatched;
          }
        }
      }
    }
  }
  MESSAGE("pairs checked: " << checked);
  CHECK(mismatched == 0);
}

TEST_CASE("imatrix_mse kernel equals the scalar definition on adversarial weights") {
  ForEachTarget([&](const std::string& target) {
    for (const Case& c : Cases()) {
      std::vector<float> v, imp;
      AdversarialValues(c.dtype, 128, &v, &imp);
      const Weights w = Make(c, v.size() / 128, 128, v, imp);
      CAPTURE(target);
      CAPTURE(Label(c));
      CompareSearch(c, w);
      for (int step : {0, 1, 10, 19}) {
        CompareErrors(c, w, std::min(step, calib::LastStep(OptionsOf(c))));
      }
    }
  });
}

// Groups whose errors at different steps differ in f64 but round to the same f32: one
// element that every step rounds to 0 with a large importance (a constant term C of about
// 1), the group's maximum with importance 0 (it sets the range only), and one element with a
// tiny importance whose error changes with the step (about 1e-10 against C's f32 ulp of
// 1.2e-7). The reference sums and compares in f32, so the earliest step stays; an f64
// comparison would move to later ones. The expected masks are computed here from the
// definition's per-step errors (GroupErrorScalar) with the rule f32(err) < best.
TEST_CASE("imatrix_mse f32 tie rule: kernel and definition keep the earlier step") {
  ForEachTarget([&](const std::string& target) {
    for (DType d : {DType::kBF16, DType::kF32}) {
      for (const Case& c : {Case{d, ImatrixFormat::kInt, 4, 16, true},
                            Case{d, ImatrixFormat::kNvfp4, 4, 128, true, 3.0, false, 1.8, 54,
                                 0.5556}}) {
        CAPTURE(target);
        CAPTURE(Label(c));
        const size_t rows = 40, cols = 32, gc = 16;
        std::vector<float> v(rows * cols, 0.f), imp(cols, 1.f);
        for (size_t r = 0; r < rows; ++r) {
          for (size_t k = 0; k < cols / gc; ++k) {
            float* g = v.data() + r * cols + k * gc;
            g[0] = 1.f;
            g[1] = 0.01f;
            g[2] = 0.3f + 0.011f * static_cast<float>(r) + 0.17f * static_cast<float>(k);
          }
        }
        for (size_t k = 0; k < cols / gc; ++k) {
          imp[k * gc] = 0.f;
          imp[k * gc + 1] = 1e6f;
          imp[k * gc + 2] = 1e-6f;
        }
        const Weights w = Make(c, rows, cols, v, imp);
        const calib::ImatrixOptions o = OptionsOf(c);
        REQUIRE(calib::GroupColumns(w.in, c.format) == gc);
        const size_t groups = rows * cols / gc;
        const int last = calib::LastStep(o);
        // Expected masks: the f32 rule, and (to show the data has ties) the f64 one.
        calib::internal::Block b;
        b.format = c.format;
        b.dtype = d;
        if (c.format == ImatrixFormat::kInt) REQUIRE(intq::internal::MakeLayout(w.in, &b.layout));
        b.symmetric = true;
        b.norm = c.norm;
        std::vector<float> x(rows * cols);
        for (size_t i = 0; i < x.size(); ++i) x[i] = ElementToF32(w.in.data, d, i);
        std::vector<uint32_t> want(groups, 0u);
        size_t f64_differs = 0;
        for (size_t g = 0; g < groups; ++g) {
          const float* xg = x.data() + g * gc;
          const float* ig = imp.data() + (g % (cols / gc)) * gc;
          double best32 = FLT_MAX, best64 = FLT_MAX;
          uint32_t mask64 = 0;
          for (int i = 0; i <= last; ++i) {
            float mn, mx;
            calib::internal::StepRange(*std::min_element(xg, xg + gc),
                                       *std::max_element(xg, xg + gc), i, o.grid, o.expand, d,
                                       &mn, &mx);
            const double e = calib::internal::GroupErrorScalar(
                b, xg, ig, gc, calib::internal::ParamsOf(b, mn, mx));
            if (static_cast<float>(e) < best32) {
              best32 = static_cast<float>(e);
              want[g] |= 1u << i;
            }
            if (e < best64) {
              best64 = e;
              mask64 |= 1u << i;
            }
          }
          f64_differs += mask64 != want[g];
        }
        CHECK(f64_differs > 0);
        for (bool scalar : {true, false}) {
          std::vector<double> best(groups, FLT_MAX);
          std::vector<uint32_t> masks(groups, 0u);
          uint32_t improved = 0;
          REQUIRE(scalar ? calib::SearchStepsScalar(w.in, c.format, w.imp, o, 0, last,
                                                    best.data(), masks.data(), &improved)
                         : calib::SearchSteps(w.in, c.format, w.imp, o, 0, last, best.data(),
                                              masks.data(), &improved));
          size_t diff = 0;
          for (size_t g = 0; g < groups; ++g) {
            if (masks[g] != want[g] && diff++ < 3) {
              MESSAGE("scalar " << scalar << " group " << g << ": mask " << masks[g]
                                << " want " << want[g]);
            }
            // best is the rounded error: an f32 value.
            CHECK(best[g] == static_cast<double>(static_cast<float>(best[g])));
          }
          CHECK(diff == 0);
        }
      }
    }
  });
}

TEST_CASE("imatrix_mse row helpers equal their scalar forms") {
  ForEachTarget([&](const std::string& target) {
    std::mt19937 rng(7);
    for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
      CAPTURE(target);
      CAPTURE(DTypeLabel(d));
      const size_t n = 1000;  // not a multiple of any vector
      std::vector<float> v, imp;
      RandomValues(rng, 1, n, &v, &imp);
      std::vector<uint8_t> raw(n * ElemBytes(d));
      for (size_t i = 0; i < n; ++i) PutElem(&raw[i * ElemBytes(d)], d, v[i]);
      std::vector<float> x(n);
      REQUIRE(calib::internal::ToF32(raw.data(), d, n, x.data()));
      for (size_t i = 0; i < n; ++i)
        REQUIRE(F32ToBits(x[i]) == F32ToBits(ElementToF32(raw.data(), d, i)));
      // Inf and NaN anywhere (also in the scalar tail) are refused.
      for (size_t at : {size_t{3}, n - 1}) {
        std::vector<uint8_t> bad = raw;
        PutElem(&bad[at * ElemBytes(d)], d, INFINITY);
        CHECK_FALSE(calib::internal::ToF32(bad.data(), d, n, x.data()));
        PutElem(&bad[at * ElemBytes(d)], d, NAN);
        CHECK_FALSE(calib::internal::ToF32(bad.data(), d, n, x.data()));
      }
      REQUIRE(calib::internal::ToF32(raw.data(), d, 992, x.data()));
      for (size_t group : {size_t{8}, size_t{16}, size_t{32}, size_t{992}}) {
        const size_t ng = 992 / group;
        std::vector<float> mn(ng), mx(ng);
        calib::internal::GroupMinMax(x.data(), ng, group, mn.data(), mx.data());
        for (size_t g = 0; g < ng; ++g) {
          CHECK(mn[g] == *std::min_element(x.begin() + g * group, x.begin() + (g + 1) * group));
          CHECK(mx[g] == *std::max_element(x.begin() + g * group, x.begin() + (g + 1) * group));
        }
        for (bool sym : {true, false}) {
          for (int bits : {2, 4, 8}) {
            WeightChunk in;
            in.dtype = d;
            in.cols = 992;
            in.params.bits = bits;
            in.params.group_size = static_cast<int>(group);
            intq::internal::Layout l;
            REQUIRE(intq::internal::MakeLayout(in, &l));
            std::vector<intq::internal::GroupParams> p(ng);
            for (size_t g = 0; g < ng; ++g) {
              p[g] = intq::internal::ComputeParams(mn[g] * 0.7f, mx[g] * 0.6f, l, sym, d);
            }
            std::vector<int8_t> codes(992);
            calib::internal::IntCodes(x.data(), 992, group, p.data(), l, sym, d, codes.data());
            for (size_t i = 0; i < 992; ++i) {
              REQUIRE(codes[i] == intq::internal::QuantizeValue(x[i], p[i / group], l, sym, d));
            }
            if (bits == 4) {
              // Packed as pack_to_int32 lays them out: u = q + 8, element i in the nibble
              // 4i..4i+3 of the little-endian byte stream.
              std::vector<uint8_t> packed(496, 0xA5);
              calib::internal::IntCodesPacked4(x.data(), 992, group, p.data(), l, sym, d,
                                               packed.data());
              for (size_t i = 0; i < 992; ++i) {
                REQUIRE(((packed[i / 2] >> (4 * (i % 2))) & 15) == codes[i] + 8);
              }
            }
          }
        }
      }
    }
  });
}

// One chunk (7 rows of `cols`) of D quantized to NVFP4 (nv, global scale gs) or MXFP4 with
// given ranges by the kernels (f32 ranges and RangeBits), against the references' bytes; NaN
// / Inf refused among the RangeBits ranges and (not declared finite) among the rows.
void CheckGivenRanges(std::mt19937& rng, DType d, bool nv, size_t cols, float gs) {
  std::uniform_real_distribution<float> u(0.f, 1.f);
  const size_t rows = 7;
  std::vector<float> v, imp;
  RandomValues(rng, rows, cols, &v, &imp);
  Case c{d, nv ? ImatrixFormat::kNvfp4 : ImatrixFormat::kMxfp4};
  Weights w = Make(c, rows, cols, v, imp);
  w.in.params.global_scale = gs;
  const size_t group = nv ? fp4::kNvfp4Group : fp4::kMxGroup, ng = cols / group;
  // Ranges of D: 0, or the group's max |x| times 0.3 .. 1.5 (clipped or widened).
  std::vector<float> ranges(rows * ng);
  for (size_t g = 0; g < rows * ng; ++g) {
    float m = 0.f;
    for (size_t j = 0; j < group; ++j) {
      m = std::max(m, std::fabs(ElementToF32(w.in.data, d, g * group + j)));
    }
    const float f = u(rng) < 0.1f ? 0.f : 0.3f + 1.2f * u(rng);
    std::vector<uint8_t> e(ElemBytes(d));
    PutElem(e.data(), d, m * f);
    ranges[g] = ElementToF32(e.data(), d, 0);
  }
  std::vector<uint8_t> q_s(rows * cols / 2), s_s(rows * ng);
  ChunkOutputs os;
  os.out[0] = q_s.data();
  os.out[1] = s_s.data();
  REQUIRE((nv ? fp4::QuantizeNvfp4RangesScalar(w.in, ranges.data(), os)
              : fp4::QuantizeMxfp4RangesScalar(w.in, ranges.data(), os)));
  // The ranges in D's own encoding (as the observer keeps them): the same bytes as the
  // references', declared finite or not; a NaN or an Inf among them is refused.
  std::vector<uint8_t> enc(rows * ng * ElemBytes(d));
  for (size_t g = 0; g < rows * ng; ++g) PutElem(enc.data() + g * ElemBytes(d), d, ranges[g]);
  std::vector<uint8_t> q_b(rows * cols / 2), s_b(rows * ng);
  ChunkOutputs ob;
  ob.out[0] = q_b.data();
  ob.out[1] = s_b.data();
  auto quantize = [&](const WeightChunk& in, const std::vector<uint8_t>& r, bool finite) {
    std::fill(q_b.begin(), q_b.end(), 0x5A);
    std::fill(s_b.begin(), s_b.end(), 0x5A);
    return nv ? fp4::QuantizeNvfp4RangeBits(in, r.data(), ob, finite)
              : fp4::QuantizeMxfp4RangeBits(in, r.data(), ob, finite);
  };
  auto quantize_f32 = [&](const WeightChunk& in, const std::vector<float>& r, bool finite) {
    std::fill(q_b.begin(), q_b.end(), 0xA5);
    std::fill(s_b.begin(), s_b.end(), 0xA5);
    return nv ? fp4::QuantizeNvfp4Ranges(in, r.data(), ob, finite)
              : fp4::QuantizeMxfp4Ranges(in, r.data(), ob, finite);
  };
  // The f32 ranges' kernels (QuantizeChosen's), declared finite or not.
  for (bool finite : {false, true}) {
    CAPTURE(finite);
    REQUIRE(quantize_f32(w.in, ranges, finite));
    CHECK(q_b == q_s);
    CHECK(s_b == s_s);
  }
  for (bool finite : {false, true}) {
    CAPTURE(finite);
    REQUIRE(quantize(w.in, enc, finite));
    CHECK(q_b == q_s);
    CHECK(s_b == s_s);
    for (float bad : {std::numeric_limits<float>::quiet_NaN(),
                      std::numeric_limits<float>::infinity()}) {
      for (size_t at : {size_t{0}, rows * ng / 2, rows * ng - 1}) {
        std::vector<uint8_t> eb = enc;
        PutElem(eb.data() + at * ElemBytes(d), d, bad);
        CHECK_FALSE(quantize(w.in, eb, finite));
      }
    }
  }
  // Ranges of +inf (QuantizeChosen's where expand > 1 rounds a range up past D's largest
  // value), which the references take: the f32 ranges' kernels give their bytes too, at this
  // global scale and (NVFP4) at the one a fused set with an infinite range gets, for the
  // chunk that holds one and for its siblings (finite ranges at that global scale).
  std::vector<float> inf_ranges = ranges;
  for (size_t at : {size_t{0}, rows * ng / 2, rows * ng - 1}) {
    inf_ranges[at] = std::numeric_limits<float>::infinity();
  }
  std::vector<float> scales = {gs};
  if (nv) scales.push_back(fp4::Nvfp4GlobalScale(std::numeric_limits<float>::infinity(), d));
  for (const std::vector<float>* rs : {&inf_ranges, &ranges}) {
    for (float g : scales) {
      CAPTURE(g);
      CAPTURE(rs == &inf_ranges);
      const std::vector<float>& given = *rs;
      WeightChunk in = w.in;
      in.params.global_scale = g;
      std::vector<uint8_t> qi(rows * cols / 2), si(rows * ng);
      ChunkOutputs oi;
      oi.out[0] = qi.data();
      oi.out[1] = si.data();
      REQUIRE((nv ? fp4::QuantizeNvfp4RangesScalar(in, given.data(), oi)
                  : fp4::QuantizeMxfp4RangesScalar(in, given.data(), oi)));
      for (bool finite : {false, true}) {
        CAPTURE(finite);
        REQUIRE(quantize_f32(in, given, finite));
        CHECK(q_b == qi);
        CHECK(s_b == si);
      }
    }
  }
  // Not declared finite, a NaN or an Inf anywhere in the rows (the first group, a middle
  // one, the last element) is refused.
  for (float bad : {std::numeric_limits<float>::quiet_NaN(),
                    std::numeric_limits<float>::infinity()}) {
    for (size_t at : {size_t{2}, (rows / 2) * cols + cols / 2, rows * cols - 1}) {
      std::vector<float> vb = v;
      vb[at] = bad;
      Weights wb = Make(c, rows, cols, vb, imp);
      wb.in.params.global_scale = gs;
      CHECK_FALSE(quantize(wb.in, enc, /*finite=*/false));
      CHECK_FALSE(quantize_f32(wb.in, ranges, /*finite=*/false));
    }
  }
}

TEST_CASE("FP4 quantization with given ranges: the kernels equal the references") {
  // Every target; bf16 NVFP4 also with its AVX2 kernel (nvfp4_bf16_avx2.h, on the AVX2 target)
  // off. Widths: one group; a tail of groups past the last block of 16 (NVFP4) or past the
  // vectors; a whole number of blocks; rows of >= 2 KiB of bf16, which ask for the next row.
  // Global scales whose scale codes reach the zero guard, the subnormal codes and 448.
  for (bool avx2_kernel : {true, false}) {
    fp4::internal::SetNvfp4Bf16Avx2Enabled(avx2_kernel);
    ForEachTarget([&](const std::string& target) {
      std::mt19937 rng(11);
      for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
        for (bool nv : {true, false}) {
          if (!avx2_kernel && !(nv && d == DType::kBF16)) continue;  // unchanged by the switch
          const std::vector<size_t> widths =
              nv ? std::vector<size_t>{16, 272, 512, 1040} : std::vector<size_t>{288, 1056};
          const std::vector<float> scales =
              nv ? std::vector<float>{1234.5f, 0.01f, 3e6f} : std::vector<float>{0.f};
          for (size_t cols : widths) {
            for (float gs : scales) {
              CAPTURE(target);
              CAPTURE(avx2_kernel);
              CAPTURE(DTypeLabel(d));
              CAPTURE(nv);
              CAPTURE(cols);
              CAPTURE(gs);
              CheckGivenRanges(rng, d, nv, cols, gs);
            }
          }
        }
      }
    });
  }
  fp4::internal::SetNvfp4Bf16Avx2Enabled(true);
}

}  // namespace
}  // namespace quench::testing
