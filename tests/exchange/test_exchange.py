"""Moving runs between machines (utae.exchange.export, utae.exchange.import_runs, utae.exchange.verify): export, import (validated, never overwriting), verify.

Runs are written by hand here (the files a finished run holds, with made-up numbers), so that every
import case takes milliseconds; one test (:func:`test_verify_reruns_a_point_and_compares`) executes the
train notebook on a tiny sweep of one point and one epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from utae.exchange import export as archive_mod
from utae.exchange import import_runs as merge
from utae import cli as command_line
from utae.exchange.export import ARCHIVE_ROOT, ExchangeError, export_runs
from utae.config.sweepfile import REPO_ROOT
from utae.exchange.import_runs import records_conflict
from utae.exchange.verify import metric_values, verify, verify_failures
from utae.rundir.paths import report_path, run_path

from helpers import tiny_sweep_fixed, FP_A, FP_B, PLAT, RUN_FILES, HISTORY, machine, make_run, snapshot, no_staging_left, tar_members, write_tar

pytestmark = pytest.mark.slow  # verify reruns a point in a notebook kernel



# --------------------------------------------------------------------------------------------------
# Helpers: runs written by hand, snapshots, archives
# --------------------------------------------------------------------------------------------------


def import_runs(*args: Any, **kwargs: Any) -> merge.ImportReport:
    """merge.import_runs, without rendering the imported runs' reports (about a second a run) unless a test asks
    for them with ``reports=True``."""
    kwargs.setdefault("reports", False)
    return merge.import_runs(*args, **kwargs)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A results folder with two finished runs of one machine, one unfinished run, and a second platform."""
    results = tmp_path / "src" / "results"
    make_run(results, PLAT, "noise0-seed0", seed=0)
    make_run(results, PLAT, "noise0-seed1", seed=1)
    unfinished = make_run(results, PLAT, "noise1-seed0", seed=2)
    (unfinished / "metrics.json").unlink()
    make_run(results, "cpu-other", "noise0-seed0", seed=3, record=machine(FP_B, "Test CPU B"))
    (results / "reports" / "index.html").write_text("<html>index</html>")
    (results / "summary.csv").write_text("a,b\n")
    return results


@pytest.fixture
def archive(source: Path, tmp_path: Path) -> Path:
    return export_runs(source, tmp_path / "out" / "study.tar.gz", platforms=[PLAT])


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def test_export_writes_runs_reports_and_a_manifest_without_local_files(source, tmp_path):
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text("name: tiny\ngrid:\n  seed: [0, 1]\n")
    out = export_runs(source, tmp_path / "out" / "study", sweep=sweep)
    assert out == tmp_path / "out" / "study.tar.gz"  # the suffix is added
    members = tar_members(out)
    expected = {f"results/runs/{p}/{r}/{f}" for p, r in [(PLAT, "noise0-seed0"), (PLAT, "noise0-seed1"),
                                                          ("cpu-other", "noise0-seed0")] for f in RUN_FILES}
    expected |= {f"results/reports/{PLAT}/noise0-seed0.html", f"results/reports/{PLAT}/noise0-seed1.html",
                 "results/reports/cpu-other/noise0-seed0.html"}
    assert set(members) == expected | {"results/MANIFEST.json"}  # no checkpoint, notebook, lock, tmp, unfinished run
    manifest = json.loads(members["results/MANIFEST.json"])
    assert set(manifest["files"]) == expected
    for name in expected:
        assert manifest["files"][name] == hashlib.sha256(members[name]).hexdigest()
        assert members[name] == (source.parent / name).read_bytes()
    assert manifest["package"]["version"] == archive_mod._package_version() is not None
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert manifest["package"]["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert manifest["created_utc"].endswith("Z")
    assert manifest["sweep"] == {"name": "tiny", "file": "tiny.yaml", "text": sweep.read_text()}
    assert manifest["platforms"][PLAT]["runs"] == ["noise0-seed0", "noise0-seed1"]
    assert [m["fingerprint"] for m in manifest["platforms"][PLAT]["machines"]] == [FP_A]
    assert "Test CPU B" in manifest["platforms"]["cpu-other"]["machines"][0]["machine"]
    with tarfile.open(out) as tar:
        assert {(m.uid, m.uname) for m in tar.getmembers()} == {(0, "")}  # no user name of this machine
    assert not list(out.parent.glob(".*.tmp"))


def test_export_of_chosen_platforms_and_unknown_platform(source, tmp_path):
    out = export_runs(source, tmp_path / "one.tgz", platforms=["cpu-other"])
    assert {n.split("/")[2] for n in tar_members(out) if n.count("/") > 2} == {"cpu-other"}
    with pytest.raises(ExchangeError, match=r"'cpu-nope'.*platforms: cpu-other, cpu-test"):
        export_runs(source, tmp_path / "x.tar.gz", platforms=["cpu-nope"])
    with pytest.raises(ExchangeError, match="no such folder"):
        export_runs(tmp_path / "empty", tmp_path / "x.tar.gz")
    assert not (tmp_path / "x.tar.gz").exists()


# --------------------------------------------------------------------------------------------------
# Import: the good cases
# --------------------------------------------------------------------------------------------------


def test_import_then_import_again_skips(archive, source, tmp_path):
    dest = tmp_path / "dest" / "results"
    report = import_runs(archive, dest, reports=True)
    assert report.imported == [f"{PLAT}/noise0-seed0", f"{PLAT}/noise0-seed1"]
    assert report.skipped == [] and report.refused == [] and report.exit_status == 0
    for run_id in ("noise0-seed0", "noise0-seed1"):
        got = run_path(dest, PLAT, run_id)
        assert sorted(p.name for p in got.iterdir()) == sorted(RUN_FILES)
        for name in RUN_FILES:
            assert (got / name).read_bytes() == (run_path(source, PLAT, run_id) / name).read_bytes()
        page = report_path(dest, PLAT, run_id).read_text()  # rendered here, not the source's report
        miou = json.loads((got / "metrics.json").read_text())["test"]["miou"]
        assert page != report_path(source, PLAT, run_id).read_text() and f"{miou:.4f}" in page
    before = snapshot(dest)
    again = import_runs(archive, dest, reports=True)
    assert again.imported == [] and again.skipped == report.imported and again.exit_status == 0
    assert snapshot(dest) == before
    assert no_staging_left(dest)


def test_a_run_made_again_with_the_same_results_is_the_same_run(source, tmp_path):
    """Re-importing a run that differs only in its timings and its paths (made again in another session, folder or
    machine of the same kind, with data elsewhere) skips it; a changed result is still refused."""
    dest = tmp_path / "dest"
    assert f"{PLAT}/noise0-seed0" in import_runs(source, dest).imported
    again = tmp_path / "again" / "results"
    shutil.copytree(source, again)
    run_dir = run_path(again, PLAT, "noise0-seed0")
    config = json.loads((run_dir / "config.json").read_text())
    config.update(dataset_root="/nonexistent/elsewhere/pastis", out_dir="/nonexistent/elsewhere/run", num_workers=2)
    (run_dir / "config.json").write_text(json.dumps(config))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["timing"] = {"sec_per_epoch": 9.5, "total_s": 30.0}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "history.csv").write_text(HISTORY.replace(",1.5\n", ",3.5\n").replace(",1.25\n", ",3.75\n"))
    report = import_runs(again, dest)
    assert f"{PLAT}/noise0-seed0" in report.skipped and f"{PLAT}/noise0-seed0" not in dict(report.refused)
    metrics["val"]["oa"] = 0.125  # (a test score would disagree with confusion.npy: refused before comparing)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    reason = dict(import_runs(again, dest).refused)[f"{PLAT}/noise0-seed0"]
    assert "another run of that id (metrics.json differ)" in reason


def test_import_from_folders_and_a_legacy_archive(source, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="utae")
    first = import_runs(source, tmp_path / "a" / "results")  # a results folder
    lines = [r.getMessage() for r in caplog.records]
    assert sorted(first.imported) == ["cpu-other/noise0-seed0", f"{PLAT}/noise0-seed0", f"{PLAT}/noise0-seed1"]
    assert any("no MANIFEST.json" in line for line in lines) and "3 imported" in lines[-1]
    assert not (tmp_path / "a" / "results" / "reports" / "index.html").exists()  # study-level files are remade
    holder = tmp_path / "holder"
    shutil.copytree(source, holder / "results")  # a folder holding results/
    assert len(import_runs(holder, tmp_path / "b" / "results").imported) == 3
    # The shape of an archive made by hand before manifests: runs/ and reports/ at the top.
    files = {p.relative_to(source).as_posix(): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    legacy = write_tar(tmp_path / "legacy.tar.gz", files)
    with pytest.raises(ExchangeError, match="several platforms"):
        import_runs(legacy, tmp_path / "c" / "results", as_platform="cpu-renamed")
    report = import_runs(legacy, tmp_path / "c" / "results")
    assert sorted(report.imported) == sorted(first.imported)
    assert not (run_path(tmp_path / "c" / "results", PLAT, "noise0-seed0") / "checkpoint.pt").exists()


def test_as_platform_renames_the_platform_folder(archive, tmp_path):
    dest = tmp_path / "dest"
    report = import_runs(archive, dest, as_platform="cpu-by-hand", reports=True)
    assert report.imported == ["cpu-by-hand/noise0-seed0", "cpu-by-hand/noise0-seed1"]
    assert (run_path(dest, "cpu-by-hand", "noise0-seed0") / "metrics.json").is_file()
    assert report_path(dest, "cpu-by-hand", "noise0-seed1").is_file()
    assert not (dest / "runs" / PLAT).exists()
    with pytest.raises(ExchangeError, match="--as"):
        import_runs(archive, dest, as_platform="../up")


def test_dry_run_changes_nothing(archive, tmp_path):
    dest = tmp_path / "dest"
    make_run(dest, "cpu-x", "r", seed=5)
    before = snapshot(dest)
    report = import_runs(archive, dest, dry_run=True)
    assert report.imported == [f"{PLAT}/noise0-seed0", f"{PLAT}/noise0-seed1"] and report.dry_run
    assert snapshot(dest) == before and no_staging_left(dest)


def test_an_existing_report_is_never_overwritten(archive, tmp_path):
    dest = tmp_path / "dest"
    page = report_path(dest, PLAT, "noise0-seed0")
    page.parent.mkdir(parents=True)
    page.write_text("<html>mine</html>")
    report = import_runs(archive, dest, reports=True)
    assert len(report.imported) == 2 and page.read_text() == "<html>mine</html>"
    assert report.reports == [f"reports/{PLAT}/noise0-seed1.html"]


def test_skipped_run_gets_its_missing_report(archive, source, tmp_path):
    dest = tmp_path / "dest"
    shutil.copytree(run_path(source, PLAT, "noise0-seed0"), run_path(dest, PLAT, "noise0-seed0"))
    report = import_runs(archive, dest, reports=True)
    assert report.skipped == [f"{PLAT}/noise0-seed0"] and report.imported == [f"{PLAT}/noise0-seed1"]
    page = report_path(dest, PLAT, "noise0-seed0").read_text()  # rendered from the run's files
    assert "<h1>U-TAE run cpu-test/noise0-seed0</h1>" in page and "<script" not in page


# --------------------------------------------------------------------------------------------------
# Import: bad input (each names the file or member, and leaves the destination as it was)
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """A destination study that already holds a run of machine A on PLAT (fingerprint FP_A)."""
    results = tmp_path / "dest" / "results"
    make_run(results, PLAT, "noise2-seed0", seed=9, local_files=False)
    return results


def rewrite(archive: Path, tmp_path: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of ``archive`` with some members replaced (bytes) or removed (None)."""
    files = tar_members(archive)
    for name, data in change.items():
        if data is None:
            files.pop(name)
        else:
            files[name] = data
    return write_tar(tmp_path / "changed.tar.gz", files)


def run_member(run_id: str, name: str) -> str:
    return f"{ARCHIVE_ROOT}/runs/{PLAT}/{run_id}/{name}"


def test_a_changed_file_fails_the_manifest(archive, dest, tmp_path):
    name = run_member("noise0-seed1", "metrics.json")
    metrics = json.loads(tar_members(archive)[name])
    metrics["test"]["miou"] = 0.99  # still valid: only the hash tells
    bad = rewrite(archive, tmp_path, {name: json.dumps(metrics).encode()})
    before = snapshot(dest)
    report = import_runs(bad, dest)
    assert report.imported == [f"{PLAT}/noise0-seed0"]
    [(label, reason)] = report.refused
    assert label == f"{PLAT}/noise0-seed1" and name in reason and "SHA-256" in reason
    assert not run_path(dest, PLAT, "noise0-seed1").exists()
    assert {k: v for k, v in snapshot(dest).items() if "noise0-seed0" not in k} == before
    assert report.exit_status == 1


def test_a_file_added_after_export_or_missing_fails_the_manifest(archive, dest, tmp_path):
    bad = rewrite(archive, tmp_path, {run_member("noise0-seed0", "extra.txt"): b"x",
                                      run_member("noise0-seed1", "history.csv"): None})
    reasons = dict(import_runs(bad, dest).refused)
    assert "noise0-seed0/extra.txt: not a run-folder file" in reasons[f"{PLAT}/noise0-seed0"]
    assert "history.csv: listed in MANIFEST.json but missing" in reasons[f"{PLAT}/noise0-seed1"]


def test_a_run_missing_metrics_json_is_refused(source, dest, tmp_path):
    (run_path(source, PLAT, "noise0-seed0") / "metrics.json").rename(tmp_path / "kept.json")
    (run_path(source, PLAT, "noise0-seed0") / "history.csv").unlink()
    (run_path(source, PLAT, "noise1-seed0") / "checkpoint.pt").unlink()  # an unfinished run: refused too
    before = snapshot(dest)
    report = import_runs(source, dest)
    reasons = dict(report.refused)
    assert "missing metrics.json, history.csv" in reasons[f"{PLAT}/noise0-seed0"]
    assert "missing metrics.json" in reasons[f"{PLAT}/noise1-seed0"]
    assert not run_path(dest, PLAT, "noise0-seed0").exists()
    assert {k: v for k, v in snapshot(dest).items() if "noise0-seed1" not in k and "cpu-other" not in k} == before


def test_a_platform_conflict_is_refused_naming_both_machines(source, dest, tmp_path):
    other = tmp_path / "b" / "results"
    make_run(other, PLAT, "noise0-seed0", seed=0, record=machine(FP_B, "Test CPU B"))
    before = snapshot(dest)
    report = import_runs(other, dest)
    [(label, reason)] = report.refused
    assert label == f"{PLAT}/noise0-seed0"
    assert "Test CPU A" in reason and FP_A in reason  # the machine of the runs already there
    assert "Test CPU B" in reason and FP_B in reason  # the incoming machine
    assert "--as cpu-test-a" in reason  # its own platform_id is free
    assert snapshot(dest) == before
    assert import_runs(other, dest, as_platform="cpu-test-b").imported == ["cpu-test-b/noise0-seed0"]


def test_the_same_run_id_with_other_content_is_refused(dest, tmp_path):
    other = tmp_path / "b" / "results"
    make_run(other, PLAT, "noise2-seed0", seed=10)  # same machine, other numbers
    before = snapshot(dest)
    [(label, reason)] = import_runs(other, dest).refused
    assert label == f"{PLAT}/noise2-seed0" and "already holds another run" in reason and "metrics.json" in reason
    assert snapshot(dest) == before


@pytest.mark.parametrize("member, match", [
    ("../evil.txt", "'..'"),
    ("results/runs/../../evil.txt", "'..'"),
    ("/tmp/evil.txt", "absolute path"),
])
def test_paths_that_escape_are_refused(archive, dest, tmp_path, member, match):
    bad = write_tar(tmp_path / "bad.tar.gz", {**tar_members(archive), member: b"boom"})
    before = snapshot(dest)
    with pytest.raises(ExchangeError, match=match) as err:
        import_runs(bad, dest)
    assert repr(member) in str(err.value)
    assert snapshot(dest) == before and no_staging_left(dest)
    assert not (tmp_path / "evil.txt").exists() and not (dest.parent / "evil.txt").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
def test_links_and_devices_are_refused(archive, dest, tmp_path, kind):
    info = tarfile.TarInfo(run_member("noise0-seed0", "notes"))
    info.type = kind
    info.linkname = "/etc" if kind != tarfile.CHRTYPE else ""
    bad = write_tar(tmp_path / "bad.tar.gz", tar_members(archive), extra=[info])
    before = snapshot(dest)
    with pytest.raises(ExchangeError, match="notes") as err:
        import_runs(bad, dest)
    assert ("'/etc'" in str(err.value)) == (kind != tarfile.CHRTYPE)
    assert snapshot(dest) == before and no_staging_left(dest)


def test_a_symlink_in_a_source_folder_is_refused(source, dest):
    (run_path(source, PLAT, "noise0-seed0") / "passwd").symlink_to("/etc/passwd")
    before = snapshot(dest)
    with pytest.raises(ExchangeError, match="passwd: a link"):
        import_runs(source, dest)
    assert snapshot(dest) == before


@pytest.mark.parametrize("file, content, match", [
    ("config.json", b'{"seed": 0,', r"config.json: corrupt JSON \(line 1"),
    ("metrics.json", b"[1, 2", "metrics.json: corrupt JSON"),
    ("platform.json", b"", "platform.json: corrupt JSON"),
])
def test_corrupt_json_is_refused(source, dest, file, content, match):
    (run_path(source, PLAT, "noise0-seed1") / file).write_bytes(content)
    before = snapshot(dest)
    report = import_runs(source, dest)
    reason = dict(report.refused)[f"{PLAT}/noise0-seed1"]
    assert f"runs/{PLAT}/noise0-seed1/{file}" in reason
    assert re.search(match, reason), reason
    assert not run_path(dest, PLAT, "noise0-seed1").exists()
    assert {k: v for k, v in snapshot(dest).items() if "noise0-seed0" not in k and "cpu-other" not in k} == before


def edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = data
        for p in parents:
            target = target[p]
        target[key] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("file, changes, match", [
    ("config.json", {"foo": 1}, r"unknown RunConfig field\(s\) \['foo'\]"),
    ("config.json", {"fold": 9}, "fold must be from 1 to 5"),
    ("config.json", {"run_id": "other"}, "run_id 'other', but the folder is 'noise0-seed1'"),
    ("metrics.json", {"test__oa": 1.5}, r"test.oa: expected a finite fraction in \[0, 1\], got 1.5"),
    ("metrics.json", {"best_epoch": 3}, "best_epoch 3 > epochs_completed 2"),
    ("metrics.json", {"val__loss": -1}, "val.loss: expected a finite number >= 0"),
    ("platform.json", {"fingerprint": "XYZ"}, "fingerprint"),
])
def test_invalid_fields_are_refused_naming_them(source, dest, file, changes, match):
    edit_json(run_path(source, PLAT, "noise0-seed1") / file, **changes)
    reason = dict(import_runs(source, dest).refused)[f"{PLAT}/noise0-seed1"]
    assert f"noise0-seed1/{file}" in reason
    assert re.search(match, reason), reason
    assert not run_path(dest, PLAT, "noise0-seed1").exists()


@pytest.mark.parametrize("array, match", [
    (np.zeros((19, 20), dtype=np.int64), r"declares 3.0 kB \(shape \(19, 20\) int64\); expected shape \(20, 20\)"),
    (np.zeros((20, 20), dtype=np.float64), r"\(20, 20\) float64\); expected .* dtype int/uint"),
    (np.full((20, 20), -1, dtype=np.int64), "negative counts"),
    (np.array([{"a": 1}], dtype=object), "declares dtype object .* refused"),
])
def test_a_bad_confusion_matrix_is_refused(source, dest, array, match):
    np.save(run_path(source, PLAT, "noise0-seed1") / "confusion.npy", array, allow_pickle=True)
    reason = dict(import_runs(source, dest).refused)[f"{PLAT}/noise0-seed1"]
    assert "confusion.npy" in reason and re.search(match, reason), reason


def test_not_an_archive(tmp_path, dest):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not gzip at all")
    with pytest.raises(ExchangeError, match="junk.tar.gz"):
        import_runs(junk, dest)
    with pytest.raises(ExchangeError, match="no such archive or folder"):
        import_runs(tmp_path / "missing.tar.gz", dest)
    empty = write_tar(tmp_path / "empty.tar.gz", {"readme.txt": b"hi"})
    with pytest.raises(ExchangeError, match="holds no runs"):
        import_runs(empty, dest)
    assert no_staging_left(dest)


def test_an_unexpected_error_leaves_no_half_moved_run(archive, tmp_path, monkeypatch):
    dest = tmp_path / "dest"
    calls = []
    real = merge._place_file

    def failing(src: Path, target: Path) -> None:
        calls.append(target)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(src, target)

    monkeypatch.setattr(merge, "_place_file", failing)
    with pytest.raises(OSError, match="No space"):
        import_runs(archive, dest, reports=True)
    assert (run_path(dest, PLAT, "noise0-seed0") / "metrics.json").is_file()  # the first run, whole
    assert report_path(dest, PLAT, "noise0-seed0").is_file()
    assert not run_path(dest, PLAT, "noise0-seed1").exists()  # the second: moved back out
    assert not report_path(dest, PLAT, "noise0-seed1").exists()
    assert no_staging_left(dest)


def test_records_conflict_with_and_without_fingerprints():
    assert records_conflict(machine(FP_A), machine(FP_B))
    assert not records_conflict(machine(FP_A), machine(FP_A, "renamed"))  # the fingerprint decides
    assert not records_conflict(machine(None), machine(None))  # legacy, same device/CPU/torch
    assert records_conflict(machine(None, "AMD EPYC"), machine(None, "Intel Xeon"))
    assert not records_conflict(machine(FP_A), machine(None))  # nothing known differs: not a conflict
    assert records_conflict(machine(FP_A), {**machine(None), "torch_version": "2.1.0"})
    assert not records_conflict({"fingerprint": FP_A}, machine(None, "x"))  # unknown fields are no evidence


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def cli(*argv: str) -> int:
    return command_line.main(list(argv))


def test_command_line_export_import_and_errors(source, dest, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cli.tar.gz"
    assert cli("export", "--results", str(source), "-o", str(out), "--platform", f"{PLAT},cpu-other") == 0
    assert "3 run(s)" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    assert cli("export", "--results", str(source), "--platform", PLAT) == 0
    assert (tmp_path / f"results-{PLAT}.tar.gz").is_file()  # the default name
    assert cli("import", str(out), "--results", str(dest), "--dry-run") == 0
    assert not run_path(dest, PLAT, "noise0-seed0").exists()
    assert cli("import", str(out), "--results", str(dest)) == 0
    assert cli("import", str(out), "--results", str(dest)) == 0  # all skipped
    assert "3 skipped" in capsys.readouterr().out
    assert cli("import", str(out), "--results", str(dest), "--as", PLAT) == 2  # --as renames one platform only
    assert "several platforms" in capsys.readouterr().err
    other = tmp_path / "other.tgz"
    assert cli("export", "--results", str(source), "-o", str(other), "--platform", "cpu-other") == 0
    assert cli("import", str(other), "--results", str(dest), "--as", PLAT) == 1  # another machine's run
    assert "REFUSED cpu-test/noise0-seed0" in capsys.readouterr().out
    assert cli("import", str(tmp_path / "nope.tgz"), "--results", str(dest)) == 2
    assert "nope.tgz: no such archive" in capsys.readouterr().err
    assert cli("export", "--results", str(source), "--platform", "cpu-nope") == 2
    assert "cpu-nope" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Verify
# --------------------------------------------------------------------------------------------------


def test_metric_values_flattens_every_result_number():
    metrics = {"test": {"oa": 0.5, "miou": None, "iou": [0.1], "loss": 1.0}, "val": {"oa": 0.4}, "train": {"loss": 2},
               "test_noise": [{"std": 0.5, "oa": 0.3, "miou": 0.2}], "best_epoch": 3, "timing": {"total_s": 9.0}}
    values = metric_values(metrics)
    assert list(values) == ["test.oa", "test.miou", "test.loss", "val.oa", "train.loss", "test_noise[0.5].oa",
                            "test_noise[0.5].miou", "best_epoch"]
    assert np.isnan(values["test.miou"]) and values["best_epoch"] == 3.0
    metrics["test_corruptions"] = [{"kind": "clouds", "severity": 5, "oa": 0.25, "miou": 0.125, "iou": [0.1]},
                                   {"kind": "haze", "severity": 1, "oa": None, "miou": 0.5}]
    values = metric_values(metrics)
    assert list(values)[-5:] == ["test_corruptions[clouds:5].oa", "test_corruptions[clouds:5].miou",
                                 "test_corruptions[haze:1].oa", "test_corruptions[haze:1].miou", "best_epoch"]
    assert values["test_corruptions[clouds:5].miou"] == 0.125 and np.isnan(values["test_corruptions[haze:1].oa"])


def test_verify_refuses_to_rerun_into_the_committed_results(tmp_path, capsys):
    with pytest.raises(ExchangeError, match="--scratch"):
        verify(tmp_path / "any.yaml", tmp_path / "results", scratch=tmp_path / "results" / ".." / "results")
    assert cli("verify", str(tmp_path / "missing.yaml"), "--results", str(tmp_path)) == 2
    assert "missing.yaml not found" in capsys.readouterr().err


TINY = {
    "name": "tiny-verify",
    "grid": {"noise_std": [0.0], "seed": [0]},
    "fixed": tiny_sweep_fixed(n_examples=1, train_limit=4, val_limit=2, test_limit=2),
}


def test_verify_reruns_a_point_and_compares(tmp_path, capsys, synthetic_pastis):
    from utae.config.run_config import RunConfig
    from utae.config.sweepfile import load_sweep
    from utae.training.run import run

    data = synthetic_pastis(n_patches=10, size=32, t_range=(4, 6), seed=0)
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(yaml.safe_dump({**TINY, "dataset_root": str(data)}, sort_keys=False))
    committed = tmp_path / "committed"
    # The committed run is trained in this process (one torch thread, see conftest.py); verify reruns it in a
    # notebook kernel, as `make verify` does.
    point = load_sweep(sweep_file).points[0]
    run(RunConfig.from_dict({**point.params, "run_id": point.run_id, "progress": False,
                             "out_dir": str(run_path(committed, "cpu-here", point.run_id))}))
    scratch = tmp_path / "scratch"

    frame = verify(sweep_file, committed, points=1, scratch=scratch)  # this machine, run again
    assert set(frame.columns) >= {"platform", "run_id", "metric", "committed", "here", "diff", "same_machine"}
    assert set(frame["platform"]) == {"cpu-here"} and frame["same_machine"].all()
    assert {"test.oa", "test.miou", "test.loss", "val.miou", "train.loss", "test_noise[1].miou",
            "best_epoch"} <= set(frame["metric"])
    assert frame["identical"].all() and verify_failures(frame).empty  # a CPU rerun repeats every number

    # A committed number that this machine does not reproduce is a failure (exit status 1).
    metrics_file = run_path(committed, "cpu-here", "noise0-seed0") / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["val"]["oa"] += 0.001  # a test score would no longer agree with confusion.npy: refused, not compared
    metrics_file.write_text(json.dumps(metrics))
    argv = ["verify", str(sweep_file), "--results", str(committed), "--points", "noise0-seed0",
            "--scratch", str(scratch)]  # the finished rerun in scratch is reused
    assert cli(*argv) == 1
    assert "DIFFER" in capsys.readouterr().out
    failures = verify_failures(verify(sweep_file, committed, points=["noise0-seed0"], scratch=scratch))
    assert list(failures["metric"]) == ["val.oa"]
    assert failures["diff"].iloc[0] == pytest.approx(-0.001)

    # The same numbers committed by another machine: differences are reported, not failures.
    platform_file = run_path(committed, "cpu-here", "noise0-seed0") / "platform.json"
    record = json.loads(platform_file.read_text())
    record["fingerprint"] = "0123456789ab" if record["fingerprint"] != "0123456789ab" else "ba9876543210"
    platform_file.write_text(json.dumps(record))
    assert cli(*argv) == 0
    assert "max |diff| 0.001" in capsys.readouterr().out
    frame = verify(sweep_file, committed, points=1, scratch=scratch)
    assert not frame["same_machine"].any() and verify_failures(frame).empty
    assert frame.loc[frame["metric"] == "val.oa", "diff"].iloc[0] == pytest.approx(-0.001)


def test_verify_takes_run_ids_separated_by_commas_or_spaces(tmp_path):
    from utae.config.sweepfile import load_sweep
    from utae.exchange.verify import _select_points

    sweep_file = tmp_path / "two.yaml"
    sweep_file.write_text(yaml.safe_dump({**TINY, "grid": {"noise_std": [0.0], "seed": [0, 1]},
                                          "dataset_root": str(tmp_path)}, sort_keys=False))
    sweep = load_sweep(sweep_file)
    for text in ("noise0-seed1 noise0-seed0", "noise0-seed1,noise0-seed0", " noise0-seed1 , noise0-seed0 "):
        assert [p.run_id for p in _select_points(sweep, text)] == ["noise0-seed1", "noise0-seed0"], text
    assert [p.run_id for p in _select_points(sweep, 1)] == ["noise0-seed0"]
