"""The venv is the lock's (docs/environment.md): every distribution installed is pinned in ``requirements.lock`` at
its installed version and every pin is installed, the lock answers ``requirements.in`` and the package's own ranges,
and ``pip check`` passes. Asks no registry: the lock's text, the installed metadata and pip's own check."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from benchmarks.lockfile import LOCK, locked_versions

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Not held to the lock: the venv's installer and build tools (pip and setuptools are pinned there, but a venv
#: made by hand may carry others, and upgrading pip changes nothing the project runs), and the project itself
#: (installed editable from the working tree by make venv).
EXCEPTED = frozenset({"pip", "setuptools", "wheel", "utae"})


def _installed() -> list[tuple[str, str, str]]:
    """``(canonical name, version, where)`` of every distribution importlib.metadata finds on ``sys.path``."""
    found = []
    for dist in importlib.metadata.distributions():
        where = str(dist.locate_file(""))
        name = dist.metadata["Name"]
        assert name, f"a distribution without a name in {where}"
        found.append((canonicalize_name(name), dist.version, where))
    return found


def test_every_installed_distribution_is_pinned_in_the_lock_at_its_installed_version():
    locked = locked_versions(LOCK)
    installed = _installed()
    astray = sorted(f"{name}=={version} in {where} (lock: {locked.get(name, 'no pin')})"
                    for name, version, where in installed if name not in EXCEPTED and locked.get(name) != version)
    assert not astray, f"installed but not as {LOCK.name} pins it (make venv remakes the venv): {astray}"
    missing = sorted(set(locked) - {name for name, _, _ in installed} - EXCEPTED)
    assert not missing, f"pinned in {LOCK.name} but not installed (make venv): {missing}"


def test_the_lock_answers_requirements_in_and_the_package_ranges_with_the_cpu_torch():
    """A pin edited in requirements.in without ``make lock`` shows here; so does a lock whose torch is not the CPU
    build (a newer or unpinned torch pulls a multi-GB CUDA build)."""
    locked = locked_versions(LOCK)
    lines = [line.split("#", 1)[0].strip() for line in (REPO_ROOT / "requirements.in").read_text().splitlines()]
    asked = [Requirement(line) for line in lines if line]
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    ranges = [Requirement(text) for text in pyproject["project"]["dependencies"]]
    assert {canonicalize_name(r.name) for r in ranges} <= {canonicalize_name(r.name) for r in asked}
    for req in asked + ranges:
        name = canonicalize_name(req.name)
        assert name in locked, f"{req} has no pin in {LOCK.name}: make lock"
        assert req.specifier.contains(Version(locked[name]), prereleases=True), \
            f"{LOCK.name} pins {name}=={locked[name]}, outside {req}: make lock"
    assert Version(locked["torch"]).local == "cpu", locked["torch"]


def test_pip_check_passes():
    """pip's own check of the installed distributions' requirements (no index is asked)."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("text", "error"), [
    ("numpy>=2.0\n", r"x\.lock:1: expected name==version with no marker, got 'numpy>=2\.0'"),
    ("numpy==2.0 ; python_version < '3.12'\n", r"x\.lock:1: expected name==version with no marker"),
    ("# header\nnumpy==2.0 \\\n    --hash=sha256:00\nNumPy==2.1\n", r"x\.lock:4: numpy is pinned twice"),
    ("numpy=2.0\n", r"x\.lock:1: expected name==version, got 'numpy=2\.0'"),
])
def test_a_bad_lock_is_a_one_line_error_naming_the_file_and_line(tmp_path, text, error):
    (tmp_path / "x.lock").write_text(text)
    with pytest.raises(ValueError, match=error):
        locked_versions(tmp_path / "x.lock")


def test_the_lock_reader_joins_continued_lines_and_skips_options_and_comments(tmp_path):
    lock = tmp_path / "x.lock"
    lock.write_text("#\n--find-links /somewhere\ntorch==2.13.0+cpu \\\n    --hash=sha256:ab\n    # via -r x.in\n"
                    "Jupyter_Client==8.10.0 \\\n    --hash=sha256:cd \\\n    --hash=sha256:ef\n    # via\n    #   a\n")
    assert locked_versions(lock) == {"torch": "2.13.0+cpu", "jupyter-client": "8.10.0"}
