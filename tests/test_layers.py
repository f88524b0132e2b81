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
