// Every data-free scheme end to end on the bundled checkpoint: the output re-read, each
// quantized weight's tensors checked against its format (names, dtypes, shapes) and
// dequantized with decoders written here from the format definitions, within the error the
// scheme's rounding allows. Also NVFP4 global scales shared across every set vLLM fuses
// (including those the reference misses), planning errors, and `quench schemes`.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>

#include "quench/convert.h"
#include "quench/scheme.h"
#include "test_util.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;
using quench::DType;
using qt::FindTensor;
using qt::Loaded;

namespace {

const fs::path kTiny = qt::DataDir() / "tiny-llama";

const char* kModules[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                          "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                          "mlp.down_proj"};

uint32_t U32(const uint8_t* p) { return p[0] | p[1] << 8 | p[2] << 16 | static_cast<uint32_t>(p[3]) << 24; }

// Value i of a row packed `bits` per value, LSB first, densely across little-endian int32
// words (compressed-tensors pack_to_int32).
uint32_t Unpack(const uint8_t* row_words, uint64_t i, int bits) {
  uint64_t acc = 0;
  const uint64_t bit = i * static_cast<uint64_t>(bits);
  const uint64_t w = bit / 32, off = bit % 32;
  acc = U32(row_words + 4 * w);
  if (off + static_cast<uint64_t>(bits) > 32) acc |= static_cast<uint64_t>(U32(row_words + 4 * (w + 1))) << 32;
  return static_cast<uint32_t>((acc >> off) & ((1u << bits) - 1));
}

struct Tensors {
  const Loaded* loaded = nullptr;
  const quench::TensorInfo* info = nullptr;
  const uint8_t* data() const { return loaded->Data(*info); }
};

Tensors Get(const std::map<std::string, Loaded>& all, const std::string& name) {
  auto [l, t] = FindTensor(all, name);
  REQUIRE_MESSAGE(t != nullptr, name);
  return {l, t};
}

// Checks one quantized module of `scheme` against the source weight; returns the number of
// elements outside the scheme's error bound.
size_t CheckModule(const quench::SchemeInfo& scheme, const std::map<std::string, Loaded>& src,
                   const std::map<std::string, Loaded>& out, const std::string& m) {
  const Tensors w = Get(src, m + ".weight");
  const uint64_t rows = w.info->shape[0], cols = w.info->shape[1];
  const std::string fmt(scheme.format);
  const auto& wa = scheme.weights;
  const int bits = wa.num_bits;
  const uint64_t g = wa.group_size ? static_cast<uint64_t>(*wa.group_size) : cols;
  const uint64_t ng = cols / g;
  auto x = [&](uint64_t r, uint64_t c) { return qt::DecodeBF16(w.data() + 2 * (r * cols + c)); };
  size_t bad = 0;
  auto expect = [&](double got, double want, double bound) {
    if (!(std::fabs(got - want) <= bound)) ++bad;
  };
  if (fmt == "int-quantized") {
    const Tensors q = Get(out, m + ".weight"), s = Get(out, m + ".weight_scale");
    CHECK(q.info->dtype == DType::kI8);
    CHECK(q.info->shape == std::vector<uint64_t>{rows, cols});
    CHECK(s.info->shape == std::vector<uint64_t>{rows, ng});
    for (uint64_t r = 0; r < rows; ++r) {
      for (uint64_t c = 0; c < cols; ++c) {
        const double sc = qt::DecodeBF16(s.data() + 2 * (r * ng + c / g));
        const int8_t qv = static_cast<int8_t>(q.data()[r * cols + c]);
        CHECK_MESSAGE((qv >= -(1 << (bits - 1)) && qv < (1 << (bits - 1))), m);
        // Rounding to the integer grid (half a step), after x/s was rounded to BF16.
        expect(qv * sc, x(r, c), sc * 0.5 + std::fabs(x(r, c)) / 128);
      }
    }
  } else if (fmt == "pack-quantized") {
    const Tensors p = Get(out, m + ".weight_packed"), s = Get(out, m + ".weight_scale");
    const Tensors shape = Get(out, m + ".weight_shape");
    const uint64_t words = (cols * bits + 31) / 32;
    CHECK(p.info->dtype == DType::kI32);
    CHECK(p.info->shape == std::vector<uint64_t>{rows, words});
    CHECK(shape.info->dtype == DType::kI64);
    uint64_t shp[2];
    std::memcpy(shp, shape.data(), 16);
    CHECK(shp[0] == rows);
    CHECK(shp[1] == cols);
    const bool asym = !wa.symmetric;
    Tensors z;
    if (asym) {
      z = Get(out, m + ".weight_zero_point");
      CHECK(z.info->dtype == DType::kI32);
      CHECK(z.info->shape == std::vector<uint64_t>{(rows * bits + 31) / 32, ng});
    } else {
      CHECK(FindTensor(out, m + ".weight_zero_point").second == nullptr);
    }
    const int offset = 1 << (bits - 1);
    for (uint64_t r = 0; r < rows; ++r) {
      for (uint64_t c = 0; c < cols; ++c) {
        const uint64_t gi = c / g;
        const double sc = qt::DecodeBF16(s.data() + 2 * (r * ng + gi));
        const int qv = static_cast<int>(Unpack(p.data() + 4 * words * r, c, bits)) - offset;
        int zp = 0;
        if (asym) {
          // Zero points are packed along dim 0: column gi of the [rows, groups] matrix.
          const uint64_t bit = r * bits;
          const uint64_t zr = bit / 32, off = bit % 32;
          uint64_t acc = U32(z.data() + 4 * (zr * ng + gi));
          if (off + bits > 32) acc |= static_cast<uint64_t>(U32(z.data() + 4 * ((zr + 1) * ng + gi))) << 32;
          zp = static_cast<int>((acc >> off) & ((1u << bits) - 1)) - offset;
        }
        // Half a grid step, plus the BF16 roundings of x/s and of x/s + zp.
        expect((qv - zp) * sc, x(r, c), sc * (0.5 + 1.0 / 32) + std::fabs(x(r, c)) / 128);
      }
    }
  } else if (fmt == "nvfp4-pack-quantized") {
    const Tensors p = Get(out, m + ".weight_packed"), s = Get(out, m + ".weight_scale");
    const Tensors gs = Get(out, m + ".weight_global_scale");
    CHECK(p.info->shape == std::vector<uint64_t>{rows, cols / 2});
    CHECK(s.info->dtype == DType::kF8E4M3);
    CHECK(s.info->shape == std::vector<uint64_t>{rows, cols / 16});
    CHECK(gs.info->dtype == DType::kF32);
    float gsv;
    std::memcpy(&gsv, gs.data(), 4);
    for (uint64_t r = 0; r < rows; ++r) {
      for (uint64_t c = 0; c < cols; ++c) {
        const double eff = qt::DecodeE4M3(s.data()[r * (cols / 16) + c / 16]) / gsv;
        const uint8_t byte = p.data()[r * (cols / 2) + c / 2];
        const double v = qt::DecodeE2M1(c % 2 == 0 ? (byte & 0xF) : (byte >> 4));
        // The E2M1 grid's widest gap is 2 (between 4 and 6): at most one unit of eff away,
        // which also covers values clipped at 6 after the E4M3 scale rounded down.
        expect(v * eff, x(r, c), eff * (1.0 + 1e-9));
      }
    }
  } else if (fmt == "mxfp4-pack-quantized" || fmt == "mxfp8-quantized") {
    const bool fp8 = fmt == "mxfp8-quantized";
    const Tensors v = Get(out, m + (fp8 ? ".weight" : ".weight_packed"));
    const Tensors s = Get(out, m + ".weight_scale");
    CHECK(s.info->dtype == DType::kU8);
    CHECK(s.info->shape == std::vector<uint64_t>{rows, cols / 32});
    CHECK(v.info->shape == std::vector<uint64_t>{rows, fp8 ? cols : cols / 2});
    for (uint64_t r = 0; r < rows; ++r) {
      for (uint64_t c = 0; c < cols; ++c) {
        // E8M0: the byte is a biased exponent (bias 127).
        const double sc = std::ldexp(1.0, s.data()[r * (cols / 32) + c / 32] - 127);
        if (fp8) {
          expect(qt::DecodeE4M3(v.data()[r * cols + c]) * sc, x(r, c),
                 std::fabs(x(r, c)) / 16 + sc / 512);
        } else {
          const uint8_t byte = v.data()[r * (cols / 2) + c / 2];
          const double q = qt::DecodeE2M1(c % 2 == 0 ? (byte & 0xF) : (byte >> 4));
          // One unit of the grid: the widest E2M1 gap, or clipping at 6 when the group's
          // amax rounds down to a power of two (mantissa in [1.5, 1.75)).
          expect(q * sc, x(r, c), sc * (1.0 + 1e-9));
        }
      }
    }
  } else {
    CHECK_MESSAGE(fmt == "float-quantized", fmt);  // FP8: covered by test_convert
  }
  return bad;
}

float GlobalScaleOf(const std::map<std::string, Loaded>& out, const std::string& module) {
  auto [l, t] = FindTensor(out, module + ".weight_global_scale");
  REQUIRE_MESSAGE(t != nullptr, module);
  float v;
  std::memcpy(&v, l->Data(*t), 4);
  return v;
}

// weight_global_scale from the definition (compressed-tensors generate_gparam for BF16):
// 448 * 6 / amax evaluated as reciprocal then multiply, each rounded to BF16.
float ExpectedGlobalScale(float amax) {
  return qt::RoundBF16(static_cast<double>(qt::RoundBF16(1.0 / amax)) * 2688.0);
}

}  // namespace

TEST_SUITE("schemes") {
  TEST_CASE("bundled checkpoint: every data-free scheme converts, re-reads and dequantizes") {
    auto src = qt::LoadAll(kTiny);
    size_t schemes_run = 0;
    for (const quench::SchemeInfo& scheme : quench::SchemeTable()) {
      if (!scheme.needs_calibration.empty()) continue;
      const std::string name(scheme.name);
      CAPTURE(name);
      quench::ConvertOptions o;
      o.src = kTiny;
      o.scheme = name;
      // tiny-llama's intermediate size (704) is not a multiple of 128: group-128 schemes
      // leave down_proj alone (the planning error for it is tested below).
      const bool group128 = scheme.weights.group_size && *scheme.weights.group_size == 128;
      if (group128) o.ignore.push_back("re:.*down_proj$");
      qt::TempDir tmp;
      o.dst = tmp / "out";
      auto r = quench::Convert(o);
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      CHECK(r->tensors_quantized == (group128 ? 12u : 14u));
      auto out = qt::LoadAll(o.dst);
      for (int layer = 0; layer < 2; ++layer) {
        for (const char* mod : kModules) {
          const std::string m = "model.layers." + std::to_string(layer) + "." + mod;
          if (group128 && std::string(mod) == "mlp.down_proj") continue;
          CAPTURE(m);
          CHECK(CheckModule(scheme, src, out, m) == 0);
        }
      }
      auto cfg = quench::ReadJsonFile((o.dst / "config.json").string());
      REQUIRE(cfg.ok());
      CHECK(cfg->Find("quantization_config")->Find("format")->as_string() == scheme.format);
      ++schemes_run;
    }
    CHECK(schemes_run >= 16);
  }

  TEST_CASE("NVFP4 global scales are shared by every set vLLM fuses, across shards") {
    qt::TempDir tmp;
    // Deterministic BF16 weights whose largest magnitude is `amax` (at element 0).
    auto weight = [](uint64_t rows, uint64_t cols, float amax) {
      std::vector<float> v(rows * cols);
      for (size_t i = 0; i < v.size(); ++i) v[i] = amax * 0.25f * static_cast<float>((i * 7919) % 97) / 97.f;
      v[0] = -amax;
      return qt::Bf16Bytes(v);
    };
    auto t = [&](const std::string& n, float amax) {
      return qt::RawTensor{n + ".weight", DType::kBF16, {32, 64}, weight(32, 64, amax)};
    };
    // q/k/v split across two shards; per-expert gate/up, MLA q_a/kv_a, w1/w3 (fused by vLLM,
    // not all by the reference); o_proj stands alone.
    qt::WriteShard(tmp / "src/model-00001-of-00002.safetensors",
                   {t("l.self_attn.q_proj", 1.5f), t("l.self_attn.o_proj", 3.0f),
                    t("l.mlp.experts.0.gate_proj", 0.75f), t("l.mlp.experts.0.up_proj", 2.5f),
                    t("l.mlp.experts.1.gate_proj", 0.5f), t("l.mlp.experts.1.up_proj", 0.25f),
                    t("l.self_attn.q_a_proj", 1.0f)});
    qt::WriteShard(tmp / "src/model-00002-of-00002.safetensors",
                   {t("l.self_attn.k_proj", 5.1875f), t("l.self_attn.v_proj", 0.125f),
                    t("l.self_attn.kv_a_proj_with_mqa", 4.0f), t("f.w1", 0.3f), t("f.w3", 0.6f)});
    quench::ConvertOptions o;
    o.src = tmp / "src";
    o.dst = tmp / "out";
    o.scheme = "NVFP4A16";
    auto r = quench::Convert(o);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    auto out = qt::LoadAll(o.dst);
    auto bf = [](float f) { return qt::RoundBF16(f); };
    const struct {
      std::vector<std::string> members;
      float amax;
    } sets[] = {
        {{"l.self_attn.q_proj", "l.self_attn.k_proj", "l.self_attn.v_proj"}, bf(5.1875f)},
        {{"l.self_attn.o_proj"}, bf(3.0f)},
        {{"l.mlp.experts.0.gate_proj", "l.mlp.experts.0.up_proj"}, bf(2.5f)},
        {{"l.mlp.experts.1.gate_proj", "l.mlp.experts.1.up_proj"}, bf(0.5f)},
        {{"l.self_attn.q_a_proj", "l.self_attn.kv_a_proj_with_mqa"}, bf(4.0f)},
        {{"f.w1", "f.w3"}, bf(0.6f)},
    };
    for (const auto& set : sets) {
      for (const std::string& m : set.members) {
        CAPTURE(m);
        CHECK(GlobalScaleOf(out, m) == ExpectedGlobalScale(set.amax));
      }
    }
    // The spec's worked example: amax 5.1875 gives 516 (2688/A computed directly gives 520).
    CHECK(ExpectedGlobalScale(5.1875f) == 516.f);
    // Tensors stay in the shard they came from.
    CHECK(out.at("model-00002-of-00002.safetensors").Find("l.self_attn.k_proj.weight_packed") != nullptr);
  }

  TEST_CASE("planning refuses what cannot be converted, before any weight is read") {
    qt::TempDir tmp;
    auto run = [&](std::vector<std::string> extra) {
      std::vector<std::string> args = {"convert", kTiny.string(), (tmp / "o").string()};
      args.insert(args.end(), extra.begin(), extra.end());
      return qt::RunQuench(args);
    };
    auto g = run({"--scheme", "W4A16"});
    CHECK(g.exit_code == 3);
    CHECK(g.err.find("model.layers.0.mlp.down_proj.weight") != std::string::npos);
    CHECK(g.err.find("not a multiple of the group size 128") != std::string::npos);
    CHECK(g.err.find("--ignore") != std::string::npos);
    for (const char* s : {"NVFP4", "FP8"}) {
      CAPTURE(s);
      auto c = run({"--scheme", s});
      CHECK(c.exit_code == 2);
      CHECK(c.err.find("calibration") != std::string::npos);
      CHECK(c.err.find("statistics") != std::string::npos);
    }
    CHECK(run({"--scheme", "NVFP4A16", "--group-size", "32"}).exit_code == 2);
    CHECK(run({"--scheme", "MXFP4", "--asymmetric"}).exit_code == 2);
    CHECK(run({"--scheme", "W4A16", "--group-size", "12"}).exit_code == 2);
    CHECK_FALSE(fs::exists(tmp / "o"));
    // The overrides that vLLM runs are accepted: group 64 divides 704.
    auto ok = run({"--scheme", "W4A16", "--group-size", "64", "--asymmetric", "-q"});
    CHECK(ok.exit_code == 0);
    auto cfg = quench::ReadJsonFile((tmp / "o/config.json").string());
    REQUIRE(cfg.ok());
    const auto* w = cfg->Find("quantization_config")->Find("config_groups")->Find("W4A16")->Find("weights");
    CHECK(w->Find("group_size")->as_int() == 64);
    CHECK(w->Find("symmetric")->as_bool() == false);
    CHECK(w->Find("zp_dtype")->as_string() == "torch.int8");
  }

  TEST_CASE("quench schemes lists every scheme with format, bits and calibration needs") {
    auto r = qt::RunQuench({"schemes"});
    CHECK(r.exit_code == 0);
    for (const quench::SchemeInfo& s : quench::SchemeTable()) {
      CAPTURE(s.name);
      CHECK(r.out.find(std::string(s.name)) != std::string::npos);
      CHECK(r.out.find(std::string(s.format)) != std::string::npos);
    }
    // Bits per weight including scales, worked out from the layouts: W4A16 is 4 bits plus a
    // BF16 scale per 128 (16/128) plus the 16-byte weight_shape; FP8_DYNAMIC is 8 + 16/4096.
    CHECK(r.out.find("4.13") != std::string::npos);
    CHECK(r.out.find("8.00") != std::string::npos);
    CHECK(r.out.find("NEEDS CALIBRATION") != std::string::npos);
  }
}
