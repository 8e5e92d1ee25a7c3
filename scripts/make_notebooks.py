"""Build the teaching notebooks in notebooks/ from their sources in notebooks/src/, and run them.

Each notebook is written as a plain Python file in the "percent" format (the one jupytext and VS Code
understand), so it diffs and reviews like code:

    # %% [markdown]
    # # A heading
    # Prose, one "# " per line.

    # %%
    x = torch.randn(2, 3)   # a code cell
    x.shape

A code cell whose first line is ``# NBVAL_CHECK_OUTPUT`` has its output compared by nbval in CI
(``pytest notebooks --nbval-lax``); every other cell only has to run without an error.

    python scripts/make_notebooks.py                 # build and execute every notebook (commit the outputs)
    python scripts/make_notebooks.py 03 05           # only the notebooks whose names start with 03 / 05
    python scripts/make_notebooks.py --no-execute    # build without running (outputs empty)

Execution runs in notebooks/ (as nbval and JupyterLab do), one kernel per notebook, and prints how long
each notebook took.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "notebooks" / "src"
NOTEBOOKS = ROOT / "notebooks"
CELL = re.compile(r"^# %%(.*)$")
MAGIC = re.compile(r"^# (%[a-z]\w*.*)$")  # jupytext writes IPython magics commented out: "# %matplotlib inline"


def parse_percent(text: str) -> list[tuple[str, str]]:
    """[(kind, source)] from a percent-format file; kind is "markdown" or "code"."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        m = CELL.match(line)
        if m:
            cells.append(("markdown" if "[markdown]" in m.group(1) else "code", []))
        elif cells:
            if cells[-1][0] == "code" and MAGIC.match(line):
                line = MAGIC.match(line).group(1)
            cells[-1][1].append(line)
        elif line.strip() and not line.startswith("#"):
            raise ValueError(f"code before the first '# %%' marker: {line!r}")
    out = []
    for kind, lines in cells:
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if not lines:
            continue
        if kind == "markdown":
            bad = [ln for ln in lines if ln and not ln.startswith("#")]
            if bad:
                raise ValueError(f"markdown line without '# ': {bad[0]!r}")
            lines = [ln[2:] if ln.startswith("# ") else ln[1:] for ln in lines]
        out.append((kind, "\n".join(lines)))
    return out


def build(source: Path) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, text in parse_percent(source.read_text(encoding="utf-8")):
        nb.cells.append(new_markdown_cell(text) if kind == "markdown" else new_code_cell(text))
    # Stable cell ids: the same source gives the same file, so git diffs show only real changes.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{source.stem[:2]}-{i:03d}"
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int) -> None:
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name="python3", coalesce_streams=True,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    for cell in nb.cells:  # execution timestamps would make every run a diff
        cell.metadata.pop("execution", None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("only", nargs="*", help="notebook name prefixes (default: all)")
    parser.add_argument("--no-execute", action="store_true", help="write the notebooks without running them")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    sources = sorted(SOURCES.glob("[0-9][0-9]_*.py"))
    if args.only:
        sources = [s for s in sources if any(s.stem.startswith(p) for p in args.only)]
    if not sources:
        sys.exit(f"no notebook sources match {args.only} in {SOURCES}")
    for source in sources:
        nb = build(source)
        target = NOTEBOOKS / f"{source.stem}.ipynb"
        start = time.perf_counter()
        if not args.no_execute:
            execute(nb, args.timeout)
        nbformat.validate(nb)
        nbformat.write(nb, target)
        took = f" in {time.perf_counter() - start:.0f} s" if not args.no_execute else ""
        print(f"wrote {target.relative_to(ROOT)}{took}")


if __name__ == "__main__":
    main()
