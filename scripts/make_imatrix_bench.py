#!/usr/bin/env python3
"""A Qwen3-30B-A3B-sized case for `quench stats import-imatrix` (bench/README.md, "Importing
llama.cpp importance matrices"): OUT/model, a header-only checkpoint (sparse file: 61 GB
apparent, a few MB on disk; import-imatrix reads headers only) with Qwen3-30B-A3B's shapes
(48 layers, 128 experts, hidden 2048, expert width 768), and OUT/imatrix.gguf (122 MB) with an
entry for every weight llama-imatrix records, written with llama.cpp's gguf package.
Run with the fixtures' venv: .venv-gguf/bin/python scripts/make_imatrix_bench.py OUT
(scripts/make_imatrix_fixtures.py creates it)."""
import json
import os
import struct
import sys

import gguf
import numpy as np

H, L, E, I, Q, KV, V = 2048, 48, 128, 768, 4096, 512, 151936


def main(out):
    shapes = {"model.embed_tokens.weight": [V, H], "lm_head.weight": [V, H], "model.norm.weight": [H]}
    for l in range(L):
        p = f"model.layers.{l}."
        shapes.update({p + "self_attn.q_proj.weight": [Q, H], p + "self_attn.k_proj.weight": [KV, H],
                       p + "self_attn.v_proj.weight": [KV, H], p + "self_attn.o_proj.weight": [H, Q],
                       p + "mlp.gate.weight": [E, H], p + "input_layernorm.weight": [H],
                       p + "post_attention_layernorm.weight": [H]})
        for e in range(E):
            q = p + f"mlp.experts.{e}."
            shapes.update({q + "gate_proj.weight": [I, H], q + "up_proj.weight": [I, H],
                           q + "down_proj.weight": [H, I]})
    model = os.path.join(out, "model")
    os.makedirs(model, exist_ok=True)
    header, off = {}, 0
    for k in sorted(shapes):
        n = int(np.prod(shapes[k])) * 2
        header[k] = {"dtype": "BF16", "shape": shapes[k], "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(os.path.join(model, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        f.truncate(8 + len(hb) + off)
    with open(os.path.join(model, "config.json"), "w") as f:
        json.dump({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
                   "hidden_size": H, "num_hidden_layers": L, "num_experts": E,
                   "num_experts_per_tok": 8, "moe_intermediate_size": I}, f)
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(os.path.join(out, "imatrix.gguf"), arch="")
    w.kv_data[0].pop("general.architecture", None)
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["bench"])
    w.add_uint32("imatrix.chunk_count", 100)
    w.add_uint32("imatrix.chunk_size", 512)

    def add(name, mats, cols):
        w.add_tensor(name + ".in_sum2", rng.random((mats, cols), dtype=np.float32))
        w.add_tensor(name + ".counts", np.full((mats, 1), 51200 if mats == 1 else 3200, np.float32))

    for l in range(L):
        for t in ("attn_q", "attn_k", "attn_v", "ffn_gate_inp"):
            add(f"blk.{l}.{t}.weight", 1, H)
        add(f"blk.{l}.attn_output.weight", 1, Q)
        add(f"blk.{l}.ffn_gate_exps.weight", E, H)
        add(f"blk.{l}.ffn_up_exps.weight", E, H)
        add(f"blk.{l}.ffn_down_exps.weight", E, I)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main(sys.argv[1])
