"""The package's shape: no import cycle, nothing of the tooling inside it, nothing that reads ../shared, and command
lines whose --help imports none of the heavy libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "picollm"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every picollm module this file imports, at the top or inside a function (a lazy import still ties the two)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from .x import y, from .. import z
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    graph = {module_name(p): imports_of(p, modules) for p in files}
    for module in graph:  # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = module.split(".")
        graph[module] |= {".".join(parts[:i]) for i in range(1, len(parts))} - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    graph = {m: {d for d in deps if not _is_package_init_edge(m, d)} for m, deps in graph.items()}
    assert cycles(graph) == []


def _is_package_init_edge(module: str, dep: str) -> bool:
    """A package's own ``__init__`` re-exporting its submodules is not a cycle between concerns."""
    return module.startswith(dep + ".")


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_in_the_package_reads_the_shared_folder() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if "../shared" in p.read_text()]
    assert offenders == []


HEAVY = ("torch", "optuna", "matplotlib", "wandb", "submitit")
HELP_PROBE = """
import sys
from picollm.cli import {command} as run
sys.argv = ["x", "--help"]
try:
    run()
except SystemExit:
    pass
print("HEAVY", *sorted(name for name in {heavy} if name in sys.modules))
"""


@pytest.mark.parametrize("command", ["run_train", "run_evaluate", "run_generate", "run_sweep", "run_analyze"])
def test_a_commands_help_imports_no_heavy_library(command: str) -> None:
    """--help answers in a tenth of a second, where importing torch and optuna took two."""
    probe = HELP_PROBE.format(command=command, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "usage:" in out and out.strip().splitlines()[-1] == "HEAVY"
