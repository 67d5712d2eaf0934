// Smoothing mappings as data, and match_modules_set's grouping (see mappings.h).
#include "calib/mappings.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <set>

#include "plan/matcher.h"

namespace quench::calib {
namespace {

using Specs = std::vector<MappingSpec>;

// modifiers/transform/smoothquant/utils.py (llm-compressor 0.14.0.1).
const Specs kSqDefault = {
    {"re:.*input_layernorm", {"re:.*q_proj", "re:.*k_proj", "re:.*v_proj"}},
    {"re:.*post_attention_layernorm", {"re:.*gate_proj", "re:.*up_proj"}}};
const Specs kSqMixtral = {
    {"re:.*input_layernorm", {"re:.*q_proj", "re:.*k_proj", "re:.*v_proj"}}};
const Specs kSqBloom = {{"re:.*input_layernorm", {"re:.*query_key_value"}},
                        {"re:.*post_attention_layernorm", {"re:.*dense_h_to_4h"}}};
const Specs kSqPhi3 = {{"re:.*input_layernorm", {"re:.*qkv_proj"}},
                       {"re:.*post_attention_layernorm", {"re:.*gate_up_proj"}}};
const Specs kSqWhisper = {
    {"re:.*self_attn_layer_norm", {"re:.*k_proj", "re:.*v_proj", "re:.*q_proj"}},
    {"re:.*final_layer_norm", {"re:.*fc1"}}};
const Specs kSqDeepseekV2 = {
    {"re:.*input_layernorm", {"re:.*q(_a)?_proj$", "re:.*kv_a_proj_with_mqa"}}};
// MLP smoothing is omitted for MoE in the reference (one scale across experts).
const Specs kSqQwenMoe = {
    {"re:.*input_layernorm$", {"re:.*q_proj$", "re:.*k_proj$", "re:.*v_proj$"}}};
const Specs kSqCohere = {
    {"re:.*input_layernorm$",
     {"re:.*self_attn\\.q_proj$", "re:.*self_attn\\.k_proj$", "re:.*self_attn\\.v_proj$",
      "re:.*mlp\\.gate_proj$", "re:.*mlp\\.up_proj$"}}};
const Specs kSqCohere2Moe = {
    {"re:.*input_layernorm$",
     {"re:.*self_attn\\.q_proj$", "re:.*self_attn\\.k_proj$", "re:.*self_attn\\.v_proj$",
      "re:.*gate_proj$", "re:.*up_proj$"}}};
const Specs kSqAfmoe = {
    {"re:.*input_layernorm",
     {"re:.*self_attn\\.q_proj", "re:.*self_attn\\.k_proj", "re:.*self_attn\\.v_proj",
      "re:.*self_attn\\.gate_proj"}},
    {"re:.*pre_mlp_layernorm", {"re:.*mlp.*gate_proj", "re:.*mlp.*up_proj"}}};

const std::map<std::string, const Specs*> kSqRegistry = {
    {"BloomForCausalLM", &kSqBloom},
    {"ChatGLMForConditionalGeneration", &kSqBloom},
    {"CohereForCausalLM", &kSqCohere},
    {"Cohere2ForCausalLM", &kSqCohere},
    {"Cohere2MoeForCausalLM", &kSqCohere2Moe},
    {"Cohere2VisionForConditionalGeneration", &kSqCohere},
    {"DeepseekV2ForCausalLM", &kSqDeepseekV2},
    {"DeepseekV3ForCausalLM", &kSqDeepseekV2},
    {"Ernie4_5_MoeForCausalLM", &kSqMixtral},
    {"Gemma2ForCausalLM", &kSqDefault},
    {"Gemma3ForCausalLM", &kSqDefault},
    {"Gemma3ForConditionalGeneration", &kSqDefault},
    {"Glm4MoeForCausalLM", &kSqDefault},
    {"Glm4MoeLiteForCausalLM", &kSqDeepseekV2},
    {"GlmMoeDsaForCausalLM", &kSqDeepseekV2},
    {"GraniteForCausalLM", &kSqDefault},
    {"Llama4ForConditionalGeneration", &kSqDefault},
    {"LlamaForCausalLM", &kSqDefault},
    {"Mistral3ForConditionalGeneration", &kSqDefault},
    {"MistralForCausalLM", &kSqDefault},
    {"MixtralForCausalLM", &kSqMixtral},
    {"NanbeigeForCausalLM", &kSqDefault},
    {"Phi3ForCausalLM", &kSqPhi3},
    {"Phi3VForCausalLM", &kSqPhi3},
    {"Qwen2ForCausalLM", &kSqDefault},
    {"Qwen2_5OmniModel", &kSqDefault},
    {"Qwen2_5OmniThinkerForConditionalGeneration", &kSqDefault},
    {"Qwen2_5_VLForConditionalGeneration", &kSqDefault},
    {"Qwen3ForCausalLM", &kSqDefault},
    {"Qwen2MoeForCausalLM", &kSqQwenMoe},
    {"Qwen3MoeForCausalLM", &kSqQwenMoe},
    {"SeedOssForCausalLM", &kSqDefault},
    {"WhisperForConditionalGeneration", &kSqWhisper},
    {"AfmoeForCausalLM", &kSqAfmoe},
};

// modifiers/transform/awq/mappings.py (llm-compressor 0.14.0.1): the dense and MoE defaults
// and Phi's fused projections.
const Specs kAwqDefault = {
    {"re:.*input_layernorm$", {"re:.*q_proj$", "re:.*k_proj$", "re:.*v_proj$"}},
    {"re:.*v_proj$", {"re:.*o_proj$"}},
    {"re:.*post_attention_layernorm$", {"re:.*gate_proj$", "re:.*up_proj$"}},
    {"re:.*up_proj$", {"re:.*down_proj$"}}};
const Specs kAwqMoe = {
    {"re:.*input_layernorm$", {"re:.*q_proj$", "re:.*k_proj$", "re:.*v_proj$"}},
    {"re:.*v_proj$", {"re:.*o_proj$"}},
    {"re:.*post_attention_layernorm$",
     {"re:.*mlp.gate$", "re:.*mlp.experts.*.gate_proj$", "re:.*mlp.experts.*.up_proj$"}},
    {"re:.*up_proj$", {"re:.*down_proj$"}}};
const Specs kAwqPhi = {{"re:.*input_layernorm$", {"re:.*qkv_proj$"}},
                       {"re:.*qkv_proj$", {"re:.*o_proj$"}},
                       {"re:.*post_attention_layernorm$", {"re:.*gate_up_proj$"}},
                       {"re:.*gate_up_proj$", {"re:.*down_proj$"}}};

const std::map<std::string, const Specs*> kAwqRegistry = {
    {"Glm4MoeForCausalLM", &kAwqMoe},
    {"GraniteForCausalLM", &kAwqDefault},
    {"LlamaForCausalLM", &kAwqDefault},
    {"Mistral3ForConditionalGeneration", &kAwqDefault},
    {"MistralForCausalLM", &kAwqDefault},
    {"NanbeigeForCausalLM", &kAwqDefault},
    {"Phi3ForCausalLM", &kAwqPhi},
    {"Phi3VForCausalLM", &kAwqPhi},
    {"Qwen2ForCausalLM", &kAwqDefault},
    {"Qwen2_5OmniModel", &kAwqDefault},
    {"Qwen2_5OmniThinkerForConditionalGeneration", &kAwqDefault},
    {"Qwen2MoeForCausalLM", &kAwqMoe},
    {"Qwen3ForCausalLM", &kAwqDefault},
    {"Qwen3MoeForCausalLM", &kAwqMoe},
    {"SeedOssForCausalLM", &kAwqDefault},
    {"Ernie4_5_MoeForCausalLM", &kAwqDefault},
};

// quench's own: a post-norm BERT's LayerNorms also feed the residual, so smoothing them is
// not an identity; value -> attention.output.dense is (attention mixes tokens, not channels).
const Specs kBert = {{"re:.*attention\\.self\\.value$", {"re:.*attention\\.output\\.dense$"}}};

bool IsBert(const std::string& arch) { return arch.rfind("Bert", 0) == 0; }

// Natural order: dotted names compared piece by piece, numbers as numbers.
bool NaturalLess(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit(static_cast<unsigned char>(a[i])) &&
        std::isdigit(static_cast<unsigned char>(b[j]))) {
      size_t i1 = i, j1 = j;
      while (i1 < a.size() && std::isdigit(static_cast<unsigned char>(a[i1]))) ++i1;
      while (j1 < b.size() && std::isdigit(static_cast<unsigned char>(b[j1]))) ++j1;
      const std::string x = a.substr(i, i1 - i), y = b.substr(j, j1 - j);
      if (x.size() != y.size()) return x.size() < y.size();
      if (x != y) return x < y;
      i = i1;
      j = j1;
      continue;
    }
    if (a[i] != b[j]) return a[i] < b[j];
    ++i;
    ++j;
  }
  return a.size() - i < b.size() - j;
}

// compressed-tensors' get_lowest_common_ancestor_name for two names (`b` may be empty: none).
std::string Ancestor(const std::string& a, const std::string* b) {
  if (b == nullptr) return a;
  const std::string s1 = "." + std::min(a, *b) + ".", s2 = "." + std::max(a, *b) + ".";
  size_t n = 0;
  while (n < s1.size() && n < s2.size() && s1[n] == s2[n]) ++n;
  const std::string prefix = s1.substr(0, n);  // starts with '.', so rfind finds one
  const size_t dot = prefix.rfind('.');
  return dot == 0 ? std::string() : prefix.substr(1, dot - 1);
}

}  // namespace

std::vector<MappingSpec> MappingsFor(MappingFamily family, const std::string& architecture,
                                     bool* fallback) {
  *fallback = false;
  if (IsBert(architecture)) return kBert;
  const auto& reg = family == MappingFamily::kSmoothQuant ? kSqRegistry : kAwqRegistry;
  auto it = reg.find(architecture);
  if (it != reg.end()) return *it->second;
  *fallback = true;
  return family == MappingFamily::kSmoothQuant ? kSqDefault : kAwqDefault;
}

std::string DescribeMapping(const MappingSpec& spec) {
  std::string s;
  for (const std::string& b : spec.balance) s += (s.empty() ? "" : ", ") + b;
  return "[" + s + "] <- " + spec.smooth;
}

Result<std::vector<ResolvedMapping>> ResolveMappings(const std::vector<MappingSpec>& specs,
                                                     std::vector<std::string> modules) {
  std::sort(modules.begin(), modules.end(), NaturalLess);
  std::vector<ResolvedMapping> out;
  for (const MappingSpec& spec : specs) {
    // Targets in the reference's order: balance layers, then the smooth layer.
    std::vector<std::string> targets = spec.balance;
    targets.push_back(spec.smooth);
    QUENCH_ASSIGN_OR_RETURN(NameMatcher m, NameMatcher::Compile(targets, "mapping"));
    const size_t k = targets.size();
    std::vector<std::vector<std::string>> matches(k);
    std::string parent;
    bool has_parent = false;
    std::set<size_t> unmatched;
    for (size_t i = 0; i < k; ++i) unmatched.insert(i);
    auto yield = [&]() -> Status {
      if (matches[k - 1].size() > 1) {
        return Error(ErrorCode::kInvalidInput,
                     "mapping " + DescribeMapping(spec) + " matches more than one smooth layer "
                     "in one set (" + matches[k - 1][0] + ", " + matches[k - 1][1] + ")");
      }
      ResolvedMapping r;
      r.smooth = matches[k - 1][0];
      for (size_t t = 0; t + 1 < k; ++t) {
        for (const std::string& b : matches[t]) r.balance.push_back(b);
      }
      out.push_back(std::move(r));
      return Status::Ok();
    };
    for (const std::string& name : modules) {
      size_t hits = 0;
      std::string first_hit;
      for (size_t t = 0; t < k; ++t) {
        if (!m.EntryMatches(t, name)) continue;
        if (++hits > 1) {
          return Error(ErrorCode::kInvalidInput,
                       "module " + name + " is matched by two targets of mapping " +
                           DescribeMapping(spec) + " (" + first_hit + ", " + targets[t] + ")");
        }
        first_hit = targets[t];
        std::string next = Ancestor(name, has_parent ? &parent : nullptr);
        if (unmatched.empty() && next != parent) {
          QUENCH_RETURN_IF_ERROR(yield());
          for (auto& v : matches) v.clear();
          next = name;
          for (size_t i = 0; i < k; ++i) unmatched.insert(i);
        }
        matches[t].push_back(name);
        parent = next;
        has_parent = true;
        unmatched.erase(t);
      }
    }
    if (unmatched.size() == k) continue;  // nothing matched: the mapping does not apply
    if (!unmatched.empty()) {
      std::string missing;
      for (size_t t : unmatched) missing += (missing.empty() ? "" : ", ") + targets[t];
      return Error(ErrorCode::kInvalidInput,
                   "mapping " + DescribeMapping(spec) + ": the last set (around " + parent +
                       ") has no module for " + missing);
    }
    QUENCH_RETURN_IF_ERROR(yield());
  }
  return out;
}

}  // namespace quench::calib
