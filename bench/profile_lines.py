#!/usr/bin/env python3
"""Where a hot function's samples fall, by line of its own source file.

    bench/profile_lines.py [--inner] PERF_DATA BINARY SYMBOL_SUBSTRING SOURCE_FILE [TOP]

perf charges a sample to the innermost inlined frame (Highway's and the compiler's intrinsics
headers), which says little about which part of a kernel the time goes to. This script takes
the samples of the functions whose name contains SYMBOL_SUBSTRING, asks `addr2line -i` for
each sample's inline chain and charges it to the outermost frame in SOURCE_FILE (a file name
such as imatrix_mse_fp4_groups.cc), then prints the TOP lines (default 30) with their share.
With --inner, to the innermost frame in that file instead (where the file's own helpers are
inlined into one call site, the outermost frame is that call site for every sample).
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
    args = [a for a in sys.argv[1:] if a != "--inner"]
    inner = len(args) != len(sys.argv) - 1
    if len(args) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    data, binary, symbol, source = args[:4]
    top = int(args[4]) if len(args) > 4 else 30
    # Samples by address in the binary: runtime address - the executable mapping's start +
    # its file offset (PIE binaries as GNU ld lays them out: file offset = address), so that
    # functions of one name in several files (anonymous namespaces) are told apart.
    script = subprocess.run(["perf", "script", "-i", data, "--show-mmap-events", "-F",
                             "ip,sym"], capture_output=True, text=True, check=True).stdout
    maps = []  # (start, end, file offset) of BINARY's executable mappings
    addrs = collections.Counter()
    for line in script.splitlines():
        if "PERF_RECORD_MMAP" in line and line.rstrip().endswith(binary) and "r-xp" in line:
            span = line.split("[", 1)[1].split("]", 1)[0]
            start = int(span.split("(")[0], 16)
            length = int(span.split("(")[1].split(")")[0], 16)
            pgoff = int(span.split("@ ")[1].split()[0], 16)
            maps.append((start, start + length, pgoff))
        elif symbol in line:
            ip = int(line.split()[0], 16)
            for start, end, pgoff in maps:
                if start <= ip < end:
                    addrs[ip - start + pgoff] += 1
    if not addrs:
        print(f"no samples in {binary} in a function named like {symbol!r}", file=sys.stderr)
        return 1
    items = sorted(addrs.items())
    out = subprocess.run(["addr2line", "-a", "-i", "-e", binary] +
                         [hex(addr) for addr, _ in items],
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
        pick = (own[0] if inner else own[-1]) if own else ""  # addr2line -i: innermost first
        key = pick.rsplit("/", 1)[-1].split(" ")[0] if own else "(outside " + source + ")"
        by_line[key] += count
    total = sum(by_line.values())
    print(f"{total} samples")
    for key, count in by_line.most_common(top):
        print(f"{100.0 * count / total:5.1f}%  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
