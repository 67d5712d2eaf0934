// GPTQ against the pinned reference (data/golden/gptq, from scripts/make_golden_gptq.py running
// llm-compressor 0.14.0.1's quantize_weight on the CPU): on every case the observer's scales and
// zero points are equal, at least 99.9% of the codes are equal, the reference's loss and the
// proxy loss tr(dW H dW^T) (computed here from the dequantized codes) are within 0.1%, and the
// RTN fallback happens exactly where the reference's does. The agreement measured is printed.
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
#include "test_util.h"

namespace quench::testing {
namespace {

using File = GoldenFile;
File Load(const fs::path& p) { return LoadGolden(p); }

TEST_CASE("GPTQ equals the reference's quantize_weight on every golden case") {
  const fs::path dir = DataDir() / "golden" / "gptq";
  const JsonValue::Array cases = ManifestCases(dir);
  REQUIRE(cases.size() >= 15);
  for (const JsonValue& c : cases) {
    const std::string name = c.Find("name")->as_string();
    CAPTURE(name);
    const File f = Load(dir / (name + ".safetensors"));
    const File hf = Load(dir / (f.Meta("hessian") + ".safetensors"));
    const auto shape = f.Shape("w");
    const size_t rows = shape[0], n = shape[1];
    const std::vector<float> w = f.Tensor<float>("w");
    const std::vector<float> h = hf.Tensor<float>("h");
    REQUIRE(h.size() == n * n);

    calib::GptqOptions opt;
    opt.block_size = std::stoi(f.Meta("block_size"));
    opt.dampening = std::stod(f.Meta("dampening"));
    auto ao = calib::ParseActOrder(f.Meta("actorder"));
    REQUIRE(ao.ok());
    opt.actorder = *ao;
    auto factor = calib::FactorHessian(h, n, opt);
    REQUIRE(factor.ok());
    CHECK(factor->rtn_fallback == (f.Meta("rtn_fallback") == "true"));

    // The weight as the reference saw it: f32, or bf16 values (exact in f32).
    const DType dtype = f.Meta("dtype") == "BF16" ? DType::kBF16 : DType::kF32;
    std::string raw = WeightBytes(w, dtype);
    WeightChunk in;
    in.data = reinterpret_cast<const uint8_t*>(raw.data());
    in.dtype = dtype;
    in.rows = rows;
    in.cols = n;
    in.params.bits = std::stoi(f.Meta("num_bits"));
    in.params.group_size = std::stoi(f.Meta("group_size"));
    in.params.symmetric = f.Meta("symmetric") == "true";
    calib::GptqRows got;
    REQUIRE(calib::QuantizeRows(*factor, in, opt, &got));

    const auto codes = f.Tensor<int8_t>("codes");
    const auto scales = f.Tensor<float>("scale");
    const auto zps = f.Tensor<int8_t>("zero_point");
    REQUIRE(got.codes.size() == codes.size());
    CHECK(got.scales == scales);
    if (!in.params.symmetric) CHECK(got.zero_points == zps);
    size_t equal = 0;
    for (size_t i = 0; i < codes.size(); ++i) equal += got.codes[i] == codes[i];
    const double agree = double(equal) / double(codes.size());
    CHECK(agree >= 0.999);

    // Both losses: the reference's own, and the proxy from each side's dequantized codes.
    const size_t ng = scales.size() / rows, gs = n / ng;
    auto dequant = [&](const std::vector<int8_t>& q) {
      std::vector<float> out(q.size());
      for (size_t r = 0; r < rows; ++r) {
        for (size_t j = 0; j < n; ++j) {
          const size_t g = r * ng + j / gs;
          const float zp = in.params.symmetric ? 0.f : float(zps[g]);
          out[r * n + j] = (float(q[r * n + j]) - zp) * scales[g];
        }
      }
      return out;
    };
    const double ref_loss = std::stod(f.Meta("loss"));
    const double ref_proxy = ProxyLoss(w, dequant(codes), h, rows, n);
    const double proxy = ProxyLoss(w, dequant(got.codes), h, rows, n);
    std::printf(
        "gptq %-26s codes equal %.5f  loss %.6g vs %.6g (%.2e)  proxy %.6g vs %.6g (%.2e)\n",
        name.c_str(), agree, got.loss, ref_loss, std::fabs(got.loss / ref_loss - 1), proxy,
        ref_proxy, std::fabs(proxy / ref_proxy - 1));
    CHECK(std::fabs(got.loss - ref_loss) <= 1e-3 * std::fabs(ref_loss));
    CHECK(std::fabs(proxy - ref_proxy) <= 1e-3 * std::fabs(ref_proxy));
    // The proxy the generator computed in f64 from the reference's returned weight.
    CHECK(std::fabs(ref_proxy - std::stod(f.Meta("proxy_loss"))) <=
          1e-3 * std::stod(f.Meta("proxy_loss")));
  }
}

TEST_CASE("Row chunks give the rows of the whole weight") {
  const fs::path dir = DataDir() / "golden" / "gptq";
  const File f = Load(dir / "w4asym_g128_static.safetensors");
  const File hf = Load(dir / (f.Meta("hessian") + ".safetensors"));
  const size_t rows = f.Shape("w")[0], n = f.Shape("w")[1];
  const std::vector<float> w = f.Tensor<float>("w");
  calib::GptqOptions opt;
  auto factor = calib::FactorHessian(hf.Tensor<float>("h"), n, opt);
  REQUIRE(factor.ok());
  auto run = [&](size_t r0, size_t r1) {
    WeightChunk in;
    in.data = reinterpret_cast<const uint8_t*>(w.data() + r0 * n);
    in.dtype = DType::kF32;
    in.rows = r1 - r0;
    in.cols = n;
    in.params = {.bits = 4, .group_size = 128, .symmetric = false};
    calib::GptqRows out;
    REQUIRE(calib::QuantizeRows(*factor, in, opt, &out));
    return out;
  };
  const auto whole = run(0, rows);
  std::vector<int8_t> joined;
  for (size_t r0 = 0; r0 < rows; r0 += 7) {
    const auto part = run(r0, std::min(rows, r0 + 7));
    joined.insert(joined.end(), part.codes.begin(), part.codes.end());
  }
  // SGEMM may block differently for fewer rows; the rows' arithmetic is the same.
  size_t equal = 0;
  for (size_t i = 0; i < joined.size(); ++i) equal += joined[i] == whole.codes[i];
  CHECK(double(equal) / joined.size() >= 0.999);
}

TEST_CASE("actorder group and dynamic are refused, as compressed-tensors 0.19.0 refuses them") {
  auto manifest = ReadJsonFile((DataDir() / "golden" / "gptq" / "manifest.json").string());
  REQUIRE(manifest.ok());
  for (const JsonValue& r : manifest->Find("refused")->as_array()) {
    const std::string ao = r.Find("actorder")->as_string();
    CAPTURE(ao);
    // The reference refused it (its message is recorded), and so does quench.
    REQUIRE(r.Find("message")->is_string());
    CHECK(r.Find("message")->as_string() == "actorder='" + ao + "' has been removed");
    auto got = calib::ParseActOrder(ao);
    REQUIRE_FALSE(got.ok());
    CHECK(got.status().message().find("has been removed") != std::string::npos);
  }
  CHECK(calib::ParseActOrder("static").ok());
  CHECK(calib::ParseActOrder("none").ok());
  CHECK_FALSE(calib::ParseActOrder("sideways").ok());
}

TEST_CASE("A Hessian of the wrong size is refused") {
  CHECK_FALSE(calib::FactorHessian(std::vector<float>(9, 1.f), 4, {}).ok());
}

}  // namespace
}  // namespace quench::testing
