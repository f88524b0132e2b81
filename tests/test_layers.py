"""The package's import layers (docs/package.md): each subpackage imports only from the subpackages below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "utae"
_ABOVE_TRAINING = {"util", "models", "machine", "pastis", "perturb", "config", "rundir"}
#: What each subpackage may import (the table of docs/package.md).
ALLOWED: dict[str, set[str]] = {
    "util": set(),
    "models": {"util"},
    "machine": {"util"},
    "pastis": {"util"},
    "perturb": {"util", "pastis"},
    "config": {"util", "pastis", "perturb", "models"},
    "rundir": {"util", "pastis", "perturb", "machine", "config"},
    "training": _ABOVE_TRAINING,
    "study": {"util", "pastis", "perturb", "config", "rundir"},
    "report": {"util", "pastis", "perturb", "config", "rundir", "study"},
    "sweep": _ABOVE_TRAINING | {"study", "report"},
    "exchange": _ABOVE_TRAINING | {"study", "report", "sweep"},
    "predict": _ABOVE_TRAINING | {"training"},
}


def _imports(path: Path) -> set[str]:
    """The subpackages of ``utae`` that a module imports (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if node.module != "utae" else [f"utae.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("utae.") and (PACKAGE / n.split(".")[1]).is_dir()}
    return found


def test_every_subpackage_is_in_the_table() -> None:
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(ALLOWED)


@pytest.mark.parametrize("subpackage", sorted(ALLOWED))
def test_a_subpackage_imports_only_the_layers_below_it(subpackage: str) -> None:
    wrong = {f"{path.relative_to(PACKAGE)} imports utae.{name}"
             for path in (PACKAGE / subpackage).rglob("*.py") for name in _imports(path) - ALLOWED[subpackage] - {subpackage}}
    assert not wrong, sorted(wrong)


def test_the_table_has_no_circle() -> None:
    state: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert state.get(name) != 1, " -> ".join(path + (name,))
        if state.get(name) == 2:
            return
        state[name] = 1
        for below in ALLOWED[name]:
            visit(below, path + (name,))
        state[name] = 2

    for name in ALLOWED:
        visit(name, ())


def _module_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (function-level imports included; a subpackage's ``__init__``
    counts as its own module)."""
    files = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}

    def owner(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                found = owner(target) if target.startswith("utae") else None
                if found and found != module and not (files[found].name == "__init__.py" and module.startswith(found + ".")):
                    graph[module].add(found)
    return graph


def test_no_module_imports_itself_back() -> None:
    """No import circle between modules either (a function-level import counts: it hides a circle, not removes it)."""
    graph, state, circles = _module_graph(), {}, []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, circles
