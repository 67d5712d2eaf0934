#!/usr/bin/env bash
# Configures (once) and builds quench into build/. Uses Debian's meson (/usr/bin/meson) so that
# a meson from pip on PATH cannot change the build.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
MESON=/usr/bin/meson
[ -x "$MESON" ] || MESON=meson
build="${QUENCH_BUILD_DIR:-$root/build}"
if [ ! -f "$build/build.ninja" ]; then
  "$MESON" setup "$build" "$root" --buildtype=release >/dev/null
fi
# Quiet when it succeeds; the compiler's messages (ninja prints them on stdout) when it fails.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
"$MESON" compile -C "$build" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
