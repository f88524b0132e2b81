"""A small, learnable PASTIS in exactly the real on-disk format.

:func:`make_synthetic_pastis` writes ``metadata.geojson``, ``NORM_S2_patch.json``,
``DATA_S2/S2_<ID>.npy`` (int16 ``(T, 10, H, W)``, reflectance x 10,000) and
``ANNOTATIONS/TARGET_<ID>.npy`` (uint8 ``(3, H, W)``) under ``root``, so that
:class:`utae.pastis.dataset.PastisDataset` reads it exactly like the real dataset (both take the names from
:mod:`utae.pastis.layout`; this module stays free of torch). Command line::

    python -m utae.pastis.synthetic ROOT [--n-patches 300] [--size 32] [--seed 0] [--overwrite]

How a patch is made
-------------------
* Parcels are the cells of a random power diagram (a weighted Voronoi diagram: convex polygons
  of varied size) drawn in a randomly rotated and stretched frame, so fields are elongated.
  A one-pixel network of roads and hedges separates them (class 0).
* About 30 % of the cells are background (class 0: forest, urban, water, fallow land), which
  with the roads makes background the largest class, as in PASTIS. The others get one of
  12 crop classes with PASTIS-like frequencies. Some parcels whose centre lies outside the
  patch (parcels mostly outside it) carry the void label 19, keeping their crop's signal.
* Each class has a phenology: a greenness curve (vegetation fraction) and a dry-residue curve
  over the season, mixed with soil, green-vegetation and dry-vegetation spectra; rapeseed has
  a yellow flowering peak, meadow and fodder are mown. Look-alike pairs share the same spectra
  and curve shape and differ only in timing: soft winter wheat / winter barley, corn / soybean,
  meadow / leguminous fodder (different mowing dates). A single date cannot tell them apart
  reliably; the time series can.
* Per-parcel variation: a shift of the calendar (per tile and per parcel), vigour, soil
  brightness and per-band gains. Per-pixel texture and additive sensor noise.
* Acquisition dates are irregular and differ per patch: ``T`` dates drawn from a 5-day revisit
  grid between 2018-09-03 and 2019-10-31, with ``T`` uniform in ``t_range``. About
  ``cloud_prob`` of the dates are cloudy: whole-patch or partial clouds (bright and spectrally
  flat), with shadows; a few more dates are hazy.

``TARGET`` channels: 0 is the semantic class (0..19), 1 the parcel instance index within the
patch (1, 2, ... for crop and void parcels, 0 elsewhere), 2 is all zeros.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from utae.pastis.layout import DATA_DIR, METADATA_FILE, NORM_FILE, TARGET_DIR, image_path, norm_key, target_path

__all__ = ["make_synthetic_pastis", "generator_options", "read_generator_options", "OPTIONS_FILE",
           "CROP_PROFILES", "BACKGROUND_PROFILES", "main"]

#: Written next to the PASTIS files: the generator's options, so that a dataset can be checked against the
#: options a sweep asks for. Real PASTIS has no such file; the loader ignores it.
OPTIONS_FILE = "SYNTHETIC.json"
_DEFAULTS: dict[str, Any] = dict(n_patches=300, size=32, seed=0, t_range=(20, 30), cloud_prob=0.2, noise=1.0,
                                 background_share=0.3, void_prob=0.35)

_REFERENCE = _dt.date(2018, 9, 1)
_FIRST_DAY, _LAST_DAY, _REVISIT = 2, 425, 5  # 2018-09-03 .. 2019-10-31, every 5 days
_PIXEL_M = 10.0  # metres per pixel, as Sentinel-2 10 m bands

# Endmember spectra, reflectance x 10,000, bands B2 B3 B4 B5 B6 B7 B8 B8A B11 B12.
_SOIL = np.array([1100, 1400, 1700, 2000, 2200, 2350, 2500, 2600, 3200, 2700], np.float32)
_GREEN = np.array([250, 600, 300, 1050, 3000, 3900, 4300, 4450, 2100, 1000], np.float32)
_DRY = np.array([1250, 1600, 1900, 2250, 2650, 2850, 3000, 3100, 4000, 3200], np.float32)
_FLOWER = np.array([-100, 1400, 1300, 900, 300, 0, 0, 0, 0, 0], np.float32)  # yellow petals
_FOREST = np.array([200, 450, 250, 700, 2200, 2800, 3100, 3200, 1500, 700], np.float32)
_URBAN = np.array([1500, 1600, 1700, 1800, 1900, 2000, 2100, 2150, 2500, 2200], np.float32)
_WATER = np.array([600, 650, 450, 350, 250, 200, 150, 140, 80, 50], np.float32)
_CLOUD = np.array([1.0, 0.99, 0.98, 0.98, 0.97, 0.96, 0.95, 0.95, 0.72, 0.52], np.float32)
_SPECTRA = {"soil": _SOIL, "green": _GREEN, "dry": _DRY, "forest": _FOREST, "urban": _URBAN,
            "water": _WATER, "dark_dry": _DRY * 0.7}

_NEVER = 1.0e4  # a day far beyond the season

# Phenology parameters, days since 2018-09-01 (Jan 1 = 122, Apr 1 = 212, Jul 1 = 303, Oct 1 = 395).
# g: green fraction from gmin to gmax between sos (rise width) and eos (fall width); winter crops
# emerge after `sow` to `winter`; residue `dry` between eos and harvest; perennials carry last
# year's canopy into the autumn; `cuts` are mowing days.
_BASE: dict[str, Any] = dict(
    weight=0.0, gmin=0.03, gmax=0.85, sos=_NEVER, eos=_NEVER, rise=9.0, fall=8.0, sow=_NEVER,
    winter=0.0, dry=0.0, harvest=_NEVER, flower=0.0, flower_day=_NEVER, cuts=(), cut_depth=0.0,
    perennial=False, soil="soil", green="green", dry_spec="dry", soil_gain=1.0,
)


def _profile(**kw: Any) -> dict[str, Any]:
    out = dict(_BASE)
    out.update(kw)
    return out


#: label -> phenology of the 12 synthetic crop classes (PASTIS labels), with relative frequencies.
CROP_PROFILES: dict[int, dict[str, Any]] = {
    1: _profile(weight=0.19, gmin=0.42, gmax=0.80, sos=200, eos=330, rise=18, fall=25,
                cuts=(262, 318), cut_depth=0.5, perennial=True),                       # Meadow
    2: _profile(weight=0.14, gmin=0.04, gmax=0.90, sow=50, winter=0.25, sos=200, eos=290,
                dry=0.85, harvest=312),                                                # Soft winter wheat
    3: _profile(weight=0.11, gmax=0.90, sos=290, eos=375, dry=0.6, harvest=400),      # Corn
    4: _profile(weight=0.07, gmin=0.04, gmax=0.90, sow=40, winter=0.25, sos=181, eos=270,
                dry=0.85, harvest=292),                                                # Winter barley
    5: _profile(weight=0.06, gmin=0.04, gmax=0.85, sow=12, winter=0.55, sos=175, eos=276,
                dry=0.7, harvest=300, flower=0.8, flower_day=228),                     # Winter rapeseed
    6: _profile(weight=0.05, gmax=0.80, sos=228, eos=298, dry=0.8, harvest=318),      # Spring barley
    7: _profile(weight=0.06, gmax=0.75, sos=272, eos=340, fall=10, dry=0.9, harvest=372,
                dry_spec="dark_dry"),                                                  # Sunflower
    8: _profile(weight=0.07, gmin=0.08, gmax=0.42, sos=245, eos=385, rise=12, fall=12,
                perennial=True, soil_gain=1.25),                                       # Grapevine
    9: _profile(weight=0.04, gmax=0.95, sos=262, eos=412, dry=0.0),                   # Beet
    14: _profile(weight=0.04, gmin=0.30, gmax=0.85, sos=195, eos=345, rise=14, fall=20,
                 cuts=(248, 288, 330), cut_depth=0.6, perennial=True),                 # Leguminous fodder
    15: _profile(weight=0.05, gmax=0.90, sos=306, eos=390, dry=0.6, harvest=412),     # Soybeans
    16: _profile(weight=0.05, gmin=0.28, gmax=0.62, sos=215, eos=398, rise=12, fall=14,
                 perennial=True, soil_gain=0.9),                                       # Orchard
}

#: kinds of background (class 0) cells, with relative frequencies.
BACKGROUND_PROFILES: dict[str, dict[str, Any]] = {
    "forest": _profile(weight=0.35, gmin=0.35, gmax=0.80, sos=225, eos=395, rise=10, fall=12,
                       perennial=True, green="forest", soil_gain=0.6),
    "urban": _profile(weight=0.20, gmin=0.04, gmax=0.04, soil="urban"),
    "water": _profile(weight=0.10, gmin=0.0, gmax=0.0, soil="water"),
    "fallow": _profile(weight=0.35, gmin=0.20, gmax=0.50, sos=210, eos=320, rise=20, fall=25,
                       dry=0.25, perennial=True),
}
_EDGE = _profile(gmin=0.12, gmax=0.35, sos=215, eos=390, rise=15, fall=15, perennial=True,
                 soil="urban", green="forest")  # roads and hedges between cells

_TILES = {"T30UXV": (330_000.0, 6_800_000.0), "T31TFJ": (860_000.0, 6_280_000.0),
          "T31TFM": (900_000.0, 6_560_000.0), "T32ULU": (1_000_000.0, 6_800_000.0)}
_NUMERIC_KEYS = ("gmin", "gmax", "sos", "eos", "rise", "fall", "sow", "winter", "dry", "harvest",
                 "flower", "flower_day", "cut_depth", "soil_gain")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _parcel_map(rng: np.random.Generator, size: int, mean_area: float) -> tuple[np.ndarray, np.ndarray]:
    """A power diagram on a rotated, stretched frame. Returns ``cell (H, W)`` int indices
    ``0..K-1`` (cells present in the patch, renumbered) and ``outside (K,)`` bool: the cell's
    seed lies outside the patch (the parcel is mostly outside)."""
    k = max(3, int(rng.poisson(size * size / mean_area)))
    margin = 0.12 * size
    seeds = rng.uniform(-margin, size + margin, size=(k, 2))
    spacing2 = size * size / k
    weights = rng.uniform(0.0, 0.6, size=k) * spacing2
    theta = rng.uniform(0.0, np.pi)
    stretch = rng.uniform(1.0, 1.8)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    frame = np.diag([stretch, 1.0 / stretch]) @ rot
    yy, xx = np.mgrid[0:size, 0:size]
    pix = np.stack([yy.ravel() + 0.5, xx.ravel() + 0.5], axis=1) @ frame.T
    sp = seeds @ frame.T
    d2 = ((pix[:, None, :] - sp[None, :, :]) ** 2).sum(-1) - weights[None, :]
    cell = d2.argmin(axis=1).reshape(size, size)
    present, cell = np.unique(cell, return_inverse=True)
    cell = cell.reshape(size, size)
    outside = ((seeds[present] < 0) | (seeds[present] >= size)).any(axis=1)
    return cell, outside


def _params(profiles: Sequence[dict[str, Any]], rng: np.random.Generator,
            tile_shift: float) -> dict[str, np.ndarray]:
    """Per-parcel phenology arrays ``(K,)`` (and spectra ``(K, 10)``), jittered per parcel."""
    k = len(profiles)
    p = {key: np.array([pr[key] for pr in profiles], dtype=np.float64) for key in _NUMERIC_KEYS}
    shift = tile_shift + rng.normal(0.0, 5.0, k)
    for key in ("sow", "sos", "eos", "harvest", "flower_day"):
        p[key] = p[key] + shift
    p["sos"] += rng.normal(0.0, 3.0, k)
    p["eos"] += rng.normal(0.0, 3.0, k)
    span = p["gmax"] - p["gmin"]
    p["gmax"] = p["gmin"] + span * rng.uniform(0.85, 1.05, k)
    p["gmin"] = np.clip(p["gmin"] + rng.uniform(-0.03, 0.03, k), 0.0, 1.0)
    p["dry"] = p["dry"] * rng.uniform(0.8, 1.1, k)
    p["soil_gain"] = p["soil_gain"] * rng.uniform(0.8, 1.2, k)
    cuts = np.full((k, 3), _NEVER)
    for i, pr in enumerate(profiles):
        for j, c in enumerate(pr["cuts"]):
            cuts[i, j] = c + shift[i] + rng.normal(0.0, 6.0)
    p["cuts"] = cuts
    p["perennial"] = np.array([pr["perennial"] for pr in profiles], dtype=bool)
    p["soil_spec"] = np.stack([_SPECTRA[pr["soil"]] for pr in profiles]) * p["soil_gain"][:, None]
    p["green_spec"] = np.stack([_SPECTRA[pr["green"]] for pr in profiles])
    p["dry_spec"] = np.stack([_SPECTRA[pr["dry_spec"]] for pr in profiles])
    p["band_gain"] = 1.0 + rng.normal(0.0, 0.03, (k, 10))
    return p


def _reflectance(p: dict[str, np.ndarray], t: np.ndarray) -> np.ndarray:
    """Noise-free reflectance ``(K, T, 10)`` of each parcel on days ``t (T,)``."""
    col = {key: v[:, None] for key, v in p.items() if v.ndim == 1}
    tt = t[None, :].astype(np.float64)
    span = col["gmax"] - col["gmin"]
    main = col["gmin"] + span * _sigmoid((tt - col["sos"]) / col["rise"]) * (
        1.0 - _sigmoid((tt - col["eos"]) / col["fall"]))
    prev = np.where(col["perennial"], span * (1.0 - _sigmoid((tt - (col["eos"] - 365.0)) / col["fall"])), 0.0)
    autumn = col["winter"] * _sigmoid((tt - col["sow"]) / 12.0) * (1.0 - _sigmoid((tt - col["sos"]) / col["rise"]))
    g = np.maximum(main + prev, autumn)
    mown = np.zeros_like(g)
    for j in range(p["cuts"].shape[1]):
        c = p["cuts"][:, j : j + 1]
        after = tt >= c
        decay = np.where(after, np.exp(-np.where(after, tt - c, 0.0) / 22.0), 0.0) * col["cut_depth"]
        g = g * (1.0 - decay)
        mown = mown + 0.6 * decay
    g = np.clip(g, 0.0, 1.0)
    d = col["dry"] * _sigmoid((tt - col["eos"]) / col["fall"]) * (1.0 - 0.7 * _sigmoid((tt - col["harvest"]) / 4.0))
    d = np.clip(np.minimum(d + mown * g, 1.0 - g), 0.0, 1.0)
    flower = col["flower"] * np.exp(-0.5 * ((tt - col["flower_day"]) / 9.0) ** 2)
    s = (1.0 - g - d)[..., None]
    refl = (s * p["soil_spec"][:, None, :] + g[..., None] * p["green_spec"][:, None, :]
            + d[..., None] * p["dry_spec"][:, None, :] + flower[..., None] * _FLOWER)
    return (refl * p["band_gain"][:, None, :]).astype(np.float32)


def _cloud_cover(rng: np.random.Generator, t_len: int, size: int, cloud_prob: float) -> list[tuple[int, np.ndarray, np.ndarray, float]]:
    """Cloudy dates: a list of ``(date index, alpha (H, W), shadow (H, W), brightness)``."""
    out = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for ti in range(t_len):
        u = rng.random()
        if u < cloud_prob:
            if rng.random() < 0.35:  # overcast
                alpha = np.full((size, size), rng.uniform(0.85, 1.0), np.float32)
                shadow = np.zeros((size, size), np.float32)
            else:  # 1 to 3 cumulus blobs, with their shadows cast aside
                alpha = np.zeros((size, size), np.float32)
                for _ in range(int(rng.integers(1, 4))):
                    cy, cx = rng.uniform(-0.2, 1.2, 2) * size
                    r = rng.uniform(0.15, 0.5) * size
                    alpha += rng.uniform(0.7, 1.6) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
                alpha = np.clip(alpha, 0.0, 1.0)
                dy, dx = (rng.uniform(0.08, 0.2, 2) * size).astype(int) + 1
                shadow = np.roll(alpha, (int(dy), int(dx)), axis=(0, 1)) * (1.0 - alpha)
            out.append((ti, alpha, shadow, float(rng.uniform(3500.0, 9000.0))))
        elif u < cloud_prob + 0.08:  # thin haze
            alpha = np.full((size, size), rng.uniform(0.08, 0.3), np.float32)
            out.append((ti, alpha, np.zeros_like(alpha), float(rng.uniform(2500.0, 5000.0))))
    return out


def _make_patch(rng: np.random.Generator, size: int, t_range: tuple[int, int], cloud_prob: float,
                noise: float, tile_shift: float, bg_share: float, void_prob: float,
                crop_labels: np.ndarray, crop_w: np.ndarray) -> dict[str, Any]:
    """One patch: ``image`` int16 (T, 10, H, W), ``target`` uint8 (3, H, W), ``days`` (T,), stats."""
    grid = np.arange(_FIRST_DAY + int(rng.integers(0, _REVISIT)), _LAST_DAY + 1, _REVISIT)
    t_len = int(rng.integers(t_range[0], t_range[1] + 1))
    days = np.sort(rng.choice(grid, size=t_len, replace=False))

    cell, outside = _parcel_map(rng, size, mean_area=110.0)
    k = len(outside)
    is_bg = rng.random(k) < bg_share
    labels = np.where(is_bg, 0, rng.choice(crop_labels, size=k, p=crop_w)).astype(np.int64)
    bg_names = list(BACKGROUND_PROFILES)
    bg_w = np.array([BACKGROUND_PROFILES[n]["weight"] for n in bg_names])
    bg_kind = rng.choice(len(bg_names), size=k, p=bg_w / bg_w.sum())
    profiles = [BACKGROUND_PROFILES[bg_names[bg_kind[i]]] if labels[i] == 0 else CROP_PROFILES[int(labels[i])]
                for i in range(k)] + [_EDGE]
    sem_of_cell = np.where((labels > 0) & outside & (rng.random(k) < void_prob), 19, labels)

    # roads and hedges: a pixel whose right or lower neighbour is in another cell
    edge = np.zeros((size, size), bool)
    edge[:, :-1] |= cell[:, :-1] != cell[:, 1:]
    edge[:-1, :] |= cell[:-1, :] != cell[1:, :]
    pix_cell = np.where(edge, k, cell)

    refl = _reflectance(_params(profiles, rng, tile_shift), days)  # (K+1, T, 10)
    img = refl.transpose(1, 2, 0)[:, :, pix_cell]  # (T, 10, H, W)
    img *= (1.0 + 0.04 * rng.standard_normal((size, size), dtype=np.float32))
    for ti, alpha, shadow, level in _cloud_cover(rng, t_len, size, cloud_prob):
        frame = img[ti] * (1.0 - 0.5 * shadow)
        cloud = level * _CLOUD[:, None, None] * (1.0 + 0.05 * rng.standard_normal((size, size), dtype=np.float32))
        img[ti] = frame * (1.0 - alpha) + alpha * cloud
    if noise > 0:
        img += rng.standard_normal(img.shape, dtype=np.float32) * (noise * (30.0 + 0.02 * img))
    image = np.clip(np.rint(img), 0, 20000).astype(np.int16)

    sem = np.where(edge, 0, sem_of_cell[cell]).astype(np.uint8)
    visible = np.bincount(pix_cell.ravel(), minlength=k + 1)[:k] > 0  # some cells are all road
    parcel_cells = np.flatnonzero((sem_of_cell > 0) & visible)
    inst_of_cell = np.zeros(k + 1, np.int64)
    inst_of_cell[parcel_cells] = np.arange(1, len(parcel_cells) + 1)
    inst = inst_of_cell[pix_cell] % 256
    target = np.stack([sem, inst.astype(np.uint8), np.zeros_like(sem)])
    return {"image": image, "target": target, "days": days, "n_parcel": int(len(parcel_cells)),
            "cover": float((sem > 0).mean())}


def _yyyymmdd(day: int) -> int:
    d = _REFERENCE + _dt.timedelta(days=int(day))
    return d.year * 10000 + d.month * 100 + d.day


def generator_options(options: dict[str, Any] | None = None, source: str = "options") -> dict[str, Any]:
    """The full set of generator options: ``options`` over the defaults, as plain JSON values.

    Args:
        options: some of ``n_patches``, ``size``, ``seed``, ``t_range`` (``[min, max]``), ``cloud_prob``,
            ``noise``, ``background_share``, ``void_prob``.
        source: names where ``options`` come from, in the error (e.g. ``"params/default.yaml: synthetic"``).

    Raises:
        ValueError: an unknown option (naming it and the known ones) or a ``t_range`` that is not two integers.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(_DEFAULTS))
    if unknown:
        raise ValueError(f"{source}: unknown synthetic-data option(s) {unknown}; known: {sorted(_DEFAULTS)}")
    full = {**_DEFAULTS, **options}
    t_range = full["t_range"]
    if (not isinstance(t_range, (list, tuple)) or len(t_range) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in t_range)):
        raise ValueError(f"{source}: t_range must be two integers [min, max] dates per patch, got {t_range!r}")
    full["t_range"] = [int(v) for v in t_range]
    return full


def read_generator_options(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The options that wrote the synthetic dataset at ``root`` (its ``SYNTHETIC.json``), or None when the
    folder has no such file (real PASTIS, or a synthetic dataset written before the file existed).

    Raises:
        ValueError: the file exists but is not a JSON mapping (naming the file).
    """
    path = Path(root) / OPTIONS_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the synthetic dataset's options: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON mapping of generator options, got {type(doc).__name__}")
    return doc


def make_synthetic_pastis(
    root: str | os.PathLike[str],
    n_patches: int = _DEFAULTS["n_patches"],
    size: int = _DEFAULTS["size"],
    seed: int = _DEFAULTS["seed"],
    t_range: Sequence[int] = _DEFAULTS["t_range"],
    cloud_prob: float = _DEFAULTS["cloud_prob"],
    noise: float = _DEFAULTS["noise"],
    background_share: float = _DEFAULTS["background_share"],
    void_prob: float = _DEFAULTS["void_prob"],
    overwrite: bool = False,
) -> Path:
    """Write a synthetic PASTIS to ``root`` and return ``root`` as a ``Path``.

    Parameters
    ----------
    n_patches: number of patches (at least 5: every fold gets ``n_patches // 5`` or one more).
    size: patch height and width in pixels (at least 8); PASTIS uses 128.
    seed: the whole dataset is a deterministic function of the arguments.
    t_range: inclusive range of the number of dates ``T`` per patch (1 to 84; PASTIS has 38-61).
    cloud_prob: probability that a date is cloudy (partly or wholly), in [0, 1].
    noise: scale of the additive sensor noise (0 disables it).
    background_share: probability that a parcel cell is background rather than a crop.
    void_prob: probability that a crop parcel whose centre lies outside the patch is void (19).
    overwrite: replace an existing non-empty ``root``; otherwise that raises ``FileExistsError``.

    The dataset is written to a temporary sibling folder and moved into place at the end, so an
    interrupted call never leaves a partial dataset at ``root``. The options are recorded in
    ``root/SYNTHETIC.json`` (see :func:`read_generator_options`).
    """
    root = Path(root)
    t_min, t_max = _check_arguments(root, n_patches, size, t_range, cloud_prob, noise, background_share,
                                    void_prob, overwrite)
    n_patches, size = int(n_patches), int(size)
    draws = _dataset_draws(np.random.default_rng(seed), n_patches)

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        (tmp / DATA_DIR).mkdir()
        (tmp / TARGET_DIR).mkdir()
        features, stats = _write_patches(tmp, draws, seed, size, (t_min, t_max), cloud_prob, noise,
                                         background_share, void_prob)
        options = dict(n_patches=n_patches, size=size, seed=int(seed), t_range=[t_min, t_max],
                       cloud_prob=float(cloud_prob), noise=float(noise),
                       background_share=float(background_share), void_prob=float(void_prob))
        _write_json_files(tmp, features, stats, options)
        _move_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _check_arguments(root: Path, n_patches: int, size: int, t_range: Sequence[int], cloud_prob: float,
                     noise: float, background_share: float, void_prob: float,
                     overwrite: bool) -> tuple[int, int]:
    """Validate :func:`make_synthetic_pastis`'s arguments (one-line ValueError / FileExistsError); return
    ``t_range`` as ``(t_min, t_max)``."""
    n_grid = len(range(_FIRST_DAY + _REVISIT - 1, _LAST_DAY + 1, _REVISIT))
    if int(n_patches) != n_patches or n_patches < 5:
        raise ValueError(f"n_patches must be an integer >= 5 (one patch per fold at least), got {n_patches}")
    if int(size) != size or size < 8:
        raise ValueError(f"size must be an integer >= 8 pixels, got {size}")
    t_min, t_max = (int(v) for v in t_range)
    if not 1 <= t_min <= t_max <= n_grid:
        raise ValueError(f"t_range must satisfy 1 <= min <= max <= {n_grid}, got {tuple(t_range)}")
    for name, v in (("cloud_prob", cloud_prob), ("background_share", background_share), ("void_prob", void_prob)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    if cloud_prob > 0.92:
        raise ValueError(f"cloud_prob must be <= 0.92 (haze takes another 0.08 of dates), got {cloud_prob}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if root.exists() and (not root.is_dir() or any(root.iterdir())) and not overwrite:
        raise FileExistsError(f"{root} already exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    return t_min, t_max


def _dataset_draws(rng: np.random.Generator, n_patches: int) -> dict[str, np.ndarray]:
    """The dataset-level random choices, in their fixed draw order: patch ``ids``, ``folds`` (1..5) and
    ``tiles`` (indices into ``_TILES``), each ``(n_patches,)``, and ``tile_shifts`` ``(n_tiles,)`` in days."""
    ids = 10_000 + np.cumsum(rng.integers(1, 9, size=n_patches))  # non-contiguous, as in PASTIS
    folds = rng.permutation(np.arange(n_patches) % 5) + 1
    tiles = rng.integers(0, len(_TILES), size=n_patches)
    tile_shifts = rng.normal(0.0, 4.0, size=len(_TILES))
    return {"ids": ids, "folds": folds, "tiles": tiles, "tile_shifts": tile_shifts}


def _write_patches(tmp: Path, draws: dict[str, np.ndarray], seed: int, size: int, t_range: tuple[int, int],
                   cloud_prob: float, noise: float, background_share: float,
                   void_prob: float) -> tuple[list[dict[str, Any]], dict[int, list[tuple[np.ndarray, np.ndarray]]]]:
    """Make and write every patch's image and target under ``tmp`` (patch ``i`` from its own generator
    ``[seed, i + 1]``); return the metadata features and, per fold, each patch's per-band
    ``(mean (10,), std (10,))``."""
    ids, folds, tiles, tile_shifts = draws["ids"], draws["folds"], draws["tiles"], draws["tile_shifts"]
    tile_names = list(_TILES)
    crop_labels = np.array(sorted(CROP_PROFILES))
    crop_w = np.array([CROP_PROFILES[c]["weight"] for c in crop_labels])
    crop_w = crop_w / crop_w.sum()

    features: list[dict[str, Any]] = []
    stats: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {f: [] for f in range(1, 6)}
    slots = {name: 0 for name in tile_names}
    for i in range(len(ids)):
        prng = np.random.default_rng([seed, i + 1])
        tile = tile_names[tiles[i]]
        patch = _make_patch(prng, size, t_range, cloud_prob, noise, float(tile_shifts[tiles[i]]),
                            background_share, void_prob, crop_labels, crop_w)
        pid = int(ids[i])
        np.save(image_path(tmp, pid), patch["image"])
        np.save(target_path(tmp, pid), patch["target"])
        img = patch["image"]
        stats[int(folds[i])].append((img.mean(axis=(0, 2, 3), dtype=np.float64),
                                     img.std(axis=(0, 2, 3), dtype=np.float64)))
        features.append(_patch_feature(pid, patch, tile, slots[tile], int(folds[i]), size))
        slots[tile] += 1
    return features, stats


def _patch_feature(pid: int, patch: dict[str, Any], tile: str, slot: int, fold: int, size: int) -> dict[str, Any]:
    """The ``metadata.geojson`` feature of one patch: its square footprint, the ``slot``-th on its tile's
    40-wide grid, and its PASTIS properties."""
    extent = size * _PIXEL_M
    x0, y0 = _TILES[tile]
    x0, y0 = x0 + (slot % 40) * 1.5 * extent, y0 + (slot // 40) * 1.5 * extent
    ring = [[x0, y0], [x0 + extent, y0], [x0 + extent, y0 + extent], [x0, y0 + extent], [x0, y0]]
    return {
        "type": "Feature",
        "id": str(pid),
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "ID_PATCH": pid,
            "N_Parcel": patch["n_parcel"],
            "Parcel_Cover": round(patch["cover"], 4),
            "TILE": tile.lower(),
            "dates-S2": {str(j): _yyyymmdd(d) for j, d in enumerate(patch["days"])},
            "Fold": fold,
        },
    }


def _write_json_files(tmp: Path, features: list[dict[str, Any]],
                      stats: dict[int, list[tuple[np.ndarray, np.ndarray]]], options: dict[str, Any]) -> None:
    """Write ``NORM_S2_patch.json`` (per-fold mean of the patches' band means and stds), ``metadata.geojson``
    and ``SYNTHETIC.json`` under ``tmp``."""
    metadata = {
        "type": "FeatureCollection",
        "name": "metadata",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::2154"}},
        "features": features,
    }
    norm = {norm_key(f): {"mean": np.mean([m for m, _ in stats[f]], axis=0).tolist(),
                          "std": np.mean([s for _, s in stats[f]], axis=0).tolist()}
            for f in range(1, 6)}
    with open(tmp / NORM_FILE, "w", encoding="utf-8") as fh:
        json.dump(norm, fh, indent=1)
    with open(tmp / METADATA_FILE, "w", encoding="utf-8") as fh:
        json.dump(metadata, fh)
    with open(tmp / OPTIONS_FILE, "w", encoding="utf-8") as fh:
        json.dump(generator_options(options), fh, indent=1)


def _move_into_place(tmp: Path, root: Path) -> None:
    if root.exists():
        old = root.parent / f".{root.name}.old-{os.getpid()}-{time.monotonic_ns()}"
        os.replace(root, old)
        os.replace(tmp, root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, root)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: ``python -m utae.pastis.synthetic ROOT [options]``."""
    ap = argparse.ArgumentParser(prog="python -m utae.pastis.synthetic",
                                 description="Write a small synthetic PASTIS dataset in the real format.")
    ap.add_argument("root", help="output folder (created; must be empty unless --overwrite)")
    ap.add_argument("--n-patches", type=int, default=300)
    ap.add_argument("--size", type=int, default=32, help="patch height and width in pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--t-min", type=int, default=20, help="fewest dates per patch")
    ap.add_argument("--t-max", type=int, default=30, help="most dates per patch")
    ap.add_argument("--cloud-prob", type=float, default=0.2)
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--overwrite", action="store_true", help="replace ROOT if it exists")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        root = make_synthetic_pastis(args.root, n_patches=args.n_patches, size=args.size, seed=args.seed,
                                     t_range=(args.t_min, args.t_max), cloud_prob=args.cloud_prob,
                                     noise=args.noise, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.n_patches} patches of {args.size}x{args.size} to {root} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
