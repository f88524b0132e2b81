"""Shared pytest fixtures."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import file_tiers
from utae.pastis.synthetic import generator_options, make_synthetic_pastis

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The official model's reference outputs, in the shared folder beside the repository.
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference" / "utae_official"
#: The official baselines' and TSViT's reference outputs (with ARCHITECTURES.md and README.md), beside it.
BASELINES_DIR = REPO_ROOT.parent / "shared" / "reference" / "baselines"
#: The tiers, marked in the test files themselves: ``pytestmark = pytest.mark.slow`` (a whole file) or
#: ``@pytest.mark.slow`` (one test) for what executes notebooks, starts several processes or a cluster, or takes
#: seconds to tens of seconds (`make test-quick` runs ``-m "not slow"``); ``pytest.mark.long`` for the checks of a
#: minute or more each (`make test` runs ``-m "not long"``; `make test-all`, what CI runs, includes them). A long
#: test is slow too (see :func:`pytest_collection_modifyitems`).


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every ``long`` test is also ``slow``: ``-m "not slow"`` leaves out all that ``-m "not long"`` does."""
    for item in items:
        if item.get_closest_marker("long") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under ``-m "not slow"`` (or ``"not long"``) the files whose every test would be deselected (by their
    module-level ``pytestmark``) are not even imported: importing papermill, nbconvert and the executors costs
    seconds of the quick loop."""
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    expression = (config.getoption("markexpr", "") or "").strip()
    if expression in ("not slow", "not long") and expression[4:] in file_tiers(collection_path):
        return True
    return None


@pytest.fixture(scope="session")
def synthetic_pastis(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``synthetic_pastis(copy_to=None, **options) -> Path``: the synthetic PASTIS of these generator options
    (:func:`utae.pastis.synthetic.make_synthetic_pastis`), built once per session and shared by every test that asks
    for the same options. Its files are read-only: a test that modifies the dataset, or needs it at a path of
    its own, passes ``copy_to`` and gets a writable copy there."""
    built: dict[str, Path] = {}

    def dataset(copy_to: Path | None = None, **options: Any) -> Path:
        full = generator_options(options)
        key = json.dumps(full, sort_keys=True)
        if key not in built:
            root = make_synthetic_pastis(tmp_path_factory.mktemp("synthetic") / "pastis", **full)
            for path in root.rglob("*"):
                if path.is_file():
                    path.chmod(0o444)
            built[key] = root
        if copy_to is None:
            return built[key]
        return Path(shutil.copytree(built[key], copy_to, copy_function=shutil.copyfile))

    return dataset


@pytest.fixture()
def data_root(tmp_path: Path) -> Path:
    """An empty ``data`` folder in the test's temporary folder (a sweep's ``dataset_root`` must exist)."""
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    """One torch thread: tiny test tensors gain nothing from more, and spinning threads stall on a shared 2-core machine."""
    torch.set_num_threads(int(os.environ.get("UTAE_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE_DIR / "state_dict.npz").is_file():
        pytest.skip(f"official reference outputs not found at {REFERENCE_DIR} (the shared folder is absent)")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def baselines_dir() -> Path:
    if not (BASELINES_DIR / "README.md").is_file():
        pytest.skip(f"official baselines' reference outputs not found at {BASELINES_DIR} (the shared folder is absent)")
    return BASELINES_DIR
