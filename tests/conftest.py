"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The official model's reference outputs, in the shared folder beside the repository.
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference" / "utae_official"


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    """One torch thread: tiny test tensors gain nothing from more, and spinning threads stall on a shared 2-core machine."""
    torch.set_num_threads(int(os.environ.get("UTAE_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE_DIR / "state_dict.npz").is_file():
        pytest.skip(f"official reference outputs not found at {REFERENCE_DIR} (the shared folder is absent)")
    return REFERENCE_DIR
