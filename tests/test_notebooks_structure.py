"""The teaching notebooks are a course: objectives, a measured time, exercises with checks, student copies
that are exactly the solutions minus the solution lines, and notebooks in step with their sources.

Reads the committed .ipynb files (nbformat's JSON, via the json module) and the percent-format sources; runs
nothing. nbval (``pytest notebooks/solutions --nbval-lax``) runs the solution notebooks, so every check cell
is itself exercised on the reference solution.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SOURCES = sorted((NOTEBOOKS / "src").glob("[0-9][0-9]_*.py"))
NAMES = [s.stem for s in SOURCES]
BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION(?::\s*(.*))?$")
END = re.compile(r"^\s*# END SOLUTION\s*$")


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def text(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def exercises(nb: dict) -> list[tuple[int, int]]:
    """(index of the exercise code cell, index of its check cell) for every exercise."""
    cells = nb["cells"]
    found = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code" and text(cell).startswith("# EXERCISE"):
            j = next((k for k in range(i + 1, len(cells)) if cells[k]["cell_type"] == "code"), None)
            found.append((i, j))
    return found


def without_solutions(source: str) -> str:
    """What the student copy of a solution cell must read: each solution block -> "# YOUR CODE HERE" + stub."""
    out, inside = [], False
    for line in source.splitlines():
        begin = BEGIN.match(line)
        if begin:
            inside = True
            out.append(begin.group(1) + "# YOUR CODE HERE")
            if begin.group(2):
                out.append(begin.group(1) + begin.group(2))
        elif END.match(line):
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def test_every_source_has_a_student_and_a_solution_notebook():
    assert NAMES, "no notebook sources found in notebooks/src"
    for name in NAMES:
        assert (NOTEBOOKS / f"{name}.ipynb").exists(), f"notebooks/{name}.ipynb missing: run scripts/make_notebooks.py"
        assert (NOTEBOOKS / "solutions" / f"{name}.ipynb").exists(), f"notebooks/solutions/{name}.ipynb missing"


@pytest.mark.parametrize("name", NAMES)
def test_header_has_objectives_prerequisites_and_a_measured_time(name):
    first = load(NOTEBOOKS / f"{name}.ipynb")["cells"][0]
    assert first["cell_type"] == "markdown", f"{name}: the first cell must be the markdown header"
    header = text(first)
    assert header.startswith("# "), f"{name}: the header starts with the title"
    objectives = re.search(r"## Learning objectives\n+((?:[-*] .+\n(?: .+\n)*)+)", header + "\n")
    assert objectives, f"{name}: no '## Learning objectives' list in the header"
    bullets = re.findall(r"^[-*] ", objectives.group(1), flags=re.M)
    assert 3 <= len(bullets) <= 5, f"{name}: {len(bullets)} learning objectives, expected 3-5"
    assert "**Prerequisites:**" in header, f"{name}: no '**Prerequisites:**' line"
    time_line = re.search(r"\*\*Time:\*\*(.*)", header)
    assert time_line, f"{name}: no '**Time:**' line"
    assert "{{RUNTIME}}" not in header, f"{name}: the runtime placeholder was not filled in"
    assert re.search(r"\d+ (s|min)\b", time_line.group(1)), f"{name}: the time line states no measured time"


@pytest.mark.parametrize("name", NAMES)
def test_three_to_five_exercises_each_with_a_check(name):
    nb = load(NOTEBOOKS / "solutions" / f"{name}.ipynb")
    found = exercises(nb)
    assert 3 <= len(found) <= 5, f"{name}: {len(found)} exercises, expected 3-5"
    headings = [text(c) for c in nb["cells"] if c["cell_type"] == "markdown" and "### Exercise" in text(c)]
    assert len(headings) == len(found), f"{name}: {len(headings)} '### Exercise' headings for {len(found)} cells"
    exercises_heading = next(i for i, c in enumerate(nb["cells"]) if "## Exercises" in text(c))
    for i, j in found:
        assert i > exercises_heading, f"{name}: exercise cell {i} comes before the '## Exercises' section"
        assert any(BEGIN.match(line) for line in text(nb["cells"][i]).splitlines()), (
            f"{name}: exercise cell {i} has no '# BEGIN SOLUTION' block")
        assert j is not None, f"{name}: exercise cell {i} has no check cell after it"
        check = text(nb["cells"][j])
        assert check.startswith("# CHECK") and "assert " in check, f"{name}: cell {j} after exercise {i} is no check"
        assert re.search(r"assert .+, ", check), f"{name}: check cell {j} has an assert without a message"


@pytest.mark.parametrize("name", NAMES)
def test_student_copy_is_the_solution_minus_the_solution_lines(name):
    student = load(NOTEBOOKS / f"{name}.ipynb")["cells"]
    solution = load(NOTEBOOKS / "solutions" / f"{name}.ipynb")["cells"]
    assert len(student) == len(solution), f"{name}: student and solution notebooks have different cell counts"
    blanked = {i for pair in exercises({"cells": solution}) for i in pair}
    for i, (s, t) in enumerate(zip(student, solution, strict=True)):
        if i in blanked:
            want = without_solutions(text(t)) if text(t).startswith("# EXERCISE") else text(t)
            assert text(s) == want, f"{name}: student cell {i} is not the solution cell minus its solution lines"
            assert not s.get("outputs"), f"{name}: student exercise/check cell {i} carries outputs"
        else:
            assert text(s) == text(t), f"{name}: cell {i} differs between the student and solution notebooks"
            assert s.get("outputs") == t.get("outputs"), f"{name}: cell {i} outputs differ (rebuild both)"
    assert "# BEGIN SOLUTION" not in "".join(text(c) for c in student), f"{name}: a solution leaked"


@pytest.mark.parametrize("name", NAMES)
def test_solution_notebook_is_executed_and_in_step_with_its_source(name):
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "scripts" / "make_notebooks.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    committed = load(NOTEBOOKS / "solutions" / f"{name}.ipynb")["cells"]
    rebuilt = builder.build(NOTEBOOKS / "src" / f"{name}.py", runtime="RUNTIME")
    assert len(committed) == len(rebuilt.cells), f"{name}: notebook out of date: run scripts/make_notebooks.py {name}"
    for i, (c, r) in enumerate(zip(committed, rebuilt.cells, strict=True)):
        if "RUNTIME" not in r.source:
            assert text(c) == r.source, f"{name}: cell {i} differs from its source: run scripts/make_notebooks.py"
        assert "slide_type" in c["metadata"].get("slideshow", {}), f"{name}: cell {i} has no slide metadata"
    code = [c for c in committed if c["cell_type"] == "code"]
    assert all(c["execution_count"] is not None for c in code), f"{name}: the solution notebook was not executed"
    errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{name}: the solution notebook has an error output"


def test_readme_states_each_measured_time_once():
    readme = (NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    runtimes = load(NOTEBOOKS / "runtimes.json")
    for name in NAMES:
        assert name in runtimes, f"{name}: no measured runtime in notebooks/runtimes.json"
        assert len(re.findall(rf"<!--rt:{name[:2]}-->", readme)) == 1, f"README: {name}'s time should appear once"
    assert "<!--rt:total-->" in readme, "README: no total time"
