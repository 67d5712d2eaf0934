#!/usr/bin/env python3
"""The layering rule, checked on every #include "..." under src/ and include/:
a layer includes only its own headers and those of the layers below it. common < format,
schemes < plan < pipeline, verify < cli; public headers (include/quench/) are free of layers,
but quench/convert.h (the Convert entry point, options of the run) sits above the plan:
format, schemes and plan never include it. Prints each violation; exits 1 if any."""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Folder -> the include prefixes it may use (its own included). "quench/" is the public API.
ALLOWED = {
    "include/quench": {"quench"},
    "src/common": {"quench"},
    "src/format": {"quench", "format"},
    "src/schemes": {"quench", "schemes", "hwy"},
    "src/plan": {"quench", "format", "schemes", "plan"},
    "src/pipeline": {"quench", "format", "schemes", "plan", "pipeline", "calib"},
    "src/verify": {"quench", "format", "schemes", "plan", "verify"},
    # calib: its Highway kernels (imatrix_mse_*.cc, imatrix_mse-inl.h) as the schemes'.
    "src/calib": {"quench", "format", "schemes", "plan", "calib", "hwy"},
    "src/cli": {"quench", "format", "schemes", "plan", "pipeline", "verify", "calib", "cli"},
}
BELOW_CONVERT = {"include/quench", "src/common", "src/format", "src/schemes", "src/plan"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def main():
    problems, files = [], 0
    for folder, allowed in ALLOWED.items():
        path = os.path.join(ROOT, folder)
        if not os.path.isdir(path):
            continue
        for name in sorted(os.listdir(path)):
            if not name.endswith((".h", ".cc")):
                continue
            files += 1
            text = open(os.path.join(path, name), encoding="utf-8").read()
            for inc in INCLUDE.findall(text):
                prefix = inc.split("/", 1)[0] if "/" in inc else None
                where = f"{folder}/{name}: #include \"{inc}\""
                if prefix is None:
                    problems.append(where + " (includes name their folder)")
                elif prefix not in allowed:
                    problems.append(where + f" ({prefix}/ is not below {folder})")
                elif inc == "quench/convert.h" and folder in BELOW_CONVERT and name != "convert.h":
                    problems.append(where + " (the run's options are above this layer)")
    for p in problems:
        print(p)
    print(f"{files} files checked, {len(problems)} layering violation(s)")
    # A run that checked nothing is a failure too.
    sys.exit(1 if problems or files == 0 else 0)


if __name__ == "__main__":
    main()
