// quench's default ignores on the architectures they were added for. Multimodal checkpoints:
// the language model is quantized, the vision and audio encoders, the multimodal projectors and
// the output head under a prefix are left unquantized by default (as quantized multimodal
// releases and llm-compressor's multimodal examples leave them), in the name layouts such
// checkpoints come in. Hybrid and MTP checkpoints: the modules vLLM builds unquantized under
// other names (routers, convolutions, MTP projections and heads, indexers, embeddings).
// Expected: which modules are a language model's projections (by the layouts' own names), the
// written ignore entries (the default patterns, each written once it kept something), and,
// independently of quench's matcher, that every written entry (std::regex, re.match's
// anchoring) covers exactly the modules left alone.
#include <doctest/doctest.h>

#include <algorithm>
#include <regex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "format/json.h"
#include "test_util.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;
using quench::DType;

namespace {

// A 2-D BF16 weight of `rows` x `cols` (one W4A16 group of 128 per row) whose values depend on
// its name (never all equal).
qt::RawTensor Weight(const std::string& name, uint64_t rows, uint64_t cols) {
  std::vector<float> v(rows * cols);
  for (size_t i = 0; i < v.size(); ++i) {
    v[i] = static_cast<float>(static_cast<int>((i * 7 + name.size() * 13) % 29) - 14) / 16.0f;
  }
  return {name + ".weight", DType::kBF16, {rows, cols}, qt::Bf16Bytes(v)};
}

// A checkpoint folder: its modules (2-D weights), the norms' 1-D weights and, where given,
// a 4-D patch-embedding convolution (which no scheme quantizes: planning refuses it when
// targeted).
struct Layout {
  const char* label;
  std::vector<std::string> language;  // the language model's projections: quantized
  std::vector<std::string> kept;      // encoders, projectors, heads, embeddings: not
  std::vector<std::string> ignore;    // the written ignore list, in order
  std::string conv;                   // a 4-D weight's module, or ""
  std::string conv1d;                 // a 3-D [channels, 1, kernel] weight's module, or ""
};

constexpr const char* kEncoders =
    "re:([^.]+\\.)?(vision_tower|vision_model|visual|vision|vision_encoder|"
    "vision_embed_tokens|embed_vision|audio_tower|embed_audio)\\..*";
constexpr const char* kProjectors =
    "re:([^.]+\\.)?(multi_modal_projector|mm_projector|projector|connector)\\..*";

std::vector<Layout> Layouts() {
  return {
      // Llava, Llama 4, Mllama, Mistral 3 as the Hub holds them (and as transformers 5 saves
      // them): the language model under `language_model.`, the head too.
      {"llava (language_model.*)",
       {"language_model.model.layers.0.self_attn.q_proj",
        "language_model.model.layers.0.mlp.up_proj"},
       {"vision_tower.vision_model.encoder.layers.0.self_attn.q_proj",
        "vision_tower.vision_model.encoder.layers.0.mlp.fc1", "multi_modal_projector.linear_1",
        "language_model.lm_head", "language_model.model.embed_tokens"},
       {"re:(.*\\.)?lm_head$", "re:.*embed_tokens$", kEncoders, kProjectors},
       "vision_tower.vision_model.embeddings.patch_embedding"},
      // Qwen3-VL, GLM-4.5V: everything under `model.`, the head at the top.
      {"qwen3-vl (model.visual.*)",
       {"model.language_model.layers.0.self_attn.q_proj",
        "model.language_model.layers.0.mlp.down_proj"},
       {"model.visual.blocks.0.attn.qkv", "model.visual.merger.linear_fc1", "lm_head",
        "model.language_model.embed_tokens"},
       {"lm_head", "re:.*embed_tokens$", kEncoders},
       ""},
      // Qwen2.5-Omni's thinker: vision and audio encoders beside a language model.
      {"qwen2.5-omni (thinker.*)",
       {"thinker.model.layers.0.self_attn.o_proj", "thinker.model.layers.0.mlp.gate_proj"},
       {"thinker.visual.blocks.0.mlp.up_proj", "thinker.audio_tower.layers.0.fc1",
        "thinker.lm_head", "thinker.model.embed_tokens"},
       {"re:(.*\\.)?lm_head$", "re:.*embed_tokens$", kEncoders},
       ""},
      // Kimi-VL / Kimi K2.5: a DeepSeek-V3 language model, `mm_projector`.
      {"kimi (vision_tower, mm_projector)",
       {"language_model.model.layers.1.mlp.experts.0.up_proj",
        "language_model.model.layers.1.self_attn.q_a_proj"},
       {"vision_tower.encoder.blocks.0.wqkv", "mm_projector.proj.0", "language_model.lm_head",
        "language_model.model.embed_tokens", "language_model.model.layers.1.mlp.gate"},
       {"re:(.*\\.)?lm_head$", "re:.*embed_tokens$", "re:.*mlp\\.gate$", kEncoders,
        kProjectors},
       ""},
  };
}

// Text models whose unquantized modules go by other names: a Nemotron-H-like hybrid (Mamba
// mixers with their convolutions, a MoE mixer routed by `mixer.gate`, `backbone.embeddings`)
// a DeepSeek-V3.2-like model with its MTP layer (eh_proj, shared_head.head) and indexer, and
// an ERNIE 4.5-like model with its MTP projection (mtp_linear_proj.0).
std::vector<Layout> TextLayouts() {
  return {
      {"nemotron-h (backbone.*)",
       {"backbone.layers.0.mixer.in_proj", "backbone.layers.0.mixer.out_proj",
        "backbone.layers.1.mixer.experts.0.up_proj"},
       {"backbone.layers.1.mixer.gate", "backbone.embeddings", "lm_head"},
       {"lm_head", "re:.*(mixer|moe|feed_forward)\\.gate$", "re:.*(conv1d|conv\\.conv)$",
        "re:(.*\\.)?embeddings$"},
       "", "backbone.layers.0.mixer.conv1d"},
      {"deepseek-v3.2 (mtp, indexer)",
       {"model.layers.0.self_attn.q_a_proj", "model.layers.0.self_attn.indexer.wq_b",
        "model.layers.1.mlp.experts.0.down_proj"},
       {"model.layers.1.mlp.gate", "model.layers.0.self_attn.indexer.wk",
        "model.layers.0.self_attn.indexer.weights_proj", "model.layers.61.eh_proj",
        "model.layers.61.shared_head.head", "model.layers.61.embed_tokens", "lm_head"},
       {"lm_head", "re:.*embed_tokens$", "re:.*mlp\\.gate$", "re:.*\\.eh_proj$",
        "re:.*shared_head\\.head$", "re:.*indexer\\.(wk|weights_proj)$"},
       ""},
      {"ernie-4.5 (mtp)",
       {"model.layers.0.self_attn.q_proj", "model.layers.1.mlp.experts.0.up_proj",
        "model.layers.1.mlp.shared_experts.down_proj"},
       {"model.mtp_linear_proj.0", "model.layers.1.mlp.gate", "lm_head"},
       {"lm_head", "re:.*mlp\\.gate$", "model.mtp_linear_proj.0"},
       ""},
  };
}

void WriteLayout(const Layout& l, const fs::path& dir) {
  fs::create_directories(dir);
  std::vector<qt::RawTensor> t;
  for (const auto& m : l.language) t.push_back(Weight(m, 64, 128));
  for (const auto& m : l.kept) t.push_back(Weight(m, 64, 128));
  t.push_back(Weight("norm", 1, 64));
  t.back().shape = {64};  // a 1-D norm weight
  if (!l.conv.empty()) {
    std::vector<float> v(64 * 3 * 2 * 2, 0.25f);
    t.push_back({l.conv + ".weight", DType::kBF16, {64, 3, 2, 2}, qt::Bf16Bytes(v)});
  }
  if (!l.conv1d.empty()) {
    std::vector<float> v(64 * 1 * 4, -0.5f);
    t.push_back({l.conv1d + ".weight", DType::kBF16, {64, 1, 4}, qt::Bf16Bytes(v)});
  }
  qt::WriteShard(dir / "model.safetensors", t);
  qt::WriteBytes(dir / "config.json", "{\"architectures\": [\"Test\"]}");
}

std::vector<std::string> WrittenIgnore(const fs::path& out) {
  auto cfg = quench::ReadJsonFile((out / "config.json").string());
  REQUIRE(cfg.ok());
  std::vector<std::string> ignore;
  for (const auto& e : cfg->Find("quantization_config")->Find("ignore")->as_array()) {
    ignore.push_back(e.as_string());
  }
  return ignore;
}

// Whether any entry matches `module` as compressed-tensors and vLLM match it (exact name, or
// re.match of the regex), by std::regex, not by quench's matcher.
bool CoveredBy(const std::vector<std::string>& entries, const std::string& module) {
  for (const std::string& e : entries) {
    if (!e.starts_with("re:")) {
      if (e == module) return true;
      continue;
    }
    const std::regex re(e.substr(3), std::regex::ECMAScript);
    if (std::regex_search(module.begin(), module.end(), re,
                          std::regex_constants::match_continuous)) {
      return true;
    }
  }
  return false;
}

// Converts layout `l` (W4A16) and checks the output: the language model's projections
// quantized, every kept module (the conv weights too) copied bit for bit, the written ignore
// list as expected, covering exactly the modules left alone as the consumers match it, and
// `quench verify` passing. Returns quench's stderr.
std::string CheckLayout(const Layout& l) {
  const std::string label = l.label;
  CAPTURE(label);
  qt::TempDir tmp;
  WriteLayout(l, tmp / "src");
  const auto r = qt::RunQuench({"convert", (tmp / "src").string(), (tmp / "out").string(),
                                "--scheme", "W4A16"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  const auto src = qt::LoadAll(tmp / "src");
  const auto out = qt::LoadAll(tmp / "out");
  for (const auto& m : l.language) {
    CAPTURE(m);
    CHECK(qt::FindTensor(out, m + ".weight_packed").second != nullptr);
    CHECK(qt::FindTensor(out, m + ".weight_scale").second != nullptr);
    CHECK(qt::FindTensor(out, m + ".weight").second == nullptr);
  }
  std::vector<std::string> kept = l.kept;
  for (const std::string& c : {l.conv, l.conv1d}) {
    if (!c.empty()) kept.push_back(c);
  }
  for (const auto& m : kept) {
    CAPTURE(m);
    CHECK(qt::TensorBytes(out, m + ".weight") == qt::TensorBytes(src, m + ".weight"));
    CHECK(qt::FindTensor(out, m + ".weight_scale").second == nullptr);
  }
  const std::vector<std::string> ignore = WrittenIgnore(tmp / "out");
  CHECK(ignore == l.ignore);
  // What the consumers read from that list: every module left alone is covered, and no
  // quantized one.
  for (const auto& m : kept) CHECK_MESSAGE(CoveredBy(ignore, m), m);
  for (const auto& m : l.language) CHECK_MESSAGE(!CoveredBy(ignore, m), m);
  const auto v = qt::RunQuench({"verify", (tmp / "out").string(), (tmp / "src").string()});
  CHECK_MESSAGE(v.exit_code == 0, std::string(v.out + v.err));
  return r.err;
}

}  // namespace

TEST_SUITE("default ignores") {
  TEST_CASE("encoders, projectors and prefixed heads are left unquantized by default") {
    for (const Layout& l : Layouts()) {
      const std::string err = CheckLayout(l);
      // Each kind is named in a note.
      CHECK(err.find("left unquantized by default (vision or audio encoder; quantized "
                     "multimodal releases keep it unquantized)") != std::string::npos);
      CHECK(err.find("left unquantized by default (output head; vLLM loads it unquantized)") !=
            std::string::npos);
    }
  }

  TEST_CASE("routers, convolutions, MTP layers and indexers under other names stay unquantized") {
    for (const Layout& l : TextLayouts()) CheckLayout(l);
    // Without the defaults the hybrid's convolution is a targeted 3-D weight: planning refuses
    // it, as model_free_ptq aborts on it.
    qt::TempDir tmp;
    WriteLayout(TextLayouts()[0], tmp / "src");
    const auto refused = qt::RunQuench({"convert", (tmp / "src").string(), (tmp / "out").string(),
                                        "--scheme", "W4A16", "--no-default-ignore"});
    CHECK(refused.exit_code != 0);
    CHECK(refused.err.find("backbone.layers.0.mixer.conv1d.weight") != std::string::npos);
    CHECK_FALSE(fs::exists(tmp / "out"));
  }

  TEST_CASE("a tied output head is written to ignore for models that have one") {
    // No lm_head tensor: the head is the embedding. transformers still builds `lm_head` for a
    // causal or conditional-generation class and would look for its scales; an encoder
    // (BertModel) has no head, and its list stays as the reference writes it.
    Layout tied{"tied",
                {"model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"},
                {"model.embed_tokens"},
                {},
                ""};
    for (const auto& [architecture, expected] :
         std::vector<std::pair<std::string, std::vector<std::string>>>{
             {"LlamaForCausalLM", {"lm_head", "re:.*embed_tokens$"}},
             {"Gemma3ForConditionalGeneration", {"lm_head", "re:.*embed_tokens$"}},
             {"GPT2LMHeadModel", {"lm_head", "re:.*embed_tokens$"}},
             {"BertModel", {"re:.*embed_tokens$"}}}) {
      CAPTURE(architecture);
      qt::TempDir tmp;
      WriteLayout(tied, tmp / "src");
      qt::WriteBytes(tmp / "src" / "config.json",
                     "{\"architectures\": [\"" + architecture + "\"]}");
      const auto r = qt::RunQuench({"convert", (tmp / "src").string(), (tmp / "out").string(),
                                    "--scheme", "W4A16"});
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      CHECK(WrittenIgnore(tmp / "out") == expected);
      CHECK((r.err.find("written to ignore: lm_head") != std::string::npos) ==
            (expected.front() == "lm_head"));
      // The user's own entry for it is not repeated.
      const auto own = qt::RunQuench({"convert", (tmp / "src").string(),
                                      (tmp / "own").string(), "--scheme", "W4A16", "--ignore",
                                      "lm_head"});
      REQUIRE_MESSAGE(own.exit_code == 0, own.err);
      const std::vector<std::string> list = WrittenIgnore(tmp / "own");
      CHECK(std::count(list.begin(), list.end(), "lm_head") == 1);
    }
  }

  TEST_CASE("--no-default-ignore quantizes the encoders and projectors as model_free_ptq does") {
    const std::vector<Layout> layouts = Layouts();
    const Layout& qwen = layouts[1];
    qt::TempDir tmp;
    WriteLayout(qwen, tmp / "src");
    const auto r = qt::RunQuench({"convert", (tmp / "src").string(), (tmp / "out").string(),
                                  "--scheme", "W4A16", "--no-default-ignore"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    const auto out = qt::LoadAll(tmp / "out");
    for (const char* m : {"model.visual.blocks.0.attn.qkv", "model.visual.merger.linear_fc1",
                          "model.language_model.layers.0.self_attn.q_proj", "lm_head"}) {
      CAPTURE(m);
      CHECK(qt::FindTensor(out, std::string(m) + ".weight_packed").second != nullptr);
    }
    CHECK(r.err.find("left unquantized by default") == std::string::npos);

    // The Llava layout's patch embedding is a 4-D weight: targeted, it fails planning, as
    // model_free_ptq refuses it; left alone by default, the same folder converts (above).
    const Layout& llava = layouts[0];
    WriteLayout(llava, tmp / "llava");
    const auto refused =
        qt::RunQuench({"convert", (tmp / "llava").string(), (tmp / "llava-out").string(),
                       "--scheme", "W4A16", "--no-default-ignore"});
    CHECK(refused.exit_code != 0);
    CHECK(refused.err.find("vision_tower.vision_model.embeddings.patch_embedding.weight") !=
          std::string::npos);
    CHECK_FALSE(fs::exists(tmp / "llava-out"));
  }
}
