"""What each corruption does at each severity: one clear date of one test patch, clean and corrupted, as RGB frames
for :func:`utae.report.study_figures.corruption_gallery` (rows: kinds; columns: clean, then severities 1 to 5).

The corrupted frames are not stored by the runs: :func:`gallery_frames` draws them again from the run's dataset
(``config.json``: ``dataset_root``, the test folds of ``fold``'s rotation, its ``norm_stats`` normalisation) with
:func:`utae.perturb.corruptions.corrupt`, with the run's ``seed`` and the patch id. The patch is the first one of the run's
``predictions.npz`` (its label and clean prediction come from there).

* **One date** (:func:`clear_date`): the real date of the clean series with the lowest mean blue (B2) reflectance.
  Clouds and haze are brightest in blue, so this is the date least covered by them: the one where a corruption's
  effect is not hidden behind a cloud the series already had.
* **Each panel is that date corrupted.** Every kind but ``missing_dates`` is applied to that date alone (a
  one-date series): the kinds drawn on a share of the dates (``clouds``, ``haze``, ``band_dropout``,
  ``misregistration``) always hit at least one date, so every panel shows what the severity does to a date it hits
  (cover, opacity, bands lost, shift); the share of dates a severity hits is in the panel's title and the severity
  table. ``gaussian`` is the noise of its std on that date. ``missing_dates`` is drawn on the whole series: the
  panel is the date when the draw keeps it, an empty panel when it removes it, titled with the dates left.
  ``date_shift`` moves dates only: its images are the clean ones.
* **One fixed reflectance scale** (:func:`reflectance_scale`) for every panel: reflectance 0 is black and twice
  the 98th percentile of the clean date's B4, B3, B2 reflectance is white. The clean date fills about half of the
  range, so what brightens it (haze, noise, clouds) stays visible up to twice its bright end before it clips, and a
  lost band (0 reflectance) shows as its colour channel at black.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utae.perturb.kinds import KINDS, SEVERITIES, SEVERITY_TABLE
from utae.perturb.corruptions import corrupt
from utae.pastis.dataset import PastisDataset
from utae.pastis.metadata import BANDS, FOLD_ROTATIONS
from utae.util.atomic import read_json
from utae.rundir.readers import read_predictions

__all__ = ["RGB_BANDS", "GALLERY_SEVERITIES", "SCALE_HEADROOM", "rgb_frame", "clear_date", "reflectance_scale",
           "panel_title", "gallery_frames", "gallery_or_reason"]

#: B4, B3, B2 (red, green, blue) in PASTIS's band order (B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12).
RGB_BANDS: tuple[int, int, int] = (2, 1, 0)
#: The severities the gallery shows: all of them.
GALLERY_SEVERITIES: tuple[int, ...] = SEVERITIES
#: White is this many times the 98th percentile of the clean date's RGB reflectance (:func:`reflectance_scale`).
SCALE_HEADROOM: float = 2.0
#: The kinds drawn on a share of the dates: shown on the clear date alone, so that it is hit at every severity.
_DATE_SHARE_KINDS = ("clouds", "haze", "band_dropout", "misregistration")


def rgb_frame(image: torch.Tensor, mean: np.ndarray, std: np.ndarray, t: int | None = None) -> np.ndarray:
    """The raw-reflectance B4, B3, B2 composite of frame ``t`` (default: the middle one) of a normalised
    ``(T, 10, H, W)`` series -> ``(H, W, 3)`` float64, not stretched (see :func:`reflectance_scale`)."""
    bands = list(RGB_BANDS)
    frame = image[image.shape[0] // 2 if t is None else t].detach().cpu().numpy()[bands].astype(np.float64)
    raw = frame * np.asarray(std, dtype=np.float64)[bands, None, None] + \
        np.asarray(mean, dtype=np.float64)[bands, None, None]
    return raw.transpose(1, 2, 0)


def clear_date(image: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> int:
    """The index of the date of a normalised ``(T, C, H, W)`` series with the lowest mean B2 (blue) reflectance:
    the date least covered by cloud or haze (both brightest in blue). Ties: the earliest."""
    blue = image[:, 0].detach().cpu().double().flatten(1).mean(1) * float(std[0]) + float(mean[0])
    return int(torch.argmin(blue))


def reflectance_scale(clean_rgb: np.ndarray) -> tuple[float, float]:
    """``(0, white)``: the reflectance shown black and white in every panel; ``white`` is :data:`SCALE_HEADROOM`
    times the 98th percentile of the clean date's ``(H, W, 3)`` RGB reflectance (at least 1)."""
    return 0.0, max(SCALE_HEADROOM * float(np.percentile(clean_rgb, 98)), 1.0)


def panel_title(kind: str, severity: int) -> str:
    """What ``kind`` at ``severity`` does to a date it hits, and the share of dates it hits, in a few words."""
    p = SEVERITY_TABLE[kind][severity]
    share = f", {p['date_share']:.0%} of dates" if "date_share" in p else ""
    words = {"gaussian": lambda: f"σ {p['std']:g}", "clouds": lambda: f"cover {p['cover']:.0%}",
             "haze": lambda: f"opacity {p['opacity']:g}", "band_dropout": lambda: f"{p['n_bands']} band(s) lost",
             "misregistration": lambda: f"shift ≤ {p['max_shift']} px",
             "missing_dates": lambda: f"{p['drop_share']:.0%} dropped", "date_shift": lambda: f"± {p['days']} days"}
    return f"{severity}: {words[kind]()}{share}"


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


def _corrupted_date(image: torch.Tensor, dates: torch.Tensor, t: int, kind: str, severity: int, *, seed: int,
                    patch_id: int, norm: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray | None, int, str]:
    """Date ``t`` under ``kind`` at ``severity``: its raw RGB ``(H, W, 3)`` (None: removed), the dates left and
    the panel's title. ``missing_dates`` is drawn on the whole series, every other kind on date ``t`` alone."""
    mean, std = norm
    title = panel_title(kind, severity)
    if kind == "missing_dates":
        out, out_dates, _ = corrupt(image, dates, kind, severity, seed=seed, patch_id=patch_id, norm=norm)
        kept = (out_dates == dates[t]).nonzero().flatten()
        raw = rgb_frame(out, mean, std, int(kept[0])) if len(kept) else None
        return raw, int(out.shape[0]), f"{title}, {out.shape[0]}/{image.shape[0]} left"
    out, _, _ = corrupt(image[t:t + 1], dates[t:t + 1], kind, severity, seed=seed, patch_id=patch_id, norm=norm)
    if kind == "band_dropout":  # which bands: most are not among the three shown
        lost = (out[0] != image[t]).flatten(1).any(1).nonzero().flatten().tolist()
        share = SEVERITY_TABLE[kind][severity]["date_share"]
        title = f"{severity}: {' '.join(BANDS[b] for b in lost)} lost, {share:.0%} of dates"
    return rgb_frame(out, mean, std, 0), int(image.shape[0]), title


def gallery_frames(run_dir: str | os.PathLike[str], kinds: Sequence[str] = KINDS,
                   severities: Sequence[int] = GALLERY_SEVERITIES) -> dict[str, Any]:
    """The first patch of ``run_dir``'s ``predictions.npz``: its :func:`clear_date`, clean and under each kind at
    each severity (see the module docstring).

    Returns:
        ``clean`` ``(H, W, 3)`` and ``corrupted`` (kind -> severity -> ``(H, W, 3)``, or None where
        ``missing_dates`` removed the date): RGB in [0, 1] on the one :func:`reflectance_scale` (``scale``, raw
        reflectance x 10,000 shown black and white); ``titles`` (kind -> severity -> :func:`panel_title`, with the
        dates left for ``missing_dates``); ``date_index`` and ``date`` (days since the reference date) of the
        shown date; ``target`` and ``pred`` ``(H, W)`` (from ``predictions.npz``), ``patch_id``, ``n_dates``
        (kind -> severity -> dates left) and ``n_dates_clean``.

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
    seed, norm = int(config.get("seed", 0)), (np.asarray(test.mean), np.asarray(test.std))
    t = clear_date(image, *norm)
    clean = rgb_frame(image, *norm, t)
    lo, hi = reflectance_scale(clean)

    def scaled(raw: np.ndarray) -> np.ndarray:
        return np.clip((raw - lo) / (hi - lo), 0.0, 1.0)

    corrupted: dict[str, dict[int, np.ndarray | None]] = {}
    titles: dict[str, dict[int, str]] = {}
    n_dates: dict[str, dict[int, int]] = {}
    for kind in kinds:
        corrupted[kind], titles[kind], n_dates[kind] = {}, {}, {}
        for severity in (int(s) for s in severities):
            raw, n_dates[kind][severity], titles[kind][severity] = _corrupted_date(
                image, dates, t, kind, severity, seed=seed, patch_id=patch_id, norm=norm)
            corrupted[kind][severity] = None if raw is None else scaled(raw)
    return {"clean": scaled(clean), "corrupted": corrupted, "titles": titles, "scale": (lo, hi), "date_index": t,
            "date": int(dates[t]), "target": target, "pred": pred, "patch_id": patch_id, "n_dates": n_dates,
            "n_dates_clean": int(image.shape[0])}


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
    lo, hi = frames["scale"]
    parts = [f"Test patch {frames['patch_id']} of `{Path(run_dir).name}` (the clean-trained model's first example), "
             f"in RGB (B4, B3, B2), on its clearest date (date {frames['date_index'] + 1} of "
             f"{frames['n_dates_clean']}, day {frames['date']}: the lowest mean blue reflectance, so the least "
             "cloud or haze): clean, then under each corruption at each severity. Every panel uses one fixed scale, "
             f"reflectance {lo / 10_000:g} (black) to {hi / 10_000:.3g} (white; twice the clean date's 98th "
             "percentile), so the panels compare."]
    if any(k in frames["corrupted"] for k in _DATE_SHARE_KINDS):
        parts.append("Kinds drawn on a share of the dates are shown on this date alone, so that every severity "
                     "hits it; the share of dates each severity hits is in its title.")
    if "missing_dates" in frames["corrupted"]:
        parts.append("For missing_dates the whole series is drawn: an empty panel means this date was removed.")
    if "date_shift" in frames["corrupted"]:
        parts.append("date_shift moves the acquisition dates only: its images are the clean ones.")
    return frames, " ".join(parts)
