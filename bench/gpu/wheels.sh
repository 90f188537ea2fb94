#!/usr/bin/env bash
# Wheels the GPU machine lacks (its image has torch, transformers, pandas, pytest-benchmark but
# not diffusers or captum: /work/.library/device/KINDS.md), at the versions of the lock, for
# Python 3.12, into .whl/ (git-ignored). bench/gpu/check.sh installs whatever lies there.
# Usage, here (needs the package registry): bash bench/gpu/wheels.sh
# then, on the device: carry [".whl"], command: OUT=$OUT bash bench/gpu/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
pins=$(grep -i -E '^(diffusers|captum|importlib_metadata)==' requirements/lock.txt)
[ "$(echo "$pins" | wc -l)" -eq 3 ] || { echo "bench/gpu/wheels.sh: requirements/lock.txt lacks a pin of diffusers, captum or importlib_metadata" >&2; exit 1; }
rm -rf .whl && mkdir -p .whl
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl $pins
ls -l .whl
