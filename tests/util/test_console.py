"""What a person sees and can trust from the sweep's command line: reports re-rendered when what they show
changed (by content, not file times), one-line errors (a full disk included), the words of a point that resumes,
and the summary of an interrupted sweep.

The Ctrl-C test (a real `python -m utae run-all` interrupted by SIGINT) is in the slow tier.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from utae import cli

from utae.config import sweepfile
from utae.sweep import point as pt
from utae.report import pages as rp
from utae.sweep import orchestrate as sw
from utae.rundir.paths import run_path

from helpers import tiny_sweep_fixed, write_sweep

REPO_ROOT = Path(__file__).resolve().parents[2]
OLD = 1_000_000_000  # 2001-09-09: the file times of a run imported from an older archive


def _run(results: Path, platform: str, run_id: str, miou: float = 0.5) -> Path:
    """A finished run folder with the files the study report reads, and its run report page."""
    run_dir = run_path(results, platform, run_id)
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"test": {"miou": miou}}))
    (run_dir / "config.json").write_text(json.dumps({"seed": 0, "noise_std": 0.0}))
    (run_dir / "platform.json").write_text(json.dumps({"torch_threads": 1}))
    (run_dir / "history.csv").write_text("epoch,train_loss\n1,0.5\n")
    page = results / "reports" / platform / f"{run_id}.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("<html></html>")
    return run_dir


class FakeCompare:
    """Stands for the compare notebook: counts its renderings and writes a compare.html naming the runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        monkeypatch.setattr(sw, "run_compare", self)

    def __call__(self, results: Path, timeout: int = 0) -> Path:
        self.calls += 1
        out = Path(results) / "reports" / "compare.html"
        runs = sorted(p.parent.name for p in (Path(results) / "runs").glob("*/*/metrics.json"))
        out.write_text(f"<html>{' '.join(runs)} #{self.calls}</html>")
        return out


def _age(folder: Path, stamp: float = OLD) -> None:
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (stamp, stamp))


def test_a_run_imported_with_older_file_times_makes_compare_stale(tmp_path, monkeypatch):
    results = tmp_path / "res"
    _run(results, "plat", "r0")
    compare = FakeCompare(monkeypatch)
    sw.report_studies([results])
    assert compare.calls == 1
    record = json.loads((results / "reports" / sw.RENDERED_RECORD).read_text())
    assert set(record["runs"]) == {"plat/r0"} and len(record["runs"]["plat/r0"]["metrics.json"]) == 64
    sw.report_studies([results])
    assert compare.calls == 1  # nothing changed: nothing rendered again
    # Another machine's run arrives with its files' old times (as an archive keeps them): older than compare.html.
    imported = _run(results, "other-plat", "r0", miou=0.4)
    _age(imported)
    _age(results / "reports" / "other-plat")
    sw.report_studies([results])
    assert compare.calls == 2
    assert "other-plat/r0.html" in (results / "reports" / "index.html").read_text()
    assert set(json.loads((results / "reports" / sw.RENDERED_RECORD).read_text())["runs"]) == {
        "plat/r0", "other-plat/r0"}


def test_a_deleted_or_changed_run_makes_compare_stale_and_a_touched_one_does_not(tmp_path, monkeypatch):
    results = tmp_path / "res"
    for rid in ("r0", "r1"):
        _run(results, "plat", rid)
    compare = FakeCompare(monkeypatch)
    sw.report_studies([results])
    assert compare.calls == 1 and "r0 r1" in (results / "reports" / "compare.html").read_text()
    gone = run_path(results, "plat", "r1")
    for path in gone.iterdir():
        path.unlink()
    gone.rmdir()
    sw.report_studies([results])
    assert compare.calls == 2 and "r1" not in (results / "reports" / "compare.html").read_text()
    # metrics.json rewritten with other numbers but its old file time: stale by content.
    metrics = run_path(results, "plat", "r0") / "metrics.json"
    stamp = metrics.stat().st_mtime
    metrics.write_text(json.dumps({"test": {"miou": 0.25}}))
    os.utime(metrics, (stamp, stamp))
    sw.report_studies([results])
    assert compare.calls == 3
    # The same bytes with a newer time (a copy, a checkout): nothing to render.
    metrics.write_text(metrics.read_text())
    sw.report_studies([results])
    assert compare.calls == 3
    (results / "reports" / sw.RENDERED_RECORD).unlink()  # unknown what compare.html shows: rendered again
    sw.report_studies([results])
    assert compare.calls == 4
    sw.report_studies([results], force=True)
    assert compare.calls == 5


def test_a_full_disk_while_writing_a_report_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    """nbconvert's page write and papermill's notebook write failing with ENOSPC: `python -m utae report` says
    which file, that the previous version is kept, in one line, exit status 2; compare.html is unchanged."""
    import papermill

    results = tmp_path / "res"
    _run(results, "plat", "r0")
    compare = results / "reports" / "compare.html"
    compare.write_text("<html>previous</html>")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(papermill, "execute_notebook", full)
    assert cli.main(["report", "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: cannot write ") and "Traceback" not in err
    assert "compare.partial.ipynb" in err and "no space left on the device" in err
    assert err.endswith(f"the previous {compare} is kept")
    # The page itself: nbconvert renders, the write fails.
    monkeypatch.setattr(rp, "atomic_write_text", full)
    with pytest.raises(rp.ReportWriteError) as info:
        rp.write_index(results)
    index = results / "reports" / "index.html"
    assert str(info.value) == (f"cannot write {index}: no space left on the device (free some space and run it "
                               f"again); {index} was not written")
    assert compare.read_text() == "<html>previous</html>"
    with pytest.raises(rp.ReportWriteError, match=f"the previous {compare} is kept"):
        rp._write_page(compare, "<html>new</html>")


def _interrupted(results: Path, platform: str, run_id: str, epoch: int, threads: int = 1) -> Path:
    run_dir = run_path(results, platform, run_id)
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"")
    (run_dir / "history.csv").write_text("epoch,train_loss\n" + "".join(f"{e},0.5\n" for e in range(1, epoch + 1)))
    (run_dir / "platform.json").write_text(json.dumps({"torch_threads": threads}))
    return run_dir


def test_a_resuming_point_says_from_which_epoch(tmp_path, data_root):
    results = tmp_path / "res"
    run_dir = _interrupted(results, "plat", "seed1", epoch=7, threads=3)
    assert pt.resume_epoch(run_dir) == 7 and pt.recorded_threads(run_dir) == 3
    assert pt.point_event(run_dir, 16) == "resuming from epoch 7 of 16"
    assert pt.point_event(tmp_path / "nothing", 16) == "running"
    (run_dir / "metrics.json").write_text("{}")  # finished: nothing resumes, no threads to keep
    assert pt.resume_epoch(run_dir) is None and pt.recorded_threads(run_dir) is None
    s = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(data_root), "fixed": {"epochs": 16},
                                                    "grid": {"seed": [0, 1, 2, 3]}}))
    _interrupted(results, "plat", "seed2", epoch=3)
    text = sw.interruption_summary(s, results, {p.run_id: "plat" for p in s.points}, {"seed2": 16})
    assert text == ("1 of 4 point(s) finished (seed1); 1 will resume: seed2 from epoch 3 of 16; "
                    "2 not started (or stopped before their first epoch): seed0, seed3")


def test_errors_the_user_can_fix_are_one_line(tmp_path, data_root, capsys, monkeypatch):
    """A missing Slurm, a bad sweep value: `error: ...` on one line, exit status 2, no traceback."""
    good = write_sweep(tmp_path, {"dataset_root": str(data_root), "grid": {"seed": [0]}})
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    before = signal.getsignal(signal.SIGINT)
    assert cli.main(["run-all", str(good), "--executor", "slurm", "--results", str(tmp_path / "r")]) == 2
    assert signal.getsignal(signal.SIGINT) is before  # no Ctrl-C came: the handler in place before is back
    bad = write_sweep(tmp_path, {"dataset_root": str(data_root), "grid": {"fold": [9]}}, name="bad.yaml")
    assert cli.main(["run-all", str(bad), "--results", str(tmp_path / "r")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines), lines
    assert "sbatch not found" in lines[0] and "fold" in lines[1] and str(bad) in lines[1]


# --------------------------------------------------------------------------------------------------
# Ctrl-C during a real sweep
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_during_a_sweep_ends_with_a_summary_and_no_traceback(tmp_path, synthetic_pastis):
    """SIGINT to `python -m utae run-all` and its workers (its process group, as Ctrl-C at a terminal) while its
    two points train: exit status 130, a summary naming the points
    that will resume (from which epoch) and the command that continues, no traceback (of the sweep, its workers
    or their kernels) and no kernel or papermill chatter; the run folders are left to resume."""
    data = synthetic_pastis(n_patches=10, size=32, t_range=(4, 6), seed=0)
    sweep = write_sweep(tmp_path, {"dataset_root": str(data), "fixed": tiny_sweep_fixed(epochs=40),
                                   "grid": {"seed": [0, 1]}})
    results = tmp_path / "res"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "OMP_NUM_THREADS")}
    proc = subprocess.Popen([sys.executable, "-m", "utae", "run-all", str(sweep), "--results", str(results),
                             "--jobs", "2", "--no-report"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # Wait until both points have a checkpoint (an epoch done): then both will resume.
        while len(list(results.glob("runs/*/*/checkpoint.pt"))) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C at a terminal: to the whole process group
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = out + err
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text and "zmq" not in text, text
    assert "Kernel is running over TCP" not in text and "Input Notebook" not in text, text
    assert "IPKernelApp" not in text, text  # no kernel left to notice its parent gone
    assert "0 of 2 point(s) finished; 2 will resume: seed0 from epoch" in text and " of 40" in text, text
    assert f"To continue (finished points are skipped, interrupted ones resume from their checkpoint): " \
           f"python -m utae run-all {sweep}" in text, text
    for rid in ("seed0", "seed1"):
        assert pt.resume_epoch(next(results.glob(f"runs/*/{rid}"))) >= 1
        assert text.count(f"/{rid}: running") == 1, text  # one line a point event, from the sweep process


_SLOW_POINT = '''
import pathlib, time

def worker(task):
    """A point that says it started (a file), then trains for two minutes."""
    pathlib.Path(task.results, task.run_id + ".started").write_text("")
    time.sleep(120)
'''
_HELD_DRIVER = '''
import sys
sys.path.insert(0, {here!r})
from utae import cli
from utae.sweep.executor import PointTask
from utae.sweep.local import LocalExecutor
import slow_point

def run_all_slowly(args):
    tasks = [PointTask(sweep=None, run_id=f"p{{i}}", results={here!r}) for i in range(2)]
    LocalExecutor(jobs=2, worker=slow_point.worker, threads=1).run(tasks)
    return 0

if __name__ == "__main__":
    cli._run_all = run_all_slowly  # run-all's points: two slow fakes in the sweep's worker processes
    sys.exit(cli.main(["run-all", "unused.yaml"]))
'''


@pytest.mark.slow
def test_ctrl_c_held_down_exits_with_130_and_leaves_no_process(tmp_path):
    """Ctrl-C pressed again (here: held down, SIGINT to the process group every 10 ms until it ends) while the
    first one stops the sweep's workers and the interpreter exits: the later ones are ignored, so the status is 130
    (not -2, killed by the signal), with no traceback and no worker left running. The points are fakes (two
    minutes of sleep each) run by the sweep's LocalExecutor through `cli.main`."""
    (tmp_path / "slow_point.py").write_text(_SLOW_POINT)
    (tmp_path / "driver.py").write_text(_HELD_DRIVER.format(here=str(tmp_path)))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    log = (tmp_path / "out.txt").open("w")  # a file, not a pipe: a worker left running would hold a pipe open
    proc = subprocess.Popen([sys.executable, str(tmp_path / "driver.py")], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while len(list(tmp_path.glob("*.started"))) < 2:  # both workers started and ignore SIGINT themselves
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "out.txt").read_text()
            time.sleep(0.2)
        sent = 0
        while proc.poll() is None and time.monotonic() < deadline:
            os.killpg(proc.pid, signal.SIGINT)
            sent += 1
            time.sleep(0.01)
        proc.wait(timeout=60)
        left, until = True, time.monotonic() + 30
        while left and time.monotonic() < until:  # the group empties as the resource tracker ends
            try:
                os.killpg(proc.pid, 0)
                time.sleep(0.2)
            except ProcessLookupError:
                left = False
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
    text = (tmp_path / "out.txt").read_text()
    assert sent > 1 and proc.returncode == 130, (sent, proc.returncode, text)
    assert "Traceback" not in text and "interrupted; nothing written is lost" in text, text
    assert not left  # the workers were stopped, not orphaned
