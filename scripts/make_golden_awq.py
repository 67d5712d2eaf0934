#!/usr/bin/env python3
"""Golden cases for AWQ's grid search (tests/test_awq.cc): runs the pinned reference's own
AWQModifier._compute_best_scale (llm-compressor 0.14.0.1, torch 2.13.0 CPU) on mappings whose
parent is the balance layer itself (v_proj -> o_proj, up_proj -> down_proj), where the
reference's loss, the MSE of that layer's output over the calibration tokens, is exactly
quench's proxy tr(dW H dW^T) / (tokens x out) with H = sum x x^T. Writes data/golden/awq/.

Each CASE.safetensors holds the balance weight W (its dtype), the activations' statistics as
quench reads them (sum_abs, hessian = X^T X in f64, count) and the reference's result: the
chosen scales (f64), every candidate's loss as the reference computed it (`losses`, f64, in
grid order) and the chosen grid index; metadata: scheme arguments and duo_scaling (true,
false or both).

Usage: .venv-ref/bin/python scripts/make_golden_awq.py [OUT_DIR]
"""
import json
import os
import sys

import numpy as np
import torch
from compressed_tensors.quantization import (QuantizationArgs, QuantizationScheme,
                                             QuantizationStatus)
from compressed_tensors.quantization.lifecycle.initialize import (
    initialize_module_for_quantization)
from llmcompressor.modifiers.transform.awq.base import AWQModifier
from llmcompressor.modifiers.transform.awq.mappings import ResolvedMapping
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "data", "golden", "awq")
DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}


def case(name, rng, dtype_name, out_f, in_f, tokens, bits, group, symmetric, duo):
    dtype = DTYPES[dtype_name]
    x = rng.standard_normal((tokens, in_f)) * np.exp(rng.uniform(-2, 0.5, size=in_f))
    x[:, rng.choice(in_f, size=4, replace=False)] *= 15.0
    xt = torch.tensor(x, dtype=torch.float32).to(dtype)  # the model's activations
    w = torch.tensor(rng.standard_normal((out_f, in_f)) * 0.05, dtype=torch.float32).to(dtype)
    layer = torch.nn.Linear(in_f, out_f, bias=False, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(w)
    qargs = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric,
                             strategy="group" if group else "channel",
                             group_size=group if group else None)
    initialize_module_for_quantization(layer, QuantizationScheme(targets=["Linear"],
                                                                 weights=qargs))
    layer.quantization_status = QuantizationStatus.CALIBRATION
    # As QuantizationMixin leaves it through AWQ's grid search: the forward does not quantize
    # (disable_quantization until end_calibration); the search quantizes W explicitly.
    layer.quantization_enabled = False
    smooth = torch.nn.Linear(8, in_f, bias=False, dtype=dtype)
    mod = AWQModifier(duo_scaling=duo, n_grid=20)
    mapping = ResolvedMapping("smooth", smooth, [layer], ["balance"], layer, "balance")
    absx = xt.abs().float()
    mod._smooth_activation_stats["smooth"] = [absx.sum(dim=0), torch.tensor(tokens)]
    batches = [xt[i:i + 32].unsqueeze(0) for i in range(0, tokens, 32)]
    object.__setattr__(mod, "_run_samples", lambda module: [module(b) for b in batches])
    with torch.no_grad():
        fp16 = [layer(b) for b in batches]
    orig = {layer: layer.weight.detach().clone()}
    losses = []
    real = mod._compute_loss

    def spy(a, b):
        v = real(a, b)
        losses.append(v)
        return v

    object.__setattr__(mod, "_compute_loss", spy)
    scales = mod._compute_best_scale(mapping, fp16, orig)
    best = int(np.argmin(losses))  # first minimum, as `loss < best_error` keeps it
    xd = xt.double()
    t = {"w": w.contiguous(), "sum_abs": absx.sum(dim=0).double(),
         "hessian": (xd.T @ xd).contiguous(), "count": torch.tensor(tokens, dtype=torch.int64),
         "scales": scales.double().contiguous(), "losses": torch.tensor(losses, dtype=torch.float64),
         "best": torch.tensor(best, dtype=torch.int64)}
    meta = {"dtype": dtype_name, "bits": str(bits), "group": str(group or 0),
            "symmetric": str(int(symmetric)), "duo_scaling": str(duo).lower()}
    save_file(t, os.path.join(OUT, name + ".safetensors"), metadata=meta)
    return name


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(2020)
    cases = []
    for dt in ("bf16", "f32"):
        for duo in (True, False):
            cases.append(case(f"o_{dt}_w4g32_{str(duo).lower()}", rng, dt, 48, 64, 128, 4, 32,
                              True, duo))
        cases.append(case(f"down_{dt}_w4asym_g64", rng, dt, 32, 128, 96, 4, 64, False, True))
        cases.append(case(f"o_{dt}_w8chan", rng, dt, 40, 64, 64, 8, 0, True, True))
    # duo_scaling "both" (0.14.0.1's third option: n_grid / 2 ratios, each without then with
    # duo scaling), from a generator of its own so that the cases above stay as they were.
    both = np.random.default_rng(2021)
    for dt in ("bf16", "f32"):
        cases.append(case(f"o_{dt}_w4g32_both", both, dt, 48, 64, 128, 4, 32, True, "both"))
        cases.append(case(f"down_{dt}_w4asym_g64_both", both, dt, 32, 128, 96, 4, 64, False,
                          "both"))
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"generator": "scripts/make_golden_awq.py", "llmcompressor": "0.14.0.1",
                   "torch": torch.__version__, "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main()
