// GGUF tensor names (llama.cpp's llama-arch.cpp / gguf-py constants.py) to the names Hugging
// Face checkpoints store, for the architectures convert_hf_to_gguf.py converts them from
// (gguf-py tensor_mapping.py lists the same pairs the other way round):
//   blk.N.attn_q -> model.layers.N.self_attn.q_proj (k, v; attn_output -> o_proj),
//   blk.N.ffn_gate / ffn_up / ffn_down -> model.layers.N.mlp.gate_proj / up_proj / down_proj,
//   blk.N.ffn_gate_inp -> mlp.gate (the router), blk.N.ffn_{gate,up,down}_exps -> every
//   expert's mlp.experts.E.{gate,up,down}_proj (one matrix per expert in the imatrix),
//   blk.N.ffn_{gate,up,down}_shexp -> mlp.shared_experts.*, DeepSeek's MLA attn_q_a, attn_q_b,
//   attn_kv_a_mqa, attn_kv_b -> self_attn.q_a_proj, q_b_proj, kv_a_proj_with_mqa, kv_b_proj,
//   output -> lm_head. Mixtral keeps block_sparse_moe.gate and experts.E.w1 / w3 / w2.
// Sites follow the collector (docs/statistics-format.md): q/k/v (and MLA's q_a/kv_a) read the
// attention input; gate/up the MLP input; the router and the shared experts' gate/up the MoE
// input; every expert's gate/up its routed tokens (llama.cpp counts routed tokens: `--moe
// routed`); sites are named after the runtime module (transformers 5 names Mixtral's MoE block
// `mlp`, as it renames block_sparse_moe on load).
#include <optional>
#include <string_view>

#include "calib/imatrix.h"

namespace quench::calib {
namespace {

struct Rule {
  std::string_view gguf;    // after "blk.N."
  std::string_view weight;  // after "model.layers.N.", without ".weight"
  std::string_view group;
  std::string_view site;    // after "model.layers.N."
  bool per_expert = false;
};

// In the order a layer runs them: a group's site is named after its first present member.
constexpr Rule kCommon[] = {
    {"attn_q", "self_attn.q_proj", "attn_in", "self_attn.q_proj"},
    {"attn_k", "self_attn.k_proj", "attn_in", "self_attn.k_proj"},
    {"attn_v", "self_attn.v_proj", "attn_in", "self_attn.v_proj"},
    {"attn_output", "self_attn.o_proj", "attn_out", "self_attn.o_proj"},
    {"ffn_gate", "mlp.gate_proj", "mlp_in", "mlp.gate_proj"},
    {"ffn_up", "mlp.up_proj", "mlp_in", "mlp.up_proj"},
    {"ffn_down", "mlp.down_proj", "mlp_down", "mlp.down_proj"},
};
constexpr Rule kMla[] = {
    {"attn_q_a", "self_attn.q_a_proj", "attn_in", "self_attn.q_a_proj"},
    {"attn_kv_a_mqa", "self_attn.kv_a_proj_with_mqa", "attn_in", "self_attn.kv_a_proj_with_mqa"},
    {"attn_q_b", "self_attn.q_b_proj", "q_b", "self_attn.q_b_proj"},
    {"attn_kv_b", "self_attn.kv_b_proj", "kv_b", "self_attn.kv_b_proj"},
};
constexpr Rule kMoe[] = {
    {"ffn_gate_inp", "mlp.gate", "moe_in", "mlp.gate"},
    {"ffn_gate_exps", "mlp.experts.{E}.gate_proj", "exp_in", "mlp.experts.gate_proj", true},
    {"ffn_up_exps", "mlp.experts.{E}.up_proj", "exp_in", "mlp.experts.gate_proj", true},
    {"ffn_down_exps", "mlp.experts.{E}.down_proj", "exp_down", "mlp.experts.down_proj", true},
};
constexpr Rule kShared[] = {
    {"ffn_gate_shexp", "mlp.shared_experts.gate_proj", "moe_in", "mlp.shared_experts.gate_proj"},
    {"ffn_up_shexp", "mlp.shared_experts.up_proj", "moe_in", "mlp.shared_experts.up_proj"},
    {"ffn_down_shexp", "mlp.shared_experts.down_proj", "shexp_down",
     "mlp.shared_experts.down_proj"},
};
constexpr Rule kMixtral[] = {
    {"ffn_gate_inp", "block_sparse_moe.gate", "moe_in", "mlp.gate"},
    {"ffn_gate_exps", "block_sparse_moe.experts.{E}.w1", "exp_in", "mlp.experts.gate_proj", true},
    {"ffn_up_exps", "block_sparse_moe.experts.{E}.w3", "exp_in", "mlp.experts.gate_proj", true},
    {"ffn_down_exps", "block_sparse_moe.experts.{E}.w2", "exp_down", "mlp.experts.down_proj", true},
};

// Kimi K2 is a DeepSeek-V3 (architectures DeepseekV3ForCausalLM, model_type kimi_k2), and
// llama.cpp converts it as deepseek2.
bool IsDeepseek(const std::string& t) {
  return t == "deepseek_v2" || t == "deepseek_v3" || t == "kimi_k2";
}

// Calls f(rule, rank) over the architecture's rules, rank being the run order.
template <class F>
void ForRules(const std::string& model_type, F f) {
  int rank = 0;
  auto all = [&](const auto& rules) {
    for (const Rule& r : rules) f(r, rank++);
  };
  all(kCommon);
  if (IsDeepseek(model_type)) {
    all(kMla);
    all(kMoe);
    all(kShared);
  } else if (model_type == "qwen3_moe") {
    all(kMoe);
  } else if (model_type == "mixtral") {
    all(kMixtral);
  }
}

// "blk.N.rest.weight" -> (N, rest); false for other forms.
bool SplitBlock(const std::string& name, std::string& layer, std::string& rest) {
  if (!name.starts_with("blk.") || !name.ends_with(".weight")) return false;
  const size_t dot = name.find('.', 4);
  if (dot == std::string::npos || dot == 4) return false;
  layer = name.substr(4, dot - 4);
  for (char c : layer) {
    if (c < '0' || c > '9') return false;
  }
  if (layer.size() > 1 && layer[0] == '0') return false;
  rest = name.substr(dot + 1, name.size() - dot - 1 - std::string_view(".weight").size());
  return !rest.empty();
}

}  // namespace

bool ImatrixArchitectureKnown(const std::string& t) {
  // Mistral's checkpoints use Llama's names, and llama.cpp converts them as llama.
  return t == "llama" || t == "mistral" || t == "qwen2" || t == "qwen3" || t == "qwen3_moe" ||
         t == "mixtral" || IsDeepseek(t);
}

Result<ImatrixTarget> MapImatrixName(const std::string& model_type, const std::string& name,
                                     const LanguageModelNames& names) {
  if (name == "output.weight") {  // llama-imatrix --process-output
    return ImatrixTarget{names.head + ".weight", false, names.head, 0, names.head, ""};
  }
  std::string layer, rest;
  if (SplitBlock(name, layer, rest)) {
    const std::string prefix = names.layers + layer + ".";
    if (IsDeepseek(model_type) && (rest == "attn_k_b" || rest == "attn_v_b")) {
      ImatrixTarget t;
      // llama.cpp's absorbed MLA multiplies each head by its slice of kv_b_proj; that input
      // is not the one kv_b_proj reads in the checkpoint.
      t.skip_reason = "absorbed MLA (per head): no checkpoint weight reads this input";
      return t;
    }
    std::optional<ImatrixTarget> hit;
    ForRules(model_type, [&](const Rule& r, int rank) {
      if (hit || r.gguf != rest) return;
      hit = ImatrixTarget{prefix + std::string(r.weight) + ".weight", r.per_expert,
                          prefix + std::string(r.group), rank, prefix + std::string(r.site), ""};
    });
    if (hit) return *hit;
  }
  return Error(ErrorCode::kInvalidInput,
               "imatrix tensor '" + name + "' is not a weight quench maps for architecture '" +
                   model_type + "'");
}

std::string ImatrixNameOf(const std::string& model_type, const std::string& weight,
                          const LanguageModelNames& names) {
  if (weight == names.head + ".weight") return "output.weight";
  const std::string& layers = names.layers;
  if (!weight.starts_with(layers) || !weight.ends_with(".weight")) return "";
  const size_t dot = weight.find('.', layers.size());
  if (dot == std::string::npos) return "";
  const std::string layer = weight.substr(layers.size(), dot - layers.size());
  std::string rest = weight.substr(dot + 1, weight.size() - dot - 1 - 7);
  // An expert index becomes "{E}".
  if (size_t e = rest.find("experts."); e != std::string::npos) {
    const size_t start = e + 8;
    size_t end = start;
    while (end < rest.size() && rest[end] >= '0' && rest[end] <= '9') ++end;
    if (end > start && end < rest.size() && rest[end] == '.')
      rest.replace(start, end - start, "{E}");
  }
  std::string out;
  ForRules(model_type, [&](const Rule& r, int) {
    if (out.empty() && r.weight == rest)
      out = "blk." + layer + "." + std::string(r.gguf) + ".weight";
  });
  return out;
}

}  // namespace quench::calib
