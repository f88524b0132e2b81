"""What each corruption looks like: one test patch of a run, clean and corrupted, as RGB frames for
:func:`utae.report.plots.corruption_gallery`.

The corrupted frames are not stored by the runs: :func:`gallery_frames` draws them again from the run's dataset
(``config.json``: ``dataset_root``, the test folds of ``fold``'s rotation, its ``norm_stats`` normalisation) with
:func:`utae.perturb.corruptions.corrupt`, seeded as the run's test (``seed``, the patch id, the kind and severity). The
patch is the first one of the run's ``predictions.npz`` (its label and clean prediction come from there).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utae.perturb.kinds import KINDS
from utae.perturb.corruptions import corrupt
from utae.pastis.metadata import FOLD_ROTATIONS
from utae.pastis.dataset import PastisDataset
from utae.util.atomic import read_json
from utae.rundir.readers import read_predictions

__all__ = ["RGB_BANDS", "GALLERY_SEVERITIES", "rgb_frame", "gallery_frames", "gallery_or_reason"]

#: B4, B3, B2 (red, green, blue) in PASTIS's band order (B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12).
RGB_BANDS: tuple[int, int, int] = (2, 1, 0)
#: The severities the gallery shows.
GALLERY_SEVERITIES: tuple[int, ...] = (1, 3, 5)


def rgb_frame(image: torch.Tensor, mean: np.ndarray, std: np.ndarray, t: int | None = None) -> np.ndarray:
    """The raw-reflectance B4, B3, B2 composite of frame ``t`` (default: the middle one) of a normalised
    ``(T, 10, H, W)`` series ->
    ``(H, W, 3)`` float64 (not stretched: :func:`gallery_frames` stretches every frame with the clean one's
    limits, so that a cloud looks bright and a shadow dark, as :func:`utae.training.run.rgb_composite` per frame would not)."""
    bands = list(RGB_BANDS)
    frame = image[image.shape[0] // 2 if t is None else t].detach().cpu().numpy()[bands].astype(np.float64)
    raw = frame * np.asarray(std, dtype=np.float64)[bands, None, None] + \
        np.asarray(mean, dtype=np.float64)[bands, None, None]
    return raw.transpose(1, 2, 0)


def _shown_date(clean: torch.Tensor, corrupted: torch.Tensor) -> int | None:
    """The date of a corrupted ``(T, C, H, W)`` series to show: the one the corruption changed most, so that a
    corruption drawn on some dates only is seen; None (the middle one) where it changed none or the series got
    shorter (``missing_dates``)."""
    if corrupted.shape != clean.shape:
        return None
    change = (corrupted - clean).abs().flatten(1).mean(1)
    return int(change.argmax()) if bool((change > 0).any()) else None


def _test_set(config: dict[str, Any], where: Path) -> PastisDataset:
    root = config.get("dataset_root")
    if not root or not Path(str(root)).is_dir():
        raise FileNotFoundError(f"the dataset {root!r} named by {where} is not here")
    fold = int(config.get("fold") or 1)
    if not 1 <= fold <= len(FOLD_ROTATIONS):
        raise ValueError(f"{where}: fold must be 1 to {len(FOLD_ROTATIONS)}, got {fold}")
    train_folds, _, test_folds = FOLD_ROTATIONS[fold - 1]
    stats = None
    if config.get("norm_stats", "train_folds") != "own_folds":
        train = PastisDataset(root, folds=train_folds)
        stats = (train.mean, train.std)
    return PastisDataset(root, folds=test_folds, norm_stats=stats)


def gallery_frames(run_dir: str | os.PathLike[str], kinds: Sequence[str] = KINDS,
                   severities: Sequence[int] = GALLERY_SEVERITIES) -> dict[str, Any]:
    """The first patch of ``run_dir``'s ``predictions.npz``, clean and under each kind at each severity.

    Returns:
        ``clean`` ``(H, W, 3)``, RGB of the middle date, and ``corrupted`` (kind -> severity -> ``(H', W', 3)``),
        RGB of the date the corruption changed most (the middle one where it changed none, and the middle of the
        dates left for ``missing_dates``) in [0, 1], every frame stretched with the clean frame's 2nd
        to 98th percentile; ``target`` and ``pred`` ``(H, W)`` (from ``predictions.npz``), ``patch_id``, and
        ``n_dates`` (kind -> severity -> dates left).

    Raises:
        FileNotFoundError: the run has no ``predictions.npz`` or its dataset is not here.
        ValueError: the patch is not in the dataset's test folds, or a file is malformed.
    """
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json")
    npz_path = run_dir / "predictions.npz"
    if not npz_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no predictions.npz")
    npz = read_predictions(run_dir, config)
    if len(npz["patch_id"]) == 0:
        raise ValueError(f"{npz_path} holds no patch")
    patch_id, target, pred = int(npz["patch_id"][0]), npz["target"][0], npz["pred"][0]
    test = _test_set(config, run_dir / "config.json")
    if patch_id not in test.ids:
        raise ValueError(f"patch {patch_id} of {npz_path} is not in the test folds of {config.get('dataset_root')}")
    item = test[test.ids.index(patch_id)]
    image, dates = item["image"], item["dates"]
    seed = int(config.get("seed", 0))
    clean = rgb_frame(image, test.mean, test.std)
    lo, hi = np.percentile(clean, [2, 98])
    scale = max(float(hi - lo), 1e-6)

    def stretch(raw: np.ndarray) -> np.ndarray:
        return np.clip((raw - lo) / scale, 0.0, 1.0)

    corrupted: dict[str, dict[int, np.ndarray]] = {}
    n_dates: dict[str, dict[int, int]] = {}
    for kind in kinds:
        corrupted[kind], n_dates[kind] = {}, {}
        for severity in severities:
            out, _, _ = corrupt(image, dates, kind, severity, seed=seed, patch_id=patch_id,
                                norm=(test.mean, test.std))
            corrupted[kind][int(severity)] = stretch(rgb_frame(out, test.mean, test.std, _shown_date(image, out)))
            n_dates[kind][int(severity)] = int(out.shape[0])
    return {"clean": stretch(clean), "corrupted": corrupted, "target": target, "pred": pred, "patch_id": patch_id,
            "n_dates": n_dates, "n_dates_clean": int(image.shape[0])}


def gallery_or_reason(run_dir: str | os.PathLike[str] | None, kinds: Sequence[str] = KINDS,
                      severities: Sequence[int] = GALLERY_SEVERITIES) -> tuple[dict[str, Any] | None, str]:
    """:func:`gallery_frames` and a caption, or None and one line saying why there is no gallery (no
    clean-trained run, no ``predictions.npz``, the dataset not here)."""
    if run_dir is None:
        return None, "No corruption gallery: no clean-trained run was tested on corruptions."
    try:
        frames = gallery_frames(run_dir, kinds, severities)
    except (FileNotFoundError, ValueError) as exc:
        return None, f"No corruption gallery: {exc}."
    sevs = ", ".join(str(s) for s in severities)
    parts = [f"Test patch {frames['patch_id']} of `{Path(run_dir).name}` (the clean-trained model's first example), "
             f"in RGB (B4, B3, B2): the middle date clean, and at severities {sevs} the date each corruption changed "
             "most (the middle one where it changed none); every frame is stretched with the clean frame's limits."]
    if "missing_dates" in frames["corrupted"]:
        left = ", ".join(f"{frames['n_dates']['missing_dates'][s]} at severity {s}" for s in severities)
        parts.append(f"For missing_dates the middle of the dates left is shown ({frames['n_dates_clean']} dates "
                     f"clean; {left}).")
    if "date_shift" in frames["corrupted"]:
        parts.append("date_shift moves the acquisition dates only: its images are the clean ones.")
    return frames, " ".join(parts)
