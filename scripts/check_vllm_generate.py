"""Driver of scripts/check-vllm's generation checks (decoder and MoE loading paths).

  check_vllm_generate.py models OUT [NAME...]
                                      writes OUT/llama-bf16, OUT/qwen3moe-bf16,
                                      OUT/qwen3moe8-bf16, OUT/opt-bf16, OUT/gptoss-mxfp4 and
                                      OUT/llama4-bf16 (or only the NAMEs): tiny models with
                                      random weights (fixed seed) from transformers'
                                      configuration classes, saved as bf16 safetensors (no
                                      tokenizer; qwen3moe8, which scripts/check-vllm
                                      REAP-prunes, takes MiniLM's for the collector)
  check_vllm_generate.py run WORK [PREFIX...]
                                      WORK/<model>-<case> as scripts/check-vllm converted them:
                                      vLLM's LLM.generate against transformers, asserted
                                      (PREFIX: only the cases named so, the others' results
                                      kept from WORK/results.json)
  check_vllm_generate.py judge WORK [PREFIX...]
                                      the table and assertions again from WORK/results.json
                                      (PREFIX: only those cases judged)

vLLM generates greedily from fixed prompt token ids and returns the top-K log-probabilities of
every prompt position and every generated step. transformers then reads the same folder (its
compressed-tensors load: dequantized weights, activations fake-quantized where the scheme
quantizes them) and scores the same token sequences in F32. Per position: does vLLM's top-1
token equal transformers' argmax, and how far apart are the two log-probabilities of each of
vLLM's top-K tokens. The thresholds (AGREE, MAX_DIFF) and why they are what they are: below.
"""
import json
import math
import os
import random
import shutil
import sys

from check_vllm import in_engine_process

SEED = 20261204
# 640 prompts of 12 token ids (bos, then ids 3..511 drawn with a fixed seed; no tokenizer is
# needed) and 12 generated tokens: 640 x 23 = 14,720 positions compared per model. So many
# because the top-1 criterion (limits) compares two counts of near-tie flips, which are only
# steady when large: at 8 prompts (184 positions, 1-16 noise flips a case) a count drawn at the
# noise's own rate exceeds 1.5x it by chance in about a fifth of the cases; at 640 prompts the
# chance is negligible (docs/convert-reference.md, "Consumers in detail").
N_PROMPTS = 640
HF_BATCH = 64  # sequences transformers scores at once (hf_logprobs)
_rng = random.Random(SEED)
PROMPTS = [[1] + [_rng.randrange(3, 512) for _ in range(11)] for _ in range(N_PROMPTS)]
MAX_TOKENS = 12
TOP_K = 5

# Cases: (model, folder suffix, scheme). "-attn": the MoE experts left unquantized (--ignore).
GENERATE = [("llama", "bf16", None), ("llama", "W8A8", "W8A8"),
            ("llama", "FP8_DYNAMIC", "FP8_DYNAMIC"), ("llama", "W4A16", "W4A16"),
            ("llama", "W4A16_ASYM", "W4A16_ASYM"), ("qwen3moe", "bf16", None),
            ("qwen3moe", "W8A8-attn", "W8A8"), ("qwen3moe", "FP8_DYNAMIC-attn", "FP8_DYNAMIC"),
            ("qwen3moe", "W4A16-attn", "W4A16"),
            # qwen3moe8 REAP-pruned to 4 of its 8 experts (scripts/check-vllm: the collector's
            # --reap saliency, convert --prune-experts 0.5 --expert-metric reap), alone and with
            # attention quantized (experts ignored); compared with transformers on the same
            # pruned folder, and against the pruned unquantized model ("reap").
            ("qwen3moe8", "reap", None), ("qwen3moe8", "reap-W8A8-attn", "W8A8"),
            ("qwen3moe8", "reap-FP8_DYNAMIC-attn", "FP8_DYNAMIC"),
            ("qwen3moe8", "reap-W4A16-attn", "W4A16"),
            # OPT: a learned position embedding (`embed_positions`, an nn.Embedding in vLLM)
            # and the head tied to the token embedding, which quench's defaults leave alone.
            ("opt", "bf16", None), ("opt", "W8A8", "W8A8"), ("opt", "W4A16", "W4A16"),
            # gpt-oss stored as OpenAI releases it (MXFP4 expert stacks, gptoss-mxfp4):
            # decoded by quench (--scheme BF16: the stacks [E, in, out] in BF16), and its
            # attention quantized (the stacks decoded, unquantized, in `ignore`).
            ("gptoss", "bf16", None), ("gptoss", "W8A8", "W8A8"),
            ("gptoss", "FP8_DYNAMIC", "FP8_DYNAMIC"), ("gptoss", "W4A16", "W4A16"),
            # Llama 4 (text): its experts stored [E, in, out], linearized by quench into
            # per-expert weights, here left BF16 (--ignore; the quantized ones: AMX_EXPERTS).
            ("llama4", "bf16", None), ("llama4", "W8A8-attn", "W8A8"),
            ("llama4", "FP8_DYNAMIC-attn", "FP8_DYNAMIC"), ("llama4", "W4A16-attn", "W4A16")]


def base_case(case):
    """The unquantized folder a case is measured against: the pruned model for the pruned
    cases, else the source model."""
    return "reap" if case.startswith("reap") else "bf16"

# vLLM 0.32.0's CPU build runs int8 and WNA16 MoE experts only on x86 CPUs with AMX tiles
# (fused_moe/experts/cpu_moe.py CPUExpertsInt8 / CPUExpertsInt4 `_supports_current_device`:
# torch.cpu._is_amx_tile_supported(), Sapphire Rapids and later). There these folders, whole
# models with their experts quantized, are compared with transformers as the other cases are
# (AMX_EXPERTS); elsewhere vLLM refuses them, with the messages of
# vllm/model_executor/layers/fused_moe/oracle/int8.py (NotImplementedError, followed by the
# weight and activation keys) and int_wna16.py (NotImplementedError). Per-channel FP8 experts
# have no CPU backend on either (fp8.py, ValueError). Keyed by folder.
AMX_EXPERTS = [("qwen3moe", "W8A8", "W8A8"), ("qwen3moe", "W4A16", "W4A16"),
               ("qwen3moe8", "reap-W8A8", "W8A8"), ("qwen3moe8", "reap-W4A16", "W4A16")]
NO_AMX_MESSAGE = {"W8A8": "No Int8 MoE backend supports the deployment configuration",
                  "W4A16": "No WNA16 MoE backend supports the deployment configuration."}
NO_AMX_REFUSED = {f"{model}-{case}": NO_AMX_MESSAGE[scheme]
                  for model, case, scheme in AMX_EXPERTS}
# Refused on every CPU. The pruned model with static FP8 activation scales from the
# collector's statistics (one input_scale per expert and projection): whole, vLLM stops
# before the experts, at the fused qkv_proj, whose per-tensor FP8 weights it requantizes to
# one scale with scaled_fp8_quant (utils/w8a8_utils.py requantize_with_max_scale), an op its
# CPU build lacks; with attention left unquantized, at the experts: it reads the experts'
# input scales (and logs LOGGED: they differ, so it keeps their maximum per layer), then stops
# at the same op requantizing each expert's gate and up weights to one scale
# (fp8_utils.py process_fp8_weight_tensor_strategy_moe).
# Llama 4 with its linearized experts quantized to int8 and int4: refused likewise on CPUs
# without AMX tiles (asserted). Not yet run on an AMX CPU, so not a case there.
NO_AMX_LLAMA4 = {"llama4-W8A8": NO_AMX_MESSAGE["W8A8"], "llama4-W4A16": NO_AMX_MESSAGE["W4A16"]}
REFUSED = {"qwen3moe-FP8_DYNAMIC": "Unsupported FP8 MoE backend: NONE",
           "llama4-FP8_DYNAMIC": "Unsupported FP8 MoE backend: NONE",
           # OPT W4A16 with its position embedding quantized (quench before that default):
           "opt-W4A16-positions": "There is no module or parameter named "
                                  "'model.decoder.embed_positions.weight_packed'",
           "qwen3moe8-reap-FP8-static": "RuntimeError: _C::static_scaled_fp8_quant() expected "
                                        "at most 0 argument(s) but received 4 argument(s)",
           "qwen3moe8-reap-FP8-static-experts": "RuntimeError: _C::static_scaled_fp8_quant() "
                                                "expected at most 0 argument(s) but received 4 "
                                                "argument(s)"}
LOGGED = {"qwen3moe8-reap-FP8-static-experts": "Found input_scales that are not equal for fp8 "
                                               "MoE layer. Using the maximum across experts for "
                                               "each layer."}


# Upstream (transformers 5.19.0, compressed-tensors 0.17.0): experts quantized to int8
# (W8A8: `int-quantized` format, int8 `.weight` tensors) do not load. Its merge of the
# per-expert weights into `mlp.experts.gate_up_proj` looks for `weight_packed` sources (any
# non-FP8 scheme: see EXPERTS_NOT_LOADED), finds none ("torch.cat(): expected a non-empty list
# of Tensors ... Ckpt contains: 0" in its load report) and raises this. Asserted where vLLM
# runs these folders (AMX CPUs), as is its failure on FP8 block experts (AMX_FP8_BLOCK below);
# there the reference is built by this check instead (dequantized_copy: each quantized weight
# by the format's rule, and the activations the function vLLM computes quantizes
# fake-quantized by compressed-tensors' own functions: activation_quant). Keyed by folder.
HF_REFUSED_MESSAGE = "We encountered some issues during automatic conversion of the weights."
HF_REFUSED = {f"{model}-{case}": HF_REFUSED_MESSAGE
              for model, case, scheme in AMX_EXPERTS if scheme == "W8A8"}
HF_REFUSED["qwen3moe8-reap-FP8_BLOCK"] = HF_REFUSED_MESSAGE


# On CPUs with AMX tiles vLLM computes int4 layers with int8 activations by default
# (VLLM_CPU_INT4_W4A8=1, model_executor/kernels/linear/mixed_precision/cpu.py: use_w4a8, the
# int4_scaled_mm_cpu kernel): not the function W4A16 defines. There the int4 cases are measured
# against the function vLLM computes: transformers on the same files with a config that
# declares int8 per-token dynamic activations for the int4 groups (W4A8's, as quench writes
# them; w4a8_view), its own BF16-vs-F32 noise giving the limit as for any case. (With
# VLLM_CPU_INT4_W4A8=0 vLLM 0.32.0's bf16-activation AMX kernel died with SIGILL, exit code
# -4, on the llama and 4-expert Qwen3-MoE models of this check on a Sapphire Rapids VM:
# docs/convert-reference.md, Consumers.)
INT4_SCHEMES = ("W4A16", "W4A16_ASYM")
# transformers' fused experts hold no Linear modules, so a config's input_activations do not
# reach them (compressed-tensors quantizes a Linear's input): for the folders whose experts are
# int4, vLLM's CPUExpertsInt4 ("internally uses int8 compute ... INT4_W4A8") is measured against
# the check's own reference instead (dequantized_copy, activation_quant with W4A8's
# activations on every quantized layer, experts included).
INT4_EXPERTS = {f"{model}-{case}" for model, case, scheme in AMX_EXPERTS
                if scheme in INT4_SCHEMES}
W4A8_ACTIVATIONS = {"actorder": None, "block_structure": None, "dynamic": True,
                    "group_size": None, "num_bits": 8, "observer": None, "observer_kwargs": {},
                    "scale_dtype": None, "strategy": "token", "symmetric": True, "type": "int",
                    "zp_dtype": None}


# On CPUs with AMX tiles vLLM 0.32.0 runs FP8 block-quantized linear layers and MoE experts
# (model_executor/kernels/linear/scaled_mm/cpu.py CPUFp8BlockScaledMMKernel, "FP8 W8A16
# block-quantized GEMM via AMX BRGEMM", apply_input_quant = False; fused_moe/experts/cpu_moe.py
# CPUExpertsFp8, "CPU FP8 W8A16 block-quantized modular MoE experts"): weights FP8 blocks,
# activations bf16, not the FP8 per-group activations FP8_BLOCK declares (its W8A8 forms need
# AMX-FP8 hardware, which the host record notes: amx_fp8; on such a CPU, not seen yet, the
# reference keeps the declared activations). There these cases are measured
# against that function: transformers on the same weights with no input activations declared
# (w8a16_view). transformers 5.19 cannot dequantize FP8 block experts itself (its
# DecompressExperts multiplies each expert's weight by its weight_scale as one broadcast,
# which fits per-tensor and per-channel scales, not [out/128, in/128] blocks; asserted,
# HF_REFUSED), so the MoE model's reference is a copy with every FP8 weight dequantized here
# by the format's rule (dequantized_copy). Without AMX tiles vLLM refuses both at their first
# dense layer (NO_AMX_FP8_BLOCK).
AMX_FP8_BLOCK = [("llama", "FP8_BLOCK", "FP8_BLOCK"),
                 ("qwen3moe8", "reap-FP8_BLOCK", "FP8_BLOCK")]
NO_AMX_FP8_BLOCK = "Failed to find a kernel that can implement the ScaledMM linear layer"
# FP4 experts are refused on AMX CPUs too: NVFP4 has no CPU MoE backend, and the
# compressed-tensors MXFP4 MoE method repacks the experts for Marlin, a GPU op the CPU build
# lacks (CPUExpertsMxfp4 serves other MXFP4 checkpoints). The pruned model with its experts
# alone quantized (attention ignored). Run on AMX CPUs only: elsewhere vLLM's message for them
# has not been seen.
AMX_FP4_REFUSED = {
    "qwen3moe8-reap-NVFP4A16-experts": "No NvFp4 MoE backend supports the deployment "
                                       "configuration.",
    "qwen3moe8-reap-MXFP4A16-experts": "'_OpNamespace' '_C' object has no attribute "
                                       "'gptq_marlin_repack'"}


def config_view(folder, suffix, edit):
    """FOLDER-SUFFIX: links to `folder`'s files but config.json, whose quantization config
    groups `edit` changes in place."""
    dst = folder.rstrip("/") + suffix
    if os.path.isdir(dst):
        shutil.rmtree(dst)
    os.makedirs(dst)
    for f in os.listdir(folder):
        if f != "config.json":
            os.symlink(os.path.join(os.path.abspath(folder), f), os.path.join(dst, f))
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    for group in cfg["quantization_config"]["config_groups"].values():
        edit(group)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    return dst


def w4a8_view(folder):
    """FOLDER-as-w4a8: int4 weight groups without input activations get W4A8_ACTIVATIONS."""
    def edit(group):
        w = group.get("weights") or {}
        if w.get("type") == "int" and w.get("num_bits") == 4 and not group.get(
                "input_activations"):
            group["input_activations"] = dict(W4A8_ACTIVATIONS)
    return config_view(folder, "-as-w4a8", edit)


def w8a16_view(folder):
    """FOLDER-as-w8a16: FP8 weight groups without input activations."""
    def edit(group):
        w = group.get("weights") or {}
        if w.get("type") == "float" and w.get("num_bits") == 8:
            group["input_activations"] = None
    return config_view(folder, "-as-w8a16", edit)


def dequantized_copy(folder):
    """FOLDER-dequantized: an unquantized model (config.json without quantization_config, one
    F32 safetensors file) whose quantized weights are their values by the format's rule
    (compressed-tensors' dequantize): an int8 weight times its per-channel weight_scale; a
    packed symmetric int4 weight (pack-quantized: element i of a row in bits 4i..4i+3 of its
    little-endian int32 words as q + 8, weight_shape its [rows, columns]) times its group's
    weight_scale; an FP8 weight with block scales, weight_scale[i, j] times its block of rows
    i*R.. and columns j*C.. ([R, C] its group's block_structure, edge blocks partial). The
    products are exact in F32 (at most 8-bit integers or 4-bit significands times bf16's 8).
    Every other tensor as it is. Returns the folder and the quantized weights' module names."""
    import torch
    from safetensors.torch import save_file
    dst = folder.rstrip("/") + "-dequantized"
    if os.path.isdir(dst):
        shutil.rmtree(dst)
    os.makedirs(dst)
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    blocks = {tuple(g["weights"]["block_structure"])
              for g in cfg.pop("quantization_config")["config_groups"].values()
              if (g.get("weights") or {}).get("block_structure")}
    assert len(blocks) <= 1, blocks
    tensors = load_tensors(folder)
    out, quantized = {}, []
    for name, t in tensors.items():
        if name.endswith((".weight_scale", ".weight_shape")):
            continue
        if name.endswith(".weight_packed"):
            base = name[:-len("_packed")]
            assert base + "_zero_point" not in tensors, name  # (symmetric only)
            rows, cols = (int(v) for v in tensors[base + "_shape"])
            nib = torch.arange(8, dtype=torch.int64) * 4
            u = (t.to(torch.int64).unsqueeze(-1) >> nib) & 0xF  # [rows, words, 8]
            q = (u.reshape(rows, -1)[:, :cols] - 8).float()
            scale = tensors[base + "_scale"].float()
            g = cols // scale.shape[1]
            out[base] = q * scale.repeat_interleave(g, 1)[:, :cols]
            quantized.append(base[:-len(".weight")])
            continue
        scale = tensors.get(name + "_scale")
        if t.dtype == torch.float8_e4m3fn:
            (rb, cb), = blocks
            s = scale.float().repeat_interleave(rb, 0)[:t.shape[0]]
            s = s.repeat_interleave(cb, 1)[:, :t.shape[1]]
        elif t.dtype == torch.int8:
            assert scale is not None and scale.numel() == t.shape[0], name
            s = scale.float().reshape(-1, 1)
        else:
            out[name] = t
            continue
        out[name] = t.float() * s
        quantized.append(name[:-len(".weight")])
    save_file(out, os.path.join(dst, "model.safetensors"))
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    return dst, quantized


def activation_quant(folder, modules, declared=None):
    """A function that installs, on transformers' model of dequantized_copy(folder), the
    activation quantization FOLDER's config declares (its one group's input_activations, or
    `declared` instead) on `modules`: compressed-tensors' own dynamic scales and fake
    quantization (compute_dynamic_scales_and_zp, fake_quantize, as its forward_quantize runs
    them) on each Linear's input, and on the inputs of both products of each expert of a layer
    whose experts are listed (transformers' fused experts hold no Linear modules: their
    forward is replaced by the same loop over experts with the inputs quantized). None when
    nothing is declared."""
    import types
    import torch
    from torch import nn
    with open(os.path.join(folder, "config.json")) as f:
        groups = json.load(f)["quantization_config"]["config_groups"]
    acts = [g["input_activations"] for g in groups.values() if g.get("input_activations")]
    acts = [declared] if declared is not None else acts
    if not acts:
        return None
    assert len(acts) == 1, acts
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp
    args = QuantizationArgs(**acts[0])

    def fq(x):  # per token: [batch, tokens, features], as transformers' Linear inputs are
        y = x.unsqueeze(0) if x.dim() == 2 else x
        scale, zp = compute_dynamic_scales_and_zp(value=y, args=args, module=None)
        return fake_quantize(y, scale, zp, args).reshape(x.shape)

    def experts_forward(self, hidden_states, top_k_index, top_k_weights):
        # transformers 5.19's Qwen3MoeExperts.forward (eager), each product's input quantized.
        final = torch.zeros_like(hidden_states)
        mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1)
        mask = mask.permute(2, 1, 0)
        for e in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero():
            e = e[0]
            if e == self.num_experts:
                continue
            pos, tok = torch.where(mask[e])
            gate, up = nn.functional.linear(fq(hidden_states[tok]),
                                            self.gate_up_proj[e]).chunk(2, dim=-1)
            h = nn.functional.linear(fq(self.act_fn(gate) * up), self.down_proj[e])
            final.index_add_(0, tok, (h * top_k_weights[tok, pos, None]).to(final.dtype))
        return final

    def install(model):
        experts = set()
        for name in modules:
            if ".mlp.experts." in name:
                experts.add(name.split(".mlp.experts.")[0] + ".mlp.experts")
            else:
                model.get_submodule(name).register_forward_pre_hook(
                    lambda m, a: (fq(a[0]),) + tuple(a[1:]))
        for name in experts:
            mod = model.get_submodule(name)
            mod.forward = types.MethodType(experts_forward, mod)
    return install


def amx_fp8():
    """Whether this CPU has AMX-FP8 (vLLM's FP8 W8A8 block kernels then run instead)."""
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_fp8" in f.read().split()
    except OSError:
        return False


def amx_tiles():
    """Whether this CPU has AMX tiles, asked as vLLM's CPU MoE experts ask it."""
    import torch
    return bool(torch.cpu._is_amx_tile_supported())


def cases(amx):
    """(the cases compared with transformers, the cases vLLM must refuse) on this CPU."""
    if amx:
        return GENERATE + AMX_EXPERTS + AMX_FP8_BLOCK, {**REFUSED, **AMX_FP4_REFUSED}
    no_amx_fp8_block = {f"{model}-{case}": NO_AMX_FP8_BLOCK for model, case, _ in AMX_FP8_BLOCK}
    return GENERATE, {**NO_AMX_REFUSED, **NO_AMX_LLAMA4, **REFUSED, **no_amx_fp8_block}


def make_models(out, only):
    import torch
    from transformers import (GptOssConfig, GptOssForCausalLM, Llama4ForCausalLM,
                              Llama4TextConfig, LlamaConfig, LlamaForCausalLM, OPTConfig,
                              OPTForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM)
    common = dict(vocab_size=512, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, max_position_embeddings=128,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    models = {
        "llama": (LlamaForCausalLM, LlamaConfig(intermediate_size=512, **common)),
        # 4 experts, expert width 128 (one group of the grouped schemes), every expert active:
        # with 2 of 4 (tried first) the router's choice flips wherever two experts' router
        # logits nearly tie, and the bf16 noise alone (transformers BF16 vs F32) moved
        # log-probabilities by 0.03-0.17 there; the loading path vLLM takes (fused experts,
        # router, top-k) is the same with all 4 chosen.
        "qwen3moe": (Qwen3MoeForCausalLM, Qwen3MoeConfig(
            intermediate_size=512, moe_intermediate_size=128, num_experts=4,
            num_experts_per_tok=4, **common)),
        # 8 experts, 4 per token: REAP-pruned to 4, every survivor active (as above). MiniLM's
        # vocabulary, so that its tokenizer can feed the collector.
        "qwen3moe8": (Qwen3MoeForCausalLM, Qwen3MoeConfig(
            intermediate_size=512, moe_intermediate_size=128, num_experts=8,
            num_experts_per_tok=4, **dict(common, vocab_size=30522))),
        "opt": (OPTForCausalLM, OPTConfig(
            vocab_size=512, hidden_size=256, word_embed_proj_dim=256, ffn_dim=512,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128,
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)),
        # 4 experts of width 256, all active (as qwen3moe), one sliding and one full layer;
        # written as gptoss-mxfp4 (mxfp4_folder).
        "gptoss": (GptOssForCausalLM, GptOssConfig(
            intermediate_size=256, num_local_experts=4, num_experts_per_tok=4,
            sliding_window=16, layer_types=["sliding_attention", "full_attention"],
            **dict(common, max_position_embeddings=256))),
        # Llama 4's text model: 4 routed experts of width 256 and a shared expert in both
        # layers; one expert a token, as Llama 4 routes (vLLM's Llama 4 MoE refuses more:
        # "apply_router_weight_on_input is only implemented for topk=1").
        "llama4": (Llama4ForCausalLM, Llama4TextConfig(
            intermediate_size=256, intermediate_size_mlp=512, num_local_experts=4,
            num_experts_per_tok=1, interleave_moe_layer_step=1, **common)),
    }
    for name, (cls, cfg) in models.items():
        if only and name not in only:
            continue
        torch.manual_seed(SEED)
        cfg.dtype = torch.bfloat16
        model = cls(cfg)
        if name == "gptoss":
            mxfp4_folder(model.to(torch.bfloat16), os.path.join(out, "gptoss-mxfp4"))
            continue
        model.to(torch.bfloat16).save_pretrained(os.path.join(out, f"{name}-bf16"))


def mxfp4_folder(model, out):
    """`model` saved as OpenAI's gpt-oss releases are: each expert stack P ([E, in, out] in
    transformers) as P_blocks U8 [E, out, in/32, 16] and P_scales U8 [E, out, in/32], random
    E2M1 codes (fixed seed) under exponents 117..121 (values up to 6 * 2^-6, the size of the
    random initialisation's), quant_method "mxfp4"; everything else as it is, in BF16."""
    import numpy as np
    import torch
    from safetensors.torch import save_file
    rng = np.random.default_rng(SEED)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    for k in sorted(sd):
        if k.endswith(("experts.gate_up_proj", "experts.down_proj")):
            e, i, o = sd.pop(k).shape
            sd[k + "_blocks"] = torch.from_numpy(
                rng.integers(0, 256, size=(e, o, i // 32, 16), dtype=np.uint8))
            sd[k + "_scales"] = torch.from_numpy(
                rng.integers(117, 122, size=(e, o, i // 32), dtype=np.uint8))
    os.makedirs(out, exist_ok=True)
    save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg["architectures"] = ["GptOssForCausalLM"]
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
        "lm_head"]}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


def generate_run(folder):
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    llm = LLM(model=folder, enforce_eager=True, max_model_len=64, skip_tokenizer_init=True,
              seed=SEED)
    sp = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, logprobs=TOP_K,
                        prompt_logprobs=TOP_K, detokenize=False, ignore_eos=True)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in PROMPTS], sp)
    llm.llm_engine.engine_core.shutdown()
    return sequences(outs)


def sequences(outs):
    """(token ids, per position {token: (logprob, rank)}) of each vLLM output: the prompt's
    positions, then the generated tokens'."""
    seqs = []
    for o in outs:
        ids = list(o.prompt_token_ids) + list(o.outputs[0].token_ids)
        # Entry i: the distribution of the token after ids[:i+1] (prompt_logprobs[0] is None).
        steps = list(o.prompt_logprobs[1:]) + list(o.outputs[0].logprobs)
        seqs.append((ids, [{int(t): (lp.logprob, lp.rank) for t, lp in s.items()}
                           for s in steps]))
    return seqs


def vllm_generate(folder):
    return in_engine_process(generate_run, folder)


# Upstream (transformers 5.19.0 in vLLM's venv, with compressed-tensors 0.17.0): a compressed
# checkpoint whose MoE experts are left unquantized (in `ignore`, plain `.weight` tensors) loads
# without them unless the scheme is FP8. Its quantizer's update_weight_conversions builds the
# experts' merge from the scheme alone (`weight_packed` sources for any non-FP8 scheme) and
# ignores `ignore`, so it reports the per-expert weights UNEXPECTED and the merged
# `mlp.experts.gate_up_proj` / `down_proj` MISSING (left random). These cases assert exactly
# that, then take the experts from the source model after checking that quench's copies of them
# are the source's bytes.
EXPERTS_NOT_LOADED = {"qwen3moe-W8A8-attn", "qwen3moe-W4A16-attn", "qwen3moe8-reap-W8A8-attn",
                      "qwen3moe8-reap-W4A16-attn"}
# (The same reader linearizes Llama 4's experts for a compressed checkpoint, one Linear module
# per expert, the layout quench writes for Llama 4 with a scheme: the llama4 -attn cases load
# their unquantized per-expert weights.)


def load_tensors(folder):
    from safetensors.torch import load_file
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, f)))
    return out


def hf_model(folder, dtype, src, prepare=None):
    """transformers' model of `folder` (`prepare` then installs what it installs on it) and
    whether it left the experts out (see above)."""
    import torch
    from transformers import AutoModelForCausalLM
    model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype,
                                                       output_loading_info=True)
    if prepare is not None:
        prepare(model)
    missing = set(info["missing_keys"])
    if not missing:
        return model.eval(), False
    layers = len(model.model.layers)
    merged = {f"model.layers.{i}.mlp.experts.{p}" for i in range(layers)
              for p in ("gate_up_proj", "down_proj")}
    if missing != merged:
        raise RuntimeError(f"transformers left {sorted(missing)} uninitialised")
    out, source = load_tensors(folder), load_tensors(src)
    experts = [k for k in source if ".mlp.experts." in k]
    assert experts and all(torch.equal(out[k], source[k]) for k in experts), folder
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=dtype).state_dict()
    model.load_state_dict({k: ref[k] for k in merged}, strict=False)
    return model.eval(), True


def hf_logprobs(folder, seqs, dtype, src, prepare=None):
    """transformers' log-probabilities [positions, vocab] for each sequence, in F32, and
    whether it left the experts out."""
    import torch
    model, experts_missing = hf_model(folder, dtype, src, prepare)
    out = []
    # Sequences of one length scored HF_BATCH at a time (no padding, so each sequence's
    # positions are what it alone gives: every activation quantization here is per token or
    # per token group, the attention causal, the routing per token).
    with torch.no_grad():
        i = 0
        while i < len(seqs):
            n = len(seqs[i][0])
            j = i
            while j < len(seqs) and j - i < HF_BATCH and len(seqs[j][0]) == n:
                j += 1
            batch = torch.tensor([ids[:-1] for ids, _ in seqs[i:j]])
            logits = model(input_ids=batch).logits.float()
            out.extend(torch.log_softmax(logits, dim=-1).unbind(0))
            i = j
    return out, experts_missing


def compare_vllm(seqs, lps):
    """(top-1 agreement, positions, largest |logprob difference| over vLLM's top-K)."""
    agree = n = 0
    worst = 0.0
    for (ids, steps), lp in zip(seqs, lps):
        assert len(steps) == lp.shape[0] == len(ids) - 1
        for i, s in enumerate(steps):
            top = [t for t, (_, r) in s.items() if r == 1]
            agree += int(top[0] == int(lp[i].argmax()))
            n += 1
            worst = max(worst, max(abs(v - lp[i, t].item()) for t, (v, r) in s.items()
                                   if r <= TOP_K))
    return agree, n, worst


def compare_hf(a, b):
    """The same measure between two transformers runs: a's argmax and top-K against b."""
    agree = n = 0
    worst = 0.0
    for x, y in zip(a, b):
        agree += int((x.argmax(-1) == y.argmax(-1)).sum())
        n += x.shape[0]
        top = x.topk(TOP_K, dim=-1).indices
        worst = max(worst, (x.gather(1, top) - y.gather(1, top)).abs().max().item())
    return agree, n, worst


def reference_check(work):
    """How far the check's own reference (dequantized_copy, activation_quant) is from
    transformers where transformers reads the folder itself: the Llama W8A8 folder (every
    Linear's weights and activations), the Llama W4A16 folder with W4A8's activations
    (w4a8_view: packed int4 weights), and the REAP-pruned model's W8A8 experts with their
    quantization switched off in activation_quant's loop, against transformers' own experts
    forward on the same dequantized weights. Each a compare_hf measure over the prompts'
    positions; judge asserts that they agree everywhere to 1e-4."""
    import torch
    import compressed_tensors.quantization.lifecycle.forward as ct_forward
    out = {}
    seqs = [(p + [p[-1]], None) for p in PROMPTS]  # (hf_logprobs scores ids[:-1])
    folder, src = os.path.join(work, "llama-W8A8"), os.path.join(work, "llama-bf16")
    ref, quantized = dequantized_copy(folder)
    own, _ = hf_logprobs(folder, seqs, torch.float32, src)
    mine, _ = hf_logprobs(ref, seqs, torch.float32, src, activation_quant(folder, quantized))
    out["dense"] = compare_hf(own, mine)
    folder = os.path.join(work, "llama-W4A16")
    ref, quantized = dequantized_copy(folder)
    own, _ = hf_logprobs(w4a8_view(folder), seqs, torch.float32, src)
    mine, _ = hf_logprobs(ref, seqs, torch.float32, src,
                          activation_quant(folder, quantized, W4A8_ACTIVATIONS))
    out["dense_int4"] = compare_hf(own, mine)
    folder, src = os.path.join(work, "qwen3moe8-reap-W8A8"), os.path.join(work, "qwen3moe8-reap")
    ref, quantized = dequantized_copy(folder)
    plain, _ = hf_logprobs(ref, seqs, torch.float32, src)
    fake_quantize = ct_forward.fake_quantize
    ct_forward.fake_quantize = lambda x, scale, zp, args, **kw: x  # the loop alone
    try:
        loop, _ = hf_logprobs(ref, seqs, torch.float32, src, activation_quant(
            folder, [m for m in quantized if ".mlp.experts." in m]))
    finally:
        ct_forward.fake_quantize = fake_quantize
    out["experts_loop"] = compare_hf(plain, loop)
    return out


def measure(work, only):
    """Every case's measures (agreements, positions, largest difference), saved to
    WORK/results.json: vLLM against transformers F32 on the same folder ("vllm"), transformers
    BF16 against F32 on the same folder ("hf_bf16"), vLLM against transformers F32 on the
    unquantized model ("vllm_unq") and transformers F32 quantized against unquantized
    ("hf_unq"); for the refused cases, vLLM's message. `only`: names' prefixes of the cases
    to run again, the others kept from results.json."""
    import torch
    path = os.path.join(work, "results.json")
    results = json.load(open(path)) if only and os.path.exists(path) else {}
    amx = amx_tiles()
    results["host"] = {"amx_tiles": amx,
                       "int4_w4a8": amx and os.environ.get("VLLM_CPU_INT4_W4A8", "1") != "0",
                       "amx_fp8": amx and amx_fp8()}
    compared, refused = cases(amx)
    for model, case, scheme in compared:
        if only and not any(f"{model}-{case}".startswith(o) for o in only):
            continue
        folder = os.path.join(work, f"{model}-{case}")
        status, seqs = vllm_generate(folder)
        if status != "ok":
            results[f"{model}-{case}"] = {"error": seqs}
            continue
        with open(folder + ".vllm.json", "w") as f:  # what vLLM generated, for a closer look
            json.dump(seqs, f)
        src = os.path.join(work, f"{model}-{base_case(case)}")
        # The function vLLM computes (INT4_SCHEMES, AMX_FP8_BLOCK above).
        name = f"{model}-{case}"
        w4a8 = results["host"]["int4_w4a8"] and scheme in INT4_SCHEMES
        w8a16 = scheme == "FP8_BLOCK" and not results["host"]["amx_fp8"]
        ref, prepare, hf_own = folder, None, None
        own_reference = name in HF_REFUSED or (w4a8 and name in INT4_EXPERTS)
        if name in HF_REFUSED:
            try:  # transformers' own read of the folder, asserted to fail
                hf_model(folder, torch.float32, src)
                hf_own = "loaded"
            except Exception as e:
                lines = str(e).strip().splitlines()
                hf_own = f"{type(e).__name__}: {lines[0] if lines else ''}"
        if own_reference:
            ref, quantized = dequantized_copy(folder)
            if not w8a16:  # (vLLM's AMX FP8 W8A16 kernels quantize no activation)
                prepare = activation_quant(folder, quantized,
                                           W4A8_ACTIVATIONS if w4a8 else None)
        elif w4a8:
            ref = w4a8_view(folder)
        elif w8a16:
            ref = w8a16_view(folder)
        unq = None
        try:
            if scheme is not None:
                unq = hf_logprobs(src, seqs, torch.float32, src)[0]
            hf32, missing = hf_logprobs(ref, seqs, torch.float32, src, prepare)
            hf16, _ = hf_logprobs(ref, seqs, torch.bfloat16, src, prepare)
            unq = hf32 if unq is None else unq
            results[f"{model}-{case}"] = {
                "vllm": compare_vllm(seqs, hf32), "hf_bf16": compare_hf(hf32, hf16),
                "vllm_unq": compare_vllm(seqs, unq), "hf_unq": compare_hf(unq, hf32),
                "hf_experts_missing": missing, "reference_w4a8": w4a8,
                "reference_w8a16": w8a16, "hf_own": hf_own,
                "reference_dequantized": own_reference}
        except Exception as e:  # transformers' failure is the result
            results[f"{model}-{case}"] = {"error": f"transformers: {type(e).__name__}: {e}"}
            if unq is not None:  # vLLM generated: measured against the unquantized model
                results[f"{model}-{case}"]["vllm_unq"] = compare_vllm(seqs, unq)
        print(json.dumps({f"{model}-{case}": results[f"{model}-{case}"]}), flush=True)
    own = set(HF_REFUSED) | (INT4_EXPERTS if results["host"]["int4_w4a8"] else set())
    if amx and (not only or any(n.startswith(o) for n in own for o in only)):
        try:
            results["reference_check"] = reference_check(work)
        except Exception as e:
            results["reference_check"] = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps({"reference_check": results["reference_check"]}), flush=True)
    for name in refused:
        if only and not any(name.startswith(o) for o in only):
            continue
        status, msg = vllm_generate(os.path.join(work, name))
        results[name] = {"error": msg} if status == "error" else {"generated": True}
        if name in LOGGED:
            with open(os.path.join(work, name) + ".vllm.log", errors="replace") as f:
                results[name]["logged"] = LOGGED[name] in f.read()
        print(json.dumps({name: results[name]}), flush=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    return results


def limits(results, model, case):
    """(fewest top-1 agreements, largest logprob difference) allowed for vLLM against
    transformers F32 on this case: 1.5 x the noise measured independently on the same
    prompts, at least 2 disagreements (a flip needs a near-tie, and 1 or 2 is chance).
    vLLM computes in bf16, transformers here in F32, so the noise of the same computation in
    bf16 is the expected distance: transformers BF16 against F32 on the same folder (it also
    rounds activations to bf16 before fake-quantizing them, so it catches the flips of the
    activation quantization grid), and, for a quantized case, vLLM against transformers on the
    unquantized model (vLLM's own kernels and bf16 logits). Measured at 14,720 positions,
    vLLM's largest difference was 0.82x-1.11x that noise and its top-1 disagreements
    0.90x-1.07x the noise's (README, Consumers). The check tells a wrong reading of the file
    apart where the quantization moves log-probabilities by more than 1.5 x the noise (the
    table's last column: W4A16 and W4A16_ASYM by 0.28-0.40, 10-15x the noise); for W8A8 and
    FP8_DYNAMIC the whole quantization effect is 1.15-1.8x the noise, so there it shows that
    vLLM's kernels compute quench's model to bf16 accuracy, and a misread scale (a factor of 2
    or more on a layer) would still be far outside."""
    noise = [results[f"{model}-{case}"]["hf_bf16"]]
    base = f"{model}-{base_case(case)}"
    if base != f"{model}-{case}" and "vllm" in results.get(base, {}):
        noise.append(results[base]["vllm"])
    n = noise[0][1]
    flips = max(m[1] - m[0] for m in noise)
    return n - max(2, math.ceil(1.5 * flips)), 1.5 * max(m[2] for m in noise)


def fmt(m):
    agree, n, worst = m
    return f"{agree}/{n}, {worst:.4f}"


def judge(results, only=()):
    """The table and the failures (see the thresholds above); `only`: names' prefixes of the
    cases judged."""
    def chosen(name):
        return not only or any(name.startswith(o) for o in only)

    failures = []
    # Which cases vLLM runs depends on the CPU the results came from (AMX_EXPERTS).
    amx = results.get("host", {}).get("amx_tiles", False)
    compared, refused = cases(amx)
    print(f"\nCPU with AMX tiles: {'yes' if amx else 'no'}")
    print("\n| model | case | vLLM vs transformers F32 (top-1 agreement, largest logprob "
          "difference) | limit | transformers BF16 vs F32 | vLLM vs unquantized | "
          "transformers quantized vs unquantized | vLLM CPU message |")
    print("|---|---|---|---|---|---|---|---|")
    for model, case, scheme in compared:
        if not chosen(f"{model}-{case}"):
            continue
        r = results.get(f"{model}-{case}", {"error": "not run"})
        if "error" in r:
            failures.append(f"{model}-{case}: failed: {r['error']}")
            print(f"| {model} | {case} | - | - | - | - | - | {r['error']} |")
            continue
        hf_refused = HF_REFUSED.get(f"{model}-{case}")
        if hf_refused is not None and hf_refused not in (r.get("hf_own") or ""):
            failures.append(f"{model}-{case}: expected transformers to refuse the folder with "
                            f"'{hf_refused}', got {r.get('hf_own')}")
        if r["hf_experts_missing"] != (f"{model}-{case}" in EXPERTS_NOT_LOADED):
            failures.append(f"{model}-{case}: transformers' load of the unquantized experts "
                            f"changed (experts missing: {r['hf_experts_missing']})")
        limit = limits(results, model, case)
        agree, n, worst = r["vllm"]
        if agree < limit[0] or worst > limit[1]:
            failures.append(f"{model}-{case}: {fmt(r['vllm'])} outside {limit[0]}/{n}, "
                            f"{limit[1]:.4f}")
        note = ("vLLM's int8 activations (VLLM_CPU_INT4_W4A8); transformers: the same weights "
                "with W4A8's activations" if r.get("reference_w4a8") else "")
        if r.get("reference_w8a16"):
            note = ("vLLM's bf16 activations (AMX FP8 W8A16 kernels); transformers: the same "
                    "weights with no activation quantization")
        if r.get("reference_dequantized"):
            note = "transformers: the weights dequantized by this check, " + (
                "no activation quantization (vLLM's AMX FP8 W8A16 kernels)"
                if r.get("reference_w8a16") else
                "W4A8's activations on every quantized layer, experts included (vLLM's int8 "
                "activations)" if r.get("reference_w4a8") else "activations quantized as declared")
            if r.get("hf_own"):
                note += f"; its own read of the folder: {r['hf_own'].split(' For details')[0]}"
        print(f"| {model} | {case} | {fmt(r['vllm'])} | >= {limit[0]}/{n}, <= {limit[1]:.4f} "
              f"| {fmt(r['hf_bf16'])} | {fmt(r['vllm_unq'])} | {fmt(r['hf_unq'])} | {note} |")
    if amx and any(chosen(n) for n in set(HF_REFUSED) | INT4_EXPERTS):
        rc = results.get("reference_check", {"error": "not run"})
        for part in ("dense", "dense_int4", "experts_loop"):
            m = rc.get(part)
            if m is None or m[0] != m[1] or m[2] > 1e-4:
                failures.append(f"the check's own reference ({part}) is not transformers': "
                                f"{m if m is not None else rc.get('error')}")
        print(f"\nThe check's own reference against transformers' (top-1 agreements, largest "
              f"difference): Llama W8A8 {rc.get('dense')}, Llama W4A16 as W4A8 "
              f"{rc.get('dense_int4')}, the experts loop {rc.get('experts_loop')}\n")
    for name, expected in refused.items():
        if not chosen(name):
            continue
        r = results.get(name, {"error": "not run"})
        if expected not in r.get("error", ""):
            failures.append(f"{name}: expected vLLM to refuse with '{expected}', "
                            f"got {r.get('error', 'a generation')}")
        if name in LOGGED and not r.get("logged"):
            failures.append(f"{name}: vLLM's log lacks '{LOGGED[name]}'")
        model, case = name.split("-", 1)
        label = f"{case} (experts quantized)" if model.startswith("qwen3moe") else case
        print(f"| {model} | {label} | - | refused | - | - | - | "
              f"{r.get('error', 'generated')} |")
    for f in failures:
        print("FAIL:", f)
    return failures


def main():
    if sys.argv[1] == "models":
        make_models(sys.argv[2], sys.argv[3:])
        return
    work, only = sys.argv[2], sys.argv[3:]
    if sys.argv[1] == "run":
        results = measure(work, only)
    else:  # "judge": the table again from WORK/results.json, without running anything
        results = json.load(open(os.path.join(work, "results.json")))
    sys.exit(1 if judge(results, only) else 0)


if __name__ == "__main__":
    main()
