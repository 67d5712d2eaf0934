// SmoothQuant end to end, and its mappings. data/golden/smoothquant/tiny-llama-smoothed is
// what llm-compressor 0.14.0.1's own SmoothQuantModifier._apply_smoothing makes of
// data/tiny-llama with the statistics beside it (scripts/make_golden_smoothquant.py), so
// quench's --algorithm smoothquant conversion of tiny-llama must equal, byte for byte, its RTN
// conversion of that checkpoint (RTN itself being byte-identical to the reference's
// quantization: test_golden): smoothed norms, smoothed and quantized balance weights, config.
// Also: mapping resolution as compressed-tensors' match_modules_set groups modules, the
// refusals at planning, and the resume fingerprint.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "calib/mappings.h"
#include "format/json.h"
#include "format/safetensors.h"
#include "plan_fingerprint.h"
#include "quench/convert.h"
#include "test_util.h"

namespace quench::testing {
namespace {

const fs::path kGolden = DataDir() / "golden" / "smoothquant";

void CheckSameShards(const fs::path& a, const fs::path& b) {
  int shards = 0;
  for (const auto& e : fs::directory_iterator(b)) {
    const std::string name = e.path().filename().string();
    // config.json differs by what a oneshot run writes (the weights' observer, an empty
    // sparsity_config), which RTN does not; test_recipe_smooth compares it with oneshot's.
    if (e.path().extension() != ".safetensors") continue;
    CAPTURE(name);
    CHECK(ReadBytes(a / name) == ReadBytes(e.path()));
    shards += e.path().extension() == ".safetensors";
  }
  CHECK(shards == 2);
}

TEST_CASE("SmoothQuant then RTN equals the reference's smoothing then RTN, byte for byte") {
  for (const std::string scheme : {"W8A8", "W4A16", "FP8_DYNAMIC"}) {
    CAPTURE(scheme);
    TempDir tmp;
    // W4A16 in groups of 64: down_proj's 704 inputs are not a multiple of 128.
    const bool group = scheme == "W4A16";
    std::vector<std::string> args = {"convert", (kGolden / "tiny-llama-smoothed").string(),
                                     (tmp / "ref").string(), "--scheme", scheme, "-q"};
    if (group) args.insert(args.end(), {"--group-size", "64"});
    auto ref = RunQuench(args);
    REQUIRE_MESSAGE(ref.exit_code == 0, ref.err);
    // Whole tensors in large chunks, and a run that cuts every tensor (norms included) into
    // many small chunks on several threads: the same bytes.
    for (uint64_t chunk : {uint64_t{0}, uint64_t{300}}) {
      CAPTURE(chunk);
      ConvertOptions o;
      o.src = DataDir() / "tiny-llama";
      o.dst = tmp / ("sq" + std::to_string(chunk));
      o.scheme = scheme;
      if (group) o.group_size = 64;
      o.algorithm = "smoothquant";
      o.stats = kGolden / "stats";
      o.chunk_bytes = chunk;
      o.threads = chunk == 0 ? 1 : 4;
      auto s = Convert(o);
      REQUIRE_MESSAGE(s.ok(), s.status().ToString());
      CheckSameShards(o.dst, tmp / "ref");
    }
  }
}

TEST_CASE("the dry run marks every tensor smoothing rewrites") {
  TempDir tmp;
  auto r = RunQuench({"convert", (DataDir() / "tiny-llama").string(), (tmp / "o").string(),
                      "--scheme", "W8A8", "--algorithm", "smoothquant", "--stats",
                      (kGolden / "stats").string(), "--smoothing-strength", "0.6", "--dry-run"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  CHECK(r.err.find("SmoothQuant (alpha 0.59999999999999998) from") != std::string::npos);
  CHECK(r.err.find("4 mappings of LlamaForCausalLM, rewriting 14 tensors") != std::string::npos);
  size_t smoothed = 0;
  for (size_t at = r.out.find("smoothed"); at != std::string::npos;
       at = r.out.find("smoothed", at + 1)) {
    ++smoothed;
  }
  CHECK(smoothed == 14);  // 2 layers x (2 norms + q, k, v, gate, up)
}

TEST_CASE("SmoothQuant's refusals at planning") {
  TempDir tmp;
  const std::string src = (DataDir() / "tiny-llama").string();
  const std::string stats = (kGolden / "stats").string(), dst = (tmp / "o").string();
  // Statistics without min and max: a copy of the golden ones with the fields list cut.
  const fs::path nominmax = tmp / "nominmax";
  fs::create_directories(nominmax);
  fs::copy_file(kGolden / "stats" / "stats-00001.safetensors",
                nominmax / "stats-00001.safetensors");
  std::string manifest = ReadBytes(kGolden / "stats" / "manifest.json");
  for (size_t at; (at = manifest.find(",\n    \"min\",\n    \"max\"")) != std::string::npos;) {
    manifest.erase(at, std::string(",\n    \"min\",\n    \"max\"").size());
  }
  WriteBytes(nominmax / "manifest.json", manifest);
  std::vector<Refusal> cases = {
      {{"--algorithm", "smoothquant"}, 2, "needs --stats"},
      {{"--algorithm", "smoothquant", "--stats", stats, "--smoothing-strength", "1.5"}, 2,
       "--smoothing-strength"},
      // (Ignoring one of q/k/v alone is refused earlier: vLLM fuses them.)
      {{"--algorithm", "smoothquant", "--stats", stats, "--ignore",
        "re:.*layers.0.self_attn.[qkv]_proj$"},
       3, "balance layer model.layers.0.self_attn.q_proj is left unquantized"},
      {{"--algorithm", "smoothquant", "--stats", nominmax.string()}, 3, "has no min and max"},
      // Row-wise pruning after smoothing composes (tests/test_compose.cc); a tensor-wide
      // threshold is found before smoothing.
      {{"--algorithm", "smoothquant", "--stats", stats, "--prune", "unstructured:0.5",
        "--prune-granularity", "tensor"}, 3, "tensor-wide threshold"},
      {{"--algorithm", "smoothquant", "--stats", stats, "--scheme", "NVFP4A16"}, 3,
       "whose global scale is computed before smoothing"},
      // (Static activation scales after smoothing: tests/test_compose.cc.)
      {{"--algorithm", "smoothquant", "--stats", stats, "--observer", "imatrix_mse"}, 3,
       "the imatrix_mse observer with --algorithm smoothquant is not built yet"},
  };
  // W8A8 unless a case names its scheme.
  for (Refusal& c : cases) {
    if (std::find(c.args.begin(), c.args.end(), "--scheme") == c.args.end()) {
      c.args.insert(c.args.begin(), {"--scheme", "W8A8"});
    }
  }
  CheckRefusals({"convert", src, dst}, cases, dst);
}

// Statistics whose ranges are finite but absurd (3e38) make smoothing scales that overflow the
// balance weights: a non-finite error naming the weight and the cause, exit 3, nothing left;
// it was reported as an internal error ("a bug in quench"; found by scripts/fuzz-convert).
TEST_CASE("smoothing that overflows a weight is a non-finite error, not an internal one") {
  TempDir tmp;
  const fs::path stats = tmp / "stats";
  fs::copy(kGolden / "stats", stats);
  std::string bytes = ReadBytes(stats / "stats-00001.safetensors");
  const auto header = ReadSafetensorsHeader(stats / "stats-00001.safetensors");
  REQUIRE(header.ok());
  for (const TensorInfo& t : header->tensors) {
    if (t.name != "model.layers.0.self_attn.q_proj.max" &&
        t.name != "model.layers.0.self_attn.q_proj.min") {
      continue;
    }
    const float v = t.name.ends_with(".max") ? 3e38f : -3e38f;
    for (uint64_t i = 0; i < t.nbytes() / 4; ++i) {
      std::memcpy(bytes.data() + header->data_start + t.begin + 4 * i, &v, 4);
    }
  }
  WriteBytes(stats / "stats-00001.safetensors", bytes);
  const fs::path dst = tmp / "o";
  auto r = RunQuench({"convert", (DataDir() / "tiny-llama").string(), dst.string(), "-q",
                      "--scheme", "W8A8", "--algorithm", "smoothquant", "--stats",
                      stats.string()});
  CHECK(r.exit_code == 3);
  CHECK(r.err.find("quench: error: non-finite: ") != std::string::npos);
  CHECK(r.err.find("self_attn.") != std::string::npos);
  CHECK(r.err.find("once smoothed") != std::string::npos);
  CHECK(r.err.find("bug") == std::string::npos);
  CHECK(!fs::exists(dst));
}

TEST_CASE("--resume does not keep a shard smoothed otherwise") {
  auto fingerprint = [&](const std::string& algorithm, double alpha) {
    ConvertOptions o;
    o.src = DataDir() / "tiny-llama";
    o.dst = DataDir() / "unused";
    o.scheme = "W8A8";
    o.algorithm = algorithm;
    if (algorithm == "smoothquant") o.stats = kGolden / "stats";
    o.smoothing_strength = alpha;
    return FirstShardFingerprint(o);
  };
  const std::string base = fingerprint("smoothquant", 0.5);
  CHECK(base == fingerprint("smoothquant", 0.5));
  CHECK(base != fingerprint("smoothquant", 0.6));
  CHECK(base != fingerprint("rtn", 0.5));
}

std::vector<std::string> Llama(int layers) {
  std::vector<std::string> m = {"model.embed_tokens", "model.norm", "lm_head"};
  for (int l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (const char* s : {"input_layernorm", "post_attention_layernorm", "self_attn.q_proj",
                          "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}) {
      m.push_back(p + s);
    }
  }
  return m;
}

TEST_CASE("mappings resolve per layer as match_modules_set groups them") {
  bool fallback = true;
  auto specs = calib::MappingsFor(calib::MappingFamily::kAwq, "LlamaForCausalLM", &fallback);
  CHECK_FALSE(fallback);
  auto r = calib::ResolveMappings(specs, Llama(12));  // layers 2 and 10 must not mix
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  REQUIRE(r->size() == 48);
  CHECK((*r)[0].smooth == "model.layers.0.input_layernorm");
  CHECK((*r)[0].balance == std::vector<std::string>{"model.layers.0.self_attn.q_proj",
                                                    "model.layers.0.self_attn.k_proj",
                                                    "model.layers.0.self_attn.v_proj"});
  CHECK((*r)[12].smooth == "model.layers.0.self_attn.v_proj");
  CHECK((*r)[12].balance == std::vector<std::string>{"model.layers.0.self_attn.o_proj"});
  CHECK((*r)[47].smooth == "model.layers.11.mlp.up_proj");
  CHECK((*r)[47].balance == std::vector<std::string>{"model.layers.11.mlp.down_proj"});

  // Qwen3-MoE (AWQ): one post_attention_layernorm set per layer holding the router and every
  // expert's gate and up; up -> down per expert.
  std::vector<std::string> moe;
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    moe.push_back(p + "post_attention_layernorm");
    moe.push_back(p + "mlp.gate");
    for (int e = 0; e < 3; ++e) {
      const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
      for (const char* s : {"gate_proj", "up_proj", "down_proj"}) moe.push_back(x + s);
    }
  }
  auto m = calib::ResolveMappings(
      {calib::MappingsFor(calib::MappingFamily::kAwq, "Qwen3MoeForCausalLM", &fallback)[2],
       calib::MappingsFor(calib::MappingFamily::kAwq, "Qwen3MoeForCausalLM", &fallback)[3]},
      moe);
  REQUIRE_MESSAGE(m.ok(), m.status().ToString());
  REQUIRE(m->size() == 2 + 6);
  CHECK((*m)[0].balance.size() == 7);
  CHECK((*m)[2].smooth == "model.layers.0.mlp.experts.0.up_proj");

  // BERT: quench's explicit value -> attention.output.dense.
  calib::MappingsFor(calib::MappingFamily::kSmoothQuant, "BertModel", &fallback);
  CHECK_FALSE(fallback);
  auto b = calib::ResolveMappings(
      calib::MappingsFor(calib::MappingFamily::kSmoothQuant, "BertModel", &fallback),
      {"encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value",
       "encoder.layer.0.attention.output.dense", "encoder.layer.0.attention.output.LayerNorm",
       "encoder.layer.1.attention.self.value", "encoder.layer.1.attention.output.dense"});
  REQUIRE(b.ok());
  REQUIRE(b->size() == 2);
  CHECK((*b)[1].smooth == "encoder.layer.1.attention.self.value");

  // An unknown architecture takes the registry's default, as the reference does.
  calib::MappingsFor(calib::MappingFamily::kSmoothQuant, "FooForCausalLM", &fallback);
  CHECK(fallback);
}

TEST_CASE(
    "a last set missing a target, a module two targets match, or two smooth layers in a set, is "
    "refused") {
  std::vector<std::string> m = Llama(2);
  m.erase(std::find(m.begin(), m.end(), "model.layers.1.self_attn.k_proj"));
  bool fb;
  auto specs = calib::MappingsFor(calib::MappingFamily::kSmoothQuant, "LlamaForCausalLM", &fb);
  auto r = calib::ResolveMappings(specs, m);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("has no module for re:.*k_proj") != std::string::npos);
  auto twice = calib::ResolveMappings({{"re:.*norm", {"re:.*layernorm"}}}, Llama(1));
  REQUIRE_FALSE(twice.ok());
  CHECK(twice.status().message().find("is matched by two targets") != std::string::npos);
  // Both norms of a layer under one smooth target, with q_proj to balance: the layer's set
  // holds two smooth layers (mappings.h: match_modules_set's rules refuse it).
  auto two_smooth = calib::ResolveMappings({{"re:.*layernorm$", {"re:.*q_proj$"}}}, Llama(1));
  REQUIRE_FALSE(two_smooth.ok());
  CHECK_MESSAGE(two_smooth.status().message().find(
                    "matches more than one smooth layer in one set "
                    "(model.layers.0.input_layernorm, model.layers.0.post_attention_layernorm)") !=
                    std::string::npos,
                two_smooth.status().message());
}

}  // namespace
}  // namespace quench::testing

namespace quench::testing {
namespace {

TEST_CASE("AWQ on tiny-llama: every mapping's proxy loss is at most RTN's, and the report says "
          "which loss and ratio") {
  TempDir tmp;
  auto r = RunQuench({"convert", (DataDir() / "tiny-llama").string(), (tmp / "o").string(),
                      "--scheme", "W4A16", "--group-size", "64", "--algorithm", "awq", "--stats",
                      (kGolden / "stats").string(), "--report", (tmp / "r.json").string()});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  // GQA: v_proj (128 outputs) cannot smooth o_proj (256 inputs); the reference skips it too.
  CHECK(r.err.find("2 v_proj/qkv_proj -> o_proj mapping(s) skipped") != std::string::npos);
  auto report = ReadJsonFile((tmp / "r.json").string());
  REQUIRE(report.ok());
  const auto& sm = report->Find("smoothing")->as_array();
  REQUIRE(sm.size() == 6);
  for (const auto& m : sm) {
    CAPTURE(m.Find("smooth")->as_string());
    CHECK(m.Find("loss")->as_string() == "diagonal sum_x2");  // the statistics hold no Hessian
    const double loss = m.Find("proxy_loss")->as_double();
    const double rtn = m.Find("proxy_loss_rtn")->as_double();
    CHECK(loss <= rtn);
    CHECK(m.Find("ratio")->as_double() >= 0);
  }
  // Every rewritten tensor is written; the norms differ from the source's (scaled).
  auto out = LoadAll(tmp / "o");
  auto src = LoadAll(DataDir() / "tiny-llama");
  auto [of, ot] = FindTensor(out, "model.layers.0.input_layernorm.weight");
  auto [sf, st] = FindTensor(src, "model.layers.0.input_layernorm.weight");
  REQUIRE(ot != nullptr);
  REQUIRE(st != nullptr);
  CHECK(std::string(reinterpret_cast<const char*>(of->Data(*ot)), ot->end - ot->begin) !=
        std::string(reinterpret_cast<const char*>(sf->Data(*st)), st->end - st->begin));
}

TEST_CASE("AWQ's refusals") {
  TempDir tmp;
  const std::string src = (DataDir() / "tiny-llama").string(), dst = (tmp / "o").string();
  const std::string stats = (kGolden / "stats").string();
  const std::vector<Refusal> cases = {
      {{"--scheme", "W4A16", "--group-size", "64", "--algorithm", "awq"}, 2, "needs --stats"},
      {{"--scheme", "W4A16", "--group-size", "64", "--algorithm", "awq", "--stats", stats,
        "--awq-duo-scaling", "maybe"}, 2, "--awq-duo-scaling must be true, false or both"},
      {{"--scheme", "FP8_DYNAMIC", "--algorithm", "awq", "--stats", stats}, 3,
       "AWQ's search quantizes with the integer schemes so far"},
  };
  CheckRefusals({"convert", src, dst}, cases, dst);
}

}  // namespace
}  // namespace quench::testing
