// GPTQ on float weights against the pinned reference (data/golden/gptq-float, from
// scripts/make_golden_gptq_float.py running llm-compressor 0.14.0.1's quantize_weight on the
// CPU with the memoryless min-max observer's scales): FP8 per tensor, per channel and per
// 128x128 block, NVFP4 (own and fused global scale), MXFP4 and MXFP8. On every case the
// scales are equal, at least 99.9% of the quantized values the compressor writes are equal,
// the reference's loss and the proxy loss tr(dW H dW^T) (from each side's dequantized
// values) agree within 0.1%, and the RTN fallback happens exactly where the reference's does.
// The agreement measured is printed. Also: row chunks (whole tiles for FP8 blocks) give the
// rows of the whole weight, and the kernel layout matches the scheme kernel's for RTN.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "calib/gptq.h"
#include "format/json.h"
#include "format/safetensors.h"
#include "golden_file.h"
#include "quench/scheme.h"
#include "schemes/float_formats.h"
#include "test_util.h"

namespace quench::testing {
namespace {

using File = GoldenFile;
File Load(const fs::path& p) { return LoadGolden(p); }

// The scheme's weight args, as the preset table has them.
calib::GptqFloat FormatOf(const std::string& scheme) {
  for (const SchemeInfo& s : SchemeTable()) {
    if (s.name != scheme) continue;
    calib::GptqFloat f;
    REQUIRE(calib::GptqFloatFormat(std::string(s.weights.type), std::string(s.weights.strategy),
                                   s.weights.num_bits, &f));
    return f;
  }
  FAIL("no scheme " << scheme);
  return calib::GptqFloat::kFp8Channel;
}

bool IsFp4(calib::GptqFloat f) {
  return f == calib::GptqFloat::kNvfp4 || f == calib::GptqFloat::kMxfp4;
}

// The value a code stands for (E4M3, or the E2M1 nibble's sign and magnitude): the format's
// definition, independent of the code under test.
float CodeValue(uint8_t code, bool fp4) {
  if (!fp4) return E4M3ToF32(code);
  static constexpr float kMag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  return (code & 8) ? -kMag[code & 7] : kMag[code & 7];
}

struct Case {
  File f;
  std::vector<float> w, h;
  size_t rows = 0, n = 0;
  DType dtype = DType::kBF16;
  std::string raw;
  calib::GptqOptions opt;
  float gs = 0;
  WeightChunk Chunk(size_t r0, size_t r1) const {
    WeightChunk in;
    const size_t esz = dtype == DType::kF32 ? 4 : 2;
    in.data = reinterpret_cast<const uint8_t*>(raw.data()) + r0 * n * esz;
    in.dtype = dtype;
    in.rows = r1 - r0;
    in.cols = n;
    in.params.global_scale = gs;
    return in;
  }
};

Case LoadCase(const fs::path& dir, const std::string& name) {
  Case c;
  c.f = Load(dir / (name + ".safetensors"));
  const File hf = Load(DataDir() / "golden" / "gptq" / (c.f.Meta("hessian") + ".safetensors"));
  c.rows = c.f.Shape("w")[0];
  c.n = c.f.Shape("w")[1];
  c.w = c.f.Tensor("w");
  c.h = hf.Tensor("h");
  REQUIRE(c.h.size() == c.n * c.n);
  c.dtype = c.f.Meta("dtype") == "BF16" ? DType::kBF16 : DType::kF32;
  c.raw = c.dtype == DType::kF32
              ? std::string(reinterpret_cast<const char*>(c.w.data()), c.w.size() * 4)
              : Bf16Bytes(c.w);
  c.opt.block_size = std::stoi(c.f.Meta("block_size"));
  c.opt.dampening = std::stod(c.f.Meta("dampening"));
  auto ao = calib::ParseActOrder(c.f.Meta("actorder"));
  REQUIRE(ao.ok());
  c.opt.actorder = *ao;
  // NVFP4: the fused set's global scale; FP8 per tensor: the tensor's scale (the pre-pass's).
  if (c.f.Has("global_scale")) c.gs = c.f.Tensor("global_scale")[0];
  if (c.f.Meta("strategy") == "tensor") c.gs = c.f.Tensor("scale")[0];
  return c;
}

TEST_CASE("GPTQ on float weights equals the reference's quantize_weight on every golden case") {
  const fs::path dir = DataDir() / "golden" / "gptq-float";
  const JsonValue::Array cases = ManifestCases(dir);
  REQUIRE(cases.size() >= 14);
  for (const JsonValue& jc : cases) {
    const std::string name = jc.Find("name")->as_string();
    CAPTURE(name);
    const Case c = LoadCase(dir, name);
    const calib::GptqFloat format = FormatOf(c.f.Meta("scheme"));
    const bool fp4 = IsFp4(format);
    auto factor = calib::FactorHessian(c.h, c.n, c.opt);
    REQUIRE(factor.ok());
    CHECK(factor->rtn_fallback == (c.f.Meta("rtn_fallback") == "true"));
    calib::GptqFloatRows got;
    REQUIRE(calib::QuantizeFloatRows(*factor, c.Chunk(0, c.rows), format, c.opt, &got));

    CHECK(got.scales == c.f.Tensor("scale"));
    const std::vector<float> qvals = c.f.Tensor("qvals");
    REQUIRE(got.codes.size() == qvals.size());
    size_t equal = 0;
    for (size_t i = 0; i < qvals.size(); ++i) equal += CodeValue(got.codes[i], fp4) == qvals[i];
    const double agree = double(equal) / double(qvals.size());
    CHECK(agree >= 0.999);

    // Dequantized: value * scale / global scale (NVFP4) in f64; both sides the same way.
    const std::vector<float> scales = c.f.Tensor("scale");
    const size_t rows = c.rows, n = c.n;
    auto scale_at = [&](size_t r, size_t j) -> double {
      switch (format) {
        case calib::GptqFloat::kFp8Tensor: return scales[0];
        case calib::GptqFloat::kFp8Channel: return scales[r];
        case calib::GptqFloat::kFp8Block: return scales[(r / 128) * ((n + 127) / 128) + j / 128];
        case calib::GptqFloat::kNvfp4: return double(scales[r * (n / 16) + j / 16]) / c.gs;
        default: return scales[r * (n / 32) + j / 32];
      }
    };
    auto dequant = [&](auto value_of) {
      std::vector<float> out(rows * n);
      for (size_t r = 0; r < rows; ++r) {
        for (size_t j = 0; j < n; ++j) out[r * n + j] = float(value_of(r * n + j) * scale_at(r, j));
      }
      return out;
    };
    const double ref_proxy =
        ProxyLoss(c.w, dequant([&](size_t i) { return double(qvals[i]); }), c.h, rows, n);
    const double proxy = ProxyLoss(
        c.w, dequant([&](size_t i) { return double(CodeValue(got.codes[i], fp4)); }), c.h,
        rows, n);
    const double ref_loss = std::stod(c.f.Meta("loss"));
    std::printf("gptq-float %-24s values equal %.5f  loss %.6g vs %.6g (%.2e)  proxy %.6g vs "
                "%.6g (%.2e)\n",
                name.c_str(), agree, got.loss, ref_loss, std::fabs(got.loss / ref_loss - 1), proxy,
                ref_proxy, std::fabs(proxy / ref_proxy - 1));
    CHECK(std::fabs(got.loss - ref_loss) <= 1e-3 * std::fabs(ref_loss));
    CHECK(std::fabs(proxy - ref_proxy) <= 1e-3 * std::fabs(ref_proxy));
    // The generator's f64 proxy from the reference's returned weight, before the compressor
    // rounds it again: the compressor's values reproduce it closely.
    CHECK(std::fabs(ref_proxy - std::stod(c.f.Meta("proxy_loss"))) <=
          1e-3 * std::stod(c.f.Meta("proxy_loss")));
  }
}

TEST_CASE("Float GPTQ on row chunks gives the rows of the whole weight") {
  const fs::path dir = DataDir() / "golden" / "gptq-float";
  for (const auto& [name, step] : {std::pair<std::string, size_t>{"nvfp4_static_bf16", 7},
                                   {"mxfp4_static_bf16", 5},
                                   {"fp8ch_static_bf16", 9},
                                   {"fp8blk_static_bf16", 128}}) {
    CAPTURE(name);
    const Case c = LoadCase(dir, name);
    const calib::GptqFloat format = FormatOf(c.f.Meta("scheme"));
    auto factor = calib::FactorHessian(c.h, c.n, c.opt);
    REQUIRE(factor.ok());
    calib::GptqFloatRows whole;
    REQUIRE(calib::QuantizeFloatRows(*factor, c.Chunk(0, c.rows), format, c.opt, &whole));
    std::vector<uint8_t> joined;
    std::vector<float> scales;
    for (size_t r0 = 0; r0 < c.rows; r0 += step) {
      calib::GptqFloatRows part;
      REQUIRE(calib::QuantizeFloatRows(*factor, c.Chunk(r0, std::min(c.rows, r0 + step)),
                                       format, c.opt, &part));
      joined.insert(joined.end(), part.codes.begin(), part.codes.end());
      scales.insert(scales.end(), part.scales.begin(), part.scales.end());
    }
    CHECK(scales == whole.scales);
    size_t equal = 0;
    for (size_t i = 0; i < joined.size(); ++i) equal += joined[i] == whole.codes[i];
    CHECK(double(equal) / joined.size() >= 0.999);
  }
}

TEST_CASE("With H = I and no dampening, float GPTQ writes what the scheme's kernel writes") {
  // U = I: every error stays in its column, so on f32 weights (where no rounding to the
  // weight dtype intervenes) the sweep is round to nearest with the observer's scales: the
  // scheme kernel's definition (tested byte for byte against the reference elsewhere). The
  // scales' bytes are equal; the codes stand for equal values (a negative value that rounds to
  // zero is 0x8 / 0x80 from the kernel, while the sweep's weight there is -0 or +0).
  const size_t rows = 256, n = 256;
  std::vector<float> w(rows * n);
  uint32_t state = 12345;
  for (float& x : w) {
    state = state * 1664525u + 1013904223u;
    x = (float(state >> 8) / float(1u << 24) - 0.5f) * 0.2f;
  }
  std::vector<float> h(n * n, 0.0f);
  for (size_t i = 0; i < n; ++i) h[i * n + i] = 1.0f;
  calib::GptqOptions opt;
  opt.dampening = 0;
  opt.actorder = calib::ActOrder::kNone;
  auto factor = calib::FactorHessian(h, n, opt);
  REQUIRE(factor.ok());
  for (const std::string scheme :
       {"FP8_DYNAMIC", "FP8_BLOCK", "NVFP4A16", "MXFP4A16", "MXFP8A16", "FP8"}) {
    CAPTURE(scheme);
    const SchemeInfo* s = nullptr;
    for (const SchemeInfo& x : SchemeTable()) {
      if (x.name == scheme) s = &x;
    }
    REQUIRE(s != nullptr);
    const calib::GptqFloat format = FormatOf(scheme);
    const bool fp4 = IsFp4(format);
    WeightChunk in;
    in.data = reinterpret_cast<const uint8_t*>(w.data());
    in.dtype = DType::kF32;
    in.rows = rows;
    in.cols = n;
    in.params.global_scale = scheme == "FP8" ? 0.000225f : 1234.0f;
    const auto outs = s->outputs(DType::kF32, rows, n, s->DefaultParams());
    std::vector<std::vector<uint8_t>> want, got;
    for (const SchemeOutput& o : outs) {
      if (o.source != SchemeOutput::Source::kKernel) continue;
      want.emplace_back(o.nbytes, 0xAA);
      got.emplace_back(o.nbytes, 0x55);
    }
    ChunkOutputs wo, go;
    for (size_t i = 0; i < want.size(); ++i) {
      wo.out[i] = want[i].data();
      go.out[i] = got[i].data();
    }
    REQUIRE(s->scalar_kernel(in, wo));
    double loss = -1;
    REQUIRE(calib::QuantizeFloatRowsInto(*factor, in, format, opt, go, &loss));
    CHECK(loss >= 0);
    for (size_t i = 1; i < want.size(); ++i) CHECK(got[i] == want[i]);
    size_t equal = 0;
    for (size_t k = 0; k < rows * n; ++k) {
      auto code = [&](const std::vector<uint8_t>& b) -> uint8_t {
        return fp4 ? static_cast<uint8_t>((b[k / 2] >> (4 * (k % 2))) & 0xF) : b[k];
      };
      equal += CodeValue(code(got[0]), fp4) == CodeValue(code(want[0]), fp4);
    }
    CHECK(equal == rows * n);
  }
}

}  // namespace
}  // namespace quench::testing
