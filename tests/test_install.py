"""The package installs whole: a non-editable build (as Colab installs from git) holds every module of utae/,
and each imports from the installed copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds and installs the package (about 20 s)

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_a_non_editable_install_holds_and_imports_every_module(tmp_path: Path) -> None:
    target = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--no-cache-dir", "--target", str(target), str(REPO_ROOT)],
                           capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    modules = sorted(".".join(p.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in (REPO_ROOT / "utae").rglob("*.py") if p.name != "__main__.py")
    installed = {".".join(p.relative_to(target).with_suffix("").parts).removesuffix(".__init__")
                 for p in (target / "utae").rglob("*.py")}
    assert set(modules) <= installed, sorted(set(modules) - installed)
    code = ("import importlib, json, sys\n"
            "files = {m: importlib.import_module(m).__file__ for m in json.loads(sys.argv[1])}\n"
            "print(json.dumps(files))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(target)}
    # run outside the repository (cwd tmp_path, -P: no script folder on the path) so only the installed copy counts
    done = subprocess.run([sys.executable, "-P", "-c", code, json.dumps(modules)], capture_output=True, text=True,
                          cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    files = json.loads(done.stdout)
    outside = {m: f for m, f in files.items() if not Path(f).resolve().is_relative_to(target.resolve())}
    assert not outside, outside
