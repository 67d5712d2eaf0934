#!/usr/bin/env bash
# Create (or reuse) the collector's pinned venv (collector/requirements.txt).
#   QUENCH_COLLECTOR_VENV   venv path (default: <repo>/.venv-collector)
#   PYTHON                  interpreter used to create the venv (default: python3; 3.11 was used)
# Idempotent and quiet when the venv already has exactly the pinned versions.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="${QUENCH_COLLECTOR_VENV:-$repo/.venv-collector}"
req="$repo/collector/requirements.txt"
py="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "creating venv $venv" >&2
  "$py" -m venv "$venv"
fi
vpy="$venv/bin/python"

check() { "$vpy" "$here/venv_matches.py" "$req"; }

if check >/dev/null 2>&1; then
  exit 0
fi
echo "installing collector/requirements.txt into $venv" >&2
# 1. torch first, CPU build, exact pin: from pip's configured sources (a local wheel folder
#    here), else from PyTorch's CPU index (only then, so an offline machine does not wait on it).
torch_ver="$(grep -E '^torch==' "$req" | cut -d= -f3)"
if ! "$vpy" -c "import torch,sys; sys.exit(0 if torch.__version__.split('+')[0]=='$torch_ver' else 1)" 2>/dev/null; then
  "$vpy" -m pip install --quiet --disable-pip-version-check "torch==$torch_ver" >&2 ||
    "$vpy" -m pip install --quiet --disable-pip-version-check \
        --extra-index-url https://download.pytorch.org/whl/cpu "torch==$torch_ver" >&2
fi
# 2. the rest, with torch held at its pin by a constraint so pip cannot replace it.
cons="$(mktemp)"; trap 'rm -f "$cons"' EXIT
echo "torch==$torch_ver" > "$cons"
"$vpy" -m pip install --quiet --disable-pip-version-check -c "$cons" -r "$req" >&2
check >&2
