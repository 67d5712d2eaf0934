// `quench stats import-imatrix`: llama.cpp importance matrices written by llama.cpp's own gguf
// package (GGUF) and by imatrix.cpp's legacy writer (.dat), see
// scripts/make_imatrix_fixtures.py. The expected statistics (data/imatrix/expected/*.json:
// sites, counts, sums, consumers, weights without an entry) were computed by that script from
// the arrays it generated, with GGUF names from gguf's own HF-to-GGUF name table.
#include <doctest/doctest.h>

#include <functional>
#include <string>
#include <vector>

#include "calib/imatrix.h"
#include "calib/stats.h"
#include "format/json.h"
#include "test_util.h"

namespace quench::testing {
namespace {

fs::path Imx() { return DataDir() / "imatrix"; }

struct Case {
  const char* file;      // under data/imatrix
  fs::path model;
  const char* expected;  // data/imatrix/expected/<name>.json
};

std::vector<Case> Cases() {
  return {
      {"llama.imatrix.gguf", DataDir() / "tiny-llama", "llama"},
      {"llama-v2.imatrix.gguf", DataDir() / "tiny-llama", "llama"},
      {"llama.imatrix.dat", DataDir() / "tiny-llama", "llama-dat"},
      {"qwen3moe.imatrix.gguf", DataDir() / "golden/xprune-2d/src", "qwen3moe"},
      {"qwen3moe.imatrix.dat", DataDir() / "golden/xprune-2d/src", "qwen3moe-dat"},
      {"mixtral.imatrix.gguf", DataDir() / "golden/xprune-mixtral/src", "mixtral"},
      {"deepseek2.imatrix.gguf", Imx() / "tiny-deepseek2", "deepseek2"},
  };
}

std::vector<double> Numbers(const JsonValue& v) {
  std::vector<double> out;
  if (v.is_array()) {
    for (const JsonValue& x : v.as_array()) out.push_back(x.as_double());
  } else {
    out.push_back(v.as_double());
  }
  return out;
}

JsonValue Expected(const std::string& expected_name) {
  auto exp = ReadJsonFile((Imx() / "expected" / (expected_name + ".json")).string());
  REQUIRE(exp.ok());
  return *std::move(exp);
}

// The folder `out` holds exactly the expected statistics.
void CheckAgainstExpected(const fs::path& out, const std::string& expected_name);
void CheckAgainst(const fs::path& out, const JsonValue* exp);

void CheckAgainstExpected(const fs::path& out, const std::string& expected_name) {
  const JsonValue exp = Expected(expected_name);
  CheckAgainst(out, &exp);
}

void CheckAgainst(const fs::path& out, const JsonValue* exp) {
  auto stats = calib::Statistics::Open(out);
  REQUIRE_MESSAGE(stats.ok(), stats.status().message());
  const JsonValue& sites = *exp->Find("sites");
  CHECK(stats->sites().size() == sites.as_object().size());
  for (const auto& [name, v] : sites.as_object()) {
    CAPTURE(name);
    auto it = stats->sites().find(name);
    REQUIRE(it != stats->sites().end());
    CHECK(it->second.in_features == v.Find("in_features")->as_uint());
    const JsonValue* e = v.Find("experts");
    CHECK(it->second.experts == (e->is_null() ? std::nullopt : std::optional(e->as_uint())));
    // Only what an imatrix measures.
    REQUIRE(it->second.fields.size() == 2);
    CHECK(it->second.fields[0].name == "count");
    CHECK(it->second.fields[1].name == "sum_x2");
    auto count = stats->ReadField(name, "count");
    auto sum = stats->ReadField(name, "sum_x2");
    REQUIRE(count.ok());
    REQUIRE(sum.ok());
    CHECK(*count == Numbers(*v.Find("count")));
    CHECK(*sum == Numbers(*v.Find("sum_x2")));  // exact: float32 sums widened to float64
  }
  const JsonValue& consumers = *exp->Find("consumers");
  CHECK(stats->consumers().size() == consumers.as_object().size());
  for (const auto& [w, v] : consumers.as_object()) {
    CAPTURE(w);
    auto it = stats->consumers().find(w);
    REQUIRE(it != stats->consumers().end());
    CHECK(it->second.site == v.Find("site")->as_string());
    const JsonValue* x = v.Find("expert");
    CHECK(it->second.expert == (x ? std::optional(x->as_uint()) : std::nullopt));
  }
  // Shapes recorded for every consumer, as the checkpoint has them.
  const JsonValue* weights = stats->manifest().Find("model")->Find("weights");
  CHECK(DumpCompactJson(*weights) == DumpCompactJson(*exp->Find("weights")));
  const JsonValue* nr = stats->manifest().Find("not_reached");
  CHECK(DumpCompactJson(nr ? *nr : JsonValue::MakeArray()) ==
        DumpCompactJson(*exp->Find("not_reached")));
  const JsonValue* c = stats->manifest().Find("collection");
  CHECK(c->Find("moe")->as_string() == "routed");
  CHECK(c->Find("hessian")->as_string() == "none");
}

// `exp` with every weight and site name passed through `rename`: the keys of sites,
// consumers and weights, the consumers' sites and not_reached's entries.
JsonValue Renamed(const JsonValue& exp, const std::function<std::string(std::string)>& rename) {
  JsonValue out = JsonValue::MakeObject();
  for (const char* part : {"sites", "consumers", "weights"}) {
    JsonValue o = JsonValue::MakeObject();
    for (const auto& [k, v] : exp.Find(part)->as_object()) {
      JsonValue x = v;
      if (std::string(part) == "consumers") x.Set("site", rename(v.Find("site")->as_string()));
      o.Set(rename(k), std::move(x));
    }
    out.Set(part, std::move(o));
  }
  JsonValue nr = JsonValue::MakeArray();
  for (const JsonValue& w : exp.Find("not_reached")->as_array()) nr.Push(rename(w.as_string()));
  out.Set("not_reached", std::move(nr));
  return out;
}

// A copy of data/tiny-llama at `dir` as a multimodal checkpoint holds its language model: every
// tensor renamed by `rename`, one vision-tower weight beside them, and a config.json whose
// model_type is `model_type` with tiny-llama's own as its text_config.
void WriteMultimodalLlama(const fs::path& dir, const std::string& model_type,
                          const std::function<std::string(std::string)>& rename) {
  fs::create_directories(dir);
  std::vector<RawTensor> tensors;
  for (const auto& [_, l] : LoadAll(DataDir() / "tiny-llama")) {
    for (const TensorInfo& t : l.shard.header.tensors) {
      tensors.push_back({rename(t.name), t.dtype, t.shape,
                         std::string(reinterpret_cast<const char*>(l.Data(t)), t.nbytes())});
    }
  }
  tensors.push_back({"vision_tower.encoder.layers.0.mlp.fc1.weight", DType::kBF16, {16, 16},
                     std::string(16 * 16 * 2, '\0')});
  WriteShard(dir / "model.safetensors", tensors);
  auto text = ReadJsonFile((DataDir() / "tiny-llama" / "config.json").string());
  REQUIRE(text.ok());
  JsonValue cfg = JsonValue::MakeObject();
  cfg.Set("model_type", model_type);
  cfg.Set("text_config", *text);
  WriteBytes(dir / "config.json", DumpCompactJson(cfg));
}

// Nothing named `out`, and no temporary folder left beside it.
// Imports the `fixture` imatrix (data/imatrix/<fixture>.imatrix.gguf) onto a copy of the model
// folder `model` whose config.json says model_type `type`, and checks the statistics against
// that fixture's expected ones.
void ImportAsModelType(const fs::path& model, const std::string& type, const std::string& fixture) {
  TempDir dir;
  fs::copy(model, dir / "model");
  auto cfg = ReadJsonFile((dir / "model" / "config.json").string());
  REQUIRE(cfg.ok());
  cfg->Set("model_type", type);
  WriteBytes(dir / "model" / "config.json", DumpCompactJson(*cfg));
  const RunResult r = RunQuench({"stats", "import-imatrix",
                                 (Imx() / (fixture + ".imatrix.gguf")).string(), "--model",
                                 (dir / "model").string(), "-o", (dir / "s").string()});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  CheckAgainstExpected(dir / "s", fixture);
}

void CheckNothingWritten(const fs::path& parent) {
  CHECK(ListFiles(parent).empty());
  CHECK(fs::is_empty(parent));
}

}  // namespace

TEST_SUITE("import_imatrix") {
  TEST_CASE("GGUF and legacy imatrix files import with the fixture's sums and counts") {
    for (const Case& c : Cases()) {
      CAPTURE(c.file);
      TempDir dir;
      const fs::path out = dir / "stats";
      RunResult r = RunQuench({"stats", "import-imatrix", (Imx() / c.file).string(), "--model",
                               c.model.string(), "-o", out.string()});
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      CheckAgainstExpected(out, c.expected);
      CHECK(ListFiles(dir.path()) ==
            std::vector<std::string>{"stats/manifest.json", "stats/stats-00001.safetensors"});
    }
  }

  TEST_CASE("multimodal, Mistral and Kimi K2 checkpoints map onto the architectures they share") {
    // Kimi K2.5, Llava, Llama 4, Mistral 3 (language_model.model.layers., the head beside
    // them) and Qwen3-VL (model.language_model.layers., lm_head at the top): llama.cpp
    // converts the language model, and the imatrix covers it. Expected: the llama fixture's
    // statistics under the checkpoint's names.
    struct Layout {
      const char* model_type;
      std::function<std::string(std::string)> rename;
    };
    const std::vector<Layout> layouts = {
        {"llava",
         [](std::string n) {
           return n == "lm_head" || n.starts_with("lm_head.") ? "language_model." + n
                  : n.starts_with("model.")                   ? "language_model." + n
                                                              : n;
         }},
        {"qwen3_vl", [](std::string n) {
           return n.starts_with("model.") ? "model.language_model." + n.substr(6) : n;
         }}};
    for (const Layout& l : layouts) {
      CAPTURE(l.model_type);
      TempDir dir;
      WriteMultimodalLlama(dir / "model", l.model_type, l.rename);
      const fs::path out = dir / "stats";
      RunResult r = RunQuench({"stats", "import-imatrix", (Imx() / "llama.imatrix.gguf").string(),
                               "--model", (dir / "model").string(), "-o", out.string()});
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      const JsonValue exp = Renamed(Expected("llama"), l.rename);
      CheckAgainst(out, &exp);
    }
    // Mistral's names are Llama's: a "mistral" model_type imports the same statistics.
    ImportAsModelType(DataDir() / "tiny-llama", "mistral", "llama");
    // Kimi K2 (model_type kimi_k2) is a DeepSeek-V3: the deepseek2 fixture imports onto it.
    ImportAsModelType(Imx() / "tiny-deepseek2", "kimi_k2", "deepseek2");
    // A language model of an architecture quench does not map is refused, naming both types.
    TempDir bad;
    WriteMultimodalLlama(bad / "model", "llava", [](std::string n) { return n; });
    auto bcfg = ReadJsonFile((bad / "model" / "config.json").string());
    REQUIRE(bcfg.ok());
    JsonValue text = *bcfg->Find("text_config");
    text.Set("model_type", "gpt2");
    bcfg->Set("text_config", text);
    WriteBytes(bad / "model" / "config.json", DumpCompactJson(*bcfg));
    const RunResult r = RunQuench({"stats", "import-imatrix",
                                   (Imx() / "llama.imatrix.gguf").string(), "--model",
                                   (bad / "model").string(), "-o", (bad / "s").string()});
    CHECK(r.exit_code != 0);
    CHECK(r.err.find("is 'llava' with a 'gpt2' language model") != std::string::npos);
    CHECK_FALSE(fs::exists(bad / "s"));
  }

  TEST_CASE("provenance: the imatrix file, its datasets and chunks are in the manifest") {
    TempDir dir;
    const fs::path file = Imx() / "llama.imatrix.gguf";
    REQUIRE(calib::ImportImatrix(file, DataDir() / "tiny-llama", dir / "s").ok());
    auto s = calib::Statistics::Open(dir / "s");
    REQUIRE(s.ok());
    const JsonValue& im = *s->manifest().Find("collection")->Find("imatrix");
    CHECK(im.Find("file")->as_string() == file.string());
    CHECK(im.Find("layout")->as_string() == "gguf");
    CHECK(im.Find("gguf_version")->as_uint() == 3);
    CHECK(DumpCompactJson(*im.Find("datasets")) == R"(["calibration_datav3.txt"])");
    CHECK(im.Find("chunk_count")->as_uint() == 3);
    CHECK(im.Find("chunk_size")->as_uint() == 512);
    CHECK(s->manifest().Find("collection")->Find("dataset")->as_string() ==
          "calibration_datav3.txt");

    REQUIRE(calib::ImportImatrix(Imx() / "llama.imatrix.dat", DataDir() / "tiny-llama",
                                 dir / "d").ok());
    auto d = calib::Statistics::Open(dir / "d");
    REQUIRE(d.ok());
    const JsonValue& dm = *d->manifest().Find("collection")->Find("imatrix");
    CHECK(dm.Find("layout")->as_string() == "dat");
    CHECK(dm.Find("assumed_chunk_size")->as_uint() == 512);
    CHECK(dm.Find("chunk_count")->as_uint() == 3);
    CHECK(DumpCompactJson(*dm.Find("datasets")) == R"(["calibration_datav3.txt"])");
  }

  TEST_CASE("a legacy file's mean x^2 does not depend on the chunk size assumed") {
    TempDir dir;
    const fs::path file = Imx() / "qwen3moe.imatrix.dat";
    const fs::path model = DataDir() / "golden/xprune-2d/src";
    RunResult r = RunQuench({"stats", "import-imatrix", file.string(), "--model", model.string(),
                             "-o", (dir / "a").string(), "--chunk-size", "100"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    REQUIRE(calib::ImportImatrix(file, model, dir / "b").ok());  // 512
    auto a = calib::Statistics::Open(dir / "a");
    auto b = calib::Statistics::Open(dir / "b");
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    for (const auto& [name, site] : a->sites()) {
      CAPTURE(name);
      auto ca = a->ReadField(name, "count"), cb = b->ReadField(name, "count");
      auto sa = a->ReadField(name, "sum_x2"), sb = b->ReadField(name, "sum_x2");
      const size_t n = site.in_features;
      for (size_t i = 0; i < sa->size(); ++i) {
        CHECK((*sa)[i] / (*ca)[i / n] == doctest::Approx((*sb)[i] / (*cb)[i / n]).epsilon(1e-15));
      }
      CHECK((*ca)[0] * 512 == (*cb)[0] * 100);
    }
  }

  TEST_CASE("GGUF names map per architecture, as llama.cpp's converter names them") {
    auto map = [](const std::string& arch, const std::string& name) {
      auto t = calib::MapImatrixName(arch, name);
      REQUIRE_MESSAGE(t.ok(), t.status().message());
      return *t;
    };
    for (const char* arch : {"llama", "qwen2", "qwen3", "qwen3_moe", "mixtral", "deepseek_v3"}) {
      CAPTURE(arch);
      CHECK(map(arch, "blk.3.attn_q.weight").weight == "model.layers.3.self_attn.q_proj.weight");
      // q/k/v read one input: one site, named after q_proj (the first the model runs)
      CHECK(map(arch, "blk.3.attn_v.weight").group == map(arch, "blk.3.attn_q.weight").group);
      CHECK(map(arch, "blk.3.attn_v.weight").rank > map(arch, "blk.3.attn_q.weight").rank);
      CHECK(map(arch, "blk.3.attn_q.weight").site == "model.layers.3.self_attn.q_proj");
      CHECK(map(arch, "blk.3.ffn_up.weight").group == map(arch, "blk.3.ffn_gate.weight").group);
      CHECK(map(arch, "blk.0.attn_output.weight").weight ==
            "model.layers.0.self_attn.o_proj.weight");
      CHECK(map(arch, "blk.12.ffn_down.weight").weight == "model.layers.12.mlp.down_proj.weight");
      CHECK(map(arch, "output.weight").weight == "lm_head.weight");
    }
    auto q3 = map("qwen3_moe", "blk.1.ffn_up_exps.weight");
    CHECK(q3.weight == "model.layers.1.mlp.experts.{E}.up_proj.weight");
    CHECK(q3.per_expert);
    CHECK(q3.site == "model.layers.1.mlp.experts.gate_proj");
    CHECK(map("qwen3_moe", "blk.1.ffn_gate_inp.weight").weight == "model.layers.1.mlp.gate.weight");
    CHECK(map("mixtral", "blk.0.ffn_gate_exps.weight").weight ==
          "model.layers.0.block_sparse_moe.experts.{E}.w1.weight");
    CHECK(map("mixtral", "blk.0.ffn_up_exps.weight").weight ==
          "model.layers.0.block_sparse_moe.experts.{E}.w3.weight");
    CHECK(map("mixtral", "blk.0.ffn_down_exps.weight").weight ==
          "model.layers.0.block_sparse_moe.experts.{E}.w2.weight");
    CHECK(map("mixtral", "blk.0.ffn_gate_inp.weight").weight ==
          "model.layers.0.block_sparse_moe.gate.weight");
    CHECK(map("deepseek_v2", "blk.2.attn_kv_a_mqa.weight").weight ==
          "model.layers.2.self_attn.kv_a_proj_with_mqa.weight");
    CHECK(map("deepseek_v3", "blk.2.attn_q_b.weight").weight ==
          "model.layers.2.self_attn.q_b_proj.weight");
    CHECK(map("deepseek_v3", "blk.2.attn_kv_b.weight").weight ==
          "model.layers.2.self_attn.kv_b_proj.weight");
    // The router and the shared experts read the MoE input.
    CHECK(map("deepseek_v3", "blk.2.ffn_up_shexp.weight").group ==
          map("deepseek_v3", "blk.2.ffn_gate_inp.weight").group);
    CHECK(map("deepseek_v3", "blk.2.ffn_gate_inp.weight").site == "model.layers.2.mlp.gate");
    CHECK(map("mixtral", "blk.2.ffn_gate_inp.weight").site == "model.layers.2.mlp.gate");
    CHECK_FALSE(map("deepseek_v3", "blk.2.attn_k_b.weight").skip_reason.empty());
    // Names an architecture lacks are refused, naming them.
    for (auto [arch, name] : {std::pair{"llama", "blk.0.ffn_gate_exps.weight"},
                              std::pair{"qwen3_moe", "blk.0.attn_kv_b.weight"},
                              std::pair{"llama", "blk.0.attn_qkv.weight"},
                              std::pair{"llama", "token_embd.weight"},
                              std::pair{"llama", "blk.x.attn_q.weight"}}) {
      auto t = calib::MapImatrixName(arch, name);
      REQUIRE_FALSE(t.ok());
      CHECK(t.status().message().find(name) != std::string::npos);
    }
    CHECK_FALSE(calib::ImatrixArchitectureKnown("gpt2"));
    // And back: the imatrix name that carries a checkpoint weight's statistics.
    CHECK(calib::ImatrixNameOf("mixtral", "model.layers.0.block_sparse_moe.experts.3.w2.weight") ==
          "blk.0.ffn_down_exps.weight");
    CHECK(calib::ImatrixNameOf("llama", "model.layers.0.input_layernorm.weight").empty());
  }

  TEST_CASE(
      "fused 3-D experts in the checkpoint are named per expert, as the planner splits them") {
    TempDir dir;
    RunResult r = RunQuench({"stats", "import-imatrix", (Imx() / "qwen3moe.imatrix.gguf").string(),
                             "--model", (DataDir() / "golden/xprune-3d/src").string(), "-o",
                             (dir / "s").string()});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    auto s = calib::Statistics::Open(dir / "s");
    REQUIRE(s.ok());
    const auto& c = s->consumers();
    REQUIRE(c.contains("model.layers.1.mlp.experts.7.up_proj.weight"));
    CHECK(c.at("model.layers.1.mlp.experts.7.up_proj.weight").site ==
          "model.layers.1.mlp.experts.gate_proj");
    CHECK(c.at("model.layers.1.mlp.experts.7.up_proj.weight").expert == 7u);
    CHECK(c.at("model.layers.0.mlp.experts.2.down_proj.weight").expert == 2u);
  }

  TEST_CASE("malformed or mismatched files: a clear error, exit 3, no output folder") {
    const std::vector<std::tuple<const char*, fs::path, const char*>> bad = {
        {"truncated-data.gguf", DataDir() / "tiny-llama", "truncated"},
        {"truncated-header.gguf", DataDir() / "tiny-llama", "truncated"},
        {"truncated.dat", DataDir() / "tiny-llama", "truncated"},
        {"version1.gguf", DataDir() / "tiny-llama", "GGUF version 1"},
        {"wrong-counts.gguf", DataDir() / "tiny-llama", "'blk.0.attn_q.weight': 2 counts for 1"},
        {"no-counts.gguf", DataDir() / "tiny-llama",
         "'blk.0.attn_q.weight' has sums but no counts"},
        {"unknown-tensor.gguf", DataDir() / "tiny-llama", "'blk.0.attn_qkv.weight'"},
        {"missing-layer.gguf", DataDir() / "tiny-llama",
         "'blk.7.attn_q.weight' maps to 'model.layers.7.self_attn.q_proj.weight'"},
        {"wrong-columns.gguf", DataDir() / "tiny-llama",
         "'blk.0.attn_q.weight' has 100 columns; 'model.layers.0.self_attn.q_proj.weight' reads "
         "256"},
        {"group-counts.gguf", DataDir() / "tiny-llama",
         "'blk.0.attn_q.weight' and 'blk.0.attn_k.weight' read one input"},
        {"nan.gguf", DataDir() / "tiny-llama", "'blk.0.attn_q.weight': sum of squares nan"},
        {"nan.dat", DataDir() / "tiny-llama", "'blk.0.attn_q.weight': sum of squares nan"},
        {"model-type.gguf", DataDir() / "tiny-llama", "general.type"},
        {"experts-mismatch.gguf", DataDir() / "golden/xprune-2d/src",
         "'blk.0.ffn_gate_exps.weight' holds 7 matrices; the model has 8 experts"},
    };
    for (const auto& [file, model, message] : bad) {
      CAPTURE(file);
      TempDir dir;
      RunResult r = RunQuench({"stats", "import-imatrix", (Imx() / "malformed" / file).string(),
                               "--model", model.string(), "-o", (dir / "stats").string()});
      CHECK(r.exit_code == 3);
      CHECK_MESSAGE(r.err.find(message) != std::string::npos, r.err);
      CheckNothingWritten(dir.path());
    }
    // Another model's imatrix: llama's names and widths onto the Qwen3-MoE checkpoint.
    TempDir dir;
    RunResult r = RunQuench({"stats", "import-imatrix", (Imx() / "llama.imatrix.gguf").string(),
                             "--model", (DataDir() / "golden/xprune-2d/src").string(), "-o",
                             (dir / "stats").string()});
    CHECK(r.exit_code == 3);
    CHECK(r.err.find("imatrix tensor 'blk.0.") != std::string::npos);
    CheckNothingWritten(dir.path());
  }

  TEST_CASE("every truncation of a GGUF or legacy file is refused, never read past its end") {
    for (const char* name : {"llama.imatrix.gguf", "qwen3moe.imatrix.dat"}) {
      CAPTURE(name);
      const std::string bytes = ReadBytes(Imx() / name);
      TempDir dir;
      for (size_t len = 0; len < bytes.size(); len += 13) {
        CAPTURE(len);
        WriteBytes(dir / "cut", bytes.substr(0, len));
        auto im = calib::ReadImatrix(dir / "cut");
        REQUIRE_FALSE(im.ok());
        CHECK(im.status().code() == ErrorCode::kInvalidInput);
      }
    }
  }

  TEST_CASE("usage errors: missing arguments, an output folder that is not empty") {
    TempDir dir;
    const std::string file = (Imx() / "llama.imatrix.gguf").string();
    const std::string model = (DataDir() / "tiny-llama").string();
    CHECK(RunQuench({"stats", "import-imatrix", file, "-o", (dir / "s").string()}).exit_code == 2);
    CHECK(RunQuench({"stats", "import-imatrix", file, "--model", model, "-o", (dir / "s").string(),
                     "--chunk-size", "0"}).exit_code == 2);
    WriteBytes(dir / "full" / "x", "keep");
    RunResult r = RunQuench({"stats", "import-imatrix", file, "--model", model, "-o",
                             (dir / "full").string()});
    CHECK(r.exit_code == 2);
    CHECK(ReadBytes(dir / "full" / "x") == "keep");
    // An empty folder is filled.
    fs::create_directories(dir / "empty");
    CHECK(RunQuench({"stats", "import-imatrix", file, "--model", model, "-o",
                     (dir / "empty").string()}).exit_code == 0);
    CHECK(fs::exists(dir / "empty" / "manifest.json"));
  }

  TEST_CASE("quench stats inspect reads an imported folder and says what it supports") {
    TempDir dir;
    REQUIRE(calib::ImportImatrix(Imx() / "qwen3moe.imatrix.gguf",
                                 DataDir() / "golden/xprune-2d/src", dir / "s")
                .ok());
    RunResult r = RunQuench({"stats", "inspect", (dir / "s").string()});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(r.out.find("model.layers.1.mlp.experts.gate_proj") != std::string::npos);
    CHECK(r.out.find("imatrix, wanda") != std::string::npos);
    // The model's path is printed too and may contain any word: look past it.
    std::string out = r.out;
    const std::string model = (DataDir() / "golden/xprune-2d/src").string();
    for (size_t at; (at = out.find(model)) != std::string::npos;) out.erase(at, model.size());
    CHECK(out.find("activation scales") == std::string::npos);  // no min/max
    CHECK(out.find("gptq") == std::string::npos);                // no Hessian
    CHECK(r.out.find("(1 none)") != std::string::npos);            // the expert without tokens
  }
}

}  // namespace quench::testing
