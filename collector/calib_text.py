#!/usr/bin/env python3
"""Calibration and evaluation text from a source every Python install ships.

The text is CPython's `pydoc_data.topics` (the Python Language Reference topics that `help()`
shows: 79 topics, about 465 kB of English prose with some code examples), read from the
interpreter that runs this script. It is split deterministically into two disjoint halves:

* topics are sorted by name; even positions (0, 2, ...) go to the calibration half, odd
  positions to the evaluation half, so a topic's paragraphs never straddle the halves;
* each topic is cut into paragraphs at blank lines; paragraphs of fewer than MIN_WORDS words
  (headings, lone code lines) are dropped;
* repeated paragraphs are kept once, and a paragraph of the calibration half is left out of
  the evaluation half (several topics repeat sections of others), so the halves share none;
* each half is written as plain text, one paragraph per sample, samples separated by one
  blank line: the format `collect-stats --text` reads (see collect_stats.read_samples).

Usage: calib_text.py OUT_DIR  ->  OUT_DIR/calib.txt, OUT_DIR/eval.txt, OUT_DIR/source.json
(source.json: Python version, sha256 of topics.py, topic names and sample counts per half).
The collector's --text takes calib.txt; whoever evaluates (perplexity) takes eval.txt.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys

MIN_WORDS = 8


def paragraphs(text: str) -> list[str]:
    out = []
    for p in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        p = p.strip("\n").rstrip()
        if len(p.split()) >= MIN_WORDS:
            out.append(p.strip())
    return out


def split_halves(topics: dict[str, str]) -> tuple[list[str], list[str], list[str], list[str]]:
    """(calib samples, eval samples, calib topic names, eval topic names)."""
    names = sorted(topics)
    calib_names, eval_names = names[0::2], names[1::2]
    calib = unique(p for n in calib_names for p in paragraphs(topics[n]))
    # Several topics repeat whole sections of others: a paragraph already in the calibration
    # half is left out of the evaluation half, so the two share no sample.
    seen = set(calib)
    evals = [p for p in unique(p for n in eval_names for p in paragraphs(topics[n])) if p not in seen]
    return calib, evals, calib_names, eval_names


def unique(items) -> list[str]:
    seen, out = set(), []
    for p in items:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def write(out_dir: str) -> dict:
    import pydoc_data.topics as src
    calib, evals, cn, en = split_halves(src.topics)
    os.makedirs(out_dir, exist_ok=True)
    with open(src.__file__, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    info = {
        "source": "pydoc_data.topics (CPython standard library)",
        "python": sys.version.split()[0],
        "topics_py_sha256": sha,
        "rule": "topics sorted by name; even positions calib, odd eval; paragraphs at blank "
                f"lines with >= {MIN_WORDS} words, each kept once, none in both halves; one "
                "paragraph per sample",
        "calib": {"file": "calib.txt", "samples": len(calib), "topics": cn},
        "eval": {"file": "eval.txt", "samples": len(evals), "topics": en},
    }
    for name, samples in (("calib.txt", calib), ("eval.txt", evals)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            f.write("\n\n".join(samples) + "\n")
    with open(os.path.join(out_dir, "source.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    return info


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    info = write(argv[0])
    print(f"{argv[0]}/calib.txt: {info['calib']['samples']} samples; "
          f"{argv[0]}/eval.txt: {info['eval']['samples']} samples "
          f"(pydoc_data.topics, Python {info['python']}, sha256 {info['topics_py_sha256'][:16]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
