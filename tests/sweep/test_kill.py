"""Kill anywhere, lose nothing: `make reproduce` SIGKILLed at seeded random moments (during a notebook, a report,
the comparison or summary.csv) and rerun ends with the files of an uninterrupted sweep, and no destination file is
ever half-written; a run killed while writing checkpoint.pt resumes to the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import tiny_sweep_fixed

pytestmark = pytest.mark.long  # make reproduce, SIGKILLed at many moments
REPO_ROOT = Path(__file__).resolve().parents[2]
SWEEP = {
    "name": "killable",
    "grid": {"noise_std": [0.0, 0.5], "seed": [0]},
    "fixed": tiny_sweep_fixed(epochs=2),
}
N_KILLS = 6
TIMING = ("timing",)


def _make(study: Path, results: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    cmd = ["make", "--no-print-directory", "reproduce", f"SWEEP={study / 'sweep.yaml'}", f"RESULTS={results}",
           f"SYNTH_ROOT={study / 'data'}", f"PY={sys.executable}", "VENV_DEP=", "JOBS=2", "THREADS=1"]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    return out


def _check_whole(results: Path) -> None:
    """Every destination file present is complete (temporary files of killed writes are hidden `.*.tmp`)."""
    for path in results.rglob("*"):
        if not path.is_file() or path.name.endswith(".tmp") or path.name == ".lock":
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            assert len(pd.read_csv(path).columns) > 1, path
        elif path.suffix == ".npy":
            np.load(path, allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                [npz[k] for k in npz.files]
        elif path.suffix == ".html":
            assert path.read_text().rstrip().endswith("</html>"), path
        elif path.suffix == ".ipynb":
            json.loads(path.read_text())
        elif path.suffix == ".pt":
            from utae.training.checkpoint import read_checkpoint

            read_checkpoint(path)


def _outcome(results: Path) -> tuple[dict, pd.DataFrame]:
    metrics = {p.parent.name: {k: v for k, v in json.loads(p.read_text()).items() if k not in TIMING}
               for p in sorted(results.glob("runs/*/*/metrics.json"))}
    summary = pd.read_csv(results / "summary.csv")
    timing = [c for c in summary.columns if any(t in c for t in ("sec_", "samples_per_s", "peak_mem", "total_s"))]
    return metrics, summary.drop(columns=timing)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, synthetic_pastis) -> Path:
    study = tmp_path_factory.mktemp("kill")
    synthetic_pastis(copy_to=study / "data", n_patches=10, size=32, t_range=(4, 6), seed=0)
    (study / "sweep.yaml").write_text(yaml.safe_dump({**SWEEP, "dataset_root": str(study / "data")}, sort_keys=False))
    return study


def test_make_reproduce_killed_at_random_moments_ends_as_an_uninterrupted_sweep(study: Path) -> None:
    start = time.monotonic()
    _finish(_make(study, study / "reference"))
    duration = time.monotonic() - start
    reference = _outcome(study / "reference")
    assert len(reference[0]) == 2

    results = study / "killed"
    rng = random.Random(20261125)
    kills = 0
    for _ in range(3 * N_KILLS):  # a kill that comes after the sweep has finished does not count
        proc = _make(study, results)
        # Each restart redoes a little (start-up) and goes on from what is finished: delays up to a third of the
        # uninterrupted sweep land kills all along it (notebooks, reports, compare, summary.csv).
        delay = rng.uniform(0.5, duration / 3)
        try:
            proc.wait(timeout=delay)
            _check_whole(results)
            break  # finished before the kill: the sweep is done
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            _check_whole(results)
        if kills >= N_KILLS:
            break
    assert kills >= min(N_KILLS, 5), kills
    _finish(_make(study, results))
    _check_whole(results)
    metrics, summary = _outcome(results)
    assert metrics == reference[0]
    pd.testing.assert_frame_equal(summary, reference[1])
    assert not [p for p in results.glob("runs/*/*/.*.tmp")], "a killed write's temporary file was left in a run"


KILL_IN_CHECKPOINT = r'''
import os, sys, time
import utae.util.atomic as atomic
from utae.config.run_config import RunConfig
from utae.training.run import run

marker = sys.argv[2]
real = atomic.atomic_write_bytes

def slow_checkpoint(path, data):
    if str(path).endswith("checkpoint.pt") and os.path.exists(path):  # the second epoch's checkpoint
        tmp = os.path.join(os.path.dirname(path), ".checkpoint.pt.half.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
        open(marker, "w").close()
        time.sleep(600)  # killed here, half-way through the write
    return real(path, data)

atomic.atomic_write_bytes = slow_checkpoint
run(RunConfig.from_dict(__import__("json").loads(sys.argv[1])))
'''


def test_a_run_killed_while_writing_its_checkpoint_resumes_to_the_same_metrics(study: Path) -> None:
    from utae.training.checkpoint import read_checkpoint
    from utae.config.run_config import RunConfig
    from utae.training.run import run

    fields = {**SWEEP["fixed"], "dataset_root": str(study / "data"), "epochs": 3, "progress": False}
    reference = run(RunConfig.from_dict({**fields, "out_dir": str(study / "ckpt-ref")}))
    out = study / "ckpt-killed"
    marker = study / "writing"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    config = json.dumps({**fields, "out_dir": str(out)})
    proc = subprocess.Popen([sys.executable, "-c", KILL_IN_CHECKPOINT, config, str(marker)], env=env,
                            cwd=REPO_ROOT, start_new_session=True)
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert proc.poll() is None, "the run ended before writing its second checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_checkpoint(out / "checkpoint.pt")["epoch"] == 1  # the previous checkpoint is whole
    import torch

    torch.set_num_threads(1)
    metrics = run(RunConfig.from_dict({**fields, "out_dir": str(out)}))
    strip = lambda m: {k: v for k, v in m.items() if k not in TIMING}  # noqa: E731
    assert strip(metrics) == strip(reference)
    assert not list(out.glob(".*.tmp"))
