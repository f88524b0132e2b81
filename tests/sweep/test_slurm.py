"""The Slurm executor on a real cluster: a tiny sweep end to end, a requeued job that resumes, a point trained
by two processes in one job, and the errors of bad input.

These tests need the Slurm client commands and a controller that answers (CI starts a single-node cluster with
.ci/start-slurm). Without them they are skipped, with the reason; with UTAE_REQUIRE_SLURM=1 (set by .ci/run)
they fail instead, so that CI cannot pass without the cluster. The partition is UTAE_SLURM_PARTITION, else the
cluster's default.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from utae.config import sweepfile
from utae.sweep import point as pt
from utae.sweep import orchestrate as sw
from utae.sweep.executor import PointTask
from utae.sweep.slurm import SlurmExecutor, SlurmOptions
from utae.rundir.paths import report_path, run_path

from helpers import tiny_sweep_fixed

pytestmark = pytest.mark.long  # jobs on a Slurm cluster
TINY = tiny_sweep_fixed()
#: Seconds a test waits for a job to reach a state before giving up (the jobs here start within seconds).
STATE_TIMEOUT = 300


def _unavailable() -> str | None:
    """Why no cluster can be used here, or None."""
    missing = [c for c in ("sbatch", "srun", "sinfo", "scontrol", "sacct") if shutil.which(c) is None]
    if missing:
        return f"Slurm client commands not on PATH: {', '.join(missing)}"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "scontrol ping did not answer within 30 s"
    if ping.returncode != 0 or " is UP" not in ping.stdout:
        return f"no Slurm controller answers (scontrol ping: {(ping.stdout + ping.stderr).strip()[:200]})"
    return None


@pytest.fixture(scope="module")
def partition() -> str:
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("UTAE_REQUIRE_SLURM") == "1":
            pytest.fail(f"UTAE_REQUIRE_SLURM=1 but {reason} (start it with .ci/start-slurm)")
        pytest.skip(reason)
    name = os.environ.get("UTAE_SLURM_PARTITION", "")
    if not name:
        names = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30).stdout.split()
        name = next((n.rstrip("*") for n in names if n.endswith("*")), names[0] if names else "")
    return name


@pytest.fixture(scope="module")
def data(synthetic_pastis) -> Path:
    return synthetic_pastis(n_patches=10, size=32, t_range=(4, 6), seed=0)


def tiny_sweep(folder: Path, data: Path, grid: dict, **fixed) -> sweepfile.Sweep:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "dataset_root": str(data), "grid": grid,
                                    "fixed": {**TINY, **fixed}}, sort_keys=False))
    return sweepfile.load_sweep(path)


def wait_for(what: str, condition, timeout: float = STATE_TIMEOUT, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def job_states(job_id: str) -> list[str]:
    """Every state the job has been in, oldest first (sacct -D lists the runs of a requeued job)."""
    out = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-j", job_id, "-o", "State"], capture_output=True,
                         text=True, timeout=30).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def test_two_point_sweep_end_to_end(tmp_path, data, partition):
    """One job array runs both points through the point runner; reports, compare.html and the index follow;
    platform.json records the Slurm job; a second run submits nothing."""
    s = tiny_sweep(tmp_path, data, {"noise_std": [0.0, 0.5], "seed": [0]})
    results = tmp_path / "res"
    out = sw.run_all(s, results=results, executor="slurm", slurm=SlurmOptions(partition=partition),
                     synthetic_root=None)
    assert [r.status for r in out.results] == ["executed", "executed"], [r.error for r in out.results]
    array = out.job_ids[0].split("_")[0]
    assert out.job_ids == [f"{array}_0", f"{array}_1"]  # one array
    platform = pt.detect_platform("cpu")
    for i, point in enumerate(s.points):
        run_dir = run_path(results, platform, point.run_id)
        assert (run_dir / "metrics.json").is_file() and report_path(results, platform, point.run_id).is_file()
        slurm = json.loads((run_dir / "platform.json").read_text())["slurm"]
        assert slurm["array_job_id"] == array and slurm["array_task_id"] == str(i)
        assert slurm["partition"] == partition and slurm["node_kind"] == f"{partition}:{platform}"
    assert (results / "reports" / "compare.html").is_file() and (results / "reports" / "index.html").is_file()
    assert len(list((results / ".slurm").iterdir())) == 1  # the submission's own folder
    again = sw.run_all(s, results=results, executor="slurm", slurm=SlurmOptions(partition=partition),
                       synthetic_root=None)
    assert again.job_ids == [] and sorted(again.skipped) == sorted(p.run_id for p in s.points)


def test_requeued_job_resumes_to_the_uninterrupted_metrics(tmp_path, data, partition):
    """`scontrol requeue` kills a running point after its first epoch's checkpoint; the job runs again, the run
    resumes from that checkpoint (epoch 1 is not trained again) and ends with the metrics of an uninterrupted
    run of the same point on this machine."""
    from utae.training.run import run

    epochs = 10  # several epochs after the first, so the requeue lands mid-run (killing takes well under one)
    s = tiny_sweep(tmp_path, data, {"seed": [0]}, epochs=epochs)
    results = tmp_path / "res"
    platform = pt.detect_platform("cpu")
    run_dir = run_path(results, platform, "seed0")
    cluster = SlurmExecutor(results, SlurmOptions(partition=partition))
    tasks = [PointTask(sweep=s, run_id="seed0", results=str(results), threads=1)]
    [job] = cluster.submit(tasks)
    wait_for("the first checkpoint", lambda: (run_dir / "checkpoint.pt").is_file(), every=0.05)
    subprocess.run(["scontrol", "requeue", job.job_id], check=True, capture_output=True, timeout=30)
    assert not (run_dir / "metrics.json").exists(), "the run finished before the requeue: give it more epochs"
    first_epoch = pd.read_csv(run_dir / "history.csv").iloc[0]
    [result] = cluster.wait([job], tasks)
    assert result.status == "executed", result.error
    # The result is there a moment before the job ends.
    states = wait_for("the job to end", lambda: (lambda st: st if st and st[-1] == "COMPLETED" else None)(
        job_states(job.job_id)), every=1.0)
    assert "REQUEUED" in states[:-1]

    history = pd.read_csv(run_dir / "history.csv")
    assert len(history) == epochs
    # A retrained epoch 1 would have its own timing: the resumed run kept the checkpoint's row.
    assert history.iloc[0]["sec_epoch"] == first_epoch["sec_epoch"]
    local = run(pt.point_config(s, "seed0", tmp_path / "local" / "seed0"))
    remote = json.loads((run_dir / "metrics.json").read_text())
    for key in ("train", "val", "test", "test_noise", "best_epoch"):
        assert remote[key] == local[key], key  # same machine, same seed and threads: identical numbers
    local_history = pd.read_csv(tmp_path / "local" / "seed0" / "history.csv")
    for column in ("train_loss", "val_loss", "val_miou"):
        assert history[column].tolist() == local_history[column].tolist(), column


def test_point_trained_by_two_processes_in_one_job(tmp_path, data, partition):
    """SLURM_TASKS_PER_POINT=2: torchrun runs two gloo processes inside the point's one job, then the notebook
    shows the finished run."""
    s = tiny_sweep(tmp_path, data, {"seed": [0]})
    results = tmp_path / "res"
    out = sw.run_all(s, results=results, executor="slurm", report=False, synthetic_root=None,
                     slurm=SlurmOptions(partition=partition, tasks_per_point=2, cpus=2))
    assert [r.status for r in out.results] == ["executed"], out.results[0].error
    run_dir = run_path(results, pt.detect_platform("cpu"), "seed0")
    record = json.loads((run_dir / "platform.json").read_text())
    assert record["world_size"] == 2 and record["slurm"]["job_id"] == out.job_ids[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 1 and 0.0 <= metrics["test"]["miou"] <= 1.0
    assert report_path(results, pt.detect_platform("cpu"), "seed0").is_file()


def test_failed_and_cancelled_points_are_reported(tmp_path, data, partition):
    """A point that fails in its job is reported with the tail of the job's log; a job cancelled by the cluster
    (scancel) with its state; nothing of either run is lost."""
    s = tiny_sweep(tmp_path, data, {"seed": [0, 1]}, epochs=500)
    results = tmp_path / "res"
    platform = pt.detect_platform("cpu")
    broken = run_path(results, platform, "seed0")
    broken.mkdir(parents=True)
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")
    long_run = run_path(results, platform, "seed1")
    cluster = SlurmExecutor(results, SlurmOptions(partition=partition))
    tasks = [PointTask(sweep=s, run_id=p.run_id, results=str(results)) for p in s.points]
    jobs = cluster.submit(tasks)
    wait_for("the long point's first checkpoint", lambda: (long_run / "checkpoint.pt").is_file())
    subprocess.run(["scancel", jobs[1].job_id], check=True, capture_output=True, timeout=30)
    failed, cancelled = cluster.wait(jobs, tasks)
    assert failed.status == "failed" and "CheckpointError" in failed.error and jobs[0].job_id in failed.error
    assert cancelled.status == "failed" and "CANCELLED" in cancelled.error and jobs[1].job_id in cancelled.error
    assert (broken / "checkpoint.pt").read_bytes() == b"not a checkpoint"
    assert (long_run / "checkpoint.pt").is_file() and not (long_run / "metrics.json").exists()


def test_unknown_partition_is_refused_before_anything_is_written(tmp_path, data, partition):
    s = tiny_sweep(tmp_path, data, {"seed": [0]})
    with pytest.raises(sweepfile.SweepError, match=r"partition 'no-such-partition' does not exist.*partitions: "):
        sw.run_all(s, results=tmp_path / "res", executor="slurm", synthetic_root=None,
                   slurm=SlurmOptions(partition="no-such-partition"))
    assert not (tmp_path / "res").exists()


def test_unreachable_controller_is_a_clear_error(tmp_path, data, monkeypatch):
    """A controller that does not answer (here: a slurm.conf naming a closed port) is found before submitting.
    Needs only the client commands."""
    if shutil.which("scontrol") is None or shutil.which("sbatch") is None:
        if os.environ.get("UTAE_REQUIRE_SLURM") == "1":
            pytest.fail("UTAE_REQUIRE_SLURM=1 but the Slurm client commands are not on PATH")
        pytest.skip("Slurm client commands not on PATH")
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=nowhere\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=9\n"
                    "AuthType=auth/munge\nNodeName=localhost CPUs=1\nPartitionName=p Nodes=localhost\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    s = tiny_sweep(tmp_path, data, {"seed": [0]})
    with pytest.raises(sweepfile.SweepError, match="Slurm controller does not answer.*EXECUTOR=local"):
        sw.run_all(s, results=tmp_path / "res", executor="slurm", synthetic_root=None)
    assert not (tmp_path / "res").exists()
