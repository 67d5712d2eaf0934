// What the tests of the hand-written imatrix_mse int kernels share
// (tests/test_imatrix_int_bf16.cc for AVX-512 BF16, tests/test_imatrix_int_avx2.cc,
// test_imatrix_int_avx2_asym.cc and test_imatrix_int8_avx2.cc for AVX2):
// the settings they run, random and adversarial rows, and the check of the chosen
// quantization's row helpers against the definition.
#ifndef QUENCH_TESTS_IMATRIX_INT_CASES_H_
#define QUENCH_TESTS_IMATRIX_INT_CASES_H_

#include <doctest/doctest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include <initializer_list>

#include "calib/imatrix_mse.h"
#include "calib/imatrix_mse_int_avx2.h"
#include "calib/imatrix_mse_int_bf16.h"
#include "calib/imatrix_mse_kernel.h"
#include "schemes/chunk.h"
#include "schemes/float_formats.h"
#include "schemes/int_shared.h"

namespace quench::testing::imatrix_int {

inline float Bf16(float v) { return intq::internal::RoundToDType(v, DType::kBF16); }

struct Setting {
  int bits = 4;
  double norm = 3.0;
  double expand = 1.0;
  int grid = 20;
  int last = 19;  // steps 0..last
};

// Random rows: per row a magnitude over six decades, normal values with outliers, exact
// duplicates, values on the row's code midpoints; importance log-uniform with zeros.
inline void RandomRows(std::mt19937& rng, size_t rows, size_t cols, std::vector<float>* x,
                std::vector<float>* imp) {
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  x->resize(rows * cols);
  for (size_t r = 0; r < rows; ++r) {
    const float mag = std::pow(10.f, -4.f + 6.f * u(rng));
    const float step = Bf16(mag / 2.f);
    for (size_t c = 0; c < cols; ++c) {
      float v = normal(rng) * mag;
      const float w = u(rng);
      if (w < 0.02f) v *= 8.f;
      else if (w < 0.07f && c > 0) v = (*x)[r * cols + c - 1];
      else if (w < 0.12f) v = step * (std::floor(normal(rng) * 4.f) + 0.5f);  // midpoints
      (*x)[r * cols + c] = Bf16(v);
    }
  }
  imp->resize(cols);
  for (size_t c = 0; c < cols; ++c) {
    (*imp)[c] = u(rng) < 0.05f ? 0.f : Bf16(std::pow(10.f, -3.f + 5.f * u(rng)));
  }
}

// The bf16 bytes of values that are bf16 already.
inline std::vector<uint8_t> RawBf16(const std::vector<float>& x) {
  std::vector<uint8_t> raw(x.size() * 2);
  for (size_t i = 0; i < x.size(); ++i) {
    const uint16_t h = F32ToBF16(x[i]);
    std::memcpy(&raw[2 * i], &h, 2);
  }
  return raw;
}

// Rows of n of every finite bf16 value (shuffled) followed by 64 random rows (RandomRows),
// as f32 values and as raw bf16 bytes: what the row helpers' checks read.
struct Bf16Rows {
  std::vector<float> x;
  std::vector<uint8_t> raw;
};
inline Bf16Rows EveryBf16Rows(std::mt19937& rng, size_t n) {
  Bf16Rows rows;
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const float v = BF16ToF32(static_cast<uint16_t>(bits));
    if (std::isfinite(v)) rows.x.push_back(v);
  }
  std::shuffle(rows.x.begin(), rows.x.end(), rng);
  std::vector<float> rnd, imp;
  RandomRows(rng, 64, n, &rnd, &imp);
  rows.x.insert(rows.x.end(), rnd.begin(), rnd.end());
  rows.x.resize(rows.x.size() / n * n);
  rows.raw = RawBf16(rows.x);
  return rows;
}

// A chunk of bf16 rows x (and their importance imp) for int4 in groups of 128, as the
// conversion hands it to GroupSteps; `in` points into `raw`.
struct Int4Chunk {
  std::vector<float> x, imp;
  std::vector<uint8_t> raw;
  WeightChunk in;
};
// `in` and `raw` for the rows already in c->x (rows x cols), symmetric or not.
inline void SetInt4Chunk(size_t rows, size_t cols, bool symmetric, Int4Chunk* c) {
  c->raw = RawBf16(c->x);
  c->in = WeightChunk{};
  c->in.data = c->raw.data();
  c->in.dtype = DType::kBF16;
  c->in.rows = rows;
  c->in.cols = cols;
  c->in.params.bits = 4;
  c->in.params.group_size = 128;
  c->in.params.symmetric = symmetric;
}
// The kept-scales path as the conversion takes it: the search (SearchSteps) of `in` (the
// bf16 rows of x, `groups` groups of `group`) keeping each group's largest magnitude, which
// must equal max |x| over the group; then IntKeptScales from those maxima and the masks,
// stopped where StopStep says: the chosen scales (2 bytes a group), the masks and the stop.
struct KeptSearch {
  std::vector<uint8_t> scales;
  std::vector<uint32_t> masks;
  int stop = 0;
};
inline KeptSearch KeptScalesFromSearch(const WeightChunk& in, const std::vector<float>& imp,
                                       const calib::ImatrixOptions& o,
                                       const std::vector<float>& x, size_t groups,
                                       size_t group) {
  const int last = calib::LastStep(o);
  std::vector<double> best(groups, FLT_MAX);
  std::vector<uint32_t> masks(groups, 0u);
  std::vector<float> absmax(groups, -1.0f);
  uint32_t bits = 0;
  REQUIRE(calib::SearchSteps(in, calib::ImatrixFormat::kInt, imp, o, 0, last, best.data(),
                             masks.data(), &bits, /*exact_best=*/false, absmax.data()));
  for (size_t k = 0; k < groups; ++k) {
    float m = 0.0f;
    for (size_t j = 0; j < group; ++j) m = std::max(m, std::fabs(x[k * group + j]));
    REQUIRE(absmax[k] == m);
  }
  KeptSearch r;
  r.stop = calib::StopStep(bits, o);
  r.scales.resize(groups * 2);
  calib::IntKeptScales(in, o, absmax.data(), masks.data(), groups, r.stop, r.scales.data());
  r.masks = std::move(masks);
  return r;
}
// The same rows by the definition's path, every AVX2 and AVX-512 BF16 int kernel switched
// off (each switch restored after): SearchSteps,
// each group's chosen step, QuantizeChosen into code_bytes of codes and 2 bytes of scale a
// group; kept_off: whether IntScalesKept still claims the rows with the kernels off.
struct ChosenByDefinition {
  std::vector<uint32_t> masks;
  int stop = 0;
  std::vector<uint8_t> codes, scales;
  bool kept_off = false;
};
inline ChosenByDefinition ChosenWithKernelsOff(const WeightChunk& in,
                                               const std::vector<float>& imp,
                                               const calib::ImatrixOptions& o, size_t groups,
                                               size_t code_bytes, bool packed) {
  ChosenByDefinition r;
  const bool bf16_on = calib::internal::IntBf16Enabled();
  calib::internal::SetIntAvx2Enabled(false);
  calib::internal::SetIntBf16Enabled(false);
  std::vector<double> best(groups, FLT_MAX);
  r.masks.assign(groups, 0u);
  uint32_t bits = 0;
  const bool searched =
      calib::SearchSteps(in, calib::ImatrixFormat::kInt, imp, o, 0, calib::LastStep(o),
                         best.data(), r.masks.data(), &bits, /*exact_best=*/false);
  std::vector<uint8_t> steps(groups);
  r.stop = calib::StopStep(bits, o);
  for (size_t k = 0; k < groups; ++k) steps[k] = calib::ChosenStep(r.masks[k], r.stop);
  r.codes.resize(code_bytes);
  r.scales.resize(groups * 2);
  ChunkOutputs out;
  out.out[0] = r.codes.data();
  out.out[1] = r.scales.data();
  const bool quantized = calib::QuantizeChosen(in, calib::ImatrixFormat::kInt, o, steps.data(),
                                               packed, out);
  r.kept_off = calib::IntScalesKept(in, o, packed);
  calib::internal::SetIntAvx2Enabled(true);
  calib::internal::SetIntBf16Enabled(bf16_on);
  REQUIRE(searched);
  REQUIRE(quantized);
  return r;
}
// Random rows (RandomRows), symmetric.
inline void MakeInt4Chunk(std::mt19937& rng, size_t rows, size_t cols, Int4Chunk* c) {
  RandomRows(rng, rows, cols, &c->x, &c->imp);
  SetInt4Chunk(rows, cols, /*symmetric=*/true, c);
}

inline std::vector<Setting> Settings() {
  return {{4, 3.0, 1.0, 20, 19}, {4, 2.0, 1.0, 20, 19}, {3, 3.0, 1.0, 20, 19},
          {2, 3.0, 1.0, 20, 19}, {4, 3.0, 1.25, 20, 19}, {4, 3.0, 0.85, 20, 19},
          {4, 2.0, 1.5, 30, 26},  {4, 3.0, 1.0, 32, 31}};
}

// Adversarial groups of 128: all zeros, signed zeros, constants, one nonzero, identical groups
// side by side, values on every code midpoint of a step (ties for the rounding), subnormals
// and values whose quotients are subnormal, magnitudes whose scales leave 2^-100 .. 2^100
// (the definition's path) or sit at its ends, the bf16 maximum, and importance with zeros,
// signed zeros and 1e30 (terms that overflow to Inf, and 0 * Inf keys).
inline void AdversarialRows(std::vector<float>* x, std::vector<float>* imp) {
  const size_t n = 128;
  std::vector<std::vector<float>> rows;
  auto add = [&](auto f) {
    std::vector<float> r(n);
    for (size_t c = 0; c < n; ++c) r[c] = Bf16(f(c));
    rows.push_back(r);
  };
  add([](size_t) { return 0.f; });
  add([](size_t c) { return c % 2 ? 0.f : -0.f; });
  add([](size_t) { return 0.75f; });
  add([](size_t) { return -3.f; });
  add([](size_t c) { return c == 5 ? 1.f : 0.f; });
  add([](size_t c) { return static_cast<float>(c % 16) * 0.25f - 2.f; });
  add([](size_t c) { return (static_cast<float>(c % 16) - 7.5f) * 0.5f; });  // midpoints
  add([](size_t c) { return (static_cast<float>(c % 17) - 8.f) * 0.25f + 0.125f; });
  add([](size_t c) { return 1e-38f * static_cast<float>(c % 7) * (c % 2 ? 1.f : -1.f); });
  add([](size_t c) { return c == 0 ? 1.f : 1e-39f * static_cast<float>(c % 5); });
  add([](size_t c) {
    return std::ldexp(1.f + static_cast<float>(c % 9) / 16.f, -97) * (c % 2 ? 1.f : -1.f);
  });
  add([](size_t c) {
    return std::ldexp(1.f + static_cast<float>(c % 9) / 16.f, 102) * (c % 3 ? 1.f : -1.f);
  });
  add([](size_t c) { return std::ldexp(static_cast<float>(c % 15) - 7.f, 99); });
  add([](size_t c) { return (c % 2 ? 3.3895314e38f : -3.3895314e38f) * (c % 3 ? 1.f : 0.5f); });
  add([](size_t c) { return (c % 8 == 0 ? 6.f : 0.f) + 0.25f * static_cast<float>(c % 5); });
  x->clear();
  for (const auto& r : rows) x->insert(x->end(), r.begin(), r.end());
  imp->assign(n, 1.f);
  for (size_t c = 0; c < n; ++c) {
    (*imp)[c] = c % 11 == 0 ? 0.f : c % 13 == 0 ? 1e30f : c % 17 == 0 ? -0.f : 1.f + c % 3;
  }
}

// A bf16 value for the chosen parameters' tests: 0, a subnormal, one near bf16's largest
// (ranges that overflow to Inf), or one of any sign-free magnitude.
inline float RangeValue(std::mt19937& rng) {
  std::uniform_int_distribution<int> exp_of(-133, 127), pick(0, 9);
  std::uniform_real_distribution<float> mant(1.0f, 2.0f);
  switch (pick(rng)) {
    case 0: return 0.0f;
    case 1: return Bf16(std::ldexp(mant(rng), -130));  // subnormal
    case 2: return Bf16(std::ldexp(mant(rng), 126));   // near the largest
    default: return Bf16(std::ldexp(mant(rng), exp_of(rng) / 4));
  }
}

// The (grid, expand) settings those tests run: defaults, other grids, widened and narrowed.
inline std::vector<std::pair<int, double>> GridExpands() {
  return {{20, 1.0}, {10, 1.0}, {31, 1.0}, {20, 1.8}, {20, 0.5}, {25, 1.25}};
}

// A block of the kernels' int search over x (rows of `cols`) with setting s.
inline calib::internal::Block MakeBlock(const Setting& s, const std::vector<float>& x,
                                        const std::vector<float>* imp, size_t cols,
                                        size_t group) {
  calib::internal::Block b;
  b.format = calib::ImatrixFormat::kInt;
  b.dtype = DType::kBF16;
  b.layout.bits = s.bits;
  b.layout.qmin = -(1 << (s.bits - 1));
  b.layout.qmax = (1 << (s.bits - 1)) - 1;
  b.layout.group = group;
  b.layout.n_groups = cols / group;
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

// An AVX2 int search (`search`, on blocks `handles` takes; steps in two ranges, as a caller
// may run them; exact_best true and false; from f32 and from bf16 rows) on block b over x
// against the definition over steps 0..last, and against the Highway kernel (the AVX2
// kernels switched off): the same masks and improved steps, the same best errors bit for bit
// (exact_best), or a lower bound of them (exact_best false).
inline void CompareAvx2Search(calib::internal::Block b, const std::vector<float>& x, int last,
                              bool (*handles)(const calib::internal::Block&),
                              bool (*search)(const calib::internal::Block&)) {
  const size_t groups = b.rows * (b.cols / b.group);
  const std::vector<uint8_t> raw = RawBf16(x);
  std::vector<double> best_s(groups, FLT_MAX);
  std::vector<uint32_t> masks_s(groups, 0u);
  uint32_t imp_s = 0;
  b.i0 = 0;
  b.i1 = last;
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
    const int split = std::min(6, last);
    for (int part = 0; part < 2; ++part) {
      b.i0 = part == 0 ? 0 : split + 1;
      b.i1 = part == 0 ? split : last;
      if (b.i0 > b.i1) continue;
      b.best = best_k.data();
      b.masks = masks_k.data();
      b.improved = &imp_k;
      b.exact_best = true;
      REQUIRE(handles(b));
      REQUIRE(search(b));
    }
    b.i0 = 0;
    b.i1 = last;
    b.best = best_l.data();
    b.masks = masks_l.data();
    b.improved = &imp_l;
    b.exact_best = false;
    REQUIRE(search(b));
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

// Every term of every finite bf16 x through a kernel's term function (IntBf16Terms,
// IntAvx2Terms; available on this CPU, so `handles` takes the blocks) against the definition's
// (imatrix_mse_scalar.cc GroupErrorScalar's term), bit for bit, under scales of many
// significands at exponents across the range, importance 1 and varying, for each setting.
inline void CheckEveryTerm(bool (*handles)(const calib::internal::Block&),
                           bool (*terms)(const calib::internal::Block&, float, const float*,
                                         const float*, size_t, float*),
                           std::initializer_list<Setting> settings) {
  // Every finite bf16 pattern, with importance 1 and a bf16 importance varying by element.
  std::vector<float> xs, ones, imp;
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const float v = BF16ToF32(static_cast<uint16_t>(bits));
    if (std::isfinite(v)) xs.push_back(v);
  }
  while (xs.size() % 32 != 0) xs.push_back(0.f);
  ones.assign(xs.size(), 1.f);
  for (size_t i = 0; i < xs.size(); ++i) imp.push_back(Bf16(0.5f + static_cast<float>(i % 37)));
  size_t checked = 0, mismatched = 0;
  for (const Setting& s : settings) {
    calib::internal::Block b = MakeBlock(s, xs, &imp, xs.size(), 32);
    b.i1 = 19;
    REQUIRE(handles(b));
    std::vector<float> got(xs.size());
    for (int e : {-100, -40, -7, -1, 0, 3, 30, 99}) {
      for (uint32_t m = 128; m < 256; m += (e == 0 || e == -7 ? 1 : 9)) {
        const float scale = std::ldexp(static_cast<float>(m) / 128.0f, e);
        for (const std::vector<float>* w : {&ones, &imp}) {
          REQUIRE(terms(b, scale, xs.data(), w->data(), xs.size(), got.data()));
          const intq::internal::GroupParams p{scale, 0};
          for (size_t i = 0; i < xs.size(); ++i) {
            // The definition (imatrix_mse_scalar.cc GroupErrorScalar's term).
            const int q = intq::internal::QuantizeValue(xs[i], p, b.layout, true, DType::kBF16);
            const float dq =
                intq::internal::RoundToDType(static_cast<float>(q) * scale, DType::kBF16);
            const float d = std::fabs(dq - xs[i]);
            const float want = (s.norm == 3.0 ? d * d * d : d * d) * (*w)[i];
            ++checked;
            if (std::memcmp(&want, &got[i], 4) != 0 && mismatched++ < 3) {
              MESSAGE("bits " << s.bits << " scale " << scale << " x " << xs[i] << ": want "
                              << want << " got " << got[i]);
            }
          }
        }
      }
    }
  }
  MESSAGE("terms checked: " << checked);
  CHECK(mismatched == 0);
}

// A kernel's chosen-quantization row helpers (imatrix_mse_int_bf16.h, imatrix_mse_int_avx2.h).
struct ChosenCodesKernel {
  bool (*handle)(size_t group, size_t n);
  // Null for a kernel whose chosen quantization reads only each group's largest magnitude
  // (the AVX2 one: its own test checks IntAvx2RowAbsMax).
  bool (*row_minmax)(const uint8_t* row, size_t n_groups, size_t group, float* mn, float* mx);
  void (*codes4)(const uint8_t* row, size_t n, size_t group,
                 const intq::internal::GroupParams* p, uint8_t* dst);
};

// The row helpers of k (available on this CPU) against the definition: each group's min and
// max (min_element / max_element of the f32 values, up to the sign of a zero), and every
// packed code u = QuantizeValue(x, scale) + 8 computed here element by element, on every
// finite bf16 x (rows of 1024) and on random rows, under scales that clip hard (the imatrix
// steps shrink the range), scales outside 2^-100 .. 2^100 (the division path), and the zero
// guard eps; an Inf or NaN in a row refused.
inline void CheckChosenCodes(const ChosenCodesKernel& k) {
  std::mt19937 rng(3);
  const size_t n = 1024;
  const Bf16Rows rows = EveryBf16Rows(rng, n);
  const std::vector<float>& xs = rows.x;
  const std::vector<uint8_t>& raw = rows.raw;
  intq::internal::Layout l{4, -8, 7, 128, 8, 128};
  std::uniform_int_distribution<int> exp_of(-140, 140);
  size_t checked = 0, bad_codes = 0, bad_ranges = 0;
  for (size_t group : {size_t{64}, size_t{128}, size_t{1024}}) {
    REQUIRE(k.handle(group, n));
    const size_t ng = n / group;
    std::vector<float> mn(ng), mx(ng);
    std::vector<intq::internal::GroupParams> p(ng);
    std::vector<uint8_t> got(n / 2), want(n / 2);
    for (size_t r = 0; r < xs.size() / n; ++r) {
      const float* x = xs.data() + r * n;
      const bool ranges = k.row_minmax != nullptr;
      if (ranges) REQUIRE(k.row_minmax(raw.data() + r * n * 2, ng, group, mn.data(), mx.data()));
      for (size_t k = 0; k < ng; ++k) {
        const float lo = *std::min_element(x + k * group, x + (k + 1) * group);
        const float hi = *std::max_element(x + k * group, x + (k + 1) * group);
        if (ranges && !(mn[k] == lo && mx[k] == hi)) ++bad_ranges;
        // A bf16 scale: the group's own (amax / 7.5), that times 2^-4 .. 2^-1 (clipping), a
        // random power of two times a random mantissa, or eps.
        const int kind = static_cast<int>((r + k) % 4);
        float s = Bf16(std::max(std::fabs(lo), std::fabs(hi)) / 7.5f);
        if (kind == 1) s = Bf16(s * std::ldexp(1.f, -1 - static_cast<int>(r % 4)));
        if (kind == 2) s = Bf16(std::ldexp(1.f + static_cast<float>(r % 128) / 128.f, exp_of(rng)));
        if (kind == 3 || s == 0.f || !std::isfinite(s)) s = 0.0078125f;
        p[k] = {s, 0};
      }
      k.codes4(raw.data() + r * n * 2, n, group, p.data(), got.data());
      for (size_t c = 0; c < n; c += 2) {
        const auto u = [&](size_t i) {
          return static_cast<uint8_t>(
              intq::internal::QuantizeValue(x[i], p[i / group], l, true, DType::kBF16) + 8);
        };
        want[c / 2] = static_cast<uint8_t>(u(c) | u(c + 1) << 4);
      }
      for (size_t i = 0; i < n / 2; ++i) {
        ++checked;
        if (got[i] != want[i] && bad_codes++ < 3) {
          MESSAGE("row " << r << " byte " << i << ": got " << int(got[i]) << " want "
                         << int(want[i]) << " scale " << p[2 * i / group].scale);
        }
      }
    }
  }
  MESSAGE("code bytes checked: " << checked);
  CHECK(bad_codes == 0);
  CHECK(bad_ranges == 0);
  // An Inf or NaN in a row: refused.
  if (k.row_minmax == nullptr) return;
  std::vector<uint8_t> row(2 * n, 0);
  const uint16_t inf = 0x7F80, nan = 0xFFC1;
  std::memcpy(&row[2 * 700], &inf, 2);
  float a[16], b[16];
  CHECK(!k.row_minmax(row.data(), 8, 128, a, b));
  std::memcpy(&row[2 * 700], &nan, 2);
  CHECK(!k.row_minmax(row.data(), 8, 128, a, b));
}

// An Inf or NaN (each of `bad`, a bf16 pattern) written at each element index of `at` in a
// copy of `raw`, the bf16 rows of `in`: GroupSteps refuses the rows with the kernel under test
// on (its own pass finds them: SearchSteps runs no AllFinite before the hand-written kernels),
// and with it switched off by `set_enabled(false)` for the call, as the definition refuses them.
inline void CheckRefusesNonFinite(WeightChunk in, const std::vector<uint8_t>& raw,
                                  const std::vector<float>& imp,
                                  std::initializer_list<uint16_t> bad,
                                  std::initializer_list<size_t> at, void (*set_enabled)(bool)) {
  calib::ImatrixOptions o;
  std::vector<uint32_t> masks(in.rows * in.cols);
  in.data = raw.data();
  REQUIRE(calib::GroupSteps(in, calib::ImatrixFormat::kInt, imp, o, masks.data()));
  for (const uint16_t b : bad) {
    for (const size_t i : at) {
      CAPTURE(b);
      CAPTURE(i);
      std::vector<uint8_t> r = raw;
      std::memcpy(&r[2 * i], &b, 2);
      in.data = r.data();
      CHECK_FALSE(calib::GroupSteps(in, calib::ImatrixFormat::kInt, imp, o, masks.data()));
      set_enabled(false);
      const bool off_ok = calib::GroupSteps(in, calib::ImatrixFormat::kInt, imp, o, masks.data());
      set_enabled(true);
      CHECK_FALSE(off_ok);
    }
  }
}

// CheckRefusesNonFinite on 40 random symmetric int4 rows of 512 (MakeInt4Chunk, seed 9):
// +Inf, -Inf and two NaNs at the first, a middle and the last element and across groups and
// rows; the kernel under test switched by `set_enabled`.
inline void CheckInt4RefusesNonFinite(void (*set_enabled)(bool)) {
  std::mt19937 rng(9);
  const size_t rows = 40, cols = 512;
  Int4Chunk c;
  MakeInt4Chunk(rng, rows, cols, &c);
  CheckRefusesNonFinite(c.in, c.raw, c.imp, {0x7F80, 0xFF80, 0x7FC1, 0xFFFF},
                        {0, 7, 130, 9 * cols + 300, rows * cols - 1}, set_enabled);
}

}  // namespace quench::testing::imatrix_int

#endif  // QUENCH_TESTS_IMATRIX_INT_CASES_H_
