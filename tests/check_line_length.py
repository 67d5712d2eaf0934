#!/usr/bin/env python3
"""The line-length rule (README, "Folders"; .clang-format's ColumnLimit), checked on every C++
file git tracks (*.cc, *.h): no line longer than 100 columns. Generated tables follow it too
(scripts/gen_fused_sets.py moves a long comment to the line above). Prints each long line as
FILE:LINE: COLUMNS; exits 1 if any, and if it found no file at all (a wrong root)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 100


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


def main():
    files = tracked_files()
    long_lines = 0
    for rel in files:
        with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                width = len(line.rstrip("\n"))
                if width > LIMIT:
                    print(f"{rel}:{number}: {width} columns (limit {LIMIT})")
                    long_lines += 1
    print(f"line length: {len(files)} files, {long_lines} lines over {LIMIT} columns")
    return 1 if long_lines or not files else 0


if __name__ == "__main__":
    sys.exit(main())
