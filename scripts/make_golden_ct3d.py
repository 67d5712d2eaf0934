#!/usr/bin/env python3
"""Golden files for 3-D compressed-tensors weights as sources (issue 17): fused MoE expert
stacks stored compressed, made with the pinned reference (compressed-tensors 0.19.0,
llm-compressor 0.14.0.1).

Run with the reference venv's python:

    .venv-ref/bin/python scripts/make_golden_ct3d.py

Sources (data/golden/ct3dsrc/<SCHEME>/): data/golden/moe3d-bf16/src (fused `experts.gate_up_
proj` [E, 2I, H] / `experts.down_proj` [E, H, I] stacks) with each expert's [2I, H] and [H, I]
stored as its own 2-D weight under a name model_free_ptq does not split, compressed by the
reference's model_free_ptq(SCHEME), then each stack's compressed tensors stacked along a new
first dimension (codes, scales, zero points, global scales) and weight_shape [E, rows, cols]:
compressed-tensors 0.19.0's own 3-D layout ("MoE 3D weights": pack_to_int32 packs each 2-D
slice; scales [E, out, groups]), every slice exactly what the reference writes for that 2-D
weight. Module names: `<layer>.mlp.experts.gate_up_proj` / `.down_proj`, so the tensors are
`...experts.gate_up_proj.weight_packed` etc.

Expected outputs (data/golden/ct3d_manifest.json; per output tensor dtype, shape and FNV-1a 64,
and the written config.json under data/golden/ct3d/<case>/):
  <SCHEME>/BF16   convert_checkpoint(src, converter=CompressedTensorsDequantizer(src,
                  ignore=BF16_MODULES)) on the 3-D source: each stack decoded whole, 3-D
                  `...experts.gate_up_proj.weight` [E, 2I, H] BF16. Checked here to equal the
                  reference's decode of the 2-D per-expert source, stacked (so each expert's
                  slice decodes as the 2-D weight does). Where the
                  reference fails on the 3-D source its error is recorded and that stacked
                  2-D decode is the expected output.
  <SCHEME>/<T>    model_free_ptq(src, T, converter=the same dequantizer): decoded, split per
                  expert by model_free_ptq, quantized to T.

Deterministic; the reference runs in two worker processes (one import of llm-compressor each).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_golden_ct import describe, load_folder, save_folder  # noqa: E402

DATA = os.path.join(os.path.dirname(HERE), "data")
GOLDEN = os.path.join(DATA, "golden")
MOE_SRC = os.path.join(GOLDEN, "moe3d-bf16", "src")
DEFAULT_IGNORE = ["lm_head", "re:.*embed_tokens$", "re:.*mlp\\.gate$"]
# Modules stored BF16 that a "Linear"-targeted dequantizer would claim (routers included).
BF16_MODULES = ["re:.*norm$", "re:.*embed_tokens$", "lm_head", "re:.*mlp\\.gate$"]
# (source scheme, re-quantization targets)
SOURCES = [
    # (NVFP4: quench fuses expert gate/up global scales; docs/convert-reference.md)
    ("W4A16", ["MXFP4A16"]),
    ("W4A16_ASYM", ["W4A16"]),
    ("W8A8", []),
    ("FP8_DYNAMIC", ["W4A16"]),
    ("FP8_BLOCK", []),
    ("NVFP4A16", ["FP8_DYNAMIC"]),
    ("MXFP4A16", []),
    ("MXFP8A16", []),
]
STACKS = [("model.layers.0.mlp.experts", 4), ("model.layers.1.mlp.experts", 2)]


# Several reference runs in one process (importing llm-compressor costs far more than these
# tiny conversions): jobs [src, dst, scheme, ignore, converter] in order, each run in its own
# try; the errors (None where it ran) printed as JSON on the last line.
BATCH = r"""
import json, sys, traceback
from compressed_tensors.entrypoints.convert.converters import CompressedTensorsDequantizer
import compressed_tensors.entrypoints.convert.convert_file as cf
from compressed_tensors.entrypoints.convert import convert_checkpoint
import llmcompressor.entrypoints.model_free as mf
orig_cf, orig_mf = cf.save_file, mf.save_file
cf.save_file = lambda t, f, metadata=None: orig_cf({k: v.contiguous() for k, v in t.items()}, f, metadata)
mf.save_file = lambda t, f, metadata=None: orig_mf({k: v.contiguous() for k, v in t.items()}, f, metadata)
jobs, bf16 = json.loads(sys.argv[1]), json.loads(sys.argv[2])
errors = []
for src, dst, scheme, ignore, conv in jobs:
    try:
        dequantizer = CompressedTensorsDequantizer(src, ignore=bf16) if conv else None
        if scheme == "BF16":
            convert_checkpoint(src, dst, converter=dequantizer, device="cpu")
        else:
            mf.model_free_ptq(src, dst, scheme=scheme, ignore=ignore, device="cpu",
                              **({"converter": dequantizer} if dequantizer else {}))
        errors.append(None)
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}"[:300])
print(json.dumps(errors))
"""


def ref_batch(jobs):
    env = dict(os.environ, PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="")
    p = subprocess.run([sys.executable, "-c", BATCH, json.dumps(jobs), json.dumps(BF16_MODULES)],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit("the reference worker failed: " + p.stderr[-800:])
    return json.loads(p.stdout.strip().splitlines()[-1])


PIECES = (("gate_up_proj", "w13"), ("down_proj", "w2"))


def make_per_expert_source(dst):
    """data/golden/moe3d-bf16/src with each 3-D stack stored as one 2-D weight per expert,
    under names model_free_ptq does not split ("<prefix>.<e>.w13.weight" for gate_up_proj,
    "<prefix>.<e>.w2.weight" for down_proj): each expert's whole [2I, H] is then compressed as
    one 2-D weight (one NVFP4 global scale per expert, as a 3-D stack has)."""
    t = load_folder(MOE_SRC)
    for name in list(t):
        for kind, piece in PIECES:
            if f".{kind}" in name and t[name].dim() == 3:
                prefix = name[: name.index(f".{kind}")]
                for e, w in enumerate(t.pop(name)):
                    t[f"{prefix}.{e}.{piece}.weight"] = w.contiguous()
    with open(os.path.join(MOE_SRC, "config.json")) as f:
        cfg = json.load(f)
    save_folder(dst, t, cfg, {n: "model.safetensors" for n in t})


def stack_experts(flat, prefix, experts):
    """The per-expert 2-D compressed tensors of one layer as 3-D stacks; removes them."""
    import torch
    out = {}
    for kind, piece in PIECES:
        module = f"{prefix}.{kind}"
        params = sorted({n.rsplit(".", 1)[1] for n in flat if n.startswith(f"{prefix}.0.{piece}.")})
        for p in params:
            per_expert = [flat.pop(f"{prefix}.{e}.{piece}.{p}") for e in range(experts)]
            if p == "weight_shape":
                out[f"{module}.{p}"] = torch.tensor([experts] + [int(x) for x in per_expert[0]],
                                                    dtype=torch.int64)
            else:
                out[f"{module}.{p}"] = torch.stack(per_expert).contiguous()
    return out


def stack_decoded(flat, prefix, experts):
    """The reference's 2-D decode of each expert's weight, stacked as the 3-D weight decodes."""
    import torch
    out = {}
    for kind, piece in PIECES:
        out[f"{prefix}.{kind}.weight"] = torch.stack(
            [flat.pop(f"{prefix}.{e}.{piece}.weight") for e in range(experts)]).contiguous()
    return out


def main():
    from importlib import metadata
    import torch

    versions = {p: metadata.version(p) for p in
                ("compressed-tensors", "llmcompressor", "torch", "safetensors")}
    for d in ("ct3d", "ct3dsrc"):
        if os.path.exists(os.path.join(GOLDEN, d)):
            shutil.rmtree(os.path.join(GOLDEN, d))
    cases = []
    tmp = tempfile.mkdtemp(prefix="golden-ct3d-")
    # 1. The reference's per-expert (2-D) output of each scheme, and its decode.
    per_expert_src = os.path.join(tmp, "per-expert-src")
    make_per_expert_source(per_expert_src)
    jobs = []
    for scheme, _ in SOURCES:
        flat = os.path.join(tmp, scheme, "flat")
        jobs.append([per_expert_src, flat, scheme, DEFAULT_IGNORE, False])
        jobs.append([flat, flat + "-bf16", "BF16", [], True])
    for (src, _, scheme, _, _), err in zip(jobs, ref_batch(jobs)):
        if err is not None:
            raise SystemExit(f"the reference failed on {src} ({scheme}): {err}")
    # 2. The 3-D sources: each stack's compressed tensors put back together.
    runs = []
    expected_of = {}
    for scheme, targets in SOURCES:
        flat_dir = os.path.join(tmp, scheme, "flat")
        stacked = load_folder(flat_dir)
        for prefix, e in STACKS:
            stacked.update(stack_experts(stacked, prefix, e))
        with open(os.path.join(flat_dir, "config.json")) as f:
            cfg = json.load(f)
        src = os.path.join(GOLDEN, "ct3dsrc", scheme)
        save_folder(src, stacked, cfg, {n: "model.safetensors" for n in stacked})
        expected = load_folder(flat_dir + "-bf16")
        for prefix, e in STACKS:
            expected.update(stack_decoded(expected, prefix, e))
        expected_of[scheme] = expected
        for t in ["BF16"] + targets:
            runs.append([src, os.path.join(tmp, scheme, "out-" + t), t,
                         [] if t == "BF16" else DEFAULT_IGNORE, True])
    # 3. The reference on the 3-D sources.
    for (src, out, t, ignore, _), err in zip(runs, ref_batch(runs)):
        scheme = os.path.basename(src)
        dst = os.path.join(GOLDEN, "ct3d", scheme, t)
        flat_bf16 = os.path.join(tmp, scheme, "flat-bf16")
        expected = expected_of[scheme]
        entry = {"name": f"{scheme}/{t}", "source": f"golden/ct3dsrc/{scheme}", "scheme": t,
                 "ignore": ignore, "versions": versions}
        os.makedirs(dst, exist_ok=True)
        if err is not None:
            entry["reference_error"] = err
            if t == "BF16":
                entry["expected_tensors"] = describe(expected)
                shutil.copy(os.path.join(flat_bf16, "config.json"), os.path.join(dst, "config.json"))
                entry["expected_config"] = f"golden/ct3d/{scheme}/{t}/config.json"
                entry["via"] = ("the reference's decode of the same codes stored per expert "
                                "(2-D), stacked")
        else:
            got = load_folder(out)
            if t == "BF16":
                for n, v in expected.items():
                    if n not in got or not got[n].view(torch.uint8).equal(v.view(torch.uint8)):
                        raise SystemExit(f"{scheme}: the reference's 3-D decode of {n} "
                                         "differs from its per-expert 2-D decode")
                assert set(got) == set(expected), set(got) ^ set(expected)
            entry["expected_tensors"] = describe(got)
            shutil.copy(os.path.join(out, "config.json"), os.path.join(dst, "config.json"))
            entry["expected_config"] = f"golden/ct3d/{scheme}/{t}/config.json"
        cases.append(entry)
        print(entry["name"], "ok" if err is None else "REFERENCE FAILED: " + err, flush=True)
    shutil.rmtree(tmp)
    with open(os.path.join(GOLDEN, "ct3d_manifest.json"), "w") as f:
        f.write(json.dumps({"cases": cases}, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
