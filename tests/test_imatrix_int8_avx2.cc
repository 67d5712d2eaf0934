// The AVX2 imatrix_mse search for symmetric 5- to 8-bit int codes of bf16 weights
// (src/calib/imatrix_mse_int8_avx2.h: W8A16, W8A8) against the scalar definition
// (src/calib/imatrix_mse_scalar.cc) and the Highway kernel: every term of every finite bf16 x
// at scales across the range the kernel takes (expected values from QuantizeValue and
// RoundToDType, the definition's own functions), and the search's masks, improved steps and
// best errors (bit for bit) on random, adversarial and near-tie groups, from f32 blocks and
// raw bf16 rows, for 8-, 6- and 5-bit codes, norms 2 and 3, groups of 32 to whole rows, step
// ranges, expand and grid settings. On a CPU without AVX2 the kernel must decline every block.
#include <doctest/doctest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "calib/imatrix_mse.h"
#include "calib/imatrix_mse_int8_avx2.h"
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

// The AVX-512 BF16 kernel off for a test's duration (this kernel declines its blocks).
struct NoBf16Kernel {
  NoBf16Kernel() { calib::internal::SetIntBf16Enabled(false); }
  ~NoBf16Kernel() { calib::internal::SetIntBf16Enabled(true); }
};

// imatrix_int::Settings() with b-bit codes.
std::vector<Setting> Settings8(int bits) {
  std::vector<Setting> s = imatrix_int::Settings();
  for (Setting& x : s) x.bits = bits;
  return s;
}

// The kernel against the definition and the Highway kernel (CompareAvx2Search switches the
// int4 kernel's switch off for the Highway run, which switches this kernel off too).
void Compare(const Setting& s, const std::vector<float>& x, const std::vector<float>* imp,
             size_t cols, size_t group) {
  imatrix_int::CompareAvx2Search(MakeBlock(s, x, imp, cols, group), x, s.last,
                                 calib::internal::Int8Avx2Handles,
                                 calib::internal::SearchInt8Avx2);
}

TEST_CASE("imatrix_mse int8 avx2 kernel: every term of every bf16 x equals the definition's") {
  NoBf16Kernel off;
  if (!calib::internal::IntAvx2Available()) {
    std::vector<float> x(32, 1.f);
    Block b = MakeBlock(Setting{8}, x, nullptr, 32, 32);
    b.i1 = 19;
    CHECK(!calib::internal::Int8Avx2Handles(b));
    return;
  }
  imatrix_int::CheckEveryTerm(
      calib::internal::Int8Avx2Handles, calib::internal::Int8Avx2Terms,
      {Setting{8, 3.0}, Setting{8, 2.0}, Setting{7, 3.0}, Setting{6, 3.0}, Setting{5, 2.0}});
}

// Which blocks it takes: 5- to 8-bit symmetric bf16 codes only (4 bits and fewer are the int4
// kernel's; asymmetric, f32 or f16 weights, other norms and groups the Highway kernel's), and
// none with either switch off.
TEST_CASE("imatrix_mse int8 avx2 kernel takes only its blocks") {
  NoBf16Kernel off;
  if (!calib::internal::IntAvx2Available()) return;
  std::vector<float> x(256, 1.f);
  auto block = [&](int bits) {
    Block b = MakeBlock(Setting{bits}, x, nullptr, 256, 128);
    b.i1 = 19;
    return b;
  };
  for (int bits : {5, 6, 7, 8}) CHECK(calib::internal::Int8Avx2Handles(block(bits)));
  for (int bits : {2, 3, 4}) CHECK(!calib::internal::Int8Avx2Handles(block(bits)));
  Block b = block(8);
  b.symmetric = false;
  CHECK(!calib::internal::Int8Avx2Handles(b));
  b = block(8);
  b.dtype = DType::kF16;
  CHECK(!calib::internal::Int8Avx2Handles(b));
  b = block(8);
  b.norm = 2.5;
  CHECK(!calib::internal::Int8Avx2Handles(b));
  b = block(8);
  b.group = 48;
  CHECK(!calib::internal::Int8Avx2Handles(b));
  b = block(8);
  b.layout.qmin = -127;
  CHECK(!calib::internal::Int8Avx2Handles(b));
  calib::internal::SetInt8Avx2Enabled(false);
  CHECK(!calib::internal::Int8Avx2Handles(block(8)));
  calib::internal::SetInt8Avx2Enabled(true);
  calib::internal::SetIntAvx2Enabled(false);
  CHECK(!calib::internal::Int8Avx2Handles(block(8)));
  calib::internal::SetIntAvx2Enabled(true);
}

TEST_CASE("imatrix_mse int8 avx2 kernel equals the definition on random groups") {
  NoBf16Kernel off;
  if (!calib::internal::IntAvx2Available()) return;
  std::mt19937 rng(28);
  for (int bits : {8, 6}) {
    for (const Setting& s : Settings8(bits)) {
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
      // One group per row (W8A8's channel strategy), 1024 and 1056 (33 vectors) columns.
      for (size_t cols : {size_t{1024}, size_t{1056}}) {
        std::vector<float> x, imp;
        RandomRows(rng, 19, cols, &x, &imp);
        CAPTURE(cols);
        Compare(s, x, &imp, cols, cols);
        Compare(s, x, nullptr, cols, cols);
      }
    }
  }
}

TEST_CASE("imatrix_mse int8 avx2 kernel equals the definition on adversarial groups") {
  NoBf16Kernel off;
  if (!calib::internal::IntAvx2Available()) return;
  std::vector<float> x, imp;
  AdversarialRows(&x, &imp);
  for (int bits : {8, 5}) {
    for (const Setting& s : Settings8(bits)) {
      CAPTURE(s.bits);
      CAPTURE(s.norm);
      CAPTURE(s.expand);
      CAPTURE(s.grid);
      Compare(s, x, &imp, 128, 128);
      Compare(s, x, nullptr, 128, 128);
      Compare(s, x, &imp, 128, 32);
    }
  }
  // Codes on every midpoint of q * s (dq's tie to even): rows k * s0 / 2 for every code k of
  // a scale whose significand is odd, so that step 0's q * s are bf16 midpoints.
  std::vector<float> mid;
  for (int m : {129, 131, 255, 193}) {
    const float s0 = std::ldexp(static_cast<float>(m), -7 - 3);
    for (size_t c = 0; c < 256; ++c) {
      mid.push_back(Bf16(s0 * (static_cast<float>(c % 255) - 127.f) * (c % 2 ? 1.f : 0.5f)));
    }
  }
  for (const Setting& s : Settings8(8)) {
    Compare(s, mid, nullptr, 256, 128);
    Compare(s, mid, nullptr, 256, 256);
  }
}

// Near ties between steps: per random group, step k's error (k = 1..4) made nearly equal to
// step 0's by one element's importance (the errors are linear in each importance: the
// definition's terms at both steps, computed here with QuantizeValue and RoundToDType, give the
// importance that equates them), then the group searched by the kernel against the
// definition; the errors (GroupErrorScalar) must come within 2^-16 relative for most groups,
// on both sides of the tie.
TEST_CASE("imatrix_mse int8 avx2 kernel equals the definition on near-tie groups") {
  NoBf16Kernel off;
  if (!calib::internal::IntAvx2Available()) return;
  std::mt19937 rng(31);
  const size_t n = 32;
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  size_t near = 0, runs = 0;
  for (int t = 0; t < 400; ++t) {
    const Setting s{8, t % 4 == 3 ? 2.0 : 3.0};
    std::vector<float> g(n), imp(n);
    for (size_t j = 0; j < n; ++j) {
      g[j] = Bf16(normal(rng) * (j == 0 ? 4.f : 1.f));
      imp[j] = Bf16(0.5f + u(rng));
    }
    const int k = 1 + t % 4;
    Block b = MakeBlock(s, g, &imp, n, n);
    const float m0 = *std::min_element(g.begin(), g.end());
    const float M0 = *std::max_element(g.begin(), g.end());
    calib::internal::StepParams p[2];
    for (int h = 0; h < 2; ++h) {
      float mn, mx;
      calib::internal::StepRange(m0, M0, h == 0 ? 0 : k, 20, 1.0, DType::kBF16, &mn, &mx);
      p[h] = calib::internal::ParamsOf(b, mn, mx);
    }
    // Each element's term at both steps with importance 1 (the definition's operations).
    auto term = [&](size_t j, float scale) {
      const intq::internal::GroupParams q{scale, 0};
      const int c = intq::internal::QuantizeValue(g[j], q, b.layout, true, DType::kBF16);
      const float dq = intq::internal::RoundToDType(static_cast<float>(c) * scale, DType::kBF16);
      const float d = std::fabs(dq - g[j]);
      return static_cast<double>(s.norm == 3.0 ? d * d * d : d * d);
    };
    // Element j0 carries the difference: E0 + imp t0 = E1 + imp t1.
    size_t j0 = n;
    double e0 = 0, e1 = 0;
    for (size_t j = 0; j < n; ++j) {
      const double a0 = term(j, p[0].scale), a1 = term(j, p[1].scale);
      if (j0 == n && a0 != a1 && j > 0) {
        j0 = j;
        continue;
      }
      e0 += a0 * imp[j];
      e1 += a1 * imp[j];
    }
    if (j0 == n) continue;
    const double w = (e1 - e0) / (term(j0, p[0].scale) - term(j0, p[1].scale));
    if (!(w > 0 && w < 1e6)) continue;
    // Exactly the equating importance, and one f32 ulp either side.
    const float wf = static_cast<float>(w);
    imp[j0] = t % 3 == 0 ? wf : t % 3 == 1 ? std::nextafter(wf, 0.f) : std::nextafter(wf, 1e9f);
    const double g0 = calib::internal::GroupErrorScalar(b, g.data(), imp.data(), n, p[0]);
    const double g1 = calib::internal::GroupErrorScalar(b, g.data(), imp.data(), n, p[1]);
    if (std::fabs(g0 - g1) <= g0 * 0x1p-16) ++near;
    ++runs;
    CAPTURE(t);
    Compare(s, g, &imp, n, n);
  }
  MESSAGE("near-tie groups: " << near << " of " << runs);
  CHECK(near * 2 >= runs);
  CHECK(runs >= 100);
}

// A chunk of bf16 rows for b-bit codes in groups of `group` (0: per channel).
void MakeChunk(std::mt19937& rng, size_t rows, size_t cols, int bits, int group,
               imatrix_int::Int4Chunk* c) {
  imatrix_int::MakeInt4Chunk(rng, rows, cols, c);
  c->in.params.bits = bits;
  c->in.params.group_size = group;
}

// The whole search as the conversion calls it (SearchSteps: bf16 rows read by the kernel,
// SearchBlock's dispatch) with the kernel and with it switched off (the Highway kernel on
// rows converted to f32): the same masks, for W8A16's groups of 128 and W8A8's channels.
TEST_CASE("imatrix_mse int8 avx2 kernel: SearchSteps with and without it agree") {
  NoBf16Kernel off;
  std::mt19937 rng(7);
  const size_t rows = 70, cols = 512;
  for (int group : {128, 0}) {
    CAPTURE(group);
    imatrix_int::Int4Chunk c;
    MakeChunk(rng, rows, cols, 8, group, &c);
    const size_t ng = group == 0 ? 1 : cols / group;
    calib::ImatrixOptions o;
    std::vector<uint32_t> on(rows * ng), off_masks(rows * ng);
    REQUIRE(calib::GroupSteps(c.in, calib::ImatrixFormat::kInt, c.imp, o, on.data()));
    calib::internal::SetInt8Avx2Enabled(false);
    const bool ok =
        calib::GroupSteps(c.in, calib::ImatrixFormat::kInt, c.imp, o, off_masks.data());
    calib::internal::SetInt8Avx2Enabled(true);
    REQUIRE(ok);
    CHECK(on == off_masks);
  }
}

// The codes a byte each (Int8Avx2Codes) against QuantizeValue, element by element: every
// finite bf16 x under every scale significand at exponents across [2^-100, 2^100], scales
// outside it (QuantizeValue's own path), and the zero guard eps; 8- and 4-bit bounds, packed
// (u = q + 128) and unpacked (q).
TEST_CASE("imatrix_mse int8 avx2 codes: every bf16 x under every scale significand") {
  if (!calib::internal::IntAvx2Available()) {
    CHECK(!calib::internal::Int8Avx2CodesHandle(128, 1024));
    return;
  }
  std::vector<float> xs;
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const float v = BF16ToF32(static_cast<uint16_t>(bits));
    if (std::isfinite(v)) xs.push_back(v);
  }
  const size_t group = 64;
  while (xs.size() % group != 0) xs.push_back(0.f);
  const size_t n = xs.size(), ng = n / group;
  REQUIRE(calib::internal::Int8Avx2CodesHandle(group, n));
  const std::vector<uint8_t> raw = imatrix_int::RawBf16(xs);
  std::vector<uint8_t> got(n);
  std::vector<float> scales;
  for (int e : {-100, -7, 0, 5, 99}) {
    for (uint32_t m = 128; m < 256; ++m) scales.push_back(std::ldexp(m / 128.0f, e));
  }
  for (float s : {0x1p-101f, 0x1.fep-120f, 0x1.02p100f, 0x1p120f,
                  intq::internal::ScaleEps(DType::kBF16)}) {
    scales.push_back(s);
  }
  size_t checked = 0, bad = 0;
  for (const int bits : {8, 4}) {
    const intq::internal::Layout l{bits, -(1 << (bits - 1)), (1 << (bits - 1)) - 1, group, ng,
                                   n * static_cast<size_t>(bits) / 32};
    for (const bool flip : {true, false}) {
      for (const float s : scales) {
        const std::vector<intq::internal::GroupParams> p(ng, {s, 0});
        calib::internal::Int8Avx2Codes(raw.data(), n, group, p.data(), l.qmin, l.qmax, flip,
                                       got.data());
        for (size_t i = 0; i < n; ++i) {
          const int q = intq::internal::QuantizeValue(xs[i], p[0], l, true, DType::kBF16);
          const uint8_t want = static_cast<uint8_t>(flip ? q + 128 : q & 0xFF);
          ++checked;
          if (got[i] != want && bad++ < 3) {
            MESSAGE("bits " << bits << " flip " << flip << " scale " << s << " x " << xs[i]
                            << ": got " << int(got[i]) << " want " << int(want));
          }
        }
      }
    }
  }
  MESSAGE("codes checked: " << checked);
  CHECK(bad == 0);
}

// The chosen scales of 8-bit codes (IntAvx2ChosenScales, which the 8-bit path shares with the
// int4 one) against StepRange and ComputeParams on the group's min and max.
TEST_CASE("imatrix_mse int8 avx2: chosen 8-bit scales equal StepRange and ComputeParams") {
  if (!calib::internal::IntAvx2Available()) return;
  std::mt19937 rng(12);
  size_t checked = 0, bad = 0;
  for (const auto& [grid, expand] : imatrix_int::GridExpands()) {
    const size_t n = 203;
    std::vector<float> m0(n), M0(n), amax(n);
    std::vector<uint8_t> steps(n), got_b(2 * n), want_b(2 * n);
    for (size_t k = 0; k < n; ++k) {
      float a = imatrix_int::RangeValue(rng), c = imatrix_int::RangeValue(rng);
      if (k % 3 == 0) a = -a;
      if (k % 3 != 2) c = -c;
      m0[k] = std::min(a, c);
      M0[k] = std::max(a, c);
      amax[k] = std::max(std::max(-m0[k], M0[k]), 0.0f);
      steps[k] = static_cast<uint8_t>(k % 32 < static_cast<size_t>(grid) ? k % 32 : k % grid);
    }
    const intq::internal::Layout l{8, -128, 127, 128, n, n * 128 * 8 / 32};
    std::vector<intq::internal::GroupParams> got(n);
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
        MESSAGE("m0 " << m0[k] << " M0 " << M0[k] << " step " << int(steps[k]) << ": got "
                      << got[k].scale << " want " << want.scale);
      }
    }
  }
  MESSAGE("scales checked: " << checked);
  CHECK(bad == 0);
}

// The quantize stage from the search's kept largest magnitudes (IntScalesKept: SearchSteps'
// group_absmax, IntKeptScales, QuantizeIntKept) against QuantizeChosen with every AVX2 kernel
// switched off (the Highway search, the scalar chosen parameters and codes from the rows): the
// same codes and scales, byte for byte, for W8A16 (packed 8-bit, groups of 128), W8A8
// (unpacked 8-bit, per channel) and W4A8 (unpacked 4-bit, groups of 128); the kept magnitudes
// are each group's max |x| computed here.
TEST_CASE("imatrix_mse int8 avx2: chosen codes from the search's kept magnitudes") {
  NoBf16Kernel off;
  if (!calib::internal::IntAvx2Available()) return;  // IntScalesKept is false there
  std::mt19937 rng(13);
  struct Case {
    int bits, group;
    bool packed;
  };
  for (const Case cs : {Case{8, 128, true}, Case{8, 0, false}, Case{4, 128, false},
                        Case{8, 64, false}}) {
    for (const double expand : {1.0, 1.25}) {
      for (const int grid : {20, 10}) {
        CAPTURE(cs.bits);
        CAPTURE(cs.group);
        CAPTURE(cs.packed);
        CAPTURE(expand);
        CAPTURE(grid);
        const size_t rows = 37, cols = 512;
        const size_t group = cs.group == 0 ? cols : static_cast<size_t>(cs.group);
        const size_t ng = cols / group;
        imatrix_int::Int4Chunk c;
        MakeChunk(rng, rows, cols, cs.bits, cs.group, &c);
        // A row of absurd magnitude (scales outside [2^-100, 2^100]) and a row of zeros.
        for (size_t j = 0; j < cols; ++j) {
          c.x[3 * cols + j] = Bf16(c.x[3 * cols + j] * 0x1p110f);
          c.x[5 * cols + j] = 0.f;
        }
        c.raw = imatrix_int::RawBf16(c.x);
        c.in.data = c.raw.data();
        const WeightChunk& in = c.in;
        calib::ImatrixOptions o;
        o.expand = expand;
        o.grid = grid;
        REQUIRE(calib::IntScalesKept(in, o, cs.packed));
        const imatrix_int::KeptSearch kept =
            imatrix_int::KeptScalesFromSearch(in, c.imp, o, c.x, rows * ng, group);
        const std::vector<uint8_t>& scales = kept.scales;
        const std::vector<uint32_t>& masks = kept.masks;
        const int stop = kept.stop;
        std::vector<uint8_t> codes_k(rows * cols), scales_k(rows * ng * 2);
        ChunkOutputs out_k;
        out_k.out[0] = codes_k.data();
        out_k.out[1] = scales_k.data();
        REQUIRE(calib::QuantizeIntKept(in, scales.data(), nullptr, out_k, cs.packed));
        // The reference: every AVX2 kernel off.
        const imatrix_int::ChosenByDefinition ref = imatrix_int::ChosenWithKernelsOff(
            in, c.imp, o, rows * ng, rows * cols, cs.packed);
        CHECK(!ref.kept_off);
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
TEST_CASE("imatrix_mse int8 avx2 kernel refuses rows with an Inf or NaN") {
  NoBf16Kernel off;
  if (!calib::internal::IntAvx2Available()) return;
  std::mt19937 rng(9);
  const size_t rows = 40, cols = 512;
  for (int group : {128, 0}) {
    imatrix_int::Int4Chunk c;
    MakeChunk(rng, rows, cols, 8, group, &c);
    CAPTURE(group);
    imatrix_int::CheckRefusesNonFinite(c.in, c.raw, c.imp, {0x7F80, 0xFF80, 0x7FC1},
                                       {0, 130, 9 * cols + 300, rows * cols - 1},
                                       calib::internal::SetInt8Avx2Enabled);
  }
}

}  // namespace
}  // namespace quench::testing
