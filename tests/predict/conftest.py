"""Fixtures of the prediction tests: a synthetic PASTIS scene written as real GeoTIFFs, and a model to predict it.

The helpers (writing GeoTIFFs, the dataset path's logits) and constants reach the tests through the ``gt``
fixture, a namespace (two folders' ``conftest`` modules cannot both be imported by name).

The scene is the first patch of a synthetic PASTIS of 96 px patches (:func:`utae.pastis.synthetic.make_synthetic_pastis`:
parcels, phenology, clouds), cropped to 76 x 90 px (neither side a multiple of the window's step), written one
10-band GeoTIFF per date in UTM zone 31N (EPSG:32631) with a real 10 m transform and Sentinel-2 product names.
The model is the tests' tiny U-TAE (``helpers.tiny_model``), seeded, its BatchNorm statistics taken from a batch of
real inputs and its last BatchNorm set so that its logits are varied and mostly positive (the head ends with a
ReLU: an untouched one gives many tied zeros and one class everywhere), saved as a
run folder of this tool (``config.json`` and ``checkpoint.pt``, no ``metrics.json``: a run that does not record
its normalisation) whose dataset is a synthetic PASTIS of 32 px patches: the window is 32 px.

The other models (``trained_run(name)``) are real runs of :func:`utae.training.run.run`: one epoch with their tiny
widths (``helpers.TINY_MODELS``) on the same dataset; they record their normalisation and patch size.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine

from helpers import TINY_MODELS, tiny_model
from utae.training.checkpoint import TrainState, checkpoint_dict
from utae.config.run_config import RunConfig
from utae.pastis.metadata import BANDS, FOLD_ROTATIONS, fold_norm_stats, read_metadata, read_norm
from utae.pastis.dataset import PastisDataset, pad_collate
from utae.training.engine import build_model
from utae.pastis.layout import image_path

CRS = "EPSG:32631"
TRANSFORM = Affine(10.0, 0.0, 399960.0, 0.0, -10.0, 4900020.0)  # 10 m pixels of Sentinel-2 tile 31TCJ
SCENE_SHAPE = (76, 90)
WINDOW = 32


def product_name(day: dt.date, tile: str = "T31TCJ") -> str:
    """A Sentinel-2 L2A product-like file name for ``day`` (sensing time, then a later processing time)."""
    return f"S2A_MSIL2A_{day:%Y%m%d}T105031_N0213_R051_{tile}_{day + dt.timedelta(days=3):%Y%m%d}T140000.tif"


def write_geotiff(path: Path, data: np.ndarray, *, crs: str = CRS, transform: Any = TRANSFORM,
                  nodata: float | None = None, descriptions: Sequence[str] | None = BANDS, **profile: Any) -> Path:
    """Write ``data (bands, H, W)`` as a GeoTIFF (band descriptions repeat ``descriptions`` cyclically)."""
    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=data.dtype,
                       crs=crs, transform=transform, nodata=nodata, **profile) as dst:
        dst.write(data)
        if descriptions:
            for i in range(count):
                dst.set_band_description(i + 1, descriptions[i % len(descriptions)])
    return path


def write_series(folder: Path, raw: np.ndarray, dates: Sequence[dt.date], **kw: Any) -> list[Path]:
    """One GeoTIFF per date of ``raw (T, 10, H, W)`` in ``folder``, named as Sentinel-2 products."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_geotiff(folder / product_name(d), raw[t], **kw) for t, d in enumerate(dates)]


@pytest.fixture(scope="session")
def scene(synthetic_pastis) -> dict[str, Any]:
    """``{"raw": (T, 10, 76, 90) int16, "dates": [date, ...]}``: the scene's reflectance and dates."""
    root = synthetic_pastis(n_patches=5, size=96, t_range=(6, 6), seed=3)
    record = read_metadata(root)[0]
    raw = np.load(image_path(root, record.patch_id))[:, :, : SCENE_SHAPE[0], : SCENE_SHAPE[1]]
    dates = [dt.date(d // 10000, d // 100 % 100, d % 100) for d in record.dates]
    return {"raw": np.ascontiguousarray(raw), "dates": dates}


@pytest.fixture(scope="session")
def run_folder(synthetic_pastis, tmp_path_factory) -> Path:
    """A run folder of the tiny model: ``config.json`` and ``checkpoint.pt`` (its best epoch's weights)."""
    data = synthetic_pastis(n_patches=10, size=WINDOW, t_range=(4, 6), seed=0)
    config = RunConfig(dataset_root=str(data), fold=1, epochs=1, device="cpu", **tiny_model())
    torch.manual_seed(0)
    model = build_model(config)
    batch = pad_collate([PastisDataset(data, folds=(1, 2, 3))[i] for i in range(4)])
    with torch.no_grad():
        model.train()  # BatchNorm statistics of real inputs (a model's running stats are never the defaults)
        for _ in range(3):
            model(batch["image"], batch_positions=batch["dates"], pad_mask=batch["pad_mask"])
        model.eval()
        last_norm = model.out_conv.conv.conv[4]  # the head's last BatchNorm, before its ReLU
        last_norm.weight.normal_(0.0, 5.0)
        last_norm.bias.fill_(2.0)
    folder = tmp_path_factory.mktemp("run") / "noise0-seed0"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    state = TrainState(epoch=1, best_epoch=1, best_score=0.1, best_model=model.state_dict())
    ckpt = checkpoint_dict(model, torch.optim.Adam(model.parameters()), state, config.to_dict())
    torch.save(ckpt, folder / "checkpoint.pt")
    return folder


def load_run(folder: Path) -> dict[str, Any]:
    """A run folder's model (eval mode, built for ``WINDOW`` px where it takes its size) and its training
    normalisation ``(mean, std)`` from its dataset's ``NORM_S2_patch.json`` (not from the run's record)."""
    config = json.loads((folder / "config.json").read_text())
    model = build_model(RunConfig.from_dict(config), WINDOW)
    model.load_state_dict(torch.load(folder / "checkpoint.pt", weights_only=True)["best_model"])
    mean, std = fold_norm_stats(read_norm(config["dataset_root"]), FOLD_ROTATIONS[config["fold"] - 1][0])
    return {"model": model.eval(), "mean": mean, "std": std, "dataset_root": config["dataset_root"]}


@pytest.fixture(scope="session")
def run_model(run_folder) -> dict[str, Any]:
    """The run's model (eval mode) and its training normalisation ``(mean, std)``."""
    return load_run(run_folder)


@pytest.fixture(scope="session")
def trained_run(synthetic_pastis, tmp_path_factory) -> Callable[[str], dict[str, Any]]:
    """``trained_run(name)``: a run of model ``name`` trained for one epoch (built once per session): ``folder``
    and :func:`load_run`'s ``model``, ``mean``, ``std`` and ``dataset_root``."""
    from utae.training.run import run

    runs: dict[str, dict[str, Any]] = {}

    def get(name: str) -> dict[str, Any]:
        if name not in runs:
            data = synthetic_pastis(n_patches=10, size=WINDOW, t_range=(4, 6), seed=0)
            folder = tmp_path_factory.mktemp(f"run-{name}") / "seed0"
            run(RunConfig(dataset_root=str(data), out_dir=str(folder), model=name, epochs=1, batch_size=2,
                          device="cpu", deterministic=True, progress=False, n_examples=1, **TINY_MODELS[name]))
            runs[name] = {"folder": folder, **load_run(folder)}
        return runs[name]

    return get


def dataset_logits(model: torch.nn.Module, patches: Sequence[np.ndarray], dates: Sequence[dt.date],
                   norm: tuple[np.ndarray, np.ndarray], root: Path) -> list[np.ndarray]:
    """The logits ``(20, P, P)`` of each patch ``(T, 10, P, P)`` through the dataset path: written as a PASTIS folder
    (one patch each, all of fold 1, the given dates), read by :class:`utae.pastis.dataset.PastisDataset` with the
    normalisation ``norm``, predicted one patch per forward on its own dates."""
    (root / "DATA_S2").mkdir(parents=True)
    (root / "ANNOTATIONS").mkdir()
    features = []
    for i, patch in enumerate(patches):
        pid = 100 + i
        np.save(root / "DATA_S2" / f"S2_{pid}.npy", patch)
        np.save(root / "ANNOTATIONS" / f"TARGET_{pid}.npy", np.zeros((3, *patch.shape[2:]), np.uint8))
        features.append({"type": "Feature", "geometry": None, "properties": {
            "ID_PATCH": pid, "Fold": 1, "dates-S2": {str(j): int(f"{d:%Y%m%d}") for j, d in enumerate(dates)}}})
    (root / "metadata.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    dataset = PastisDataset(root, folds=(1,), norm_stats=norm)
    out = []
    with torch.no_grad():
        for i in range(len(dataset)):
            item = dataset[i]
            x, d = item["image"][None], item["dates"][None]
            out.append(model(x, batch_positions=d, pad_mask=torch.zeros(d.shape, dtype=torch.bool))[0].numpy())
    return out


@pytest.fixture(scope="session")
def gt() -> SimpleNamespace:
    """The helpers and constants of this file, for the tests."""
    return SimpleNamespace(CRS=CRS, TRANSFORM=TRANSFORM, SCENE_SHAPE=SCENE_SHAPE, WINDOW=WINDOW,
                           product_name=product_name, write_geotiff=write_geotiff, write_series=write_series,
                           dataset_logits=dataset_logits)
