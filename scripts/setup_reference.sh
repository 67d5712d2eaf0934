#!/usr/bin/env bash
# Create (or reuse) the pinned reference venv used by scripts/make_golden.py.
#   QUENCH_REF_VENV   venv path (default: <repo>/.venv-ref)
#   PYTHON            interpreter used to create the venv (default: python3; 3.11 was used)
# Idempotent: if the venv already has exactly the pinned versions, nothing is installed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="${QUENCH_REF_VENV:-$repo/.venv-ref}"
req="$here/requirements-reference.txt"
py="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "creating venv $venv"
  "$py" -m venv "$venv"
fi
vpy="$venv/bin/python"

check() { "$vpy" "$here/venv_matches.py" "$req"; }

if check >/dev/null 2>&1; then
  echo "reference venv $venv already matches $req"
  exit 0
fi

# 1. torch first, CPU build only, exact pin, no dependency upgrades of anything else.
torch_ver="$(grep -E '^torch==' "$req" | cut -d= -f3)"
if ! "$vpy" -c "import torch,sys; sys.exit(0 if torch.__version__.split('+')[0]=='$torch_ver' else 1)" 2>/dev/null; then
  "$vpy" -m pip install --disable-pip-version-check \
      --extra-index-url https://download.pytorch.org/whl/cpu "torch==$torch_ver"
fi
# 2. the rest, with torch held at its pin by a constraint so pip cannot replace it.
cons="$(mktemp)"; trap 'rm -f "$cons"' EXIT
echo "torch==$torch_ver" > "$cons"
"$vpy" -m pip install --disable-pip-version-check -c "$cons" -r "$req"
check
"$vpy" -c "import torch, compressed_tensors, llmcompressor; print('torch', torch.__version__, 'ct', compressed_tensors.__version__, 'llmc', llmcompressor.__version__)"
