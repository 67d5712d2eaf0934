// AWQ's bound kernel (src/schemes/int_scaled_bound.h) against the scalar definition
// (ScaledErrorRowScalar, ScaledDot4), on every Highway target compiled in: W s and the
// definition's f64 dW (from the kernel's BF16 back values) bit for bit, the exact row term
// from them bit for bit, and the f32 row loss within the stated
// bound of the definition's, for int4/int8, symmetric and asymmetric, group and channel
// layouts, duo (f64) and f32 scales, weights of every magnitude with zeros and ties; on
// columns built so that the f32 shortcut of W s or of deq / s would round to another BF16
// value than the definition (the kernel must recompute those lanes); and the search built on
// it choosing as the exhaustive search when every candidate ties; the two-candidate f64 sum
// (ScaledLossFromBack2) against two single ones.
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "awq_rows.h"
#include "calib/awq.h"
#include "kernel_test_util.h"
#include "schemes/int_scaled_bound.h"
#include "schemes/int_scaled_error.h"

namespace quench::testing {
namespace {

namespace iq = intq::internal;

using Case = AwqCase;

// Kernel against the definition on one row and candidate; returns whether the kernel ran.
bool Check(const std::vector<float>& w, const std::vector<double>& s,
           const std::vector<double>& h, const Case& k, const std::string& what) {
  const size_t cols = w.size();
  const WeightChunk in = AwqRowChunk(k, cols);
  iq::Layout lay;
  REQUIRE(iq::MakeLayout(in, &lay));
  std::vector<float> s32(cols), inv32(cols), h32(cols), ws(cols), back(cols, -7.f);
  double hmax = 0;
  for (size_t c = 0; c < cols; ++c) {
    s32[c] = static_cast<float>(s[c]);
    inv32[c] = static_cast<float>(1.0 / s[c]);
    h32[c] = static_cast<float>(h[c]);
    hmax = std::max(hmax, double(h32[c]));
  }
  std::vector<double> want(cols), sq(cols);
  std::vector<float> want_ws(cols);
  intq::ScaledErrorRowScalar(w.data(), s.data(), lay, in.params, DType::kBF16, want_ws.data(),
                             want.data());
  for (size_t c = 0; c < cols; ++c) sq[c] = want[c] * want[c];
  const double want_loss = intq::ScaledDot4(sq.data(), h.data(), cols);
  float approx = -7.f;
  CAPTURE(what);
  REQUIRE(intq::BoundRowOk(w.data(), cols));
  const bool ran = intq::Bf16ScaledRowLossBound(w.data(), s.data(), s32.data(), inv32.data(),
                                                h32.data(), lay, k.symmetric, ws.data(),
                                                back.data(), &approx);
  if (ran) {
    size_t differ = 0, first = cols;
    for (size_t c = 0; c < cols; ++c) {
      const double e = double(w[c]) - double(back[c]);  // the definition's dW from back
      if (std::bit_cast<uint64_t>(e) != std::bit_cast<uint64_t>(want[c])) {
        ++differ;
        if (first == cols) first = c;
      }
    }
    CHECK_MESSAGE(differ == 0, differ << " of " << cols << " dW differ, first at column "
                                      << first);
    size_t ws_differ = 0;  // W s as the kernel left it in its scratch
    for (size_t c = 0; c < cols; ++c) {
      ws_differ += std::bit_cast<uint32_t>(ws[c]) != std::bit_cast<uint32_t>(want_ws[c]);
    }
    CHECK(ws_differ == 0);
    const double exact = intq::ScaledLossFromBack(w.data(), back.data(), h.data(), cols);
    CHECK(std::bit_cast<uint64_t>(exact) == std::bit_cast<uint64_t>(want_loss));
    // The two-candidate form: each sum bit for bit the single one's (a second back row: this
    // one rotated by a column).
    std::vector<float> back2(cols);
    for (size_t c = 0; c < cols; ++c) back2[c] = back[(c + 1) % cols];
    double pair_a = -1, pair_b = -1;
    intq::ScaledLossFromBack2(w.data(), back.data(), back2.data(), h.data(), cols, &pair_a,
                              &pair_b);
    CHECK(std::bit_cast<uint64_t>(pair_a) == std::bit_cast<uint64_t>(want_loss));
    CHECK(std::bit_cast<uint64_t>(pair_b) == std::bit_cast<uint64_t>(intq::ScaledLossFromBack(
                                                 w.data(), back2.data(), h.data(), cols)));
    const double err = std::fabs(double(approx) - want_loss);
    CHECK(err <= intq::ScaledBoundRel(cols) * double(approx) + intq::ScaledBoundAbs(cols, hmax));
  }
  return ran;
}

// A row of bf16 weights of scale `mag`: zeros, repeats (ties in min/max), outliers.
std::vector<float> Row(std::mt19937& rng, size_t cols, float mag) {
  const std::vector<uint16_t> bits = AwqRow(rng, cols, mag);
  std::vector<float> w(cols);
  for (size_t c = 0; c < cols; ++c) {
    w[c] = Bf16Value(bits[c]);
    // Below BoundRowOk's 2^-80 as 0 (a repeat of such a value becomes 0 as well).
    if (w[c] != 0.f && std::fabs(w[c]) < 0x1p-80f) w[c] = 0.f;
  }
  return w;
}

// Every target with four or more f32 lanes runs the kernel on ordinary rows.
bool Wide(const std::string& t) { return t != "SCALAR"; }

TEST_CASE("AWQ's bound kernel gives the definition's dW and a loss within its bound") {
  const auto targets = ForEachTarget([&](const std::string& target) {
    const auto [ran, rows] = SweepAwqRows(21, target, Row, Check);
    if (Wide(target)) CHECK_MESSAGE(ran == rows, target << ": ran on " << ran << " of " << rows);
  });
  MESSAGE("targets: " << targets.size());
}

TEST_CASE("AWQ's bound kernel recomputes lanes where an f32 shortcut would misround") {
  // Columns (w, s) whose W s, taken as w * float(s) in f32, rounds to another BF16 value
  // than the definition's float(w * s in f64); and (deq, s) whose deq * float(1 / s) does
  // against float(deq / s). Both searched in plain f64/f32 arithmetic next to BF16 midpoints.
  std::vector<std::pair<float, double>> prod, quot;
  for (const float a : {3.f, 5.f, 6.f, 7.f, 1.375f, 0.8125f}) {
    const double mid = a + std::ldexp(1.0, std::ilogb(a) - 8);  // a BF16 midpoint above a
    for (const float w : {1.5f, 1.25f, 1.875f, 1.6875f}) {
      const double s0 = mid / w;
      for (int k = -4000; k <= 4000; ++k) {
        const double s = s0 * (1 + k * 0x1p-33);
        const float exact = static_cast<float>(double(w) * s);
        const float fast = w * static_cast<float>(s);
        if (F32ToBF16(exact) != F32ToBF16(fast)) prod.emplace_back(w, s);
      }
    }
    const double s0 = a / mid;
    for (int k = -4000; k <= 4000; ++k) {
      const double s = s0 * (1 + k * 0x1p-33);
      const float exact = static_cast<float>(a / s);
      const float fast = a * static_cast<float>(1.0 / s);
      if (F32ToBF16(exact) != F32ToBF16(fast)) quot.emplace_back(a, s);
    }
  }
  REQUIRE(prod.size() >= 4);
  REQUIRE(quot.size() >= 4);
  MESSAGE(prod.size() << " product and " << quot.size() << " quotient columns misround in f32");
  // Group of 128: column 0 holds 7.5 (the group max: scale 1 for int4 symmetric, where the
  // scaled weights stay small integers and deq equals them), the rest the found columns.
  const size_t cols = 256;
  std::vector<float> w(cols);
  std::vector<double> sp(cols, 1.0), sq(cols, 1.0), h(cols, 1.0);
  for (size_t c = 0; c < cols; ++c) {
    if (c % 128 == 0) {
      w[c] = 7.5f;
      continue;
    }
    w[c] = prod[c % prod.size()].first;
    sp[c] = prod[c % prod.size()].second;
  }
  std::vector<float> wq(cols);
  for (size_t c = 0; c < cols; ++c) {
    wq[c] = c % 128 == 0 ? 7.5f : quot[c % quot.size()].first;
    if (c % 128 != 0) sq[c] = quot[c % quot.size()].second;
  }
  ForEachTarget([&](const std::string& target) {
    CHECK(Check(w, sp, h, Case{8, 128, true}, target + " products") == Wide(target));
    CHECK(Check(wq, sq, h, Case{4, 128, true}, target + " quotients") == Wide(target));
  });
}

TEST_CASE("AWQ's bound kernel declines rows it cannot take") {
  std::mt19937 rng(3);
  std::vector<float> w = Row(rng, 256, 0.02f);
  std::vector<float> bad = w;
  bad[7] = 0x1p-90f;  // below 2^-80
  CHECK_FALSE(intq::BoundRowOk(bad.data(), bad.size()));
  bad[7] = 0x1p90f;
  CHECK_FALSE(intq::BoundRowOk(bad.data(), bad.size()));
  bad[7] = HUGE_VALF;
  CHECK_FALSE(intq::BoundRowOk(bad.data(), bad.size()));
  bad[7] = std::nanf("");
  CHECK_FALSE(intq::BoundRowOk(bad.data(), bad.size()));
  bad[7] = -0.f;
  CHECK(intq::BoundRowOk(bad.data(), bad.size()));
  // The loader converts exactly and agrees with BoundRowOk.
  for (float v : {0x1p-90f, 0x1p-80f, 0x1p80f, 0x1.02p80f, HUGE_VALF, -0.f, 1.f}) {
    bad[7] = v;
    std::vector<uint16_t> bits(bad.size());
    for (size_t i = 0; i < bad.size(); ++i) bits[i] = F32ToBF16(bad[i]);
    std::vector<float> out(bad.size());
    const bool ok = intq::LoadBf16RowBound(bits.data(), bits.size(), out.data());
    CHECK(ok == intq::BoundRowOk(out.data(), out.size()));
    for (size_t i = 0; i < bad.size(); ++i)
      CHECK(std::bit_cast<uint32_t>(out[i]) == uint32_t{bits[i]} << 16);
  }
}

TEST_CASE("AWQ's certified search keeps the first of tied candidates") {
  // Equal activation means: without duo scaling every candidate's scales are 1 after
  // normalisation, so all losses tie exactly and the reference keeps the first (ratio 0).
  // No bound can separate them; the search must evaluate them all by the definition. (With
  // duo scaling the weight means differ per column: an ordinary case.)
  std::mt19937 rng(5);
  const size_t cols = 256, rows = 300;
  const std::vector<float> wf = Row(rng, rows * cols, 0.02f);
  std::vector<uint16_t> w(wf.size());
  for (size_t i = 0; i < wf.size(); ++i) w[i] = F32ToBF16(wf[i]);
  calib::AwqLayer l;
  l.data = reinterpret_cast<const uint8_t*>(w.data());
  l.rows = rows;
  l.cols = cols;
  l.q.bits = 4;
  l.q.group_size = 128;
  l.q.symmetric = true;
  const std::vector<float> x_mean(cols, 0.5f);
  const std::vector<double> h(cols, 16.0);
  for (auto duo : {calib::DuoScaling::kFalse, calib::DuoScaling::kTrue}) {
    auto full = calib::AwqSearch({l}, x_mean, h, false, 64.0, 20, duo, false);
    auto fast = calib::AwqSearch({l}, x_mean, h, false, 64.0, 20, duo, true);
    REQUIRE(full.ok());
    REQUIRE(fast.ok());
    CHECK(fast->ratio == full->ratio);
    CHECK(fast->duo == full->duo);
    CHECK(fast->scales == full->scales);
    CHECK(std::bit_cast<uint64_t>(fast->loss) == std::bit_cast<uint64_t>(full->loss));
    CHECK(std::bit_cast<uint64_t>(fast->loss_rtn) == std::bit_cast<uint64_t>(full->loss_rtn));
    if (duo == calib::DuoScaling::kFalse) {
      CHECK(full->ratio == 0.0);
      CHECK(fast->losses == full->losses);  // every candidate finished
    }
  }
}

}  // namespace
}  // namespace quench::testing
