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
"$MESON" compile -C "$build" >/dev/null
