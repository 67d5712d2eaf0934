#!/usr/bin/env bash
# Installs the Debian packages quench builds with, if any is missing. Idempotent; needs root
# (or sudo) only when something must be installed.
set -euo pipefail
# clang-14 and libclang-rt-14-dev (libFuzzer and the sanitizer runtimes): scripts/fuzz, which
# the default suite runs.
# openmpi-bin, slurmctld, slurmd, slurm-client: the real launchers the workers test starts
# (scripts/test-launchers: mpirun -np 3, a one-host Slurm with sbatch --array and srun).
# libopenblas0: GPTQ's Cholesky and block updates (loaded at run time).
pkgs=(meson ninja-build pkg-config g++ libhwy-dev libsimdjson-dev libtbb-dev
      libyaml-cpp-dev doctest-dev python3 clang-14 libclang-rt-14-dev
      openmpi-bin slurmctld slurmd slurm-client libopenblas0)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
