"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The official model's reference outputs, in the shared folder beside the repository.
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference" / "utae_official"
#: The longest checks, a minute or more each: a sweep killed at many moments, jobs on a Slurm cluster, both
#: notebooks installed and executed as in Colab, torch.compile's warm-up. `make test` leaves them out;
#: `make test-all` (what CI runs) includes them. They are slow too.
LONG_FILES = frozenset({"test_kill.py", "test_slurm.py", "test_colab.py"})
LONG_TESTS = frozenset({"test_compile_matches_eager"})
#: Test files that execute notebooks, start several processes or a cluster: `make test-quick` leaves them out.
SLOW_FILES = LONG_FILES | {"test_notebooks.py", "test_report_browser.py", "test_ddp.py", "test_executor.py",
                           "test_exchange.py", "test_pretrained.py"}
#: Single tests of other files that take seconds to tens of seconds (two training processes, a learnability fit,
#: bf16 on a CPU without native bf16, a model trained for the bf16 checks), by name or with their parameters.
SLOW_TESTS = LONG_TESTS | {"test_two_processes_on_one_run_dir_never_mix_their_files",
                           "test_learnable_from_the_time_series_not_from_one_date",
                           "test_bf16_autocast_on_cpu_stays_close_to_float32[case_medium]",
                           "test_a_bf16_training_step_runs_the_ltae_in_float32_and_keeps_the_logits_within_bf16_rounding",
                           "test_evaluating_a_trained_model_in_bf16_changes_few_predictions"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of :data:`SLOW_FILES`, and :data:`SLOW_TESTS`, ``slow`` (``pytest -m "not slow"`` is the
    quick edit loop), and those of :data:`LONG_FILES` and :data:`LONG_TESTS` also ``long`` (``make test`` runs
    ``-m "not long"``)."""
    for item in items:
        if item.path.name in SLOW_FILES or item.originalname in SLOW_TESTS or item.name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if item.path.name in LONG_FILES or item.originalname in LONG_TESTS:
            item.add_marker(pytest.mark.long)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under ``-m "not slow"`` (or ``"not long"``) the files whose every test would be deselected are not even
    imported: importing papermill, nbconvert and the executors costs seconds of the quick loop."""
    expression = (config.getoption("markexpr", "") or "").strip()
    if expression == "not slow" and collection_path.name in SLOW_FILES:
        return True
    if expression == "not long" and collection_path.name in LONG_FILES:
        return True
    return None


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    """One torch thread: tiny test tensors gain nothing from more, and spinning threads stall on a shared 2-core machine."""
    torch.set_num_threads(int(os.environ.get("UTAE_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE_DIR / "state_dict.npz").is_file():
        pytest.skip(f"official reference outputs not found at {REFERENCE_DIR} (the shared folder is absent)")
    return REFERENCE_DIR
