"""utae.predict end to end on real GeoTIFFs: the map against the dataset path (U-TAE, and trained runs of U-Net3D,
ConvLSTM and TSViT), the blending's bound, nodata, the input forms, official weights, a run without its dataset,
the command line.

Tolerance. Each window's logits are compared with those of the same patch read through
:class:`utae.pastis.dataset.PastisDataset` and predicted alone. The two runs compute the same sums, but predict() may group
windows into one forward and uses one torch thread while the reference uses the process's default: a different
order of float32 additions, which moves a logit by a few float32 ulps of the logit scale times the depth of
the network (about 1e-7 relative; the suite's precedent for grouped evaluation bounds it by 1e-5 of the logits'
scale, utae.training.engine). ``TOL`` is that 1e-5 of the scale. A wrong normalisation, a shifted window, a dropped or
misplaced date or a wrong blending weight moves logits by 1e-2 or more.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from utae.pastis.classes import N_CLASSES
from utae.predict import PredictError, predict
from utae.predict.geotiff import MAP_NODATA
from utae.predict.tiling import grid

CRS, SCENE_SHAPE, WINDOW = "EPSG:32631", (76, 90), 32  # as tests/predict/conftest.py writes the scene
OVERLAP = WINDOW // 4  # predict()'s default
#: The models whose map is checked against the dataset path: the tuned U-TAE, and one-epoch runs of a date-free
#: 3D CNN, a recurrent model and a transformer (both built for their 32 px patch size), which train (slow).
MODELS = ["utae"] + [pytest.param(name, marks=pytest.mark.slow) for name in ("unet3d", "convlstm", "tsvit")]
UTAE_ONLY = pytest.mark.parametrize("model_run", ["utae"], indirect=True)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


@pytest.fixture(scope="module")
def series(scene, tmp_path_factory, gt) -> Path:
    return gt.write_series(tmp_path_factory.mktemp("series"), scene["raw"], scene["dates"])[0].parent


@pytest.fixture(scope="module", params=MODELS)
def model_run(request) -> dict:
    """A run folder (``folder``) of :data:`MODELS` and its model and normalisation (conftest's ``load_run``)."""
    if request.param == "utae":
        return {"folder": request.getfixturevalue("run_folder"), **request.getfixturevalue("run_model")}
    return request.getfixturevalue("trained_run")(request.param)


@pytest.fixture(scope="module")
def predicted(series, model_run, tmp_path_factory):
    return predict(series, model_run["folder"], tmp_path_factory.mktemp("out"), probabilities=True, batch_size=3,
                   threads=1, progress=False)


@pytest.fixture(scope="module")
def reference(scene, model_run, tmp_path_factory, gt) -> dict:
    """Every window's logits through the dataset path, and their blend with the tiling's weights (float64)."""
    windows = [w for strip in grid(*SCENE_SHAPE, WINDOW, OVERLAP) for w in strip]
    patches = [scene["raw"][:, :, w.row:w.row + WINDOW, w.col:w.col + WINDOW] for w in windows]
    logits = gt.dataset_logits(model_run["model"], patches, scene["dates"], (model_run["mean"], model_run["std"]),
                               tmp_path_factory.mktemp("pastis"))
    sums = np.zeros((N_CLASSES, *SCENE_SHAPE))
    weight = np.zeros(SCENE_SHAPE)
    cover = np.zeros(SCENE_SHAPE, dtype=int)
    low, high = np.full((N_CLASSES, N_CLASSES, *SCENE_SHAPE), np.inf), np.full((N_CLASSES, N_CLASSES, *SCENE_SHAPE), -np.inf)
    for w, out in zip(windows, logits):
        area = (slice(w.row, w.row + WINDOW), slice(w.col, w.col + WINDOW))
        sums[(slice(None), *area)] += w.weight * out
        weight[area] += w.weight
        cover[area] += 1
        diff = out[:, None] - out[None, :]  # (K, K, P, P): logit differences, the log-ratios of probabilities
        low[(slice(None), slice(None), *area)] = np.minimum(low[(slice(None), slice(None), *area)], diff)
        high[(slice(None), slice(None), *area)] = np.maximum(high[(slice(None), slice(None), *area)], diff)
    blend = sums / weight
    tol = 1e-5 * float(np.abs(np.stack(logits)).max())
    return {"blend": blend, "cover": cover, "low": low, "high": high, "tol": tol, "windows": windows,
            "logits": logits}


def _decided(logits: np.ndarray, tol: float) -> np.ndarray:
    """Pixels whose top class leads the second by more than twice the tolerance (their argmax cannot flip)."""
    top2 = np.sort(logits, axis=0)[-2:]
    return top2[1] - top2[0] > 2 * tol


@UTAE_ONLY
def test_outputs_keep_the_grid_and_hold_a_map(predicted, scene, gt):
    with rasterio.open(predicted.outputs["map"]) as src:
        assert src.crs.to_string() == CRS and src.transform == gt.TRANSFORM and src.shape == SCENE_SHAPE
        assert src.dtypes[0] == "uint8" and src.nodata == MAP_NODATA
        classes = src.read(1)
    for key in ("confidence", "probabilities"):
        with rasterio.open(predicted.outputs[key]) as src:
            assert src.crs.to_string() == CRS and src.transform == gt.TRANSFORM and src.shape == SCENE_SHAPE
    assert classes.max() < N_CLASSES and len(np.unique(classes)) >= 3  # a map, not one class everywhere
    probs = _read(predicted.outputs["probabilities"])
    assert probs.shape == (N_CLASSES, *SCENE_SHAPE)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)  # float32 softmax of 20 classes
    np.testing.assert_array_equal(_read(predicted.outputs["confidence"])[0], probs.max(axis=0))
    np.testing.assert_array_equal(classes, probs.argmax(axis=0))
    record = json.loads(predicted.outputs["record"].read_text())
    assert record["window"] == WINDOW and record["overlap"] == OVERLAP and record["n_windows"] == 12
    assert record["reference_date"] == "2018-09-01" and len(record["dates"]) == len(scene["dates"])
    # the run records no normalisation: its dataset's NORM_S2_patch.json gives it
    assert record["model"]["name"] == "utae" and record["model"]["norm_source"] == "dataset"
    assert predicted.outputs["quicklook"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_window_pixels_equal_the_dataset_path(predicted, reference, model_run):
    probs = _read(predicted.outputs["probabilities"])
    classes = _read(predicted.outputs["map"])[0]
    core = reference["cover"] == 1
    assert core.sum() > 0.3 * core.size  # most of the raster is some window's core
    expected = np.zeros(probs.shape)
    for w, out in zip(reference["windows"], reference["logits"]):
        only = core[w.row:w.row + WINDOW, w.col:w.col + WINDOW]
        area = expected[:, w.row:w.row + WINDOW, w.col:w.col + WINDOW]
        area[:, only] = _softmax(out)[:, only]
    # |d softmax| <= |d logits| (softmax is 1-Lipschitz in the max norm), plus float32 rounding of the softmax
    np.testing.assert_allclose(probs[:, core], expected[:, core], rtol=0, atol=reference["tol"] + 1e-6)
    decided = core & _decided(reference["blend"], reference["tol"])
    np.testing.assert_array_equal(classes[decided], reference["blend"].argmax(axis=0)[decided])
    model = predicted.record["model"]
    assert model["name"] == json.loads((model_run["folder"] / "config.json").read_text())["model"]
    assert model["window"] == WINDOW and model["norm_source"] == ("dataset" if model["name"] == "utae" else "run")


def test_blended_pixels_are_the_weighted_blend_and_within_its_bound(predicted, reference):
    probs = _read(predicted.outputs["probabilities"]).astype(np.float64)
    classes = _read(predicted.outputs["map"])[0]
    np.testing.assert_allclose(probs, _softmax(reference["blend"]), rtol=0, atol=reference["tol"] + 1e-6)
    decided = _decided(reference["blend"], reference["tol"])
    np.testing.assert_array_equal(classes[decided], reference["blend"].argmax(axis=0)[decided])
    # The bound, whatever the weights: a log-ratio of two classes' probabilities is a convex combination of the
    # covering windows' logit differences (probabilities above 1e-30 keep float32's relative precision).
    shared = reference["cover"] > 1
    assert shared.any()
    log_ratio = np.log(np.maximum(probs[:, None], 1e-300)) - np.log(np.maximum(probs[None, :], 1e-300))
    usable = (probs[:, None] > 1e-30) & (probs[None, :] > 1e-30) & shared
    slack = 2 * reference["tol"] + 1e-5  # the logits' tolerance, plus float32's relative error of each log
    assert (log_ratio[usable] >= reference["low"][usable] - slack).all()
    assert (log_ratio[usable] <= reference["high"][usable] + slack).all()


def test_nodata_pixels_stay_nodata_and_nodata_dates_are_dropped(scene, run_folder, tmp_path, gt):
    raw = scene["raw"].copy()
    raw[raw == 0] = 1  # 0 is the nodata value below
    raw[:, :, :10, :15] = 0  # nodata at every date
    raw[2] = 0  # the third date: nodata everywhere
    folder = tmp_path / "holes"
    gt.write_series(folder, raw, scene["dates"], nodata=0)
    out = predict(folder, run_folder, tmp_path / "out", threads=1, progress=False)
    classes = _read(out.outputs["map"])[0]
    confidence = _read(out.outputs["confidence"])[0]
    assert (classes[:10, :15] == MAP_NODATA).all() and np.isnan(confidence[:10, :15]).all()
    assert (classes[10:] != MAP_NODATA).all() and np.isfinite(confidence[10:]).all()
    keep = [t for t in range(len(scene["dates"])) if t != 2]
    without = tmp_path / "without"
    gt.write_series(without, raw[keep], [scene["dates"][t] for t in keep], nodata=0)
    other = predict(without, run_folder, tmp_path / "out2", threads=1, progress=False)
    np.testing.assert_array_equal(classes, _read(other.outputs["map"])[0])
    np.testing.assert_array_equal(confidence, _read(other.outputs["confidence"])[0])


def test_a_nodata_pixel_takes_its_nearest_dates_values(scene, run_folder, tmp_path, gt):
    raw = scene["raw"].copy()
    raw[raw == 0] = 1
    days = np.array([(d - scene["dates"][0]).days for d in scene["dates"]])
    holed, filled = raw.copy(), raw.copy()
    holed[3, :, 40, 50] = 0
    nearest = 2 if days[3] - days[2] <= days[4] - days[3] else 4
    filled[3, :, 40, 50] = raw[nearest, :, 40, 50]
    maps = []
    for name, data in (("holed", holed), ("filled", filled)):
        gt.write_series(tmp_path / name, data, scene["dates"], nodata=0)
        result = predict(tmp_path / name, run_folder, tmp_path / f"out-{name}", threads=1, progress=False,
                         quicklook=False)
        maps.append(_read(result.outputs["confidence"])[0])
    np.testing.assert_array_equal(maps[0], maps[1])


def test_a_three_date_raster(scene, run_folder, run_model, tmp_path, gt):
    gt.write_series(tmp_path / "three", scene["raw"][:3, :, :40, :40], scene["dates"][:3])
    out = predict(tmp_path / "three", run_folder, tmp_path / "out", threads=1, progress=False)
    classes = _read(out.outputs["map"])[0]
    assert classes.shape == (40, 40) and classes.max() < N_CLASSES
    (logits,) = gt.dataset_logits(run_model["model"], [scene["raw"][:3, :, :32, :32]], scene["dates"][:3],
                               (run_model["mean"], run_model["std"]), tmp_path / "pastis")
    tol = 1e-5 * float(np.abs(logits).max())
    cover = np.zeros((40, 40), dtype=int)
    for w in [w for strip in grid(40, 40, WINDOW, OVERLAP) for w in strip]:
        cover[w.row:w.row + WINDOW, w.col:w.col + WINDOW] += 1
    alone = (cover[:32, :32] == 1) & _decided(logits, tol)  # window (0, 0)'s own pixels
    assert alone.any()
    np.testing.assert_array_equal(classes[:32, :32][alone], logits.argmax(axis=0)[alone])


def test_a_raster_smaller_than_the_window(scene, run_folder, tmp_path, gt):
    gt.write_series(tmp_path / "small", scene["raw"][:, :, :20, :27], scene["dates"])
    out = predict(tmp_path / "small", run_folder, tmp_path / "out", threads=1, progress=False)
    classes = _read(out.outputs["map"])[0]
    assert classes.shape == (20, 27) and classes.max() < N_CLASSES and out.n_windows == 1


@UTAE_ONLY
def test_a_stack_and_a_csv_give_the_same_map(scene, series, predicted, run_folder, tmp_path, gt):
    stack = gt.write_geotiff(tmp_path / "stack.tif", scene["raw"].reshape(-1, *SCENE_SHAPE))
    (tmp_path / "dates.txt").write_text("".join(f"{d:%Y-%m-%d}\n" for d in scene["dates"]))
    from_stack = predict(stack, run_folder, tmp_path / "out1", dates=tmp_path / "dates.txt", probabilities=True,
                         batch_size=3, threads=1, progress=False, quicklook=False)
    rows = "".join(f"{series / gt.product_name(d)},{d:%Y%m%d}\n" for d in reversed(scene["dates"]))
    (tmp_path / "files.csv").write_text("file,date\n" + rows)
    from_csv = predict(tmp_path / "files.csv", run_folder, tmp_path / "out2", probabilities=True, batch_size=3,
                       threads=1, progress=False, quicklook=False)
    for result in (from_stack, from_csv):
        np.testing.assert_array_equal(_read(result.outputs["probabilities"]),
                                      _read(predicted.outputs["probabilities"]))


@UTAE_ONLY
def test_official_weights_give_the_runs_map(series, predicted, run_folder, run_model, tmp_path):
    config = json.loads((run_folder / "config.json").read_text())
    fold_dir = tmp_path / "UTAE_PASTIS" / "Fold_1"
    fold_dir.mkdir(parents=True)
    torch.save({"epoch": 100, "state_dict": {f"module.{k}": v for k, v in run_model["model"].state_dict().items()}},
               fold_dir / "model.pth.tar")
    conf = {k: config[k] for k in ("encoder_widths", "decoder_widths", "out_conv", "n_head", "d_model", "d_k")}
    (tmp_path / "UTAE_PASTIS" / "conf.json").write_text(json.dumps({**conf, "model": "utae", "num_classes": 20}))
    norm = Path(run_model["dataset_root"]) / "NORM_S2_patch.json"
    out = predict(series, fold_dir / "model.pth.tar", tmp_path / "out", norm=norm, window=WINDOW, probabilities=True,
                  batch_size=3, threads=1, progress=False, quicklook=False)
    np.testing.assert_array_equal(_read(out.outputs["probabilities"]), _read(predicted.outputs["probabilities"]))
    with pytest.raises(PredictError, match="NORM_S2_patch.json"):
        predict(series, fold_dir / "model.pth.tar", tmp_path / "out2", window=WINDOW, progress=False)


@pytest.mark.slow  # trains a TSViT run
@pytest.mark.parametrize("model_run", ["tsvit"], indirect=True)
def test_a_run_predicts_with_its_recorded_normalisation_without_its_dataset(series, predicted, model_run, tmp_path):
    """A run that records its normalisation and patch size needs neither ``--norm`` nor its dataset: the same map."""
    moved = Path(shutil.copytree(model_run["folder"], tmp_path / "run"))
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "dataset_root": str(tmp_path / "gone")}))
    out = predict(series, moved, tmp_path / "out", probabilities=True, batch_size=3, threads=1, progress=False,
                  quicklook=False)
    np.testing.assert_array_equal(_read(out.outputs["probabilities"]), _read(predicted.outputs["probabilities"]))
    record = json.loads(out.outputs["record"].read_text())["model"]
    assert record["norm_source"] == "run" and record["window"] == WINDOW and record["uses_dates"] is True
    assert record["mean"] == np.asarray(model_run["mean"], np.float32).tolist()


def test_the_command_line(series, run_folder, tmp_path, capsys):
    from utae.cli import main

    status = main(["predict", str(series), "--model", str(run_folder), "--out", str(tmp_path / "out"),
                   "--no-progress", "--threads", "1", "--no-quicklook"])
    assert status == 0 and (tmp_path / "out" / "map.tif").is_file() and (tmp_path / "out" / "confidence.tif").is_file()
    assert "[predict] map:" in capsys.readouterr().out
    status = main(["predict", str(tmp_path / "nothing"), "--model", str(run_folder), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1 and "nothing" in err
    status = main(["predict", str(series), "--model", str(run_folder), "--out", str(tmp_path / "o3"),
                   "--stress", "fog:3"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: stress") and err.count("\n") == 1


def test_a_failed_prediction_leaves_no_output(series, run_folder, tmp_path, monkeypatch):
    from utae.predict import run

    def broken(*args, **kwargs):
        raise PredictError("boom")

    monkeypatch.setattr(run, "_predict_windows", broken)
    with pytest.raises(PredictError, match="boom"):
        predict(series, run_folder, tmp_path / "out", threads=1, progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_the_reference_date_follows_the_season(scene, run_folder, tmp_path, gt):
    """A series of another year predicts as the same series in the PASTIS season (the same day offsets)."""
    later = [d.replace(year=d.year + 3) for d in scene["dates"]]  # no 29 February in 2018-2019 or 2021-2022
    gt.write_series(tmp_path / "later", scene["raw"][:, :, :32, :32], later)
    gt.write_series(tmp_path / "same", scene["raw"][:, :, :32, :32], scene["dates"])
    a = predict(tmp_path / "later", run_folder, tmp_path / "a", threads=1, progress=False, quicklook=False)
    b = predict(tmp_path / "same", run_folder, tmp_path / "b", threads=1, progress=False, quicklook=False)
    assert a.record["reference_date"] == "2021-09-01"
    np.testing.assert_array_equal(_read(a.outputs["confidence"]), _read(b.outputs["confidence"]))
    c = predict(tmp_path / "later", run_folder, tmp_path / "c", reference_date="2018-09-01", threads=1,
                progress=False, quicklook=False)
    assert not np.array_equal(_read(c.outputs["confidence"]), _read(b.outputs["confidence"]))
