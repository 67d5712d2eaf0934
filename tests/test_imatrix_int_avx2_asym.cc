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

// The kernel against the definition and the Highway kernel (CompareAvx2Search).
void Compare(const Setting& s, const std::vector<float>& x, const std::vector<float>* imp,
             size_t cols, size_t group) {
  imatrix_int::CompareAvx2Search(AsymBlock(s, x, imp, cols, group), x, s.last,
                                 calib::internal::IntAvx2AsymHandles,
                                 calib::internal::SearchIntAvx2Asym);
}

// Every finite bf16 x (importance varying by element) at every zero point of the layout (0
// also in the form for zero point 0),
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
        // Zero point 0 in both forms (the search's sums take the shorter one).
        for (int zf = b.layout.qmin; zf <= b.layout.qmax + 1; ++zf) {
          const int zp = zf > b.layout.qmax ? 0 : zf;
          REQUIRE(calib::internal::IntAvx2AsymTerms(b, scale, static_cast<float>(zp),
                                                    zf > b.layout.qmax, xs.data(), imp.data(),
                                                    xs.size(), got.data()));
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

// The terms' form of the code's second rounding (imatrix_mse_int_avx2_asym.cc:
// f32(c * 65537) - c * 65536 in place of RNE_bf16(c)) for every f32 c in [-8, 7] (the
// clamped y of every 2-4 bit layout), against round half to even of RNE_bf16(c) by its bits
// (round to nearest even at bit 16), both to integers by lrint (half to even): the same code.
TEST_CASE(
    "imatrix_mse int avx2 asym kernel: the product-form code rounding, every f32 in [-8, 7]") {
  uint64_t checked = 0, mismatched = 0;
  for (const uint32_t sign : {0u, 0x80000000u}) {
    const uint32_t last = sign != 0 ? 0x41000000u : 0x40E00000u;  // bits of 8 and 7
    for (uint32_t m = 0; m <= last; ++m) {
      const uint32_t bits = sign | m;
      float c, ref;
      std::memcpy(&c, &bits, 4);
      const uint32_t rb = (bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u;
      std::memcpy(&ref, &rb, 4);
      const float p = c * 65537.0f, mm = c * 65536.0f;
      ++checked;
      if (std::lrint(p - mm) != std::lrint(ref) && mismatched++ < 3) {
        MESSAGE("c " << c << ": want " << std::lrint(ref) << " got " << std::lrint(p - mm));
      }
    }
  }
  MESSAGE("values checked: " << checked);
  CHECK(checked == 2178940930u);
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
using AsymChunk = imatrix_int::Int4Chunk;
void MakeAsymChunk(std::mt19937& rng, size_t rows, size_t cols, AsymChunk* c) {
  ShiftedRows(rng, rows, cols, &c->x, &c->imp);
  imatrix_int::SetInt4Chunk(rows, cols, /*symmetric=*/false, c);
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
  imatrix_int::CheckRefusesNonFinite(
      c.in, c.raw, c.imp, {0x7F80, 0xFF80, 0x7FC1, 0xFFFF},
      {0, 7, 130, 9 * cols + 300, rows * cols - 1}, calib::internal::SetIntAvx2Enabled);
}

// The chosen codes of every finite bf16 x (rows of 1024, then random shifted rows) at every
// zero point under each of the scales of every significand at 2^-7 and 2^0 and of some at exponents
// across [2^-100, 2^100] (x * f32(1 / s)) and outside it (x / s), and the zero guard eps: each
// packed code against QuantizeValue's (asymmetric) + 8.
TEST_CASE("imatrix_mse int avx2 asym chosen codes equal the definition") {
  if (!calib::internal::IntAvx2Available()) {
    CHECK(!calib::internal::IntAvx2AsymCodesHandle(128, 1024));
    return;
  }
  std::mt19937 rng(23);
  const size_t n = 1024, group = 64, ng = n / group;
  imatrix_int::Bf16Rows rows = imatrix_int::EveryBf16Rows(rng, n);
  std::vector<float> shifted, imp;
  ShiftedRows(rng, 21, n, &shifted, &imp);
  rows.x.insert(rows.x.end(), shifted.begin(), shifted.end());
  rows.raw = imatrix_int::RawBf16(rows.x);
  REQUIRE(calib::internal::IntAvx2AsymCodesHandle(group, n));
  const intq::internal::Layout l{4, -8, 7, group, ng, n / 8};
  std::vector<float> scales = {0.0078125f};
  for (int e : {-7, 0}) {
    for (uint32_t m = 128; m < 256; ++m) scales.push_back(std::ldexp(m / 128.0f, e));
  }
  for (int e : {-133, -120, -101, -100, -40, 5, 99, 100, 101, 127}) {
    for (uint32_t m = 128; m < 256; m += 7) scales.push_back(std::ldexp(m / 128.0f, e));
  }
  std::vector<intq::internal::GroupParams> p(ng);
  std::vector<uint8_t> got(n / 2);
  size_t checked = 0, bad = 0;
  for (size_t r = 0; r < rows.x.size() / n; ++r) {
    const float* x = rows.x.data() + r * n;
    // The rows of every bf16 x under every scale at every zero point; the random ones
    // under some.
    for (size_t sz = 0; sz < 16 * scales.size(); sz += (r < 64 ? 1 : 37)) {
      const size_t si = sz / 16;
      // Each group its own zero point, every one of [-8, 7] across the row.
      for (size_t k = 0; k < ng; ++k) p[k] = {scales[si], static_cast<int>((k + sz) % 16) - 8};
      calib::internal::IntAvx2AsymCodes4(rows.raw.data() + r * n * 2, n, group, p.data(),
                                         got.data());
      for (size_t i = 0; i < n; ++i) {
        const int want =
            intq::internal::QuantizeValue(x[i], p[i / group], l, false, DType::kBF16) + 8;
        const int have = got[i / 2] >> (4 * (i % 2)) & 15;
        ++checked;
        if (have != want && bad++ < 3) {
          MESSAGE("scale " << p[i / group].scale << " zp " << p[i / group].zp << " x " << x[i]
                           << ": got " << have << " want " << want);
        }
      }
    }
  }
  MESSAGE("codes checked: " << checked);
  CHECK(bad == 0);
}

// Each group's min and max from the raw row against min_element / max_element of its f32
// values (equal as values: the sign of a zero aside), on every finite bf16 x and shifted
// random rows, for groups of 64, 128 and 1024; a row with an Inf or NaN refused.
TEST_CASE("imatrix_mse int avx2 asym row min and max equal the definition's") {
  if (!calib::internal::IntAvx2Available()) return;
  std::mt19937 rng(29);
  const size_t n = 1024;
  imatrix_int::Bf16Rows rows = imatrix_int::EveryBf16Rows(rng, n);
  std::vector<float> shifted, imp;
  ShiftedRows(rng, 21, n, &shifted, &imp);
  rows.x.insert(rows.x.end(), shifted.begin(), shifted.end());
  rows.raw = imatrix_int::RawBf16(rows.x);
  size_t checked = 0, bad = 0;
  for (size_t group : {size_t{64}, size_t{128}, size_t{1024}}) {
    const size_t ng = n / group;
    std::vector<float> mn(ng), mx(ng);
    for (size_t r = 0; r < rows.x.size() / n; ++r) {
      REQUIRE(calib::internal::IntAvx2RowMinMax(rows.raw.data() + r * n * 2, ng, group,
                                                mn.data(), mx.data()));
      for (size_t k = 0; k < ng; ++k) {
        const float* x = rows.x.data() + r * n + k * group;
        ++checked;
        if ((mn[k] != *std::min_element(x, x + group) ||
             mx[k] != *std::max_element(x, x + group)) &&
            bad++ < 3) {
          MESSAGE("row " << r << " group " << k << ": got " << mn[k] << " " << mx[k]);
        }
      }
    }
  }
  MESSAGE("groups checked: " << checked);
  CHECK(bad == 0);
  std::vector<uint8_t> row(2 * n, 0);
  float a[16], b[16];
  for (const uint16_t bad_bits : {uint16_t{0x7F80}, uint16_t{0xFF80}, uint16_t{0xFFC1},
                                  uint16_t{0x7FC0}, uint16_t{0xFFFF}}) {
    for (const size_t at : {size_t{0}, size_t{700}, n - 1}) {
      std::memcpy(&row[2 * at], &bad_bits, 2);
      CHECK(!calib::internal::IntAvx2RowMinMax(row.data(), 8, 128, a, b));
      std::memset(&row[2 * at], 0, 2);
    }
  }
  CHECK(calib::internal::IntAvx2RowMinMax(row.data(), 8, 128, a, b));
}

// The chosen parameters eight groups at a time against StepRange and ComputeParams
// (asymmetric) on the group's min and max: bf16 mins and maxes of every sign and magnitude
// (zero, subnormal, near bf16's largest: ranges that overflow to Inf), every step, several
// grids, expands and bit widths; scale, zero point and the scale's bf16 pattern.
TEST_CASE("imatrix_mse int avx2 asym chosen parameters equal StepRange and ComputeParams") {
  if (!calib::internal::IntAvx2Available()) return;
  std::mt19937 rng(31);
  auto value = [&]() { return imatrix_int::RangeValue(rng); };
  size_t checked = 0, bad = 0;
  for (int bits : {4, 3, 2}) {
    const int qmax = (1 << (bits - 1)) - 1;
    for (const auto& [grid, expand] : imatrix_int::GridExpands()) {
      const size_t n = 403;  // 50 vectors of groups and a tail of 3
      std::vector<float> m0(n), M0(n);
      std::vector<uint8_t> steps(n), got_b(2 * n), want_b(2 * n);
      for (size_t k = 0; k < n; ++k) {
        float a = value(), c = value();
        if (k % 3 == 0) a = -a;
        if (k % 5 != 2) c = -c;
        m0[k] = std::min(a, c);
        M0[k] = std::max(a, c);
        steps[k] = static_cast<uint8_t>(k % 32 < static_cast<size_t>(grid) ? k % 32 : k % grid);
      }
      const intq::internal::Layout l{bits, -qmax - 1, qmax, 128, n, n * 128 * bits / 32};
      std::vector<intq::internal::GroupParams> got(n);
      calib::internal::IntAvx2AsymChosenParams(m0.data(), M0.data(), steps.data(), n, grid,
                                               expand, l, got.data(), got_b.data());
      for (size_t k = 0; k < n; ++k) {
        float mn, mx;
        calib::internal::StepRange(m0[k], M0[k], steps[k], grid, expand, DType::kBF16, &mn, &mx);
        const intq::internal::GroupParams want =
            intq::internal::ComputeParams(mn, mx, l, false, DType::kBF16);
        intq::internal::StoreScale(want_b.data() + 2 * k, want.scale, DType::kBF16);
        ++checked;
        if ((std::memcmp(&want.scale, &got[k].scale, 4) != 0 || got[k].zp != want.zp ||
             std::memcmp(&want_b[2 * k], &got_b[2 * k], 2) != 0) &&
            bad++ < 3) {
          MESSAGE("m0 " << m0[k] << " M0 " << M0[k] << " step " << int(steps[k]) << " grid "
                        << grid << " expand " << expand << ": got " << got[k].scale << " / "
                        << got[k].zp << " want " << want.scale << " / " << want.zp);
        }
      }
    }
  }
  MESSAGE("parameters checked: " << checked);
  CHECK(bad == 0);
}

// QuantizeChosen (packed W4A16_ASYM rows) with the AVX2 helpers against the same with every
// AVX2 kernel switched off (the scalar parameters, the Highway codes from f32 rows): the same
// packed codes, scales and zero points, byte for byte; an Inf or NaN refused by both. Groups
// of 64 and 128, expand 1 and 1.25, grids 20 and 10.
TEST_CASE("imatrix_mse int avx2 asym chosen quantization equals the kernels-off path") {
  if (!calib::internal::IntAvx2Available()) return;
  std::mt19937 rng(37);
  for (const size_t group : {size_t{64}, size_t{128}}) {
    for (const double expand : {1.0, 1.25}) {
      for (const int grid : {20, 10}) {
        CAPTURE(group);
        CAPTURE(expand);
        CAPTURE(grid);
        const size_t rows = 37, cols = 512, ng = cols / group;
        AsymChunk c;
        MakeAsymChunk(rng, rows, cols, &c);
        c.in.params.group_size = static_cast<int>(group);
        calib::ImatrixOptions o;
        o.expand = expand;
        o.grid = grid;
        std::vector<uint32_t> masks(rows * ng);
        REQUIRE(calib::GroupSteps(c.in, calib::ImatrixFormat::kInt, c.imp, o, masks.data()));
        std::vector<uint8_t> steps(rows * ng);
        for (size_t k = 0; k < steps.size(); ++k) {
          steps[k] = calib::ChosenStep(masks[k], calib::LastStep(o));
        }
        const size_t row_bytes = cols / 2;
        auto run = [&](bool kernels, const WeightChunk& in, std::vector<uint8_t>* bytes) {
          bytes->assign(rows * row_bytes + rows * ng * 2 + rows * ng, 0);
          ChunkOutputs out;
          out.out[0] = bytes->data();
          out.out[1] = out.out[0] + rows * row_bytes;
          out.out[2] = out.out[1] + rows * ng * 2;
          calib::internal::SetIntAvx2Enabled(kernels);
          const bool ok = calib::QuantizeChosen(in, calib::ImatrixFormat::kInt, o, steps.data(),
                                                /*packed=*/true, out);
          calib::internal::SetIntAvx2Enabled(true);
          return ok;
        };
        REQUIRE(calib::internal::IntAvx2AsymCodesHandle(group, cols));
        std::vector<uint8_t> on, off;
        REQUIRE(run(true, c.in, &on));
        REQUIRE(run(false, c.in, &off));
        CHECK(on == off);
        WeightChunk bad_in = c.in;
        std::vector<uint8_t> r = c.raw;
        const uint16_t nan = 0x7FC1;
        std::memcpy(&r[2 * (5 * cols + 77)], &nan, 2);
        bad_in.data = r.data();
        CHECK(!run(true, bad_in, &on));
        CHECK(!run(false, bad_in, &off));
      }
    }
  }
}


// The quantize stage from the search's kept mins and maxes (IntRangesKept: SearchSteps'
// group_minmax, IntKeptParams, QuantizeIntKept) against QuantizeChosen with every AVX2
// kernel switched off (the Highway search, the scalar parameters and codes from the rows):
// the same packed codes, scales and zero points, byte for byte; the kept pairs are each
// group's min and max computed here from the values. Groups of 64 and 128, expand 1 and 1.25,
// grids 20 and 10; the kept pairs also from the f32 copy (kernels off).
TEST_CASE("imatrix_mse int avx2 asym kernel: chosen parameters from the search's kept ranges") {
  if (!calib::internal::IntAvx2Available()) return;  // IntRangesKept is false there
  std::mt19937 rng(41);
  for (const size_t group : {size_t{64}, size_t{128}}) {
    for (const double expand : {1.0, 1.25}) {
      for (const int grid : {20, 10}) {
        CAPTURE(group);
        CAPTURE(expand);
        CAPTURE(grid);
        const size_t rows = 40, cols = 512, ng = cols / group, groups = rows * ng;
        AsymChunk c;
        MakeAsymChunk(rng, rows, cols, &c);
        c.in.params.group_size = static_cast<int>(group);
        const WeightChunk& in = c.in;
        calib::ImatrixOptions o;
        o.expand = expand;
        o.grid = grid;
        REQUIRE(calib::IntRangesKept(in, o, /*packed=*/true));
        CHECK(!calib::IntRangesKept(in, o, /*packed=*/false));
        const int last = calib::LastStep(o);
        std::vector<double> best(groups, FLT_MAX);
        std::vector<uint32_t> masks(groups, 0u);
        std::vector<float> minmax(2 * groups, -1.0f), minmax_off(2 * groups, -1.0f);
        uint32_t bits = 0;
        REQUIRE(calib::SearchSteps(in, calib::ImatrixFormat::kInt, c.imp, o, 0, last,
                                   best.data(), masks.data(), &bits, /*exact_best=*/false,
                                   nullptr, minmax.data()));
        for (size_t k = 0; k < groups; ++k) {
          const float* x = c.x.data() + k * group;
          REQUIRE(minmax[2 * k] == *std::min_element(x, x + group));
          REQUIRE(minmax[2 * k + 1] == *std::max_element(x, x + group));
        }
        const int stop = calib::StopStep(bits, o);
        std::vector<uint8_t> scales(groups * 2);
        std::vector<int8_t> zps(groups);
        calib::IntKeptParams(in, o, minmax.data(), masks.data(), groups, stop, scales.data(),
                             zps.data());
        const size_t row_bytes = cols / 2;
        auto outputs = [&](std::vector<uint8_t>* bytes) {
          bytes->assign(rows * row_bytes + groups * 2 + groups, 0);
          ChunkOutputs out;
          out.out[0] = bytes->data();
          out.out[1] = out.out[0] + rows * row_bytes;
          out.out[2] = out.out[1] + groups * 2;
          return out;
        };
        std::vector<uint8_t> kept, ref;
        REQUIRE(calib::QuantizeIntKept(in, scales.data(), zps.data(), outputs(&kept)));
        // The reference: every AVX2 kernel off.
        calib::internal::SetIntAvx2Enabled(false);
        std::vector<double> best_r(groups, FLT_MAX);
        std::vector<uint32_t> masks_r(groups, 0u);
        uint32_t bits_r = 0;
        const bool searched =
            calib::SearchSteps(in, calib::ImatrixFormat::kInt, c.imp, o, 0, last,
                               best_r.data(), masks_r.data(), &bits_r, /*exact_best=*/false,
                               nullptr, minmax_off.data());
        std::vector<uint8_t> steps(groups);
        const int stop_r = calib::StopStep(bits_r, o);
        for (size_t k = 0; k < groups; ++k) steps[k] = calib::ChosenStep(masks_r[k], stop_r);
        const bool quantized = calib::QuantizeChosen(in, calib::ImatrixFormat::kInt, o,
                                                     steps.data(), /*packed=*/true, outputs(&ref));
        calib::internal::SetIntAvx2Enabled(true);
        REQUIRE(searched);
        REQUIRE(quantized);
        CHECK(masks == masks_r);
        CHECK(stop == stop_r);
        CHECK(minmax == minmax_off);
        CHECK(kept == ref);
      }
    }
  }
}

}  // namespace
}  // namespace quench::testing
