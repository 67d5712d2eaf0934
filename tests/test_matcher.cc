// Target/ignore matching. Expected values are Python's re.match results for the same pattern
// and name (compressed-tensors and vLLM match with re.match), worked out with CPython.
#include <doctest/doctest.h>

#include <algorithm>
#include <regex>
#include <string>
#include <string_view>

#include "plan/fused_sets.h"
#include "plan/ignore_cover.h"
#include "plan/matcher.h"
#include "plan/planner.h"

using quench::NameMatcher;

namespace {

// Each pattern, compiled by NameMatcher as a "re:" entry, answers every name as the regex
// alone does (std::regex with Python's re.match anchoring, computed without NameMatcher).
template <size_t P, size_t N>
void CheckSameAsRegex(const char* const (&patterns)[P], const char* const (&names)[N]) {
  for (const char* p : patterns) {
    CAPTURE(p);
    auto m = NameMatcher::Compile({std::string("re:") + p}, "--ignore");
    REQUIRE(m.ok());
    const std::regex re(p, std::regex::ECMAScript);
    for (const char* n : names) {
      CAPTURE(n);
      const std::string_view name(n);
      const bool expected = std::regex_search(name.begin(), name.end(), re,
                                              std::regex_constants::match_continuous);
      CHECK(m->Matches(name) == expected);
    }
  }
}

}  // namespace

TEST_SUITE("matcher") {
  TEST_CASE("exact entries match whole module names only") {
    auto m = NameMatcher::Compile({"lm_head"}, "--ignore");
    REQUIRE(m.ok());
    CHECK(m->Matches("lm_head"));
    CHECK_FALSE(m->Matches("model.lm_head"));
    CHECK_FALSE(m->Matches("lm_head2"));
  }

  TEST_CASE("re: entries follow Python re.match: anchored at the start, not at the end") {
    struct Case {
      const char* pattern;
      const char* name;
      bool expected;  // re.match(pattern[3:], name) is not None
    };
    const Case cases[] = {
        {"re:.*q_proj", "model.layers.0.self_attn.q_proj", true},
        {"re:q_proj", "model.q_proj", false},
        {"re:.*q_proj", "model.q_proj_x", true},
        {"re:.*q_proj$", "model.q_proj_x", false},
        {"re:model\\.layers\\.[0-9]+\\.mlp", "model.layers.12.mlp.gate", true},
        {"re:.*mlp\\.gate$", "model.layers.3.mlp.gate", true},
        {"re:.*mlp\\.gate$", "model.layers.3.mlp.gate_proj", false},
    };
    for (const Case& c : cases) {
      CAPTURE(c.pattern);
      CAPTURE(c.name);
      auto m = NameMatcher::Compile({c.pattern}, "--ignore");
      REQUIRE(m.ok());
      CHECK(m->Matches(c.name) == c.expected);
    }
  }

  TEST_CASE("regexes ending in $ give the same answers as the regex alone") {
    // NameMatcher skips a regex ending in `$` for names without one of the endings the
    // pattern requires; every answer must still be the regex's own (std::regex with Python's
    // re.match anchoring, computed here without NameMatcher).
    const char* patterns[] = {
        ".*mlp\\.gate$",         ".*(word|position|token_type)_embeddings$",
        "(.*\\.)?(wte|wpe|tok_embeddings)$", "a|.*gate$",    ".*gatex?$",
        ".*gat[e]$",             ".*\\$$",                  ".*(gate|)$",
        ".*(?:gate|proj)$",      ".*\\bgate$",               ".*(a(b|c))$",
        ".*ga(?=te)te$",         "model\\.layers\\.\\d+\\.mlp\\.gate$", ".*e{2}$",
        ".*\\\\$",             ".*router\\.(layer|proj)$", ".*(mixer|moe)\\.gate$",
        "ab*(x|y)$",             "a?(x|y)$",                "(c|ab(x|y))$",
        "(c|a)b(x|y)$",          ".*ab(?:x|y)$",             ".*\\d(x|y)$",
        ".*r(oute|oot)r$",
    };
    const char* names[] = {
        "model.layers.0.mlp.gate", "model.layers.0.mlp.gate_proj", "mlp.gate", "gate", "",
        "embeddings.word_embeddings", "transformer.wte", "wpe", "x.tok_embeddings",
        "model.embed_tokens", "a", "abc", "model.layers.1.mlp.gatex", "x$", "x.proj",
        "x.ab", "x.ac", "model.layers.12.mlp.gate", "bee", "x\\",
        "model.layers.0.ffn.router.layer", "x.router.proj", "model.layers.0.mlp.down_proj",
        "x.mixer.gate", "x.moe.gate", "x.mlp.gate", "abbbx", "ax", "ay", "x", "y", "c",
        "aby", "cbx", "x.abx", "x.ab:x", "x.a1x", "x.router", "x.rooter", "x.routr",
    };
    CheckSameAsRegex(patterns, names);
  }

  TEST_CASE("leading-component regexes give the same answers as the regex alone") {
    // NameMatcher answers `([^.]+\.)?(A|B)\..*` by the names' first two components, not
    // by the regex; every answer must still be the regex's own (std::regex with re.match's
    // anchoring, computed here without NameMatcher). The near misses are not of the form and
    // go to the regex.
    const char* patterns[] = {
        "([^.]+\\.)?(vision_tower|visual|mm_projector)\\..*",
        "([^.]+\\.)?(vision_tower|visual|mm_projector)\\.",
        "([^.]+\\.)?(audio_tower)\\..*",
        "([^.]+\\.)?(visual|vision)\\..*",
        "([^.]*\\.)?(visual|vision)\\..*",   // `*`: an empty first component may pass
        "([^.]+\\.)?(vis.al)\\..*",          // a regex inside: not of the form
        "([^.]+\\.)?(visual|)\\..*",         // an empty alternative: not of the form
    };
    const char* names[] = {
        "visual.blocks.0.attn.qkv", "model.visual.blocks.0.attn.qkv", "thinker.visual.merger",
        "a.b.visual.x", "visual", "model.visual", "visual.", ".visual.x", "..visual.x",
        "visualx.y", "model.visualx.y", "xvisual.y", "vision.y", "vision_tower.encoder.fc1",
        "model.vision_tower", "model.mm_projector.0", "mm_projector", "audio_tower.layers.0.fc1",
        "model.layers.0.mlp.gate_proj", "", ".", "model.", "vis_al.x", "model.visXal.q",
        "model..x", "m.audio_tower.x",
    };
    CheckSameAsRegex(patterns, names);
    // And as CPython's re.match answers (worked out by hand from the pattern's meaning).
    auto m = NameMatcher::Compile({"re:([^.]+\\.)?(vision_tower|visual)\\..*"}, "--ignore");
    REQUIRE(m.ok());
    CHECK(m->Matches("visual.blocks.0.attn.qkv"));
    CHECK(m->Matches("model.visual.blocks.0.attn.qkv"));
    CHECK(m->Matches("model.vision_tower.encoder.layers.0.self_attn.q_proj"));
    CHECK_FALSE(m->Matches("a.b.visual.x"));    // a third component is not looked at
    CHECK_FALSE(m->Matches("model.visual"));    // no dot after it
    CHECK_FALSE(m->Matches(".visual.x"));       // [^.]+ needs a non-empty first component
    CHECK_FALSE(m->Matches("model.visualx.y"));
  }

  TEST_CASE("first matching entry wins") {
    auto m = NameMatcher::Compile({"re:.*proj", "model.q_proj"}, "--targets");
    REQUIRE(m.ok());
    CHECK(m->FirstMatch("model.q_proj") == 0);
    CHECK(m->FirstMatch("model.norm") == -1);
  }

  TEST_CASE("the first match is the first entry that matches, whatever the name ends with") {
    // FirstMatch tries only the entries that could match a name's last byte; the answer must
    // be the first entry matching by the rule itself (exact equality; std::regex with
    // re.match's anchoring), computed here without NameMatcher. Entries of every kind: exact
    // (one empty), regexes with and without a required ending; names ending in each
    // entry's last byte and in others, the empty name; and a list of more than 64 entries.
    std::vector<std::string> entries;
    for (const auto& d : quench::DefaultIgnores()) entries.emplace_back(d.pattern);
    for (const char* e : {"model.layers.0.mlp.gate_proj", "", "x.q_proj", "re:.*\\.k_proj",
                          "re:model\\.layers\\.1\\.", "re:.*(up|down)_proj$", "re:.*a$",
                          "re:.*\\$$", "re:(|x)$", "re:.*", "lm_head"}) {
      entries.emplace_back(e);
    }
    const char* names[] = {
        "", "lm_head", "model.embed_tokens", "model.layers.0.mlp.gate",
        "model.layers.0.mlp.gate_proj", "model.layers.1.mlp.experts.3.up_proj",
        "model.layers.2.mlp.experts.3.down_proj", "model.layers.1.self_attn.k_proj",
        "x.q_proj", "x.k_proj", "transformer.wte", "wpe", "a", "ba", "x", "x$", "$",
        "model.layers.3.mlp.shared_expert_gate", "model.layers.3.mlp.router", "norm",
        "model.layers.4.block_sparse_moe.gate", "embeddings.token_type_embeddings", "\xff",
        "language_model.lm_head", "model.visual.blocks.0.attn.qkv", "visual.merger.mlp.0",
        "vision_tower.encoder.layers.0.mlp.fc1", "model.multi_modal_projector.linear_1",
        "a.b.visual.x", ".visual.x", "visual",
    };
    const auto expected_first = [](const std::vector<std::string>& list, std::string_view n) {
      for (size_t i = 0; i < list.size(); ++i) {
        const std::string& e = list[i];
        if (e.starts_with("re:")) {
          const std::regex re(e.substr(3), std::regex::ECMAScript);
          if (std::regex_search(n.begin(), n.end(), re, std::regex_constants::match_continuous)) {
            return static_cast<int>(i);
          }
        } else if (n == e) {
          return static_cast<int>(i);
        }
      }
      return -1;
    };
    std::vector<std::vector<std::string>> lists;
    for (size_t k = 0; k <= entries.size(); ++k) {  // every prefix, then every suffix
      lists.emplace_back(entries.begin(), entries.begin() + static_cast<std::ptrdiff_t>(k));
      lists.emplace_back(entries.begin() + static_cast<std::ptrdiff_t>(k), entries.end());
    }
    std::vector<std::string> many;  // 70 entries: the first 64 can never match these names
    for (int i = 0; i < 64; ++i) many.push_back("unused." + std::to_string(i));
    for (const std::string& e : entries) many.push_back(e);
    lists.push_back(many);
    for (const auto& list : lists) {
      CAPTURE(list.size());
      auto m = NameMatcher::Compile(list, "--ignore");
      REQUIRE(m.ok());
      for (const char* n : names) {
        CAPTURE(n);
        CHECK(m->FirstMatch(n) == expected_first(list, n));
      }
    }
    // Spot checks of the rule above, worked out by hand.
    auto all = NameMatcher::Compile(entries, "--ignore");
    REQUIRE(all.ok());
    const auto at = [&](std::string_view e) {
      return static_cast<int>(std::find(entries.begin(), entries.end(), e) - entries.begin());
    };
    const int d = static_cast<int>(quench::DefaultIgnores().size());  // then the list above
    CHECK(all->FirstMatch("model.layers.0.mlp.gate") == at("re:.*mlp\\.gate$"));
    CHECK(all->FirstMatch("model.layers.0.mlp.gate_proj") == d);     // exact
    CHECK(all->FirstMatch("") == d + 1);                              // the empty exact entry
    // re:model\.layers\.1\. and re:.*(up|down)_proj$
    CHECK(all->FirstMatch("model.layers.1.mlp.experts.3.up_proj") == d + 4);
    CHECK(all->FirstMatch("model.layers.2.mlp.experts.3.up_proj") == d + 5);
    CHECK(all->FirstMatch("norm") == d + 9);                          // re:.*
    CHECK(all->FirstMatch("model.visual.blocks.0.attn.qkv") < d);     // a default: the encoders'
    CHECK(all->FirstMatch("model.visual.blocks.0.attn.qkv") ==
          all->FirstMatch("vision_tower.encoder.layers.0.mlp.fc1"));
  }

  TEST_CASE("an invalid regex is a usage error naming the entry") {
    auto m = NameMatcher::Compile({"re:(unclosed"}, "--ignore");
    REQUIRE_FALSE(m.ok());
    CHECK(m.status().code() == quench::ErrorCode::kUsage);
    CHECK(m.status().message().find("re:(unclosed") != std::string::npos);
  }

  // Python's re.compile refuses a quantifier on a quantifier ("multiple repeat at position
  // N", the positions below are Python 3's) and reads `*+` as possessive; std::regex took both
  // as nested repeats, and a recipe's `re:.**self_attn\..*` made a run backtrack for minutes
  // (found by scripts/fuzz-convert).
  TEST_CASE("a quantifier on a quantifier is refused as Python refuses it") {
    for (const auto& [pattern, why] : std::vector<std::pair<std::string, std::string>>{
             {".**self_attn", "multiple repeat at position 2"},
             {"a{2}*", "multiple repeat at position 4"},
             {"a{2,3}{2}", "multiple repeat at position 6"},
             {"x*??", "multiple repeat at position 3"},
             {"a{,}*", "multiple repeat at position 4"},
             {"a*+", "possessive quantifier at position 2"}}) {
      CAPTURE(pattern);
      auto m = NameMatcher::Compile({"re:" + pattern}, "--ignore");
      REQUIRE_FALSE(m.ok());
      CHECK(m.status().code() == quench::ErrorCode::kUsage);
      CHECK(m.status().message().find("'re:" + pattern + "': invalid regular expression: " +
                                      why) != std::string::npos);
    }
    // Lazy quantifiers, quantified groups, escaped or bracketed quantifier characters and
    // braces that are no quantifier stay valid, as in Python.
    for (const std::string pattern : {"a*?b", "x+?", "a{2,3}?", "(a*)*b", "\\*+", "[*+?]+",
                                      "[]*]+", "a{2}b*", "model\\.layers\\.\\d+\\..*"}) {
      CAPTURE(pattern);
      CHECK(NameMatcher::Compile({"re:" + pattern}, "--ignore").ok());
    }
  }

  // 30,000 nested groups overflowed the stack of libstdc++'s recursive regex compiler
  // (SIGSEGV, exit 139, for `--ignore 're:((((...a...))))'`).
  TEST_CASE("groups nested more than 200 deep are refused, not compiled") {
    const auto nested = [](int depth) {
      return "re:" + std::string(depth, '(') + "a" + std::string(depth, ')');
    };
    CHECK(NameMatcher::Compile({nested(200)}, "--ignore").ok());
    for (int depth : {201, 30000}) {
      CAPTURE(depth);
      auto m = NameMatcher::Compile({nested(depth)}, "--ignore");
      REQUIRE_FALSE(m.ok());
      CHECK(m.status().code() == quench::ErrorCode::kUsage);
      CHECK(m.status().message().find(": invalid regular expression: groups nested more than "
                                      "200 deep at position 200") != std::string::npos);
    }
    // Parentheses escaped or inside a class are no groups.
    std::string escaped = "re:", classed = "re:";
    for (int i = 0; i < 250; ++i) {
      escaped += "\\(";
      classed += "[(]";
    }
    CHECK(NameMatcher::Compile({escaped}, "--ignore").ok());
    CHECK(NameMatcher::Compile({classed}, "--ignore").ok());
  }

  TEST_CASE("module/parameter split at the last dot") {
    auto [m, p] = quench::SplitModuleParam("model.layers.0.mlp.down_proj.weight");
    CHECK(m == "model.layers.0.mlp.down_proj");
    CHECK(p == "weight");
    auto [m2, p2] = quench::SplitModuleParam("weight");
    CHECK(m2.empty());
    CHECK(p2 == "weight");
  }

  TEST_CASE("default ignores cover heads, embeddings, routers and encoders, not projections") {
    std::vector<std::string> patterns;
    for (const auto& d : quench::DefaultIgnores()) patterns.emplace_back(d.pattern);
    auto m = NameMatcher::Compile(patterns, "default");
    REQUIRE(m.ok());
    for (const char* n : {"lm_head", "model.embed_tokens", "embeddings.word_embeddings",
                          "embeddings.position_embeddings", "transformer.wte",
                          "model.layers.0.mlp.gate", "model.layers.1.mlp.shared_expert_gate",
                          "model.layers.2.block_sparse_moe.gate",
                          "model.layers.2.block_sparse_moe.router", "model.layers.3.mlp.router",
                          "language_model.model.layers.0.feed_forward.router",
                          // multimodal models' output heads, encoders and projectors, in
                          // the layouts of Llava / Llama 4 / Mllama (older transformers),
                          // Qwen2.5-VL, Qwen3-VL (transformers 5), Qwen2.5-Omni, Kimi-VL,
                          // Gemma 3n, Phi-3.5-vision, Idefics3, DeepSeek-VL2
                          "language_model.lm_head", "thinker.lm_head", "llm.lm_head",
                          "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj",
                          "vision_model.model.layers.0.mlp.fc1", "visual.blocks.0.attn.qkv",
                          "model.visual.merger.linear_fc1", "thinker.visual.blocks.0.mlp.up_proj",
                          "thinker.audio_tower.layers.0.fc1", "multi_modal_projector.linear_1",
                          "model.multi_modal_projector.linear_2", "mm_projector.proj.0",
                          "model.embed_vision.embedding_projection", "model.audio_tower.conv.0",
                          "model.vision_embed_tokens.img_projection.0",
                          "model.connector.modality_projection.proj", "vision.blocks.0.attn.qkv",
                          "projector.layers.0",
                          // routers, convolutions, MTP layers, indexers, heads and
                          // embeddings under other names (vLLM 0.32.0's model files):
                          // Nemotron-H, LFM2-MoE, Step3, DBRX, Granite MoE, Gemma 4,
                          // LongCat-Flash, Qwen3-Next, DeepSeek V3 / V3.2, ChatGLM, InternLM2,
                          // OPT, CLIP text, Gemma 3n, Mamba
                          "backbone.layers.1.mixer.gate", "model.layers.0.feed_forward.gate",
                          "model.layers.3.moe.gate", "transformer.blocks.0.ffn.router.layer",
                          "model.layers.0.block_sparse_moe.router.layer",
                          "model.language_model.layers.0.router.proj",
                          "model.layers.0.mlp.router.classifier", "backbone.layers.0.mixer.conv1d",
                          "model.layers.0.linear_attn.conv1d", "model.layers.0.conv.conv",
                          "model.layers.0.mamba.in_proj", "model.layers.0.mamba.x_proj",
                          "model.layers.0.mamba.dt_proj", "model.layers.0.mamba.out_proj",
                          "model.layers.61.eh_proj",
                          "model.layers.61.shared_head.head", "model.layers.0.self_attn.indexer.wk",
                          "model.layers.0.self_attn.indexer.weights_proj",
                          "transformer.output_layer", "output", "model.decoder.embed_positions",
                          "text_model.embeddings.position_embedding",
                          "text_model.embeddings.token_embedding",
                          "model.language_model.embed_tokens_per_layer", "backbone.embeddings"}) {
      CAPTURE(n);
      CHECK(m->Matches(n));
    }
    for (const char* n : {"model.layers.0.mlp.gate_proj", "model.layers.0.self_attn.q_proj",
                          "model.layers.0.mlp.experts.3.up_proj", "encoder.layer.0.output.dense",
                          "model.layers.0.mlp.router_proj",
                          // the language model of a multimodal checkpoint
                          "language_model.model.layers.0.self_attn.q_proj",
                          "model.language_model.layers.0.mlp.down_proj",
                          "thinker.model.layers.0.self_attn.o_proj", "lm_head_proj",
                          "model.layers.0.visual.proj",
                          // quantizable neighbours of the names above
                          "model.layers.0.self_attn.indexer.wq_b",
                          "backbone.layers.0.mixer.in_proj",
                          "backbone.layers.0.mixer.out_proj", "model.output",
                          "backbone.layers.1.mixer.experts.0.up_proj",
                          "model.layers.0.linear_attn.in_proj_qkvz", "model.layers.61.enorm_proj",
                          "embeddings.word_embeddings.proj", "model.layers.0.mlp.router_gate"}) {
      CAPTURE(n);
      CHECK_FALSE(m->Matches(n));
    }
  }

  TEST_CASE("fused-set keys: siblings vLLM fuses share a key, other modules have none") {
    using quench::FusedSetKey;
    const std::string qkv = FusedSetKey("model.layers.0.self_attn.q_proj");
    CHECK_FALSE(qkv.empty());
    CHECK(FusedSetKey("model.layers.0.self_attn.k_proj") == qkv);
    CHECK(FusedSetKey("model.layers.0.self_attn.v_proj") == qkv);
    CHECK(FusedSetKey("model.layers.1.self_attn.q_proj") != qkv);  // another parent
    const std::string gate_up = FusedSetKey("model.layers.0.mlp.experts.7.gate_proj");
    CHECK(FusedSetKey("model.layers.0.mlp.experts.7.up_proj") == gate_up);
    CHECK(gate_up != FusedSetKey("model.layers.0.mlp.experts.8.up_proj"));
    CHECK(FusedSetKey("model.layers.0.block_sparse_moe.experts.0.w1") ==
          FusedSetKey("model.layers.0.block_sparse_moe.experts.0.w3"));
    CHECK(FusedSetKey("model.layers.0.self_attn.q_a_proj") ==
          FusedSetKey("model.layers.0.self_attn.kv_a_proj_with_mqa"));
    for (const char* n : {"model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj",
                          "model.layers.0.block_sparse_moe.experts.0.w2", "lm_head",
                          "q_proj_x", "model.layers.0.self_attn.q_b_proj"}) {
      CAPTURE(n);
      CHECK(FusedSetKey(n).empty());
    }
  }

  // One case per family of vLLM 0.32.0's model files (packed_modules_mapping, or the experts'
  // checkpoint names it loads into one w13): the siblings named there share a key.
  TEST_CASE("fused-set keys follow what vLLM fuses, per model family") {
    using quench::FusedSetKey;
    struct Family {
      const char* where;                  // the vLLM model file the set comes from
      std::vector<const char*> siblings;  // one fused matrix in vLLM
    };
    const Family families[] = {
        {"bert.py, roberta.py", {"encoder.layer.3.attention.self.query",
                                 "encoder.layer.3.attention.self.key",
                                 "encoder.layer.3.attention.self.value"}},
        {"qwen3_moe.py (FusedMoE default)", {"model.layers.1.mlp.experts.5.gate_proj",
                                             "model.layers.1.mlp.experts.5.up_proj"}},
        {"mixtral.py", {"model.layers.0.block_sparse_moe.experts.2.w1",
                        "model.layers.0.block_sparse_moe.experts.2.w3"}},
        {"internlm2.py", {"model.layers.0.feed_forward.w1", "model.layers.0.feed_forward.w3"}},
        {"whisper.py", {"model.decoder.layers.0.encoder_attn.k_proj",
                        "model.decoder.layers.0.encoder_attn.v_proj"}},
        {"olmo_hybrid.py", {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                            "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.g_proj"}},
        {"bailing_moe_v3.py", {"model.layers.0.attention.q_proj",
                               "model.layers.0.attention.b_proj"}},
        {"qwen3_5.py", {"model.layers.0.linear_attn.in_proj_qkv",
                        "model.layers.0.linear_attn.in_proj_z"}},
        {"qwen3_5.py", {"model.layers.0.linear_attn.in_proj_b",
                        "model.layers.0.linear_attn.in_proj_a"}},
        {"exaone.py", {"transformer.h.0.mlp.c_fc_0", "transformer.h.0.mlp.c_fc_1"}},
        {"glm4v.py", {"visual.merger.gate_proj", "visual.merger.dense_h_to_4h"}},
        {"molmo2.py", {"vision_backbone.blocks.0.attn.wq", "vision_backbone.blocks.0.attn.wk",
                       "vision_backbone.blocks.0.attn.wv"}},
        {"dots_ocr.py", {"vision_tower.blocks.0.mlp.fc1", "vision_tower.blocks.0.mlp.fc3"}},
        {"qwen2_5_omni_thinker.py", {"audio_tower.blocks.0.attn.q", "audio_tower.blocks.0.attn.k",
                                     "audio_tower.blocks.0.attn.v"}},
        {"lfm2.py", {"model.layers.0.feed_forward.w1", "model.layers.0.feed_forward.w3"}},
        {"deepseek_v2 (HF naming)", {"model.layers.0.self_attn.q_a_proj",
                                     "model.layers.0.self_attn.kv_a_proj_with_mqa"}},
    };
    for (const Family& f : families) {
      CAPTURE(f.where);
      const std::string key = FusedSetKey(f.siblings.front());
      CHECK_FALSE(key.empty());
      for (const char* m : f.siblings) {
        CAPTURE(m);
        CHECK(FusedSetKey(m) == key);
      }
    }
    // Not fused: another parent, BERT's output dense, a bare q outside an attn module, the
    // experts' down projection, fc2.
    CHECK(FusedSetKey("encoder.layer.3.attention.self.query") !=
          FusedSetKey("encoder.layer.4.attention.self.query"));
    for (const char* n :
         {"encoder.layer.3.attention.output.dense", "encoder.layer.3.intermediate.dense",
          "model.layers.0.mlp.q", "model.layers.1.mlp.experts.5.down_proj",
          "vision_tower.blocks.0.mlp.fc2", "model.layers.0.self_attn.o_proj"}) {
      CAPTURE(n);
      CHECK(FusedSetKey(n).empty());
    }
  }

  TEST_CASE("ignore entries for modules left unquantized cover them and no quantized module") {
    using quench::CoverWithIgnore;
    // Checked against Python: re.match(entry[3:], name) for each name below.
    CHECK(CoverWithIgnore(
              {"embeddings.LayerNorm", "encoder.layer.0.output.LayerNorm",
               "encoder.layer.1.output.LayerNorm", "encoder.layer.0.attention.output.LayerNorm"},
              {"encoder.layer.0.output.dense", "encoder.layer.1.output.dense"}) ==
          std::vector<std::string>{
              "embeddings.LayerNorm", "re:encoder\\.layer\\.[0-9]+\\.output\\.LayerNorm$",
              "re:encoder\\.layer\\.[0-9]+\\.attention\\.output\\.LayerNorm$"});
    // A quantized module of the same shape keeps the exact name.
    CHECK(CoverWithIgnore({"h.0.ln"}, {"h.1.ln"}) == std::vector<std::string>{"h.0.ln"});
    CHECK(CoverWithIgnore({}, {"a"}).empty());
    // The regexes really match what they cover and not the quantized modules.
    const auto entries = CoverWithIgnore({"m.layers.12.ff.experts", "m.layers.3.ff.experts"},
                                         {"m.layers.3.ff.experts.0.gate_proj"});
    REQUIRE(entries.size() == 1);
    auto m = NameMatcher::Compile(entries, "ignore");
    REQUIRE(m.ok());
    CHECK(m->Matches("m.layers.12.ff.experts"));
    CHECK(m->Matches("m.layers.3.ff.experts"));
    CHECK_FALSE(m->Matches("m.layers.3.ff.experts.0.gate_proj"));
    CHECK_FALSE(m->Matches("m.layers.x.ff.experts"));
    // Experts modules whose stacks are kept whole: the names under them too, which vLLM asks
    // about (`<experts>.0.gate_proj`), as a regex of the exact name where an index regex would
    // cover a quantized module, and not at all under a module with a quantized child.
    const auto stacks = CoverWithIgnore({"m.layers.0.mlp.experts", "m.layers.1.mlp.experts",
                                         "m.layers.2.mlp.experts", "ln.1"},
                                        {"m.layers.2.mlp.experts.gate"},
                                        {"m.layers.0.mlp.experts", "m.layers.1.mlp.experts",
                                         "m.layers.2.mlp.experts"});
    CHECK(stacks == std::vector<std::string>{
                        "re:m\\.layers\\.0\\.mlp\\.experts(\\..*)?$",
                        "re:m\\.layers\\.1\\.mlp\\.experts(\\..*)?$", "m.layers.2.mlp.experts",
                        "re:ln\\.[0-9]+$"});
    m = NameMatcher::Compile(stacks, "ignore");
    REQUIRE(m.ok());
    CHECK(m->Matches("m.layers.1.mlp.experts.0.up_proj"));
    CHECK_FALSE(m->Matches("m.layers.2.mlp.experts.gate"));
    const auto whole = CoverWithIgnore({"m.layers.0.mlp.experts", "m.layers.1.mlp.experts"}, {},
                                       {"m.layers.0.mlp.experts", "m.layers.1.mlp.experts"});
    REQUIRE(whole ==
            std::vector<std::string>{"re:m\\.layers\\.[0-9]+\\.mlp\\.experts(\\..*)?$"});
    m = NameMatcher::Compile(whole, "ignore");
    REQUIRE(m.ok());
    for (const char* n : {"m.layers.0.mlp.experts", "m.layers.7.mlp.experts.0.gate_proj",
                          "m.layers.7.mlp.experts.0.down_proj"}) {
      CAPTURE(n);
      CHECK(m->Matches(n));
    }
    CHECK_FALSE(m->Matches("m.layers.7.mlp.expertsX"));
    CHECK_FALSE(m->Matches("m.layers.7.mlp.router"));
  }
}
