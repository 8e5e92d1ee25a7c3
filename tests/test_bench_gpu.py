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


NOTEBOOK = '''# %% [markdown]
# # A tiny notebook
# %%
%matplotlib inline
from IPython.display import display
import torch
import megabert_edu as mb
from megabert_edu.training import train
# %%
from bertviz import head_view  # missing: the cell is skipped, not failed
# %%
torch.manual_seed(0)
config = mb.MegatronBertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=12, max_position_embeddings=8, num_labels=2)
data = {"input_ids": torch.randint(5, 20, (8, 4)), "labels": torch.randint(0, 2, (8,))}
result = train(mb.MegatronBertForSequenceClassification(config), data, data, batch_size=4, progress=False)
display(result.metrics)
'''


def test_notebook_runner_skips_optional_cells_and_reports_training(tmp_path):
    # The runner gpu_check.sh uses where Jupyter is absent; the layout notebooks/src/<name>.py is what it expects.
    source = tmp_path / "notebooks" / "src" / "99_tiny.py"
    source.parent.mkdir(parents=True)
    source.write_text(NOTEBOOK)
    report = tmp_path / "report.json"
    # bertviz and IPython are installed here; packages of those names that fail to import stand for a machine
    # without them (the GPU machine has neither). Without IPython the set-up cell still runs: only its
    # `from IPython.display import display` line is dropped, and the runner's own `display` prints.
    missing = tmp_path / "without"
    for name in ("bertviz", "IPython"):
        (missing / name).mkdir(parents=True)
        error = f'ModuleNotFoundError("No module named {name!r}", name={name!r})'
        (missing / name / "__init__.py").write_text(f"raise {error}\n")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": f"{missing}{os.pathsep}{ROOT}"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebook_source.py"), str(source),
                           "--json", str(report)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(report.read_text())
    assert result["error"] is None and result["cells"] == 2
    assert result["skipped"] == ["cell 1 (no bertviz)"]
    assert set(result["metrics"]["result"]) >= {"accuracy", "f1", "loss", "steps", "examples_per_s"}
    assert "[notebook] 99_tiny.py: ok" in proc.stdout and "'accuracy'" in proc.stdout  # display(...) printed
    source.write_text(NOTEBOOK.replace("progress=False", "progres=False"))  # a real error fails the notebook
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebook_source.py"), str(source)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and "FAILED cell 2: TypeError" in proc.stdout and "progres" in proc.stdout
