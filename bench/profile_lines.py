#!/usr/bin/env python3
"""Where a hot function's samples fall, by line of its own source file.

    bench/profile_lines.py PERF_DATA BINARY SYMBOL_SUBSTRING SOURCE_FILE [TOP]

perf charges a sample to the innermost inlined frame (Highway's and the compiler's intrinsics
headers), which says little about which part of a kernel the time goes to. This script takes
the samples of the functions whose name contains SYMBOL_SUBSTRING, asks `addr2line -i` for
each sample's inline chain and charges it to the outermost frame in SOURCE_FILE (a file name
such as imatrix_mse_fp4_groups.cc), then prints the TOP lines (default 30) with their share.
BINARY must carry line tables: a copy of the object compiled with -g and linked as the build
links it (bench/README.md, "Session 55", says how). Samples are skid-prone: a line's share is
where the timer interrupted, which for long dependency chains is the chain's tail.

Example:
    perf record -o /tmp/p.data /tmp/bench-g q.bf16 q.f64 4096 4096 256 20 nvfp4
    bench/profile_lines.py /tmp/p.data /tmp/bench-g 'N_AVX3::(anonymous namespace)::SearchFp4Groups<(quench::DType)12, 3>' imatrix_mse_fp4_groups.cc
"""
import collections
import subprocess
import sys


def main():
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    data, binary, symbol, source = sys.argv[1:5]
    top = int(sys.argv[5]) if len(sys.argv) > 5 else 30
    script = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym,symoff"],
                            capture_output=True, text=True, check=True).stdout
    offsets = collections.Counter()
    for line in script.splitlines():
        if symbol not in line or "+0x" not in line:
            continue
        offsets[int(line.rsplit("+0x", 1)[1].split()[0], 16)] += 1
    if not offsets:
        print(f"no samples in a function named like {symbol!r}", file=sys.stderr)
        return 1
    # The function's start in the binary (its symbol's address): sample offsets are from it.
    nm = subprocess.run(["nm", "-C", binary], capture_output=True, text=True, check=True).stdout
    starts = [int(l.split()[0], 16) for l in nm.splitlines() if symbol in l and l[:1] != " "]
    if len(starts) != 1:
        print(f"{len(starts)} symbols match {symbol!r} in {binary}; give a longer name",
              file=sys.stderr)
        return 1
    items = sorted(offsets.items())
    out = subprocess.run(["addr2line", "-a", "-i", "-e", binary] +
                         [hex(starts[0] + off) for off, _ in items],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    chains, chain = [], None
    for line in out:
        if line.startswith("0x"):
            chain = []
            chains.append(chain)
        elif line.strip():
            chain.append(line.strip())
    by_line = collections.Counter()
    for (_, count), frames in zip(items, chains):
        own = [f for f in frames if source in f]
        key = own[-1].rsplit("/", 1)[-1].split(" ")[0] if own else "(outside " + source + ")"
        by_line[key] += count
    total = sum(by_line.values())
    print(f"{total} samples")
    for key, count in by_line.most_common(top):
        print(f"{100.0 * count / total:5.1f}%  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
