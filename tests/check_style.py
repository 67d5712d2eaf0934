#!/usr/bin/env python3
"""Two rules of the code's style (README, "Folders"; the repository's .clang-format), checked
on every C++ file git tracks (*.cc, *.h):
  - no line longer than 100 columns (generated tables too: scripts/gen_fused_sets.py moves a
    long comment to the line above);
  - each block of #include lines (lines not separated by a blank or other line) sorted, as
    clang-format's SortIncludes leaves it; a block naming hwy/foreach_target.h or
    hwy/highway.h is exempt, since Highway's per-target re-inclusion needs those first.
Prints each violation as FILE:LINE: what; exits 1 if any, and if it found no file at all
(a wrong root)."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 100
INCLUDE = re.compile(r'^#include\s+([<"][^>"]+[>"])')
HIGHWAY = ('"hwy/foreach_target.h"', '"hwy/highway.h"')


def tracked_files():
    try:
        out = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "--", "*.cc", "*.h"],
                             check=True, capture_output=True).stdout
        return [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        # Not a git checkout (a source archive): every C++ file under the tree.
        found = []
        for folder in ("include", "src", "tests", "bench", "collector"):
            for dirpath, _, names in os.walk(os.path.join(ROOT, folder)):
                found += [os.path.relpath(os.path.join(dirpath, n), ROOT)
                          for n in names if n.endswith((".cc", ".h"))]
        return sorted(found)


def check(lines):
    """The file's violations, as (line number, message)."""
    found = []
    block = []  # (line number, included name) of the current run of #include lines
    for number, line in enumerate(lines + [""], 1):
        if len(line) > LIMIT:
            found.append((number, f"{len(line)} columns (limit {LIMIT})"))
        m = INCLUDE.match(line)
        if m:
            block.append((number, m.group(1)))
            continue
        names = [name for _, name in block]
        if names != sorted(names) and not any(h in names for h in HIGHWAY):
            found.append((block[0][0], "#include block not sorted: " + ", ".join(names)))
        block = []
    return found


def main():
    files = tracked_files()
    problems = 0
    for rel in files:
        with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
            lines = f.read().split("\n")
        for number, what in check(lines):
            print(f"{rel}:{number}: {what}")
            problems += 1
    print(f"style: {len(files)} files, {problems} problems")
    return 1 if problems or not files else 0


if __name__ == "__main__":
    sys.exit(main())
