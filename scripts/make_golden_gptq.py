#!/usr/bin/env python3
"""Golden cases for GPTQ (tests/test_gptq.cc): runs the pinned reference's
llmcompressor.modifiers.gptq.gptq_quantize.quantize_weight (llm-compressor 0.14.0.1, torch
2.13.0 CPU, float32) on small weights and Hessians and writes data/golden/gptq/.

Each case is one safetensors file CASE.safetensors holding the inputs (W as f32 values of the
weight dtype; H, the normalised Hessian as quantize_weight takes it, is in the file its
metadata names under "hessian", shared between cases) and the outputs (codes: the
integers the compressed-tensors compressor writes for the returned weight, scale and
zero_point from the memoryless min-max observer, the reference's loss, and the proxy loss
tr(dW H dW^T) computed here in float64), with the arguments in its metadata. Cases the
reference refuses are listed in manifest.json with its message. oneshot_*.json: the
quantization_config llm-compressor's oneshot writes for GPTQModifier(scheme="W4A16") on a tiny
random Llama (the config groups quench's GPTQ output must match).

Usage: .venv-ref/bin/python scripts/make_golden_gptq.py [OUT_DIR]
"""
import json
import os
import sys

import numpy as np
import torch
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.lifecycle.forward import quantize
from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
from llmcompressor.observers import Observer
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "golden", "gptq")


def activations(rng, n, tokens, outliers=4, rank=None):
    """Real-ish activations: correlated channels (a random mixing of a lower-dimensional
    signal), channel scales spread over two decades, a few outlier channels."""
    k = rank or n
    z = rng.standard_normal((tokens, k)).astype(np.float64)
    mix = rng.standard_normal((k, n)) / np.sqrt(k)
    x = z @ mix
    x *= np.exp(rng.uniform(-2.3, 0.0, size=n))  # per-channel scale, 0.1 .. 1
    idx = rng.choice(n, size=outliers, replace=False)
    x[:, idx] *= 20.0
    return x


def hessian_from(x, n_seq):
    # llm-compressor: H = sum over tokens of 2 x x^T, divided by the number of sequences.
    return (2.0 * x.T @ x / n_seq).astype(np.float32)


def observe(w, qargs):
    obs = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=qargs)
    obs(w)
    qp = obs.get_qparams()
    return qp["scale"], qp["zero_point"]


def write_manifest(out, generator, function, cases, **more):
    """manifest.json of a generator of llm-compressor `function`'s golden cases."""
    manifest = {
        "generator": "scripts/" + generator,
        "reference": "llmcompressor 0.14.0.1 " + function + ", compressed-tensors 0.19.0, "
                     "torch " + torch.__version__,
        "cases": cases, **more,
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")


def print_total(out, cases):
    total = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
    print(f"{len(cases)} cases, {total} bytes in {out}")


def run_case(name, w, hname, args, blocksize, percdamp, dtype=torch.float32):
    h = HESSIANS[hname]
    qargs = QuantizationArgs(**args)
    wt = torch.from_numpy(w).to(dtype)
    scale, zp = observe(wt, qargs)
    q, losses, fallback = quantize_weight(
        weights=wt.to(torch.float32).unsqueeze(0).clone(),
        hessians=torch.from_numpy(h).unsqueeze(0).clone(),
        scale=scale.unsqueeze(0), zero_point=zp.unsqueeze(0), global_scale=None,
        quant_args=qargs, blocksize=blocksize, percdamp=percdamp)
    qw = q[0].to(dtype)  # the module's weight, in its dtype, as update_batch_qparams writes it
    # What the compressor stores: quantize() of that weight with the observer's qparams.
    codes = quantize(x=qw, scale=scale, zero_point=zp if not qargs.symmetric else None,
                     args=qargs, dtype=torch.int8)
    dw = (wt.to(torch.float64) - qw.to(torch.float64)).numpy()
    proxy = float(np.einsum("ij,jk,ik->", dw, h.astype(np.float64), dw))
    tensors = {
        "w": wt.to(torch.float32).contiguous(),
        "codes": codes.to(torch.int8).contiguous(),
        "scale": scale.to(torch.float32).contiguous(),
        "zero_point": zp.to(torch.int8).contiguous(),
    }
    meta = {
        "num_bits": str(args["num_bits"]), "symmetric": str(args["symmetric"]).lower(),
        "group_size": str(args.get("group_size") or -1),
        "actorder": str(args.get("actorder") or "none"),
        "dtype": {torch.float32: "F32", torch.bfloat16: "BF16"}[dtype],
        "block_size": str(blocksize), "dampening": repr(percdamp),
        "hessian": hname, "loss": repr(float(losses[0])), "proxy_loss": repr(proxy),
        "rtn_fallback": str(bool(fallback[0])).lower(),
    }
    save_file(tensors, os.path.join(OUT, name + ".safetensors"), metadata=meta)
    return {"name": name, **meta}


HESSIANS = {}


def add_hessian(name, h):
    HESSIANS[name] = h
    save_file({"h": torch.from_numpy(h).contiguous()}, os.path.join(OUT, name + ".safetensors"))
    return name


def tiny_llama(tmp):
    """A tiny random Llama (hidden 128, one layer, bf16, a WordLevel tokenizer built in place,
    no hub) saved in tmp/base, its tokenizer, and 8 random sequences of 16 tokens to calibrate
    on. Seeded: the same model and data every run."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, vocab_size=64,
                      max_position_embeddings=64)
    tk = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(64)}, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="w0", pad_token="w1")
    ids = torch.randint(0, 64, (8, 16))
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 16] * 8})
    base = os.path.join(tmp, "base")
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(base)
    tok.save_pretrained(base)
    return base, tok, ds


def oneshot_config(model_data, modifier, out, config_json):
    """oneshot with `modifier` on tiny_llama's (base, tokenizer, data), the model saved
    compressed in `out` and its quantization_config written to `config_json`."""
    from llmcompressor import oneshot
    from transformers import LlamaForCausalLM
    base, tok, ds = model_data
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    oneshot(model=model, dataset=ds, recipe=[modifier], num_calibration_samples=8,
            processor=tok, max_seq_length=16)
    model.save_pretrained(out, save_compressed=True)
    with open(os.path.join(out, "config.json")) as f:
        q = json.load(f)["quantization_config"]
    with open(config_json, "w") as f:
        json.dump(q, f, indent=2, sort_keys=True)
        f.write("\n")


def oneshot_configs():
    """GPTQModifier through oneshot on tiny_llama; keeps quantization_config."""
    import tempfile
    from llmcompressor.modifiers.gptq import GPTQModifier
    with tempfile.TemporaryDirectory() as tmp:
        model_data = tiny_llama(tmp)
        for name, kw in (("static", {}), ("none", {"actorder": None})):
            mod = GPTQModifier(scheme="W4A16", targets="Linear", ignore=["lm_head"], **kw)
            oneshot_config(model_data, mod, os.path.join(tmp, name),
                           os.path.join(OUT, f"oneshot_W4A16_{name}.json"))


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(19)
    cases, refused = [], []

    def weights(rows, cols):
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)

    def int_args(bits, group, sym=True, actorder="static"):
        a = {"num_bits": bits, "type": "int", "symmetric": sym,
             "strategy": "group" if group > 0 else "channel", "actorder": actorder}
        if group > 0:
            a["group_size"] = group
        return a

    x256 = activations(rng, 256, 1024)
    h256 = add_hessian("h256", hessian_from(x256, 8))
    x192 = activations(rng, 192, 768)
    h192 = add_hessian("h192", hessian_from(x192, 6))
    # W4A16 (int4 symmetric, group 128), every actorder; two blocks.
    for ao in ("static", "weight", None):
        cases.append(run_case(f"w4g128_{ao or 'none'}", weights(48, 256), h256,
                              int_args(4, 128, actorder=ao), 128, 0.01))
    # Group sizes that do not divide the block size, and a block smaller than a group.
    cases.append(run_case("w4g48_b128_static", weights(32, 192), h192,
                          int_args(4, 48), 128, 0.01))
    cases.append(run_case("w4g64_b80_none", weights(32, 192), h192,
                          int_args(4, 64, actorder=None), 80, 0.01))
    cases.append(run_case("w4g128_b64_static", weights(32, 256), h256,
                          int_args(4, 128), 64, 0.01))
    # W4A16_ASYM (asymmetric group 128) and asymmetric channel.
    cases.append(run_case("w4asym_g128_static", weights(40, 256), h256,
                          int_args(4, 128, sym=False), 128, 0.01))
    cases.append(run_case("w8asym_channel_none", weights(24, 192), h192,
                          int_args(8, -1, sym=False, actorder=None), 128, 0.01))
    # W8A8 / W8A16 weights: int8 channel and group 128.
    cases.append(run_case("w8_channel_static", weights(40, 192), h192,
                          int_args(8, -1), 128, 0.01))
    cases.append(run_case("w8g128_weight", weights(24, 256), h256,
                          int_args(8, 128, actorder="weight"), 128, 0.01))
    # BF16 weights (scales and the returned weight in bf16).
    cases.append(run_case("w4g64_bf16_static", weights(32, 192), h192,
                          int_args(4, 64), 128, 0.01, dtype=torch.bfloat16))
    # Ill-conditioned: rank 24 from 40 tokens over 128 channels (dampening keeps it definite).
    xl = activations(rng, 128, 40, outliers=2, rank=24)
    cases.append(run_case("w4g32_lowrank_static", weights(32, 128), add_hessian("h128_lowrank", hessian_from(xl, 1)),
                          int_args(4, 32), 128, 0.01))
    # Dead columns (channels that never fired): zeroed in W, H's diagonal set to 1.
    xd = activations(rng, 128, 512)
    xd[:, [0, 5, 64, 127]] = 0.0
    hd = add_hessian("h128_dead", hessian_from(xd, 4))
    cases.append(run_case("w4g64_dead_static", weights(32, 128), hd,
                          int_args(4, 64), 128, 0.01))
    cases.append(run_case("w4g64_dead_none_damp0.1", weights(32, 128), hd,
                          int_args(4, 64, actorder=None), 128, 0.1))
    # Singular and indefinite: Cholesky fails, the reference falls back to RTN.
    hs = hessian_from(activations(rng, 128, 512), 4)
    hs[3, 9] = hs[9, 3] = 10.0 * float(np.sqrt(hs[3, 3] * hs[9, 9])) + 1.0
    cases.append(run_case("w4g64_indefinite_rtn", weights(16, 128),
                          add_hessian("h128_indefinite", hs),
                          int_args(4, 64), 128, 0.01))
    # actorder=group: removed from compressed-tensors 0.19.0 (its QuantizationArgs refuses it).
    for ao in ("group", "dynamic"):
        try:
            QuantizationArgs(**int_args(4, 128, actorder=ao))
            refused.append({"actorder": ao, "message": None})
        except Exception as e:  # pydantic ValidationError
            msg = str(e)
            key = f"actorder='{ao}' has been removed"
            refused.append({"actorder": ao, "message": key if key in msg else msg})
    write_manifest(OUT, "make_golden_gptq.py",
                   "modifiers/gptq/gptq_quantize.py::quantize_weight", cases, refused=refused)
    oneshot_configs()
    print_total(OUT, cases)


if __name__ == "__main__":
    main()
