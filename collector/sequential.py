"""Sequential statistics (collect-stats --sequential): each layer's sites recorded with the
layers before it already quantized by quench, as llm-compressor 0.14.0.1's default
`sequential` calibration pipeline calibrates GPTQ.

The reference's pipeline (llmcompressor/pipelines/sequential/pipeline.py, helpers.py): the
model is cut into subgraphs at its `_no_split_modules` layers ("sequential targets";
`topological_partition` puts what runs before the first layer in a head subgraph of its own,
and what runs after layer k and before layer k+1, e.g. BERT's pooler after the last layer,
with layer k). For each subgraph in turn: (1) a calibration pass over every batch, hooks on,
with the subgraph's own weights still float (`DisableQuantization` is held throughout, so no
module fake-quantizes in any pass): GPTQ's Hessians of its modules; (2)
`sequential_epoch_end`: GPTQ quantizes those modules, replacing each `weight` by its
quantized-dequantized value; (3) with `propagate_error` (the default), a second pass, hooks
off, whose outputs, computed with the quantized weights, are the next subgraph's inputs.

Here: a probe forward assigns every hooked module a stage (the layer it is calibrated with,
by that rule); then for each stage, one collector forward of the whole model, stopped before
the next layer starts, hooks only on the stage's modules, with the modules of every earlier
stage holding the weights quench wrote for them, decoded; then `quench convert MODEL OUT
<quench args> --stats S`, S holding the finished stages' sites (later ones `not_reached`, so
rounded to nearest and not used), whose weights for this stage, decoded with
compressed-tensors' own `CompressedTensorsDequantizer` in the model's dtype, go into the model
for the next stage. The last stage needs no quench run. Cost: one forward (a growing prefix of
the model) and one quench run per layer.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import types

import torch
from torch import nn

import collect_stats as cs


class _Stop(Exception):
    """Raised at the next layer's start: the stage's modules have all run."""


def _raise_stop(module, args):
    raise _Stop()


def quench_version(quench: str) -> str:
    r = subprocess.run([quench, "--version"], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"--sequential: {quench} --version failed (exit {r.returncode}): {r.stderr.strip()}")
    # The first line (name and version); the second names the CPU's SIMD paths, which say
    # nothing of the statistics.
    return r.stdout.strip().splitlines()[0]


def layer_modules(model) -> list[tuple[str, nn.Module]]:
    """The reference's sequential targets: modules whose class is in `_no_split_modules`
    (llmcompressor.utils.pytorch.module.get_no_split_params), in module order."""
    try:
        classes = model._get_no_split_modules("auto")
    except AttributeError:
        classes = getattr(model, "_no_split_modules", None)
    classes = set(classes or [])
    if not classes:
        raise SystemExit("--sequential: the model names no layer classes (_no_split_modules); "
                         "cannot cut it into layers")
    return [(n, m) for n, m in model.named_modules() if type(m).__name__ in classes]


def hooked_modules(model) -> list[str]:
    """The modules the collector hooks: linear-like modules and fused 3-D experts."""
    return [n for n, m in model.named_modules()
            if cs.is_fused_experts(m) or cs.linear_in_features(m) is not None]


def assign_stages(model, batch, device) -> tuple[list[str], dict[str, int]]:
    """(layer names in the order they run, {hooked module: stage index into that list}).
    Stage of a module = the last layer that started before it first runs (the layer holding
    it, or the one before it: the reference's partition), 0 before the first layer; a module
    the probe did not run (the LM head, which the collector runs apart) belongs to the last
    layer, unless its name puts it inside a layer."""
    layers = layer_modules(model)
    started: list[str] = []
    first: dict[str, int] = {}
    handles = []
    for name, mod in layers:
        def pre(m, a, name=name):
            if name not in started:
                started.append(name)
        handles.append(mod.register_forward_pre_hook(pre))
    hooked = hooked_modules(model)
    for name in hooked:
        def pre(m, a, name=name):
            first.setdefault(name, len(started))
        handles.append(model.get_submodule(name).register_forward_pre_hook(pre))
    body, _ = cs.runner(model)
    try:
        with torch.inference_mode():
            ids, mask = batch
            cs.forward(body, ids.to(device), mask.to(device))
    finally:
        for h in handles:
            h.remove()
    if not started:
        raise SystemExit("--sequential: no layer ran in a forward pass")
    order = {n: i for i, n in enumerate(started)}
    stages = {}
    for name in hooked:
        inside = [order[l] for l in started if name.startswith(l + ".")]
        if inside:
            stages[name] = max(inside)
        elif name in first:
            stages[name] = max(0, first[name] - 1)
        else:
            stages[name] = len(started) - 1
    return started, stages


def apply_weights(model, inv, names: list[str], deq: dict[str, torch.Tensor]) -> int:
    """Copies the decoded weights of the given hooked modules into the model (checkpoint names
    mapped as the manifest maps them); returns how many tensors were set."""
    done = 0
    with torch.no_grad():
        for name in names:
            mod = model.get_submodule(name)
            if cs.is_fused_experts(mod):
                n_exp = mod.gate_up_proj.shape[0]
                transposed = getattr(mod, "is_transposed", False)
                gu = cs.consumer_names(model, inv, f"{name}.gate_up_proj", "gate_up", n_exp)
                dn = cs.consumer_names(model, inv, f"{name}.down_proj", "down", n_exp)
                for (e, part), ck in list(gu.items()) + list(dn.items()):
                    if ck is None or ck not in deq:
                        continue
                    w = deq[ck]
                    if part == "down":
                        dst = mod.down_proj[e]
                        dst.copy_((w.T if transposed else w).to(dst.dtype))
                    else:
                        full = mod.gate_up_proj[e].T if transposed else mod.gate_up_proj[e]
                        inter = full.shape[0] // 2
                        rows = slice(0, inter) if part == "gate" else slice(inter, 2 * inter)
                        full[rows].copy_(w.to(full.dtype))
                    done += 1
                continue
            ck = cs.consumer_names(model, inv, f"{name}.weight", "linear")[(None, None)]
            if ck is None or ck not in deq:
                continue
            w = deq[ck]
            if tuple(w.shape) != tuple(mod.weight.shape):
                raise SystemExit(f"--sequential: quench wrote {ck} as {list(w.shape)}; the model's "
                                 f"{name}.weight is {list(mod.weight.shape)}")
            mod.weight.copy_(w.to(mod.weight.dtype))
            done += 1
    return done


def decode(out_dir: str, dtype) -> dict[str, torch.Tensor]:
    """quench's output decoded as compressed-tensors 0.19.0 decodes it (the dequantizer of its
    model-free `convert_checkpoint`), every weight in `dtype`."""
    from compressed_tensors.entrypoints.convert.converters import CompressedTensorsDequantizer
    from safetensors.torch import load_file
    tensors = {}
    for f in sorted(os.listdir(out_dir)):
        if f.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(out_dir, f)))
    return CompressedTensorsDequantizer(out_dir, dtype=dtype).process(tensors)


def run_quench(quench: str, model_dir: str, stats: str, out: str, quench_args: list[str]) -> None:
    cmd = [quench, "convert", model_dir, out, *quench_args, "--stats", stats]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"--sequential: {' '.join(cmd)} failed (exit {r.returncode}):\n{r.stderr[-4000:]}")


def check_quench_args(quench_args: list[str]) -> None:
    for a in quench_args:
        if a == "--stats" or a.startswith("--stats="):
            raise SystemExit("--sequential: give quench's convert options after --, without --stats "
                             "(each layer's run gets the statistics collected so far)")
        if a in ("--dry-run", "--resume", "--worker") or a.startswith("--worker="):
            raise SystemExit(f"--sequential: {a} makes no sense in quench's per-layer runs")
    algos = [v for i, a in enumerate(quench_args)
             for v in ([a.split("=", 1)[1]] if a.startswith("--algorithm=") else
                       [quench_args[i + 1]] if a == "--algorithm" and i + 1 < len(quench_args) else [])]
    if any(x in ("smoothquant", "awq") for v in algos for x in v.split(",")):
        # (a recipe's smoothing modifiers are not looked for: give smoothing as flags to refuse it)
        raise SystemExit("--sequential: smoothing (smoothquant, awq) also rewrites norms and "
                         "other unquantized tensors, which the per-layer runs do not carry over")


def collect_sequential(model, model_dir, inv, batches, device, args, quench_args, make_info):
    """Runs the stages; returns (merged collector view, tokens, sequences, stages record).
    `make_info(tokens, sequences)` gives the manifest's collection block for partial folders."""
    check_quench_args(quench_args)
    layers, stage_of = assign_stages(model, batches[0], device)
    body, head = cs.runner(model)
    head_name = next((n for n, m in model.named_modules() if m is head), None)
    todo = sorted({s for s in stage_of.values()})
    merged = types.SimpleNamespace(sites={}, role={}, top_k=None, reap=None,
                                   expert_modules={n: m for n, m in model.named_modules()
                                                   if cs.is_fused_experts(m)})
    record = []
    tokens = sequences = 0
    dtype = next(model.parameters()).dtype
    work = tempfile.mkdtemp(prefix="collect-seq-")
    try:
        for i, k in enumerate(todo):
            mods = {n for n, s in stage_of.items() if s == k}
            col = cs.Collector(model, device, args.moe, args.hessian, args.hessian_experts, False, mods)
            stop_at = model.get_submodule(layers[k + 1]) if k + 1 < len(layers) else None
            stop = stop_at.register_forward_pre_hook(_raise_stop) if stop_at is not None else None
            head_hook = col._linear_hook(head_name) if head is not None and head_name in mods else None
            tokens = sequences = 0
            try:
                with torch.inference_mode():
                    for ids, mask in batches:
                        ids, mask, count_mask = cs.begin_batch(col, ids, mask, device,
                                                               args.exclude_bos)
                        try:
                            out = cs.forward(body, ids, mask)
                            if head_hook is not None:
                                head_hook(head, (cs.last_hidden(out),), {})
                        except _Stop:
                            pass
                        tokens += int(count_mask.sum())
                        sequences += ids.shape[0]
            finally:
                col.close()
                if stop is not None:
                    stop.remove()
            merged.sites.update(col.sites)
            merged.role.update(col.role)
            merged.top_k = col.top_k if col.top_k is not None else merged.top_k
            record.append({"layer": layers[k], "sites": sorted(col.sites)})
            cs.note(f"stage {i + 1}/{len(todo)} ({layers[k]}): {len(col.sites)} sites")
            if i + 1 == len(todo):
                break
            # quench on what is collected so far; this stage's weights go into the model
            part = os.path.join(work, f"stats-{i}")
            out = os.path.join(work, f"out-{i}")
            manifest = cs.build_manifest(model, os.path.join(model_dir, "config.json"), inv, merged,
                                         make_info(tokens, sequences))
            cs.write_stats(part, manifest, merged)
            run_quench(args.quench, model_dir, part, out, quench_args)
            deq = decode(out, dtype)
            done = [n for n, s in stage_of.items() if s <= k]
            n_set = apply_weights(model, inv, done, deq)
            cs.note(f"  quench {' '.join(quench_args)}: {n_set} weights of stages 1-{i + 1} decoded into the model")
            shutil.rmtree(part)
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return merged, tokens, sequences, record
