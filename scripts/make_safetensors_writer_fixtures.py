#!/usr/bin/env python3
"""Writes data/safetensors_writer/: small files saved by the real safetensors writer
(safetensors.torch.save_file, i.e. the Rust crate's prepare()/serialize_to_file) plus
fixtures.json describing what was passed to it, so tests/test_safetensors.cc can check that
LayOutSafetensors produces the crate's header bytes exactly.

Run with an interpreter that has torch and safetensors, e.g.
    /opt/qref/bin/python scripts/make_safetensors_writer_fixtures.py

The description is derived from the tensors given to save_file (not from the written header),
in the order they were given. Metadata has at most one key: the crate keeps metadata in a
HashMap whose iteration order is random per process, so several keys have no fixed bytes.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
import safetensors

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "safetensors_writer")

ST_NAME = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e8m0fnu: "F8_E8M0", torch.int16: "I16",
    torch.uint16: "U16", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
    torch.uint32: "U32", torch.float32: "F32", torch.complex64: "C64", torch.float64: "F64",
    torch.int64: "I64", torch.uint64: "U64", torch.float4_e2m1fn_x2: "F4",
}


def z(shape, dtype):
    """Small deterministic tensor (values 0..6) so the data section is not all zeros."""
    n = 1
    for d in shape:
        n *= d
    values = torch.arange(n, dtype=torch.int64).remainder(7).reshape(shape)
    if dtype in (torch.float4_e2m1fn_x2, torch.float8_e8m0fnu):
        return values.to(torch.uint8).view(dtype)  # no arithmetic casts into these types
    return values.to(dtype)


def describe(tensors):
    out = []
    for name, t in tensors.items():
        shape = list(t.shape)
        if t.dtype == torch.float4_e2m1fn_x2:
            # safetensors stores the packed pair type as F4 with the last dimension doubled.
            shape[-1] *= 2
        out.append({"name": name, "dtype": ST_NAME[t.dtype], "shape": shape,
                    "nbytes": t.numel() * t.element_size()})
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    cases = []

    def add(file, tensors, metadata=None):
        save_file(tensors, os.path.join(OUT, file), metadata=metadata)
        cases.append({"file": file, "metadata": metadata, "tensors": describe(tensors)})

    add("mixed_dtypes.safetensors", {
        "zeta.weight": z((2, 3), torch.bfloat16),
        "alpha.weight": z((2, 3), torch.bfloat16),
        "b.bias": z((3,), torch.float32),
        "Upper.case": z((2,), torch.float16),
        "counts": z((2,), torch.int64),
        "empty": z((0,), torch.float32),
        "empty2d": z((4, 0), torch.bfloat16),
        "scalar": z((), torch.float32),
        "mask": z((5,), torch.bool),
        "bytes": z((3,), torch.uint8),
        "signed": z((3,), torch.int8),
        "i16": z((2,), torch.int16),
        "u16": z((2,), torch.uint16),
        "i32": z((2,), torch.int32),
        "u32": z((2,), torch.uint32),
        "u64": z((1,), torch.uint64),
        "f64": z((1,), torch.float64),
        "c64": z((1,), torch.complex64),
        "e5m2": z((3,), torch.float8_e5m2),
        "e4m3": z((3,), torch.float8_e4m3fn),
        "e8m0": z((3,), torch.float8_e8m0fnu),
        "fp4": z((2, 3), torch.float4_e2m1fn_x2),
    })
    # What model_free writes for one FP8 / W4A16 / NVFP4 layer set (no metadata).
    add("quantized_shard.safetensors", {
        "model.layers.0.self_attn.q_proj.weight": z((8, 16), torch.float8_e4m3fn),
        "model.layers.0.self_attn.q_proj.weight_scale": z((8, 1), torch.bfloat16),
        "model.layers.0.mlp.down_proj.weight_packed": z((8, 2), torch.int32),
        "model.layers.0.mlp.down_proj.weight_scale": z((8, 1), torch.bfloat16),
        "model.layers.0.mlp.down_proj.weight_shape": z((2,), torch.int64),
        "model.layers.0.mlp.up_proj.weight_packed": z((8, 8), torch.uint8),
        "model.layers.0.mlp.up_proj.weight_scale": z((8, 1), torch.float8_e4m3fn),
        "model.layers.0.mlp.up_proj.weight_global_scale": z((1,), torch.float32),
        "model.layers.0.input_layernorm.weight": z((16,), torch.bfloat16),
        "model.embed_tokens.weight": z((4, 16), torch.bfloat16),
        "lm_head.weight": z((4, 16), torch.bfloat16),
        "model.layers.0.mlp.gate_proj.weight": z((8, 16), torch.int8),
        "model.layers.0.mlp.gate_proj.weight_zero_point": z((8, 1), torch.int8),
    })
    add("metadata_format_pt.safetensors",
        {"b": z((2,), torch.bfloat16), "a": z((1,), torch.float32)}, {"format": "pt"})
    add("metadata_escapes.safetensors",
        {"x": z((1,), torch.uint8)}, {"note \u00e9\t": "a\"b\\c\n\u0001\x7f \U0001F600"})
    add("empty.safetensors", {})
    add("empty_with_metadata.safetensors", {}, {"format": "pt"})
    # One tensor with names of length 1..8: every padding amount 0..7 occurs.
    for k in range(1, 9):
        add("padding_%d.safetensors" % k, {"n" * k: z((1,), torch.uint8)})
    add("unicode_names.safetensors", {
        "b\u00e9": z((1,), torch.float8_e4m3fn),
        "Zeta": z((1,), torch.float8_e4m3fn),
        "a\tb": z((1,), torch.float8_e4m3fn),
        "b\x7f": z((1,), torch.float8_e4m3fn),
        "ctl\x1f": z((1,), torch.float8_e4m3fn),
        "q\"uote\\": z((1,), torch.float8_e4m3fn),
        "\U0001F600": z((1,), torch.float8_e4m3fn),
        "\uffff": z((1,), torch.float8_e4m3fn),
        "": z((1,), torch.float8_e4m3fn),
        "/slash": z((1,), torch.float8_e4m3fn),
    })

    with open(os.path.join(OUT, "fixtures.json"), "w", encoding="utf-8") as f:
        generator = "safetensors %s, torch %s" % (safetensors.__version__, torch.__version__)
        json.dump({"generator": generator, "cases": cases}, f, indent=1, ensure_ascii=True)
        f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
