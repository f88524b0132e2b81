"""The test tiers read from a file's ``pytestmark`` (tests/conftest.py, ``file_tiers``): what ``make test-quick``
and ``make test`` leave out without importing a file must be what its marks say, however the line is formatted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from helpers import file_tiers

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize(("text", "tiers"), [
    ("pytestmark = pytest.mark.slow\n", {"slow"}),
    ("pytestmark = pytest.mark.long  # a comment\n", {"slow", "long"}),
    ("pytestmark = (\n    pytest.mark.slow\n)\n", {"slow"}),
    ("pytestmark = [\n    pytest.mark.filterwarnings('ignore'),\n    pytest.mark.long,\n]\n", {"slow", "long"}),
    ("pytestmark: list = [pytest.mark.slow]\n", {"slow"}),
    ("x = 1\n", set()),
    ("def f():\n    pytestmark = pytest.mark.slow\n", set()),  # not module level
    ("pytestmark = pytest.mark.filterwarnings('ignore:slow')\n", set()),
])
def test_the_tiers_do_not_depend_on_formatting(tmp_path: Path, text: str, tiers: set[str]) -> None:
    path = tmp_path / "test_x.py"
    path.write_text("import pytest\n" + text)
    assert file_tiers(path) == tiers


def _module_marks(path: Path) -> set[str]:
    spec = importlib.util.spec_from_file_location(f"tiers_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    finally:
        sys.path.remove(str(path.parent))
    marks = getattr(module, "pytestmark", [])
    marks = marks if isinstance(marks, list) else [marks]
    names = {m.name for m in marks} & {"slow", "long"}
    return names | {"slow"} if "long" in names else names


@pytest.mark.slow  # imports every test file (notebook runners, executors)
def test_every_test_file_s_tiers_are_its_marks() -> None:
    files = sorted(p for p in TESTS.rglob("test_*.py"))
    assert len(files) > 40
    for path in files:
        assert file_tiers(path) == _module_marks(path), path.relative_to(TESTS)
