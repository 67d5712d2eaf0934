#!/usr/bin/env python3
"""quench's activation-statistics collector.

Runs a Hugging Face model over calibration text and writes a statistics folder in the format
of docs/statistics-format.md (version 1): manifest.json + stats-00001.safetensors.
Usage: scripts/collect-stats MODEL_DIR --text FILE -o STATS [options]; see collector/README.md.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import inspect
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import time
import weakref

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kv_cache import recording_cache  # noqa: E402

COLLECTOR = "quench-collect 1"
FORMAT_VERSION = 1
VECTOR_FIELDS = ["count", "sum_x2", "sum_abs", "min", "max"]


def note(msg: str) -> None:
    print(f"collect-stats: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Text


def read_samples(path: str, fmt: str = "auto") -> list[str]:
    """Plain text: one sample per paragraph (blank-line separated), or one per line when the
    file has no blank line. JSONL (.jsonl/.json or fmt='jsonl'): one object a line, its 'text'."""
    with open(path, encoding="utf-8") as f:
        data = f.read()
    if fmt == "auto":
        fmt = "jsonl" if path.endswith((".jsonl", ".json")) else "text"
    if fmt == "jsonl":
        out = []
        for i, line in enumerate(data.splitlines()):
            if not line.strip():
                continue
            obj = json.loads(line)
            text = obj.get("text") if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise SystemExit(f"{path}:{i + 1}: no string 'text' field")
            if text.strip():
                out.append(text)
        return out
    text = data.replace("\r\n", "\n").strip("\n")
    if re.search(r"\n[ \t]*\n", text):
        parts = re.split(r"\n[ \t]*\n", text)
    else:
        parts = text.split("\n")
    return [p.strip() for p in parts if p.strip()]


def tokenize(tokenizer, samples: list[str], seq_len: int) -> list[list[int]]:
    seqs = []
    for s in samples:
        ids = tokenizer(s, add_special_tokens=True, truncation=True, max_length=seq_len)["input_ids"]
        if ids:
            seqs.append(list(ids))
    return seqs


def make_batches(seqs: list[list[int]], batch_size: int, pad_id: int, sort: bool = True):
    """Right-padded batches (input_ids, attention_mask). Sorting by length only cuts padding:
    padding is excluded, so the statistics do not depend on how sequences are batched."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i])) if sort else list(range(len(seqs)))
    batches = []
    for b in range(0, len(order), batch_size):
        group = [seqs[i] for i in order[b:b + batch_size]]
        t = max(len(s) for s in group)
        ids = torch.full((len(group), t), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), t), dtype=torch.long)
        for r, s in enumerate(group):
            ids[r, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[r, :len(s)] = 1
        batches.append((ids, mask))
    return batches


# --------------------------------------------------------------------------------------------
# Accumulators


class Site:
    """Statistics of one input site: sums in float64 on the device, per-batch work in float32."""

    def __init__(self, name: str, n: int, experts: int | None, device, hessian: str):
        self.name, self.n, self.experts = name, n, experts
        lead = () if experts is None else (experts,)
        f64 = dict(dtype=torch.float64, device=device)
        self.count = torch.zeros(lead, dtype=torch.int64, device=device)
        self.sum_x2 = torch.zeros(lead + (n,), **f64)
        self.sum_abs = torch.zeros(lead + (n,), **f64)
        self.min = torch.full(lead + (n,), float("inf"), dtype=torch.float32, device=device)
        self.max = torch.full(lead + (n,), float("-inf"), dtype=torch.float32, device=device)
        self.hessian = None
        self.block = None
        block = parse_hessian(hessian)
        if hessian == "full":
            self.hessian = torch.zeros(lead + (n, n), **f64)
        elif block:
            if n % block == 0:
                self.block = block
                self.hessian = torch.zeros(lead + (n // block, block, block), **f64)
            else:
                note(f"site {name}: {n} features is not a multiple of {block}; no hessian_blk{block}")

    def add(self, x: torch.Tensor, e: int | None = None) -> None:
        """x: [tokens, n] rows to count (padding already removed)."""
        t = x.shape[0]
        if t == 0:
            return
        x = x.float()
        idx = () if e is None else (e,)
        self.count[idx] += t
        self.sum_x2[idx] += (x * x).sum(0).double()
        self.sum_abs[idx] += x.abs().sum(0).double()
        # amin/amax: on CPU, torch.aminmax over dim 0 is ~10x slower than the two of them
        torch.minimum(self.min[idx], x.amin(0), out=self.min[idx])
        torch.maximum(self.max[idx], x.amax(0), out=self.max[idx])
        if self.hessian is not None:
            if self.block is None:
                self.hessian[idx] += (x.T @ x).double()
            else:
                xb = x.reshape(t, self.n // self.block, self.block).transpose(0, 1)  # [nb, t, B]
                self.hessian[idx] += torch.bmm(xb.transpose(1, 2), xb).double()

    def fields(self) -> list[str]:
        f = list(VECTOR_FIELDS)
        if self.hessian is not None:
            f.append("hessian" if self.block is None else f"hessian_blk{self.block}")
        return f

    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            "count": self.count.cpu().numpy().astype(np.int64),
            "sum_x2": self.sum_x2.cpu().numpy(),
            "sum_abs": self.sum_abs.cpu().numpy(),
            "min": self.min.cpu().numpy(),
            "max": self.max.cpu().numpy(),
        }
        if self.hessian is not None:
            h = self.hessian.cpu().numpy()
            if self.block is None:
                out["hessian"] = pack_upper(h)
            else:
                out[f"hessian_blk{self.block}"] = h
        # (np.ascontiguousarray would turn the 0-d count into shape [1])
        return {f"{self.name}.{k}": np.array(v, order="C", copy=None) for k, v in out.items()}


class Reap:
    """REAP saliency of one MoE layer's experts (llm-compressor 0.14.0.1's REAPSaliencyTracker,
    modifiers/pruning/reap/utils.py): per expert, over the (token, slot) pairs routed to it,
    the sum of the router weight the experts module multiplies its output by (`top_k_weights`,
    as given: Qwen3-MoE's softmax -> top-k -> renormalised when norm_topk_prob, in the model's
    dtype) times the L2 norm of the expert's output (before that weight; the norm taken in
    float32 as `torch.linalg.norm(output.float(), dim=-1)`), products and sums in float64;
    and how many pairs that was. Saliency = sum / max(count, 1), as the reference's
    mean_saliency."""

    def __init__(self, name: str, experts: int, device):
        self.name, self.experts = name, experts
        self.router = None  # module name of the router beside the experts, set by the collector
        self.sum = torch.zeros(experts, dtype=torch.float64, device=device)
        self.count = torch.zeros(experts, dtype=torch.int64, device=device)

    def add(self, e: int, weights: torch.Tensor, out: torch.Tensor) -> None:
        """weights [t] and expert e's outputs [t, hidden] for the t pairs routed to it."""
        if weights.numel() == 0:
            return
        norms = torch.linalg.norm(out.float(), dim=-1)
        self.sum[e] += (weights.double() * norms.double()).sum()
        self.count[e] += weights.numel()

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"{self.name}.reap_count": self.count.cpu().numpy().astype(np.int64),
                f"{self.name}.reap_sum": self.sum.cpu().numpy()}


def parse_hessian(spec: str) -> int | None:
    """'none' | 'full' | 'block<B>' -> B for a block spec, else None; ValueError otherwise."""
    m = re.fullmatch(r"none|full|block(\d+)", spec)
    if not m or (m.group(1) is not None and int(m.group(1)) <= 0):
        raise ValueError(f"hessian: none, full or block<B> (e.g. block128), not {spec!r}")
    return int(m.group(1)) if m.group(1) else None


def pack_upper(h: np.ndarray) -> np.ndarray:
    """Upper triangle (i <= j) row by row, over the last two dims; no index arrays (n^2 memory)."""
    n = h.shape[-1]
    out = np.empty(h.shape[:-2] + (n * (n + 1) // 2,), dtype=h.dtype)
    pos = 0
    for i in range(n):
        out[..., pos:pos + n - i] = h[..., i, i:]
        pos += n - i
    return out


# --------------------------------------------------------------------------------------------
# Which modules read which tensor


def is_fused_experts(mod: nn.Module) -> bool:
    p = dict(mod.named_parameters(recurse=False))
    return "gate_up_proj" in p and "down_proj" in p and p["gate_up_proj"].dim() == 3


def linear_in_features(mod: nn.Module) -> int | None:
    """Input features of a module that multiplies its input by a 2-D weight: nn.Linear,
    transformers' Conv1D ([in, out]) and routers that keep a 2-D `weight` (e.g. Qwen3-MoE's
    TopKRouter, DeepSeek-V3's TopkRouter). None for everything else."""
    if isinstance(mod, nn.Linear):
        return mod.in_features
    if type(mod).__name__ == "Conv1D" and hasattr(mod, "nf"):
        return mod.weight.shape[0]
    if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)) or is_fused_experts(mod):
        return None
    w = mod._parameters.get("weight")
    if isinstance(w, torch.Tensor) and w.dim() == 2 and re.search(r"router|gate", type(mod).__name__, re.I):
        return w.shape[1]
    return None


class Collector:
    """Forward pre-hooks on every linear-like module and fused 3-D expert module.

    Sites are discovered as the model runs: a module whose input is a tensor that an earlier
    module of the same forward already read (same storage pointer, size and dtype, and that
    tensor still alive) shares that module's site. Once assigned, a module keeps its role."""

    def __init__(self, model: nn.Module, device, moe: str, hessian: str, hessian_experts: str | None = None,
                 reap: bool = False, modules: set[str] | None = None):
        """`modules`: hook only these module names (the sequential mode's one layer); None: all."""
        self.model, self.device, self.moe = model, device, moe
        self.reap: dict[str, Reap] | None = {} if reap else None  # MoE block module name -> Reap
        self.hessian = hessian
        self.hessian_experts = hessian if hessian_experts is None else hessian_experts
        self.sites: dict[str, Site] = {}
        self.role: dict[str, tuple] = {}  # module name -> ("primary"|"shared", site name)
        self.expert_modules: dict[str, nn.Module] = {}
        self.live: dict[tuple, tuple] = {}
        self.mask_flat = None  # bool [B*T], rows to count
        self.all_rows = True
        self.bt = (0, 0)
        self.handles = []
        self.unaligned: set[str] = set()
        self.top_k = None
        for name, mod in model.named_modules():
            if modules is not None and name not in modules:
                continue
            if is_fused_experts(mod):
                self.expert_modules[name] = mod
                self.handles.append(mod.register_forward_pre_hook(self._experts_hook(name), with_kwargs=True))
            elif linear_in_features(mod) is not None:
                self.handles.append(mod.register_forward_pre_hook(self._linear_hook(name), with_kwargs=True))

    def close(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    # ---- per batch

    def begin(self, count_mask: torch.Tensor) -> None:
        b, t = count_mask.shape
        self.bt = (b, t)
        self.mask_flat = count_mask.reshape(-1).to(self.device, torch.bool)
        self.all_rows = bool(self.mask_flat.all())
        self.live = {}

    def rows(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """[rows, n] with padding removed when the rows are the batch's tokens."""
        n = x.shape[-1]
        x2 = x.reshape(-1, n)
        b, t = self.bt
        if x2.shape[0] == b * t:
            return x2 if self.all_rows else x2[self.mask_flat]
        if x2.shape[0] != b and name not in self.unaligned:  # b rows: one per sequence (a pooler)
            self.unaligned.add(name)
            note(f"{name}: input has {x2.shape[0]} rows for a {b}x{t} batch; all rows counted")
        return x2

    def _site(self, name, n, experts=None) -> Site:
        if name not in self.sites:
            h = self.hessian if experts is None else self.hessian_experts
            self.sites[name] = Site(name, n, experts, self.device, h)
        return self.sites[name]

    def _key(self, x: torch.Tensor):
        return (x.data_ptr(), x.numel(), x.shape[-1], x.dtype)

    def _shared_with(self, x: torch.Tensor) -> str | None:
        hit = self.live.get(self._key(x))
        if hit is not None and hit[0]() is not None:
            return hit[1]
        return None

    def _remember(self, x: torch.Tensor, site: str) -> None:
        self.live[self._key(x)] = (weakref.ref(x), site)

    @staticmethod
    def _first_arg(args, kwargs, names=("input", "hidden_states", "x")):
        if args:
            return args[0]
        for k in names:
            if k in kwargs:
                return kwargs[k]
        return None

    def _linear_hook(self, name):
        def hook(mod, args, kwargs):
            x = self._first_arg(args, kwargs)
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                return
            role = self.role.get(name)
            if role is None:
                if x.shape[-1] != linear_in_features(mod):
                    return
                shared = self._shared_with(x)
                role = ("shared", shared) if shared else ("primary", name)
                self.role[name] = role
            if role[0] == "shared":
                return
            self._remember(x, name)
            self._site(name, x.shape[-1]).add(self.rows(name, x))
        return hook

    def _experts_hook(self, name):
        def hook(mod, args, kwargs):
            names = ["hidden_states", "top_k_index", "top_k_weights"]
            vals = list(args) + [kwargs.get(k) for k in names[len(args):]]
            x, top_k, weights = vals[0], vals[1], vals[2]
            if not isinstance(top_k, torch.Tensor):
                raise RuntimeError(f"{name}: experts called without top_k_index; unsupported experts module")
            if self.reap is not None and not isinstance(weights, torch.Tensor):
                raise RuntimeError(f"{name}: experts called without top_k_weights; --reap cannot weight them")
            self._experts(name, mod, x, top_k, weights)
        return hook

    def _experts(self, name, mod, x, top_k, weights=None):
        n = x.shape[-1]
        n_exp = mod.gate_up_proj.shape[0]
        k = top_k.shape[-1]
        self.top_k = k
        x2 = x.reshape(-1, n)
        top_k = top_k.reshape(-1, k)
        if weights is not None:
            weights = weights.reshape(-1, k)
        b, t = self.bt
        if x2.shape[0] == b * t and not self.all_rows:
            x2, top_k = x2[self.mask_flat], top_k[self.mask_flat]
            if weights is not None:
                weights = weights[self.mask_flat]
        gu_w, dn_w = mod.gate_up_proj, mod.down_proj
        gu_b = getattr(mod, "gate_up_proj_bias", None)
        transposed = getattr(mod, "is_transposed", False)
        inter = dn_w.shape[-1] if not transposed else dn_w.shape[-2]

        def down_input(xe, e):
            w = gu_w[e].T if transposed else gu_w[e]
            out = nn.functional.linear(xe, w, None if gu_b is None else gu_b[e])
            if hasattr(mod, "_apply_gate"):
                return mod._apply_gate(out)
            gate, up = out.chunk(2, dim=-1)
            return mod.act_fn(gate) * up

        dn_b = getattr(mod, "down_proj_bias", None)

        def expert_output(h, e):
            w = dn_w[e].T if transposed else dn_w[e]
            return nn.functional.linear(h, w, None if dn_b is None else dn_b[e])

        reap = None
        if self.reap is not None:
            block = name.rsplit(".", 1)[0] if "." in name else ""
            reap = self.reap.get(block)
            if reap is None:
                reap = self.reap[block] = Reap(block, n_exp, self.device)
                parent = self.model.get_submodule(block)
                # the reference's ROUTER_ATTRS, in its order
                reap.router = next((f"{block}.{a}" if block else a for a in ("router", "gate")
                                    if isinstance(getattr(parent, a, None), nn.Module)), None)
        flat = top_k.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=n_exp).tolist()
        pairs = torch.split(order, counts)  # per expert: flat (token, slot) positions routed to it

        role = self.role.get(name)
        if self.moe == "all":
            if role is None:
                shared = self._shared_with(x) or self._shared_with(x2)
                role = ("all", shared or f"{name}.gate_proj")
                self.role[name] = role
            if role[1] == f"{name}.gate_proj":  # no earlier hooked module reads this input
                self._site(role[1], n).add(x2)
            down = self._site(f"{name}.down_proj", inter, n_exp)
            for e in range(n_exp):
                down.add(down_input(x2, e), e)
            if reap is not None:  # the expert's output on its routed tokens only
                for e in range(n_exp):
                    if counts[e]:
                        h = down_input(x2[pairs[e] // k], e)
                        reap.add(e, weights.reshape(-1)[pairs[e]], expert_output(h, e))
        else:
            self.role[name] = ("routed", f"{name}.gate_proj")
            gu = self._site(f"{name}.gate_proj", n, n_exp)
            down = self._site(f"{name}.down_proj", inter, n_exp)
            for e in range(n_exp):
                if counts[e] == 0:
                    continue
                xe = x2[pairs[e] // k]
                gu.add(xe, e)
                h = down_input(xe, e)
                down.add(h, e)
                if reap is not None:
                    reap.add(e, weights.reshape(-1)[pairs[e]], expert_output(h, e))


# --------------------------------------------------------------------------------------------
# Weight names as quench plans them


def checkpoint_inventory(model_dir: str, hidden: int | None) -> dict[str, list[int]]:
    """Tensor names and shapes of the folder's safetensors files, with fused 3-D experts split
    per expert as model_free_ptq (and src/format/model_folder.cc SplitFusedExperts) split them."""
    inv: dict[str, list[int]] = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "*.safetensors"))):
        with open(path, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(size))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            shape = list(info["shape"])
            gu, dn = "gate_up_proj" in name, "down_proj" in name
            if gu != dn and len(shape) == 3:
                e_count, a, b = shape
                transposed = hidden is not None and ((a == hidden and b != hidden) if gu else (b == hidden and a != hidden))
                parts = 2 if gu else 1
                if not transposed and a % parts == 0:
                    for e in range(e_count):
                        for p in (["gate_proj", "up_proj"] if gu else ["down_proj"]):
                            piece = name.replace("gate_up_proj" if gu else "down_proj", f"{e}.{p}")
                            if not piece.endswith(".weight"):
                                piece += ".weight"
                            inv[piece] = [a // parts, b]
                    continue
            inv[name] = shape
    return inv


def reverted_names(model, pname: str, kind: str, n_exp: int = 0) -> dict[tuple, str] | None:
    """Checkpoint names of a model parameter, by running transformers' own save-time reversal of
    its load-time conversions (renames, expert fusion) on a tiny tagged tensor.
    kind 'linear' -> {(None, None): name}; 'gate_up' -> {(e, 'gate'|'up'): name};
    'down' -> {(e, 'down'): name}. None when the parameter is stored as it is loaded."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
        if kind == "linear":
            fake = torch.zeros(1, 1)
        elif kind == "gate_up":
            fake = torch.arange(2 * n_exp, dtype=torch.float32).view(n_exp, 2, 1)
        else:
            fake = torch.arange(n_exp, dtype=torch.float32).view(n_exp, 1, 1)
        out = revert_weight_conversion(model, {pname: fake})
    except Exception as exc:  # noqa: BLE001 - fall back to the format's naming rule
        note(f"cannot revert the checkpoint name of {pname} ({exc}); using the module name")
        return None
    if list(out) == [pname]:
        return None
    if kind == "linear":
        return {(None, None): next(iter(out))} if len(out) == 1 else None
    res = {}
    for key, t in out.items():
        t = t[0] if isinstance(t, list) else t
        if t.numel() != 1:
            return None
        v = int(t.reshape(-1)[0].item())
        res[(v // 2, "gate" if v % 2 == 0 else "up") if kind == "gate_up" else (v, "down")] = key
    return res


def consumer_names(model, inv: dict[str, list[int]], pname: str, kind: str, n_exp: int = 0):
    """{(expert, part): checkpoint weight name} for the weights of one module."""
    if kind == "linear":
        rule = {(None, None): pname}
    else:
        base = pname.rsplit(".", 1)[0]
        parts = ["gate", "up"] if kind == "gate_up" else ["down"]
        rule = {(e, p): f"{base}.{e}.{p}_proj.weight" for e in range(n_exp) for p in parts}
    rev = reverted_names(model, pname, kind, n_exp) or {}
    prefix = getattr(model, "base_model_prefix", "") or ""
    out = {}
    for key, name in rule.items():
        cands = [rev.get(key), name]
        if prefix:
            cands += [f"{prefix}.{name}", name[len(prefix) + 1:] if name.startswith(prefix + ".") else None]
        hit = next((c for c in cands if c and c in inv), None)
        out[key] = hit
    return out


# --------------------------------------------------------------------------------------------
# Model


def load_model(model_dir: str, device: str, dtype_opt: str):
    import transformers
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(model_dir)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        cls = transformers.AutoModel
    if dtype_opt == "auto":
        dtype = torch.float32 if device == "cpu" else "auto"
    else:
        dtype = getattr(torch, dtype_opt)
    model = cls.from_pretrained(model_dir, dtype=dtype)
    model.to(device).eval()
    return model, config


def runner(model):
    """(module to run, lm_head or None): the decoder body is run on its own and the LM head's
    input (the body's last hidden state) is recorded without computing the logits."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    base = getattr(model, "base_model", model)
    if isinstance(head, nn.Linear) and base is not model:
        return base, head
    return model, None


def forward(body, ids, mask, cache=None):
    params = inspect.signature(body.forward).parameters
    kw = dict(input_ids=ids, attention_mask=mask)
    if cache is not None:  # --kv-cache: keys and values recorded as they enter the cache
        kw.update(use_cache=True, past_key_values=cache)
    elif "use_cache" in params:
        kw["use_cache"] = False
    return body(**kw)


def last_hidden(out):
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0]


def begin_batch(col, ids, mask, device, exclude_bos):
    """Moves a batch to `device` and begins it in collector `col`, each sequence's first token
    left uncounted with `exclude_bos`; returns (ids, mask, count_mask)."""
    ids, mask = ids.to(device), mask.to(device)
    count_mask = mask.clone()
    if exclude_bos:
        count_mask[:, 0] = 0
    col.begin(count_mask)
    return ids, mask, count_mask


def collect(model, batches, device, moe="all", hessian="none", hessian_experts=None, exclude_bos=False,
            reap=False, kv=False):
    """Runs every batch with hooks; returns (collector, tokens counted, sequences). With `kv`,
    also the key/value ranges at each attention layer's cache update (kv_cache.py)."""
    body, head = runner(model)
    col = Collector(model, device, moe, hessian, hessian_experts, reap)
    head_name = next((n for n, m in model.named_modules() if m is head), None)
    head_hook = col._linear_hook(head_name) if head is not None else None
    tokens = sequences = 0
    try:
        with torch.inference_mode():
            for ids, mask in batches:
                ids, mask, count_mask = begin_batch(col, ids, mask, device, exclude_bos)
                out = forward(body, ids, mask, recording_cache(model, col) if kv else None)
                if head is not None:
                    h = last_hidden(out)
                    head_hook(head, (h,), {})
                tokens += int(count_mask.sum())
                sequences += ids.shape[0]
    finally:
        col.close()
    return col, tokens, sequences


def bos_first(tokenizer, seqs) -> bool:
    """True when every sequence starts with the tokenizer's BOS (or CLS) token."""
    cands = {i for i in (tokenizer.bos_token_id, getattr(tokenizer, "cls_token_id", None)) if i is not None}
    return bool(seqs) and bool(cands) and all(s[0] in cands for s in seqs)


def build_manifest(model, config_path, inv, col, args_info) -> dict:
    weights, consumers, not_reached = {}, {}, []
    for name, mod in model.named_modules():
        role = col.role.get(name)
        if name in col.expert_modules:
            n_exp = mod.gate_up_proj.shape[0]
            gu = consumer_names(model, inv, f"{name}.gate_up_proj", "gate_up", n_exp)
            dn = consumer_names(model, inv, f"{name}.down_proj", "down", n_exp)
            for (e, p), w in list(gu.items()) + list(dn.items()):
                if w is None:
                    continue
                if role is None:
                    not_reached.append(w)
                    continue
                weights[w] = inv[w]
                if p == "down":
                    consumers[w] = {"site": f"{name}.down_proj", "expert": e}
                elif role[0] == "all":
                    consumers[w] = {"site": role[1]}
                else:
                    consumers[w] = {"site": f"{name}.gate_proj", "expert": e}
            continue
        if linear_in_features(mod) is None:
            continue
        w = consumer_names(model, inv, f"{name}.weight", "linear")[(None, None)]
        if w is None:
            note(f"{name}.weight is not a tensor of the checkpoint (tied or generated); not listed")
            continue
        if role is None:
            not_reached.append(w)
            continue
        weights[w] = inv[w]
        consumers[w] = {"site": role[1]}
    with open(config_path, "rb") as f:
        config_sha = hashlib.sha256(f.read()).hexdigest()
    cfg = model.config
    sites = {}
    for s in col.sites.values():
        sites[s.name] = {"file": "stats-00001.safetensors", "in_features": s.n,
                         "experts": s.experts, "fields": s.fields()}
    collection = dict(args_info)
    if col.top_k is not None:
        collection["top_k"] = col.top_k
    manifest = {
        "format": "quench-stats",
        "version": FORMAT_VERSION,
        "model": {
            "architectures": list(getattr(cfg, "architectures", None) or []),
            "model_type": cfg.model_type,
            "config_sha256": config_sha,
            "weights": dict(sorted(weights.items())),
        },
        "collection": collection,
        "files": ["stats-00001.safetensors"],
        "sites": sites,
        "consumers": dict(sorted(consumers.items())),
    }
    if col.reap is not None:
        reap = {}
        for r in col.reap.values():
            router = None
            if r.router is not None:
                router = consumer_names(model, inv, f"{r.router}.weight", "linear")[(None, None)]
            if router is None:
                raise SystemExit(f"--reap: MoE block {r.name} has no router weight in the checkpoint "
                                 "(looked for its 'router' or 'gate' module)")
            reap[r.name] = {"file": "stats-00001.safetensors", "router": router, "experts": r.experts}
        manifest["reap"] = reap
    if not_reached:
        manifest["not_reached"] = sorted(not_reached)
    return manifest


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_stats(out_dir: str, manifest: dict, col: Collector) -> None:
    """Writes the statistics folder so that it never looks complete when it is not (quench
    opens a folder by its manifest.json): both files are written and synced in a folder beside
    them; an earlier manifest.json in OUT is removed before anything of it is replaced (a run
    killed between the two replaces below once left the old manifest vouching for the new
    arrays); the arrays are moved in, then the manifest, last."""
    from safetensors.numpy import save_file
    os.makedirs(out_dir, exist_ok=True)
    arrays = {}
    for s in col.sites.values():
        arrays.update(s.arrays())
    for r in (col.reap or {}).values():
        arrays.update(r.arrays())
    stage = tempfile.mkdtemp(prefix=".collect-", dir=out_dir)
    try:
        umask = os.umask(0)
        os.umask(umask)
        data = os.path.join(stage, "stats-00001.safetensors")
        save_file(arrays, data)
        with open(data, "rb+") as f:
            os.fsync(f.fileno())
        man = os.path.join(stage, "manifest.json")
        with open(man, "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        for path in (data, man):
            os.chmod(path, 0o666 & ~umask)  # as a plain open() makes it (mkstemp's are 0600)
        old = os.path.join(out_dir, "manifest.json")
        if os.path.exists(old):
            os.remove(old)
            _fsync_dir(out_dir)
        os.replace(data, os.path.join(out_dir, "stats-00001.safetensors"))
        _fsync_dir(out_dir)  # the arrays in place before the manifest that names them
        os.replace(man, old)
        _fsync_dir(out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def version(pkg: str) -> str:
    from importlib import metadata
    return metadata.version(pkg).split("+")[0]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="collect-stats", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", metavar="MODEL_DIR", help="Hugging Face model folder")
    p.add_argument("--text", required=True, help="calibration text: plain text (one sample per "
                   "paragraph, or per line if no blank line) or JSONL with a 'text' field")
    p.add_argument("--text-format", choices=["auto", "text", "jsonl"], default="auto")
    p.add_argument("-o", "--output", required=True, help="statistics folder to write")
    p.add_argument("--samples", type=int, default=512, help="first N samples of the text (default 512)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per sample, truncated (default 2048)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward (default 8)")
    p.add_argument("--hessian", default="none", help="none | full | block<B> (block128: diagonal 128x128 blocks)")
    p.add_argument("--hessian-experts", help="the same for per-expert sites (experts' down input; gate/up "
                   "under --moe routed); default: as --hessian")
    p.add_argument("--moe", choices=["all", "routed"], default="all",
                   help="all: every expert sees every token (llm-compressor); routed: routed tokens only (llama.cpp)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    p.add_argument("--dtype", default="auto", help="auto (float32 on CPU, the checkpoint's dtype on GPU), "
                   "float32, bfloat16, float16")
    p.add_argument("--kv-cache", action="store_true",
                   help="also record each attention layer's key and value ranges as they enter the "
                        "KV cache (sites <attention>.k_cache / .v_cache), for FP8 KV-cache scales")
    p.add_argument("--exclude-bos", action="store_true", help="feed BOS but leave it out of the statistics")
    p.add_argument("--reap", action="store_true", help="MoE models: also record each expert's REAP saliency "
                   "(router weight times expert output norm, over its routed tokens) for "
                   "quench convert --prune-experts F --expert-metric reap")
    p.add_argument("--dataset", help="dataset description for the manifest (default: the text file's name)")
    p.add_argument("--sequential", action="store_true",
                   help="layer by layer, each layer's sites recorded with the earlier layers quantized by "
                        "`quench convert MODEL_DIR OUT <arguments after -->` (llm-compressor's sequential "
                        "pipeline); see collector/README.md")
    p.add_argument("--quench", help="--sequential: the quench binary (default: $QUENCH_BIN, else the "
                   "repository's build/quench, else quench on PATH)")
    if argv is None:
        argv = sys.argv[1:]
    argv = list(argv)
    quench_args = []
    if "--" in argv:
        cut = argv.index("--")
        argv, quench_args = argv[:cut], argv[cut + 1:]
    args = p.parse_args(argv)
    args.quench_args = quench_args
    if args.sequential:
        if not quench_args:
            p.error("--sequential needs quench's convert options after --, e.g. -- --scheme W4A16 "
                    "--algorithm gptq")
        if args.kv_cache or args.reap:
            p.error("--sequential records weight sites only (no --kv-cache, --reap)")
        if args.quench is None:
            built = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build", "quench")
            args.quench = os.environ.get("QUENCH_BIN") or (built if os.access(built, os.X_OK) else "quench")
    elif quench_args or args.quench:
        p.error("--quench and options after -- go with --sequential")
    if args.hessian_experts is None:
        args.hessian_experts = args.hessian
    for opt in ("hessian", "hessian_experts"):
        try:
            parse_hessian(getattr(args, opt))
        except ValueError as exc:
            p.error(f"--{opt.replace('_', '-')}: {exc}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers import AutoTokenizer
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    samples = read_samples(args.text, args.text_format)[: args.samples]
    if not samples:
        raise SystemExit(f"{args.text}: no samples")
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    seqs = tokenize(tok, samples, args.seq_len)
    pad = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)
    batches = make_batches(seqs, args.batch_size, pad)
    model, config = load_model(args.model_dir, device, args.dtype)
    hidden = getattr(config, "hidden_size", None) or getattr(getattr(config, "text_config", None), "hidden_size", None)
    inv = checkpoint_inventory(args.model_dir, hidden)
    bos = bos_first(tok, seqs) and not args.exclude_bos

    def make_info(tokens, sequences):
        return {
            "collector": COLLECTOR,
            "dataset": args.dataset or os.path.basename(args.text),
            "samples": len(samples), "seq_len": args.seq_len, "tokens": tokens, "sequences": sequences,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "device": device,
            "bos_counted": bos, "padding_excluded": True,
            "moe": args.moe, "hessian": args.hessian,
            "torch": version("torch"), "transformers": version("transformers"),
        }
    if args.sequential:
        import sequential
        quench_version = sequential.quench_version(args.quench)  # before any work
        col, tokens, sequences, stages = sequential.collect_sequential(
            model, args.model_dir, inv, batches, device, args, args.quench_args, make_info)
    else:
        col, tokens, sequences = collect(model, batches, device, args.moe, args.hessian, args.hessian_experts,
                                         args.exclude_bos, args.reap, args.kv_cache)
    if args.reap and not col.reap:
        raise SystemExit("--reap: the model ran no fused experts module (no MoE layer to score)")
    info = make_info(tokens, sequences)
    if args.sequential:
        info["pipeline"] = "sequential"
        info["quench_args"] = list(args.quench_args)
        info["quench"] = quench_version
        info["stages"] = stages
    if args.kv_cache:
        info["kv_cache"] = True
    if any(site.experts is not None for site in col.sites.values()):
        info["hessian_experts"] = args.hessian_experts
    if args.reap:
        info["reap"] = True
    manifest = build_manifest(model, os.path.join(args.model_dir, "config.json"), inv, col, info)
    write_stats(args.output, manifest, col)
    note(f"{len(col.sites)} sites, {len(manifest['consumers'])} consumers, {tokens} tokens in "
         f"{sequences} sequences, {time.time() - t0:.1f} s -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
