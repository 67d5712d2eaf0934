// The hand-written FP8 channel kernels for bf16 (src/schemes/fp8_bf16.cc with AVX-512 BF16,
// src/schemes/fp8_bf16_avx2.cc with AVX2) against the scalar definition (QuantizeChannelScalar,
// which divides and rounds in plain C++), bit for bit: every finite bf16 x (both signs,
// subnormals, zeros) under the scale of rows whose amax has every bf16 significand at exponents
// across the whole range, including subnormal amax and scales (the division fallback,
// ReciprocalIsExact false), amax that rounds the scale to 0 (eps), scales >= 2^126 (division),
// zero rows, row widths around each kernel's steps, many-row chunks, and refusal of NaN and Inf;
// for the AVX2 kernel also every finite amax and short rows (its batched path). On a CPU without
// a kernel's instructions it is never dispatched; this checks that it says so.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernel_test_util.h"
#include "schemes/float_formats.h"
#include "schemes/fp8.h"
#include "schemes/fp8_bf16.h"
#include "schemes/fp8_bf16_avx2.h"

namespace quench::fp8 {
using namespace quench::testing;  // NOLINT: shared kernel-test helpers

namespace {

// One hand-written kernel and what its cases need to know of it.
struct Kernel {
  std::string name;
  bool (*available)();
  bool (*handles)(const WeightChunk&);
  bool (*quantize)(const WeightChunk&, const ChunkOutputs&);
  void (*set_enabled)(bool);
  // Significands stepped by this at ordinary exponents in the exhaustive case (1: all).
  uint32_t m_stride;
  // Whether it batches rows up to 1 KiB (the AVX2 kernel): then short rows and every finite
  // amax are checked too.
  bool batched_rows;
};

const Kernel kKernels[] = {
    {"AVX-512 BF16", Fp8Bf16Available, Fp8Bf16Handles, QuantizeChannelBf16,
     internal::SetFp8Bf16Enabled, 5, false},
    {"AVX2", Fp8Bf16Avx2Available, Fp8Bf16Avx2Handles, QuantizeChannelBf16Avx2,
     internal::SetFp8Bf16Avx2Enabled, 1, true},
};

struct Run {
  bool ok;
  std::vector<uint8_t> codes;
  std::vector<uint8_t> scales;
};

// The chunk through the kernel k, or (k null) through the scalar definition.
Run Quantize(const std::vector<uint16_t>& data, size_t rows, size_t cols, const Kernel* k) {
  WeightChunk in;
  in.data = reinterpret_cast<const uint8_t*>(data.data());
  in.dtype = DType::kBF16;
  in.rows = rows;
  in.cols = cols;
  Run r;
  r.codes.assign(rows * cols + kGuardBytes, kGuard);
  r.scales.assign(rows * 2 + kGuardBytes, kGuard);
  ChunkOutputs out;
  out.out[0] = r.codes.data();
  out.out[1] = r.scales.data();
  r.ok = k != nullptr ? k->quantize(in, out) : QuantizeChannelScalar(in, out);
  return r;
}

void ExpectSame(const Kernel& k, const std::vector<uint16_t>& data, size_t rows, size_t cols) {
  const Run want = Quantize(data, rows, cols, nullptr);
  const Run got = Quantize(data, rows, cols, &k);
  REQUIRE(got.ok == want.ok);
  if (!want.ok) return;
  REQUIRE(got.scales == want.scales);
  REQUIRE(got.codes == want.codes);
}

}  // namespace

TEST_SUITE("fp8_bf16") {

TEST_CASE("each kernel is available on its CPUs and dispatched for bf16 only") {
  for (const Kernel& k : kKernels) {
    CAPTURE(k.name);
    WeightChunk in;
    in.dtype = DType::kBF16;
    CHECK(k.handles(in) == k.available());
    in.dtype = DType::kF16;
    CHECK_FALSE(k.handles(in));
    MESSAGE(k.name << " kernel available: " << k.available());
  }
}

// The exhaustive checks of one kernel (available on this CPU).
void CheckEveryX(const Kernel& k) {
  std::vector<uint16_t> all;
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    if ((b & 0x7F80u) != 0x7F80u) all.push_back(static_cast<uint16_t>(b));
  }
  // Exponents: subnormal amax (-133..-127: subnormal scales or eps, the division), the
  // smallest normals (scales subnormal: division), ordinary ones (the reciprocal), and the
  // largest (scales >= 2^126: division again).
  size_t checked = 0;
  // Every exponent up to -110 (short rows): subnormal scales have so few bits that
  // amax / scale reaches 672, where the codes saturate.
  std::vector<int> exps;
  for (int e = -133; e <= -110; ++e) exps.push_back(e);
  for (int e : {-100, -10, -3, 0, 1, 7, 60, 126, 127}) exps.push_back(e);
  for (int e : exps) {
    const uint32_t stride = (e <= -110 || e == 0 || e == 127) ? 1 : k.m_stride;
    for (uint32_t m = 0; m < 128; m += stride) {
      const float amax = std::ldexp(1.0f + static_cast<float>(m) / 128.0f, e);
      const uint16_t amax_bits = F32ToBF16(amax);
      if ((amax_bits & 0x7F80u) == 0x7F80u) continue;
      // Row 0: amax, then every finite x with |x| <= amax. Row 1: its negation order.
      std::vector<uint16_t> row{amax_bits};
      for (uint16_t h : all) {
        if ((h & 0x7FFFu) <= amax_bits) row.push_back(h);
      }
      std::vector<uint16_t> data = row;
      for (uint16_t h : row) data.push_back(static_cast<uint16_t>(h ^ 0x8000u));
      CAPTURE(amax);
      ExpectSame(k, data, 2, row.size());
      checked += data.size();
      if (!k.batched_rows) continue;
      // The same values in short rows (the batched path): each row amax (sign alternating)
      // and the next 127 values, the last one zero-padded.
      constexpr size_t kShort = 128;
      std::vector<uint16_t> short_rows;
      for (size_t i = 0, r = 0; i < data.size(); i += kShort - 1, ++r) {
        short_rows.push_back(static_cast<uint16_t>(amax_bits | ((r & 1) << 15)));
        for (size_t j = 0; j < kShort - 1; ++j) {
          short_rows.push_back(i + j < data.size() ? data[i + j] : 0);
        }
      }
      ExpectSame(k, short_rows, short_rows.size() / kShort, kShort);
    }
  }
  MESSAGE(k.name << ": " << checked << " (x, scale) pairs checked");
}

TEST_CASE("every finite bf16 x under every amax significand, many binades") {
  for (const Kernel& k : kKernels) {
    CAPTURE(k.name);
    if (k.available()) CheckEveryX(k);  // else QuantizeChannel never takes it
  }
}

TEST_CASE("every finite amax, in short and long rows (the batching kernel)") {
  for (const Kernel& k : kKernels) {
    if (!k.available() || !k.batched_rows) continue;
    CAPTURE(k.name);
    // Row a: amax = the a-th finite positive bf16 pattern (sign alternating), then values at
    // and below it: the scale of every amax, by both the batched and the per-row path.
    for (size_t cols : {24, 600}) {
      std::vector<uint16_t> data;
      size_t rows = 0;
      for (uint32_t a = 0; a < 0x7F80u; ++a, ++rows) {
        data.push_back(static_cast<uint16_t>(a | ((a & 1) << 15)));
        for (size_t j = 1; j < cols; ++j) {
          const uint32_t x = a * (cols - j) / cols;  // below amax, down to 0
          data.push_back(static_cast<uint16_t>(x | ((j % 3 == 0) << 15)));
        }
      }
      CAPTURE(cols);
      ExpectSame(k, data, rows, cols);
    }
  }
}

TEST_CASE("row widths, batches of rows, zero rows, subnormal and saturating values") {
  for (const Kernel& k : kKernels) {
    if (!k.available()) continue;
    CAPTURE(k.name);
    std::mt19937 rng(14);
    std::uniform_int_distribution<uint32_t> bits(0, 0xFFFF);
    std::uniform_int_distribution<int> pick(0, 9);
    for (size_t cols : {0, 1, 2, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 127, 128, 129, 200,
                        1000, 1025, 4096, 40000}) {
      for (size_t rows : {1, 3, 16, 17, 40}) {
        if (rows * cols > 400000) continue;
        std::vector<uint16_t> data(rows * cols);
        for (size_t r = 0; r < rows; ++r) {
          const int kind = pick(rng);
          for (size_t c = 0; c < cols; ++c) {
            uint16_t h = static_cast<uint16_t>(bits(rng));
            if ((h & 0x7F80u) == 0x7F80u) h &= 0xBFFFu;  // keep it finite
            if (kind == 0) h = 0;                             // a zero row
            if (kind == 1) h &= 0x807Fu;                      // subnormal row
            if (kind == 2) h = static_cast<uint16_t>((h & 0x80FFu) | 0x3C00u);  // near 2^-7
            data[r * cols + c] = h;
          }
        }
        CAPTURE(rows);
        CAPTURE(cols);
        ExpectSame(k, data, rows, cols);
      }
    }
  }
}

TEST_CASE("QuantizeChannel: the targets take each kernel, and with it off their Highway code") {
  // Both paths through the dispatcher on every target, so that the Highway kernels these
  // kernels displace (AVX3's, AVX2's) stay checked against the definition too.
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits(0, 0xFFFF);
  const size_t rows = 37;
  const size_t cols = 1000;
  std::vector<uint16_t> data(rows * cols);
  for (auto& h : data) {
    h = static_cast<uint16_t>(bits(rng));
    if ((h & 0x7F80u) == 0x7F80u) h &= 0xBFFFu;
  }
  const Run want = Quantize(data, rows, cols, nullptr);
  REQUIRE(want.ok);
  for (const Kernel& k : kKernels) {
    CAPTURE(k.name);
    for (bool enabled : {true, false}) {
      k.set_enabled(enabled);
      ForEachTarget([&](const std::string& target) {
        WeightChunk in;
        in.data = reinterpret_cast<const uint8_t*>(data.data());
        in.dtype = DType::kBF16;
        in.rows = rows;
        in.cols = cols;
        std::vector<uint8_t> codes(rows * cols + kGuardBytes, kGuard);
        std::vector<uint8_t> scales(rows * 2 + kGuardBytes, kGuard);
        ChunkOutputs out;
        out.out[0] = codes.data();
        out.out[1] = scales.data();
        CAPTURE(target);
        CAPTURE(enabled);
        REQUIRE(QuantizeChannel(in, out));
        CHECK(codes == want.codes);
        CHECK(scales == want.scales);
      });
    }
    k.set_enabled(true);
  }
}

TEST_CASE("NaN and Inf anywhere are refused") {
  for (const Kernel& k : kKernels) {
    if (!k.available()) continue;
    CAPTURE(k.name);
    for (uint16_t bad : {0x7F80, 0xFF80, 0x7FC0, 0xFFFF, 0x7F81}) {
      for (size_t where : {0, 5, 127, 128 * 17 + 3, 128 * 20 - 1}) {
        std::vector<uint16_t> data(128 * 20, 0x3F80);
        data[where] = bad;
        CAPTURE(where);
        ExpectSame(k, data, 20, 128);
        CHECK_FALSE(Quantize(data, 20, 128, &k).ok);
      }
    }
  }
}

}  // TEST_SUITE
}  // namespace quench::fp8
