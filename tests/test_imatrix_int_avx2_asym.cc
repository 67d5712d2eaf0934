// The AVX2 imatrix_mse search for asymmetric int codes of bf16 weights
// (src/calib/imatrix_mse_int_avx2_asym.h) against the scalar definition
// (src/calib/imatrix_mse_scalar.cc, intq::internal::QuantizeValue) and the Highway kernel:
// every term of every finite bf16 x at every zero point under scales across the range the
// kernel takes, and the search's masks, improved steps and best errors (bit for bit) on random
// groups (shifted off zero, so that the zero points cover their range) and adversarial ones,
// from f32 blocks and from raw bf16 rows, for 2-4 bit codes, norms 2 and 3, several group
// sizes, step ranges, expand and grid settings; SearchSteps with and without the kernel, and
// an Inf or NaN refused. On a CPU without AVX2 the kernel must decline every block.
#include <doctest/doctest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "calib/imatrix_mse.h"
#include "calib/imatrix_mse_int_avx2.h"
#include "calib/imatrix_mse_int_avx2_asym.h"
#include "calib/imatrix_mse_kernel.h"
#include "imatrix_int_cases.h"
#include "schemes/float_formats.h"
#include "schemes/int_shared.h"

namespace quench::testing {
namespace {

using calib::internal::Block;
using imatrix_int::AdversarialRows;
using imatrix_int::Bf16;
using imatrix_int::RandomRows;
using imatrix_int::Setting;
using imatrix_int::Settings;

// MakeBlock's block with zero points.
Block AsymBlock(const Setting& s, const std::vector<float>& x, const std::vector<float>* imp,
                size_t cols, size_t group) {
  Block b = imatrix_int::MakeBlock(s, x, imp, cols, group);
  b.symmetric = false;
  return b;
}

// RandomRows with most rows moved off zero (by -3 to +3 times the row's largest magnitude, or
// by an outlier's worth), so that the steps' zero points take every value of their range.
void ShiftedRows(std::mt19937& rng, size_t rows, size_t cols, std::vector<float>* x,
                 std::vector<float>* imp) {
  RandomRows(rng, rows, cols, x, imp);
  const float shifts[] = {0.f, 0.4f, 1.f, 3.f, -0.3f, -1.f, -2.5f};
  for (size_t r = 0; r < rows; ++r) {
    float* row = x->data() + r * cols;
    float amax = 0.f;
    for (size_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(row[c]));
    const float off = shifts[r % 7] * amax;
    for (size_t c = 0; c < cols; ++c) row[c] = Bf16(row[c] + off);
  }
}

// The kernel (steps in two ranges, as a caller may run them; exact_best true and false; from
// f32 and from bf16 rows) against the definition over steps 0..last, and against the Highway
// kernel (this one switched off): the same masks and improved steps, the same best errors bit
// for bit (exact_best), or a lower bound of them (exact_best false).
void Compare(const Setting& s, const std::vector<float>& x, const std::vector<float>* imp,
             size_t cols, size_t group) {
  Block b = AsymBlock(s, x, imp, cols, group);
  const size_t groups = b.rows * (cols / group);
  const std::vector<uint8_t> raw = imatrix_int::RawBf16(x);
  std::vector<double> best_s(groups, FLT_MAX);
  std::vector<uint32_t> masks_s(groups, 0u);
  uint32_t imp_s = 0;
  b.i0 = 0;
  b.i1 = s.last;
  b.best = best_s.data();
  b.masks = masks_s.data();
  b.improved = &imp_s;
  REQUIRE(calib::internal::SearchBlockScalar(b));
  // The Highway kernel on the same block.
  std::vector<double> best_h(groups, FLT_MAX);
  std::vector<uint32_t> masks_h(groups, 0u);
  uint32_t imp_h = 0;
  b.best = best_h.data();
  b.masks = masks_h.data();
  b.improved = &imp_h;
  calib::internal::SetIntAvx2Enabled(false);
  const bool hwy_ok = calib::internal::SearchBlock(b);
  calib::internal::SetIntAvx2Enabled(true);
  REQUIRE(hwy_ok);
  for (const bool from_raw : {false, true}) {
    CAPTURE(from_raw);
    b.x = from_raw ? nullptr : x.data();
    b.raw = from_raw ? raw.data() : nullptr;
    std::vector<double> best_k(groups, FLT_MAX), best_l(groups, FLT_MAX);
    std::vector<uint32_t> masks_k(groups, 0u), masks_l(groups, 0u);
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
      REQUIRE(calib::internal::IntAvx2AsymHandles(b));
      REQUIRE(calib::internal::SearchIntAvx2Asym(b));
    }
    b.i0 = 0;
    b.i1 = s.last;
    b.best = best_l.data();
    b.masks = masks_l.data();
    b.improved = &imp_l;
    b.exact_best = false;
    REQUIRE(calib::internal::SearchIntAvx2Asym(b));
    b.exact_best = true;
    CHECK(imp_k == imp_s);
    CHECK(imp_l == imp_s);
    CHECK(imp_h == imp_s);
    size_t diff = 0, diff_l = 0, diff_h = 0;
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
    }
    CHECK(diff == 0);
    CHECK(diff_l == 0);
    CHECK(diff_h == 0);
  }
}

// Every finite bf16 x (importance varying by element) at every zero point of the layout,
// under scales of many significands at exponents across [2^-100, 2^100] (every significand
// at 2^0 and 2^-7, where the codes' roundings meet most midpoints), against the definition's
// term: QuantizeValue's code, dq = RNE_bf16((q - zp) * s), |dq - x|^norm * imp.
TEST_CASE("imatrix_mse int avx2 asym kernel: every term of every bf16 x equals the definition's") {
  if (!calib::internal::IntAvx2Available()) {
    std::vector<float> x(32, 1.f);
    Block b = AsymBlock(Setting{}, x, nullptr, 32, 32);
    b.i1 = 19;
    CHECK(!calib::internal::IntAvx2AsymHandles(b));
    return;
  }
  std::vector<float> xs, imp;
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const float v = BF16ToF32(static_cast<uint16_t>(bits));
    if (std::isfinite(v)) xs.push_back(v);
  }
  while (xs.size() % 32 != 0) xs.push_back(0.f);
  for (size_t i = 0; i < xs.size(); ++i) imp.push_back(Bf16(0.5f + static_cast<float>(i % 37)));
  size_t checked = 0, mismatched = 0;
  for (const Setting& s : {Setting{4, 3.0}, Setting{4, 2.0}, Setting{3, 3.0}, Setting{2, 3.0}}) {
    Block b = AsymBlock(s, xs, &imp, xs.size(), 32);
    b.i1 = 19;
    REQUIRE(calib::internal::IntAvx2AsymHandles(b));
    std::vector<float> got(xs.size());
    for (int e : {-100, -40, -7, -1, 0, 3, 30, 99}) {
      const uint32_t dm = e == 0 || e == -7 ? (s.bits == 4 ? 1 : 3) : 13;
      for (uint32_t m = 128; m < 256; m += dm) {
        const float scale = std::ldexp(static_cast<float>(m) / 128.0f, e);
        for (int zp = b.layout.qmin; zp <= b.layout.qmax; ++zp) {
          REQUIRE(calib::internal::IntAvx2AsymTerms(b, scale, static_cast<float>(zp), xs.data(),
                                                    imp.data(), xs.size(), got.data()));
          const intq::internal::GroupParams p{scale, zp};
          for (size_t i = 0; i < xs.size(); ++i) {
            // The definition (imatrix_mse_scalar.cc GroupErrorScalar's term).
            const int q = intq::internal::QuantizeValue(xs[i], p, b.layout, false, DType::kBF16);
            const float dq =
                intq::internal::RoundToDType(static_cast<float>(q - zp) * scale, DType::kBF16);
            const float d = std::fabs(dq - xs[i]);
            const float want = (s.norm == 3.0 ? d * d * d : d * d) * imp[i];
            ++checked;
            if (std::memcmp(&want, &got[i], 4) != 0 && mismatched++ < 3) {
              MESSAGE("bits " << s.bits << " scale " << scale << " zp " << zp << " x " << xs[i]
                              << ": want " << want << " got " << got[i]);
            }
          }
        }
      }
    }
  }
  MESSAGE("terms checked: " << checked);
  CHECK(mismatched == 0);
}

TEST_CASE("imatrix_mse int avx2 asym kernel equals the definition on random groups") {
  if (!calib::internal::IntAvx2Available()) return;  // the case above checks that it declines
  std::mt19937 rng(28);
  for (const Setting& s : Settings()) {
    for (size_t group : {size_t{32}, size_t{128}, size_t{256}}) {
      const size_t cols = group == 256 ? 512 : 384, rows = group == 32 ? 42 : 28;
      std::vector<float> x, imp;
      ShiftedRows(rng, rows, cols, &x, &imp);
      CAPTURE(s.bits);
      CAPTURE(s.norm);
      CAPTURE(s.expand);
      CAPTURE(s.grid);
      CAPTURE(group);
      Compare(s, x, &imp, cols, group);
      Compare(s, x, nullptr, cols, group);  // every weight counts 1
    }
    // One group per row (the channel strategy's shape).
    std::vector<float> x, imp;
    ShiftedRows(rng, 14, 1024, &x, &imp);
    Compare(s, x, &imp, 1024, 1024);
  }
}

// AdversarialRows (zeros, constants, midpoints, subnormals, scales outside 2^-100 .. 2^100,
// the bf16 maximum: ranges that overflow to Inf, whose steps only the definition takes), and
// the same rows shifted to one sign.
TEST_CASE("imatrix_mse int avx2 asym kernel equals the definition on adversarial groups") {
  if (!calib::internal::IntAvx2Available()) return;
  std::vector<float> x, imp;
  AdversarialRows(&x, &imp);
  std::vector<float> pos = x;
  for (size_t i = 0; i < pos.size(); ++i) {
    if (std::fabs(pos[i]) < 1e30f) pos[i] = Bf16(std::fabs(pos[i]) + 0.5f);
  }
  x.insert(x.end(), pos.begin(), pos.end());
  for (const Setting& s : Settings()) {
    CAPTURE(s.bits);
    CAPTURE(s.norm);
    CAPTURE(s.expand);
    CAPTURE(s.grid);
    Compare(s, x, &imp, 128, 128);
    Compare(s, x, nullptr, 128, 128);
    Compare(s, x, &imp, 128, 32);
  }
}

// A chunk of shifted random rows for W4A16_ASYM in groups of 128, as the conversion hands it.
struct AsymChunk {
  std::vector<float> x, imp;
  std::vector<uint8_t> raw;
  WeightChunk in;
};
void MakeAsymChunk(std::mt19937& rng, size_t rows, size_t cols, AsymChunk* c) {
  ShiftedRows(rng, rows, cols, &c->x, &c->imp);
  c->raw = imatrix_int::RawBf16(c->x);
  c->in = WeightChunk{};
  c->in.data = c->raw.data();
  c->in.dtype = DType::kBF16;
  c->in.rows = rows;
  c->in.cols = cols;
  c->in.params.bits = 4;
  c->in.params.group_size = 128;
  c->in.params.symmetric = false;
}

// The whole search as the conversion calls it (SearchSteps: bf16 rows read by the kernel,
// SearchBlock's dispatch) with the kernel, with it switched off (the Highway kernel, on rows
// converted to f32) and by the scalar definition: the same masks.
TEST_CASE("imatrix_mse int avx2 asym kernel: SearchSteps with and without it agree") {
  std::mt19937 rng(17);
  const size_t rows = 70, cols = 512;
  AsymChunk c;
  MakeAsymChunk(rng, rows, cols, &c);
  calib::ImatrixOptions o;
  std::vector<uint32_t> on(rows * 4), off(rows * 4), def(rows * 4);
  REQUIRE(calib::GroupSteps(c.in, calib::ImatrixFormat::kInt, c.imp, o, on.data()));
  calib::internal::SetIntAvx2Enabled(false);
  const bool ok = calib::GroupSteps(c.in, calib::ImatrixFormat::kInt, c.imp, o, off.data());
  calib::internal::SetIntAvx2Enabled(true);
  REQUIRE(ok);
  std::vector<double> best(rows * 4, FLT_MAX);
  uint32_t improved = 0;
  REQUIRE(calib::SearchStepsScalar(c.in, calib::ImatrixFormat::kInt, c.imp, o, 0,
                                   calib::LastStep(o), best.data(), def.data(), &improved));
  CHECK(on == def);
  CHECK(off == def);
}

// An Inf or NaN anywhere in the rows: the kernel's own pass refuses the block (SearchSteps
// runs no AllFinite before it), as SearchSteps does with the kernel switched off.
TEST_CASE("imatrix_mse int avx2 asym kernel refuses rows with an Inf or NaN") {
  if (!calib::internal::IntAvx2Available()) return;
  std::mt19937 rng(19);
  const size_t rows = 40, cols = 512;
  AsymChunk c;
  MakeAsymChunk(rng, rows, cols, &c);
  WeightChunk in = c.in;
  calib::ImatrixOptions o;
  std::vector<uint32_t> masks(rows * 4);
  REQUIRE(calib::GroupSteps(in, calib::ImatrixFormat::kInt, c.imp, o, masks.data()));
  for (const uint16_t bad : {uint16_t{0x7F80}, uint16_t{0xFF80}, uint16_t{0x7FC1},
                             uint16_t{0xFFFF}}) {
    for (const size_t at : {size_t{0}, size_t{7}, size_t{130}, size_t{9 * cols + 300},
                            rows * cols - 1}) {
      CAPTURE(bad);
      CAPTURE(at);
      std::vector<uint8_t> r = c.raw;
      std::memcpy(&r[2 * at], &bad, 2);
      in.data = r.data();
      CHECK_FALSE(calib::GroupSteps(in, calib::ImatrixFormat::kInt, c.imp, o, masks.data()));
      calib::internal::SetIntAvx2Enabled(false);
      const bool off_ok = calib::GroupSteps(in, calib::ImatrixFormat::kInt, c.imp, o, masks.data());
      calib::internal::SetIntAvx2Enabled(true);
      CHECK_FALSE(off_ok);
    }
  }
}

}  // namespace
}  // namespace quench::testing
