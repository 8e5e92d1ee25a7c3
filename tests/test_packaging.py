"""environment.yml and pyproject.toml name the same dependencies with the same version specs."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda's name for a package -> PyPI's


def pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {r.replace(" ", "") for r in reqs}


def environment_requirements() -> set[str]:
    reqs, in_dependencies = set(), False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if not line.startswith(" ") and line.strip():
            in_dependencies = line.startswith("dependencies:")
        m = re.match(r"^\s+- ([A-Za-z0-9_.\-]+)([<>=!~].*)?$", line)
        if in_dependencies and m and m.group(1) not in ("python", "pip"):
            reqs.add(CONDA_NAMES.get(m.group(1), m.group(1)) + (m.group(2) or ""))
    return {r.replace(" ", "") for r in reqs}


def test_environment_yml_agrees_with_pyproject():
    assert environment_requirements() == pyproject_requirements()


def test_torch_requirement_is_a_range_not_a_pin():
    torch_req = [r for r in pyproject_requirements() if r.startswith("torch")]
    assert torch_req == ["torch>=2.2"]
