// The AVX-512 BF16 imatrix_mse search for symmetric int codes of bf16 weights
// (src/calib/imatrix_mse_int_bf16.h) against the scalar definition
// (src/calib/imatrix_mse_scalar.cc): every term of every finite bf16 x at scales across the
// range the kernel takes, and the search's masks, improved steps and best errors (bit for
// bit) on random groups and on adversarial ones (ties between steps and groups, values on
// rounding midpoints, zeros and signed zeros, subnormals, scales at both ends of the range and
// beyond it, zero and huge importance), for 2-4 bit codes, norms 2 and 3, several group sizes,
// step ranges, expand and grid settings. On a CPU without AVX-512 BF16 the kernel must
// decline every block (and the Highway kernels keep the search).
#include <doctest/doctest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "calib/imatrix_mse.h"
#include "calib/imatrix_mse_int_bf16.h"
#include "calib/imatrix_mse_kernel.h"
#include "imatrix_int_cases.h"
#include "schemes/avx512bf16.h"
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

// The kernel (steps in two ranges, as a caller may run them; exact_best true and false)
// against the definition over steps 0..last: the same masks and improved steps, the same best
// errors bit for bit (exact_best), or a lower bound of them (exact_best false).
void Compare(const Setting& s, const std::vector<float>& x, const std::vector<float>* imp,
             size_t cols, size_t group) {
  Block b = MakeBlock(s, x, imp, cols, group);
  const size_t groups = b.rows * (cols / group);
  std::vector<double> best_s(groups, FLT_MAX), best_k(groups, FLT_MAX), best_l(groups, FLT_MAX);
  std::vector<uint32_t> masks_s(groups, 0u), masks_k(groups, 0u), masks_l(groups, 0u);
  uint32_t imp_s = 0, imp_k = 0, imp_l = 0;
  b.i0 = 0;
  b.i1 = s.last;
  b.best = best_s.data();
  b.masks = masks_s.data();
  b.improved = &imp_s;
  REQUIRE(calib::internal::SearchBlockScalar(b));
  const int split = std::min(6, s.last);
  for (int part = 0; part < 2; ++part) {
    b.i0 = part == 0 ? 0 : split + 1;
    b.i1 = part == 0 ? split : s.last;
    if (b.i0 > b.i1) continue;
    b.best = best_k.data();
    b.masks = masks_k.data();
    b.improved = &imp_k;
    b.exact_best = true;
    REQUIRE(calib::internal::IntBf16Handles(b));
    CHECK(calib::internal::SearchIntBf16(b));
  }
  b.i0 = 0;
  b.i1 = s.last;
  b.best = best_l.data();
  b.masks = masks_l.data();
  b.improved = &imp_l;
  b.exact_best = false;
  CHECK(calib::internal::SearchIntBf16(b));
  CHECK(imp_k == imp_s);
  CHECK(imp_l == imp_s);
  size_t diff = 0, diff_l = 0;
  for (size_t g = 0; g < groups; ++g) {
    if (std::memcmp(&best_k[g], &best_s[g], sizeof(double)) != 0 || masks_k[g] != masks_s[g]) {
      if (diff++ < 3) {
        MESSAGE("group " << g << ": kernel " << best_k[g] << " mask " << masks_k[g]
                         << ", definition " << best_s[g] << " mask " << masks_s[g]);
      }
    }
    if ((masks_l[g] != masks_s[g] || !(best_l[g] <= best_s[g])) && diff_l++ < 3) {
      MESSAGE("exact_best false, group " << g << ": mask " << masks_l[g] << " best "
                                         << best_l[g] << ", definition " << masks_s[g]);
    }
  }
  CHECK(diff == 0);
  CHECK(diff_l == 0);
}

TEST_CASE("imatrix_mse int bf16 kernel: every term of every bf16 x equals the definition's") {
  if (!avx512bf16::Available()) {
    std::vector<float> x(32, 1.f);
    Block b = MakeBlock(Setting{}, x, nullptr, 32, 32);
    b.i1 = 19;
    CHECK(!calib::internal::IntBf16Handles(b));
    return;
  }
  imatrix_int::CheckEveryTerm(calib::internal::IntBf16Handles, calib::internal::IntBf16Terms,
                              {Setting{4, 3.0}, Setting{4, 2.0}, Setting{3, 3.0}, Setting{2, 3.0}});
}

TEST_CASE("imatrix_mse int bf16 kernel equals the definition on random groups") {
  if (!avx512bf16::Available()) return;  // the case above checks that it declines
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

TEST_CASE("imatrix_mse int bf16 kernel equals the definition on adversarial groups") {
  if (!avx512bf16::Available()) return;
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
TEST_CASE("imatrix_mse int bf16 chosen codes equal the definition") {
  if (!avx512bf16::Available()) {
    CHECK(!calib::internal::IntBf16CodesHandle(128, 1024));
    return;
  }
  imatrix_int::CheckChosenCodes({calib::internal::IntBf16CodesHandle,
                                 calib::internal::IntBf16RowMinMax,
                                 calib::internal::IntBf16Codes4});
}

// The whole search as the conversion calls it (SearchSteps: rows converted to f32 in blocks,
// SearchBlock's dispatch) with the kernel and with it switched off (the Highway kernels):
// the same masks.
TEST_CASE("imatrix_mse int bf16 kernel: SearchSteps with and without it agree") {
  std::mt19937 rng(7);
  const size_t rows = 70, cols = 512;
  imatrix_int::Int4Chunk c;
  imatrix_int::MakeInt4Chunk(rng, rows, cols, &c);
  const WeightChunk& in = c.in;
  const std::vector<float>& imp = c.imp;
  calib::ImatrixOptions o;
  std::vector<uint32_t> on(rows * 4), off(rows * 4);
  REQUIRE(calib::GroupSteps(in, calib::ImatrixFormat::kInt, imp, o, on.data()));
  calib::internal::SetIntBf16Enabled(false);
  const bool ok = calib::GroupSteps(in, calib::ImatrixFormat::kInt, imp, o, off.data());
  calib::internal::SetIntBf16Enabled(true);
  REQUIRE(ok);
  CHECK(on == off);
}

// The quantize stage from the kernel's kept largest magnitudes (IntScalesKept: SearchSteps'
// group_absmax written by this kernel's first pass, IntKeptScales, QuantizeIntKept with
// IntBf16Codes4 for packed int4 and Int8Avx2Codes for W4A8's byte codes) against
// QuantizeChosen with every int kernel switched off (the Highway search, the scalar chosen
// parameters and codes from the rows): the same codes and scales, byte for byte; the kept
// magnitudes equal each group's max |x| computed here. Groups of 64 and 128, expand 1 and
// 1.25, grids 20 and 10, with a row of absurd magnitude (scales outside [2^-100, 2^100]) and
// a row of zeros.
TEST_CASE("imatrix_mse int bf16 kernel: chosen scales from the search's kept magnitudes") {
  if (!avx512bf16::Available()) {
    CHECK(!calib::internal::IntBf16CodesHandle(128, 512));
    return;
  }
  std::mt19937 rng(17);
  for (const bool packed : {true, false}) {
    for (const size_t group : {size_t{64}, size_t{128}}) {
      for (const double expand : {1.0, 1.25}) {
        for (const int grid : {20, 10}) {
          CAPTURE(packed);
          CAPTURE(group);
          CAPTURE(expand);
          CAPTURE(grid);
          const size_t rows = 37, cols = 512, ng = cols / group;
          imatrix_int::Int4Chunk c;
          RandomRows(rng, rows, cols, &c.x, &c.imp);
          for (size_t j = 0; j < cols; ++j) {
            c.x[3 * cols + j] = Bf16(c.x[3 * cols + j] * 0x1p110f);
            c.x[5 * cols + j] = 0.f;
          }
          imatrix_int::SetInt4Chunk(rows, cols, /*symmetric=*/true, &c);
          c.in.params.group_size = static_cast<int>(group);
          const WeightChunk& in = c.in;
          calib::ImatrixOptions o;
          o.expand = expand;
          o.grid = grid;
          // This kernel takes the search (and, packed, the codes).
          Setting s;
          s.expand = expand;
          s.grid = grid;
          s.last = calib::LastStep(o);
          REQUIRE(calib::internal::IntBf16Handles(MakeBlock(s, c.x, &c.imp, cols, group)));
          if (packed) REQUIRE(calib::internal::IntBf16CodesHandle(group, cols));
          REQUIRE(calib::IntScalesKept(in, o, packed));
          const imatrix_int::KeptSearch kept =
              imatrix_int::KeptScalesFromSearch(in, c.imp, o, c.x, rows * ng, group);
          const size_t row_bytes = packed ? cols / 2 : cols;
          std::vector<uint8_t> codes_k(rows * row_bytes), scales_k(rows * ng * 2);
          ChunkOutputs out_k;
          out_k.out[0] = codes_k.data();
          out_k.out[1] = scales_k.data();
          REQUIRE(calib::QuantizeIntKept(in, kept.scales.data(), nullptr, out_k, packed));
          const imatrix_int::ChosenByDefinition ref = imatrix_int::ChosenWithKernelsOff(
              in, c.imp, o, rows * ng, rows * row_bytes, packed);
          CHECK(!ref.kept_off);
          CHECK(kept.masks == ref.masks);
          CHECK(kept.stop == ref.stop);
          CHECK(kept.scales == ref.scales);
          CHECK(scales_k == ref.scales);
          CHECK(codes_k == ref.codes);
        }
      }
    }
  }
}

// An Inf or NaN anywhere in the rows: the kernel's own first pass refuses the block
// (SearchSteps runs no AllFinite before it), as SearchSteps does with it switched off.
TEST_CASE("imatrix_mse int bf16 kernel refuses rows with an Inf or NaN") {
  imatrix_int::CheckInt4RefusesNonFinite(calib::internal::SetIntBf16Enabled);
}

}  // namespace
}  // namespace quench::testing
