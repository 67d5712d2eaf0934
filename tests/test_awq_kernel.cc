// AWQ's BF16 row kernel (src/calib/awq_kernel.cc) against its scalar definition, on every
// Highway target compiled in: each row of dW and each row's diagonal loss term bit for bit,
// for int4/int8, symmetric and asymmetric, group and channel layouts, scales as duo scaling
// makes them (any f64) and as f32 values, weights of every magnitude with zeros and ties,
// and scales chosen so that deq / s falls next to a midpoint of two f32 values, where the
// kernel's reciprocal must defer to the exact quotient. Rows the kernel declines (Inf or NaN
// weights, extreme group scales) must be declined, never answered differently.
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "awq_rows.h"
#include "calib/awq.h"
#include "kernel_test_util.h"
#include "schemes/int_scaled_error.h"

namespace quench::testing {
namespace {

namespace iq = intq::internal;

uint16_t Bf16Bits(float f) { return F32ToBF16(f); }
using Case = AwqCase;

std::vector<uint16_t> Row(std::mt19937& rng, size_t cols, float mag) {
  return AwqRow(rng, cols, mag);
}

// Compares kernel and definition on one row and candidate; returns whether the kernel ran.
bool Check(const std::vector<uint16_t>& w, const std::vector<double>& s,
           const std::vector<double>& h,
           const Case& k, const std::string& what) {
  const size_t cols = w.size();
  const WeightChunk in = AwqRowChunk(k, cols);
  iq::Layout lay;
  REQUIRE(iq::MakeLayout(in, &lay));
  std::vector<double> inv(cols);
  for (size_t c = 0; c < cols; ++c) inv[c] = 1.0 / s[c];
  std::vector<float> wf(cols), ws(cols);
  for (size_t c = 0; c < cols; ++c) wf[c] = Bf16Value(w[c]);
  std::vector<double> want(cols), got(cols, -7.0), sq(cols);
  intq::ScaledErrorRowScalar(wf.data(), s.data(), lay, in.params, DType::kBF16, ws.data(),
                           want.data());
  for (size_t c = 0; c < cols; ++c) sq[c] = want[c] * want[c];
  const double want_loss = intq::ScaledDot4(sq.data(), h.data(), cols);
  const bool ran = intq::Bf16ScaledRowError(w.data(), s.data(), inv.data(), lay, k.symmetric,
                                          ws.data(), got.data());
  double loss = -7.0;
  const bool ran_loss = intq::Bf16ScaledRowLoss(w.data(), s.data(), inv.data(), h.data(), lay,
                                              k.symmetric, ws.data(), &loss);
  CAPTURE(what);
  CHECK(ran == ran_loss);
  if (ran) {
    size_t differ = 0, first = cols;
    for (size_t c = 0; c < cols; ++c) {
      if (std::bit_cast<uint64_t>(got[c]) != std::bit_cast<uint64_t>(want[c])) {
        ++differ;
        if (first == cols) first = c;
      }
    }
    CHECK_MESSAGE(differ == 0, differ << " of " << cols << " dW differ, first at column "
                                      << first << ": " << (first < cols ? got[first] : 0.0)
                                      << " vs " << (first < cols ? want[first] : 0.0));
  }
  if (ran_loss) {
    CHECK(std::bit_cast<uint64_t>(loss) == std::bit_cast<uint64_t>(want_loss));
  }
  return ran;
}

TEST_CASE("AWQ's BF16 row kernel equals the scalar definition bit for bit on every target") {
  const auto targets = ForEachTarget([&](const std::string& target) {
    const auto [ran, rows] = SweepAwqRows(20, target, Row, Check);
    // Targets with four or more f64 lanes run the kernel on every ordinary row.
    if (target == "AVX2" || target == "AVX3" || target == "AVX3_DL" || target == "AVX3_ZEN4") {
      CHECK_MESSAGE(ran == rows, target << ": the kernel ran on " << ran << " of " << rows);
    }
  });
  MESSAGE("targets: " << targets.size());
}

TEST_CASE("AWQ's BF16 row kernel defers to the exact quotient next to an f32 midpoint") {
  // Groups whose weights are small integers and 7.5 (the max, scale 1): deq is the weight
  // itself (W s rounds to within half a step of W for s this close to 1). Column scales s
  // just below 1 are searched (independently, in plain f64) such that deq / s and
  // deq * (1 / s) round to different BF16 values through f32: only the exact division gives
  // the definition's dW there.
  std::vector<std::pair<float, double>> tricky;  // (deq, s)
  for (const float deq : {3.f, 5.f, 6.f, 7.f, -3.f, -5.f, -7.f}) {
    // Next to the f32 midpoint just above the BF16 midpoint above |deq| (half a BF16 ulp,
    // then half an f32 ulp): there the f32 is either the BF16 midpoint itself (a tie, to
    // even) or the next f32 (rounding up), and one f64 ulp of the quotient decides.
    const double a = std::fabs(deq);
    const double mid =
        a + std::ldexp(1.0, std::ilogb(a) - 8) + std::ldexp(1.0, std::ilogb(a) - 24);
    const double s0 = a / mid;  // in [0.5, 1): f64 ulp 2^-53
    for (int k = -3000; k <= 3000; ++k) {
      const double t = s0 + k * 0x1p-53;
      const float exact = static_cast<float>(deq / t), recip = static_cast<float>(deq * (1.0 / t));
      if (F32ToBF16(exact) != F32ToBF16(recip)) tricky.emplace_back(deq, t);
    }
  }
  REQUIRE(tricky.size() >= 4);
  const size_t cols = 256;
  std::vector<uint16_t> w(cols);
  std::vector<double> sc(cols, 1.0), h(cols, 1.0);
  for (size_t c = 0; c < cols; ++c) {
    w[c] = Bf16Bits(7.5f);
    if (c % 128 != 0) {
      const auto& [deq, t] = tricky[c % tricky.size()];
      w[c] = Bf16Bits(deq);
      sc[c] = t;
    }
  }
  MESSAGE(tricky.size() << " column scales whose quotient the reciprocal would misround");
  ForEachTarget([&](const std::string& target) {
    const bool wide = target == "AVX2" || target == "AVX3" || target == "AVX3_DL" ||
                      target == "AVX3_ZEN4";
    CHECK(Check(w, sc, h, Case{4, 128, true}, target + " midpoint") == wide);
  });
}

TEST_CASE("AWQ's BF16 row kernel declines rows it cannot take, and the search's scales") {
  ForEachTarget([&](const std::string& target) {
    CAPTURE(target);
    const size_t cols = 256;
    std::mt19937 rng(3);
    std::vector<uint16_t> w = Row(rng, cols, 0.02f);
    std::vector<double> s(cols, 1.0), h(cols, 1.0);
    const Case k{4, 128, true};
    for (uint16_t bad : {uint16_t{0x7F80}, uint16_t{0xFF80}, uint16_t{0x7FC0}, uint16_t{0x7FFF}}) {
      std::vector<uint16_t> v = w;
      v[131] = bad;  // Inf, -Inf, NaN, a NaN whose RNE bit arithmetic would wrap
      CHECK_FALSE(Check(v, s, h, k, "non-finite"));
    }
    // A group whose scale is below 2^-90 (tiny weights): declined.
    std::vector<uint16_t> tiny = w;
    for (size_t c = 0; c < 128; ++c) tiny[c] = Bf16Bits(std::ldexp(float(c % 7) - 3.f, -100));
    CHECK_FALSE(Check(tiny, s, h, k, "tiny group"));
  });
  std::vector<double> s(8, 1.0);
  CHECK(intq::ScaledKernelScales(s.data(), s.size()));
  s[5] = 0x1p21;
  CHECK_FALSE(intq::ScaledKernelScales(s.data(), s.size()));
  s[5] = std::nan("");
  CHECK_FALSE(intq::ScaledKernelScales(s.data(), s.size()));
}


// The pruned search against the full one on the same layers: the same choice, scales,
// chosen loss and RTN's loss; each candidate it stopped one whose full loss exceeds the
// chosen one, each it finished with the full search's loss. Returns how many it stopped.
int CheckPrunedAsFull(const std::vector<calib::AwqLayer>& layers, const std::vector<float>& x_mean,
                      const std::vector<double>& h, calib::DuoScaling duo) {
  auto full = calib::AwqSearch(layers, x_mean, h, false, 64.0, 20, duo, false);
  auto pruned = calib::AwqSearch(layers, x_mean, h, false, 64.0, 20, duo, true);
  REQUIRE(full.ok());
  REQUIRE(pruned.ok());
  CHECK(pruned->ratio == full->ratio);
  CHECK(pruned->duo == full->duo);
  CHECK(pruned->scales == full->scales);
  CHECK(std::bit_cast<uint64_t>(pruned->loss) == std::bit_cast<uint64_t>(full->loss));
  CHECK(std::bit_cast<uint64_t>(pruned->loss_rtn) == std::bit_cast<uint64_t>(full->loss_rtn));
  REQUIRE(pruned->losses.size() == full->losses.size());
  int stopped = 0;
  for (size_t g = 0; g < full->losses.size(); ++g) {
    if (std::isinf(pruned->losses[g])) {
      ++stopped;
      CHECK(full->losses[g] > full->loss);
    } else {
      CHECK(std::bit_cast<uint64_t>(pruned->losses[g]) ==
            std::bit_cast<uint64_t>(full->losses[g]));
    }
  }
  return stopped;
}

TEST_CASE("AWQ's pruned search chooses as the full search, with the same losses") {
  // Layers of random BF16 weights (1024+ rows: enough tiles for the sample, the leader and
  // the batches), activations over two decades; every duo setting, int4 and int8.
  std::mt19937 rng(11);
  int pruned_any = 0;
  for (const auto& [bits, group, duo] :
       {std::tuple{4, 64, calib::DuoScaling::kTrue}, std::tuple{4, 0, calib::DuoScaling::kFalse},
        std::tuple{8, 128, calib::DuoScaling::kBoth},
        std::tuple{4, 128, calib::DuoScaling::kTrue}}) {
    const size_t cols = 256;
    std::vector<std::vector<uint16_t>> data;
    std::vector<calib::AwqLayer> layers;
    for (size_t rows : {size_t{1024}, size_t{520}}) {
      std::vector<uint16_t> w = Row(rng, rows * cols, 0.02f);
      data.push_back(std::move(w));
      calib::AwqLayer l;
      l.data = reinterpret_cast<const uint8_t*>(data.back().data());
      l.rows = rows;
      l.cols = cols;
      l.q.bits = bits;
      l.q.group_size = group;
      l.q.symmetric = bits == 4;
      layers.push_back(l);
    }
    std::vector<float> x_mean;
    std::vector<double> h;
    Activations(rng, cols, &x_mean, &h);
    CAPTURE(bits);
    CAPTURE(group);
    pruned_any += CheckPrunedAsFull(layers, x_mean, h, duo);
  }
  MESSAGE(pruned_any << " candidates stopped early");
  CHECK(pruned_any > 0);  // the test exercises pruning
}

TEST_CASE("AWQ's pruned search chooses as the full search where the bound kernel cannot go") {
  // The tiles' fallback (the definition's dW on a slab): F32 and F16 layers, BF16 rows with
  // values past 2^80 (outside the bound kernel's range), and 5 groups of 64 columns, so that
  // the last slab of each row is one group where the others are four. The first 64 rows (the
  // search's sample band at this width) are zero: every candidate ties there, so the leader
  // it guesses is the first (RTN), not the choice, which must then survive on its bounds.
  std::mt19937 rng(23);
  const size_t cols = 320, rows = 600;
  std::vector<uint16_t> bf = Row(rng, rows * cols, 0.02f), f16(rows * cols);
  const std::vector<uint16_t> other = Row(rng, rows * cols, 0.02f);
  std::vector<float> f32(rows * cols);
  for (size_t i = 0; i < rows * cols; ++i) {
    f32[i] = Bf16Value(other[i]);
    f16[i] = F32ToF16(Bf16Value(bf[(i + cols / 2) % (rows * cols)]));
  }
  // Below 2^-80: rows the bound kernel declines (their error is negligible).
  for (size_t r = 64; r < rows; r += 37) bf[r * cols + (r % cols)] = F32ToBF16(0x1p-90f);
  for (size_t i = 0; i < 64 * cols; ++i) bf[i] = f16[i] = 0, f32[i] = 0.f;
  int pruned_any = 0;
  for (bool sym : {true, false}) {
    std::vector<calib::AwqLayer> layers;
    for (auto [data, dtype] : {std::pair{static_cast<const void*>(bf.data()), DType::kBF16},
                               std::pair{static_cast<const void*>(f32.data()), DType::kF32},
                               std::pair{static_cast<const void*>(f16.data()), DType::kF16}}) {
      calib::AwqLayer l;
      l.data = static_cast<const uint8_t*>(data);
      l.dtype = dtype;
      l.rows = rows;
      l.cols = cols;
      l.q.bits = 4;
      l.q.group_size = 64;
      l.q.symmetric = sym;
      layers.push_back(l);
    }
    std::vector<float> x_mean;
    std::vector<double> h;
    Activations(rng, cols, &x_mean, &h);
    CAPTURE(sym);
    pruned_any += CheckPrunedAsFull(layers, x_mean, h, calib::DuoScaling::kTrue);
    auto full = calib::AwqSearch(layers, x_mean, h, false, 64.0, 20, calib::DuoScaling::kTrue);
    REQUIRE(full.ok());
    CHECK(full->ratio > 0);  // not RTN, the guessed leader
  }
  MESSAGE(pruned_any << " candidates stopped early");
  CHECK(pruned_any > 0);
}

}  // namespace
}  // namespace quench::testing
