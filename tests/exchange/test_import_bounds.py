"""Import is bounded (issue 21): only run files, sizes checked from headers before anything is written, arrays read
with bounded memory and checked against the run, metrics finite and consistent, reports rendered here, every name
that becomes a path checked.

Runs are written by hand (tests/test_exchange.py's ``make_run``), so that every case takes about a second.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from utae.exchange import import_runs as merge
from utae.exchange.export import ExchangeError, export_runs
from utae.rundir import paths as runpaths
from utae.rundir.paths import report_path, run_path
from utae.sweep.orchestrate import run_all
from utae.config.sweepfile import load_sweep
from utae.exchange.verify import verify

from helpers import PLAT, make_run, no_staging_left, snapshot, tar_members, write_tar

RUN = "noise0-seed0"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    results = tmp_path / "src" / "results"
    make_run(results, PLAT, RUN, seed=0)
    make_run(results, PLAT, "noise0-seed1", seed=1)
    return results


@pytest.fixture
def archive(source: Path, tmp_path: Path) -> Path:
    return export_runs(source, tmp_path / "out" / "study.tar.gz")


def member(run_id: str, name: str) -> str:
    return f"results/runs/{PLAT}/{run_id}/{name}"


def manifest_with(archive: Path, files: dict[str, bytes]) -> bytes:
    """The archive's manifest rewritten to list ``files`` with their true hashes (a forger's manifest)."""
    import hashlib

    manifest = json.loads(tar_members(archive)["results/MANIFEST.json"])
    manifest["files"].update({name: hashlib.sha256(data).hexdigest() for name, data in files.items()})
    return json.dumps(manifest).encode()


def zeros_tar_gz(path: Path, files: dict[str, bytes], big_name: str, big_size: int) -> Path:
    """A .tar.gz of ``files`` plus the member ``big_name`` of ``big_size`` zero bytes, compressed as it is
    written (deflate packs zeros about 1000:1, so 1 GB takes about 1 MB)."""
    with path.open("wb") as raw, tarfile.open(fileobj=raw, mode="w:gz", compresslevel=9) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(big_name)
        info.size = big_size

        class Zeros:
            left = big_size

            def read(self, n: int = -1) -> bytes:
                n = self.left if n < 0 else min(n, self.left)
                self.left -= n
                return bytes(n)

        tar.addfile(info, Zeros())
    return path


@pytest.fixture
def extracted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of every member that import extracts (tarfile.TarFile.extractall spied on)."""
    names: list[str] = []
    real = tarfile.TarFile.extractall

    def spy(self, path=".", members=None, **kwargs):  # type: ignore[no-untyped-def]
        names.extend(m.name for m in (members or self.getmembers()))
        return real(self, path, members=members, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extractall", spy)
    return names


# --------------------------------------------------------------------------------------------------
# Sizes and names, before extraction
# --------------------------------------------------------------------------------------------------


def test_a_small_archive_that_would_expand_to_a_gigabyte_is_refused_before_extraction(archive, tmp_path, extracted):
    bomb = zeros_tar_gz(tmp_path / "bomb.tar.gz", tar_members(archive), member("noise0-seed2", "extra.bin"),
                        1_000_000_000)
    assert bomb.stat().st_size < 2_000_000  # about 1 MB on disk
    dest = tmp_path / "dest"
    with pytest.raises(ExchangeError) as err:
        merge.import_runs(bomb, dest, reports=False)
    message = str(err.value)
    assert "\n" not in message and "extra.bin" in message and "1 GB" in message and "256 MB a member" in message
    assert extracted == [] and not dest.exists() and no_staging_left(dest)


def test_an_arbitrary_100_mb_file_is_never_imported_even_with_a_rewritten_manifest(archive, tmp_path, extracted):
    files = tar_members(archive)
    big = bytes(100_000_000)
    # Under a run file's name: over that file's limit, the whole archive is refused before extraction.
    name = member(RUN, "predictions.npz")
    forged = write_tar(tmp_path / "forged.tar.gz",
                       {**files, name: big, "results/MANIFEST.json": manifest_with(archive, {name: big})})
    dest = tmp_path / "dest"
    with pytest.raises(ExchangeError, match=r"predictions.npz'?: 100 MB, over the limit of 64 MB for a run's "
                                            r"predictions.npz \(nothing was extracted\)"):
        merge.import_runs(forged, dest, reports=False)
    assert extracted == [] and not dest.exists()
    # Under another name, listed in the manifest: its run is refused, nothing of it extracted; the other run comes.
    name = member(RUN, "weights.bin")
    forged = write_tar(tmp_path / "forged2.tar.gz",
                       {**files, name: big, "results/MANIFEST.json": manifest_with(archive, {name: big})})
    report = merge.import_runs(forged, dest, reports=False)
    reason = dict(report.refused)[f"{PLAT}/{RUN}"]
    assert "weights.bin: not a run-folder file" in reason and "refused before extraction" in reason
    assert report.imported == [f"{PLAT}/noise0-seed1"]
    assert not any(n.startswith(f"results/runs/{PLAT}/{RUN}/") for n in extracted)
    assert not run_path(dest, PLAT, RUN).exists()


def test_a_file_not_listed_in_the_manifest_is_refused_before_extraction(archive, source, tmp_path, extracted):
    files = tar_members(archive)
    # A run file whose name is allowed but which the manifest does not list (it was removed from the manifest).
    manifest = json.loads(files["results/MANIFEST.json"])
    del manifest["files"][member(RUN, "predictions.npz")]
    files["results/MANIFEST.json"] = json.dumps(manifest).encode()
    report = merge.import_runs(write_tar(tmp_path / "x.tar.gz", files), tmp_path / "dest", reports=False)
    reason = dict(report.refused)[f"{PLAT}/{RUN}"]
    assert "predictions.npz: not listed in MANIFEST.json" in reason and "before extraction" in reason
    assert not any(n.startswith(f"results/runs/{PLAT}/{RUN}/") for n in extracted)


def test_the_total_and_a_folder_are_bounded_too(source, archive, tmp_path):
    dest = tmp_path / "dest"
    with pytest.raises(ExchangeError, match=r"more than 10 kB in all .* \(nothing was extracted\)"):
        merge.import_runs(archive, dest, max_bytes=10_000, reports=False)
    # A folder: sizes from the file system, before anything is copied.
    big = run_path(source, PLAT, RUN) / "history.csv"
    with big.open("ab") as fh:
        fh.truncate(runpaths.FILE_LIMITS["history.csv"] + 1)  # sparse: no disk used
    with pytest.raises(ExchangeError, match=r"history.csv'?: 16.0 MB, over the limit of 16 MB"):
        merge.import_runs(source, dest, reports=False)
    assert not dest.exists() and no_staging_left(dest)


def test_files_that_stay_on_their_machine_are_ignored_not_imported(source, tmp_path):
    (run_path(source, PLAT, RUN) / "tensorboard" / "more").mkdir(parents=True)
    (run_path(source, PLAT, RUN) / "tensorboard" / "more" / "events").write_bytes(b"x")
    report = merge.import_runs(source, tmp_path / "dest", reports=False)
    assert report.refused == [] and len(report.imported) == 2
    got = sorted(p.name for p in run_path(tmp_path / "dest", PLAT, RUN).iterdir())
    assert got == sorted(["config.json", "platform.json", "metrics.json", "history.csv", "confusion.npy",
                          "predictions.npz"])
    assert any("stay on their machine" in note for note in report.notes)


# --------------------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------------------


def npz_claiming(path: Path, shape: tuple[int, ...], data: bytes = b"") -> None:
    """A predictions.npz whose 'rgb' member's .npy header claims ``shape`` (float32) over ``data``."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("rgb.npy", header.getvalue() + data)
        for name, array in (("target", np.zeros((2, 4, 4), np.int64)), ("pred", np.zeros((2, 4, 4), np.int64)),
                            ("patch_id", np.arange(2))):
            buf = io.BytesIO()
            np.save(buf, array)
            zf.writestr(f"{name}.npy", buf.getvalue())


def test_an_npz_whose_header_claims_a_huge_array_is_refused_in_one_line(source, tmp_path):
    npz_claiming(run_path(source, PLAT, RUN) / "predictions.npz", (50_000, 128, 128, 3), bytes(1000))
    report = merge.import_runs(source, tmp_path / "dest", reports=False)
    reason = dict(report.refused)[f"{PLAT}/{RUN}"]
    assert "\n" not in reason and f"runs/{PLAT}/{RUN}/predictions.npz" in reason and "'rgb'" in reason
    assert not run_path(tmp_path / "dest", PLAT, RUN).exists()
    assert report.imported == [f"{PLAT}/noise0-seed1"]


def test_a_3_gb_zero_array_compressed_small_is_refused_unread(source, tmp_path):
    """A header that declares 3.1 GB of float32 over zeros deflated small: refused from the header (and the zip
    directory), before a byte of data is inflated."""
    path = run_path(source, PLAT, RUN) / "predictions.npz"
    npz_claiming(path, (4, 8_000, 8_000, 3), bytes(1 << 24))  # 16 MB of the zeros: about 16 kB on disk
    assert path.stat().st_size < 100_000
    report = merge.import_runs(source, tmp_path / "dest", reports=False)
    reason = dict(report.refused)[f"{PLAT}/{RUN}"]
    assert "predictions.npz: member 'rgb'" in reason and "3.1 GB" in reason and "\n" not in reason


def test_predictions_with_more_patches_than_n_examples_are_refused(source, tmp_path):
    rng = np.random.default_rng(0)
    n = 5  # the config's n_examples is 4
    np.savez_compressed(run_path(source, PLAT, RUN) / "predictions.npz",
                        rgb=rng.uniform(size=(n, 4, 4, 3)).astype(np.float32), target=np.zeros((n, 4, 4), np.int64),
                        pred=np.zeros((n, 4, 4), np.int64), patch_id=np.arange(n))
    reason = dict(merge.import_runs(source, tmp_path / "dest", reports=False).refused)[f"{PLAT}/{RUN}"]
    assert "predictions.npz" in reason and "with N at most 4" in reason


@pytest.mark.parametrize("change, match", [
    (lambda p: p.update(pred=p["pred"] + 40),
     r"member 'pred' holds values from .*; expected class indices in \[0, 20\)"),
    (lambda p: p.update(target=p["target"][:, :3]), r"member 'target' declares .* expected shape \(2, 4, 4\)"),
    (lambda p: p.pop("patch_id"), "lacks the member"),
])
def test_predictions_that_are_not_the_runs_are_refused(source, tmp_path, change, match):
    path = run_path(source, PLAT, RUN) / "predictions.npz"
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    np.savez_compressed(path, **arrays)
    reason = dict(merge.import_runs(source, tmp_path / "dest", reports=False).refused)[f"{PLAT}/{RUN}"]
    assert "predictions.npz" in reason and __import__("re").search(match, reason), reason


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def rewrite_metrics(run_dir: Path, text: str | None = None, **changes: object) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = metrics
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        target[key] = value
    (run_dir / "metrics.json").write_text(text if text is not None else json.dumps(metrics))


@pytest.mark.parametrize("changes, match", [
    ({"test__miou": math.nan}, r"metrics.json: test.miou: expected a finite fraction in \[0, 1\], got nan"),
    ({"test__miou": None}, r"metrics.json: test.miou: expected a finite fraction in \[0, 1\], got None"),
    ({"val__oa": math.inf}, r"metrics.json: val.oa: expected a finite fraction"),
    ({"test__loss": math.nan}, r"metrics.json: test.loss: expected a finite number >= 0, got nan"),
    ({"test_noise__1__miou": math.nan}, r"metrics.json: test_noise\[1\].miou: expected a finite fraction"),
])
def test_an_imported_run_with_nan_metrics_is_refused_naming_the_file_and_field(source, tmp_path, changes, match):
    rewrite_metrics(run_path(source, PLAT, RUN), **changes)  # json.dumps writes NaN/Infinity literals
    dest = tmp_path / "dest"
    report = merge.import_runs(source, dest, reports=False)
    reason = dict(report.refused)[f"{PLAT}/{RUN}"]
    assert __import__("re").search(match, reason), reason
    assert not run_path(dest, PLAT, RUN).exists() and report.imported == [f"{PLAT}/noise0-seed1"]


def test_metrics_that_disagree_with_the_confusion_matrix_or_the_std0_noise_are_refused(source, tmp_path):
    run_dir = run_path(source, PLAT, RUN)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    oa = metrics["test"]["oa"]
    # A changed test score, made consistent with the std-0 entry: the confusion matrix tells.
    rewrite_metrics(run_dir, test__oa=oa + 1e-6, test_noise__0__oa=oa + 1e-6)
    reason = dict(merge.import_runs(source, tmp_path / "a", reports=False).refused)[f"{PLAT}/{RUN}"]
    assert f"metrics.json: test.oa = {oa + 1e-6!r} disagrees with the score computed from confusion.npy ({oa!r}" \
        in reason
    # The std-0 test-noise entry that is not the clean test.
    rewrite_metrics(run_dir, test__oa=oa, test_noise__0__oa=oa, test_noise__0__miou=0.5)
    reason = dict(merge.import_runs(source, tmp_path / "b", reports=False).refused)[f"{PLAT}/{RUN}"]
    assert "test_noise[0] (std 0).miou = 0.5 disagrees with the clean test score" in reason
    # The matrix changed instead (one pixel moved): the scores no longer agree with it.
    rewrite_metrics(run_dir, test_noise__0__miou=metrics["test"]["miou"])
    cm = np.load(run_dir / "confusion.npy")
    cm[0, 0] += 1
    np.save(run_dir / "confusion.npy", cm)
    reason = dict(merge.import_runs(source, tmp_path / "c", reports=False).refused)[f"{PLAT}/{RUN}"]
    assert "disagrees with the score computed from confusion.npy" in reason
    # Exactly the run's numbers again: accepted.
    cm[0, 0] -= 1
    np.save(run_dir / "confusion.npy", cm)
    assert f"{PLAT}/{RUN}" in merge.import_runs(source, tmp_path / "d", reports=False).imported


TESTED = ["gaussian:4", "clouds:1", "clouds:5"]  # gaussian severity 4 is std 1.0, a test-noise level of make_run


def with_test_corruptions(run_dir: Path) -> list[dict]:
    """Give a run of make_run the config's TESTED corruptions and their entries as a run writes them: in the config's
    order, the gaussian entry the test-noise evaluation of the same std (1.0), the others worse than clean."""
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "test_corruptions": TESTED}))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    noisy = next(e for e in metrics["test_noise"] if e["std"] == 1.0)
    entries = [{"kind": "gaussian", "severity": 4, **{k: noisy[k] for k in ("oa", "miou", "iou")}}]
    entries += [{"kind": "clouds", "severity": s, "oa": 0.5 / s, "miou": 0.25 / s, "iou": [0.25 / s] * 19 + [None]}
                for s in (1, 5)]
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "test_corruptions": entries}))
    return entries


def _forge(entries: list, case: str) -> list:
    """The forgeries a red team tried on metrics.json's test_corruptions (the config lists TESTED)."""
    out = [dict(e) for e in entries]
    if case == "score 5.0":
        out[1]["miou"] = 5.0
    elif case == "untested kind":
        out.append({"kind": "haze", "severity": 5, "oa": 0.5, "miou": 0.25})
    elif case == "nan":
        out[2]["miou"] = math.nan
    elif case == "missing entry":
        out.pop()
    elif case == "severity 9":
        out[2]["severity"] = 9
    elif case == "duplicate":
        out[2] = dict(out[1])
    elif case == "plain string":
        out[1] = "clouds:1"
    elif case == "reordered":
        out[1], out[2] = out[2], out[1]
    elif case == "gaussian not its test noise":
        out[0]["miou"] = out[0]["miou"] / 2
    return out


FORGED = {
    "score 5.0": r"metrics.json: test_corruptions\[1\].miou: expected a finite fraction in \[0, 1\], got 5.0",
    "untested kind": r"metrics.json: test_corruptions\[3\]: haze:5, which the config's test_corruptions does not list",
    "nan": r"metrics.json: test_corruptions\[2\].miou: expected a finite fraction in \[0, 1\], got nan",
    "missing entry": r"metrics.json: test_corruptions lacks clouds:5 \(2 entries, the config's test_corruptions "
                     r"lists 3\)",
    "severity 9": r"metrics.json: test_corruptions\[2\]: clouds:9, which the config's test_corruptions does not",
    "duplicate": r"metrics.json: test_corruptions\[2\]: lists clouds:1 a second time",
    "plain string": r"metrics.json: test_corruptions\[1\]: expected a JSON object .* got str 'clouds:1'",
    "reordered": r"metrics.json: test_corruptions\[1\]: clouds:5 where the config's test_corruptions\[1\] is "
                 r"clouds:1",
    "gaussian not its test noise": r"metrics.json: test_corruptions\[0\] \(gaussian:4\).miou = .* disagrees with "
                                   r"test_noise\[1\] \(std 1, the same evaluation\)",
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_forged_test_corruptions_are_refused_naming_the_run_and_the_field(source, tmp_path, case):
    run_dir = run_path(source, PLAT, RUN)
    entries = with_test_corruptions(run_dir)
    assert merge.import_runs(source, tmp_path / "as_run", reports=False).refused == []  # what a run writes: imported
    rewrite_metrics(run_dir, test_corruptions=_forge(entries, case))  # json.dumps writes NaN literals
    dest = tmp_path / "dest"
    report = merge.import_runs(source, dest, reports=False)
    reason = dict(report.refused)[f"{PLAT}/{RUN}"]
    assert "\n" not in reason and f"runs/{PLAT}/{RUN}/metrics.json" in reason
    assert __import__("re").search(FORGED[case], reason), reason
    assert report.exit_status == 1 and report.imported == [f"{PLAT}/noise0-seed1"]
    assert not run_path(dest, PLAT, RUN).exists()


def test_a_forged_corruption_score_in_an_archive_is_refused(source, tmp_path):
    """The red team's case: an exported archive whose clouds mIoU was rewritten to 5.0 (the manifest too)."""
    with_test_corruptions(run_path(source, PLAT, RUN))
    archive = export_runs(source, tmp_path / "out" / "study.tar.gz")
    files = tar_members(archive)
    name = member(RUN, "metrics.json")
    metrics = json.loads(files[name])
    metrics["test_corruptions"][1]["miou"] = 5.0
    forged = json.dumps(metrics).encode()
    files.update({name: forged, "results/MANIFEST.json": manifest_with(archive, {name: forged})})
    report = merge.import_runs(write_tar(tmp_path / "forged.tar.gz", files), tmp_path / "dest", reports=False)
    reason = dict(report.refused)[f"{PLAT}/{RUN}"]
    assert "test_corruptions[1].miou: expected a finite fraction in [0, 1], got 5.0" in reason
    assert report.exit_status == 1 and not run_path(tmp_path / "dest", PLAT, RUN).exists()


def test_a_run_without_test_corruptions_may_omit_them_but_not_hold_some(source, tmp_path):
    run_dir = run_path(source, PLAT, RUN)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "test_corruptions" not in metrics  # an older run: nothing tested, nothing recorded
    assert merge.import_runs(source, tmp_path / "a", reports=False).refused == []
    rewrite_metrics(run_dir, test_corruptions=[{"kind": "haze", "severity": 5, "oa": 0.5, "miou": 0.25}])
    reason = dict(merge.import_runs(source, tmp_path / "b", reports=False).refused)[f"{PLAT}/{RUN}"]
    assert "test_corruptions[0]: haze:5, which the config's test_corruptions does not list (0 entries)" in reason


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------


def test_an_imported_report_with_a_script_is_not_copied_the_page_is_rendered_here(archive, tmp_path):
    name = f"results/reports/{PLAT}/{RUN}.html"
    files = tar_members(archive)
    files[name] = b"<html><script>alert(1)</script>mine</html>"
    dest = tmp_path / "dest"
    report = merge.import_runs(write_tar(tmp_path / "x.tar.gz", files), dest)
    assert report.refused == [] and f"reports/{PLAT}/{RUN}.html" in report.reports
    page = report_path(dest, PLAT, RUN).read_text()
    assert "<script" not in page.lower() and "alert(1)" not in page
    metrics = json.loads((run_path(dest, PLAT, RUN) / "metrics.json").read_text())
    assert f"Test mIoU <b>{metrics['test']['miou']:.4f}</b>" in page
    assert "Content-Security-Policy" in page and page.count("data:image/png;base64,") == 5
    assert any("run report(s) not copied" in note for note in report.notes)


def test_text_from_the_run_is_escaped_in_the_rendered_page(source, tmp_path):
    config_file = run_path(source, PLAT, RUN) / "config.json"
    config = json.loads(config_file.read_text())
    config["dataset_root"] = "<script>alert(2)</script>"
    config_file.write_text(json.dumps(config))
    merge.import_runs(source, tmp_path / "dest")
    page = report_path(tmp_path / "dest", PLAT, RUN).read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(2)&lt;/script&gt;" in page


# --------------------------------------------------------------------------------------------------
# Names that become paths
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "..", "a/b", "-x", ""])
def test_a_platform_name_that_leaves_the_results_folder_is_refused(tmp_path, archive, name):
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(yaml.safe_dump({"name": "tiny", "dataset_root": str(tmp_path / "data"),
                                          "grid": {"seed": [0]}, "fixed": {"epochs": 1}}))
    sweep = load_sweep(sweep_file, check_run_config=False)
    results = tmp_path / "work" / "results"
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"^platform .* expected a single folder name") as err:
        run_all(sweep, results, platform=name, report=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^platform "):
        verify(sweep_file, results, platform=name)
    with pytest.raises(ExchangeError, match=r"^--as "):
        merge.import_runs(archive, results, as_platform=name)
    assert snapshot(tmp_path) == before


def test_a_run_folder_name_that_is_not_a_safe_name_is_refused(archive, tmp_path):
    files = {k.replace(f"/{RUN}/", "/x y/"): v for k, v in tar_members(archive).items() if "MANIFEST" not in k}
    report = merge.import_runs(write_tar(tmp_path / "x.tar.gz", files), tmp_path / "dest", reports=False)
    assert "holds ' '" in dict(report.refused)[f"{PLAT}/x y"]


# --------------------------------------------------------------------------------------------------
# Verify checks the committed runs too
# --------------------------------------------------------------------------------------------------


def test_verify_refuses_a_committed_run_with_nan_metrics_before_rerunning(tmp_path):
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(yaml.safe_dump({"name": "tiny", "dataset_root": str(tmp_path / "data"),
                                          "grid": {"noise_std": [0.0], "seed": [0]}, "fixed": {"epochs": 2}}))
    point = load_sweep(sweep_file, check_run_config=False).points[0]
    committed = tmp_path / "committed"
    run_dir = make_run(committed, PLAT, point.run_id, seed=0)
    rewrite_metrics(run_dir, test__miou=math.nan)
    with pytest.raises(ValueError, match=r"metrics.json: test.miou: expected a finite fraction in \[0, 1\], got nan"):
        verify(sweep_file, committed, points=1, scratch=tmp_path / "scratch")
    assert not (tmp_path / "scratch" / "runs").exists()  # nothing was rerun

