"""The package's modules import each other in one direction: no module-level import cycle.

A cycle that happens to work in one import order (because ``megabert_edu/__init__.py`` imports the modules
in a lucky order) breaks as soon as a user imports a submodule first. Reading the import statements
catches it for every order at once, without starting an interpreter per module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import megabert_edu

PACKAGE = Path(megabert_edu.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(path: Path) -> set[str]:
    """Package modules imported at module level (not inside functions): the edges of the import graph."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:  # module level only
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c.startswith("megabert_edu") and c in MODULES and c != name)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in the graph (as a list of modules), or None. Package __init__ files are skipped as nodes:
    importing a submodule runs its package's __init__, but an __init__ that re-exports is not a cycle."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_level_import_cycle():
    packages = {name for name, p in MODULES.items() if p.name == "__init__.py"}
    graph = {name: module_level_imports(p) - packages for name, p in MODULES.items() if name not in packages}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_core_submodules_import_first_in_a_fresh_interpreter():
    """Importing a deep module before anything else works (the order __init__ would not pick)."""
    code = "import megabert_edu.checkpoints.hf, megabert_edu.interp, megabert_edu.training, megabert_edu.viz"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
