"""The GPU campaign (benchmarks.gpu_campaign) as its CPU dry run: every step runs and is logged, a failing step
does not stop the next ones, the output folder fits what the device tool brings back, the study's archive imports;
and the wheels it carries are exactly what the GPU machine lacks."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from benchmarks import fetch_wheels, gpu_campaign
from benchmarks.bench import supported_amps
from benchmarks.lockfile import locked_versions

pytestmark = pytest.mark.slow  # the dry run executes notebooks in several processes (about a minute)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """The dry run with a failure injected into its third step (bench-runs); ``(process, out, work)``."""
    tmp = tmp_path_factory.mktemp("campaign")
    out, work = tmp / "out", tmp / "work"
    env = {**os.environ, gpu_campaign.FAIL_ENV: "bench-runs"}
    done = _run(["-m", "benchmarks.gpu_campaign", "--cpu", "--out", str(out), "--work", str(work)], env=env,
                timeout=900)  # the dry run installs no wheels (.whl holds the GPU machine's, if any)
    return done, out, work


def test_every_step_runs_and_is_logged_and_a_failed_step_does_not_stop_the_next(dry_run):
    done, out, _ = dry_run
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # one step failed
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == list(gpu_campaign.STEPS)
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status == {"env": "ok", "bench": "ok", "bench-runs": "failed", "study": "ok", "export": "ok"}
    failed = next(s for s in summary["steps"] if s["step"] == "bench-runs")
    assert failed["returncode"] == 1 and "injected failure of step bench-runs" in failed["error"]
    log = (out / "campaign.log").read_text()
    for i, step in enumerate(gpu_campaign.STEPS, 1):
        assert f"===== [{i}/5] {step} (limit " in log
    for step in ("env", "bench", "study", "export"):
        assert f"===== {step}: ok in " in log
    assert "===== bench-runs: FAILED after" in log
    assert "RuntimeError: injected failure of step bench-runs" in log  # the error itself, with its traceback
    assert log.index("===== bench-runs: FAILED") < log.index("===== [4/5] study")
    # Each step's own output is in the log: the bench table, the sweep's points, the export.
    assert "Fastest training mode per shape" in log
    assert "[sweep] compare: done in" in log and "[export] 2 run(s) of" in log
    assert "RuntimeError: injected failure" in (out / "bench-runs.txt").read_text()


def test_the_output_folder_fits_what_the_device_tool_brings_back(dry_run):
    _, out, _ = dry_run
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= gpu_campaign.MAX_FILES
    assert all(len(p.relative_to(out).parts) - 1 <= gpu_campaign.MAX_DEPTH for p in files)
    assert all(p.stat().st_size <= gpu_campaign.MAX_FILE_BYTES for p in files)
    assert gpu_campaign.check_output_folder(out) == []
    platform = json.loads((out / "env.json").read_text())["platform"]["platform_id"]
    assert {p.name for p in files} == {"campaign.log", "summary.json", "env.json", f"bench-{platform}.csv",
                                       "bench-runs.txt", f"study-{platform}.tar.gz"}


def test_the_environment_record_names_this_torch_and_every_check_passed(dry_run):
    _, out, _ = dry_run
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["problems"] == []
    assert env["imports"]["utae.sweep.orchestrate"] == "ok" and env["imports"]["papermill"] == "ok"
    assert "python3" in env["kernels"]
    assert env["train_step"] == {amp: "ok" for amp in supported_amps(torch.device("cpu"))}


def test_the_bench_table_has_make_bench_columns_and_its_float32_reference(dry_run):
    _, out, work = dry_run
    (csv,) = out.glob("bench-*.csv")
    table = pd.read_csv(csv)
    assert table[["amp", "channels_last", "compile"]].values.tolist() == [["off", False, False], ["off", True, False]]
    assert table["train_speedup"].iloc[0] == 1.0 and table["max_abs_dlogits"].iloc[0] == 0.0
    assert {"train_samples_per_s", "train_tflops", "frac_of_matmul", "peak_mem_mb"} <= set(table.columns)
    # The dry run writes its table under its work folder, never over results/bench of the repository.
    assert (work / "bench" / csv.name.removeprefix("bench-")).read_bytes() == csv.read_bytes()


def test_the_folder_that_came_back_is_brought_home_runs_bench_records_and_reports(dry_run, tmp_path):
    _, out, work = dry_run
    results = tmp_path / "results"
    done = _run(["-m", "benchmarks.gpu_campaign", "--bring-home", str(out), "--results", str(results)], timeout=600)
    # The dry run's bench-runs step failed on purpose: brought home anyway, named, and the exit status says so.
    assert done.returncode == 1, done.stdout + done.stderr
    assert "missing: step bench-runs: failed" in done.stdout
    platform = json.loads((out / "env.json").read_text())["platform"]["platform_id"]
    imported = sorted((results / "runs").glob("*/*/metrics.json"))
    assert [(p.parent.parent.name, p.parent.name) for p in imported] == [(platform, "noise0"), (platform, "noise0.5")]
    for path in imported:  # the runs came home unchanged
        original = work / "results" / path.relative_to(results)
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(original.read_bytes()).digest()
    assert (results / "bench" / f"{platform}.csv").read_bytes() == (out / f"bench-{platform}.csv").read_bytes()
    started = json.loads((out / "summary.json").read_text())["started"]  # the call's records, in a folder of its own
    records = results / "bench" / f"{platform}-campaign" / started
    assert sorted(p.name for p in records.iterdir()) == sorted([*gpu_campaign.RECORDS, f"bench-{platform}.csv"])
    for record in records.iterdir():
        assert record.read_bytes() == (out / record.name).read_bytes()
    assert (results / "reports" / "compare.html").is_file()  # the reports re-rendered with the imported runs
    assert {p.stem for p in (results / "reports" / platform).glob("*.html")} == {"noise0", "noise0.5"}


def test_bring_home_refuses_a_bad_folder_or_name_and_a_dry_run_into_the_repositorys_results_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"summary.json: not a GPU campaign's summary"):
        gpu_campaign.bring_home(tmp_path, tmp_path / "results")
    summary = {"cpu": True, "steps": [{"step": step, "status": "ok"} for step in gpu_campaign.STEPS]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match=r"the output of a dry run \(--cpu, tiny settings\)"):
        gpu_campaign.bring_home(tmp_path, REPO_ROOT / "results")
    (tmp_path / "study-a.tar.gz").write_bytes(b"")
    (tmp_path / "study-b.tar.gz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"2 study archives \(study-a.tar.gz, study-b.tar.gz\); expected one"):
        gpu_campaign.bring_home(tmp_path, tmp_path / "results")
    (tmp_path / "study-b.tar.gz").unlink()
    with pytest.raises(ValueError, match=r"--as .../elsewhere. holds a path separator; expected a single folder name"):
        gpu_campaign.bring_home(tmp_path, tmp_path / "results", name="../elsewhere")
    (tmp_path / "bench-a.csv").write_text("shape,amp,train_step_ms\nB2,off,1.0\n")
    with pytest.raises(ValueError, match=r"bench-a.csv: not a bench table \(no column platform, channels_last"):
        gpu_campaign.bring_home(tmp_path, tmp_path / "results")  # before the (empty) archive's import
    assert not (tmp_path / "results").exists()  # refused before writing anything


def test_a_step_over_its_limit_is_killed_with_its_children_and_the_next_step_runs(tmp_path):
    log = gpu_campaign.Log(tmp_path / "campaign.log")
    pid_file = tmp_path / "child.pid"
    slow = [sys.executable, "-c", "import subprocess, sys, time; p = subprocess.Popen(['sleep', '300']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(300)"]
    result = gpu_campaign.run_step("slow", [slow], 3, log, dict(os.environ))
    after = gpu_campaign.run_step("next", [[sys.executable, "-c", "print('next ran')"]], 30, log, dict(os.environ))
    log.close()
    assert result.status == "timed out" and result.returncode == 124
    assert result.seconds < 60  # 3 s, then SIGTERM to the group (SIGKILL 5 s later at most)
    assert "killed after 3 s" in result.error and "started" in result.error
    child = int(pid_file.read_text())
    state = Path(f"/proc/{child}/status")
    # The grandchild is gone with its group (or a zombie waiting for a reaper: it no longer runs).
    assert not state.exists() or "\nState:\tZ" in state.read_text()
    assert after.status == "ok" and "next ran" in (tmp_path / "campaign.log").read_text()


def _tiny_wheel(folder: Path) -> Path:
    """A pure-Python wheel of one module, ``campaign_probe`` (the format of PEP 427, written by hand)."""
    folder.mkdir()
    path = folder / "campaign_probe-1.0-py3-none-any.whl"
    info = "campaign_probe-1.0.dist-info"
    files = {"campaign_probe.py": "VALUE = 42\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: campaign-probe\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in {**files, f"{info}/RECORD": record}.items():
            zf.writestr(name, text)
    return path


def test_carried_wheels_are_installed_where_the_later_steps_import_them(tmp_path):
    _tiny_wheel(tmp_path / "wheels")
    plan = gpu_campaign.Plan(out=tmp_path / "out", work=tmp_path / "work", wheels=tmp_path / "wheels", cpu=True,
                             jobs=1, threads=1, timeouts=dict(gpu_campaign.CPU_TIMEOUTS), fail=frozenset())
    log = gpu_campaign.Log(tmp_path / "campaign.log")
    install = gpu_campaign.install_command(plan)
    assert install is not None and "--no-index" in install and "--no-deps" in install
    steps = [install, [sys.executable, "-c", "import campaign_probe; print('probe', campaign_probe.VALUE)"]]
    result = gpu_campaign.run_step("env", steps, 120, log, plan.env())
    log.close()
    assert result.status == "ok", result.error
    assert "probe 42" in (tmp_path / "campaign.log").read_text()
    assert (plan.site / "campaign_probe.py").is_file()


def test_the_wheels_are_what_the_pinned_notebook_runner_needs_beyond_the_gpu_machine():
    """The names: closed over the requirements of the installed distributions (extras followed, markers evaluated
    for the GPU machine's Python 3.12 on Linux), minus the machine's own packages. The versions: the lock's, for
    the wheels and for every distribution walked, so that nothing here depends on what a registry serves (the
    venv is the lock's: tests/test_environment.py)."""
    marker_env = {"python_version": "3.12", "python_full_version": fetch_wheels.PYTHON_VERSION, "sys_platform": "linux",
                  "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                  "platform_python_implementation": "CPython", "os_name": "posix"}
    locked = locked_versions(fetch_wheels.LOCK)
    on_device = {canonicalize_name(n) for n in fetch_wheels.ON_DEVICE}
    walked: dict[str, str] = {}
    seen: set[tuple[str, tuple[str, ...]]] = set()
    stack = [(name, ()) for name in fetch_wheels.ROOTS]
    while stack:
        name, extras = stack.pop()
        key = canonicalize_name(name)
        if key in on_device or (key, extras) in seen:
            continue
        seen.add((key, extras))
        dist = importlib.metadata.distribution(key)
        walked[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({**marker_env, "extra": e}) for e in ("", *extras)):
                stack.append((req.name, tuple(sorted(req.extras))))
    # The requirements walked are those of the locked versions (else the venv is not the lock's: make venv).
    assert walked == {key: locked.get(key) for key in walked}
    wheels = fetch_wheels.wheels()
    listed = {canonicalize_name(w.split("==")[0]): w.split("==")[1] for w in wheels}
    assert listed.keys() == walked.keys()
    assert listed == {key: locked[key] for key in listed}
    assert "torch" not in listed and len(listed) == len(wheels) == len(fetch_wheels.NAMES)  # one version of each
    assert fetch_wheels.download_command(REPO_ROOT / ".whl")[-len(wheels):] == list(wheels)


def test_the_wheels_come_from_the_lock_given(tmp_path):
    """Another lock, other versions; a lock that lacks one of the names is a one-line error naming the file."""
    lock = tmp_path / "requirements.lock"
    lock.write_text("".join(f"{name}==1.0 \\\n    --hash=sha256:{'0' * 64}\n    # via x\n"
                            for name in fetch_wheels.NAMES))
    assert fetch_wheels.wheels(lock) == tuple(f"{name}==1.0" for name in fetch_wheels.NAMES)
    lock.write_text("ipython==1.0\n")
    with pytest.raises(ValueError, match=r"requirements\.lock: no pin for asttokens, beautifulsoup4"):
        fetch_wheels.wheels(lock)


def test_the_device_call_fits_the_tool_and_is_the_one_in_the_runbook():
    call = gpu_campaign.device_call()
    done = _run(["-m", "benchmarks.gpu_campaign", "--print-device-call"], timeout=60)
    assert json.loads(done.stdout) == call
    assert len(call["command"]) <= 2000 and len(call["carry"]) <= 8
    steps_s = sum(gpu_campaign.GPU_TIMEOUTS.values())
    # The steps fit about 8 minutes; the command's own limit covers them and the tool's limit covers that.
    assert steps_s <= 8 * 60
    inner = int(call["command"].split("--deadline-s ")[1].split()[0])
    assert steps_s < inner < call["timeout_s"] <= 600
    runbook = (REPO_ROOT / "docs" / "gpu.md").read_text().split("## The call", 1)[1]
    assert json.loads(runbook.split("```json\n", 1)[1].split("```", 1)[0]) == call
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", ".whl/x.whl"], cwd=REPO_ROOT)
    assert ignored.returncode == 0  # the wheels travel as a carried, git-ignored folder
    # What travels (the tracked files and the wheels at their most) fits the call's 64 MiB.
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    size = sum((REPO_ROOT / name).stat().st_size for name in tracked.decode().split("\0")
               if name and (REPO_ROOT / name).is_file())
    assert size + fetch_wheels.MAX_TOTAL_BYTES <= 64 * 2**20


def test_the_gpu_bench_times_eager_rows_first_pastis_first_and_bf16_channels_last_first_among_compiled(monkeypatch):
    from benchmarks import gpu_campaign_steps as steps
    from benchmarks.bench import PASTIS, Mode

    gpu_modes = [Mode(a, cl, c) for a in ("off", "tf32", "bf16", "fp16") for cl in (False, True) for c in (False, True)]
    monkeypatch.setattr(steps, "modes_for", lambda device, quick, try_compile: gpu_modes)
    plan = steps.bench_plan(torch.device("cpu"), tiny=False)
    assert len(plan) == 3 * len(gpu_modes)  # every row of make bench BENCH_ARGS=--compile, once
    compiled = [m.compile for _, _, m in plan]
    assert compiled == sorted(compiled)  # every eager row before the first compiled one
    assert plan[0][0] == PASTIS and plan[0][2] == Mode()  # the reference of the PASTIS speed-ups first
    first_compiled = next(row for row in plan if row[2].compile)
    assert first_compiled[0] == PASTIS and first_compiled[2] == Mode("bf16", True, True)


def test_the_output_folder_check_names_what_would_not_come_back(tmp_path):
    for i in range(gpu_campaign.MAX_FILES + 1):
        (tmp_path / f"f{i}.txt").write_text("x")
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "deep.txt").write_text("x")
    (tmp_path / "odd name.txt").write_text("x")
    problems = gpu_campaign.check_output_folder(tmp_path)
    assert any("files in" in p for p in problems)
    assert any(p.startswith("a/b/c/deep.txt: more than 2 folders down") for p in problems)
    assert any(p.startswith("odd name.txt: a name with") for p in problems)


def test_steps_past_the_campaigns_deadline_are_skipped_and_recorded(tmp_path):
    plan = gpu_campaign.Plan(out=tmp_path / "out", work=tmp_path / "work", wheels=tmp_path / "wheels", cpu=True,
                             jobs=1, threads=1, timeouts=dict(gpu_campaign.CPU_TIMEOUTS), fail=frozenset(),
                             deadline_s=0)
    results = gpu_campaign.campaign(plan)
    assert [r.status for r in results] == ["skipped"] * len(gpu_campaign.STEPS)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["skipped"] * len(gpu_campaign.STEPS)
    assert (tmp_path / "out" / "campaign.log").read_text().count("SKIPPED: the campaign's deadline") == 5
