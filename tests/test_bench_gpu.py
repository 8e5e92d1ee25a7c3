"""benchmarks/bench_gpu.py --smoke runs end to end on a CPU (the full run needs a GPU: scripts/gpu_check.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_smoke_runs_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke", "--repeats", "1",
                           "--device", "cpu", "--peak-tflops", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    training = results["training"]
    assert training["ours"]["sequences_per_s"] > 0 and training["reference"]["sequences_per_s"] > 0
    assert 0 < training["ours"]["mfu"] < 1  # measured against the 1 TFLOP/s peak given above
    assert [(r["batch"], r["seq"]) for r in results["inference"]] == [(1, 16), (4, 32)]
    for row in results["generation"]:
        # fp32 on a CPU: both caches pick exactly the reference's tokens
        assert row["dynamic_first_difference"] is None and row["static_first_difference"] is None
    assert "MFU" in proc.stdout and "greedy generation" in proc.stdout
