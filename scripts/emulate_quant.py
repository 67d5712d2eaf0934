#!/usr/bin/env python3
"""Independent numpy-only emulation of the reference weight numerics of the integer, FP4 and MX
schemes (docs/reference-notes.md sections 10-13), checked against the golden files.

For every manifest entry whose scheme is not FP8_DYNAMIC / FP8_BLOCK it recomputes, from the
source tensors, every tensor the reference wrote for each quantized module (weight /
weight_packed, weight_scale, weight_zero_point, weight_shape, weight_global_scale) and compares
the bytes (dtype and shape included). Unquantized tensors are compared with the source.

    python3 scripts/emulate_quant.py            # every issue-3 entry of data/golden/manifest.json

No torch needed. Exit status 1 on any mismatch.
"""
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emulate_fp8 import EPS, e4m3_rne, from_f32, read_st, round_to, to_f32  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "data")

# ---------------------------------------------------------------------------------------------
# scheme table: preset -> weights args (after overrides) and format
PRESETS = {
    "W8A8": dict(type="int", bits=8, strategy="channel", group=None, sym=True, fmt="int-quantized"),
    "W4A8": dict(type="int", bits=4, strategy="group", group=128, sym=True, fmt="int-quantized"),
    "W4AFP8": dict(type="int", bits=4, strategy="group", group=128, sym=True, fmt="int-quantized"),
    "W4A16_ASYM": dict(type="int", bits=4, strategy="group", group=128, sym=False, fmt="pack-quantized"),
    "NVFP4A16": dict(type="nvfp4", bits=4, strategy="tensor_group", group=16, sym=True,
                     fmt="nvfp4-pack-quantized"),
    "MXFP4A16": dict(type="mx", bits=4, strategy="group", group=32, sym=True, fmt="mxfp4-pack-quantized"),
    "MXFP4": dict(type="mx", bits=4, strategy="group", group=32, sym=True, fmt="mxfp4-pack-quantized"),
    "MXFP8A16": dict(type="mx", bits=8, strategy="group", group=32, sym=True, fmt="mxfp8-quantized"),
    "MXFP8": dict(type="mx", bits=8, strategy="group", group=32, sym=True, fmt="mxfp8-quantized"),
}
for _n in range(2, 9):
    PRESETS[f"W{_n}A16"] = dict(type="int", bits=_n, strategy="group", group=128, sym=True,
                                fmt="pack-quantized")


def scheme_args(entry):
    a = dict(PRESETS[entry["scheme"]])
    ov = entry.get("overrides", {})
    if "group_size" in ov:
        if ov["group_size"] == -1:
            a["strategy"], a["group"] = "channel", None
        else:
            a["group"] = ov["group_size"]
    if "symmetric" in ov:
        a["sym"] = ov["symmetric"]
    if entry.get("format"):
        a["fmt"] = entry["format"]
    return a


# ---------------------------------------------------------------------------------------------
def div_D(a, b, dt):
    """RNE_D(fp32(a) / fp32(b)) -- CPU bf16/f16 arithmetic is done in fp32, rounded once."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return round_to((np.float32(1) * a.astype(np.float32) / b.astype(np.float32)).astype(np.float32), dt)


def groups_of(w, strategy, group):
    """(rows, cols) -> (rows, ngroups, gsize) view (channel: one group per row)."""
    rows, cols = w.shape
    if strategy == "channel":
        return w.reshape(rows, 1, cols)
    return w.reshape(rows, cols // group, group)


def int_quantize(w, dt, a):
    """Returns (q int8 [rows, cols], scale fp32 [rows, ngroups] (values of dtype dt), zp int8 or None)."""
    bits = a["bits"]
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    g = groups_of(w, a["strategy"], a["group"])
    mn = np.minimum(g.min(axis=-1), 0).astype(np.float32)
    mx = np.maximum(g.max(axis=-1), 0).astype(np.float32)
    bit_range = np.float32(qmax - qmin)  # 2^N - 1, fp32; .to(dt) is exact for N <= 8
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if a["sym"]:
            amax = np.maximum(np.abs(mn), np.abs(mx))
            half = round_to(np.array([bit_range / 2], np.float32), dt)[0]
            scale = div_D(amax, np.full_like(amax, half), dt)
            zp = None
        else:
            rng = round_to((mx - mn).astype(np.float32), dt)
            scale = div_D(rng, np.full_like(rng, bit_range), dt)
            zpf = round_to((np.float32(qmin) - div_D(mn, scale, dt)).astype(np.float32), dt)
            zpf = np.clip(zpf, qmin, qmax)  # NaN stays NaN (all-zero group: 0/0)
            zpf = np.round(zpf)  # half to even
            zp = np.where(np.isnan(zpf), 0, zpf).astype(np.int8)  # observed: NaN -> int8 0
        scale = np.where(scale == 0, np.float32(EPS[dt]), scale).astype(np.float32)
        q = div_D(g, scale[..., None], dt)
        if zp is not None:
            q = round_to((q + zp.astype(np.float32)[..., None]).astype(np.float32), dt)
        q = np.round(np.clip(q, qmin, qmax)).astype(np.int8).reshape(w.shape)
    return q, scale, zp


def pack_int32(v, bits):
    """int8 [rows, cols] -> int32 [rows, ceil(cols*bits/32)]: value+2^(bits-1), rows padded with 0
    to a multiple of 32 values, element i at bit i*bits of the row's little-endian bit stream."""
    rows, cols = v.shape
    u = (v.astype(np.int64) + (1 << (bits - 1))).astype(np.uint64)
    pc = -(-cols // 32) * 32
    up = np.zeros((rows, pc), np.uint64)
    up[:, :cols] = u
    nw = pc * bits // 32
    out = np.zeros((rows, nw), np.uint64)
    for i in range(pc):
        bit = i * bits
        w, o = divmod(bit, 32)
        out[:, w] |= (up[:, i] << np.uint64(o)) & np.uint64(0xFFFFFFFF)
        if o + bits > 32:
            out[:, w + 1] |= up[:, i] >> np.uint64(32 - o)
    out = out[:, : -(-cols * bits // 32)]
    return out.astype(np.uint32).view(np.int32)


# ---- FP4 -------------------------------------------------------------------------------------
def fp4_codes(v):
    """value (already divided by the scale, fp32/dt values) -> E2M1 nibble, CT's cast_to_fp4
    (RNE: |x|<=0.25->0, <0.75->0.5, <=1.25->1, <1.75->1.5, <=2.5->2, <3.5->3, <=5->4, else 6)
    and pack_fp4_to_uint8's sign (signbit of x*sign(x): x<0 -> 8, x == -0.0 -> +0)."""
    a = np.abs(v)
    idx = np.select([a <= 0.25, a < 0.75, a <= 1.25, a < 1.75, a <= 2.5, a < 3.5, a <= 5.0],
                    [0, 1, 2, 3, 4, 5, 6], 7)
    return (idx | np.where(v < 0, 8, 0)).astype(np.uint8)


def pack_fp4(codes):
    c = codes.reshape(codes.shape[0], -1, 2)
    return (c[..., 0] | (c[..., 1] << 4)).astype(np.uint8)


def bits_of(x, dt):
    if dt == "BF16":
        return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.int64), 7, 8, 16
    if dt == "F16":
        return x.astype(np.float16).view(np.uint16).astype(np.int64), 10, 5, 16
    return x.astype(np.float32).view(np.uint32).astype(np.int64), 23, 8, 32


def from_bits(b, dt):
    if dt == "BF16":
        return (b.astype(np.uint32) << 16).view(np.float32)
    if dt == "F16":
        return b.astype(np.uint16).view(np.float16).astype(np.float32)
    return b.astype(np.uint32).view(np.float32)


def round_to_power_2(x, dt):
    """CT mxfp_utils.round_to_power_2: add 1 << (mantissa_D - 2) to the bits, keep sign+exponent."""
    b, man, exp, _ = bits_of(x, dt)
    add = 1 << (man - 1 - 1)
    mask = ((1 << (exp + 1)) - 1) << man
    return from_bits((b + add) & mask, dt)


def mx_scale(amax, dt, bits):
    """per-group amax (dt values) -> (stored uint8 exponent, scale value used (fp32 of dt))."""
    off = 2 if bits == 4 else 8
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        p = round_to_power_2(amax, dt)
        e = 127 + np.floor(np.log2(p.astype(np.float64))) - off  # exact: p is a power of 2 (or 0/inf)
        e = np.round(np.clip(e, 0, 255)).astype(np.int64)  # -inf (amax 0) -> 0
        s = round_to(np.ldexp(np.float32(1), (e - 127).astype(np.int32)).astype(np.float32), dt)
        s = np.where(s == 0, np.float32(1.0), s).astype(np.float32)  # eps of uint8 scale dtype = 1
        stored = (127 + np.floor(np.log2(s.astype(np.float64)))).astype(np.int64).astype(np.uint8)
    return stored, s


def global_scale(amax_all, dt):
    """NVFP4: 2688 / clamp(amax, tiny) as reciprocal()*2688 in dt, nan/inf -> 1, fp32."""
    tiny = {"BF16": 2.0 ** -126, "F16": 2.0 ** -14, "F32": 2.0 ** -126}[dt]
    a = np.float32(max(float(amax_all), tiny))
    with np.errstate(divide="ignore", over="ignore"):
        r = round_to(np.array([np.float32(1) / a], np.float32), dt)
        gs = round_to((r * np.float32(2688.0)).astype(np.float32), dt)[0]
    if not np.isfinite(gs):
        gs = np.float32(1.0)
    return np.float32(gs)


_E4M3 = np.array([(2.0 ** ((c >> 3) - 7)) * (1 + (c & 7) / 8) if (c >> 3) else (c & 7) * 2.0 ** -9
                  for c in range(127)])


def e4m3_value(code):
    code = np.asarray(code, np.int64)
    v = _E4M3[code & 0x7F]
    return np.where(code & 0x80, -v, v).astype(np.float32)


def nvfp4(w, dt, gs):
    rows, cols = w.shape
    g = w.reshape(rows, cols // 16, 16)
    amax = np.abs(g).max(axis=-1).astype(np.float32)
    six = np.full_like(amax, 6.0)
    s_d = div_D(amax, six, dt)
    s32 = (np.float32(gs) * s_d).astype(np.float32)
    code = e4m3_rne(np.clip(s32, -448, 448))
    sval = e4m3_value(code)
    zero = sval == 0
    code = np.where(zero, 0x20, code).astype(np.uint8)  # 0.125 = 0x20
    sval = np.where(zero, np.float32(0.125), sval).astype(np.float32)
    eff = (sval / np.float32(gs)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = (g / eff[..., None]).astype(np.float32)
    q = np.clip(q, -6, 6)
    return pack_fp4(fp4_codes(q).reshape(rows, cols)), code


# ---------------------------------------------------------------------------------------------
NUM = re.compile(r"(\d+)")


def natural_key(s):
    return [int(p) if p.isdigit() else p for p in NUM.split(s)]


FUSED = [
    [r".*(attn|attention)\.q_proj\.weight$", r".*(attn|attention)\.k_proj\.weight$",
     r".*(attn|attention)\.v_proj\.weight$"],
    [r".*(attn|attention)\.wq_a\.weight$", r".*(attn|attention)\.wkv_a_with_mqa\.weight$"],
    [r".*mlp\.gate_proj\.weight$", r".*mlp\.up_proj\.weight$"],
    [r".*w1\.weight$", r".*w3\.weight$"],
]


def fused_sets(names):
    """llmcompressor get_fused_names: per mapping, natural sort, fill a set, emit when full."""
    sets = []
    for mapping in FUSED:
        cur = {t: None for t in mapping}
        for n in sorted(names, key=natural_key):
            for t in mapping:
                if re.match(t, n):
                    if cur[t] is not None:
                        raise ValueError("matched twice")
                    cur[t] = n
            if all(v is not None for v in cur.values()):
                sets.append(list(cur.values()))
                cur = {t: None for t in mapping}
    return sets


def check(entry):
    a = scheme_args(entry)
    src = os.path.join(DATA, entry["source"])
    exp = os.path.join(DATA, entry["expected"])
    srct = {}
    for fn in sorted(os.listdir(src)):
        if fn.endswith(".safetensors"):
            srct.update(read_st(os.path.join(src, fn)))
    bad = n = 0
    msgs = []

    def cmp(what, got, want):
        nonlocal bad, n
        n += 1
        if got != want:
            bad += 1
            msgs.append(f"MISMATCH {entry['name']} {what}: got {got[2][:0] if False else (got[0], got[1])}"
                        f" want {(want[0], want[1])} bytes_equal={got[2] == want[2]}")

    for fn in sorted(os.listdir(exp)):
        if not fn.endswith(".safetensors"):
            continue
        out = read_st(os.path.join(exp, fn))
        # quantized modules of this shard
        mods = sorted({k.rsplit(".", 1)[0] for k, v in out.items()
                       if k.endswith((".weight_packed", ".weight_scale"))})
        names = [k for k in out if not k.endswith(("_packed", "_scale", "_shape", "_zero_point"))]
        names += [m + ".weight" for m in mods if m + ".weight" not in out]
        gsmap = {}
        if a["type"] == "nvfp4":
            qset = {m + ".weight" for m in mods}
            for fs in fused_sets(names):
                members = [x for x in fs if x in qset]
                if members:
                    am = max(float(np.max(np.abs(to_f32(srct[x][0], srct[x][2], srct[x][1])))) for x in members)
                    for x in members:
                        gsmap[x] = am
        for k, (dt_o, sh_o, raw_o) in out.items():
            mod = k.rsplit(".", 1)[0]
            if mod not in mods:
                if k in srct:
                    cmp(k + " (copied)", (dt_o, sh_o, raw_o), tuple(srct[k]))
                else:
                    bad += 1
                    msgs.append(f"MISMATCH {entry['name']} unexpected tensor {k}")
        for m in mods:
            sdt, ssh, sraw = srct[m + ".weight"]
            w = to_f32(sdt, sraw, ssh)
            rows, cols = w.shape
            exp_t = {}
            if a["type"] == "int":
                q, scale, zp = int_quantize(w, sdt, a)
                exp_t[".weight_scale"] = (sdt, list(scale.shape), from_f32(sdt, scale))
                if a["fmt"] == "pack-quantized":
                    exp_t[".weight_packed"] = ("I32", [rows, -(-cols * a["bits"] // 32)],
                                               pack_int32(q, a["bits"]).astype("<i4").tobytes())
                    exp_t[".weight_shape"] = ("I64", [2], np.array([rows, cols], "<i8").tobytes())
                    if zp is not None:
                        pz = np.ascontiguousarray(pack_int32(zp.T.copy(), a["bits"]).T)
                        exp_t[".weight_zero_point"] = ("I32", list(pz.shape), pz.astype("<i4").tobytes())
                else:
                    exp_t[".weight"] = ("I8", [rows, cols], q.tobytes())
                    if zp is not None:
                        exp_t[".weight_zero_point"] = ("I8", list(zp.shape), zp.tobytes())
            elif a["type"] == "mx":
                g = w.reshape(rows, cols // 32, 32)
                amax = np.abs(g).max(axis=-1).astype(np.float32)
                stored, s = mx_scale(amax, sdt, a["bits"])
                exp_t[".weight_scale"] = ("U8", [rows, cols // 32], stored.tobytes())
                q = div_D(g, s[..., None], sdt)
                if a["bits"] == 4:
                    q = np.clip(q, -6, 6)
                    exp_t[".weight_packed"] = ("U8", [rows, cols // 2],
                                               pack_fp4(fp4_codes(q).reshape(rows, cols)).tobytes())
                else:
                    q = np.clip(q, -448, 448)
                    exp_t[".weight"] = ("F8_E4M3", [rows, cols], e4m3_rne(q).reshape(rows, cols).tobytes())
            else:  # nvfp4
                am = gsmap.get(m + ".weight", float(np.max(np.abs(w))))
                am = round_to(np.array([am], np.float32), sdt)[0]
                gs = global_scale(am, sdt)
                packed, code = nvfp4(w, sdt, gs)
                exp_t[".weight_packed"] = ("U8", [rows, cols // 2], packed.tobytes())
                exp_t[".weight_scale"] = ("F8_E4M3", [rows, cols // 16], code.tobytes())
                exp_t[".weight_global_scale"] = ("F32", [1], np.array([gs], "<f4").tobytes())
            got = {k[len(m):]: v for k, v in out.items() if k.rsplit(".", 1)[0] == m}
            if set(got) != set(exp_t):
                bad += 1
                msgs.append(f"MISMATCH {entry['name']} {m}: tensors {sorted(got)} want {sorted(exp_t)}")
                continue
            for suf, want in exp_t.items():
                cmp(m + suf, tuple(got[suf]), want)
    for s in msgs[:8]:
        print(s)
    return n, bad


def main():
    man = json.load(open(os.path.join(DATA, "golden", "manifest.json")))
    entries = man["cases"] if isinstance(man, dict) else man
    total_bad = 0
    only = sys.argv[1:]
    for e in entries:
        if e["scheme"] in ("FP8_DYNAMIC", "FP8_BLOCK"):
            continue
        if only and not any(o in e["name"] for o in only):
            continue
        n, bad = check(e)
        total_bad += bad
        print(f"{e['name']}: {n} tensors checked, {bad} mismatches", flush=True)
    sys.exit(1 if total_bad else 0)


if __name__ == "__main__":
    main()
