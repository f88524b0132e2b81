"""Colab, executed: both notebooks run from an empty folder with a fake ``google.colab`` module, install this
package from a git URL (a local bare clone of the repository), generate the data, train a tiny run and compare.

What Colab differs in, and how it is stood in for here:
- ``google.colab`` is imported in every Colab kernel: a ``sitecustomize`` on the kernel's path imports a fake.
- The package is not installed: the set-up cell runs ``pip install -q git+<repo_url>``. Here pip installs into a
  scratch prefix (``PIP_PREFIX``) that is first on the kernel's path, so the notebook imports the freshly
  installed copy and the test environment is left as it was.
- Colab has its own torch and numpy: pip must keep them. Here the environment's own torch and numpy play that
  part: pip's plan for the set-up cell's command (``--dry-run --report``) must install this package alone.
  The notebook's own install then runs with ``PIP_IGNORE_INSTALLED``/``PIP_NO_DEPS``, so that pip does not
  uninstall the test environment's copy of the package while it installs the clone into the prefix.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest

from helpers import tiny_model

pytestmark = pytest.mark.long  # both notebooks installed and executed as in Colab
REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = {"epochs": 1, "batch_size": 4, **tiny_model(d_model=32, lists=True),
        "d_k": 4, "test_noise_stds": [0.0, 1.0], "n_examples": 2,
        "device": "cpu", "train_limit": 8, "val_limit": 4, "test_limit": 4, "progress": False}


@pytest.fixture(scope="module")
def colab(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A bare clone of the repository (the ``repo_url``), an empty working folder, and the kernel environment."""
    base = tmp_path_factory.mktemp("colab")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.fail(f"the Colab test installs the package from a git clone of the repository: {head.stderr}")
    subprocess.run(["git", "clone", "-q", "--bare", str(REPO_ROOT), str(base / "repo.git")], check=True)
    fake = base / "fake_colab"
    (fake / "google" / "colab").mkdir(parents=True)
    # no google/__init__.py: in Colab, as wherever protobuf is installed, google is a namespace package that
    # google.colab and google.protobuf (TensorBoard's) share
    (fake / "google" / "colab" / "__init__.py").write_text('"""A stand-in for Colab\'s module."""\n')
    (fake / "sitecustomize.py").write_text("import google.colab  # as in every Colab kernel\n")
    prefix = base / "prefix"
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))
    purelib.mkdir(parents=True)  # exists before the kernel starts, as Colab's site-packages does
    env = {k: v for k, v in os.environ.items() if k not in ("UTAE_REPO_URL", "UTAE_COLAB_INSTALLED")}
    env.update(PIP_PREFIX=str(prefix), PYTHONPATH=os.pathsep.join([str(purelib), str(fake)]),
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_IGNORE_INSTALLED="1", PIP_NO_DEPS="1", OMP_NUM_THREADS="1")
    work = base / "content"
    work.mkdir()
    return {"url": f"file://{base / 'repo.git'}", "env": env, "work": work, "purelib": purelib}


def _papermill(notebook: str, output: Path, cwd: Path, env: dict, params: dict) -> subprocess.CompletedProcess:
    import json

    args = [sys.executable, "-m", "papermill", str(REPO_ROOT / "notebooks" / notebook), str(output),
            "--cwd", str(cwd), "-k", "python3", "--log-level", "WARNING"]
    for key, value in params.items():
        args += ["-y", json.dumps({key: value})]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)


def test_the_colab_install_keeps_the_preinstalled_torch_and_numpy(colab: dict) -> None:
    """What the set-up cell's ``pip install -q git+<url>`` would do in an environment that has torch, numpy and
    the rest (as Colab has): install this package and nothing else, downgrading nothing."""
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
                           f"git+{colab['url']}"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    names = {item["metadata"]["name"].lower() for item in report["install"]}
    assert names == {"utae"}, names


def test_train_eval_installs_generates_and_trains_in_colab(colab: dict) -> None:
    work, env = colab["work"], colab["env"]
    proc = _papermill("train_eval.ipynb", work / "train_eval.ipynb", work, env, {"repo_url": colab["url"], **TINY})
    assert proc.returncode == 0, proc.stderr[-4000:]
    # pip installed this package from the git URL into the kernel's first path entry.
    installed = {p.name.split("-")[0].lower() for p in colab["purelib"].iterdir()}
    assert "utae" in installed, installed
    assert not installed & {"torch", "numpy", "pandas", "matplotlib"}, installed
    # The kernel imported the installed copy, not the repository it was cloned from.
    nb = nbformat.read(work / "train_eval.ipynb", as_version=4)
    assert all(o.get("output_type") != "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert (work / "data" / "synthetic_pastis" / "metadata.geojson").is_file()  # generated in the empty folder
    runs = list((work / "results" / "runs").glob("*/*/metrics.json"))
    assert len(runs) == 1, runs
    probe = subprocess.run([sys.executable, "-c", "import utae; print(utae.__file__)"], env=env, cwd=work,
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip().startswith(str(colab["purelib"])), probe.stdout


def test_compare_runs_in_colab_on_a_results_folder(colab: dict) -> None:
    work, env = colab["work"], colab["env"]
    if not list((work / "results" / "runs").glob("*/*/metrics.json")):
        proc = _papermill("train_eval.ipynb", work / "train_eval.ipynb", work, env, {"repo_url": colab["url"], **TINY})
        assert proc.returncode == 0, proc.stderr[-4000:]
    env = {**env, "UTAE_REPO_URL": colab["url"]}  # the other way to give the URL
    proc = _papermill("compare.ipynb", work / "compare.ipynb", work, env, {"results_dir": "results"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (work / "results" / "summary.csv").is_file()
