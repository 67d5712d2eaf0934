#!/usr/bin/env python3
"""Statistics-file sizes from docs/statistics-format.md's per-site fields, for a Llama-2-7B-shaped
dense model and DeepSeek-V3 (the configuration of spec section 5.3). Prints the table that
collector/README.md quotes.

Per site of n features (E experts for a per-expert site; every array gets the leading E):
count I64 (8 B), sum_x2 and sum_abs F64 (8n each), min and max F32 (4n each): 8 + 24n bytes;
hessian F64 packed upper triangle: 4n(n+1) bytes; hessian_blk128 F64: 8*128*n bytes.
"""
from __future__ import annotations

GB = 1e9


def site_bytes(n: int, hessian: str, experts: int = 1) -> int:
    b = 8 + 24 * n
    if hessian == "full":
        b += 4 * n * (n + 1)
    elif hessian == "block128":
        b += 8 * 128 * n if n % 128 == 0 else 0
    return experts * b


def llama7b():
    """Llama-2-7B: hidden 4096, intermediate 11008, 32 layers, untied lm_head."""
    h, inter, layers = 4096, 11008, 32
    per_layer = [(h, 1), (h, 1), (h, 1), (inter, 1)]  # attn in (q,k,v), o in, mlp in (gate,up), down in
    return [s for _ in range(layers) for s in per_layer] + [(h, 1)]  # lm_head


def deepseek_v3(moe: str):
    """61 layers (3 dense + 58 MoE), hidden 7168, q_lora 1536, kv_lora 512, o_proj in 16384,
    dense intermediate 18432, 256 routed experts (intermediate 2048) + 1 shared expert; the MTP
    layer 61 is not reached by a forward pass."""
    h, sites = 7168, []
    for layer in range(61):
        sites += [(h, 1), (1536, 1), (512, 1), (16384, 1)]  # attn in, q_b in, kv_b in, o in
        if layer < 3:
            sites += [(h, 1), (18432, 1)]  # dense MLP in, down in
        else:
            sites += [(h, 1), (2048, 1), (2048, 256)]  # MoE in, shared down in, experts' down in
            if moe == "routed":
                sites += [(h, 256)]  # experts' gate/up in, per expert
    return sites + [(h, 1)]  # lm_head


def total(sites, hessian: str, hessian_experts: str | None = None) -> float:
    he = hessian if hessian_experts is None else hessian_experts
    return sum(site_bytes(n, hessian if e == 1 else he, e) for n, e in sites) / GB


def main() -> None:
    rows = [("Llama-2-7B", llama7b()), ("DeepSeek-V3, --moe all", deepseek_v3("all")),
            ("DeepSeek-V3, --moe routed", deepseek_v3("routed"))]
    print("| model | sites | vectors only | + hessian block128 | + hessian full |")
    print("|---|---|---|---|---|")
    for name, sites in rows:
        print(f"| {name} | {len(sites)} | {total(sites, 'none'):.3g} GB | "
              f"{total(sites, 'block128'):.3g} GB | {total(sites, 'full'):.4g} GB |")
    ds = deepseek_v3("all")
    print()
    print("DeepSeek-V3, --moe all, --hessian full with --hessian-experts block128: "
          f"{total(ds, 'full', 'block128'):.3g} GB; with --hessian-experts none: {total(ds, 'full', 'none'):.3g} GB")


if __name__ == "__main__":
    main()
