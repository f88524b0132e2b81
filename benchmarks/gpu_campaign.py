"""The GPU campaign: one prepared call that, on a lent CUDA machine, checks the environment, benchmarks the model,
runs the default study and brings everything home in one folder.

``python3 -m benchmarks.gpu_campaign [--out DIR]`` (``make gpu-campaign``) runs, in this order, each step a child
process with its own timeout (a step that fails or runs out is logged with its error, and the next step runs):

1. ``env``: installs the carried wheels (``.whl/*.whl``, see :mod:`benchmarks.fetch_wheels`) into a folder that
   the later steps put on ``PYTHONPATH``; prints the GPU, driver, CUDA, torch and cuDNN versions; imports every
   module of the package and the notebook runner and takes a training step per precision mode on the device
   (:mod:`benchmarks.gpu_campaign_steps`), written to ``env.json``.
2. ``bench``: ``make bench BENCH_ARGS=--compile`` at its shapes, PASTIS scale included, one row at a time within
   the step's time (``results/bench/<platform>.csv``, copied to the output folder after every row).
3. ``bench-runs``: ``make bench-runs`` (a short run per precision mode), its output also in ``bench-runs.txt``.
4. ``study``: the default study (``params/default.yaml``: ``amp: off``, IEEE float32), several points at a time
   on the one GPU, into a fresh results folder (``--work``), then compare.html.
5. ``export``: ``make export`` of that folder into the output folder (``study-<platform>.tar.gz``).

The output folder (``--out``, default ``$OUT``) holds six files and no sub-folder, within what the device tool
brings back (8 files, 16 MiB each, 2 folders down): ``campaign.log`` (every step's command, output, status and
time), ``summary.json`` (one entry a step), ``env.json``, ``bench-<platform>.csv``, ``bench-runs.txt`` and
``study-<platform>.tar.gz``. The study's results folder, the installed wheels and the dry run's data stay in the
work folder (``--work``). ``--deadline-s`` bounds the whole campaign (a step gets at most what is left).
``--cpu`` is the dry run: the same steps on tiny settings on the CPU, in about a minute (the test suite runs it).
``--print-device-call`` prints the device tool's call. The module uses only the standard library: it runs before
the carried wheels are installed.

Back here, ``--bring-home DIR`` (``make gpu-import FROM=DIR``, :func:`bring_home`) imports the folder that came
back: the study as a platform of the results folder, the bench table and the campaign's records under its
``bench/``, then the reports re-rendered.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The command line of the study (run-all, export, import), the one place that names it.
STUDY_CLI: tuple[str, ...] = ("-m", "utae")
STEPS: tuple[str, ...] = ("env", "bench", "bench-runs", "study", "export")
#: Seconds per step on the GPU: 7 min 50 s in all, so that the device's 15 minutes hold the machine's start and a
#: retry of the steps that failed. env: the install of 43 wheels, two torch imports, every module, four training
#: steps. The study's estimate: a point of the default sweep is 16 epochs of 23 steps of
#: a small model (milliseconds each on a GPU) plus fixed costs of seconds (kernel start, CUDA start, test at 5
#: noise levels, report); 15 points 8 at a time are two rounds, then compare.html (9 s on the 2-core CPU).
GPU_TIMEOUTS: dict[str, int] = {"env": 60, "bench": 150, "bench-runs": 60, "study": 180, "export": 20}
#: The dry run's limits: generous, since the 2-core test machine may be shared.
CPU_TIMEOUTS: dict[str, int] = {"env": 120, "bench": 120, "bench-runs": 120, "study": 300, "export": 60}
#: Seconds the bench step keeps for printing its table after the last row it starts.
BENCH_MARGIN_S = 25
#: Points of the study at a time on the one GPU, and torch threads of each (the lent H100 and H200 have 16 cores).
GPU_JOBS, GPU_THREADS = 8, 2
#: What the device tool brings back from its output folder, and the most this campaign writes there.
MAX_FILES, MAX_DEPTH, MAX_FILE_BYTES = 8, 2, 16 * 2**20
#: The most of one step's output kept in campaign.log (the rest is counted, not kept).
MAX_STEP_LOG_BYTES = 4 * 2**20
#: How summary.json writes the campaign's start (UTC), which names its records once brought home.
STARTED_FORMAT = "%Y%m%dT%H%M%SZ"
#: The environment variable that makes a step fail on purpose (the test of the campaign's error handling).
FAIL_ENV = "UTAE_CAMPAIGN_FAIL"
#: The device tool's call (docs/gpu.md). The wheels travel in .whl (git-ignored).
DEVICE_TIMEOUT_S = 540
DEVICE_COMMAND = 'PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_campaign --out "$OUT" --deadline-s 520'
DEVICE_CARRY = (".whl",)


@dataclass
class StepResult:
    """What one step did: ``status`` is ``ok``, ``failed`` or ``timed out``; ``error`` the end of its output."""

    step: str
    commands: list[str]
    status: str = "ok"
    returncode: int = 0
    seconds: float = 0.0
    timeout_s: float = 0.0
    error: str = ""


class Log:
    """campaign.log, echoed to stdout (the device tool's output tail shows the end)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("a", encoding="utf-8", errors="replace")

    def __call__(self, text: str) -> None:
        self.file.write(text + "\n")
        self.file.flush()
        print(text, flush=True)

    def close(self) -> None:
        self.file.close()


def run_command(command: list[str], timeout_s: float, log: Log, env: dict[str, str] | None = None,
                tee: Path | None = None) -> tuple[int, bool, list[str]]:
    """Run ``command`` (in the repository root, its own process group), its output into ``log`` (and ``tee``),
    killed with its whole group after ``timeout_s``. Returns ``(returncode, timed_out, last 40 lines)``."""
    log(f"$ {shlex.join(command)}")
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    tail: list[str] = []
    written = [0, 0]  # bytes kept, bytes dropped

    def pump() -> None:
        assert proc.stdout is not None
        with (tee.open("ab") if tee else open(os.devnull, "wb")) as copy:
            for raw in proc.stdout:
                copy.write(raw)
                line = raw.decode("utf-8", errors="replace").rstrip("\n").split("\r")[-1]
                tail.append(line)
                del tail[:-40]
                if written[0] + len(raw) <= MAX_STEP_LOG_BYTES:
                    written[0] += len(raw)
                    log(line)
                else:
                    written[1] += len(raw)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
    except BaseException:  # the campaign itself is stopped (SIGTERM, Ctrl-C): its step goes with it
        _kill_group(proc)
        raise
    reader.join(timeout=10)
    if written[1]:
        log(f"[campaign] {written[1]} more bytes of output not kept in this log")
    return proc.returncode, timed_out, tail


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the command's process group, SIGKILL 5 s later if it is still there."""
    for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass(frozen=True)
class Plan:
    """Where the campaign reads and writes, and how big its steps are."""

    out: Path
    work: Path
    wheels: Path
    cpu: bool
    jobs: int
    threads: int
    timeouts: dict[str, int]
    fail: frozenset[str]
    deadline_s: float = float("inf")

    @property
    def site(self) -> Path:
        """Where the carried wheels are installed."""
        return self.work / "site"

    @property
    def results(self) -> Path:
        """The study's results folder."""
        return self.work / "results"

    def sweep(self) -> Path:
        """The study's sweep file: params/default.yaml, or the dry run's tiny 2-point sweep (written here)."""
        if not self.cpu:
            return REPO_ROOT / "params" / "default.yaml"
        path = self.work / "tiny.yaml"  # JSON is YAML: the standard library writes it
        tiny = {"name": "campaign-tiny", "dataset_root": str(self.work / "data"),
                "synthetic": {"n_patches": 10, "size": 32, "t_range": [4, 6]},
                "grid": {"noise_std": [0.0, 0.5]},
                "fixed": {"epochs": 2, "batch_size": 4, "encoder_widths": [8, 8, 8, 16],
                          "decoder_widths": [8, 8, 8, 16], "out_conv": [8, 20], "n_head": 4, "d_model": 32,
                          "d_k": 4, "test_noise_stds": [0.0, 1.0], "n_examples": 2, "device": "cpu",
                          "amp": "off", "progress": False}}
        path.write_text(json.dumps(tiny, indent=2) + "\n")
        return path

    def env(self) -> dict[str, str]:
        """The steps' environment: the installed wheels and the repository on ``PYTHONPATH``, and the wheels'
        Jupyter data (nbconvert's templates, which ``pip install --target`` puts under ``share/jupyter``) on
        ``JUPYTER_PATH``."""
        def joined(first: list[str], name: str) -> str:
            return os.pathsep.join(first + [p for p in os.environ.get(name, "").split(os.pathsep) if p])

        return {**os.environ, "PYTHONPATH": joined([str(self.site), str(REPO_ROOT)], "PYTHONPATH"),
                "JUPYTER_PATH": joined([str(self.site / "share" / "jupyter")], "JUPYTER_PATH"),
                "PYTHONUNBUFFERED": "1"}


def step_commands(step: str, plan: Plan, platform: str, limit_s: float | None = None) -> list[list[str]]:
    """The commands of ``step``, in order (the env step's first one, the wheel install, is :func:`install_command`);
    ``limit_s``: the step's time (default its limit in ``plan``), which sets the bench's deadline."""
    py = sys.executable
    tiny = ["--tiny"] if plan.cpu else []
    if step == "env":
        versions = ("import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, "
                    "'| CUDA', torch.version.cuda, '| cuDNN', torch.backends.cudnn.version(), '| GPU', "
                    "torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)")
        smi = [] if plan.cpu else [["nvidia-smi"]]
        return [*smi, [py, "-c", versions],
                [py, "-m", "benchmarks.gpu_campaign_steps", "env-check", "--json", str(plan.out / "env.json"), *tiny]]
    if step == "bench":
        deadline = max((plan.timeouts["bench"] if limit_s is None else limit_s) - BENCH_MARGIN_S, 1)
        bench_dir = plan.work / "bench" if plan.cpu else REPO_ROOT / "results" / "bench"  # the dry run: not results/
        return [[py, "-m", "benchmarks.gpu_campaign_steps", "bench", "--out-dir", str(bench_dir),
                 "--copy-to", str(plan.out), "--deadline-s", str(deadline), *tiny]]
    if step == "bench-runs":
        if plan.cpu:
            return [[py, "-m", "benchmarks.gpu_campaign_steps", "tiny-bench-runs"]]
        return [[py, "-m", "benchmarks.bench_runs"]]
    if step == "study":
        return [[py, *STUDY_CLI, "run-all", str(plan.sweep()), "--results", str(plan.results),
                 "--jobs", str(plan.jobs), "--threads", str(plan.threads)]]
    if step == "export":
        archive = plan.out / f"study-{platform}.tar.gz"
        return [[py, *STUDY_CLI, "export", "--results", str(plan.results), "-o", str(archive),
                 "--sweep", str(plan.sweep())]]
    raise ValueError(f"unknown step {step!r}; the steps are {', '.join(STEPS)}")


def install_command(plan: Plan) -> list[str] | None:
    """pip's install of the carried wheels (as the device tool's notes give it), or None when there are none."""
    wheels = sorted(plan.wheels.glob("*.whl")) if plan.wheels.is_dir() else []
    if not wheels:
        return None
    return [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
            "--no-cache-dir", "--upgrade", "--target", str(plan.site), *map(str, wheels)]


def run_step(step: str, commands: list[list[str]], timeout_s: float, log: Log, env: dict[str, str],
             tee: Path | None = None, fail: bool = False) -> StepResult:
    """Run ``commands`` in turn within ``timeout_s`` in all; the first that fails ends the step."""
    if fail:  # the injected failure: a command that raises, as a broken step would
        commands = [[sys.executable, "-c", f"raise RuntimeError('injected failure of step {step} ({FAIL_ENV})')"]]
    result = StepResult(step, [shlex.join(c) for c in commands], timeout_s=timeout_s)
    start = time.monotonic()
    for command in commands:
        left = timeout_s - (time.monotonic() - start)
        if left <= 0:
            result.status, result.returncode = "timed out", 124
            result.error = "no time left for: " + shlex.join(command)
            break
        try:
            rc, timed_out, tail = run_command(command, left, log, env, tee)
        except OSError as exc:
            rc, timed_out, tail = 127, False, [f"{type(exc).__name__}: {exc}"]
        if timed_out:
            result.status, result.returncode = "timed out", 124
            result.error = f"killed after {timeout_s:.0f} s (the step's limit); last output:\n" + "\n".join(tail[-15:])
            break
        if rc != 0:
            result.status, result.returncode = "failed", rc
            result.error = f"exit status {rc}; last output:\n" + "\n".join(tail[-25:])
            break
    result.seconds = time.monotonic() - start
    return result


def _platform_from_env_json(out: Path) -> str:
    try:
        return str(json.loads((out / "env.json").read_text())["platform"]["platform_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown-platform"


def campaign(plan: Plan, steps: tuple[str, ...] = STEPS) -> list[StepResult]:
    """Run ``steps`` of the campaign; every step runs whatever the earlier ones did. Writes campaign.log and
    summary.json into ``plan.out``; returns one result a step."""
    plan.out.mkdir(parents=True, exist_ok=True)
    plan.work.mkdir(parents=True, exist_ok=True)
    log = Log(plan.out / "campaign.log")
    started, started_utc = time.monotonic(), time.strftime(STARTED_FORMAT, time.gmtime())
    log(f"[campaign] {time.strftime('%Y-%m-%d %H:%M:%S %Z')}: steps {', '.join(steps)} "
        f"({'CPU dry run, tiny settings' if plan.cpu else 'GPU'}); limits {plan.timeouts} s; work folder {plan.work}; "
        f"output folder {plan.out}")
    env = plan.env()
    results: list[StepResult] = []
    step, step_start = "(before the first)", started

    def save() -> None:
        write_summary(plan, results, time.monotonic() - started, started_utc)

    try:
        for i, step in enumerate(steps, 1):
            log(f"\n===== [{i}/{len(steps)}] {step} (limit {plan.timeouts[step]} s) =====")
            step_start = time.monotonic()
            limit = min(plan.timeouts[step], plan.deadline_s - (step_start - started))
            if limit < 1:
                results.append(StepResult(step, [], status="skipped", returncode=1, timeout_s=0,
                                          error=f"the campaign's deadline ({plan.deadline_s:.0f} s) has passed"))
                log(f"===== {step}: SKIPPED: {results[-1].error} =====")
                save()
                continue
            tee = plan.out / "bench-runs.txt" if step == "bench-runs" else None
            commands = step_commands(step, plan, _platform_from_env_json(plan.out), limit)
            if step == "env":
                install = install_command(plan)
                if install is None:
                    log(f"[campaign] no wheels in {plan.wheels}: nothing to install (the packages must be there)")
                else:
                    commands = [install, *commands]
            result = run_step(step, commands, limit, log, env, tee, fail=step in plan.fail)
            results.append(result)
            if result.status == "ok":
                log(f"===== {step}: ok in {result.seconds:.1f} s =====")
            else:
                log(f"===== {step}: {result.status.upper()} after {result.seconds:.1f} s: {result.error}")
                if i < len(steps):
                    log(f"===== {step}: the next step runs =====")
            save()
    except BaseException as exc:
        log(f"\n[campaign] STOPPED ({type(exc).__name__}: {exc}) during step {step}")
        if not results or results[-1].step != step:
            results.append(StepResult(step, [], status="stopped", returncode=1, error=f"{type(exc).__name__}: {exc}",
                                      seconds=time.monotonic() - step_start, timeout_s=plan.timeouts.get(step, 0)))
        save()
        raise
    finally:
        log(f"\n[campaign] done in {time.monotonic() - started:.1f} s:")
        for r in results:
            log(f"  {r.step:<11} {r.status:<9} {r.seconds:7.1f} s (limit {r.timeout_s:.0f} s)")
        problems = check_output_folder(plan.out)
        for problem in problems:
            log(f"[campaign] WARNING: {problem}")
        log.close()
    return results


def write_summary(plan: Plan, results: list[StepResult], seconds: float, started_utc: str) -> None:
    """summary.json: when the campaign started (UTC, :data:`STARTED_FORMAT`), the plan and one entry a step (written
    after each step, atomically)."""
    data = {"started": started_utc, "cpu": plan.cpu, "seconds": round(seconds, 1), "jobs": plan.jobs,
            "threads": plan.threads, "timeouts": plan.timeouts, "steps": [asdict(r) for r in results]}
    tmp = plan.out / ".summary.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, plan.out / "summary.json")


def check_output_folder(out: Path) -> list[str]:
    """What in ``out`` the device tool would not bring back (too many or too large files, too deep, odd names)."""
    problems = []
    files = [p for p in out.rglob("*") if p.is_file()]
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files in {out}, more than the {MAX_FILES} that come back")
    for path in out.rglob("*"):
        rel = path.relative_to(out)
        if path.is_file() and len(rel.parts) - 1 > MAX_DEPTH:
            problems.append(f"{rel}: more than {MAX_DEPTH} folders down")
        if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
            problems.append(f"{rel}: {path.stat().st_size} bytes, over {MAX_FILE_BYTES}")
        if any(not all(c.isalnum() or c in "._-" for c in part) for part in rel.parts):
            problems.append(f"{rel}: a name with characters other than letters, digits, '.', '_', '-'")
    return problems


#: The campaign's records that :func:`bring_home` keeps, with its bench table, in
#: ``bench/<platform>-campaign/<started>/``: one folder a call, so that a retry's records do not replace the first's.
RECORDS: tuple[str, ...] = ("campaign.log", "summary.json", "env.json", "bench-runs.txt")
#: Columns a bench table brought home must have (``make bench``'s table; see :mod:`benchmarks.bench`).
BENCH_COLUMNS: tuple[str, ...] = ("platform", "shape", "amp", "channels_last", "compile", "train_samples_per_s")


def bring_home(folder: Path, results: Path, name: str | None = None) -> list[str]:
    """Bring a campaign's output ``folder`` into the results folder ``results`` (``make gpu-import``): imports
    ``study-<platform>.tar.gz`` with ``python -m utae import`` (checked, as ``name`` when given), copies
    ``bench-<platform>.csv`` to ``bench/<name>.csv`` and, with the :data:`RECORDS`, to
    ``bench/<name>-campaign/<started>/`` (the call's start in summary.json), then re-renders the reports
    (``python -m utae report``). Returns what is missing (a step that did not finish, a file it did not write);
    what is there is brought home regardless.

    Raises:
        ValueError: naming the file when ``folder`` holds no campaign's ``summary.json``, holds more than one
            study archive, or holds a bench table without :data:`BENCH_COLUMNS` or over :data:`MAX_FILE_BYTES`;
            when the platform's name (``name``, or the one in the folder) is not one folder name
            (:func:`utae.util.checks.safe_path_name`); or when a dry run's folder (tiny settings on the CPU) would go
            into the repository's ``results``.
        RuntimeError: when the import or the report fails (with the end of its output).
    """
    from utae.util.atomic import atomic_write_bytes  # here only: the campaign itself runs before the wheels are there
    from utae.util.checks import safe_path_name

    folder, results = Path(folder), Path(results)
    summary_file = folder / "summary.json"
    try:
        summary = json.loads(summary_file.read_text())
        steps = {s["step"]: s["status"] for s in summary["steps"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{summary_file}: not a GPU campaign's summary ({type(exc).__name__}: {exc}); expected "
                         "the output folder of python -m benchmarks.gpu_campaign") from None
    if summary.get("cpu") and results.resolve() == (REPO_ROOT / "results").resolve():
        raise ValueError(f"{folder}: the output of a dry run (--cpu, tiny settings); bring it home into a scratch "
                         f"folder (--results DIR), not into {results}")
    missing = [f"step {step}: {status}" for step, status in steps.items() if status != "ok"]
    missing += [f"step {step}: not run" for step in STEPS if step not in steps]
    archives = sorted(folder.glob("study-*.tar.gz"))
    if len(archives) > 1:
        raise ValueError(f"{folder}: {len(archives)} study archives ({', '.join(a.name for a in archives)}); "
                         "expected one, study-<platform>.tar.gz")
    platform = (archives[0].name.removeprefix("study-").removesuffix(".tar.gz") if archives
                else _platform_from_env_json(folder))
    target = safe_path_name(name, "--as") if name else safe_path_name(platform, f"{folder}'s platform")
    started = str(summary.get("started", ""))
    try:
        time.strptime(started, STARTED_FORMAT)
    except ValueError:
        started = "undated"  # a summary.json written before the field existed
    records = results / "bench" / f"{target}-campaign" / started
    bench = folder / f"bench-{platform}.csv"
    if bench.is_file():  # checked before anything is written
        if bench.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"{bench}: {bench.stat().st_size} bytes, over the {MAX_FILE_BYTES} a bench table may be")
        header = bench.read_text(encoding="utf-8", errors="replace").partition("\n")[0].strip().split(",")
        lacking = [c for c in BENCH_COLUMNS if c not in header]
        if lacking:
            raise ValueError(f"{bench}: not a bench table (no column {', '.join(lacking)}); expected make bench's CSV")
    else:
        missing.append(f"{bench}: not there, no bench table")
    if archives:
        _study_cli(["import", str(archives[0]), "--results", str(results), *(["--as", name] if name else [])])
    else:
        missing.append(f"{folder}/study-<platform>.tar.gz: not there, no runs to import")
    if bench.is_file():
        atomic_write_bytes(results / "bench" / f"{target}.csv", bench.read_bytes())
        atomic_write_bytes(records / bench.name, bench.read_bytes())
    for record in RECORDS:
        file = folder / record
        if file.is_file() and file.stat().st_size <= MAX_FILE_BYTES:
            atomic_write_bytes(records / record, file.read_bytes())
        else:
            missing.append(f"{file}: not there" if not file.is_file() else f"{file}: over {MAX_FILE_BYTES} bytes")
    _study_cli(["report", "--results", str(results)])
    return missing


def _study_cli(args: list[str]) -> None:
    """``python -m utae <args>`` here, its output shown; a failure raises with the end of that output."""
    print(f"$ {shlex.join([sys.executable, *STUDY_CLI, *args])}", flush=True)
    done = subprocess.run([sys.executable, *STUDY_CLI, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")
    print(done.stdout, end="", flush=True)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-5:])
        raise RuntimeError(f"python -m utae {args[0]} failed (exit status {done.returncode}):\n{tail}")


def device_call() -> dict:
    """The device tool's ``run`` call that runs the campaign (docs/gpu.md)."""
    return {"command": DEVICE_COMMAND, "carry": list(DEVICE_CARRY), "timeout_s": DEVICE_TIMEOUT_S}


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _steps(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in STEPS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected steps among {', '.join(STEPS)} (comma-separated), got {text!r}")
    return tuple(s for s in STEPS if s in names)  # always in the campaign's order


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu_campaign", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or None,
                        help="the output folder that comes back (default: $OUT)")
    parser.add_argument("--work", default=None,
                        help="the study's results, the installed wheels, the dry run's data (default: "
                             "<temp>/utae-gpu-campaign, or -cpu for the dry run; kept, so that a second call on "
                             "a warm machine resumes the study)")
    parser.add_argument("--wheels", default=None,
                        help="folder of the carried wheels (default: .whl; the dry run installs none unless given: "
                             "the wheels are built for the GPU machine's Python)")
    parser.add_argument("--cpu", action="store_true", help="the dry run: the same steps on tiny settings on the CPU")
    parser.add_argument("--steps", type=_steps, default=STEPS,
                        help=f"comma-separated steps to run (default: all: {','.join(STEPS)})")
    parser.add_argument("--jobs", type=int, default=None, help=f"points of the study at a time (GPU: {GPU_JOBS})")
    parser.add_argument("--threads", type=int, default=None, help=f"torch threads of each point (GPU: {GPU_THREADS})")
    parser.add_argument("--deadline-s", type=float, default=float("inf"),
                        help="seconds for the whole campaign: a step gets at most what is left, and a step with "
                             "nothing left is skipped (the device call gives 520 of its 540)")
    parser.add_argument("--fail", default=os.environ.get(FAIL_ENV, ""),
                        help=f"make these steps fail on purpose (comma-separated; also ${FAIL_ENV})")
    parser.add_argument("--print-device-call", action="store_true", help="print the device tool's call and exit")
    parser.add_argument("--bring-home", metavar="DIR", default=None,
                        help="here, after the call: import the output folder DIR's study, bench table and records "
                             "into --results, and re-render the reports (make gpu-import FROM=DIR)")
    parser.add_argument("--results", default=str(REPO_ROOT / "results"),
                        help="with --bring-home: the results folder (default: results)")
    parser.add_argument("--as", dest="name", default=None,
                        help="with --bring-home: the platform's folder name (default: the one the campaign found)")
    args = parser.parse_args(argv)
    if args.print_device_call:
        print(json.dumps(device_call(), indent=2))
        return 0
    if args.bring_home:
        try:
            missing = bring_home(Path(args.bring_home), Path(args.results), args.name)
        except (ValueError, RuntimeError) as exc:
            print(f"gpu-import: {exc}", file=sys.stderr)
            return 2
        for problem in missing:
            print(f"[gpu-import] missing: {problem}")
        print(f"[gpu-import] done ({len(missing)} missing); commit {args.results}'s runs, reports and bench/")
        return 1 if missing else 0
    if not args.out:
        parser.error("--out is required where $OUT is not set")
    fail = frozenset(_steps(args.fail)) if args.fail else frozenset()
    default_work = Path(tempfile.gettempdir()) / ("utae-gpu-campaign-cpu" if args.cpu else "utae-gpu-campaign")
    work = Path(args.work) if args.work else default_work
    wheels = Path(args.wheels) if args.wheels else (work / "no-wheels" if args.cpu else REPO_ROOT / ".whl")
    plan = Plan(out=Path(args.out).resolve(), work=work.resolve(), wheels=wheels.resolve(), cpu=args.cpu,
                jobs=args.jobs or (2 if args.cpu else GPU_JOBS),
                threads=args.threads or (1 if args.cpu else GPU_THREADS),
                timeouts=dict(CPU_TIMEOUTS if args.cpu else GPU_TIMEOUTS), fail=fail, deadline_s=args.deadline_s)
    signal.signal(signal.SIGTERM, _stop)  # timeout(1) stops the campaign: the running step is killed with it
    results = campaign(plan, args.steps)
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
