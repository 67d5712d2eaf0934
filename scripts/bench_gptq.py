#!/usr/bin/env python3
"""GPTQ's speed on the Llama-shaped bench checkpoint (scripts/bench --gptq runs this with the
reference venv's python, which has torch and numpy).

    bench_gptq.py SRC --quench BIN --gptq-bench BIN [--layers 1] [--ref-weight NAME]
                  [--threads N] [--no-reference]

1. Synthetic statistics for SRC's first --layers layers (cached beside SRC as SRC-gptq-stats-L):
   one site per distinct input (q/k/v, o, gate/up, down), H = 2/seq * (A A^T + diag(d)) with A
   [n, 256] random (correlated channels) and d > 0 spread over two decades, in
   docs/statistics-format.md's layout. Weights of later layers have no statistics (RTN).
2. quench convert SRC --scheme W4A16 --stats S --algorithm gptq, timed (wall, and CPU =
   user + sys of the process, which is what a shared VM can measure fairly), and the same
   conversion with RTN for comparison.
3. The arithmetic floor: the flops GPTQ must do, at one thread's SGEMM rate on the sweep's shape
   (quench-gptq-bench --sgemm, OpenBLAS): per factorisation 4/3 n^3 (potrf n^3/3, potri 2n^3/3,
   potrf n^3/3), per weight rows * n^2 (the lazy updates: sum over blocks of 2 * rows * 128 *
   (n - i2)) plus rows * n * 128 (the in-block updates). Ratio: GPTQ's CPU time over the floor
   (the whole conversion's CPU, RTN's share included; target <= 2).
4. The reference: llm-compressor 0.14.0.1's quantize_weight (W4A16 group 128, actorder static,
   the GPTQModifier defaults) on the CPU on --ref-weight's W and its site's normalised H, against
   quench's FactorHessian + QuantizeRows on the same W and H (quench-gptq-bench --raw, one
   thread): CPU and wall times; ratio quench / reference (target < 1).
Prints a summary, then one line with both ratios (`GPTQ: CPU/floor X, quench/reference Y`), then
one line `GPTQ_BENCH {...}`.
"""
import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

RANK = 256
SEQUENCES = 64


def read_index(src):
    with open(os.path.join(src, "model.safetensors.index.json")) as f:
        wmap = json.load(f)["weight_map"]
    shapes, where = {}, {}
    for shard in sorted(set(wmap.values())):
        with open(os.path.join(src, shard), "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        for k, v in header.items():
            if k != "__metadata__":
                shapes[k] = v["shape"]
                where[k] = (shard, 8 + n + v["data_offsets"][0], v["data_offsets"][1] - v["data_offsets"][0])
    return shapes, where


def sites_for(layers):
    out = []
    for l in range(layers):
        p = f"model.layers.{l}."
        out += [(p + "self_attn.q_proj", [p + f"self_attn.{m}_proj.weight" for m in "qkv"]),
                (p + "self_attn.o_proj", [p + "self_attn.o_proj.weight"]),
                (p + "mlp.gate_proj", [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"]),
                (p + "mlp.down_proj", [p + "mlp.down_proj.weight"])]
    return out


def hessian_sum(n, seed):
    """sum x x^T of correlated activations: A A^T + diag(d), A [n, RANK]."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, RANK)) * np.exp(rng.uniform(-1.5, 0.5, size=(n, 1)))
    h = a @ a.T
    h[np.diag_indices(n)] += np.exp(rng.uniform(-2.3, 2.3, size=n))
    return h * 100.0


def write_stats(folder, src_shapes, layers):
    """The statistics folder (docs/statistics-format.md): the packed upper triangle of each
    site's Hessian in f64, written row by row into one safetensors file."""
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    sites, consumers, weights, header, arrays = {}, {}, {}, {}, []
    off = 0
    for i, (site, members) in enumerate(sites_for(layers)):
        n = src_shapes[members[0]][1]
        sites[site] = {"file": "stats-00001.safetensors", "in_features": n, "experts": None,
                       "fields": ["count", "sum_x2", "sum_abs", "min", "max", "hessian"]}
        for m in members:
            consumers[m] = {"site": site}
            weights[m] = src_shapes[m]
        for field, dtype, shape, nbytes in (("count", "I64", [], 8), ("sum_x2", "F64", [n], 8 * n),
                                            ("sum_abs", "F64", [n], 8 * n), ("min", "F32", [n], 4 * n),
                                            ("max", "F32", [n], 4 * n),
                                            ("hessian", "F64", [n * (n + 1) // 2], 4 * n * (n + 1))):
            header[f"{site}.{field}"] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + nbytes]}
            arrays.append((site, field, n, i))
            off += nbytes
    blob = json.dumps(header).encode()
    blob += b" " * ((8 - len(blob) % 8) % 8)
    cache = {}
    with open(os.path.join(tmp, "stats-00001.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for site, field, n, i in arrays:
            if site not in cache:
                cache.clear()
                cache[site] = hessian_sum(n, 19 + i)
            h = cache[site]
            d = np.diag(h)
            if field == "count":
                f.write(np.array([SEQUENCES * 128], np.int64).tobytes())
            elif field == "sum_x2":
                f.write(d.astype(np.float64).tobytes())
            elif field == "sum_abs":
                f.write(np.sqrt(d).astype(np.float64).tobytes())
            elif field in ("min", "max"):
                f.write(np.full(n, -1.0 if field == "min" else 1.0, np.float32).tobytes())
            else:
                for r in range(n):
                    f.write(h[r, r:].astype(np.float64).tobytes())
    manifest = {"format": "quench-stats", "version": 1,
                "model": {"model_type": "llama", "weights": weights},
                "collection": {"dataset": "synthetic", "samples": SEQUENCES, "seq_len": 128,
                               "tokens": SEQUENCES * 128, "sequences": SEQUENCES, "moe": "all",
                               "hessian": "full"},
                "files": ["stats-00001.safetensors"], "sites": sites, "consumers": consumers}
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(tmp, folder)


def timed(cmd):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, r.stdout


def flops(shapes, layers, block=128):
    total = 0.0
    for site, members in sites_for(layers):
        n = shapes[members[0]][1]
        total += 4.0 / 3.0 * n ** 3
        for m in members:
            rows = shapes[m][0]
            total += rows * n * n + rows * n * block
    return total


def reference(src, where, shapes, weight, h_sum, bench_bin):
    """quantize_weight and quench-gptq-bench --raw on the same W and normalised H."""
    import torch
    from compressed_tensors.quantization import QuantizationArgs
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
    from llmcompressor.observers import Observer
    rows, n = shapes[weight]
    shard, start, nbytes = where[weight]
    with open(os.path.join(src, shard), "rb") as f:
        f.seek(start)
        raw = f.read(nbytes)
    h = (h_sum * (2.0 / SEQUENCES)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        wp, hp = os.path.join(tmp, "w.bf16"), os.path.join(tmp, "h.f32")
        open(wp, "wb").write(raw)
        h.tofile(hp)
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        t0 = time.perf_counter()
        r = subprocess.run([bench_bin, "--raw", wp, hp, str(rows), str(n)], capture_output=True,
                           text=True, env=env)
        q_wall = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit("quench-gptq-bench --raw failed: " + r.stderr)
        q = json.loads(r.stdout.split("QUENCH_GPTQ ", 1)[1])
    w = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).reshape(rows, n)
    qa = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group",
                          group_size=128, actorder="static")
    obs = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=qa)
    obs(w)
    qp = obs.get_qparams()
    ht = torch.from_numpy(h)
    t0, c0 = time.perf_counter(), time.process_time()
    quantize_weight(w.float().unsqueeze(0), ht.unsqueeze(0), qp["scale"].unsqueeze(0),
                    qp["zero_point"].unsqueeze(0), None, qa, 128, 0.01)
    return {"weight": weight, "shape": [rows, n], "quench_cpu_s": q["cpu_s"],
            "quench_wall_s": q_wall, "ref_wall_s": time.perf_counter() - t0,
            "ref_cpu_s": time.process_time() - c0, "ref_torch_threads": torch.get_num_threads()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("--quench", required=True)
    ap.add_argument("--gptq-bench", required=True)
    ap.add_argument("--layers", type=int, default=1, help="layers with statistics (default 1)")
    ap.add_argument("--ref-weight", default="model.layers.0.self_attn.q_proj.weight")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-reference", action="store_true")
    a = ap.parse_args()
    shapes, where = read_index(a.src)
    stats = a.src.rstrip("/") + f"-gptq-stats-{a.layers}"
    if not os.path.exists(os.path.join(stats, "manifest.json")):
        t0 = time.perf_counter()
        write_stats(stats, shapes, a.layers)
        print(f"statistics for {a.layers} layer(s) written to {stats} in {time.perf_counter() - t0:.0f} s")
    threads = ["--threads", str(a.threads)] if a.threads else []
    with tempfile.TemporaryDirectory(dir=os.path.dirname(a.src.rstrip("/"))) as tmp:
        base = [a.quench, "convert", a.src, "", "--scheme", "W4A16", "-q", *threads]
        base[3] = os.path.join(tmp, "rtn")
        r_wall, r_cpu, _ = timed(base)
        base[3] = os.path.join(tmp, "gptq")
        g_wall, g_cpu, _ = timed(base + ["--stats", stats, "--algorithm", "gptq"])
    r = subprocess.run([a.gptq_bench, "--sgemm", "1024", "4096", "128"], capture_output=True,
                       text=True, env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    rate = float(r.stdout.split("SGEMM_GFLOPS ", 1)[1]) * 1e9
    fl = flops(shapes, a.layers)
    floor = fl / rate
    weights = sum(len(m) for _, m in sites_for(a.layers))
    res = {"layers": a.layers, "gptq_weights": weights, "gptq_wall_s": g_wall, "gptq_cpu_s": g_cpu,
           "rtn_wall_s": r_wall, "rtn_cpu_s": r_cpu, "tflop": fl / 1e12,
           "sgemm_gflops_1thread": rate / 1e9, "floor_cpu_s": floor,
           "cpu_over_floor": g_cpu / floor, "target_floor": 2.0}
    print(f"GPTQ W4A16 on {os.path.basename(a.src)} ({a.layers} layer(s), {weights} weights with "
          f"Hessians): {g_wall:.1f} s wall, {g_cpu:.1f} s CPU (RTN: {r_wall:.1f} s wall, "
          f"{r_cpu:.1f} s CPU); {fl / 1e12:.2f} TFLOP at {rate / 1e9:.1f} GFLOP/s (one thread's "
          f"SGEMM) = {floor:.1f} s CPU: CPU/floor {g_cpu / floor:.2f} (target <= 2)")
    if not a.no_reference:
        # The site's Hessian as write_stats made it (seed 19 + the site's index).
        idx = next(i for i, (_, m) in enumerate(sites_for(a.layers)) if a.ref_weight in m)
        n = shapes[a.ref_weight][1]
        ref = reference(a.src, where, shapes, a.ref_weight, hessian_sum(n, 19 + idx),
                        a.gptq_bench)
        res["reference"] = ref
        res["quench_over_reference_cpu"] = ref["quench_cpu_s"] / ref["ref_cpu_s"]
        print(f"  {a.ref_weight} {ref['shape']}: quench {ref['quench_cpu_s']:.2f} s CPU (one "
              f"thread), reference quantize_weight {ref['ref_cpu_s']:.2f} s CPU / "
              f"{ref['ref_wall_s']:.2f} s wall ({ref['ref_torch_threads']} torch threads): "
              f"quench/reference {res['quench_over_reference_cpu']:.3f} by CPU (target < 1)")
    ref_ratio = res.get("quench_over_reference_cpu")
    print(f"GPTQ: CPU/floor {res['cpu_over_floor']:.2f} (target <= 2), quench/reference "
          + (f"{ref_ratio:.3f} by CPU (target < 1)" if ref_ratio is not None else "not run")
          + " -- CPU times, since the machine may be shared")
    print("GPTQ_BENCH " + json.dumps(res))


if __name__ == "__main__":
    main()
