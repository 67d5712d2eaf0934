#!/usr/bin/env python3
"""Write the bundled tiny Llama checkpoint to data/tiny-llama/ (numpy only, deterministic).

Shape: hidden 256, intermediate 704 (not a multiple of 128 on purpose), 2 layers, vocab 1024,
4 attention heads of head_dim 64, 2 KV heads (k_proj/v_proj are [128, 256]), untied lm_head.
All weights BF16 (float32 -> bf16 by round-to-nearest-even on the bit pattern).

Files are written the way Hugging Face `save_pretrained` writes them:
  * shards via safetensors' layout: 8-byte LE header length, compact JSON header with
    "__metadata__":{"format":"pt"} first, tensors sorted by (dtype desc, name asc) -- all BF16
    here, so by name -- contiguous offsets, header padded with spaces to a multiple of 8;
  * model.safetensors.index.json / config.json: json.dumps(indent=2, sort_keys=True) + "\n";
  * generation_config.json / tokenizer_config.json: same formatting.

Usage: make_checkpoint.py [OUT_DIR]   (default: <repo>/data/tiny-llama)
Running it twice gives identical bytes.
"""
import json
import os
import struct
import sys

import numpy as np

SEED = 20261122
HIDDEN = 256
INTER = 704
LAYERS = 2
VOCAB = 1024
HEADS = 4
HEAD_DIM = 64
KV_HEADS = 2


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit pattern (uint16), round to nearest, ties to even. No NaNs expected."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    assert np.all(np.isfinite(a))
    bits = a.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def write_safetensors(path: str, tensors: dict) -> int:
    """tensors: name -> (dtype_str, shape, raw little-endian bytes). Returns data bytes."""
    # safetensors orders by dtype (descending) then name; every tensor here is BF16.
    names = sorted(tensors, key=lambda n: n.encode("utf-8"))
    header = {"__metadata__": {"format": "pt"}}
    off = 0
    for n in names:
        dt, shape, raw = tensors[n]
        header[n] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    hj = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for n in names:
            f.write(tensors[n][2])
    os.replace(tmp, path)
    return off


def write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def main() -> None:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(repo, "data", "tiny-llama")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(SEED)

    def linear(rows: int, cols: int, outliers: int = 3) -> np.ndarray:
        w = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
        # a few outliers (typical of real checkpoints): large magnitude, both signs
        r = rng.integers(0, rows, size=outliers)
        c = rng.integers(0, cols, size=outliers)
        v = rng.uniform(0.25, 1.5, size=outliers).astype(np.float32)
        s = np.where(rng.integers(0, 2, size=outliers) == 0, -1.0, 1.0).astype(np.float32)
        w[r, c] = v * s
        return w

    def norm(n: int) -> np.ndarray:
        return (np.float32(1.0) + rng.standard_normal(n, dtype=np.float32) * np.float32(0.05))

    # Generate in a fixed order (embed, layers, final norm, lm_head).
    arrays = {}
    arrays["model.embed_tokens.weight"] = linear(VOCAB, HIDDEN, outliers=4)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        arrays[p + "self_attn.q_proj.weight"] = linear(HEADS * HEAD_DIM, HIDDEN)
        arrays[p + "self_attn.k_proj.weight"] = linear(KV_HEADS * HEAD_DIM, HIDDEN)
        arrays[p + "self_attn.v_proj.weight"] = linear(KV_HEADS * HEAD_DIM, HIDDEN)
        arrays[p + "self_attn.o_proj.weight"] = linear(HIDDEN, HEADS * HEAD_DIM)
        arrays[p + "mlp.gate_proj.weight"] = linear(INTER, HIDDEN)
        arrays[p + "mlp.up_proj.weight"] = linear(INTER, HIDDEN)
        arrays[p + "mlp.down_proj.weight"] = linear(HIDDEN, INTER)
        arrays[p + "input_layernorm.weight"] = norm(HIDDEN)
        arrays[p + "post_attention_layernorm.weight"] = norm(HIDDEN)
    arrays["model.norm.weight"] = norm(HIDDEN)
    arrays["lm_head.weight"] = linear(VOCAB, HIDDEN, outliers=4)

    def shard_of(name: str) -> int:
        if name.startswith("model.embed_tokens") or name.startswith("model.layers.0."):
            return 1
        return 2

    shards = {1: {}, 2: {}}
    for name, a in arrays.items():
        raw = to_bf16_bits(a).astype("<u2").tobytes()
        shards[shard_of(name)][name] = ("BF16", a.shape, raw)

    total = 0
    weight_map = {}
    for k in (1, 2):
        fname = f"model-0000{k}-of-00002.safetensors"
        total += write_safetensors(os.path.join(out, fname), shards[k])
        for n in shards[k]:
            weight_map[n] = fname
    write_json(os.path.join(out, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map})

    config = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTER,
        "max_position_embeddings": 2048,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.3",
        "use_cache": True,
        "vocab_size": VOCAB,
    }
    write_json(os.path.join(out, "config.json"), config)
    write_json(os.path.join(out, "generation_config.json"), {
        "_from_model_config": True,
        "bos_token_id": 1,
        "do_sample": True,
        "eos_token_id": 2,
        "temperature": 0.6,
        "top_p": 0.9,
        "transformers_version": "4.51.3",
    })
    write_json(os.path.join(out, "tokenizer_config.json"), {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 2048,
        "pad_token": None,
        "padding_side": "left",
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
    })


if __name__ == "__main__":
    main()
