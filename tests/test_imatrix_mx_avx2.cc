// The AVX2 imatrix_mse search for MXFP4 codes of bf16 weights
// (src/calib/imatrix_mse_mx_avx2.h) against the scalar definition
// (src/calib/imatrix_mse_scalar.cc) and the Highway kernel: every term of every finite bf16 x
// at power-of-two scales across the range the kernel takes, and the search's masks, improved
// steps, best errors (bit for bit) and largest magnitudes on random and adversarial groups,
// from f32 blocks and from raw bf16 rows, norms 2 and 3, groups of 32 and 64, several step
// ranges, expand and grid settings; a block with an Inf or NaN refused. On a CPU without AVX2
// the kernel must decline every block.
#include <doctest/doctest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "calib/imatrix_mse.h"
#include "calib/imatrix_mse_int_avx2.h"
#include "calib/imatrix_mse_kernel.h"
#include "calib/imatrix_mse_mx_avx2.h"
#include "imatrix_int_cases.h"
#include "schemes/float_formats.h"

namespace quench::testing {
namespace {

using calib::ImatrixFormat;
using calib::internal::Block;
using imatrix_int::AdversarialRows;
using imatrix_int::RandomRows;
using imatrix_int::RawBf16;

struct MxSetting {
  double norm = 3.0;
  double expand = 1.0;
  int grid = 20;
  int last = 19;  // steps 0..last
};

std::vector<MxSetting> MxSettings() {
  return {{3.0, 1.0, 20, 19}, {2.0, 1.0, 20, 19}, {3.0, 1.3, 20, 19}, {3.0, 1.8, 20, 19},
          {3.0, 0.85, 20, 19}, {2.0, 1.5, 30, 26}, {3.0, 1.0, 32, 31}, {3.0, 1.0, 10, 9}};
}

Block MakeMxBlock(const MxSetting& s, const std::vector<float>& x, const std::vector<float>* imp,
                  size_t cols, size_t group) {
  Block b;
  b.format = ImatrixFormat::kMxfp4;
  b.dtype = DType::kBF16;
  b.symmetric = true;
  b.norm = s.norm;
  b.grid = s.grid;
  b.expand = s.expand;
  b.x = x.data();
  b.rows = x.size() / cols;
  b.cols = cols;
  b.group = group;
  b.imp = imp == nullptr ? nullptr : imp->data();
  return b;
}

// The kernel (steps in two ranges, as a caller may run them; exact_best true and false; from
// f32 and from bf16 rows) against the definition over steps 0..last, and the Highway kernel
// (this one switched off): the same masks and improved steps, the same best errors bit for
// bit (exact_best), or a lower bound of them (exact_best false); each group's largest
// magnitude max |x|.
void Compare(const MxSetting& s, const std::vector<float>& x, const std::vector<float>* imp,
             size_t cols, size_t group) {
  CAPTURE(s.norm);
  CAPTURE(s.expand);
  CAPTURE(s.grid);
  CAPTURE(group);
  CAPTURE(imp != nullptr);
  Block b = MakeMxBlock(s, x, imp, cols, group);
  const size_t groups = b.rows * (cols / group);
  const std::vector<uint8_t> raw = RawBf16(x);
  std::vector<double> best_s(groups, FLT_MAX);
  std::vector<uint32_t> masks_s(groups, 0u);
  uint32_t imp_s = 0;
  b.i0 = 0;
  b.i1 = s.last;
  b.best = best_s.data();
  b.masks = masks_s.data();
  b.improved = &imp_s;
  REQUIRE(calib::internal::SearchBlockScalar(b));
  std::vector<double> best_h(groups, FLT_MAX);
  std::vector<uint32_t> masks_h(groups, 0u);
  uint32_t imp_h = 0;
  b.best = best_h.data();
  b.masks = masks_h.data();
  b.improved = &imp_h;
  calib::internal::SetMxAvx2Enabled(false);
  REQUIRE(!calib::internal::MxAvx2Handles(b));
  const bool hwy_ok = calib::internal::SearchBlock(b);
  calib::internal::SetMxAvx2Enabled(true);
  REQUIRE(hwy_ok);
  std::vector<float> want_amax(groups, 0.f);
  for (size_t g = 0; g < groups; ++g) {
    for (size_t j = 0; j < group; ++j) {
      want_amax[g] = std::max(want_amax[g], std::fabs(x[g * group + j]));
    }
  }
  for (const bool from_raw : {false, true}) {
    CAPTURE(from_raw);
    b.x = from_raw ? nullptr : x.data();
    b.raw = from_raw ? raw.data() : nullptr;
    std::vector<double> best_k(groups, FLT_MAX), best_l(groups, FLT_MAX);
    std::vector<uint32_t> masks_k(groups, 0u), masks_l(groups, 0u);
    std::vector<float> amax(groups, -1.f);
    uint32_t imp_k = 0, imp_l = 0;
    const int split = std::min(6, s.last);
    for (int part = 0; part < 2; ++part) {
      b.i0 = part == 0 ? 0 : split + 1;
      b.i1 = part == 0 ? split : s.last;
      if (b.i0 > b.i1) continue;
      b.best = best_k.data();
      b.masks = masks_k.data();
      b.improved = &imp_k;
      b.exact_best = true;
      REQUIRE(calib::internal::MxAvx2Handles(b));
      REQUIRE(calib::internal::SearchMxAvx2(b));
    }
    b.i0 = 0;
    b.i1 = s.last;
    b.best = best_l.data();
    b.masks = masks_l.data();
    b.improved = &imp_l;
    b.exact_best = false;
    b.absmax = amax.data();
    REQUIRE(calib::internal::SearchMxAvx2(b));
    b.absmax = nullptr;
    b.exact_best = true;
    CHECK(imp_k == imp_s);
    CHECK(imp_l == imp_s);
    CHECK(imp_h == imp_s);
    size_t diff = 0, diff_l = 0, diff_h = 0, diff_a = 0;
    for (size_t g = 0; g < groups; ++g) {
      if (std::memcmp(&best_k[g], &best_s[g], sizeof(double)) != 0 ||
          masks_k[g] != masks_s[g]) {
        if (diff++ < 3) {
          MESSAGE("group " << g << ": kernel " << best_k[g] << " mask " << masks_k[g]
                           << ", definition " << best_s[g] << " mask " << masks_s[g]);
        }
      }
      if (std::memcmp(&best_h[g], &best_s[g], sizeof(double)) != 0 ||
          masks_h[g] != masks_s[g]) {
        ++diff_h;
      }
      if ((masks_l[g] != masks_s[g] || !(best_l[g] <= best_s[g])) && diff_l++ < 3) {
        MESSAGE("exact_best false, group " << g << ": mask " << masks_l[g] << " best "
                                           << best_l[g] << ", definition " << masks_s[g]);
      }
      if (std::memcmp(&amax[g], &want_amax[g], 4) != 0 && diff_a++ < 3) {
        MESSAGE("group " << g << ": largest magnitude " << amax[g] << " want " << want_amax[g]);
      }
    }
    CHECK(diff == 0);
    CHECK(diff_l == 0);
    CHECK(diff_h == 0);
    CHECK(diff_a == 0);
  }
}

// Every finite bf16 x at power-of-two scales 2^j across [2^-100, 2^100] (quotients in f32's
// subnormals and beyond its range included), norms 3 and 2, importance cycling over five
// values: the kernel's term against the definition's (GroupErrorScalar of one element).
TEST_CASE("imatrix_mse mx avx2 kernel: every term of every bf16 x equals the definition's") {
  std::vector<float> x(32, 1.f);
  if (!calib::internal::IntAvx2Available()) {
    Block b = MakeMxBlock(MxSetting{}, x, nullptr, 32, 32);
    CHECK(!calib::internal::MxAvx2Handles(b));
    return;
  }
  x.clear();
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const float v = BF16ToF32(static_cast<uint16_t>(bits));
    if (std::isfinite(v)) x.push_back(v);
  }
  while (x.size() % 8 != 0) x.push_back(0.f);
  const float kImp[5] = {1.0f, 0.3f, 1e-3f, 7.5f, 3e5f};
  std::vector<float> imp(x.size()), out(x.size());
  for (size_t i = 0; i < x.size(); ++i) imp[i] = kImp[i % 5];
  Block b;
  b.format = ImatrixFormat::kMxfp4;
  b.dtype = DType::kBF16;
  size_t terms = 0, bad = 0;
  for (const int norm : {3, 2}) {
    b.norm = norm;
    for (int j = -100; j <= 100; ++j) {
      if (!(j <= -90 || j >= 90 || (j >= -10 && j <= 10) || j % 7 == 0)) continue;
      const float s = std::ldexp(1.0f, j);
      REQUIRE(calib::internal::MxAvx2Terms(norm, s, x.data(), imp.data(), x.size(), out.data()));
      for (size_t i = 0; i < x.size(); ++i) {
        const float want =
            static_cast<float>(calib::internal::GroupErrorScalar(b, &x[i], &imp[i], 1, {s, 0.f}));
        ++terms;
        if (std::memcmp(&out[i], &want, 4) != 0 && bad++ < 5) {
          MESSAGE("norm " << norm << " s 2^" << j << " x " << x[i] << ": " << out[i] << " want "
                          << want);
        }
      }
    }
  }
  MESSAGE("terms checked: " << terms);
  CHECK(bad == 0);
  CHECK(!calib::internal::MxAvx2Terms(3, 0x1p-101f, x.data(), imp.data(), 8, out.data()));
  CHECK(!calib::internal::MxAvx2Terms(3, 0x1p101f, x.data(), imp.data(), 8, out.data()));
}

TEST_CASE("imatrix_mse mx avx2 kernel equals the definition on random groups") {
  if (!calib::internal::IntAvx2Available()) return;  // the case above checks that it declines
  std::mt19937 rng(37);
  for (const MxSetting& s : MxSettings()) {
    for (size_t group : {size_t{32}, size_t{64}}) {
      // 41 x 12 and 25 x 6 groups: full batches of 8 and a last one of 4 or 6.
      const size_t cols = 384, rows = group == 32 ? 41 : 25;
      std::vector<float> x, imp;
      RandomRows(rng, rows, cols, &x, &imp);
      Compare(s, x, &imp, cols, group);
      Compare(s, x, nullptr, cols, group);  // every weight counts 1
    }
  }
}

TEST_CASE("imatrix_mse mx avx2 kernel equals the definition on adversarial groups") {
  if (!calib::internal::IntAvx2Available()) return;
  std::vector<float> x, imp;
  AdversarialRows(&x, &imp);
  for (const MxSetting& s : MxSettings()) {
    Compare(s, x, &imp, 128, 32);
    Compare(s, x, nullptr, 128, 32);
    Compare(s, x, &imp, 128, 64);
  }
}

// Near ties between step 0 and a later step's one-term bound: in each group t = 3.5 (scale
// 1 at step 0, where it rounds to 4: error 0.5; scale 0.5 from step 1, where it clips to 3:
// error 0.5 again) and u = 0.75 with a small importance w (error 0.25 at scale 1, 0 at 0.5),
// the rest 0. Step 1's error is t's term alone, 0.125, just below step 0's 0.125 + w / 64;
// for w up to about 2^-14 step 0's f32 sum times its bound's lower factor is already below
// 0.125, so only a bound that keeps the whole interval [p lo_f, p hi_f] decides step 1
// right. The importance of u's column varies by group (12 groups: a batch of 8 and 4 more).
TEST_CASE("imatrix_mse mx avx2 kernel: a later step just below step 0's error") {
  if (!calib::internal::IntAvx2Available()) return;
  const size_t cols = 128, rows = 3;
  std::vector<float> x(rows * cols, 0.f), imp(cols, 1.f);
  const float w[4] = {1e-7f, 1e-6f, 4e-6f, 6.4e-5f};
  for (size_t g = 0; g < cols / 32; ++g) imp[32 * g + 1] = w[g];
  for (size_t r = 0; r < rows; ++r) {
    for (size_t g = 0; g < cols / 32; ++g) {
      x[r * cols + 32 * g] = r == 1 ? -3.5f : 3.5f;
      x[r * cols + 32 * g + 1] = r == 2 ? -0.75f : 0.75f;
    }
  }
  for (const MxSetting& s : {MxSetting{3.0, 1.0, 20, 19}, MxSetting{2.0, 1.0, 20, 19}}) {
    Compare(s, x, &imp, cols, 32);
  }
  // The case is what it says: step 1 improves in some group (the definition).
  Block b = MakeMxBlock(MxSetting{}, x, &imp, cols, 32);
  std::vector<double> best(rows * 4, FLT_MAX);
  std::vector<uint32_t> masks(rows * 4, 0u);
  uint32_t improved = 0;
  b.i1 = 19;
  b.best = best.data();
  b.masks = masks.data();
  b.improved = &improved;
  REQUIRE(calib::internal::SearchBlockScalar(b));
  CHECK((improved & 2u) != 0);
}

// An Inf or NaN anywhere in the rows: the search refuses the block (from raw rows and from
// f32), and the kernel declines other formats, dtypes, norms and group sizes.
TEST_CASE("imatrix_mse mx avx2 kernel refuses Inf and NaN and declines other blocks") {
  if (!calib::internal::IntAvx2Available()) return;
  std::mt19937 rng(3);
  std::vector<float> x, imp;
  RandomRows(rng, 8, 128, &x, &imp);
  for (const float bad : {INFINITY, -INFINITY, NAN}) {
    std::vector<float> y = x;
    y[300] = bad;
    const std::vector<uint8_t> raw = RawBf16(y);
    for (const bool from_raw : {false, true}) {
      Block b = MakeMxBlock(MxSetting{}, y, &imp, 128, 32);
      b.x = from_raw ? nullptr : y.data();
      b.raw = from_raw ? raw.data() : nullptr;
      std::vector<double> best(b.rows * 4, FLT_MAX);
      std::vector<uint32_t> masks(b.rows * 4, 0u);
      uint32_t improved = 0;
      b.i1 = 19;
      b.best = best.data();
      b.masks = masks.data();
      b.improved = &improved;
      REQUIRE(calib::internal::MxAvx2Handles(b));
      CHECK(!calib::internal::SearchMxAvx2(b));
    }
  }
  Block b = MakeMxBlock(MxSetting{}, x, &imp, 128, 32);
  b.i1 = 19;
  CHECK(calib::internal::MxAvx2Handles(b));
  Block o = b;
  o.format = ImatrixFormat::kNvfp4;
  CHECK(!calib::internal::MxAvx2Handles(o));
  o = b;
  o.dtype = DType::kF16;
  CHECK(!calib::internal::MxAvx2Handles(o));
  o = b;
  o.norm = 2.5;
  CHECK(!calib::internal::MxAvx2Handles(o));
  o = b;
  o.group = 16;
  CHECK(!calib::internal::MxAvx2Handles(o));
  o = b;
  o.i1 = 32;
  CHECK(!calib::internal::MxAvx2Handles(o));
}

// The whole search as the conversion calls it (SearchSteps: bf16 rows read by the kernel,
// each group's largest magnitude kept) with the kernel and with it switched off (the Highway
// kernel on the rows' f32 copy): the same masks, improved steps and largest magnitudes.
TEST_CASE("imatrix_mse mx avx2 kernel: SearchSteps with and without it agree") {
  if (!calib::internal::IntAvx2Available()) return;
  std::mt19937 rng(9);
  std::vector<float> x, imp;
  const size_t rows = 300, cols = 256;  // more than one of SearchSteps' row blocks
  RandomRows(rng, rows, cols, &x, &imp);
  const std::vector<uint8_t> raw = RawBf16(x);
  WeightChunk in;
  in.data = raw.data();
  in.dtype = DType::kBF16;
  in.rows = rows;
  in.cols = cols;
  in.params.group_size = 32;
  const calib::ImatrixOptions o;
  const size_t groups = rows * cols / 32;
  std::vector<double> best_k(groups, FLT_MAX), best_h(groups, FLT_MAX);
  std::vector<uint32_t> masks_k(groups, 0u), masks_h(groups, 0u);
  std::vector<float> amax_k(groups, -1.f), amax_h(groups, -2.f);
  uint32_t imp_k = 0, imp_h = 0;
  REQUIRE(calib::SearchSteps(in, calib::ImatrixFormat::kMxfp4, imp, o, 0, 19, best_k.data(),
                             masks_k.data(), &imp_k, false, amax_k.data()));
  calib::internal::SetMxAvx2Enabled(false);
  const bool ok = calib::SearchSteps(in, calib::ImatrixFormat::kMxfp4, imp, o, 0, 19,
                                     best_h.data(), masks_h.data(), &imp_h, false, amax_h.data());
  calib::internal::SetMxAvx2Enabled(true);
  REQUIRE(ok);
  CHECK(imp_k == imp_h);
  CHECK(masks_k == masks_h);
  CHECK(std::memcmp(amax_k.data(), amax_h.data(), groups * 4) == 0);
}

}  // namespace
}  // namespace quench::testing
