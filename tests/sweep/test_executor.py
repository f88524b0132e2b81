"""Tests of running every point of a sweep (utae.sweep.orchestrate.run_all, utae.sweep.executor): the local executor, the checks
that refuse to skip or resume runs that are not the sweep's, the Slurm checks that need no cluster, and
`make reproduce` with a results folder whose name has spaces and non-ASCII characters.

The Slurm executor on a real cluster is tested in test_slurm.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from utae.config import sweepfile
from utae.sweep import slurm as ex
from utae.sweep import point as pt
from utae.sweep import orchestrate as sw
from utae.sweep.local import LocalExecutor
from utae.sweep.executor import PointResult, PointTask
from utae.machine.record import OtherMachineError
from utae.rundir.paths import report_path, run_path

from helpers import tiny_sweep_fixed, write_sweep

pytestmark = pytest.mark.slow  # sweeps run by the executors, in processes of their own
REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = tiny_sweep_fixed()


def finished_run(sweep: sweepfile.Sweep, run_id: str, results: Path, platform: str,
                 config_changes: dict | None = None, record: dict | None = None) -> Path:
    """A finished run of a point written by hand: config.json (the point's, with ``config_changes``),
    metrics.json, the report and, when given, platform.json."""
    run_dir = run_path(results, platform, run_id)
    run_dir.mkdir(parents=True)
    config = pt.point_config(sweep, run_id, run_dir).to_dict()
    (run_dir / "config.json").write_text(json.dumps({**config, **(config_changes or {})}))
    (run_dir / "metrics.json").write_text("{}")
    if record is not None:
        (run_dir / "platform.json").write_text(json.dumps(record))
    report = report_path(results, platform, run_id)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("<html></html>")
    return run_dir


def _never(*args, **kwargs):
    raise AssertionError("nothing may run")


# --------------------------------------------------------------------------------------------------
# The point runner refuses runs that are not the sweep's
# --------------------------------------------------------------------------------------------------


def test_changed_sweep_is_refused_with_the_differing_fields(tmp_path, data_root, monkeypatch):
    """A finished run whose config.json differs from the point (the sweep changed: epochs 1 -> 3) is neither
    skipped nor rerun: the error names the file, the field and the two ways forward."""
    results = tmp_path / "res"
    old = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(data_root), "fixed": {"epochs": 1},
                                                    "grid": {"seed": [0, 1]}}))
    for rid in ("seed0", "seed1"):
        finished_run(old, rid, results, "plat")
    new = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(data_root), "fixed": {"epochs": 3},
                                                    "grid": {"seed": [0, 1]}}, name="new.yaml"))
    monkeypatch.setattr(sw, "execute_notebook", _never)
    monkeypatch.setattr(LocalExecutor, "run", _never)
    with pytest.raises(sweepfile.SweepError) as info:
        pt.run_point(new, "seed0", results=results, platform="plat")
    text = str(info.value)
    assert "config.json belongs to a different run; differing fields: epochs: stored 1 != new 3" in text
    assert str(run_path(results, "plat", "seed0") / "config.json") in text
    assert "RESULTS=" in text and "delete" in text
    with pytest.raises(sweepfile.SweepError, match="epochs: stored 1 != new 3"):
        sw.run_all(new, results=results, platform="plat", synthetic_root=None)
    # The unchanged sweep skips both points.
    assert pt.run_point(old, "seed0", results=results, platform="plat") == "skipped"


def test_moved_run_and_harmless_fields_do_not_count_as_a_change(tmp_path, data_root, monkeypatch):
    """A run copied from another clone has another out_dir and dataset_root; progress and num_workers change
    nothing a run computes: the point is still finished."""
    results = tmp_path / "res"
    s = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(data_root), "grid": {"seed": [0]}, **{}}))
    finished_run(s, "seed0", results, "plat", config_changes={
        "out_dir": "/elsewhere/results/runs/plat/seed0", "dataset_root": "/elsewhere/data", "progress": True,
        "num_workers": 4})
    monkeypatch.setattr(sw, "execute_notebook", _never)
    assert pt.run_point(s, "seed0", results=results, platform="plat") == "skipped"


def test_run_that_never_finished_an_epoch_takes_the_new_config(tmp_path, data_root):
    """Without a checkpoint or metrics nothing of the old run is kept, so its config is no conflict (utae.training.run
    replaces it)."""
    results = tmp_path / "res"
    s = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(data_root), "grid": {"seed": [0]}}))
    run_dir = run_path(results, "plat", "seed0")
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({**pt.point_config(s, "seed0", run_dir).to_dict(), "epochs": 9}))
    assert pt.point_state(s, "seed0", results, "plat") == "run"
    (run_dir / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(sweepfile.SweepError, match="epochs: stored 9"):
        pt.point_state(s, "seed0", results, "plat")


OTHER_MACHINE = {"device_name": "Some Other CPU 9000", "cpu_arch": "aarch64", "torch_version": "2.0.0",
                 "platform_id": "cpu-some-other", "fingerprint": "0123456789ab"}


def test_runs_of_another_machine_are_refused_before_anything_runs(tmp_path, data_root, monkeypatch):
    """A platform folder holding a run of another fingerprint: run_all stops before running any point (even one
    whose own folder is empty), and run_point names both machines."""
    results = tmp_path / "res"
    s = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(data_root), "fixed": {"device": "cpu"},
                                                  "grid": {"seed": [0, 1]}}))
    finished_run(s, "seed0", results, "plat", record=OTHER_MACHINE)
    monkeypatch.setattr(sw, "execute_notebook", _never)
    monkeypatch.setattr(LocalExecutor, "run", _never)
    with pytest.raises(OtherMachineError) as info:
        sw.run_all(s, results=results, platform="plat", synthetic_root=None)
    text = str(info.value)
    assert "Some Other CPU 9000" in text and "0123456789ab" in text  # their machine
    from utae.machine.record import current_fingerprint

    assert current_fingerprint("cpu") in text  # and this one
    assert "PLATFORM=" in text
    with pytest.raises(OtherMachineError):  # the unfinished point of that folder too
        pt.run_point(s, "seed1", results=results, platform="plat")
    with pytest.raises(OtherMachineError):  # and the finished one is not skipped
        pt.run_point(s, "seed0", results=results, platform="plat")
    assert not run_path(results, "plat", "seed1").exists()


def test_legacy_record_without_fingerprint_counts_as_another_machine(tmp_path, data_root):
    results = tmp_path / "res"
    s = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(data_root), "fixed": {"device": "cpu"},
                                                  "grid": {"seed": [0]}}))
    legacy = {k: v for k, v in OTHER_MACHINE.items() if k != "fingerprint"}
    finished_run(s, "seed0", results, "plat", record=legacy)
    with pytest.raises(OtherMachineError, match="predates platform fingerprints"):
        pt.check_platform_folder(results, "plat", "cpu")


def test_run_dir_in_use_is_a_clear_error(tmp_path, data_root, monkeypatch):
    from utae.training.run import lock_run_dir

    results = tmp_path / "res"
    s = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(data_root), "grid": {"seed": [0]}}))
    run_dir = run_path(results, "plat", "seed0")
    monkeypatch.setattr(sw, "execute_notebook", _never)
    with lock_run_dir(run_dir):
        with pytest.raises(sweepfile.SweepError, match=f"{run_dir} is in use by another process"):
            pt.run_point(s, "seed0", results=results, platform="plat")


# --------------------------------------------------------------------------------------------------
# The local executor
# --------------------------------------------------------------------------------------------------


def fake_worker(task: PointTask) -> PointResult:
    """Stands for the point runner in a worker process (module level: spawned workers import it by name)."""
    if task.run_id == "seed1":
        return PointResult(task.run_id, "failed", 0.0, "SweepError: the notebook failed; its traceback ends:\n"
                                                       "    ValueError: boom")
    return PointResult(task.run_id, "executed", 0.0, f"pid={os.getpid()} threads={task.threads} gpu={task.gpu}")


def test_local_executor_reports_a_failure_and_runs_the_others(tmp_path, data_root, monkeypatch, caplog):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    s = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(data_root), "grid": {"seed": [0, 1, 2, 3]}}))
    tasks = [PointTask(sweep=s, run_id=p.run_id, results=str(tmp_path)) for p in s.points]
    caplog.set_level(logging.INFO, logger="utae")
    out = LocalExecutor(jobs=2, cores=4, worker=fake_worker).run(tasks)
    assert [r.run_id for r in out] == ["seed0", "seed1", "seed2", "seed3"]  # the order of the tasks
    assert [r.status for r in out] == ["executed", "failed", "executed", "executed"]
    assert all("threads=2 gpu=None" in r.error for r in out if r.status == "executed")  # 4 cores, 2 workers
    assert len({r.error.split()[0] for r in out if r.status == "executed"}) <= 2  # two worker processes at most
    failure = [r.getMessage() for r in caplog.records if "seed1" in r.getMessage() and "FAILED" in r.getMessage()]
    assert len(failure) == 1 and "the notebook failed" in failure[0]  # one line: the error's first
    assert [r.getMessage() for r in caplog.records if "seed1: running" in r.getMessage()] == [
        "[sweep] seed1: running (2 torch threads)"]
    assert all(r.wall is not None and r.wall >= 0 for r in out)


def test_local_executor_gives_each_worker_its_gpu(tmp_path, data_root, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    s = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(data_root), "grid": {"seed": [0, 2, 3]}}))
    tasks = [PointTask(sweep=s, run_id=p.run_id, results=str(tmp_path)) for p in s.points]
    out = LocalExecutor(jobs=8, gpus=["3", "5"], cores=16, worker=fake_worker).run(tasks)
    assert {r.error.split("gpu=")[1] for r in out} <= {"3", "5"}
    assert all("threads=8" in r.error for r in out)  # 16 cores over 2 GPU workers


class RecordingExecutor(LocalExecutor):
    """The local executor of run_all with the fake worker (run_all builds it with the real point runner)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "worker": fake_worker})


def test_a_resumed_point_keeps_its_thread_count(tmp_path, data_root, monkeypatch):
    """An interrupted sweep run again: the point left gets the threads of the whole sweep's share (1 each of 2
    points on 2 cores), not all the cores because it is alone now; a point whose run resumes gets the threads its
    platform.json recorded; THREADS given by the user wins (utae.training.run then refuses a mismatch)."""
    from utae.machine.record import current_fingerprint

    for name in ("OMP_NUM_THREADS", "MAKEFLAGS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    results = tmp_path / "res"
    s = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(data_root), "fixed": {"device": "cpu"},
                                                  "grid": {"seed": [0, 2, 3]}}))
    fingerprint = current_fingerprint("cpu")
    for rid in ("seed0", "seed2"):
        finished_run(s, rid, results, "plat", record={"fingerprint": fingerprint, "torch_threads": 1})
    resumed = run_path(results, "plat", "seed3")  # interrupted after its second epoch, started with 1 thread
    resumed.mkdir(parents=True)
    (resumed / "checkpoint.pt").write_bytes(b"")
    (resumed / "history.csv").write_text("epoch,train_loss\n1,0.9\n2,0.8\n")
    (resumed / "platform.json").write_text(json.dumps({"fingerprint": fingerprint, "torch_threads": 1}))
    monkeypatch.setattr(sw, "LocalExecutor", RecordingExecutor)

    def threads_of_seed3(**options) -> str:
        out = sw.run_all(s, results=results, platform="plat", synthetic_root=None, report=False, **options)
        assert [r.run_id for r in out.results] == ["seed3"]
        return out.results[0].error.split("threads=")[1].split()[0]

    # 3 points on 2 cores: 2 jobs of 1 thread, also for the one point left (today's main gave it both cores).
    assert threads_of_seed3() == "1"
    # A run that started with 2 threads (an earlier sweep, JOBS=1) resumes with 2 whatever the share now.
    (resumed / "platform.json").write_text(json.dumps({"fingerprint": fingerprint, "torch_threads": 2}))
    assert threads_of_seed3() == "2"
    assert threads_of_seed3(threads=1) == "1"  # the user's setting, as given (utae.training.run refuses a mismatch)
    for path in resumed.iterdir():  # not started: the share of the whole sweep
        path.unlink()
    assert threads_of_seed3() == "1"


def test_threads_of_a_point(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert LocalExecutor(jobs=2, cores=2).threads_for() == 1
    assert LocalExecutor(jobs=1, cores=2).threads_for() == 2
    assert LocalExecutor(jobs=3, cores=2).threads_for() == 1
    assert LocalExecutor(jobs=2, cores=2, threads=4).threads_for() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert LocalExecutor(jobs=2, cores=2).threads_for() is None  # the kernel inherits the caller's setting


# --------------------------------------------------------------------------------------------------
# Slurm: what can be checked without a cluster
# --------------------------------------------------------------------------------------------------


def test_sbatch_options():
    assert ex.parse_sbatch_options("--qos=high --account me --exclusive --comment 'a b'") == {
        "qos": "high", "account": "me", "exclusive": True, "comment": "a b"}
    assert ex.parse_sbatch_options("") == {}
    with pytest.raises(sweepfile.SweepError, match="long sbatch options.*'-A'"):
        ex.parse_sbatch_options("-A me")


def test_slurm_without_sbatch_is_a_clear_error_and_writes_nothing(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    s = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(data_root), "grid": {"seed": [0]}}))
    with pytest.raises(sweepfile.SweepError, match="sbatch not found: .*install Slurm or use EXECUTOR=local"):
        sw.run_all(s, results=tmp_path / "res", executor="slurm", synthetic_root=None)
    assert not (tmp_path / "res").exists()


# --------------------------------------------------------------------------------------------------
# make reproduce, end to end
# --------------------------------------------------------------------------------------------------


def test_make_reproduce_quotes_paths_and_reports_a_failing_point(tmp_path, tmp_path_factory, synthetic_pastis):
    """`make reproduce RESULTS="<tmp>/res uni ü"` on a copy of the tiny study (test_notebooks.build_study, itself
    in a folder named with a space and a non-ASCII letter) whose sweep gains a third point that fails (its
    checkpoint is corrupt): the finished points are kept, the failure is shown with the tail of its traceback,
    compare.html and the index cover the finished runs, and make exits non-zero."""
    import shutil

    from test_notebooks import build_study

    study = build_study(tmp_path_factory, synthetic_pastis)
    tiny = yaml.safe_load((study / "tiny.yaml").read_text())
    tiny["grid"]["noise_std"] = [*tiny["grid"]["noise_std"], 1.0]
    sweep = write_sweep(tmp_path, tiny, name="tiny sweep.yaml")
    results = tmp_path / "res uni ü"
    shutil.copytree(study / "results", results)
    platform = pt.detect_platform("cpu")
    broken = run_path(results, platform, "noise1-seed0")
    broken.mkdir(parents=True)
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")
    finished = {p: p.read_bytes() for p in (results / "runs" / platform).glob("*/metrics.json")}
    assert len(finished) == 2
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(["make", "--no-print-directory", "reproduce", f"SWEEP={sweep}", f"RESULTS={results}",
                           f"PY={sys.executable}", "VENV_DEP="], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "3 point(s), 2 finished, 1 to run" in out
    assert {p: p.read_bytes() for p in finished} == finished
    assert not (broken / "metrics.json").exists() and not report_path(results, platform, "noise1-seed0").exists()
    failed = [line for line in out.splitlines() if "noise1-seed0: FAILED" in line]
    assert failed, out
    assert "checkpoint" in failed[0] and "run.partial.ipynb" in failed[0]  # the cell's error, the kept notebook
    assert f"{platform}/noise1-seed0: resuming from epoch 0 of 1" in out  # a checkpoint but no history.csv
    tail = out[out.index("FAILED noise1-seed0"):]  # the summary at the end: the traceback's tail too
    assert "its traceback ends:" in tail and "checkpoint" in tail
    assert "1 of 1 point(s) failed: noise1-seed0" in out  # of the points that ran
    index = (results / "reports" / "index.html").read_text()
    for rid in ("noise0-seed0", "noise0.5-seed0"):
        assert f"{platform}/{rid}.html" in index
    assert "compare.html" in index and (results / "reports" / "compare.html").is_file()
    assert (broken / "checkpoint.pt").read_bytes() == b"not a checkpoint"  # nothing of the failed run lost


class FakeCluster:
    """Stands for the cluster in run_all: records what is submitted, and every job succeeds."""

    def __init__(self, monkeypatch, nodes_are_here: bool) -> None:
        self.submitted: list[PointTask] = []
        monkeypatch.setattr(ex.SlurmExecutor, "check_cluster", lambda executor: None)
        monkeypatch.setattr(ex.SlurmExecutor, "nodes_are_this_machine", lambda executor: nodes_are_here)
        monkeypatch.setattr(ex.SlurmExecutor, "submit", lambda executor, tasks: self.submit(tasks))
        monkeypatch.setattr(ex.SlurmExecutor, "wait", lambda executor, jobs, tasks: [
            PointResult(t.run_id, "executed", 1.0, job_id=j.job_id) for j, t in zip(jobs, tasks)])

    def submit(self, tasks):
        self.submitted.extend(tasks)
        return [type("Job", (), {"job_id": f"7_{i}"})() for i in range(len(tasks))]


@pytest.mark.parametrize("nodes_are_here, platform, submitted", [
    (True, None, ["seed1"]),               # a one-node cluster on this machine: its folder is known
    (False, "plat-x", ["seed1"]),          # PLATFORM names the nodes' folder
    (False, None, ["seed0", "seed1"]),     # unknown nodes: every point goes, each job skips its finished one
])
def test_which_points_go_to_the_cluster(tmp_path, data_root, monkeypatch, nodes_are_here, platform, submitted):
    results = tmp_path / "res"
    s = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(data_root), "fixed": {"device": "cpu"},
                                                  "grid": {"seed": [0, 1]}}))
    folder = platform or pt.detect_platform("cpu")
    run_dir = finished_run(s, "seed0", results, folder)
    from utae.machine.record import current_fingerprint

    (run_dir / "platform.json").write_text(json.dumps({"fingerprint": current_fingerprint("cpu")}))
    cluster = FakeCluster(monkeypatch, nodes_are_here)
    out = sw.run_all(s, results=results, executor="slurm", platform=platform, synthetic_root=None, report=False)
    assert [t.run_id for t in cluster.submitted] == submitted
    assert all(t.platform == platform for t in cluster.submitted)  # None: detected on the node
    assert out.job_ids == [f"7_{i}" for i in range(len(submitted))] and not out.failed
