// SparseGPT end to end: data/tiny-llama with a statistics folder written here whose layer-0
// sites hold the golden Hessian h256 (data/golden/sparsegpt), converted with --algorithm
// sparsegpt. Layer 0's q_proj equals the reference's sparsify_weight on the same weight and H
// (tiny_q_proj_*, from scripts/make_golden_sparsegpt.py); the other weights of those sites are
// N:M-structured; weights without statistics are magnitude-pruned byte for byte; with a
// scheme the output is the scheme's round to nearest of the prune-only output, byte for byte;
// the report, the dry run, the resume fingerprint and the refusals; SparseGPTModifier and
// GPTQModifier recipes equal the flags that say the same.
#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include "format/json.h"
#include "format/safetensors.h"
#include "plan_fingerprint.h"
#include "quench/convert.h"
#include "stats_folder.h"
#include "test_util.h"

namespace quench::testing {
namespace {

const fs::path kGolden = DataDir() / "golden" / "sparsegpt";

std::vector<float> ReadF32(const fs::path& file, const std::string& name) {
  auto h = ReadSafetensorsHeader(file);
  REQUIRE(h.ok());
  const std::string bytes = ReadBytes(file);
  for (const auto& t : h->tensors) {
    if (t.name != name) continue;
    std::vector<float> v((t.end - t.begin) / 4);
    std::memcpy(v.data(), bytes.data() + h->data_start + t.begin, t.end - t.begin);
    return v;
  }
  FAIL("no tensor " << name);
  return {};
}

// Layer 0's attention and MLP input sites, both with h256 (the reference's normalised H:
// quench multiplies the stored sum by 2 / sequences, so the sum stored is h * sequences / 2).
void WriteStats(const fs::path& dir) {
  const std::vector<float> h = ReadF32(kGolden / "h256.safetensors", "h");
  const size_t n = 256;
  const double sequences = 4;
  std::vector<double> packed, x2(n), abs(n);
  std::vector<float> mn(n, -1.f), mx(n, 1.f);
  for (size_t i = 0; i < n; ++i) {
    x2[i] = double(h[i * n + i]) * sequences / 2;
    abs[i] = 1;
    for (size_t j = i; j < n; ++j) packed.push_back(double(h[i * n + j]) * sequences / 2);
  }
  const std::string p = "model.layers.0.";
  const std::vector<std::pair<std::string, std::vector<std::string>>> sites = {
      {p + "self_attn.q_proj", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}},
      {p + "mlp.gate_proj", {"mlp.gate_proj", "mlp.up_proj"}}};
  StatsParts parts;
  for (const auto& [site, mods] : sites) {
    for (const std::string& m : mods) {
      const size_t rows = m.find("gate") != std::string::npos || m.find("up") != std::string::npos
                              ? 704 : m.find("q_proj") != std::string::npos ? 256 : 128;
      parts.AddConsumer(p + m + ".weight", rows, 256, site);
    }
    parts.AddSite(site, 512, x2, abs, mn, mx, &packed);
  }
  WriteStatsFolder(dir, kTinyLlamaModel, TinyLlamaCollection("full"), parts);
}

std::vector<float> Bf16Values(const std::string& b) {
  std::vector<float> v(b.size() / 2);
  for (size_t i = 0; i < v.size(); ++i) {
    v[i] = static_cast<float>(DecodeBF16(reinterpret_cast<const uint8_t*>(b.data()) + 2 * i));
  }
  return v;
}

const std::vector<std::string> kTaken = {
    "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.weight", "model.layers.0.mlp.gate_proj.weight",
    "model.layers.0.mlp.up_proj.weight"};

TEST_CASE("SparseGPT end to end: the reference's weights, N:M structure, magnitude elsewhere") {
  TempDir tmp;
  WriteStats(tmp / "stats");
  const fs::path src = DataDir() / "tiny-llama";
  for (const char* spec : {"2:4", "unstructured:0.5"}) {
    CAPTURE(spec);
    const bool nm = std::string(spec) == "2:4";
    const fs::path s = tmp / (std::string("s") + (nm ? "24" : "un")),
                   m = tmp / (std::string("m") + (nm ? "24" : "un"));
    auto rs = RunQuench({"convert", src.string(), s.string(), "--scheme", "none", "--prune", spec,
                         "--stats", (tmp / "stats").string(), "--algorithm", "sparsegpt", "-q",
                         "--report", (tmp / "report.json").string()});
    REQUIRE_MESSAGE(rs.exit_code == 0, rs.err);
    auto rm = RunQuench({"convert", src.string(), m.string(), "--scheme", "none", "--prune", spec,
                         "-q"});
    REQUIRE_MESSAGE(rm.exit_code == 0, rm.err);
    auto sout = LoadAll(s), mout = LoadAll(m);
    // Layer 0's q_proj: the reference's sparsify_weight on the same weight and Hessian.
    const std::vector<float> want = ReadF32(
        kGolden / (std::string("tiny_q_proj_") + (nm ? "24" : "un50") + ".safetensors"), "out");
    const std::vector<float> got = Bf16Values(TensorBytes(sout, kTaken[0]));
    REQUIRE(got.size() == want.size());
    size_t equal = 0, mask_equal = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      equal += std::memcmp(&got[i], &want[i], 4) == 0;
      mask_equal += (got[i] == 0) == (want[i] == 0);
    }
    MESSAGE(spec << ": q_proj values equal " << double(equal) / got.size() << ", mask "
                 << double(mask_equal) / got.size());
    CHECK(double(equal) / got.size() >= 0.999);
    CHECK(double(mask_equal) / got.size() >= 0.999);
    // The other weights of those sites: changed from magnitude's, and 2 of every 4 zero.
    for (const std::string& t : kTaken) {
      CAPTURE(t);
      const std::string b = TensorBytes(sout, t);
      CHECK(b != TensorBytes(mout, t));
      const std::vector<float> v = Bf16Values(b);
      size_t zeros = 0;
      for (size_t g = 0; g < v.size(); g += 4) {
        int z = 0;
        for (int j = 0; j < 4; ++j) z += v[g + j] == 0;
        if (nm) CHECK(z >= 2);
        zeros += z;
      }
      CHECK(zeros >= v.size() / 2);
    }
    // Without statistics: magnitude pruning's bytes.
    for (const char* t :
         {"model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.down_proj.weight",
          "model.layers.1.self_attn.q_proj.weight"}) {
      CAPTURE(t);
      CHECK(TensorBytes(sout, t) == TensorBytes(mout, t));
    }
    auto rep = ReadJsonFile((tmp / "report.json").string());
    REQUIRE(rep.ok());
    size_t sgpt = 0, magnitude = 0;
    for (const JsonValue& t : rep->Find("tensors")->as_array()) {
      const JsonValue* a = t.Find("prune_algorithm");
      if (a == nullptr) continue;
      if (a->as_string() == "sparsegpt") {
        ++sgpt;
        CHECK(t.Find("sparsegpt_loss")->as_double() > 0);
        CHECK(t.Find("sparsity")->as_double() >= 0.5);
      } else {
        ++magnitude;
        CHECK(t.Find("calibration_note")->as_string().find("no statistics") != std::string::npos);
      }
    }
    CHECK(sgpt == 5);
    CHECK(magnitude == 9);
  }
}

TEST_CASE("SparseGPT with a scheme is the scheme's round to nearest of the sparse weights") {
  TempDir tmp;
  WriteStats(tmp / "stats");
  const fs::path src = DataDir() / "tiny-llama";
  for (const char* spec : {"2:4", "unstructured:0.5"}) {
    for (const char* scheme : {"W4A16", "W8A8"}) {
      CAPTURE(spec);
      CAPTURE(scheme);
      const fs::path sparse = tmp / "sparse", q = tmp / "q", twice = tmp / "twice";
      fs::remove_all(sparse);
      fs::remove_all(q);
      fs::remove_all(twice);
      const std::vector<std::string> common = {"--stats", (tmp / "stats").string(),
                                               "--algorithm", "sparsegpt", "--prune", spec, "-q"};
      std::vector<std::string> a = {"convert", src.string(), sparse.string(), "--scheme", "none"};
      a.insert(a.end(), common.begin(), common.end());
      auto r1 = RunQuench(a);
      REQUIRE_MESSAGE(r1.exit_code == 0, r1.err);
      std::vector<std::string> b = {"convert", src.string(), q.string(), "--scheme", scheme,
                                    "--group-size", std::string(scheme) == "W4A16" ? "64" : "-1"};
      b.insert(b.end(), common.begin(), common.end());
      auto r2 = RunQuench(b);
      REQUIRE_MESSAGE(r2.exit_code == 0, r2.err);
      auto r3 = RunQuench({"convert", sparse.string(), twice.string(), "--scheme", scheme,
                           "--group-size", std::string(scheme) == "W4A16" ? "64" : "-1", "-q"});
      REQUIRE_MESSAGE(r3.exit_code == 0, r3.err);
      auto qo = LoadAll(q), to = LoadAll(twice);
      size_t compared = 0;
      for (const auto& [rel, l] : qo) {
        for (const auto& t : l.shard.header.tensors) {
          CAPTURE(t.name);
          CHECK(TensorBytes(qo, t.name) == TensorBytes(to, t.name));
          ++compared;
        }
      }
      CHECK(compared > 20);
    }
  }
}

TEST_CASE("--resume does not keep a shard made with other SparseGPT settings or by magnitude") {
  TempDir tmp;
  WriteStats(tmp / "stats");
  auto fingerprint = [&](const std::string& algorithm, const std::string& prune, double damp) {
    ConvertOptions o;
    o.src = DataDir() / "tiny-llama";
    o.dst = tmp / "o";
    o.scheme = "none";
    o.prune = prune;
    o.algorithm = algorithm;
    if (algorithm == "sparsegpt") o.stats = tmp / "stats";
    o.dampening = damp;
    // Layer 0 lives in the first shard.
    return FirstShardFingerprint(o);
  };
  const std::string base = fingerprint("sparsegpt", "2:4", 0.01);
  CHECK(base == fingerprint("sparsegpt", "2:4", 0.01));
  CHECK(base != fingerprint("rtn", "2:4", 0.01));
  CHECK(base != fingerprint("sparsegpt", "unstructured:0.5", 0.01));
  CHECK(base != fingerprint("sparsegpt", "2:4", 0.02));
}

TEST_CASE("SparseGPT's dry run, options and budget are checked at planning") {
  TempDir tmp;
  WriteStats(tmp / "stats");
  const std::string src = (DataDir() / "tiny-llama").string(), stats = (tmp / "stats").string();
  const std::string dst = (tmp / "o").string();
  auto dry = RunQuench({"convert", src, dst, "--scheme", "W4A16", "--group-size", "64",
                        "--prune", "2:4", "--stats", stats, "--algorithm", "sparsegpt",
                        "--dry-run"});
  REQUIRE_MESSAGE(dry.exit_code == 0, dry.err);
  CHECK(dry.out.find("SparseGPT 2:4, Hessian of model.layers.0.mlp.gate_proj") !=
        std::string::npos);
  CHECK(dry.out.find("magnitude 2:4: no statistics for this weight") != std::string::npos);
  CHECK(dry.err.find("SparseGPT (2:4) from") != std::string::npos);
  CHECK(dry.err.find("5 weights; 9 pruned by magnitude") != std::string::npos);
  const std::vector<Refusal> cases = {
      {{"--algorithm", "sparsegpt", "--stats", stats}, 2, "needs --prune"},
      {{"--algorithm", "sparsegpt", "--prune", "2:4"}, 2, "needs --stats"},
      {{"--algorithm", "sparsegpt", "--stats", stats, "--prune", "unstructured:0.5",
        "--prune-granularity", "tensor"}, 2, "per block of columns"},
      {{"--algorithm", "sparsegpt", "--stats", stats, "--prune", "2:4", "--gptq-block-size",
        "6"}, 2, "multiple of 4"},
      // The one budget check (src/pipeline/convert.cc) names the Hessians it holds: the
      // largest site SparseGPT takes has 256 inputs, 256 x 256 x 4 bytes = 256 KiB, three held.
      {{"--algorithm", "sparsegpt", "--stats", stats, "--prune", "2:4", "--memory-limit", "16M"},
       2, "SparseGPT: the largest Hessian (site "},
      {{"--algorithm", "sparsegpt", "--stats", stats, "--prune", "2:4", "--memory-limit", "16M"},
       2, ") 3 x 256 KiB"},
      // (GPTQ after pruning composes: tests/test_compose.cc.)
  };
  CheckRefusals({"convert", src, dst, "--scheme", "W4A16", "--group-size", "64"}, cases, dst);
  // NVFP4's global scale would come from the dense weights: refused, not silently wrong.
  auto r = RunQuench({"convert", src, dst, "--scheme", "NVFP4A16", "--prune", "2:4",
                      "--algorithm", "sparsegpt", "--stats", stats});
  CHECK(r.exit_code == 3);
  CHECK(r.err.find("global scale") != std::string::npos);
  CHECK_FALSE(fs::exists(dst));
}


// Every tensor of `a`'s shards equals `b`'s, byte for byte.
void CheckSameTensors(const fs::path& a, const fs::path& b) {
  auto ao = LoadAll(a), bo = LoadAll(b);
  size_t compared = 0;
  for (const auto& [rel, l] : ao) {
    for (const auto& t : l.shard.header.tensors) {
      CAPTURE(t.name);
      CHECK(TensorBytes(ao, t.name) == TensorBytes(bo, t.name));
      ++compared;
    }
  }
  CHECK(compared > 20);
}

TEST_CASE("SparseGPTModifier and GPTQModifier recipes run as the flags that say the same") {
  TempDir tmp;
  WriteStats(tmp / "stats");
  const std::string src = (DataDir() / "tiny-llama").string(), stats = (tmp / "stats").string();
  // llm-compressor's 2:4 recipe shape: SparseGPT, then a QuantizationModifier.
  WriteBytes(tmp / "sgpt.yaml",
             "sparsity_stage:\n"
             "  sparsity_modifiers:\n"
             "    SparseGPTModifier:\n"
             "      sparsity: 0.5\n"
             "      mask_structure: \"2:4\"\n"
             "      dampening_frac: 0.02\n"
             "      block_size: 64\n"
             "      targets: [\"Linear\"]\n"
             "      ignore: [\"lm_head\"]\n"
             "quantization_stage:\n"
             "  quantization_modifiers:\n"
             "    QuantizationModifier:\n"
             "      scheme: W8A8\n"
             "      targets: Linear\n"
             "      ignore: [\"lm_head\"]\n");
  auto r1 = RunQuench({"convert", src, (tmp / "r1").string(), "--recipe",
                       (tmp / "sgpt.yaml").string(), "--stats", stats, "-q"});
  REQUIRE_MESSAGE(r1.exit_code == 0, r1.err);
  auto f1 = RunQuench({"convert", src, (tmp / "f1").string(), "--scheme", "W8A8", "--ignore",
                       "lm_head", "--prune", "2:4", "--algorithm", "sparsegpt", "--dampening",
                       "0.02", "--gptq-block-size", "64", "--stats", stats, "-q"});
  REQUIRE_MESSAGE(f1.exit_code == 0, f1.err);
  CheckSameTensors(tmp / "r1", tmp / "f1");
  // Unstructured (mask_structure 0:0), prune only through the flags' spec.
  WriteBytes(tmp / "sgpt_un.yaml",
             "SparseGPTModifier:\n  sparsity: 0.5\n  mask_structure: \"0:0\"\n"
             "QuantizationModifier:\n  scheme: W8A8\n  targets: Linear\n");
  auto r2 = RunQuench({"convert", src, (tmp / "r2").string(), "--recipe",
                       (tmp / "sgpt_un.yaml").string(), "--stats", stats, "-q"});
  REQUIRE_MESSAGE(r2.exit_code == 0, r2.err);
  auto f2 = RunQuench({"convert", src, (tmp / "f2").string(), "--scheme", "W8A8", "--prune",
                       "unstructured:0.5", "--algorithm", "sparsegpt", "--stats", stats, "-q"});
  REQUIRE_MESSAGE(f2.exit_code == 0, f2.err);
  CheckSameTensors(tmp / "r2", tmp / "f2");
  // GPTQModifier: its scheme, targets and ignore as a QuantizationModifier's; its options.
  WriteBytes(tmp / "gptq.yaml",
             "quant_stage:\n"
             "  quant_modifiers:\n"
             "    GPTQModifier:\n"
             "      scheme: W4A16\n"
             "      targets: Linear\n"
             "      ignore: [\"lm_head\", \"re:.*down_proj$\"]\n"
             "      dampening_frac: 0.05\n"
             "      actorder: null\n"
             "      offload_hessians: true\n");
  auto r3 = RunQuench({"convert", src, (tmp / "r3").string(), "--recipe",
                       (tmp / "gptq.yaml").string(), "--stats", stats, "-q"});
  REQUIRE_MESSAGE(r3.exit_code == 0, r3.err);
  auto f3 = RunQuench({"convert", src, (tmp / "f3").string(), "--scheme", "W4A16", "--ignore",
                       "lm_head", "--ignore", "re:.*down_proj$", "--algorithm", "gptq",
                       "--dampening", "0.05", "--actorder", "none", "--stats", stats, "-q"});
  REQUIRE_MESSAGE(f3.exit_code == 0, f3.err);
  CheckSameTensors(tmp / "r3", tmp / "f3");
  auto c3 = ReadJsonFile((tmp / "r3" / "config.json").string());
  auto cf3 = ReadJsonFile((tmp / "f3" / "config.json").string());
  REQUIRE(c3.ok());
  REQUIRE(cf3.ok());
  CHECK(DumpCompactJson(*c3->Find("quantization_config")) ==
        DumpCompactJson(*cf3->Find("quantization_config")));
  // The flags may repeat the recipe, not contradict it; the statistics are still needed.
  const std::vector<Refusal> cases = {
      {{"--recipe", (tmp / "sgpt.yaml").string(), "--stats", stats, "--prune", "unstructured:0.5"},
       2, "give one or the other"},
      {{"--recipe", (tmp / "sgpt.yaml").string(), "--stats", stats, "--dampening", "0.1"},
       2, "give one or the other"},
      {{"--recipe", (tmp / "gptq.yaml").string(), "--stats", stats, "--algorithm", "sparsegpt"},
       2, "give one or the other"},
      {{"--recipe", (tmp / "sgpt.yaml").string()}, 2, "needs --stats"},
  };
  CheckRefusals({"convert", src, (tmp / "o").string()}, cases, tmp / "o");
}

}  // namespace
}  // namespace quench::testing
