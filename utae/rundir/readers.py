"""The run folder's validating readers.

:func:`read_record` is the one validating reader of ``config.json``, ``metrics.json`` and ``platform.json`` (a
non-empty JSON object; metrics sections checked); :func:`read_confusion` and :func:`read_predictions` read the
arrays with bounded memory (:mod:`utae.util.arrays`: headers, shapes and sizes checked before any data);
:func:`validate_run` checks every file of a finished run (import uses it): only the run files, each within its
size limit, every score finite, the test scores equal to those of the confusion matrix and of the std-0 test
noise (:func:`check_consistency`; verify uses it through :func:`read_checked_metrics`), the ``test_corruptions``
those of the config (:func:`check_test_corruptions`); :func:`read_run` loads them all; :func:`readable_runs` walks
a runs tree (leaving out, by name, a run whose records do not read or whose ``test_corruptions`` are not its
config's). The files and their layout are :mod:`utae.rundir.paths`'s.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utae.util.arrays import ArrayFileError, load_npy, load_npz
from utae.util.atomic import read_json
from utae.util.checks import is_int, is_number
from utae.pastis.classes import N_CLASSES
from utae.config.run_config import RunConfig, run_config_fields
from utae.perturb.kinds import SEVERITY_TABLE, parse_test_corruptions
from utae.rundir.paths import CONFIG, CONFUSION, HISTORY, METRICS, PLATFORM, PREDICTIONS, FILE_LIMITS, MAX_PATCH_SIDE, PREDICTION_SHAPES, PathLike, REQUIRED_FILES, RunFolderError, SCORE_TOLERANCE, SkippedRunWarning, SCALAR_SCORES, check_file_size, finished_run_dirs, is_local_file

__all__ = ["read_record", "metric_section", "check_metrics", "check_consistency", "check_test_corruptions", "check_config_record", "validate_run", "read_confusion", "read_predictions", "read_checked_metrics", "RunFiles", "read_run", "readable_runs"]


# --------------------------------------------------------------------------------------------------
# The validating readers
# --------------------------------------------------------------------------------------------------


def read_record(run_dir: PathLike, name: str, shown: str | None = None) -> dict[str, Any]:
    """``config.json``, ``platform.json`` or ``metrics.json`` of ``run_dir``: a non-empty JSON object (the
    metrics' ``test``, ``val``, ``train`` and ``timing`` sections objects or null).

    Raises:
        RunFolderError: naming the file (as ``shown`` when given): missing, corrupt, not an object, empty.
    """
    file = Path(run_dir) / name
    where = shown or str(file)
    try:
        value = read_json(file)
    except (OSError, ValueError) as exc:
        raise RunFolderError(str(exc).replace(str(file), where)) from None
    if not isinstance(value, dict):
        raise RunFolderError(f"{where}: expected a JSON object, got {type(value).__name__}")
    if not value:
        raise RunFolderError(f"{where}: records nothing (an empty object)")
    if name == METRICS:
        for key in ("test", "val", "train", "timing"):
            metric_section(value, key, where)
    return value


def metric_section(metrics: Mapping[str, Any], key: str, where: PathLike) -> dict[str, Any]:
    """``metrics[key]`` as a dict (``{}`` when null or absent); anything else is a RunFolderError naming ``where``."""
    value = metrics.get(key) or {}
    if not isinstance(value, dict):
        raise RunFolderError(f"{where}: '{key}' must be a JSON object, got {type(value).__name__}")
    return value


def _undefined(value: Any) -> bool:
    """null, or NaN: a score that is undefined (JSON has no NaN; :mod:`utae.util.atomic` writes it as null)."""
    return value is None or (is_number(value) and math.isnan(value))


def _check_score(value: Any, where: str, *, undefined_ok: bool = False) -> None:
    """A finite fraction in [0, 1]; with ``undefined_ok`` (a per-class IoU: a class absent from both the target
    and the prediction, and void) also null or NaN."""
    if undefined_ok and _undefined(value):
        return
    if not is_number(value) or not math.isfinite(value) or not 0.0 <= float(value) <= 1.0:
        raise RunFolderError(f"{where}: expected a finite fraction in [0, 1], got {value!r}")


def _check_section(section: Any, where: str) -> None:
    if not isinstance(section, dict):
        raise RunFolderError(f"{where}: expected a JSON object, got {type(section).__name__}")
    for key, value in section.items():
        if key == "loss":
            if not (is_number(value) and math.isfinite(value) and value >= 0.0):
                raise RunFolderError(f"{where}.loss: expected a finite number >= 0, got {value!r}")
        elif key == "iou":
            if not isinstance(value, list):
                raise RunFolderError(f"{where}.iou: expected a list, got {type(value).__name__}")
            for i, v in enumerate(value):
                _check_score(v, f"{where}.iou[{i}]", undefined_ok=True)
        elif key in SCALAR_SCORES or key.startswith(("macro_", "micro_")):
            _check_score(value, f"{where}.{key}")
    for key in ("oa", "miou"):
        if key not in section:
            raise RunFolderError(f"{where}: lacks {key!r}")


def check_metrics(metrics: Any, config: Mapping[str, Any], run_id: str, shown: str) -> None:
    """The values of a finished run's ``metrics.json``: its run id, epochs, score ranges, test-noise curve, and
    its ``test_corruptions`` against the config's (:func:`check_test_corruptions`).

    Raises:
        RunFolderError: naming ``shown`` and the key.
    """
    if not isinstance(metrics, dict):
        raise RunFolderError(f"{shown}: expected a JSON object, got {type(metrics).__name__}")
    if metrics.get("run_id") not in (None, run_id):
        raise RunFolderError(f"{shown}: run_id {metrics['run_id']!r}, but the folder is {run_id!r}")
    best, done = metrics.get("best_epoch"), metrics.get("epochs_completed")
    for key, value in (("best_epoch", best), ("epochs_completed", done)):
        if not is_int(value) or value < 1:
            raise RunFolderError(f"{shown}: {key} must be an int >= 1, got {value!r}")
    if best > done:
        raise RunFolderError(f"{shown}: best_epoch {best} > epochs_completed {done}")
    epochs = config.get("epochs")
    if is_int(epochs) and done > epochs:
        raise RunFolderError(f"{shown}: epochs_completed {done} > the config's epochs {epochs}")
    for key in ("train", "val", "test"):
        if key not in metrics:
            raise RunFolderError(f"{shown}: lacks {key!r}")
        _check_section(metrics[key], f"{shown}: {key}")
    curve = metrics.get("test_noise", [])
    if not isinstance(curve, list):
        raise RunFolderError(f"{shown}: test_noise: expected a list, got {type(curve).__name__}")
    for i, entry in enumerate(curve):
        where = f"{shown}: test_noise[{i}]"
        if not isinstance(entry, dict):
            raise RunFolderError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        std = entry.get("std")
        if not is_number(std) or not math.isfinite(std) or std < 0:
            raise RunFolderError(f"{where}.std: expected a number >= 0, got {std!r}")
        _check_section(entry, where)
    check_test_corruptions(metrics, config, shown)


def _test_corruption_label(entry: Any, where: str) -> str:
    """``"kind:severity"`` of a ``test_corruptions`` entry: an object with a string kind and an int severity."""
    if not isinstance(entry, dict):
        raise RunFolderError(f"{where}: expected a JSON object with kind, severity and scores, got "
                             f"{type(entry).__name__} {entry!r}")
    kind, severity = entry.get("kind"), entry.get("severity")
    if not isinstance(kind, str) or not is_int(severity):
        raise RunFolderError(f"{where}: expected a string 'kind' and an integer 'severity', got kind {kind!r}, "
                             f"severity {severity!r}")
    return f"{kind}:{severity}"


def check_test_corruptions(metrics: Mapping[str, Any], config: Mapping[str, Any], shown: str) -> None:
    """``metrics.json``'s ``test_corruptions`` is what the run's config asked for (:func:`utae.training.run.run` writes one
    entry per ``"kind:severity"`` of ``config.test_corruptions``, in its order): the same kinds and severities in
    the same order, each entry's ``oa`` and ``miou`` finite fractions in [0, 1] (per-class ``iou`` in [0, 1] or
    null), and, in ``"normalized"`` noise units, every ``gaussian`` entry whose std is a test-noise level equal to
    that ``test_noise`` entry (the run reuses that evaluation; to :data:`SCORE_TOLERANCE`). An absent or null
    ``test_corruptions`` (older runs) is an empty list.

    Raises:
        RunFolderError: naming ``shown`` and the entry (``test_corruptions[i]``) or the config's field.
    """
    try:
        wanted = parse_test_corruptions(config.get("test_corruptions"))
    except ValueError as exc:
        raise RunFolderError(f"{shown}: the run's config.json is not valid: {exc}") from None
    entries = metrics.get("test_corruptions")
    entries = [] if entries is None else entries
    if not isinstance(entries, list):
        raise RunFolderError(f"{shown}: test_corruptions: expected a list, got {type(entries).__name__}")
    labels: list[str] = []
    for i, entry in enumerate(entries):
        where = f"{shown}: test_corruptions[{i}]"
        label = _test_corruption_label(entry, where)
        if label in labels:
            raise RunFolderError(f"{where}: lists {label} a second time (the config's test_corruptions: each once)")
        if label not in wanted:
            raise RunFolderError(f"{where}: {label}, which the config's test_corruptions does not list "
                                 f"({len(wanted)} entries{': ' + ', '.join(wanted[:6]) if wanted else ''}"
                                 f"{', ...' if len(wanted) > 6 else ''})")
        if label != wanted[i]:
            raise RunFolderError(f"{where}: {label} where the config's test_corruptions[{i}] is {wanted[i]} (one "
                                 "entry per config entry, in its order)")
        _check_section(entry, where)
        labels.append(label)
    if len(labels) < len(wanted):
        raise RunFolderError(f"{shown}: test_corruptions lacks {wanted[len(labels)]} ({len(labels)} entries, the "
                             f"config's test_corruptions lists {len(wanted)})")
    if config.get("noise_space", run_config_fields()["noise_space"]) != "normalized":
        return  # test noise in raw units: not the gaussian corruption's draws
    noise = {float(e["std"]): (j, e) for j, e in enumerate(metrics.get("test_noise") or [])
             if isinstance(e, Mapping) and is_number(e.get("std"))}
    for i, (label, entry) in enumerate(zip(labels, entries)):
        kind, severity = label.split(":")
        std = float(SEVERITY_TABLE[kind][int(severity)]["std"]) if kind == "gaussian" else None
        if std in noise:
            j, same = noise[std]
            _compare_scores(entry, same, ("oa", "miou", "iou"), f"{shown}: test_corruptions[{i}] ({label})",
                            f"test_noise[{j}] (std {std:g}, the same evaluation)")


def _score_differs(a: Any, b: Any) -> bool:
    """Two scores that disagree: one undefined and not the other, or further apart than SCORE_TOLERANCE."""
    if _undefined(a) or _undefined(b):
        return not (_undefined(a) and _undefined(b))
    return abs(float(a) - float(b)) > SCORE_TOLERANCE


def _compare_scores(have: Mapping[str, Any], want: Mapping[str, Any], keys: Any, where: str, other: str) -> None:
    for key in keys:
        if key not in have or key not in want:
            continue
        a, b = have[key], want[key]
        if key == "iou":
            if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b):
                raise RunFolderError(f"{where}.iou: {len(a) if isinstance(a, list) else a!r} classes, but "
                                     f"{other} has {len(b) if isinstance(b, list) else b!r}")
            bad = [i for i, (x, y) in enumerate(zip(a, b)) if _score_differs(x, y)]
            if bad:
                i = bad[0]
                raise RunFolderError(f"{where}.iou[{i}] = {a[i]!r} disagrees with {other} ({b[i]!r}; tolerance "
                                     f"{SCORE_TOLERANCE:.1e})")
        elif _score_differs(a, b):
            raise RunFolderError(f"{where}.{key} = {a!r} disagrees with {other} ({b!r}; tolerance "
                                 f"{SCORE_TOLERANCE:.1e})")


def check_consistency(metrics: Mapping[str, Any], confusion: np.ndarray, shown: str) -> None:
    """A finished run's ``metrics.json`` agrees with itself and with ``confusion.npy``: every test score
    (OA, mIoU, per-class IoU, macro and micro P/R/F1) equals :func:`utae.pastis.metrics.scores` of the confusion matrix,
    and the test-noise entry at std 0, when there is one, repeats the clean test scores (to
    :data:`SCORE_TOLERANCE`). Call it after :func:`check_metrics`.

    Raises:
        RunFolderError: naming ``shown`` and the field, both values and the tolerance.
    """
    from utae.pastis.metrics import SCORE_KEYS, scores  # torch: only when a run's results are checked

    test = metric_section(metrics, "test", shown)
    _compare_scores(test, scores(confusion), SCORE_KEYS, f"{shown}: test",
                    f"the score computed from {CONFUSION}")
    for i, entry in enumerate(metrics.get("test_noise") or []):
        if isinstance(entry, Mapping) and is_number(entry.get("std")) and entry["std"] == 0:
            _compare_scores(entry, test, ("oa", "miou", "iou"), f"{shown}: test_noise[{i}] (std 0)",
                            "the clean test score")


def check_config_record(config: Any, run_id: str, shown: str, existing_dir: Path) -> None:
    """A stored ``config.json``: every field a RunConfig field and every value valid. ``dataset_root``, a path of
    the machine that made the run, is only checked to be a non-empty string (``existing_dir``, any folder of this
    machine, stands in for it while the rest is validated).

    Raises:
        RunFolderError: naming ``shown`` and the field.
    """
    if not isinstance(config, dict):
        raise RunFolderError(f"{shown}: expected a JSON object, got {type(config).__name__}")
    known = run_config_fields()
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise RunFolderError(f"{shown}: unknown RunConfig field(s) {unknown} (written by another version of utae?); "
                             f"known fields: {', '.join(sorted(known))}")
    root = config.get("dataset_root")
    if not isinstance(root, str) or not root.strip():
        raise RunFolderError(f"{shown}: dataset_root must be a non-empty path, got {root!r}")
    try:
        RunConfig.from_dict({**config, "dataset_root": str(existing_dir)})
    except (TypeError, ValueError) as exc:
        raise RunFolderError(f"{shown}: {exc}") from None
    if config.get("run_id") not in (None, run_id):
        raise RunFolderError(f"{shown}: run_id {config['run_id']!r}, but the folder is {run_id!r}")


def validate_run(run_dir: Path, run_id: str, shown: str) -> dict[str, Any]:
    """Check every file of a finished run directory; returns its ``platform.json`` dict.

    Raises:
        RunFolderError: naming the file (``shown/<file>``): a missing required file, unreadable JSON, a config
            that is not a valid RunConfig, metrics out of range, a bad fingerprint, an unreadable history, a
            confusion matrix that is not ``(20, 20)`` non-negative integers, test scores that disagree with it
            or with the test-noise entry at std 0 (:func:`check_consistency`), test-corruption scores that are
            not those of the config's ``test_corruptions`` (:func:`check_test_corruptions`), a predictions file whose arrays
            are not those of the run (:func:`read_predictions`), a file that is not a run file or is over its
            :data:`FILE_LIMITS` (files that stay on their machine, :func:`is_local_file`, are ignored).
    """
    from utae.machine.record import record_fingerprint  # torch: only when a run is validated

    for entry in sorted(run_dir.iterdir()):
        if is_local_file(entry.name):
            continue
        if entry.is_symlink() or not entry.is_file():
            raise RunFolderError(f"{shown}/{entry.name}: a folder or special file where a run holds plain files only")
        check_file_size(entry.name, entry.stat().st_size, f"{shown}/{entry.name}")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise RunFolderError(f"{shown}: missing {', '.join(missing)} (an unfinished or incomplete run)")
    config = read_record(run_dir, CONFIG, f"{shown}/{CONFIG}")
    check_config_record(config, run_id, f"{shown}/{CONFIG}", run_dir)
    metrics = read_record(run_dir, METRICS, f"{shown}/{METRICS}")
    check_metrics(metrics, config, run_id, f"{shown}/{METRICS}")
    record = read_record(run_dir, PLATFORM, f"{shown}/{PLATFORM}")
    try:
        record_fingerprint(record)
    except ValueError as exc:
        raise RunFolderError(f"{shown}/{PLATFORM}: {exc}") from None
    try:
        history = pd.read_csv(run_dir / HISTORY)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise RunFolderError(f"{shown}/{HISTORY}: unreadable CSV ({exc})") from None
    if "epoch" not in history.columns or len(history) == 0:
        raise RunFolderError(f"{shown}/{HISTORY}: expected an 'epoch' column and one row per epoch")
    cm = read_confusion(run_dir, f"{shown}/{CONFUSION}")
    check_consistency(metrics, cm, f"{shown}/{METRICS}")
    if (run_dir / PREDICTIONS).is_file():
        read_predictions(run_dir, config, f"{shown}/{PREDICTIONS}")
    return record


def _array_error(exc: Exception, file: Path, where: str) -> RunFolderError:
    return RunFolderError(str(exc).replace(str(file), where))


def read_confusion(run_dir: PathLike, shown: str | None = None) -> np.ndarray:
    """``confusion.npy``: ``(20, 20)`` non-negative integer counts as int64, read with bounded memory
    (:func:`utae.util.arrays.load_npy`: the header is checked before any data is read, no pickle).

    Raises:
        RunFolderError: naming the file (as ``shown`` when given) and what was expected.
    """
    file = Path(run_dir) / CONFUSION
    where = shown or str(file)
    try:
        cm = load_npy(file, shape=(N_CLASSES, N_CLASSES), max_bytes=N_CLASSES * N_CLASSES * 8, kinds="iu")
    except ArrayFileError as exc:
        raise _array_error(exc, file, where) from None
    except OSError as exc:
        raise RunFolderError(f"{where}: unreadable ({exc.strerror or exc})") from None
    if (cm < 0).any():
        raise RunFolderError(f"{where}: negative counts; expected a ({N_CLASSES}, {N_CLASSES}) confusion matrix of "
                             "counts")
    return cm.astype(np.int64)


def read_predictions(run_dir: PathLike, config: Mapping[str, Any], shown: str | None = None
                     ) -> dict[str, np.ndarray]:
    """``predictions.npz``, read with bounded memory (:func:`utae.util.arrays.load_npz`): exactly the members of
    :data:`PREDICTION_SHAPES`, ``rgb`` ``(N, S, S, 3)`` finite floats, ``target`` and ``pred`` ``(N, S, S)``
    class indices in ``[0, 20)``, ``patch_id`` ``(N,)`` ints, with ``N`` at most the config's ``n_examples`` and
    ``S`` at most :data:`MAX_PATCH_SIDE`; shapes and sizes are checked in the headers before any data is read.

    Raises:
        RunFolderError: naming the file (as ``shown`` when given), the member and what was expected.
    """
    file = Path(run_dir) / PREDICTIONS
    where = shown or str(file)
    n_max = config.get("n_examples", run_config_fields()["n_examples"])
    if not is_int(n_max) or n_max < 0:
        raise RunFolderError(f"{where}: the config's n_examples {n_max!r} is not an int >= 0")
    limit = FILE_LIMITS[PREDICTIONS]
    try:
        arrays = load_npz(file, PREDICTION_SHAPES, max_bytes=limit, max_total_bytes=limit,
                          limits={"N": int(n_max), "S": MAX_PATCH_SIDE})
    except ArrayFileError as exc:
        raise _array_error(exc, file, where) from None
    except OSError as exc:
        raise RunFolderError(f"{where}: unreadable ({exc.strerror or exc})") from None
    kinds = {"rgb": "f", "target": "iu", "pred": "iu", "patch_id": "iu"}
    for name, array in arrays.items():
        if array.dtype.kind not in kinds[name]:
            raise RunFolderError(f"{where}: member {name!r} holds {array.dtype}; expected "
                                 f"{'floats' if kinds[name] == 'f' else 'integers'}")
    if not np.isfinite(arrays["rgb"]).all():
        raise RunFolderError(f"{where}: member 'rgb' holds NaN or infinite values; expected finite colours")
    for name in ("target", "pred"):
        values = arrays[name]
        if values.size and (values.min() < 0 or values.max() >= N_CLASSES):
            raise RunFolderError(f"{where}: member {name!r} holds values from {values.min()} to {values.max()}; "
                                 f"expected class indices in [0, {N_CLASSES})")
    return arrays


def read_checked_metrics(run_dir: PathLike, shown: str | None = None) -> dict[str, Any]:
    """``metrics.json`` of a finished run, checked (:func:`check_metrics`: every score finite and in range) and
    consistent with itself and with ``confusion.npy`` (:func:`check_consistency`): what verify compares.

    Raises:
        RunFolderError: naming the file and the field.
    """
    run_dir = Path(run_dir)
    shown = shown or str(run_dir)
    config = read_record(run_dir, CONFIG, f"{shown}/{CONFIG}")
    metrics = read_record(run_dir, METRICS, f"{shown}/{METRICS}")
    check_metrics(metrics, config, run_dir.name, f"{shown}/{METRICS}")
    check_consistency(metrics, read_confusion(run_dir, f"{shown}/{CONFUSION}"), f"{shown}/{METRICS}")
    return metrics


@dataclass
class RunFiles:
    """The files of one run directory, loaded.

    Attributes:
        run_dir: the directory.
        config: ``config.json``; platform: ``platform.json``; metrics: ``metrics.json``.
        history: ``history.csv`` (one row an epoch).
        confusion: ``confusion.npy``, ``(n_classes, n_classes)`` int64 counts of the clean test set.
        predictions: ``predictions.npz`` as a dict (``rgb`` ``(N, H, W, 3)``, ``target`` and ``pred``
            ``(N, H, W)``, ``patch_id`` ``(N,)``), or None when the run wrote none.
    """

    run_dir: Path
    config: dict[str, Any]
    platform: dict[str, Any]
    metrics: dict[str, Any]
    history: pd.DataFrame
    confusion: np.ndarray
    predictions: dict[str, np.ndarray] | None


def read_run(run_dir: PathLike) -> RunFiles:
    """Load the files of a finished run directory (see :class:`RunFiles`).

    Raises:
        FileNotFoundError: naming the run directory and the missing file.
        RunFolderError: a JSON file that is corrupt or not an object (see :func:`read_record`), an array file
            whose header, shape or values are not those of a run (:func:`read_confusion`, :func:`read_predictions`).
    """
    run_dir = Path(run_dir)
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"run directory {run_dir} lacks {', '.join(missing)} (is the run finished?)")
    config = read_record(run_dir, CONFIG)
    predictions = read_predictions(run_dir, config) if (run_dir / PREDICTIONS).is_file() else None
    return RunFiles(
        run_dir=run_dir,
        config=config,
        platform=read_record(run_dir, PLATFORM),
        metrics=read_record(run_dir, METRICS),
        history=pd.read_csv(run_dir / HISTORY),
        confusion=read_confusion(run_dir),
        predictions=predictions,
    )


def readable_runs(root: PathLike = "results/runs") -> Iterator[tuple[str, str, Path, dict, dict, dict]]:
    """``(platform, run_id, run_dir, config, platform_json, metrics)`` of every finished run under ``root``
    whose files read (:func:`read_record`) and whose ``test_corruptions`` are those of its config
    (:func:`check_test_corruptions`); a broken run is skipped with a :class:`SkippedRunWarning` that names it and
    why."""
    for platform, run_id, run_dir in finished_run_dirs(root):
        try:
            config, plat, metrics = (read_record(run_dir, name) for name in (CONFIG, PLATFORM, METRICS))
            check_test_corruptions(metrics, config, str(run_dir / METRICS))
        except (ValueError, OSError) as exc:
            warnings.warn(SkippedRunWarning(f"{run_dir}: left out of the report: {exc}"), stacklevel=2)
            continue
        yield platform, run_id, run_dir, config, plat, metrics


