"""Helpers for the consumer suite: quench runs, the format's error bound, embeddings."""
import json
import os
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
QUENCH = Path(os.environ.get("QUENCH_BIN", ROOT / "build" / "quench"))
TINY_LLAMA = ROOT / "data" / "tiny-llama"

# The sentences embedded by both this suite and scripts/check_vllm.py, one per line.
SENTENCES = (ROOT / "tests" / "python" / "sentences.txt").read_text().splitlines()
# Fixed token ids for the tiny Llama (vocabulary 1024; it has no tokenizer).
LLAMA_IDS = [[1, 17, 301, 99, 512, 7, 880, 42, 3, 650, 128, 1000],
             [1, 5, 6, 7, 8, 9, 200, 300, 400, 500, 600, 700]]


def minilm_dir():
    d = os.environ.get("QUENCH_MINILM_DIR", "")
    if not d:
        raise RuntimeError("QUENCH_MINILM_DIR is not set: run tests through scripts/test")
    return Path(d)


def schemes():
    """(runnable data-free, refused without --stats) scheme names from `quench schemes`."""
    out = subprocess.run([str(QUENCH), "schemes"], check=True, capture_output=True,
                         text=True).stdout.splitlines()
    names = []
    for line in out[1:]:
        if not line.strip():
            break
        names.append(line.split()[0])
    refused = [l.split()[0] for l in out if "refused without it)" in l]
    return [n for n in names if n not in refused], refused


# data/tiny-llama's down_proj has 704 inputs, not a multiple of 128: the integer schemes
# grouped by 128 use groups of 64 there (704 = 11 x 64).
GROUPED_INT = {"W4A8", "W4A16", "W8A16", "W2A16", "W3A16", "W5A16", "W6A16", "W7A16",
               "W4A16_ASYM", "W4AFP8"}


def convert(src, dst, scheme):
    if (Path(dst) / "config.json").exists():
        return Path(dst)
    extra = ["--group-size", "64"] if Path(src) == TINY_LLAMA and scheme in GROUPED_INT else []
    subprocess.run([str(QUENCH), "convert", str(src), str(dst), "--scheme", scheme, "-q",
                    *extra], check=True)
    return Path(dst)


def load_tensors(folder):
    tensors = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def weights_args(folder):
    q = json.loads((Path(folder) / "config.json").read_text())["quantization_config"]
    (group,) = q["config_groups"].values()
    return group["weights"]


def _broadcast(scale, rows, cols, args):
    """A per-group scale [r, c] spread over the [rows, cols] weight it covers: blocks of
    block_structure, groups of group_size along the input, one per row (channel)."""
    r, c = scale.shape
    if args.get("block_structure"):
        br, bc = args["block_structure"]
    else:
        br, bc = (1 if r == rows else rows), (args.get("group_size") or cols)
    return (scale.repeat_interleave(br, 0)[:rows].repeat_interleave(bc, 1)[:, :cols])


def unpack_zero_point(packed, rows, bits):
    """compressed-tensors' zero points for packed asymmetric int: packed along dim 0,
    zp[(32/bits)*r + k, g] in bits [bits*k, bits*k+bits) of word [r, g], offset by 2^(bits-1)
    (format spec, 'Zero point'). bits divides 32 for the asymmetric presets."""
    per = 32 // bits
    words = packed.to(torch.int64) & 0xFFFFFFFF
    parts = [((words >> (bits * k)) & ((1 << bits) - 1)) for k in range(per)]
    zp = torch.stack(parts, 1).reshape(-1, packed.shape[1])[:rows]
    return zp.double() - 2 ** (bits - 1)


def error_bound(w, module, out, args):
    """Largest |w - dequantized| the format allows, per element, from its definition:
    half the grid step at w/scale (uniform for int, the element float format's spacing for
    FP8 E4M3 and FP4 E2M1), plus the distance clipped off beyond the grid's ends, plus the
    quotient's rounding to bf16 before the final rounding (relative 2^-8), all times the
    group's scale as stored."""
    w = w.double()
    rows, cols = w.shape
    s = out[module + ".weight_scale"]
    if s.dtype == torch.uint8:  # MX: E8M0 exponent
        s = torch.exp2(s.double() - 127)
    else:
        s = s.double()
    if module + ".weight_global_scale" in out:
        s = s / out[module + ".weight_global_scale"].double()
    s = _broadcast(s, rows, cols, args)
    x = w / torch.where(s == 0, torch.ones_like(s), s)
    if args["type"] == "int":
        qmax, qmin = 2 ** (args["num_bits"] - 1) - 1, -(2 ** (args["num_bits"] - 1))
        zp = torch.zeros_like(x)
        if not args["symmetric"]:
            zp = _broadcast(unpack_zero_point(out[module + ".weight_zero_point"], rows,
                                              args["num_bits"]), rows, cols, args)
        hi, lo = qmax - zp, qmin - zp
        # Asymmetric: the zero point is added to the bf16 quotient in bf16 before rounding,
        # one more rounding of relative 2^-8 of |x + zp|.
        half = 0.5 + ((x + zp).abs() * 2.0 ** -8 if not args["symmetric"] else 0)
        clip = torch.clamp(x - hi, min=0) + torch.clamp(lo - x, min=0)
    else:
        a = x.abs()
        if args["num_bits"] == 8:  # E4M3: 3 mantissa bits, exponents -6..8, max 448
            top = 448.0
            e = torch.floor(torch.log2(torch.clamp(a, min=2.0 ** -6)))
            half = torch.exp2(e - 3) / 2
        else:  # E2M1: 0, .5, 1, 1.5, 2, 3, 4, 6
            top = 6.0
            half = torch.where(a < 2, 0.25, torch.where(a < 4, 0.5, 1.0))
        clip = torch.clamp(a - top, min=0)
    bound = s * (half + clip) + w.abs() * 2.0 ** -8
    return torch.where(s == 0, w.abs(), bound)


def check_weights(src, deq, out, args):
    """Every quantized weight of `out` (as dequantized in `deq`) is within its bound of the
    source; every other tensor is the source's. Returns the largest error/bound ratio."""
    worst = 0.0
    for name, w in src.items():
        module, _, param = name.rpartition(".")
        if param != "weight":
            module = ""
        got = deq.get(name)
        if got is None:  # a model class without the head, or with its own prefix
            got = deq.get(name.removeprefix("model."))
        if got is None:
            continue
        if module + ".weight_scale" not in out:
            assert torch.equal(got.to(w.dtype), w), name
            continue
        bound = error_bound(w.float(), module, out, args)
        # A consumer that dequantizes in bf16 (bf16 sources, and compressed-tensors' FP4/MX
        # decoders whatever the source) rounds once more: its values are all bf16 values.
        if torch.equal(got.float().bfloat16().float(), got.float()):
            bound = bound + got.double().abs() * 2.0 ** -8
        err = (got.double() - w.double()).abs()
        ratio = (err / torch.clamp(bound, min=1e-30)).max().item()
        worst = max(worst, ratio)
        assert ratio <= 1.0, f"{name}: error {ratio:.3f} x the bound"
    return worst


def minilm_embeddings(model, folder):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(folder))
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state.float()
    m = enc["attention_mask"].unsqueeze(-1).float()
    e = (h * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(e, dim=-1)


def llama_embeddings(model):
    with torch.no_grad():
        h = model(input_ids=torch.tensor(LLAMA_IDS)).last_hidden_state.float()
    return torch.nn.functional.normalize(h.mean(1), dim=-1)


def min_cosine(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item()
