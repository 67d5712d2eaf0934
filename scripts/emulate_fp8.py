#!/usr/bin/env python3
"""Independent numpy-only emulation of the reference FP8_DYNAMIC / FP8_BLOCK weight numerics.

It is an executable form of docs/reference-notes.md section 3 and checks it against the golden
files: for every quantized tensor in an expected output folder it recomputes `weight` (F8_E4M3)
and `weight_scale` from the source and compares the bytes.

    python3 scripts/emulate_fp8.py            # checks every entry of data/golden/manifest.json

No torch needed. Exit status 1 on any mismatch.
"""
import json
import os
import struct
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "data")


def read_st(path):
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    h.pop("__metadata__", None)
    base = 8 + n
    return {k: (v["dtype"], v["shape"], b[base + v["data_offsets"][0]: base + v["data_offsets"][1]])
            for k, v in h.items()}


# --- rounding helpers -------------------------------------------------------------------------
def f32_to_bf16_bits(a):
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_bits_to_f32(u):
    return (u.astype(np.uint32) << 16).view(np.float32)


def round_to(a32, dt):
    """fp32 -> dt (RNE) -> back to fp32 (exact)."""
    if dt == "BF16":
        return bf16_bits_to_f32(f32_to_bf16_bits(a32))
    if dt == "F16":
        return a32.astype(np.float16).astype(np.float32)
    return a32.astype(np.float32)


def to_f32(dt, raw, shape):
    if dt == "BF16":
        return bf16_bits_to_f32(np.frombuffer(raw, "<u2")).reshape(shape)
    if dt == "F16":
        return np.frombuffer(raw, "<f2").astype(np.float32).reshape(shape)
    return np.frombuffer(raw, "<f4").reshape(shape).copy()


def from_f32(dt, a):
    if dt == "BF16":
        return f32_to_bf16_bits(a).astype("<u2").tobytes()
    if dt == "F16":
        return a.astype("<f2").tobytes()
    return a.astype("<f4").tobytes()


EPS = {"BF16": 2.0 ** -7, "F16": 2.0 ** -10, "F32": 2.0 ** -23}

# all non-negative finite e4m3fn values, indexed by code 0..126
_E4M3 = np.array([(2.0 ** ((c >> 3) - 7)) * (1 + (c & 7) / 8) if (c >> 3) else (c & 7) * 2.0 ** -9
                  for c in range(127)])


def e4m3_rne(v):
    """float (|v| <= 448 after clamp) -> e4m3fn byte, RNE, sign kept (negative tiny -> 0x80)."""
    v = np.asarray(v, dtype=np.float64)
    a = np.abs(v)
    hi = np.clip(np.searchsorted(_E4M3, a, side="left"), 0, 126)
    lo = np.clip(hi - 1, 0, 126)
    dlo = a - _E4M3[lo]
    dhi = _E4M3[hi] - a
    code = np.where(dlo < dhi, lo, np.where(dhi < dlo, hi, np.where(lo % 2 == 0, lo, hi)))
    code = np.where(a == _E4M3[hi], hi, code)
    sign = np.signbit(v).astype(np.int64) << 7
    return (code | sign).astype(np.uint8)


def quantize(w32, dt, block):
    """w32: weight values (exact, as fp32). Returns (fp8 bytes, scale as fp32)."""
    rows, cols = w32.shape
    if block:
        pr, pc = -(-rows // 128) * 128, -(-cols // 128) * 128
        p = np.zeros((pr, pc), np.float32)
        p[:rows, :cols] = w32
        tiles = p.reshape(pr // 128, 128, pc // 128, 128)
        amax = np.max(np.abs(tiles), axis=(1, 3))  # [R, C]
    else:
        amax = np.max(np.abs(w32), axis=1, keepdims=True)  # [rows, 1]
    # scale = RNE_dt(fp32(amax) / 448); zero -> eps(dt)
    scale = round_to((amax.astype(np.float32) / np.float32(448.0)).astype(np.float32), dt)
    scale = np.where(scale == 0, np.float32(EPS[dt]), scale).astype(np.float32)
    if block:
        s_full = np.repeat(np.repeat(scale, 128, 0), 128, 1)[:rows, :cols]
    else:
        s_full = np.broadcast_to(scale, w32.shape)
    q = round_to((w32 / s_full).astype(np.float32), dt)  # x / s in fp32, rounded to dt
    q = np.clip(q, -448.0, 448.0)
    return e4m3_rne(q).tobytes(), scale


def check(entry):
    src = os.path.join(DATA, entry["source"])
    exp = os.path.join(DATA, entry["expected"])
    block = entry["scheme"] == "FP8_BLOCK"
    srct = {}
    for fn in sorted(os.listdir(src)):
        if fn.endswith(".safetensors"):
            srct.update(read_st(os.path.join(src, fn)))
    bad = n = 0
    for fn in sorted(os.listdir(exp)):
        if not fn.endswith(".safetensors"):
            continue
        out = read_st(os.path.join(exp, fn))
        for name, (dt, shape, raw) in out.items():
            if dt != "F8_E4M3":
                continue
            n += 1
            sdt, sshape, sraw = srct[name]
            w = to_f32(sdt, sraw, sshape)
            qb, scale = quantize(w, sdt, block)
            sc = out[name + "_scale"]
            ok = qb == raw and from_f32(sdt, scale) == sc[2] and list(scale.shape) == sc[1]
            if not ok:
                bad += 1
                qa = np.frombuffer(qb, np.uint8)
                qe = np.frombuffer(raw, np.uint8)
                idx = np.nonzero(qa != qe)[0][:5]
                print(f"MISMATCH {entry['name']} {name}: {len(np.nonzero(qa != qe)[0])} bytes differ,"
                      f" first {idx.tolist()} got {qa[idx].tolist()} want {qe[idx].tolist()};"
                      f" scale ok={from_f32(sdt, scale) == sc[2]}")
    return n, bad


def main():
    entries = json.load(open(os.path.join(DATA, "golden", "manifest.json")))
    entries = entries["cases"] if isinstance(entries, dict) else entries
    total_bad = 0
    for e in entries:
        if e["scheme"] not in ("FP8_DYNAMIC", "FP8_BLOCK"):
            continue
        n, bad = check(e)
        total_bad += bad
        print(f"{e['name']}: {n} quantized tensors, {bad} mismatches")
    sys.exit(1 if total_bad else 0)


if __name__ == "__main__":
    main()
