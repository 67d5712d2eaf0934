// Static activation scales from statistics (src/calib/act_scales.*), against the pinned
// reference's outputs in data/golden/act_scales (scripts/make_golden_act_scales.py):
// calculate_qparams / the NVFP4 observer global scale on (min, max) pairs, model_free_ptq's
// per-tensor FP8 weights, and the quantization_config and tensors llm-compressor's oneshot writes
// for FP8, NVFP4 and W8A8 with static activations.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "calib/act_scales.h"
#include "format/json.h"
#include "format/model_folder.h"
#include "kernel_test_util.h"
#include "plan_fingerprint.h"
#include "quench/convert.h"
#include "schemes/fp8.h"
#include "stats_folder.h"
#include "test_util.h"

namespace quench::testing {
namespace {

const fs::path kGolden = DataDir() / "golden" / "act_scales";

std::string Hex(const void* p, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    char b[3];
    std::snprintf(b, sizeof b, "%02x", static_cast<const uint8_t*>(p)[i]);
    s += b;
  }
  return s;
}

// `v`, a value of d, as d's little-endian bytes in hex.
std::string ValueHex(float v, DType d) {
  if (d == DType::kF32) return Hex(&v, 4);
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if (d == DType::kBF16) {
    const uint16_t h = static_cast<uint16_t>(bits >> 16);  // exact: v is a bf16 value
    return Hex(&h, 2);
  }
  const uint16_t h = F32ToF16(v);
  return Hex(&h, 2);
}

DType ParseDType(const std::string& s) {
  return s == "BF16" ? DType::kBF16 : s == "F16" ? DType::kF16 : DType::kF32;
}

JsonValue Golden(const std::string& file) {
  auto j = ReadJsonFile((kGolden / file).string());
  REQUIRE_MESSAGE(j.ok(), j.status().ToString());
  return *j;
}

struct Pair {
  float min, max;
  const JsonValue* golden;  // its BF16 case in qparams.json
};

// The golden (min, max) pairs, BF16 cases; they point into `q`.
std::vector<Pair> BF16Pairs(const JsonValue& q) {
  std::vector<Pair> out;
  for (const JsonValue& c : q.Find("cases")->as_array()) {
    if (c.Find("dtype")->as_string() != "BF16") continue;
    out.push_back({static_cast<float>(c.Find("min")->as_double()),
                   static_cast<float>(c.Find("max")->as_double()), &c});
  }
  return out;
}

struct Site {
  std::string name;
  uint64_t n = 0;
  std::vector<std::string> consumers;
  float min = -1, max = 1;
  int64_t count = 512;
};

// A statistics folder (docs/statistics-format.md) with min/max only: every channel spans
// [min, max] but one, which sits inside, so the site's range is (min, max).
void WriteStats(const fs::path& dir, const fs::path& model, const std::vector<Site>& sites) {
  auto folder = LoadModelFolder(model);
  REQUIRE(folder.ok());
  StatsParts parts;
  for (const Site& s : sites) {
    for (const std::string& c : s.consumers) parts.AddModelConsumer(*folder, c, s.name);
    std::vector<float> mn(s.n, s.min), mx(s.n, s.max);
    if (s.n > 1) mn[1] = mx[1] = (s.min + s.max) / 2;
    parts.AddSite(s.name, s.count, std::vector<double>(s.n, 1.0), std::vector<double>(s.n, 1.0),
                  mn, mx);
  }
  WriteStatsFolder(dir, kTinyLlamaModel, TinyLlamaCollection("none"), parts);
}

// data/tiny-llama's sites (q/k/v share one, gate/up another), each with the range of the
// golden pair of its index.
std::vector<Site> TinyLlamaSites(const std::vector<Pair>& pairs) {
  std::vector<Site> sites;
  for (const SiteShape& s : TinyLlamaSiteShapes()) sites.push_back({s.name, s.n, s.consumers});
  for (size_t i = 0; i < sites.size(); ++i) {
    sites[i].min = pairs[i % pairs.size()].min;
    sites[i].max = pairs[i % pairs.size()].max;
  }
  return sites;
}

std::string TensorHex(const std::map<std::string, Loaded>& all, const std::string& name) {
  auto [l, t] = FindTensor(all, name);
  REQUIRE_MESSAGE(t != nullptr, name);
  return Hex(l->Data(*t), t->nbytes());
}

// quantization_config without its ignore list (oneshot's model ignores only lm_head; quench
// adds the embeddings it leaves alone), as Python's json.dump writes it.
std::string ConfigWithoutIgnore(const JsonValue& q) {
  JsonValue::Object kept;
  for (const auto& [k, v] : q.as_object()) {
    if (k != "ignore") kept.emplace_back(k, v);
  }
  return DumpPythonJson(JsonValue(std::move(kept)));
}

}  // namespace

TEST_SUITE("act_scales") {

TEST_CASE("input scales, zero points and NVFP4 input global scales equal the reference's") {
  const JsonValue q = Golden("qparams.json");
  size_t n = 0;
  for (const JsonValue& c : q.Find("cases")->as_array()) {
    const DType d = ParseDType(c.Find("dtype")->as_string());
    const float lo = static_cast<float>(c.Find("min")->as_double());
    const float hi = static_cast<float>(c.Find("max")->as_double());
    CAPTURE(c.Find("dtype")->as_string());
    CAPTURE(lo);
    CAPTURE(hi);
    CHECK(ValueHex(calib::Fp8InputQParams(lo, hi, d).scale, d) ==
          c.Find("fp8")->Find("scale")->as_string());
    CHECK(ValueHex(calib::Int8InputQParams(lo, hi, d, true).scale, d) ==
          c.Find("int8_sym")->Find("scale")->as_string());
    const calib::ActQParams a = calib::Int8InputQParams(lo, hi, d, false);
    CHECK(ValueHex(a.scale, d) == c.Find("int8_asym")->Find("scale")->as_string());
    CHECK(Hex(&a.zero_point, 1) == c.Find("int8_asym")->Find("zero_point")->as_string());
    CHECK(ValueHex(calib::Nvfp4InputGlobalScale(lo, hi, d), DType::kF32) ==
          c.Find("nvfp4_input_global_scale")->as_string());
    ++n;
  }
  CHECK(n == 57);
}

TEST_CASE("FP8 per-tensor weight kernel equals the scalar reference on every target") {
  std::mt19937 rng(77);
  std::set<std::string> targets;
  for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (size_t cols : {1, 7, 16, 33, 100, 129, 300}) {
      const size_t rows = 3;
      std::vector<uint8_t> data(rows * cols * ElemBytes(d) + 2);
      std::normal_distribution<float> g(0.f, 2.f);
      float amax = 0;
      for (size_t i = 0; i < rows * cols; ++i) {
        const float v = g(rng);
        PutElem(data.data() + 1 + i * ElemBytes(d), d, v);
        amax = std::max(amax, std::fabs(v));
      }
      WeightChunk in;
      in.data = data.data() + 1;  // unaligned
      in.dtype = d;
      in.rows = rows;
      in.cols = cols;
      in.params.global_scale = fp8::TensorScale(amax, d);
      std::vector<uint8_t> want(rows * cols + kGuardBytes, kGuard);
      ChunkOutputs wo;
      wo.out[0] = want.data();
      REQUIRE(fp8::QuantizeTensorScalar(in, wo));
      targets.merge(ForEachTarget([&](const std::string& target) {
        std::vector<uint8_t> got(rows * cols + kGuardBytes, kGuard);
        ChunkOutputs go;
        go.out[0] = got.data();
        CAPTURE(target);
        REQUIRE(fp8::QuantizeTensor(in, go));
        CHECK(got == want);
      }));
    }
  }
  CHECK(targets.size() >= 2);
}

TEST_CASE("FP8 weights are model_free_ptq's per-tensor FP8, byte for byte") {
  const auto pairs = BF16Pairs(Golden("qparams.json"));
  for (const char* d : {"bf16", "f16", "f32"}) {
    CAPTURE(d);
    TempDir tmp;
    const fs::path src = DataDir() / "golden" / ("edge-" + std::string(d)) / "src";
    auto folder = LoadModelFolder(src);
    REQUIRE(folder.ok());
    std::vector<Site> sites;
    for (const auto& sh : folder->shards) {
      for (const auto& t : sh.header.tensors) {
        if (t.shape.size() != 2 || !t.name.ends_with(".weight")) continue;
        sites.push_back({t.name.substr(0, t.name.size() - 7), t.shape[1], {t.name}});
      }
    }
    WriteStats(tmp / "stats", src, sites);
    auto r = RunQuench({"convert", src.string(), (tmp / "o").string(), "--scheme", "FP8",
                        "--stats", (tmp / "stats").string(), "-q"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    const auto got = LoadAll(tmp / "o");
    const auto want = LoadAll(kGolden / ("fp8w-" + std::string(d)));
    size_t compared = 0;
    for (const auto& [_, l] : want) {
      for (const auto& t : l.shard.header.tensors) {
        CAPTURE(t.name);
        CHECK(TensorHex(got, t.name) == Hex(l.Data(t), t.nbytes()));
        compared += t.name.ends_with(".weight_scale");
      }
    }
    CHECK(compared >= 6);
  }
}

TEST_CASE("tiny-llama: config and tensors as oneshot writes them, values from the reference") {
  const JsonValue q = Golden("qparams.json");
  const auto pairs = BF16Pairs(q);
  struct Case {
    const char* golden;
    std::vector<std::string> args;
  };
  const Case cases[] = {
      {"FP8", {"--scheme", "FP8"}},
      {"NVFP4", {"--scheme", "NVFP4"}},
      {"W8A8_static", {"--scheme", "W8A8", "--static-activations"}},
      {"W8A8_static_asym", {"--scheme", "W8A8", "--asymmetric-activations"}},
  };
  TempDir tmp;
  const fs::path src = DataDir() / "tiny-llama";
  const auto sites = TinyLlamaSites(pairs);
  WriteStats(tmp / "stats", src, sites);
  for (const Case& c : cases) {
    CAPTURE(c.golden);
    const fs::path dst = tmp / c.golden;
    std::vector<std::string> args = {"convert", src.string(), dst.string(), "--stats",
                                     (tmp / "stats").string(), "-q"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    auto r = RunQuench(args);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    // config.json: the oneshot model's quantization_config but for the ignore list and the
    // group's key (oneshot names it group_0).
    auto cfg = ReadJsonFile((dst / "config.json").string());
    REQUIRE(cfg.ok());
    std::string mine = ConfigWithoutIgnore(*cfg->Find("quantization_config"));
    const std::string key = c.args[1];
    const size_t at = mine.find("\"" + key + "\": {");
    REQUIRE(at != std::string::npos);
    mine.replace(at, key.size() + 2, "\"group_0\"");
    CHECK(mine == ConfigWithoutIgnore(Golden("oneshot_" + std::string(c.golden) + ".json")));
    // The tensors oneshot saves for layer 0's attention and gate_proj: same names and dtypes,
    // and the static ones of the same shape ([1]).
    const auto out = LoadAll(dst);
    const JsonValue tensors = Golden("oneshot_" + std::string(c.golden) + "_tensors.json");
    for (const auto& [name, info] : tensors.as_object()) {
      CAPTURE(name);
      auto [l, t] = FindTensor(out, name);
      REQUIRE(t != nullptr);
      const std::string torch_dtype(TorchDTypeName(t->dtype));
      CHECK(torch_dtype == info.Find("dtype")->as_string());
      if (name.find("input_") != std::string::npos) CHECK(t->shape == std::vector<uint64_t>{1});
    }
    // Values: each weight's from its site's golden pair.
    for (size_t s = 0; s < sites.size(); ++s) {
      const JsonValue& g = *pairs[s % pairs.size()].golden;
      for (const std::string& w : sites[s].consumers) {
        const std::string m = w.substr(0, w.size() - 7);
        CAPTURE(m);
        const std::string golden(c.golden);
        if (golden == "FP8") {
          CHECK(TensorHex(out, m + ".input_scale") == g.Find("fp8")->Find("scale")->as_string());
        } else if (golden == "NVFP4") {
          CHECK(TensorHex(out, m + ".input_global_scale") ==
                g.Find("nvfp4_input_global_scale")->as_string());
        } else if (golden == "W8A8_static") {
          CHECK(TensorHex(out, m + ".input_scale") ==
                g.Find("int8_sym")->Find("scale")->as_string());
          CHECK(FindTensor(out, m + ".input_zero_point").second == nullptr);
        } else {
          CHECK(TensorHex(out, m + ".input_scale") ==
                g.Find("int8_asym")->Find("scale")->as_string());
          CHECK(TensorHex(out, m + ".input_zero_point") ==
                g.Find("int8_asym")->Find("zero_point")->as_string());
        }
      }
    }
  }
}

// --report on FP8 (one weight scale per tensor): each quantized tensor's SQNR equals an
// independent dequantization of the written weight (E4M3 code times the tensor's one scale)
// against the source, every element compared (tiny-llama's weights have fewer than 1024 rows).
// (The report's decoder read that scale per row, past the one-value tensor: a crash.)
TEST_CASE("--report with FP8's per-tensor weight scales equals an independent dequantization") {
  TempDir tmp;
  const fs::path src = DataDir() / "tiny-llama";
  WriteStats(tmp / "stats", src, TinyLlamaSites(BF16Pairs(Golden("qparams.json"))));
  auto r = RunQuench({"convert", src.string(), (tmp / "o").string(), "--scheme", "FP8",
                      "--stats", (tmp / "stats").string(), "--report",
                      (tmp / "r.json").string(), "-q"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  auto rep = ReadJsonFile((tmp / "r.json").string());
  REQUIRE(rep.ok());
  const auto in = LoadAll(src), out = LoadAll(tmp / "o");
  size_t checked = 0;
  for (const auto& t : rep->Find("tensors")->as_array()) {
    if (t.Find("action")->as_string() != "quantize") continue;
    const std::string name = t.Find("name")->as_string();
    CAPTURE(name);
    const std::vector<double> x = Bf16Weight(in, name);
    auto [ql, q] = FindTensor(out, name);
    auto [sl, sc] = FindTensor(out, name + "_scale");
    REQUIRE(q != nullptr);
    REQUIRE(sc != nullptr);
    REQUIRE(sc->end - sc->begin == 2);  // one bf16 scale
    const double scale = DecodeBF16(sl->Data(*sc));
    double signal = 0, noise = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double d = DecodeE4M3(ql->Data(*q)[i]) * scale - x[i];
      signal += x[i] * x[i];
      noise += d * d;
    }
    CHECK(t.Find("error")->Find("sampled_elements")->as_uint() == x.size());
    CHECK(t.Find("error")->Find("sqnr_db")->as_double() ==
          doctest::Approx(10 * std::log10(signal / noise)).epsilon(1e-9));
    ++checked;
  }
  CHECK(checked >= 7);
}

TEST_CASE("a recipe with static input_activations takes its scales from --stats") {
  TempDir tmp;
  const fs::path src = DataDir() / "tiny-llama";
  WriteStats(tmp / "stats", src, TinyLlamaSites(BF16Pairs(Golden("qparams.json"))));
  WriteBytes(tmp / "r.json",
             R"({"config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, )"
             R"("type": "int", "strategy": "channel", "symmetric": true, "dynamic": false}, )"
             R"("input_activations": {"num_bits": 8, "type": "int", "strategy": "tensor", )"
             R"("symmetric": false, "dynamic": false, "observer": "static_minmax"}}}})");
  auto r = RunQuench({"convert", src.string(), (tmp / "o").string(), "--recipe",
                      (tmp / "r.json").string(), "--stats", (tmp / "stats").string(), "-q"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  auto cfg = ReadJsonFile((tmp / "o/config.json").string());
  REQUIRE(cfg.ok());
  CHECK(ConfigWithoutIgnore(*cfg->Find("quantization_config")) ==
        ConfigWithoutIgnore(Golden("oneshot_W8A8_static_asym.json")));
  // Without statistics the same recipe is refused, naming what is needed and the collector.
  auto no = RunQuench({"convert", src.string(), (tmp / "p").string(), "--recipe",
                       (tmp / "r.json").string()});
  CHECK(no.exit_code == 2);
  CHECK(no.err.find("static input_activations need activation statistics") != std::string::npos);
  CHECK(no.err.find("scripts/collect-stats") != std::string::npos);
  CHECK_FALSE(fs::exists(tmp / "p"));
}

TEST_CASE("refusals: no statistics, schemes without dynamic 8-bit activations, bad statistics") {
  TempDir tmp;
  const fs::path src = DataDir() / "tiny-llama";
  const auto pairs = BF16Pairs(Golden("qparams.json"));
  WriteStats(tmp / "stats", src, TinyLlamaSites(pairs));
  const std::string stats = (tmp / "stats").string();
  auto run = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"convert", src.string(), (tmp / "o").string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return RunQuench(args);
  };
  struct Case {
    std::vector<std::string> args;
    int code;
    const char* message;
  };
  // A site that saw nothing, one with a NaN, and statistics lacking layer 1's down_proj.
  auto broken = TinyLlamaSites(pairs);
  broken[0].count = 0;
  broken[1].max = NAN;
  broken.pop_back();
  WriteStats(tmp / "broken", src, broken);
  const Case cases[] = {
      {{"--scheme", "FP8"}, 2, "scripts/collect-stats MODEL_DIR --text FILE -o STATS"},
      {{"--scheme", "NVFP4"}, 2, "input_global_scale"},
      {{"--scheme", "W8A8", "--static-activations"}, 2, "--stats STATS"},
      {{"--scheme", "W4A16", "--static-activations", "--stats", stats}, 2, "8-bit dynamic"},
      {{"--scheme", "W4AFP8", "--static-activations", "--stats", stats}, 2, "8-bit dynamic"},
      {{"--scheme", "FP8_DYNAMIC", "--asymmetric-activations", "--stats", stats}, 2,
       "floating point"},
      // (With --algorithm gptq they compose: tests/test_compose.cc.)
      {{"--scheme", "FP8", "--stats", (tmp / "broken").string()}, 3, "saw no tokens"},
      {{"--scheme", "FP8", "--stats", (tmp / "broken").string(), "--dry-run"}, 3,
       "NaN or infinite"},
      {{"--scheme", "FP8", "--stats", (tmp / "broken").string(), "--dry-run"}, 3,
       "no statistics for 'model.layers.1.mlp.down_proj.weight'"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.message);
    auto r = run(c.args);
    CHECK(r.exit_code == c.code);
    CHECK_MESSAGE(r.err.find(c.message) != std::string::npos, r.err);
    CHECK_FALSE(fs::exists(tmp / "o" / "config.json"));
  }
}

TEST_CASE("FP8 KV cache: k_scale / v_scale and kv_cache_scheme as oneshot writes them") {
  const JsonValue q = Golden("qparams.json");  // outlives the pairs, which point into it
  const auto pairs = BF16Pairs(q);
  TempDir tmp;
  const fs::path src = DataDir() / "tiny-llama";
  // The sites collect-stats --kv-cache records: keys and values of 2 heads x 64 per token.
  std::vector<Site> sites;
  for (int l = 0; l < 2; ++l) {
    for (const char* kind : {"k", "v"}) {
      sites.push_back(
          {"model.layers." + std::to_string(l) + ".self_attn." + kind + "_cache", 128, {}});
    }
  }
  for (size_t i = 0; i < sites.size(); ++i) {
    sites[i].min = pairs[(i + 3) % pairs.size()].min;
    sites[i].max = pairs[(i + 3) % pairs.size()].max;
  }
  WriteStats(tmp / "stats", src, sites);
  const std::string stats = (tmp / "stats").string();
  auto r = RunQuench({"convert", src.string(), (tmp / "o").string(), "--scheme", "FP8_DYNAMIC",
                      "--kv-cache", "fp8", "--stats", stats, "-q"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  auto cfg = ReadJsonFile((tmp / "o/config.json").string());
  REQUIRE(cfg.ok());
  std::string mine = ConfigWithoutIgnore(*cfg->Find("quantization_config"));
  const size_t at = mine.find("\"FP8_DYNAMIC\": {");
  REQUIRE(at != std::string::npos);
  mine.replace(at, 13, "\"group_0\"");
  CHECK(mine == ConfigWithoutIgnore(Golden("oneshot_FP8_DYNAMIC_kv.json")));
  const auto out = LoadAll(tmp / "o");
  const JsonValue kv_tensors = Golden("oneshot_FP8_DYNAMIC_kv_tensors.json");
  for (const auto& [name, info] : kv_tensors.as_object()) {
    CAPTURE(name);
    auto [l, t] = FindTensor(out, name);
    REQUIRE(t != nullptr);
    CHECK(std::string(TorchDTypeName(t->dtype)) == info.Find("dtype")->as_string());
  }
  for (size_t i = 0; i < sites.size(); ++i) {
    const std::string name = sites[i].name.substr(0, sites[i].name.size() - 6) + "_scale";
    CAPTURE(name);
    auto [l, t] = FindTensor(out, name);
    REQUIRE(t != nullptr);
    CHECK(t->shape == std::vector<uint64_t>{1});
    CHECK(TensorHex(out, name) ==
          pairs[(i + 3) % pairs.size()].golden->Find("fp8")->Find("scale")->as_string());
  }
  // The same from a recipe's kv_cache_scheme; refused without statistics or without the sites.
  WriteBytes(tmp / "kv.yaml",
             "QuantizationModifier:\n  scheme: FP8_DYNAMIC\n  ignore: [lm_head]\n"
             "  kv_cache_scheme: {num_bits: 8, type: float, strategy: tensor, dynamic: false, "
             "symmetric: true}\n");
  auto rr = RunQuench({"convert", src.string(), (tmp / "r").string(), "--recipe",
                       (tmp / "kv.yaml").string(), "--stats", stats, "-q"});
  REQUIRE_MESSAGE(rr.exit_code == 0, rr.err);
  CHECK(ReadBytes(tmp / "r/model-00001-of-00002.safetensors") ==
        ReadBytes(tmp / "o/model-00001-of-00002.safetensors"));
  auto no = RunQuench({"convert", src.string(), (tmp / "n").string(), "--recipe",
                       (tmp / "kv.yaml").string()});
  CHECK(no.exit_code == 2);
  CHECK(no.err.find("--kv-cache -o STATS") != std::string::npos);
  WriteStats(tmp / "nokv", src, TinyLlamaSites(pairs));
  auto missing = RunQuench({"convert", src.string(), (tmp / "n").string(), "--scheme", "W8A8",
                            "--kv-cache", "fp8", "--stats", (tmp / "nokv").string()});
  CHECK(missing.exit_code == 3);
  CHECK(missing.err.find("no key/value ranges for 'model.layers.0.self_attn.k_scale'") !=
        std::string::npos);
  CHECK(RunQuench({"convert", src.string(), (tmp / "n").string(), "--scheme", "W8A8",
                   "--kv-cache", "int8", "--stats", stats}).exit_code == 2);
  CHECK_FALSE(fs::exists(tmp / "n"));
}

TEST_CASE("FP8 KV cache on attention without k_proj / v_proj weights is refused at planning") {
  // all-MiniLM-L6-v2's BERT attention (attention.self.key / value): vLLM's k_scale / v_scale
  // hang under k_proj / v_proj, so there is nothing to write them beside.
  TempDir tmp;
  const std::string stats = (DataDir() / "golden/imatrix-minilm/stats").string();
  for (const bool dry : {false, true}) {
    CAPTURE(dry);
    std::vector<std::string> args = {"convert", MiniLmDir().string(), (tmp / "o").string(),
                                     "--scheme", "FP8_DYNAMIC", "--kv-cache", "fp8", "--stats",
                                     stats};
    if (dry) args.push_back("--dry-run");
    auto r = RunQuench(args);
    CHECK(r.exit_code == 3);
    CHECK(r.err.find("unsupported: --kv-cache fp8: no attention k_proj weight in this "
                     "checkpoint") != std::string::npos);
    CHECK_FALSE(fs::exists(tmp / "o"));
  }
}

TEST_CASE("--resume does not keep a shard made from other activation statistics") {
  TempDir tmp;
  const fs::path src = DataDir() / "tiny-llama";
  auto pairs = BF16Pairs(Golden("qparams.json"));
  WriteStats(tmp / "a", src, TinyLlamaSites(pairs));
  std::rotate(pairs.begin(), pairs.begin() + 1, pairs.end());
  WriteStats(tmp / "b", src, TinyLlamaSites(pairs));
  auto fingerprint = [&](const char* stats) {
    ConvertOptions o;
    o.src = src;
    o.dst = tmp / "o";
    o.scheme = "W8A8";
    o.static_activations = true;
    o.stats = tmp / stats;
    return FirstShardFingerprint(o);
  };
  CHECK(fingerprint("a") == fingerprint("a"));
  CHECK(fingerprint("a") != fingerprint("b"));
}

}  // TEST_SUITE

}  // namespace quench::testing

namespace quench::testing {
namespace {

TEST_CASE("verify --stats: static activation and KV-cache scales equal the statistics'") {
  // tiny-llama with a site per Linear input and the k/v cache sites, each with its own range;
  // NVFP4 (input_global_scale per fused set) and W8A8 asymmetric static (input_scale and
  // input_zero_point) with an FP8 KV cache; then statistics with other ranges, a changed
  // scale, and verify without SRC.
  const auto pairs = BF16Pairs(Golden("qparams.json"));
  TempDir tmp;
  const fs::path src = DataDir() / "tiny-llama";
  auto folder = LoadModelFolder(src);
  REQUIRE(folder.ok());
  auto sites_with = [&](size_t shift) {
    std::vector<Site> sites;
    for (const auto& sh : folder->shards) {
      for (const auto& t : sh.header.tensors) {
        if (t.shape.size() != 2 || !t.name.ends_with("_proj.weight")) continue;
        sites.push_back({t.name.substr(0, t.name.size() - 7), t.shape[1], {t.name}});
      }
    }
    for (int l = 0; l < 2; ++l) {
      for (const char* kind : {"k", "v"}) {
        sites.push_back(
            {"model.layers." + std::to_string(l) + ".self_attn." + kind + "_cache", 128, {}});
      }
    }
    for (size_t i = 0; i < sites.size(); ++i) {
      sites[i].min = pairs[(i + shift) % pairs.size()].min;
      sites[i].max = pairs[(i + shift) % pairs.size()].max;
    }
    return sites;
  };
  WriteStats(tmp / "stats", src, sites_with(1));
  WriteStats(tmp / "other", src, sites_with(2));
  const std::string stats = (tmp / "stats").string(), other = (tmp / "other").string();
  struct Case {
    std::vector<std::string> args;
    size_t scales;  // static scales DST holds
  };
  // 14 Linear weights; NVFP4: one input_global_scale each; W8A8 asymmetric: scale and zero
  // point each; FP8 KV cache: k_scale and v_scale of 2 layers.
  for (const Case& c : {Case{{"--scheme", "NVFP4"}, 14},
                        Case{{"--scheme", "W8A8", "--static-activations",
                              "--asymmetric-activations", "--kv-cache", "fp8"}, 14 * 2 + 4}}) {
    CAPTURE(c.args[1]);
    const fs::path o = tmp / ("o-" + c.args[1]);
    std::vector<std::string> args = {"convert", src.string(), o.string(), "--stats", stats, "-q"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    auto r = RunQuench(args);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    auto v = RunQuench({"verify", o.string(), src.string(), "--stats", stats, "-q"});
    CAPTURE(v.out);
    CAPTURE(v.err);
    CHECK(v.exit_code == 0);
    CHECK(v.out.find(std::to_string(c.scales) + " static scales equal") != std::string::npos);
    // Other statistics: every scale differs (the ranges all moved).
    v = RunQuench({"verify", o.string(), src.string(), "--stats", other, "-q"});
    CHECK(v.exit_code == 3);
    CHECK(v.out.find("static-scale: expected") != std::string::npos);
    // Without SRC: a usage error naming what is missing.
    v = RunQuench({"verify", o.string(), "--stats", stats, "-q"});
    CHECK(v.exit_code == 2);
    CHECK(v.err.find("needs SRC") != std::string::npos);
  }
  // A damaged config whose config_groups is not an object: the unsupported layout named, not
  // an internal error (std::get threw: exit 1; found by scripts/fuzz-outputs).
  const fs::path o = tmp / "o-NVFP4";
  std::string config = ReadBytes(o / "config.json");
  const size_t at = config.find("\"config_groups\": {");
  REQUIRE(at != std::string::npos);
  config.replace(at, 18, "\"config_groups\": -1, \"x\": {");
  WriteBytes(o / "config.json", config);
  auto v = RunQuench({"verify", o.string(), src.string(), "--stats", stats, "-q"});
  CHECK(v.exit_code == 3);
  CHECK_MESSAGE(v.err.find("verify --stats re-derives the scales of a one-scheme checkpoint") !=
                    std::string::npos, v.err);
  // One group, but named otherwise than a preset (a recipe's "group_0"): the scheme to plan
  // again is unknown, and said so.
  const std::string damaged = "\"config_groups\": -1, \"x\": {";
  const size_t group = config.find("\"NVFP4\": {", config.find(damaged));
  REQUIRE(group != std::string::npos);
  config.replace(group, std::string("\"NVFP4\": {").size(), "\"group_0\": {");
  config.replace(config.find(damaged), damaged.size(), "\"config_groups\": {");
  REQUIRE(config.find("\"group_0\": {") != std::string::npos);
  WriteBytes(o / "config.json", config);
  v = RunQuench({"verify", o.string(), src.string(), "--stats", stats, "-q"});
  CHECK(v.exit_code == 3);
  CHECK_MESSAGE(v.err.find("verify --stats: config group 'group_0' is not a preset name") !=
                    std::string::npos, v.err);
}

}  // namespace
}  // namespace quench::testing
