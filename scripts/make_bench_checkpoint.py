#!/usr/bin/env python3
"""Write a synthetic BF16 checkpoint for scripts/bench: Llama-shaped of about SIZE_GB (10^9 bytes),
or Kimi-K2-shaped with many small expert tensors.

    make_bench_checkpoint.py OUT_DIR --size-gb 2 [--shard-gb 1] [--seed N]
    make_bench_checkpoint.py OUT_DIR --layout kimi [--shard-gb 1] [--seed N]
    make_bench_checkpoint.py OUT_DIR --layout fp8 --size-gb 2 [--shard-gb 1] [--seed N]
    make_bench_checkpoint.py OUT_DIR --layout moe [--moe-layers 10] [--shard-gb 1] [--seed N]
    make_bench_checkpoint.py OUT_DIR --layout awq|modelopt|ct --size-gb 2 [--shard-gb 1]
    make_bench_checkpoint.py OUT_DIR --layout gptoss --size-gb 2 [--shard-gb 1] [--seed N]

Shapes are Llama-2-7B's (hidden 4096, intermediate 11008, 32 heads, untied lm_head); the number of
layers is chosen to reach the size with about 8% of the bytes in embed_tokens + lm_head (as in a
7B model), the vocabulary then filling the rest. Below one 7B layer, hidden and intermediate are
halved until at least one layer fits. Weights are BF16 with a normal(0, 0.02) distribution: a pool
of 2^24 true normal draws is sampled at random offsets with random signs, which is fast (the data
are only there to be converted, not to be meaningful).

--layout fp8 is a DeepSeek-V3-style FP8 source of about SIZE_GB: the Llama shapes of a BF16
checkpoint twice that size, every 2-D projection stored as random finite E4M3 codes (NaN codes
0x7F/0xFF replaced by their neighbours) with an F32 `X.weight_scale_inv` of 128x128 block
multipliers (2^-12..2^-6, stored right after its weight by name order), embeddings, norms and
lm_head BF16, config.json with `quantization_config: {quant_method: fp8, weight_block_size:
[128, 128]}`.

--layout awq, modelopt and ct are 4-bit sources of about SIZE_GB (the Llama shapes of a BF16
checkpoint 3.2 times that size; embeddings, norms and lm_head in the model's float dtype):
  awq       AutoAWQ GEMM, group 128 with zero points: random I32 `qweight` [in, out/8] and
            `qzeros` [in/128, out/8], F16 `scales` [in/128, out] (2^-12..2^-6), F16 model;
  modelopt  ModelOpt NVFP4: random U8 `weight` [out, in/2], F8_E4M3 `weight_scale` [out, in/16]
            (codes 1..0x7E), F32 0-dim `weight_scale_2` (one per fused q/k/v, gate/up set) and
            `input_scale`; hf_quant_config.json and config.json's quantization_config, with
            lm_head and embed_tokens in exclude_modules; BF16 model;
  ct        compressed-tensors pack-quantized W4A16 (group 128, symmetric): random I32
            `weight_packed` [out, in/8], BF16 `weight_scale` [out, in/128], I64 `weight_shape`;
            BF16 model.
Every code pattern is valid in these formats, so random words are real checkpoints to decode.

--layout kimi keeps Kimi K2's tensor count rather than its size: 61 layers of 384 routed experts
(gate/up/down, 70,272 tensors) plus attention, norms and the router gate, 70,702 tensors in all;
hidden and expert intermediate sizes are both 128 (a multiple of every scheme's group), so each
expert tensor is 32 KiB and the checkpoint about 2.4 GB (2.2 GiB). --size-gb is not used. It
measures what per-tensor costs add to a conversion, which a few large tensors hide.

Files are laid out as Hugging Face save_pretrained does: shards model-0000k-of-0000n.safetensors
filled in module order up to --shard-gb, tensors inside a shard sorted by name, header padded
with spaces to a multiple of 8, model.safetensors.index.json and config.json. Written to temporary
folder OUT_DIR.partial, renamed to OUT_DIR at the end, so an interrupted run is never reused (and
no marker file ends up in the checkpoint, where a converter would copy it).
"""
import argparse
import json
import os
import shutil
import struct
import sys
import time

import numpy as np

POOL = 1 << 24
CHUNK = 1 << 22  # elements per generated piece


def shapes_for(size_bytes: int):
    hidden, inter, heads = 4096, 11008, 32
    while True:
        layer = 2 * (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden)
        if layer <= size_bytes * 0.92 or hidden <= 256:
            break
        hidden //= 2
        inter //= 2
        heads //= 2
    layers = max(1, int(size_bytes * 0.92 // layer))
    rest = size_bytes - layers * layer - 2 * hidden
    vocab = max(256, int(rest // (2 * 2 * hidden)) // 64 * 64)
    return dict(hidden=hidden, inter=inter, heads=max(1, heads), layers=layers, vocab=vocab)


def tensor_list(s):
    """(name, shape) in module order, as save_pretrained iterates the state dict."""
    h, i = s["hidden"], s["inter"]
    out = [("model.embed_tokens.weight", (s["vocab"], h))]
    for l in range(s["layers"]):
        p = f"model.layers.{l}."
        out += [
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (h, h)),
            (p + "self_attn.v_proj.weight", (h, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
            (p + "input_layernorm.weight", (h,)),
            (p + "post_attention_layernorm.weight", (h,)),
        ]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (s["vocab"], h))]
    return out


KIMI = dict(hidden=128, inter=128, heads=1, layers=61, experts=384, vocab=163840)
# --layout moe: fewer, larger experts (1 MiB each, 1,920 of them; 2.2 GB), the shape of a
# mid-size MoE release scaled down, for expert pruning's reads.
MOE = dict(hidden=1024, inter=512, heads=8, layers=10, experts=64, vocab=16384)


def kimi_tensor_list(s):
    """(name, shape) in module order for the Kimi-shaped layout."""
    h, i = s["hidden"], s["inter"]
    out = [("model.embed_tokens.weight", (s["vocab"], h))]
    for l in range(s["layers"]):
        p = f"model.layers.{l}."
        out += [(p + f"self_attn.{m}.weight", (h, h)) for m in ("q_proj", "k_proj", "v_proj",
                                                                 "o_proj")]
        out.append((p + "mlp.gate.weight", (s["experts"], h)))
        for e in range(s["experts"]):
            q = p + f"mlp.experts.{e}."
            out += [(q + "gate_proj.weight", (i, h)), (q + "up_proj.weight", (i, h)),
                    (q + "down_proj.weight", (h, i))]
        out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (s["vocab"], h))]
    return out


# --layout gptoss: gpt-oss-20b's layer shapes (hidden 2880; 32 experts of intermediate 2880;
# 64 attention heads of 64, 8 KV heads) with its expert stacks stored MXFP4 as OpenAI releases
# them, and a small vocabulary. --size-gb is the decoded (BF16) size, about 1.65 GB a layer.
GPTOSS = dict(hidden=2880, inter=2880, experts=32, heads=64, kv_heads=8, head_dim=64, vocab=1024)


def gptoss_tensor_list(s):
    """(name, shape, dtype) in module order for the gpt-oss MXFP4 layout."""
    h, i, e, q, kv = s["hidden"], s["inter"], s["experts"], s["heads"] * s["head_dim"], \
        s["kv_heads"] * s["head_dim"]
    out = [("model.embed_tokens.weight", (s["vocab"], h), "BF16")]
    for l in range(s["layers"]):
        p = f"model.layers.{l}."
        out += [(p + "input_layernorm.weight", (h,), "BF16")]
        for m, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            out += [(p + f"self_attn.{m}.weight", (rows, h), "BF16"),
                    (p + f"self_attn.{m}.bias", (rows,), "BF16")]
        out += [(p + "self_attn.o_proj.weight", (h, q), "BF16"),
                (p + "self_attn.o_proj.bias", (h,), "BF16"),
                (p + "self_attn.sinks", (s["heads"],), "BF16"),
                (p + "post_attention_layernorm.weight", (h,), "BF16"),
                (p + "mlp.router.weight", (e, h), "BF16"), (p + "mlp.router.bias", (e,), "BF16")]
        for m, rows, cols in (("gate_up_proj", 2 * i, h), ("down_proj", h, i)):
            x = p + "mlp.experts." + m
            out += [(x + "_blocks", (e, rows, cols // 32, 16), "U8"),
                    (x + "_scales", (e, rows, cols // 32), "U8"), (x + "_bias", (e, rows), "BF16")]
    out += [("model.norm.weight", (h,), "BF16"), ("lm_head.weight", (s["vocab"], h), "BF16")]
    return out


# --layout llama4: Llama 4 Scout's text layers (hidden 5120; experts of width 8192 stored as
# [E, in, out] stacks, gate_up_proj [E, 5120, 16384] and down_proj [E, 8192, 5120]; a shared
# expert; 40 heads of 128, 8 KV heads) with 4 experts a layer instead of 16, so that a layer is
# 1.3 GB, and a small vocabulary. Each expert's stack block is Scout's own (168 MB and 84 MB).
LLAMA4 = dict(hidden=5120, inter=8192, experts=4, heads=40, kv_heads=8, head_dim=128, vocab=1024)


def llama4_tensor_list(s):
    """(name, shape, dtype) in module order for the Llama 4 layout (the release's names)."""
    h, i, e = s["hidden"], s["inter"], s["experts"]
    q, kv = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    p0 = "language_model.model."
    out = [(p0 + "embed_tokens.weight", (s["vocab"], h), "BF16")]
    for l in range(s["layers"]):
        p = f"{p0}layers.{l}."
        out += [(p + "input_layernorm.weight", (h,), "BF16")]
        out += [(p + f"self_attn.{m}.weight", (rows, h), "BF16")
                for m, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv))]
        out += [(p + "self_attn.o_proj.weight", (h, q), "BF16"),
                (p + "post_attention_layernorm.weight", (h,), "BF16"),
                (p + "feed_forward.router.weight", (e, h), "BF16"),
                (p + "feed_forward.experts.gate_up_proj", (e, h, 2 * i), "BF16"),
                (p + "feed_forward.experts.down_proj", (e, i, h), "BF16")]
        out += [(p + f"feed_forward.shared_expert.{m}.weight", shape, "BF16")
                for m, shape in (("gate_proj", (i, h)), ("up_proj", (i, h)),
                                 ("down_proj", (h, i)))]
    out += [(p0 + "norm.weight", (h,), "BF16"), ("language_model.lm_head.weight",
                                                 (s["vocab"], h), "BF16")]
    return out


def nbytes(shape, dtype="BF16"):
    n = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "I32": 4, "U8": 1, "I64": 8}[dtype]
    for d in shape:
        n *= d
    return n


def fp8_tensor_list(tensors):
    """(name, shape, dtype): 2-D projections as E4M3 with their block scales."""
    out = []
    for name, shape in tensors:
        if len(shape) == 2 and "layers." in name:
            out.append((name, shape, "F8_E4M3"))
            out.append((name + "_scale_inv", ((shape[0] + 127) // 128, (shape[1] + 127) // 128),
                        "F32"))
        else:
            out.append((name, shape, "BF16"))
    return out


def packed_tensor_list(tensors, layout):
    """(name, shape, dtype) of a 4-bit source (--layout awq|modelopt|ct): every 2-D projection
    replaced by the format's tensors; the rest in the model's float dtype."""
    out = []
    float_dtype = "F16" if layout == "awq" else "BF16"
    for name, shape in tensors:
        if not (len(shape) == 2 and "layers." in name):
            out.append((name, shape, float_dtype))
            continue
        m, (rows, cols) = name[:-len(".weight")], shape
        if layout == "awq":
            out += [(m + ".qweight", (cols, rows // 8), "I32"),
                    (m + ".qzeros", (cols // 128, rows // 8), "I32"),
                    (m + ".scales", (cols // 128, rows), "F16")]
        elif layout == "modelopt":
            out += [(m + ".weight", (rows, cols // 2), "U8"),
                    (m + ".weight_scale", (rows, cols // 16), "F8_E4M3"),
                    (m + ".weight_scale_2", (), "F32"), (m + ".input_scale", (), "F32")]
        else:
            out += [(m + ".weight_packed", (rows, cols // 8), "I32"),
                    (m + ".weight_scale", (rows, cols // 128), "BF16"),
                    (m + ".weight_shape", (2,), "I64")]
    return out


def fused_set(name):
    """The fused set a projection's ModelOpt weight_scale_2 is shared in (q/k/v, gate/up)."""
    m = name.rsplit(".", 1)[0]
    for a, b in (("k_proj", "q_proj"), ("v_proj", "q_proj"), ("up_proj", "gate_proj")):
        if m.endswith(a):
            return m[:-len(a)] + b
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--shard-gb", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=20261122)
    ap.add_argument("--layout", choices=("llama", "kimi", "moe", "fp8", "awq", "modelopt", "ct",
                                         "gptoss", "llama4"), default="llama")
    # --layout moe: layers of 64 1-MiB experts x 3 (about 0.2 GB each): 10 makes 2.17 GB;
    # more make a run long enough that fixed costs no longer weigh on the ratio.
    ap.add_argument("--moe-layers", type=int, default=MOE["layers"])
    a = ap.parse_args()
    final = a.out.rstrip("/")
    if os.path.isdir(final):
        print(f"reusing {final}", file=sys.stderr)
        return
    out = final + ".partial"
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    t0 = time.time()
    if a.layout == "gptoss":
        s = dict(GPTOSS, layers=max(1, round(a.size_gb / 1.65)))
        tensors = gptoss_tensor_list(s)
    elif a.layout == "llama4":
        s = dict(LLAMA4, layers=max(1, round(a.size_gb / 1.3)))
        tensors = llama4_tensor_list(s)
    elif a.layout in ("kimi", "moe"):
        s = KIMI if a.layout == "kimi" else dict(MOE, layers=a.moe_layers)
        tensors = kimi_tensor_list(s)
    elif a.layout == "fp8":
        # Projections take one byte a weight instead of two: the shapes of twice the size.
        s = shapes_for(int(2 * a.size_gb * 1e9))
        tensors = tensor_list(s)
    elif a.layout in ("awq", "modelopt", "ct"):
        # About half a byte a weight: the shapes of a BF16 checkpoint 3.2 times the size.
        s = shapes_for(int(3.2 * a.size_gb * 1e9))
        tensors = tensor_list(s)
    else:
        s = shapes_for(int(a.size_gb * 1e9))
        tensors = tensor_list(s)
    if a.layout in ("gptoss", "llama4"):
        pass  # (name, shape, dtype) already
    elif a.layout == "fp8":
        tensors = fp8_tensor_list(tensors)
    elif a.layout in ("awq", "modelopt", "ct"):
        tensors = packed_tensor_list(tensors, a.layout)
    else:
        tensors = [(name, shape, "BF16") for name, shape in tensors]

    # Greedy sharding in module order (transformers' shard_checkpoint).
    limit = int(a.shard_gb * 1e9)
    shards, cur, cur_size = [], [], 0
    for name, shape, dtype in tensors:
        b = nbytes(shape, dtype)
        aux = name.endswith(("_scale_inv", ".qzeros", ".scales", ".weight_scale",
                             ".weight_scale_2", ".input_scale", ".weight_shape", "_scales"))
        if cur and cur_size + b > limit and not aux:
            shards.append(cur)
            cur, cur_size = [], 0
        cur.append((name, shape, dtype))
        cur_size += b
    shards.append(cur)
    n = len(shards)

    rng = np.random.default_rng(a.seed)
    pool = rng.standard_normal(POOL + CHUNK, dtype=np.float32) * np.float32(0.02)
    pool = ((pool.view(np.uint32) + 0x7FFF + ((pool.view(np.uint32) >> 16) & 1)) >> 16).astype("<u2")
    pool &= np.uint16(0x7FFF)  # magnitudes; signs are drawn per element below

    def norm_vec(k):
        v = np.float32(1.0) + rng.standard_normal(k, dtype=np.float32) * np.float32(0.05)
        return (v.view(np.uint32) >> 16).astype("<u2").tobytes()

    ws2 = {}  # ModelOpt: one weight_scale_2 per fused set

    def f16_scales(k, dtype):
        e = rng.uniform(-12.0, -6.0, k).astype(np.float32)
        v = np.exp2(e)
        return v.astype("<f2").tobytes() if dtype == "F16" else \
            (v.view(np.uint32) >> 16).astype("<u2").tobytes()

    weight_map, total = {}, 0
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{n:05d}.safetensors"
        names = sorted(shard, key=lambda t: t[0].encode())
        header = {"__metadata__": {"format": "pt"}}
        off = 0
        for name, shape, dtype in names:
            header[name] = {"dtype": dtype, "shape": list(shape),
                            "data_offsets": [off, off + nbytes(shape, dtype)]}
            off += nbytes(shape, dtype)
        hj = json.dumps(header, separators=(",", ":")).encode()
        hj += b" " * ((8 - len(hj) % 8) % 8)
        tmp = os.path.join(out, fname + ".tmp")
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(hj)))
            f.write(hj)
            for name, shape, dtype in names:
                elems = nbytes(shape, dtype) // nbytes((), dtype)
                if dtype == "I64":  # weight_shape: the unpacked [out, in]
                    rows, words = next(sh for n2, sh, _ in names
                                       if n2 == name[:-len("_shape")] + "_packed")
                    f.write(struct.pack("<2q", rows, words * 8))
                    continue
                if name.endswith("_scales"):  # MXFP4 exponents, values up to 6 * 2^-6
                    f.write(rng.integers(117, 122, elems, dtype=np.uint8).tobytes())
                    continue
                if dtype in ("I32", "U8") or (dtype == "F8_E4M3" and a.layout == "modelopt"):
                    done = 0
                    while done < elems * nbytes((), dtype):
                        m = min(CHUNK, elems * nbytes((), dtype) - done)
                        c = rng.integers(0, 256, m, dtype=np.uint8)
                        if dtype == "F8_E4M3":  # positive, not zero or NaN: 1..0x7E
                            c = (c % 0x7E) + 1
                        f.write(c.tobytes())
                        done += m
                    continue
                if name.endswith((".scales", ".weight_scale")):
                    f.write(f16_scales(elems, dtype))
                    continue
                if name.endswith(".weight_scale_2"):
                    key = fused_set(name)
                    if key not in ws2:
                        ws2[key] = float(rng.uniform(1e-4, 1e-3))
                    f.write(struct.pack("<f", ws2[key]))
                    continue
                if name.endswith(".input_scale"):
                    f.write(struct.pack("<f", float(rng.uniform(1e-3, 1e-2))))
                    continue
                if dtype == "F32":
                    e = rng.uniform(-12.0, -6.0, elems).astype(np.float32)
                    f.write(np.exp2(e).astype("<f4").tobytes())
                    continue
                if dtype == "F8_E4M3":
                    done = 0
                    while done < elems:
                        m = min(CHUNK, elems - done)
                        c = rng.integers(0, 256, m, dtype=np.uint8)
                        c[(c & 0x7F) == 0x7F] -= 1
                        f.write(c.tobytes())
                        done += m
                    continue
                if len(shape) == 1:
                    f.write(norm_vec(elems))
                    continue
                done = 0
                while done < elems:
                    m = min(CHUNK, elems - done)
                    start = int(rng.integers(0, POOL))
                    piece = pool[start:start + m] | (rng.integers(0, 2, m, dtype=np.uint16) << 15)
                    f.write(piece.tobytes())
                    done += m
        os.replace(tmp, os.path.join(out, fname))
        total += off
        for name, _, _ in shard:
            weight_map[name] = fname
        print(f"  wrote {fname} ({off / 1e9:.2f} GB)", file=sys.stderr)

    def write_json(name, obj):
        with open(os.path.join(out, name), "w") as f:
            f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")

    write_json("model.safetensors.index.json",
               {"metadata": {"total_size": total}, "weight_map": weight_map})
    config = {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 1, "eos_token_id": 2, "head_dim": s["hidden"] // s["heads"],
        "hidden_act": "silu", "hidden_size": s["hidden"], "initializer_range": 0.02,
        "intermediate_size": s["inter"], "max_position_embeddings": 4096, "mlp_bias": False,
        "model_type": "llama", "num_attention_heads": s["heads"],
        "num_hidden_layers": s["layers"], "num_key_value_heads": s["heads"],
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.3", "use_cache": True, "vocab_size": s["vocab"]}
    if a.layout in ("kimi", "moe"):
        # Kimi K2's own config names (DeepSeek-V3's), with the experts' sizes of this layout.
        config.update({"architectures": ["DeepseekV3ForCausalLM"], "model_type": "kimi_k2",
                       "first_k_dense_replace": 0, "moe_intermediate_size": s["inter"],
                       "n_routed_experts": s["experts"], "n_shared_experts": 0,
                       "num_experts_per_tok": 8})
    if a.layout == "fp8":
        config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3",
                                         "quant_method": "fp8", "weight_block_size": [128, 128]}
    if a.layout == "awq":
        config["torch_dtype"] = "float16"
        config["quantization_config"] = {"bits": 4, "group_size": 128, "quant_method": "awq",
                                         "version": "gemm", "zero_point": True}
    if a.layout == "modelopt":
        exclude = ["lm_head", "model.embed_tokens"]
        config["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "NVFP4",
                                         "group_size": 16, "exclude_modules": exclude,
                                         "kv_cache_quant_algo": None}
        write_json("hf_quant_config.json", {
            "producer": {"name": "modelopt", "version": "0.29.0"},
            "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": None,
                             "group_size": 16, "exclude_modules": exclude}})
    if a.layout == "ct":
        w = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
             "group_size": 128, "dynamic": False, "actorder": None, "observer": "minmax",
             "observer_kwargs": {}, "block_structure": None}
        config["quantization_config"] = {
            "quant_method": "compressed-tensors", "format": "pack-quantized",
            "quantization_status": "compressed", "ignore": ["lm_head"], "kv_cache_scheme": None,
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": w,
                                          "input_activations": None, "output_activations": None,
                                          "format": "pack-quantized"}}}
    if a.layout == "gptoss":
        # gpt-oss-20b's config.json with this layout's layers and vocabulary.
        config = {
            "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
            "attention_bias": True, "attention_dropout": 0.0, "head_dim": s["head_dim"],
            "hidden_act": "silu", "hidden_size": s["hidden"], "initializer_range": 0.02,
            "intermediate_size": s["inter"], "layer_types": [
                "sliding_attention" if l % 2 == 0 else "full_attention"
                for l in range(s["layers"])],
            "max_position_embeddings": 131072, "num_attention_heads": s["heads"],
            "num_experts_per_tok": 4, "num_hidden_layers": s["layers"],
            "num_key_value_heads": s["kv_heads"], "num_local_experts": s["experts"],
            "rms_norm_eps": 1e-05, "rope_scaling": {
                "beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                "original_max_position_embeddings": 4096, "rope_type": "yarn",
                "truncate": False},
            "rope_theta": 150000, "sliding_window": 128, "swiglu_limit": 7.0,
            "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
            "vocab_size": s["vocab"],
            "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
                "model.layers.*.self_attn", "model.layers.*.mlp.router",
                "model.embed_tokens", "lm_head"]}}
    if a.layout == "llama4":
        # Llama 4 Scout's config.json (text part) with this layout's layers and experts.
        text = {"model_type": "llama4_text", "hidden_size": s["hidden"],
                "intermediate_size": s["inter"], "intermediate_size_mlp": 2 * s["inter"],
                "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"],
                "num_key_value_heads": s["kv_heads"], "head_dim": s["head_dim"],
                "num_local_experts": s["experts"], "num_experts_per_tok": 1,
                "interleave_moe_layer_step": 1, "vocab_size": s["vocab"],
                "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "torch_dtype": "bfloat16"}
        config = {"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
                  "text_config": text, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    write_json("config.json", config)
    os.replace(out, final)
    print(f"generated {total / 1e9:.2f} GB in {n} shard(s) ({s['layers']} layers, hidden "
          f"{s['hidden']}, intermediate {s['inter']}, vocab {s['vocab']}) in "
          f"{time.time() - t0:.1f}s -> {final}", file=sys.stderr)


if __name__ == "__main__":
    main()
