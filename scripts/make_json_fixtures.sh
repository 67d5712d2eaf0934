#!/bin/sh
# Regenerates data/json/expected/*.json from data/json/input/*.json with Python's json module,
# writing exactly what the reference writes for config.json and the index
# (json.dump(obj, f, indent=2, sort_keys=True): no trailing newline). Any python3 will do.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
in="$here/data/json/input"
out="$here/data/json/expected"
mkdir -p "$out"
# Random doubles (fixed seed, stable across Python 3 versions) to exercise float repr widely:
# raw bit patterns across the whole range plus short decimals near the notation switch points.
python3 - "$in/random_floats.json" <<'PY'
import json, math, random, struct, sys
r = random.Random(1234)
vals = []
while len(vals) < 400:
    v = struct.unpack("<d", struct.pack("<Q", r.getrandbits(64)))[0]
    if math.isfinite(v):
        vals.append(v)
for _ in range(400):
    e = r.randint(-8, 18)
    vals.append(round(r.uniform(-10, 10), r.randint(0, 6)) * 10.0 ** e)
vals += [10.0 ** e for e in range(-10, 20)] + [1.5 * 10.0 ** e for e in range(-10, 20)]
with open(sys.argv[1], "w") as f:
    json.dump({"values": vals}, f)
PY
for f in "$in"/*.json; do
  python3 -c 'import json,sys; json.dump(json.load(open(sys.argv[1], encoding="utf-8")), open(sys.argv[2], "w", encoding="utf-8"), indent=2, sort_keys=True)' \
    "$f" "$out/$(basename "$f")"
done
