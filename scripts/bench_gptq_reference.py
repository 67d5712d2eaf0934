#!/usr/bin/env python3
"""The reference's GPTQ on the CPU for bench/README.md ("GPTQ"): llm-compressor 0.14.0.1's
quantize_weight on a [ROWS, N] BF16 weight (W4A16, group 128, actorder static) with a Hessian of
random activations. Usage: .venv-ref/bin/python scripts/bench_gptq_reference.py ROWS N"""
import sys, time, torch
from compressed_tensors.quantization import QuantizationArgs
from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
from llmcompressor.observers import Observer
rows, n = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(19)
x = torch.randn(2 * n, n)
h = (x.T @ x / n).contiguous()
w = (torch.randn(rows, n) * 0.02).to(torch.bfloat16)
qa = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=128, actorder="static")
obs = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=qa); obs(w); qp = obs.get_qparams()
t0 = time.perf_counter(); t0c = time.process_time()
quantize_weight(w.float().unsqueeze(0), h.unsqueeze(0), qp["scale"].unsqueeze(0), qp["zero_point"].unsqueeze(0), None, qa, 128, 0.01)
print(f"reference quantize_weight rows {rows} n {n}: {time.perf_counter()-t0:.2f} s wall, {time.process_time()-t0c:.2f} s cpu, torch threads {torch.get_num_threads()}")
