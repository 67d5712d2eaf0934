#!/usr/bin/env python3
"""Exit 0 when the running interpreter's environment has exactly the versions a pinned
requirements file names (NAME==VERSION lines; a local version suffix such as +cpu is
ignored); otherwise print what differs and exit 1. Used by the venv setup scripts to skip
an install that is already done."""
import sys
from importlib import metadata

bad = []
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, ver = line.split("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        bad.append(f"{name} missing")
        continue
    if have.split("+")[0] != ver:
        bad.append(f"{name} {have} != {ver}")
if bad:
    print("\n".join(bad))
    sys.exit(1)
