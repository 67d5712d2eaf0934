// The AVX2 imatrix_mse search for symmetric int codes of bf16 weights
// (src/calib/imatrix_mse_int_avx2.h) against the scalar definition
// (src/calib/imatrix_mse_scalar.cc) and the Highway kernel: every term of every finite bf16 x
// at scales across the range the kernel takes, and the search's masks, improved steps and best
// errors (bit for bit) on random and adversarial groups (the cases of
// test_imatrix_int_bf16.cc), from f32 blocks and from raw bf16 rows, for 2-4 bit codes, norms
// 2 and 3, several group sizes, step ranges, expand and grid settings. The AVX-512 BF16 kernel
// is switched off while these run (it takes the same blocks where the CPU has it). On a CPU
// without AVX2 the kernel must decline every block.
#include <doctest/doctest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "calib/imatrix_mse.h"
#include "calib/imatrix_mse_int_avx2.h"
#include "calib/imatrix_mse_int_bf16.h"
#include "calib/imatrix_mse_kernel.h"
#include "imatrix_int_cases.h"
#include "schemes/float_formats.h"
#include "schemes/int_shared.h"

namespace quench::testing {
namespace {

using calib::internal::Block;
using imatrix_int::AdversarialRows;
using imatrix_int::Bf16;
using imatrix_int::MakeBlock;
using imatrix_int::RandomRows;
using imatrix_int::Setting;
using imatrix_int::Settings;

// The AVX-512 BF16 kernel off for a test's duration (this kernel declines its blocks).
struct NoBf16Kernel {
  NoBf16Kernel() { calib::internal::SetIntBf16Enabled(false); }
  ~NoBf16Kernel() { calib::internal::SetIntBf16Enabled(true); }
};

// The kernel against the definition and the Highway kernel (CompareAvx2Search).
void Compare(const Setting& s, const std::vector<float>& x, const std::vector<float>* imp,
             size_t cols, size_t group) {
  imatrix_int::CompareAvx2Search(MakeBlock(s, x, imp, cols, group), x, s.last,
                                 calib::internal::IntAvx2Handles, calib::internal::SearchIntAvx2);
}

TEST_CASE("imatrix_mse int avx2 kernel: every term of every bf16 x equals the definition's") {
  NoBf16Kernel off;
  if (!calib::internal::IntAvx2Available()) {
    std::vector<float> x(32, 1.f);
    Block b = MakeBlock(Setting{}, x, nullptr, 32, 32);
    b.i1 = 19;
    CHECK(!calib::internal::IntAvx2Handles(b));
    return;
  }
  imatrix_int::CheckEveryTerm(
      calib::internal::IntAvx2Handles, calib::internal::IntAvx2Terms,
      {Setting{4, 3.0}, Setting{4, 2.0}, Setting{3, 3.0}, Setting{2, 3.0}, Setting{3, 2.0}});
}

// The symmetric AVX2 searches' parameters (imatrix_mse_int_avx2_shared.h SymPrepareSteps)
// take RNE_bf16(pos / h) as RNE_bf16(pos * f32(1 / h)) for the half ranges h = (qmax - qmin)
// / 2 of every layout the int4 and int8 kernels take: checked here for every finite bf16 pos
// >= 0 (subnormals and 0 included), against the quotient, each rounded to bf16 at bit 16
// with ties to even.
TEST_CASE("imatrix_mse int avx2 kernel: the scale's quotient by h as a product, every bf16") {
  std::vector<float> halves;
  for (int qmin = -8; qmin <= -1; ++qmin) {
    for (int qmax = 1; qmax <= 7; ++qmax) halves.push_back(static_cast<float>(qmax - qmin) / 2);
  }
  for (int bits = 5; bits <= 8; ++bits) halves.push_back(static_cast<float>((1 << bits) - 1) / 2);
  auto rne_bits = [](float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    return (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  };
  uint64_t checked = 0, mismatched = 0;
  for (const float h : halves) {
    volatile float inv = 1.0f / h;  // f32(1 / h), as the kernel's constant
    for (uint32_t b = 0; b < 0x7F80u; ++b) {
      const uint32_t pb = b << 16;
      float pos;
      std::memcpy(&pos, &pb, 4);
      ++checked;
      if (rne_bits(pos / h) != rne_bits(pos * inv) && mismatched++ < 3) {
        MESSAGE("pos " << pos << " h " << h);
      }
    }
  }
  CHECK(checked == uint64_t{0x7F80u} * 60);
  CHECK(mismatched == 0);
}

TEST_CASE("imatrix_mse int avx2 kernel equals the definition on random groups") {
  NoBf16Kernel off;
  if (!calib::internal::IntAvx2Available()) return;  // the case above checks that it declines
  std::mt19937 rng(18);
  for (const Setting& s : Settings()) {
    for (size_t group : {size_t{32}, size_t{128}, size_t{256}}) {
      const size_t cols = group == 256 ? 512 : 384, rows = group == 32 ? 40 : 24;
      std::vector<float> x, imp;
      RandomRows(rng, rows, cols, &x, &imp);
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
    RandomRows(rng, 16, 1024, &x, &imp);
    Compare(s, x, &imp, 1024, 1024);
  }
}

TEST_CASE("imatrix_mse int avx2 kernel equals the definition on adversarial groups") {
  NoBf16Kernel off;
  if (!calib::internal::IntAvx2Available()) return;
  std::vector<float> x, imp;
  AdversarialRows(&x, &imp);
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

// The chosen quantization's row helpers against the definition (imatrix_int_cases.h
// CheckChosenCodes says what it runs).
TEST_CASE("imatrix_mse int avx2 chosen codes equal the definition") {
  NoBf16Kernel off;
  if (!calib::internal::IntAvx2Available()) {
    CHECK(!calib::internal::IntAvx2CodesHandle(128, 1024));
    return;
  }
  imatrix_int::CheckChosenCodes(
      {calib::internal::IntAvx2CodesHandle, nullptr, calib::internal::IntAvx2Codes4});
}

// The chosen codes round each quotient x * f32(1 / s) to bf16 half up (no quotient is a
// midpoint, QuotientBf16's proof): every finite bf16 x under every scale significand at
// exponents across [2^-100, 2^100], each packed code against QuantizeValue's.
TEST_CASE("imatrix_mse int avx2 chosen codes: every bf16 x under every scale significand") {
  NoBf16Kernel off;
  if (!calib::internal::IntAvx2Available()) return;  // the case above checks that it declines
  std::vector<float> xs;
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const float v = BF16ToF32(static_cast<uint16_t>(bits));
    if (std::isfinite(v)) xs.push_back(v);
  }
  const size_t group = 64;
  while (xs.size() % group != 0) xs.push_back(0.f);
  const size_t n = xs.size(), ng = n / group;
  REQUIRE(calib::internal::IntAvx2CodesHandle(group, n));
  std::vector<uint8_t> raw(n * 2), got(n / 2);
  for (size_t i = 0; i < n; ++i) {
    const uint16_t h = F32ToBF16(xs[i]);
    std::memcpy(&raw[2 * i], &h, 2);
  }
  const intq::internal::Layout l{4, -8, 7, group, ng, n / 8};
  size_t checked = 0, bad = 0;
  for (int e : {-100, -7, 0, 5, 99}) {
    for (uint32_t m = 128; m < 256; ++m) {
      const float s = std::ldexp(static_cast<float>(m) / 128.0f, e);
      const std::vector<intq::internal::GroupParams> p(ng, {s, 0});
      calib::internal::IntAvx2Codes4(raw.data(), n, group, p.data(), got.data());
      for (size_t i = 0; i < n; ++i) {
        const int want = intq::internal::QuantizeValue(xs[i], p[0], l, true, DType::kBF16) + 8;
        ++checked;
        if ((got[i / 2] >> (4 * (i % 2)) & 15) != want && bad++ < 3) {
          MESSAGE("scale " << s << " x " << xs[i] << ": got " << (got[i / 2] >> (4 * (i % 2)) & 15)
                           << " want " << want);
        }
      }
    }
  }
  MESSAGE("codes checked: " << checked);
  CHECK(bad == 0);
}

// Each group's largest magnitude from the raw row against max |x| of its f32 values, on every
// finite bf16 x (shuffled into rows of 1024) and random rows, for groups of 64, 128 and 1024;
// a row with an Inf or NaN refused.
TEST_CASE("imatrix_mse int avx2 row abs max equals max |x|") {
  if (!calib::internal::IntAvx2Available()) return;
  std::mt19937 rng(5);
  const size_t n = 1024;
  const imatrix_int::Bf16Rows rows = imatrix_int::EveryBf16Rows(rng, n);
  const std::vector<float>& xs = rows.x;
  const std::vector<uint8_t>& raw = rows.raw;
  size_t checked = 0, bad = 0;
  for (size_t group : {size_t{64}, size_t{128}, size_t{1024}}) {
    const size_t ng = n / group;
    std::vector<float> got(ng);
    for (size_t r = 0; r < xs.size() / n; ++r) {
      REQUIRE(calib::internal::IntAvx2RowAbsMax(raw.data() + r * n * 2, ng, group, got.data()));
      for (size_t k = 0; k < ng; ++k) {
        float want = 0.0f;
        for (size_t i = 0; i < group; ++i)
          want = std::max(want, std::fabs(xs[r * n + k * group + i]));
        ++checked;
        if (std::memcmp(&want, &got[k], 4) != 0 && bad++ < 3) {
          MESSAGE("row " << r << " group " << k << ": got " << got[k] << " want " << want);
        }
      }
    }
  }
  MESSAGE("abs maxes checked: " << checked);
  CHECK(bad == 0);
  std::vector<uint8_t> row(2 * n, 0);
  float a[16];
  for (const uint16_t bad_bits : {uint16_t{0x7F80}, uint16_t{0xFF80}, uint16_t{0xFFC1},
                                  uint16_t{0x7FC0}}) {
    std::memcpy(&row[2 * 700], &bad_bits, 2);
    CHECK(!calib::internal::IntAvx2RowAbsMax(row.data(), 8, 128, a));
  }
}

// The chosen scales eight groups at a time from each group's largest magnitude against
// StepRange and ComputeParams on the group's min and max (QuantizeIntChosen's scalar code):
// bf16 mins and maxes of every sign and magnitude (zero, subnormal, near bf16's largest),
// every step, several grids, expands and bit widths; the scale and its bf16 pattern bit for
// bit.
TEST_CASE("imatrix_mse int avx2 chosen scales equal StepRange and ComputeParams") {
  if (!calib::internal::IntAvx2Available()) return;  // the caller checks IntAvx2CodesHandle
  std::mt19937 rng(11);
  auto value = [&]() { return imatrix_int::RangeValue(rng); };
  size_t checked = 0, bad = 0;
  for (int bits : {4, 3, 2}) {
    const int qmax = (1 << (bits - 1)) - 1;
    for (const auto& [grid, expand] : imatrix_int::GridExpands()) {
      const size_t n = 203;  // 25 vectors of groups and a tail of 3
      std::vector<float> m0(n), M0(n);
      std::vector<uint8_t> steps(n), got_b(2 * n), want_b(2 * n);
      for (size_t k = 0; k < n; ++k) {
        float a = value(), c = value();
        if (k % 3 == 0) a = -a;
        if (k % 3 != 2) c = -c;
        m0[k] = std::min(a, c);
        M0[k] = std::max(a, c);
        steps[k] = static_cast<uint8_t>(k % 32 < static_cast<size_t>(grid) ? k % 32 : k % grid);
      }
      const intq::internal::Layout l{bits, -qmax - 1, qmax, 128, n, n * 128 * bits / 32};
      std::vector<intq::internal::GroupParams> got(n);
      std::vector<float> amax(n);
      for (size_t k = 0; k < n; ++k) amax[k] = std::max(std::max(-m0[k], M0[k]), 0.0f);
      calib::internal::IntAvx2ChosenScales(amax.data(), steps.data(), n, grid, expand, l,
                                           got.data(), got_b.data());
      for (size_t k = 0; k < n; ++k) {
        float mn, mx;
        calib::internal::StepRange(m0[k], M0[k], steps[k], grid, expand, DType::kBF16, &mn, &mx);
        const intq::internal::GroupParams want =
            intq::internal::ComputeParams(mn, mx, l, true, DType::kBF16);
        intq::internal::StoreScale(want_b.data() + 2 * k, want.scale, DType::kBF16);
        ++checked;
        if ((std::memcmp(&want.scale, &got[k].scale, 4) != 0 || got[k].zp != 0 ||
             std::memcmp(&want_b[2 * k], &got_b[2 * k], 2) != 0) &&
            bad++ < 3) {
          MESSAGE("m0 " << m0[k] << " M0 " << M0[k] << " step " << int(steps[k]) << " grid "
                        << grid << " expand " << expand << ": got " << got[k].scale << " want "
                        << want.scale);
        }
      }
    }
  }
  MESSAGE("scales checked: " << checked);
  CHECK(bad == 0);
}

// The whole search as the conversion calls it (SearchSteps: bf16 rows read by the kernel,
// SearchBlock's dispatch) with the kernel and with it switched off (the Highway kernels, on
// rows converted to f32): the same masks.
TEST_CASE("imatrix_mse int avx2 kernel: SearchSteps with and without it agree") {
  NoBf16Kernel off;
  std::mt19937 rng(7);
  const size_t rows = 70, cols = 512;
  imatrix_int::Int4Chunk c;
  imatrix_int::MakeInt4Chunk(rng, rows, cols, &c);
  const WeightChunk& in = c.in;
  const std::vector<float>& imp = c.imp;
  calib::ImatrixOptions o;
  std::vector<uint32_t> on(rows * 4), off_masks(rows * 4);
  REQUIRE(calib::GroupSteps(in, calib::ImatrixFormat::kInt, imp, o, on.data()));
  calib::internal::SetIntAvx2Enabled(false);
  const bool ok = calib::GroupSteps(in, calib::ImatrixFormat::kInt, imp, o, off_masks.data());
  calib::internal::SetIntAvx2Enabled(true);
  REQUIRE(ok);
  CHECK(on == off_masks);
}

// The quantize stage from the search's kept largest magnitudes (IntScalesKept: SearchSteps'
// group_absmax, IntKeptScales, QuantizeIntKept) against QuantizeChosen with every AVX2
// kernel switched off (the Highway search, the scalar chosen parameters and codes from the
// rows): the same packed codes and scales, byte for byte; the kept magnitudes are each
// group's max |x| computed here from the values. Groups of 64 and 128, expand 1 and 1.25,
// grids 20 and 10.
TEST_CASE("imatrix_mse int avx2 kernel: chosen scales from the search's kept magnitudes") {
  NoBf16Kernel off;
  if (!calib::internal::IntAvx2Available()) return;  // IntScalesKept is false there
  std::mt19937 rng(11);
  for (const size_t group : {size_t{64}, size_t{128}}) {
    for (const double expand : {1.0, 1.25}) {
      for (const int grid : {20, 10}) {
        CAPTURE(group);
        CAPTURE(expand);
        CAPTURE(grid);
        const size_t rows = 37, cols = 512, ng = cols / group;
        imatrix_int::Int4Chunk c;
        imatrix_int::MakeInt4Chunk(rng, rows, cols, &c);
        c.in.params.group_size = static_cast<int>(group);
        const WeightChunk& in = c.in;
        calib::ImatrixOptions o;
        o.expand = expand;
        o.grid = grid;
        REQUIRE(calib::IntScalesKept(in, o, /*packed=*/true));
        // Unpacked int4 (W4A8) is kept too, its codes a byte each (test_imatrix_int8_avx2).
        CHECK(calib::IntScalesKept(in, o, /*packed=*/false));
        const imatrix_int::KeptSearch kept =
            imatrix_int::KeptScalesFromSearch(in, c.imp, o, c.x, rows * ng, group);
        const std::vector<uint8_t>& scales = kept.scales;
        const std::vector<uint32_t>& masks = kept.masks;
        const int stop = kept.stop;
        const size_t row_bytes = (cols * 4 + 31) / 32 * 4;
        std::vector<uint8_t> codes_k(rows * row_bytes), scales_k(rows * ng * 2);
        ChunkOutputs out_k;
        out_k.out[0] = codes_k.data();
        out_k.out[1] = scales_k.data();
        REQUIRE(calib::QuantizeIntKept(in, scales.data(), nullptr, out_k));
        // The reference: every AVX2 kernel off.
        const imatrix_int::ChosenByDefinition ref = imatrix_int::ChosenWithKernelsOff(
            in, c.imp, o, rows * ng, rows * row_bytes, /*packed=*/true);
        CHECK(masks == ref.masks);
        CHECK(stop == ref.stop);
        CHECK(scales == ref.scales);
        CHECK(scales_k == ref.scales);
        CHECK(codes_k == ref.codes);
      }
    }
  }
}

// An Inf or NaN anywhere in the rows: the kernel's own pass refuses the block (SearchSteps
// runs no AllFinite before it), as SearchSteps does with the kernel switched off.
TEST_CASE("imatrix_mse int avx2 kernel refuses rows with an Inf or NaN") {
  NoBf16Kernel off;
  if (!calib::internal::IntAvx2Available()) return;
  imatrix_int::CheckInt4RefusesNonFinite(calib::internal::SetIntAvx2Enabled);
}

}  // namespace
}  // namespace quench::testing
