"""Build the teaching notebooks from their sources in notebooks/src/: solutions executed, student copies derived.

Each notebook is written as a plain Python file in the "percent" format (the one jupytext and VS Code
understand), so it diffs and reviews like code:

    # %% [markdown]
    # # A heading
    # Prose, one "# " per line.

    # %%
    x = torch.randn(2, 3)   # a code cell
    x.shape

Conventions the builder understands (notebooks/README.md has the teacher's view):

* ``{{RUNTIME}}`` in a markdown cell becomes the measured wall time of the solution notebook's run;
  the same measurement goes into notebooks/README.md (between ``<!--rt:NN-->`` markers) and is kept in
  notebooks/runtimes.json, so a build without execution still states it.
* An exercise is a code cell whose first line is ``# EXERCISE``. The lines between ``# BEGIN SOLUTION``
  and ``# END SOLUTION`` are the reference solution; the student copy replaces them with
  ``# YOUR CODE HERE`` and the stub written after the marker (``# BEGIN SOLUTION: answer = None``),
  indented like the marker. The next code cell, first line ``# CHECK``, asserts on the result.
* A code cell whose first line is ``# NBVAL_CHECK_OUTPUT`` has its output compared by nbval; every other
  cell only has to run without an error.
* Slides (RISE): the title and every "## " heading start a slide, other prose and "### " headings a
  sub-slide, code cells are fragments, and the set-up cells before the first numbered section ("## 1.")
  that import things are skipped.

Outputs:

    notebooks/solutions/NN_name.ipynb   solutions filled in, executed (nbval runs these in `make test`)
    notebooks/NN_name.ipynb             the student copy: the same cells and outputs, exercises blanked

    python scripts/make_notebooks.py                 # build and execute every notebook (commit the outputs)
    python scripts/make_notebooks.py 03 05           # only the notebooks whose names start with 03 / 05
    python scripts/make_notebooks.py --no-execute    # build without running (outputs empty, last runtimes kept)

Execution runs in notebooks/solutions/ (where nbval runs it), one kernel per notebook.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "notebooks" / "src"
NOTEBOOKS = ROOT / "notebooks"
SOLUTIONS = NOTEBOOKS / "solutions"
RUNTIMES = NOTEBOOKS / "runtimes.json"
README = NOTEBOOKS / "README.md"

CELL = re.compile(r"^# %%(.*)$")
MAGIC = re.compile(r"^# (%[a-z]\w*.*)$")  # jupytext writes IPython magics commented out: "# %matplotlib inline"
BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION(?::\s*(.*))?$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
EXERCISE_TAG, CHECK_TAG = "# EXERCISE", "# CHECK"
PLACEHOLDER = "{{RUNTIME}}"
README_RUNTIME = re.compile(r"<!--rt:(\d\d)-->.*?<!--/rt-->")
README_TOTAL = re.compile(r"<!--rt:total-->.*?<!--/rt-->")


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


def student_source(source: str) -> str:
    """The exercise cell as the student sees it: every solution block replaced by "# YOUR CODE HERE" + its stub."""
    out, inside = [], False
    for line in source.splitlines():
        begin = BEGIN.match(line)
        if begin:
            if inside:
                raise ValueError(f"nested '# BEGIN SOLUTION' in:\n{source}")
            inside = True
            indent, stub = begin.group(1), begin.group(2)
            out.append(f"{indent}# YOUR CODE HERE")
            if stub:
                out.append(indent + stub)
        elif END.match(line):
            if not inside:
                raise ValueError(f"'# END SOLUTION' without a BEGIN in:\n{source}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"'# BEGIN SOLUTION' without an END in:\n{source}")
    return "\n".join(out)


def check_exercises(name: str, cells: list[tuple[str, str]]) -> None:
    """Every exercise cell has a solution block and is followed by a check cell with an assert."""
    for i, (kind, text) in enumerate(cells):
        if kind != "code" or not text.startswith(EXERCISE_TAG):
            continue
        if not any(BEGIN.match(line) for line in text.splitlines()):
            raise ValueError(f"{name}: exercise cell {i} has no '# BEGIN SOLUTION' block")
        following = next(((k, t) for k, t in cells[i + 1:] if k == "code"), None)
        if following is None or not following[1].startswith(CHECK_TAG) or "assert" not in following[1]:
            raise ValueError(f"{name}: exercise cell {i} is not followed by a '# CHECK' cell with an assert")


def slide_type(kind: str, text: str, in_setup: bool) -> str:
    """RISE slide type: headings start slides, set-up code is skipped, code is revealed as fragments."""
    if kind == "markdown":
        return "slide" if text.startswith(("# ", "## ")) else "subslide"
    is_setup = any(line.startswith(("import ", "from ")) for line in text.splitlines())
    return "skip" if in_setup and is_setup else "fragment"


def build(source: Path, runtime: str | None) -> nbformat.NotebookNode:
    """The solution notebook (not executed) from a percent-format source, with slide metadata.

    runtime replaces the {{RUNTIME}} placeholder; None leaves it in place (see fill_runtime).
    """
    cells = parse_percent(source.read_text(encoding="utf-8"))
    check_exercises(source.name, cells)
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["rise"] = {"scroll": True, "transition": "none", "start_slideshow_at": "beginning"}
    in_setup = True
    for kind, text in cells:
        if kind == "markdown" and re.match(r"^## 1\b", text):
            in_setup = False
        if kind == "markdown":
            if runtime is not None:
                text = text.replace(PLACEHOLDER, runtime)
            cell = new_markdown_cell(text)
        else:
            cell = new_code_cell(text)
            if text.startswith(EXERCISE_TAG):
                cell.metadata["tags"] = ["exercise"]
            elif text.startswith(CHECK_TAG):
                cell.metadata["tags"] = ["check"]
        cell.metadata["slideshow"] = {"slide_type": slide_type(kind, text, in_setup)}
        nb.cells.append(cell)
    # Stable cell ids: the same source gives the same file, so git diffs show only real changes.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{source.stem[:2]}-{i:03d}"
    return nb


def fill_runtime(nb: nbformat.NotebookNode, runtime: str | None) -> None:
    """Write the measured runtime into the markdown cells that hold the placeholder."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = cell.source.replace(PLACEHOLDER, runtime or "not measured yet (run make_notebooks.py)")


def student_notebook(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The student copy: the same cells and outputs, exercises blanked, exercise and check cells without outputs."""
    nb = copy.deepcopy(solution)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "exercise" in tags:
            cell.source = student_source(cell.source)
        if "exercise" in tags or "check" in tags:
            cell.outputs, cell.execution_count = [], None
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int) -> None:
    from nbclient import NotebookClient  # only needed when executing; --no-execute works without it

    NotebookClient(nb, timeout=timeout, kernel_name="python3", coalesce_streams=True,
                   resources={"metadata": {"path": str(SOLUTIONS)}}).execute()
    for cell in nb.cells:  # execution timestamps would make every run a diff
        cell.metadata.pop("execution", None)


def describe(seconds: float) -> str:
    """'about 40 s' / 'about 2 min 10 s', rounded to what a measurement on a shared machine can say."""
    seconds = max(5, round(seconds / 5) * 5)
    if seconds < 90:
        return f"about {seconds} s"
    minutes, rest = divmod(seconds, 60)
    return f"about {minutes} min" + (f" {rest} s" if rest else "")


def runtime_text(entry: dict | None) -> str | None:
    if entry is None:
        return None
    return f"{describe(entry['seconds'])} to run (wall time measured on a {entry['cpus']}-core CPU, {entry['date']})"


def load_runtimes() -> dict:
    return json.loads(RUNTIMES.read_text()) if RUNTIMES.exists() else {}


def update_readme(runtimes: dict) -> None:
    """Write the measured times into notebooks/README.md's table and total line."""
    text = README.read_text(encoding="utf-8")

    def row(m: re.Match) -> str:
        entry = next((v for k, v in runtimes.items() if k.startswith(m.group(1))), None)
        return f"<!--rt:{m.group(1)}-->{describe(entry['seconds']) if entry else '?'}<!--/rt-->"

    text = README_RUNTIME.sub(row, text)
    total = sum(v["seconds"] for v in runtimes.values())
    text = README_TOTAL.sub(f"<!--rt:total-->{describe(total)}<!--/rt-->", text)
    README.write_text(text, encoding="utf-8")


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
    SOLUTIONS.mkdir(exist_ok=True)
    runtimes = load_runtimes()
    for source in sources:
        nb = build(source, runtime=None)  # the source is read once: edits during the run wait for the next build
        if not args.no_execute:
            start, load = time.perf_counter(), os.getloadavg()[0]  # a busy machine shows in the load average
            execute(nb, args.timeout)
            runtimes[source.stem] = {"seconds": round(time.perf_counter() - start, 1), "cpus": os.cpu_count(),
                                     "load_average": round(load, 1), "date": time.strftime("%Y-%m-%d")}
        fill_runtime(nb, runtime_text(runtimes.get(source.stem)))  # the header states this very run
        nbformat.validate(nb)
        nbformat.write(nb, SOLUTIONS / f"{source.stem}.ipynb")
        nbformat.write(student_notebook(nb), NOTEBOOKS / f"{source.stem}.ipynb")
        took = "" if args.no_execute else f" in {runtimes[source.stem]['seconds']:.0f} s"
        print(f"wrote notebooks/{source.stem}.ipynb and notebooks/solutions/{source.stem}.ipynb{took}")
    if not args.no_execute:
        # Re-read before writing: another build may have finished meanwhile; only this run's entries change.
        merged = {**load_runtimes(), **{s.stem: runtimes[s.stem] for s in sources}}
        RUNTIMES.write_text(json.dumps(dict(sorted(merged.items())), indent=1) + "\n")
        update_readme(merged)


if __name__ == "__main__":
    main()
