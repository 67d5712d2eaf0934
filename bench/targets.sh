#!/usr/bin/env bash
# One series of "Where the issues' targets stand" (bench/README.md): the four scripts/bench
# commands of that table run one after another, each case's ratio printed from its
# BENCH_JSON line. Run on an idle machine, after the checkpoints exist (a first run generates
# them; the series that generates them measures while they are still being written back, so
# run it twice and keep the second).
#
#   bench/targets.sh                        # the build in build/ (scripts/build.sh)
#   QUENCH_BUILD_DIR=/path bench/targets.sh # another build
#
# Extra arguments go to every scripts/bench call (e.g. --repeat 3).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
logs="${QUENCH_BENCH_DIR:-/tmp/quench-bench}/targets"
mkdir -p "$logs"
bench=("$root/scripts/bench" --no-reference)
echo "series start $(date -u '+%F %T') UTC, $(git -C "$root" log --oneline -1 2>/dev/null)"
"${QUENCH_BUILD_DIR:-$root/build}/quench" --version 2>/dev/null | grep '^kernels:' || true
run() {
  local name="$1"; shift
  "${bench[@]}" "$@" > "$logs/$name.log" 2>&1
  local rc=$?
  echo "  $name done $(date -u '+%T') (exit $rc; log $logs/$name.log)"
}
run kimi --layout kimi --scheme FP8_DYNAMIC --repeat 5 "$@"
run moe-pruned --layout moe --size-gb 4 --prune-experts 0.5 --scheme W4A16 \
    --scheme FP8_DYNAMIC --repeat 5 "$@"
run imatrix --observer imatrix_mse --scheme NVFP4A16 --scheme W4A16 --repeat 3 "$@"
run llama --scheme FP8_DYNAMIC --scheme W4A16 --scheme NVFP4A16 --repeat 5 "$@"
python3 - "$logs" <<'PY'
import json, sys, pathlib
logs = pathlib.Path(sys.argv[1])
row = "{:<24} {:<16} {:<22} {}"
print(row.format("case", "ratio (median)", "quench / floor, s", "target"))
for name in ("kimi", "moe-pruned", "imatrix", "llama"):
    lines = [l for l in (logs / f"{name}.log").read_text().splitlines()
             if l.startswith("BENCH_JSON ")]
    if not lines:
        print(f"{name}: no BENCH_JSON line; see {logs / (name + '.log')}")
        continue
    j = json.loads(lines[-1][len("BENCH_JSON "):])
    for r in j["results"]:
        case = f"{name} {r['scheme']}"
        if "ratio_wall" in r:  # --observer: the calibrated run against RTN's
            print(row.format(case, f"{r['ratio_wall']:.2f}x",
                             f"{r['calib_s']:.2f} / {r['rtn_s']:.2f} (RTN)", "3x"))
        else:
            print(row.format(case, f"{r['ratio_to_floor']:.3f} ({r['ratio_to_floor_median']:.3f})",
                             f"{r['quench_s']:.2f} / {r['floor_s']:.2f}",
                             j["targets"]["ratio_to_floor_max"]))
    if name == "kimi":
        print(row.format("kimi dry run", f"{min(j['dry_run_s']):.3f} s", "", "1 s"))
PY
