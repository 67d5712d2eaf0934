#!/usr/bin/env python3
"""Golden files for static activation scales (issue 18), from the pinned reference
(compressed-tensors 0.19.0, llm-compressor 0.14.0.1). Run with the reference venv:

    .venv-ref/bin/python scripts/make_golden_act_scales.py

Writes data/golden/act_scales/:
- qparams.json: for (min, max) pairs in BF16, F16 and F32, what compressed-tensors'
  calculate_qparams gives for the static per-tensor activation args quench writes (FP8 E4M3
  symmetric; int8 symmetric and asymmetric), and what llm-compressor's observer gives as the
  NVFP4 input_global_scale (Observer.get_global_scale: generate_gparam of the absmax). Each
  value is stored as the bytes the checkpoint holds (hex, little-endian).
- fp8w-<dtype>/: model_free_ptq's output for the FP8 preset's weights alone (per-tensor FP8,
  memoryless min-max over the whole tensor) on the edge-case checkpoints data/golden/edge-*/src,
  with the ignore list of the other edge cases: the weights quench's FP8 (static) writes.
- oneshot_<case>.json: quantization_config that llm-compressor's oneshot writes with
  QuantizationModifier for FP8, NVFP4 and W8A8 with static per-tensor activations (symmetric
  and asymmetric), on a tiny random Llama, and oneshot_<case>_tensors.json: the names, dtypes
  and shapes of the tensors it saves for one attention layer (what quench must write beside the
  weights).
"""
import json
import os
import sys

import torch

from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "data", "golden", "act_scales")

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}

ARGS = {
    "fp8": QuantizationArgs(num_bits=8, type="float", strategy="tensor", symmetric=True,
                            dynamic=False, observer="static_minmax"),
    "int8_sym": QuantizationArgs(num_bits=8, type="int", strategy="tensor", symmetric=True,
                                 dynamic=False, observer="static_minmax"),
    "int8_asym": QuantizationArgs(num_bits=8, type="int", strategy="tensor", symmetric=False,
                                  dynamic=False, observer="static_minmax"),
}

# (min, max) of a site's activations over the whole calibration run: ordinary ranges, one-sided
# ranges, a zero range, ranges near the dtype's limits and values that round at ties.
PAIRS = [
    (-1.0, 1.0), (-3.1415926, 2.7182818), (-0.001, 17.25), (0.5, 4.0), (-8.0, -0.25),
    (0.0, 0.0), (-1e-8, 3e-9), (-123.456, 654.321), (-60000.0, 1000.0), (-5.0e4, 6.0e4),
    (-448.0, 448.0), (-2.0 ** -10, 2.0 ** -12), (-7.77, 0.0), (0.0, 9.99), (-1.5e-5, 2.5e-5),
    (-0.3333333, 0.6666667), (-255.0, 0.0), (-1.0, 254.0), (-100.0, 28.0),
]


def hexbytes(t):
    return t.contiguous().view(torch.uint8).numpy().tobytes().hex()


def qparams_cases():
    cases = []
    for dname, dt in DTYPES.items():
        for lo, hi in PAIRS:
            mn = torch.tensor([lo], dtype=torch.float32).to(dt)
            mx = torch.tensor([hi], dtype=torch.float32).to(dt)
            case = {"dtype": dname, "min": lo, "max": hi}
            for name, args in ARGS.items():
                # The observer's min/max for a TENSOR activation: shape [1] in the
                # activation dtype (_flatten_activation to (tokens, 1, hidden), then amin /
                # amax over dims (0, -1)); the shape decides torch's type promotion.
                s, z = calculate_qparams(mn, mx, args)
                case[name] = {"scale": hexbytes(s.to(dt)), "scale_dtype": str(s.dtype)}
                if not args.symmetric:
                    case[name]["zero_point"] = hexbytes(z)
                    case[name]["zero_point_dtype"] = str(z.dtype)
            # Observer.get_global_scale for TENSOR_GROUP input activations.
            absmax = torch.max(mx.max(), -mn.min())
            g = generate_gparam(-absmax.reshape(1), absmax.reshape(1))
            case["nvfp4_input_global_scale"] = hexbytes(g)
            cases.append(case)
    return cases


def oneshot_cases():
    """QuantizationModifier through oneshot on make_golden_gptq's tiny random Llama, saved
    compressed."""
    import tempfile
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from safetensors import safe_open
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_golden_gptq import oneshot_config, tiny_llama

    def static_int(symmetric):
        return {"group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 8, "type": "int", "strategy": "channel",
                        "symmetric": True, "dynamic": False},
            "input_activations": {"num_bits": 8, "type": "int", "strategy": "tensor",
                                  "symmetric": symmetric, "dynamic": False,
                                  "observer": "static_minmax"},
        }}

    # quench writes the observer whose values it reproduces (static_minmax: the global range);
    # left unset, llm-compressor would resolve it to "minmax", a moving average over batches.
    kv = {"num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True,
          "dynamic": False, "observer": "static_minmax"}
    cases = {
        "FP8": dict(scheme="FP8"),
        "NVFP4": dict(scheme="NVFP4"),
        "W8A8_static": dict(config_groups=static_int(True)),
        "W8A8_static_asym": dict(config_groups=static_int(False)),
        "FP8_DYNAMIC_kv": dict(scheme="FP8_DYNAMIC", kv_cache_scheme=kv),
    }
    only = set(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        model_data = tiny_llama(tmp)
        for name, kw in cases.items():
            if only and name not in only:
                continue
            mod = QuantizationModifier(targets="Linear", ignore=["lm_head"], **kw)
            out = os.path.join(tmp, name)
            oneshot_config(model_data, mod, out, os.path.join(OUT, f"oneshot_{name}.json"))
            tensors = {}
            for fn in sorted(os.listdir(out)):
                if not fn.endswith(".safetensors"):
                    continue
                with safe_open(os.path.join(out, fn), "pt") as sf:
                    for k in sf.keys():
                        if k.startswith("model.layers.0.self_attn.") or \
                                k.startswith("model.layers.0.mlp.gate_proj"):
                            t = sf.get_tensor(k)
                            tensors[k] = {"dtype": str(t.dtype), "shape": list(t.shape)}
            with open(os.path.join(OUT, f"oneshot_{name}_tensors.json"), "w") as f:
                json.dump(tensors, f, indent=2, sort_keys=True)
                f.write("\n")


def fp8_weight_cases():
    import shutil
    import llmcompressor.entrypoints.model_free as mf
    from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme
    for d in ("bf16", "f16", "f32"):
        src = os.path.join(ROOT, "data", "golden", f"edge-{d}", "src")
        dst = os.path.join(OUT, f"fp8w-{d}")
        shutil.rmtree(dst, ignore_errors=True)
        scheme = preset_name_to_scheme("FP8", ["Linear"])
        scheme.input_activations = None  # model_free cannot calibrate activations
        ignore = ["lm_head", "re:.*embed_tokens$", "re:.*mlp\\.gate$"]
        mf.model_free_ptq(src, dst, config=QuantizationConfig(config_groups={"FP8": scheme},
                                                              ignore=ignore))
        for fn in os.listdir(dst):  # only the weights are compared
            if not fn.endswith(".safetensors"):
                os.remove(os.path.join(dst, fn))


def main():
    os.makedirs(OUT, exist_ok=True)
    if len(sys.argv) == 1 or "qparams" in sys.argv[1:]:
        with open(os.path.join(OUT, "qparams.json"), "w") as f:
            json.dump({"generator": "scripts/make_golden_act_scales.py",
                       "compressed_tensors": __import__("compressed_tensors").__version__,
                       "cases": qparams_cases()}, f, indent=1)
            f.write("\n")
    if len(sys.argv) == 1 or "fp8w" in sys.argv[1:]:
        fp8_weight_cases()
    if "qparams" not in sys.argv[1:] and "fp8w" not in sys.argv[1:]:
        oneshot_cases()


if __name__ == "__main__":
    main()
