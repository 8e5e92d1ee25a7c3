"""Run one notebook source (notebooks/src/NN_name.py, percent format) as plain Python, cell by cell.

For machines without Jupyter (the GPU machine of scripts/gpu_check.sh):

    python scripts/run_notebook_source.py notebooks/src/05_finetuning.py [--json result.json]

Code cells run in order in one namespace, with the working directory set to notebooks/ (where nbval
runs them). IPython magics (lines starting with % or !) are dropped, `display` prints, plots go to a
non-interactive backend. A cell that needs an optional package that is missing (bertviz, ipywidgets)
is skipped and reported, not failed. Any other error stops the notebook and the exit status is 1.
The summary line reports the wall time and the metrics of every TrainResult the notebook produced.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")  # plt.show() becomes a no-op
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

OPTIONAL = {"bertviz", "ipywidgets", "IPython"}  # cells needing these are skipped when they are missing
# Jupyter's `display` is the one thing of IPython the notebooks' set-up cells import; without IPython that
# line is dropped and the namespace's `display` (print) stands in, so the rest of the cell still runs.
DISPLAY_IMPORT = "from IPython.display import display"


@functools.cache
def has_ipython() -> bool:
    try:
        import IPython.display  # noqa: F401
    except ImportError:
        return False
    return True


def code_cells(source: str) -> list[str]:
    """The code cells of a percent-format source, magics removed; markdown cells dropped."""
    cells, current, is_code = [], [], False
    for line in source.splitlines():
        if line.startswith("# %%"):
            if is_code:
                cells.append("\n".join(current))
            current, is_code = [], "[markdown]" not in line
            continue
        if line.lstrip().startswith(("%", "!")):
            continue  # an IPython magic or shell escape: not Python
        if line.strip() == DISPLAY_IMPORT and not has_ipython():
            continue
        current.append(line)
    if is_code:
        cells.append("\n".join(current))
    return [c for c in cells if c.strip()]


def run(path: Path) -> dict:
    """Execute the notebook source; returns {"seconds", "cells", "skipped", "error", "metrics"}."""
    source = path.read_text()
    namespace = {"__name__": "__main__", "__file__": str(path), "display": print}
    report = {"notebook": path.name, "cells": 0, "skipped": [], "error": None, "metrics": {}}
    start = time.perf_counter()
    for i, cell in enumerate(code_cells(source)):
        try:
            exec(compile(cell, f"{path.name} cell {i}", "exec"), namespace)  # noqa: S102 - the notebook's own code
            report["cells"] += 1
        except ModuleNotFoundError as error:
            if error.name not in OPTIONAL:
                report["error"] = f"cell {i}: {error!r}"
                traceback.print_exc()
                break
            report["skipped"].append(f"cell {i} (no {error.name})")
        except Exception as error:  # noqa: BLE001 - report any failure of the notebook's code, then stop
            report["error"] = f"cell {i}: {type(error).__name__}: {error}"
            traceback.print_exc()
            break
    report["seconds"] = time.perf_counter() - start
    report["metrics"] = train_results(namespace)
    return report


def train_results(namespace: dict) -> dict:
    """The metrics, steps, time and examples/s of every megabert_edu TrainResult left in the notebook's namespace."""
    from megabert_edu.training import TrainResult  # after the notebook ran: its imports set up the package

    return {name: {**value.metrics, "steps": value.steps, "train_seconds": round(value.seconds, 1),
                   "examples_per_s": round(value.examples_per_second, 1)}
            for name, value in namespace.items() if isinstance(value, TrainResult)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--json", type=Path, default=None, help="write the report here too")
    args = parser.parse_args()
    source = args.source.resolve()
    os.chdir(source.parents[1])  # notebooks/
    sys.path.insert(0, str(source.parents[2]))  # the repository root, in case the package is not installed
    report = run(source)
    metrics = "; ".join(f"{name}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                 for k, v in m.items()) for name, m in report["metrics"].items())
    status = "FAILED " + report["error"] if report["error"] else "ok"
    skipped = f", skipped {', '.join(report['skipped'])}" if report["skipped"] else ""
    print(f"[notebook] {report['notebook']}: {status}, {report['cells']} cells in {report['seconds']:.1f}s"
          f"{skipped}{'; ' + metrics if metrics else ''}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    sys.exit(1 if report["error"] else 0)


if __name__ == "__main__":
    main()
