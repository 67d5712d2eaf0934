#!/usr/bin/env python3
"""Writes the importance-matrix fixtures of tests/test_import_imatrix.cc into data/imatrix/.

GGUF imatrix files are written with llama.cpp's own `gguf` Python package (pinned in
scripts/requirements-gguf.txt; this script builds a small venv for it on first use, at
$QUENCH_GGUF_VENV or <repo>/.venv-gguf), with the keys and tensors llama.cpp's
tools/imatrix/imatrix.cpp save_imatrix writes: general.type "imatrix", imatrix.datasets,
imatrix.chunk_count, imatrix.chunk_size, and per weight "<name>.in_sum2" [matrices, columns]
and "<name>.counts" [matrices, 1] (numpy order; ggml's ne is the reverse). Legacy .dat files
follow save_imatrix_legacy byte for byte. GGUF names come from gguf's own TensorNameMap
(convert_hf_to_gguf's table), applied to each model folder's checkpoint names, so quench's
mapping is checked against llama.cpp's, not against itself.

Each fixture comes with expected/<fixture>.json: the statistics quench must write (per site:
count and sum_x2 as float64, consumers, not_reached), computed here from the arrays this script
generated. Sites follow docs/statistics-format.md: weights reading one activation share a site
named after the first of them the model runs; per-expert sites are named after the experts
module and the projection; llama.cpp counts routed tokens (--moe routed).
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
REQ = os.path.join(HERE, "requirements-gguf.txt")
GGUF_PIN = next(l.split("==")[1].strip() for l in open(REQ) if l.startswith("gguf=="))


def ensure_venv():
    try:
        import gguf  # noqa: F401
        from importlib import metadata
        if metadata.version("gguf") == GGUF_PIN:
            return
    except ImportError:
        pass
    venv = os.environ.get("QUENCH_GGUF_VENV", os.path.join(REPO, ".venv-gguf"))
    py = os.path.join(venv, "bin", "python")
    if os.path.abspath(sys.executable) == os.path.abspath(py):
        raise SystemExit(f"{venv} does not hold gguf=={GGUF_PIN}")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", venv])
    subprocess.check_call([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "-r", REQ])
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


ensure_venv()

import numpy as np  # noqa: E402
import gguf  # noqa: E402
from gguf.constants import MODEL_ARCH  # noqa: E402

OUT = os.path.join(REPO, "data", "imatrix")
CHUNK = 512          # llama-imatrix's default -c
DATASETS = ["calibration_datav3.txt"]

# model_type -> llama.cpp architecture (Mixtral converts as llama)
ARCH = {"llama": MODEL_ARCH.LLAMA, "qwen3_moe": MODEL_ARCH.QWEN3MOE,
        "mixtral": MODEL_ARCH.LLAMA, "deepseek_v3": MODEL_ARCH.DEEPSEEK2}

# Which weights read one activation (docs/statistics-format.md: q/k/v share the attention
# input, gate/up the MLP input, the router and the shared experts the MoE input), by the
# llama.cpp tensor kinds, in the order a layer runs them.
GROUPS = [
    ["attn_q", "attn_k", "attn_v", "attn_q_a", "attn_kv_a_mqa"],
    ["attn_q_b"], ["attn_kv_b"], ["attn_output"],
    ["ffn_gate", "ffn_up"], ["ffn_down"],
    ["ffn_gate_inp", "ffn_gate_shexp", "ffn_up_shexp"], ["ffn_down_shexp"],
    ["ffn_gate_exps", "ffn_up_exps"], ["ffn_down_exps"],
]


def st_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def inventory(folder):
    inv = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            for k, v in st_header(os.path.join(folder, name)).items():
                inv[k] = v["shape"]
    return inv


def plan(folder):
    """{gguf weight name: info} for every 2-D weight llama.cpp's table maps."""
    cfg = json.load(open(os.path.join(folder, "config.json")))
    mtype = cfg["model_type"]
    inv = inventory(folder)
    n_layers = cfg["num_hidden_layers"]
    tmap = gguf.get_tensor_name_map(ARCH[mtype], n_layers)
    entries = {}
    for hf, shape in sorted(inv.items()):
        if len(shape) != 2 or not hf.endswith(".weight"):
            continue
        parts = hf.split(".")
        expert = None
        if "experts" in parts:  # convert_hf_to_gguf merges experts.E.x into one 3-D tensor
            i = parts.index("experts")
            if i + 1 < len(parts) and parts[i + 1].isdigit():
                expert = int(parts.pop(i + 1))
        name = tmap.get_name(".".join(parts), try_suffixes=(".weight",))
        if name is None or not (name.startswith("blk.") or name == "output.weight"):
            continue  # embeddings and norms: no matmul input
        kind = "output" if name == "output.weight" else name.split(".")[2]
        layer = None if name == "output.weight" else int(name.split(".")[1])
        e = entries.setdefault(name, {"kind": kind, "layer": layer, "cols": shape[1],
                                      "weights": {}, "experts": 0})
        assert e["cols"] == shape[1]
        e["weights"][hf] = expert
        if expert is not None:
            e["experts"] = max(e["experts"], expert + 1)
    return cfg, inv, entries


def site_of(entry, present):
    """(group key, site name) for an entry, given the kinds present in its layer."""
    if entry["kind"] == "output":
        return "output", "lm_head"
    layer = entry["layer"]
    for g in GROUPS:
        if entry["kind"] in g:
            if entry["kind"] in ("ffn_gate_exps", "ffn_up_exps"):
                return (layer, g[0]), f"model.layers.{layer}.mlp.experts.gate_proj"
            if entry["kind"] == "ffn_down_exps":
                return (layer, g[0]), f"model.layers.{layer}.mlp.experts.down_proj"
            first = next(k for k in g if (layer, k) in present)
            hf = sorted(present[(layer, first)]["weights"])[0]
            # the runtime module name (transformers 5 renames Mixtral's block_sparse_moe mlp)
            return (layer, g[0]), hf[: -len(".weight")].replace("block_sparse_moe", "mlp")
    raise KeyError(entry["kind"])


def make_data(entries, rng, zero_expert=None):
    """Per group: counts and sums (float32, as llama.cpp accumulates them), shared by the
    group's members as one activation feeds them all."""
    present = {(e["layer"], e["kind"]): e for e in entries.values()}
    data = {}
    for name, e in entries.items():
        key, site = site_of(e, present)
        if key not in data:
            mats = max(e["experts"], 1)
            if e["experts"]:
                counts = rng.integers(40, 900, size=mats)
                if zero_expert is not None:
                    counts[zero_expert] = 0  # an expert no token was routed to
            else:
                counts = np.array([3 * CHUNK])
            # sum = count * mean with the mean a multiple of 1/64: exact in float32
            means = rng.integers(1, 4000, size=(mats, e["cols"])) / 64.0
            sums = (means * counts[:, None]).astype(np.float32)
            assert np.array_equal(sums.astype(np.float64), means * counts[:, None])
            data[key] = {"site": site, "counts": counts, "sums": sums, "means": means}
        e["key"] = key
    return data


def expected(entries, data, inv, legacy_values=None):
    sites, consumers, weights = {}, {}, {}
    for name, e in sorted(entries.items()):
        d = data[e["key"]]
        if d["site"] not in sites:
            if legacy_values is None:
                counts, sums = d["counts"], d["sums"].astype(np.float64)
            else:
                ncall, vals = legacy_values[name]
                counts = np.full(len(d["counts"]), ncall * CHUNK)
                sums = vals.astype(np.float64) * CHUNK
            sites[d["site"]] = {
                "in_features": e["cols"], "experts": e["experts"] or None,
                "count": [int(c) for c in counts] if e["experts"] else int(counts[0]),
                "sum_x2": sums.reshape(-1).tolist() if e["experts"] else sums[0].tolist()}
        for hf, x in e["weights"].items():
            consumers[hf] = {"site": d["site"]} if x is None else {"site": d["site"], "expert": x}
            weights[hf] = inv[hf]
    return {"sites": sites, "consumers": consumers, "weights": weights}


def write_gguf(path, entries, data, extra=None, skip=(), chunk_count=3):
    w = gguf.GGUFWriter(path, arch="")
    w.kv_data[0].pop("general.architecture", None)  # imatrix.cpp writes no architecture
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", DATASETS)
    w.add_uint32("imatrix.chunk_count", chunk_count)
    w.add_uint32("imatrix.chunk_size", CHUNK)
    for name, e in sorted(entries.items()):
        if name in skip:
            continue
        d = data[e["key"]]
        w.add_tensor(f"{name}.in_sum2", d["sums"])
        w.add_tensor(f"{name}.counts", d["counts"].astype(np.float32).reshape(-1, 1))
    for name, arr in (extra or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def legacy_values(entries, data):
    """save_imatrix_legacy: value = sum / count * ncall, ncall = ceil(max count / chunk); an
    expert without data stores 1 (value 1, count 1)."""
    out = {}
    for name, e in entries.items():
        d = data[e["key"]]
        ncall = (int(d["counts"].max()) + CHUNK - 1) // CHUNK
        vals = np.empty_like(d["sums"])
        for m, c in enumerate(d["counts"]):
            v, cnt = (d["sums"][m], np.float32(c)) if c else (np.float32(1), np.float32(1))
            vals[m] = (v / cnt) * np.float32(ncall)
        out[name] = (ncall, vals)
    return out


def write_dat(path, values, last_chunk=3, dataset=DATASETS[0], nan_in=None):
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(values)))
        for name in sorted(values):
            ncall, vals = values[name]
            vals = vals.reshape(-1).copy()
            if name == nan_in:
                vals[1] = np.nan
            f.write(struct.pack("<i", len(name)) + name.encode())
            f.write(struct.pack("<ii", ncall, vals.size) + vals.astype("<f4").tobytes())
        f.write(struct.pack("<i", last_chunk))
        f.write(struct.pack("<i", len(dataset)) + dataset.encode())


def dump(name, obj, not_reached):
    obj = dict(obj)
    obj["not_reached"] = sorted(not_reached)
    os.makedirs(os.path.join(OUT, "expected"), exist_ok=True)
    with open(os.path.join(OUT, "expected", name + ".json"), "w") as f:
        json.dump(obj, f, indent=None, sort_keys=True)
        f.write("\n")


def write_tiny_deepseek(folder):
    """A tiny DeepSeek-V3 checkpoint with MLA attention (q_lora_rank set), one dense layer and
    one MoE layer with a shared expert; zero weights (only names and shapes are read)."""
    cfg = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
           "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32,
           "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
           "q_lora_rank": 32, "kv_lora_rank": 16, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
           "v_head_dim": 16, "n_routed_experts": 4, "n_shared_experts": 1,
           "num_experts_per_tok": 2, "first_k_dense_replace": 1, "vocab_size": 32,
           "torch_dtype": "bfloat16"}
    h, heads = 64, 2
    shapes = {"model.embed_tokens.weight": [32, h], "model.norm.weight": [h],
              "lm_head.weight": [32, h]}
    for l in range(2):
        p = f"model.layers.{l}."
        shapes.update({
            p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h],
            p + "self_attn.q_a_proj.weight": [32, h], p + "self_attn.q_a_layernorm.weight": [32],
            p + "self_attn.q_b_proj.weight": [heads * 24, 32],
            p + "self_attn.kv_a_proj_with_mqa.weight": [16 + 8, h],
            p + "self_attn.kv_a_layernorm.weight": [16],
            p + "self_attn.kv_b_proj.weight": [heads * 32, 16],
            p + "self_attn.o_proj.weight": [h, heads * 16]})
        if l == 0:
            shapes.update({p + "mlp.gate_proj.weight": [96, h], p + "mlp.up_proj.weight": [96, h],
                           p + "mlp.down_proj.weight": [h, 96]})
        else:
            shapes.update({p + "mlp.gate.weight": [4, h], p + "mlp.gate.e_score_correction_bias": [4]})
            for e in range(4):
                q = p + f"mlp.experts.{e}."
                shapes.update({q + "gate_proj.weight": [32, h], q + "up_proj.weight": [32, h],
                               q + "down_proj.weight": [h, 32]})
            q = p + "mlp.shared_experts."
            shapes.update({q + "gate_proj.weight": [32, h], q + "up_proj.weight": [32, h],
                           q + "down_proj.weight": [h, 32]})
    header, off = {}, 0
    for name in sorted(shapes):
        n = int(np.prod(shapes[name])) * 2
        header[name] = {"dtype": "BF16", "shape": shapes[name], "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + bytes(off))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def patch_version(src, dst, version):
    b = bytearray(open(src, "rb").read())
    b[4:8] = struct.pack("<I", version)
    open(dst, "wb").write(bytes(b))


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20261204)
    deepseek = os.path.join(OUT, "tiny-deepseek2")
    write_tiny_deepseek(deepseek)
    models = {
        "llama": (os.path.join(REPO, "data", "tiny-llama"), None),
        "qwen3moe": (os.path.join(REPO, "data", "golden", "xprune-2d", "src"), 5),
        "mixtral": (os.path.join(REPO, "data", "golden", "xprune-mixtral", "src"), 2),
        "deepseek2": (deepseek, None),
    }
    made = {}
    for tag, (folder, zero) in models.items():
        cfg, inv, entries = plan(folder)
        data = make_data(entries, rng, zero)
        extra = {}
        if tag == "deepseek2":
            # llama.cpp's absorbed MLA weights (per head, 3-D): no input in the checkpoint
            for l in range(2):
                for k in ("attn_k_b", "attn_v_b"):
                    extra[f"blk.{l}.{k}.weight.in_sum2"] = np.ones((1, 32), np.float32)
                    extra[f"blk.{l}.{k}.weight.counts"] = np.array([[1536]], np.float32)
        # Written without output.weight (llama-imatrix leaves it out unless --process-output)
        # for the MoE models, so lm_head is listed as not reached.
        skip = {"output.weight"} if tag != "llama" else set()
        write_gguf(os.path.join(OUT, f"{tag}.imatrix.gguf"), entries, data, extra, skip)
        kept = {n: e for n, e in entries.items() if n not in skip}
        not_reached = [hf for n in skip for hf in entries[n]["weights"]]
        exp = expected(kept, data, inv)
        dump(tag, exp, not_reached)
        made[tag] = (folder, entries, data, inv)
        if tag in ("llama", "qwen3moe"):
            vals = legacy_values(kept, data)
            write_dat(os.path.join(OUT, f"{tag}.imatrix.dat"), vals)
            dump(tag + "-dat", expected(kept, data, inv, vals), not_reached)

    # Malformed files, each refused with a message naming what is wrong.
    bad = os.path.join(OUT, "malformed")
    os.makedirs(bad, exist_ok=True)
    good = open(os.path.join(OUT, "llama.imatrix.gguf"), "rb").read()
    open(os.path.join(bad, "truncated-data.gguf"), "wb").write(good[: len(good) - 100])
    open(os.path.join(bad, "truncated-header.gguf"), "wb").write(good[:150])
    dat = open(os.path.join(OUT, "llama.imatrix.dat"), "rb").read()
    open(os.path.join(bad, "truncated.dat"), "wb").write(dat[: len(dat) // 2])
    patch_version(os.path.join(OUT, "llama.imatrix.gguf"), os.path.join(OUT, "llama-v2.imatrix.gguf"), 2)
    patch_version(os.path.join(OUT, "llama.imatrix.gguf"), os.path.join(bad, "version1.gguf"), 1)
    folder, entries, data, inv = made["llama"]
    q = "blk.0.attn_q.weight"
    variants = {
        "wrong-counts.gguf": ({f"{q}.counts": np.array([[1536], [1536]], np.float32)}, {q}, True),
        "unknown-tensor.gguf": ({"blk.0.attn_qkv.weight.in_sum2": np.ones((1, 256), np.float32),
                                 "blk.0.attn_qkv.weight.counts": np.ones((1, 1), np.float32)}, set(), False),
        "missing-layer.gguf": ({"blk.7.attn_q.weight.in_sum2": np.ones((1, 256), np.float32),
                                "blk.7.attn_q.weight.counts": np.ones((1, 1), np.float32)}, set(), False),
        "wrong-columns.gguf": ({f"{q}.in_sum2": np.ones((1, 100), np.float32),
                                f"{q}.counts": np.ones((1, 1), np.float32)}, {q}, False),
        "no-counts.gguf": ({f"{q}.in_sum2": data[entries[q]["key"]]["sums"]}, {q}, False),
    }
    k = "blk.0.attn_k.weight"  # reads q's input, so its counts must be q's
    variants["group-counts.gguf"] = ({f"{k}.in_sum2": data[entries[k]["key"]]["sums"],
                                      f"{k}.counts": np.array([[1000]], np.float32)}, {k}, False)
    nan = data[entries[q]["key"]]["sums"].copy()
    nan[0, 3] = np.nan
    variants["nan.gguf"] = ({f"{q}.in_sum2": nan, f"{q}.counts": np.array([[1536]], np.float32)}, {q}, False)
    for fname, (extra, skip, _) in variants.items():
        if fname == "wrong-counts.gguf":
            extra = dict(extra, **{f"{q}.in_sum2": data[entries[q]["key"]]["sums"]})
        write_gguf(os.path.join(bad, fname), entries, data, extra, skip)
    write_dat(os.path.join(bad, "nan.dat"), legacy_values(entries, data), nan_in=q)
    # qwen3moe experts file onto a model with another expert count: in_sum2 of 7 matrices
    folder, entries, data, inv = made["qwen3moe"]
    g = "blk.0.ffn_gate_exps.weight"
    d = data[entries[g]["key"]]
    write_gguf(os.path.join(bad, "experts-mismatch.gguf"), entries, data,
               {f"{g}.in_sum2": d["sums"][:7], f"{g}.counts": d["counts"][:7].astype(np.float32).reshape(-1, 1)},
               {g, "output.weight"})
    # a model file (general.type "model") passed by mistake
    w = gguf.GGUFWriter(os.path.join(bad, "model-type.gguf"), arch="llama")
    w.add_type("model")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote fixtures into {OUT} with gguf {gguf.__version__ if hasattr(gguf, '__version__') else GGUF_PIN}")


if __name__ == "__main__":
    main()
