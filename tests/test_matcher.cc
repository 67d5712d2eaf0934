// Target/ignore matching. Expected values are Python's re.match results for the same pattern
// and name (compressed-tensors and vLLM match with re.match), worked out with CPython.
#include <doctest/doctest.h>

#include <regex>
#include <string>
#include <string_view>

#include "plan/fused_sets.h"
#include "plan/matcher.h"
#include "plan/planner.h"

using quench::NameMatcher;

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
        ".*\\\\$",
    };
    const char* names[] = {
        "model.layers.0.mlp.gate", "model.layers.0.mlp.gate_proj", "mlp.gate", "gate", "",
        "embeddings.word_embeddings", "transformer.wte", "wpe", "x.tok_embeddings",
        "model.embed_tokens", "a", "abc", "model.layers.1.mlp.gatex", "x$", "x.proj",
        "x.ab", "x.ac", "model.layers.12.mlp.gate", "bee", "x\\",
    };
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

  TEST_CASE("first matching entry wins") {
    auto m = NameMatcher::Compile({"re:.*proj", "model.q_proj"}, "--targets");
    REQUIRE(m.ok());
    CHECK(m->FirstMatch("model.q_proj") == 0);
    CHECK(m->FirstMatch("model.norm") == -1);
  }

  TEST_CASE("an invalid regex is a usage error naming the entry") {
    auto m = NameMatcher::Compile({"re:(unclosed"}, "--ignore");
    REQUIRE_FALSE(m.ok());
    CHECK(m.status().code() == quench::ErrorCode::kUsage);
    CHECK(m.status().message().find("re:(unclosed") != std::string::npos);
  }

  TEST_CASE("module/parameter split at the last dot") {
    auto [m, p] = quench::SplitModuleParam("model.layers.0.mlp.down_proj.weight");
    CHECK(m == "model.layers.0.mlp.down_proj");
    CHECK(p == "weight");
    auto [m2, p2] = quench::SplitModuleParam("weight");
    CHECK(m2.empty());
    CHECK(p2 == "weight");
  }

  TEST_CASE("default ignores cover heads, embeddings and router gates but not projections") {
    std::vector<std::string> patterns;
    for (const auto& d : quench::DefaultIgnores()) patterns.emplace_back(d.pattern);
    auto m = NameMatcher::Compile(patterns, "default");
    REQUIRE(m.ok());
    for (const char* n : {"lm_head", "model.embed_tokens", "embeddings.word_embeddings",
                          "embeddings.position_embeddings", "transformer.wte",
                          "model.layers.0.mlp.gate", "model.layers.1.mlp.shared_expert_gate",
                          "model.layers.2.block_sparse_moe.gate"}) {
      CAPTURE(n);
      CHECK(m->Matches(n));
    }
    for (const char* n : {"model.layers.0.mlp.gate_proj", "model.layers.0.self_attn.q_proj",
                          "model.layers.0.mlp.experts.3.up_proj", "encoder.layer.0.output.dense"}) {
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
}
