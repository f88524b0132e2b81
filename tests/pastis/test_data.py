"""Tests of utae.pastis.dataset: reading the PASTIS layout, errors on bad input, validate, pad_collate."""

from __future__ import annotations

import datetime as dt
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from utae.pastis.classes import CLASS_COLORS, CLASS_NAMES, N_CLASSES, VOID_LABEL, cmap
from utae.pastis import layout
from utae.pastis.metadata import FOLD_ROTATIONS, PastisFormatError, read_metadata
from utae.pastis.dataset import PastisDataset, pad_collate
from utae.pastis.validate import validate

# ---------------------------------------------------------------------------------------------
# A tiny PASTIS folder, written by hand with the real format's quirks:
#  * dates-S2 stored as a JSON string for one patch, as a mapping for the others;
#  * non-contiguous patch ids, listed out of numeric order;
#  * int16 reflectance, uint8 (3, H, W) targets whose channels 1-2 hold unrelated values;
#  * a patch with an acquisition before the reference date 2018-09-01.
# ---------------------------------------------------------------------------------------------

H = W = 4
TINY = {  # id: (fold, dates YYYYMMDD)
    20412: (5, [20180825, 20180910, 20190101]),
    10000: (1, [20180917, 20181002, 20181201, 20190315]),
    10007: (2, [20180920, 20181010]),
}
NORM = {f"Fold_{k}": {"mean": [100.0 * k + c for c in range(10)], "std": [10.0 + k + 2 * c for c in range(10)]}
        for k in range(1, 6)}


def tiny_raw(pid: int, t_len: int) -> np.ndarray:
    """The int16 reflectance of a tiny patch: 1000*c + 100*t + 10*h + w + pid % 7."""
    t, c, h, w = np.meshgrid(np.arange(t_len), np.arange(10), np.arange(H), np.arange(W), indexing="ij")
    return (1000 * c + 100 * t + 10 * h + w + pid % 7).astype(np.int16)


def tiny_labels(pid: int) -> np.ndarray:
    return ((np.arange(H * W).reshape(H, W) + pid) % 20).astype(np.uint8)


def write_tiny_pastis(root: Path) -> Path:
    (root / "DATA_S2").mkdir(parents=True)
    (root / "ANNOTATIONS").mkdir()
    features = []
    for pid, (fold, dates) in TINY.items():
        mapping = {str(i): d for i, d in enumerate(dates)}
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [40, 0], [40, 40], [0, 40], [0, 0]]]},
            "properties": {
                "ID_PATCH": pid, "Fold": fold, "N_Parcel": 3, "Parcel_Cover": 0.5, "TILE": "t31tfj",
                # the first patch keeps the dates as a JSON string, as some readers store them
                "dates-S2": json.dumps(mapping) if pid == 20412 else mapping,
            },
        })
        np.save(root / "DATA_S2" / f"S2_{pid}.npy", tiny_raw(pid, len(dates)))
        target = np.stack([tiny_labels(pid), np.full((H, W), 200, np.uint8), np.zeros((H, W), np.uint8)])
        np.save(root / "ANNOTATIONS" / f"TARGET_{pid}.npy", target)
    (root / "metadata.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    (root / "NORM_S2_patch.json").write_text(json.dumps(NORM))
    return root


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_tiny_pastis(tmp_path / "PASTIS")


def offsets(dates: list[int], ref: dt.date = dt.date(2018, 9, 1)) -> list[int]:
    return [(dt.date(d // 10000, d // 100 % 100, d % 100) - ref).days for d in dates]


def set_metadata(root: Path, pid: int, **props) -> None:
    path = root / "metadata.geojson"
    doc = json.loads(path.read_text())
    for feat in doc["features"]:
        if feat["properties"]["ID_PATCH"] == pid:
            feat["properties"].update(props)
    path.write_text(json.dumps(doc))


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def test_classes() -> None:
    assert len(CLASS_NAMES) == N_CLASSES == 20 and len(CLASS_COLORS) == 20
    assert CLASS_NAMES[0] == "Background" and CLASS_NAMES[VOID_LABEL] == "Void label"
    assert len(set(CLASS_COLORS)) == 20
    assert cmap().N == 20


def test_tiny_folder_reads_with_quirks(tiny: Path) -> None:
    ds = PastisDataset(tiny, folds=None)
    assert ds.ids == [20412, 10000, 10007]  # file order
    assert ds.folds == (1, 2, 3, 4, 5)
    # folds=None selects all five folds: their five statistics vectors are averaged
    mean = np.mean([NORM[f"Fold_{k}"]["mean"] for k in range(1, 6)], axis=0)
    std = np.mean([NORM[f"Fold_{k}"]["std"] for k in range(1, 6)], axis=0)
    np.testing.assert_allclose(ds.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(ds.std, std, rtol=1e-6)
    for i, pid in enumerate(ds.ids):
        fold, dates = TINY[pid]
        item = ds[i]
        assert set(item) == {"image", "dates", "mask", "patch_id"}
        assert item["patch_id"] == pid
        assert item["image"].dtype == torch.float32 and item["image"].shape == (len(dates), 10, H, W)
        assert item["dates"].dtype == torch.int64 and item["dates"].tolist() == offsets(dates)
        assert item["mask"].dtype == torch.int64 and item["mask"].shape == (H, W)
        np.testing.assert_array_equal(item["mask"].numpy(), tiny_labels(pid))
        expected = (tiny_raw(pid, len(dates)).astype(np.float64) - mean[None, :, None, None]) / std[None, :, None, None]
        np.testing.assert_allclose(item["image"].numpy(), expected, rtol=1e-5, atol=1e-4)
    assert ds[0]["dates"][0].item() == -7  # 2018-08-25 is before the reference date


def test_fold_selection_and_statistics(tiny: Path) -> None:
    ds = PastisDataset(tiny, folds=[2])
    assert ds.ids == [10007] and ds.folds == (2,)
    np.testing.assert_allclose(ds.mean, NORM["Fold_2"]["mean"])
    np.testing.assert_allclose(ds.std, NORM["Fold_2"]["std"])
    ds15 = PastisDataset(tiny, folds=(5, 1))
    assert ds15.ids == [20412, 10000]
    np.testing.assert_allclose(ds15.mean, (np.array(NORM["Fold_1"]["mean"]) + NORM["Fold_5"]["mean"]) / 2)


def test_norm_off_and_explicit_stats(tiny: Path) -> None:
    raw = PastisDataset(tiny, folds=[1], norm=False)[0]["image"].numpy()
    np.testing.assert_array_equal(raw, tiny_raw(10000, 4).astype(np.float32))
    mean, std = np.arange(10) * 3.0, np.arange(1, 11) * 0.5
    ds = PastisDataset(tiny, folds=[1], norm_stats=(mean, std))
    np.testing.assert_allclose(ds.mean, mean)
    np.testing.assert_allclose(ds.std, std)
    np.testing.assert_allclose(ds[0]["image"].numpy(), (raw - mean[:, None, None]) / std[:, None, None], rtol=1e-5)


def test_reference_date(tiny: Path) -> None:
    ds = PastisDataset(tiny, folds=[1], reference_date="2018-09-17")
    assert ds[0]["dates"].tolist() == offsets(TINY[10000][1], dt.date(2018, 9, 17))
    assert ds[0]["dates"][0].item() == 0


def test_mono_date_index(tiny: Path) -> None:
    full = PastisDataset(tiny)
    for md, t_index in ((0, lambda t: 0), (1, lambda t: 1), (-1, lambda t: t - 1)):
        ds = PastisDataset(tiny, mono_date=md)
        for i in range(len(ds)):
            item, ref = ds[i], full[i]
            k = t_index(ref["image"].shape[0])
            assert item["image"].shape == (1, 10, H, W)
            torch.testing.assert_close(item["image"][0], ref["image"][k])
            assert item["dates"].tolist() == [ref["dates"][k].item()]


def test_mono_date_string_takes_the_closest_date(tiny: Path) -> None:
    # 10000 has 2018-09-17, 2018-10-02, 2018-12-01, 2019-03-15
    ds = PastisDataset(tiny, folds=[1], mono_date="2018-11-05")  # 34 days after 10-02, 26 before 12-01
    assert ds[0]["dates"].tolist() == offsets([20181201])
    ds = PastisDataset(tiny, folds=[1], mono_date="2018-10-31")  # 29 days after 10-02, 31 before 12-01
    assert ds[0]["dates"].tolist() == offsets([20181002])
    ds = PastisDataset(tiny, folds=[1], mono_date="2018-09-25")  # 8 days after 09-17, 7 before 10-02
    assert ds[0]["dates"].tolist() == offsets([20181002])
    ds = PastisDataset(tiny, folds=[1], mono_date="2019-01-22")  # a tie: 52 days each way -> the earlier
    assert ds[0]["dates"].tolist() == offsets([20181201])
    ds = PastisDataset(tiny, folds=[1], mono_date="2030-01-01")
    assert ds[0]["dates"].tolist() == offsets([20190315])
    raw = tiny_raw(10000, 4)
    np.testing.assert_array_equal(PastisDataset(tiny, folds=[1], norm=False, mono_date="2019-03-01")[0]["image"][0].numpy(),
                                  raw[3].astype(np.float32))


def test_mono_date_errors(tiny: Path) -> None:
    with pytest.raises(ValueError, match=r"mono_date=2 is out of range for patch 10007, which has 2 dates"):
        PastisDataset(tiny, mono_date=2)
    with pytest.raises(ValueError, match="mono_date"):
        PastisDataset(tiny, mono_date="the first of May")
    with pytest.raises(ValueError, match="mono_date"):
        PastisDataset(tiny, mono_date=1.5)


def test_cache_keeps_items_in_memory(tiny: Path) -> None:
    ds = PastisDataset(tiny, folds=[1], cache=True)
    first = ds[0]
    (tiny / "DATA_S2" / "S2_10000.npy").unlink()
    again = ds[0]
    torch.testing.assert_close(again["image"], first["image"])
    assert again["patch_id"] == 10000
    uncached = PastisDataset(tiny, folds=[2])
    (tiny / "DATA_S2" / "S2_10007.npy").unlink()
    with pytest.raises(FileNotFoundError):
        uncached[0]


def test_memory_mapped_read_touches_only_the_selected_frame(tiny: Path, monkeypatch) -> None:
    seen = {}
    real_load = np.load

    def spy(path, *args, **kwargs):
        seen[Path(path).name] = kwargs.get("mmap_mode")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    PastisDataset(tiny, folds=[1])[0]
    assert seen == {"S2_10000.npy": "r", "TARGET_10000.npy": "r"}


def test_every_npy_read_refuses_pickles(tiny: Path, monkeypatch) -> None:
    """The loader and validate pass allow_pickle=False explicitly: a data file can never run code."""
    calls = []
    real_load = np.load

    def spy(path, *args, **kwargs):
        calls.append((Path(path).name, kwargs.get("allow_pickle")))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    PastisDataset(tiny, folds=[1])[0]
    assert validate(tiny) == []
    assert len(calls) == 2 + 2 * len(TINY) and all(allow is False for _, allow in calls), calls


def test_layout_names_are_shared_by_the_reader_and_the_generator() -> None:
    from utae.pastis import dataset, metadata, synthetic, validate as validate_mod

    readers = (metadata, validate_mod, dataset)
    for name in ("METADATA_FILE", "NORM_FILE", "DATA_DIR", "TARGET_DIR", "image_path", "target_path"):
        users = [m for m in readers if hasattr(m, name)]
        assert users or name in ("DATA_DIR", "TARGET_DIR"), f"no reader uses layout.{name}"
        assert all(getattr(m, name) is getattr(layout, name) for m in users), name
    assert synthetic.image_path is layout.image_path and synthetic.norm_key is layout.norm_key
    assert layout.image_path("R", 10000) == Path("R/DATA_S2/S2_10000.npy")
    assert layout.target_path("R", 7) == Path("R/ANNOTATIONS/TARGET_7.npy")
    assert layout.norm_key(3) == "Fold_3"


def test_whole_float_ids_and_folds_are_read_as_ints(tiny: Path) -> None:
    # GIS tools write an integer column that has a missing value as floats: 10000.0, 1.0.
    set_metadata(tiny, 10000, ID_PATCH=10000.0, Fold=1.0)
    ds = PastisDataset(tiny, folds=[1])
    assert ds.ids == [10000] and isinstance(ds.ids[0], int) and ds.records[0].fold == 1


def test_float_targets_with_whole_labels_are_read(tiny: Path) -> None:
    labels = tiny_labels(10007)
    np.save(tiny / "ANNOTATIONS" / "TARGET_10007.npy", np.stack([labels, labels, labels]).astype(np.float32))
    mask = PastisDataset(tiny, folds=[2])[0]["mask"]
    assert mask.dtype == torch.int64
    np.testing.assert_array_equal(mask.numpy(), labels)


def test_negative_index_and_out_of_range(tiny: Path) -> None:
    ds = PastisDataset(tiny)
    assert ds[-1]["patch_id"] == ds.ids[-1]
    with pytest.raises(IndexError):
        ds[3]


# ---------------------------------------------------------------------------------------------
# Round trip from the generator
# ---------------------------------------------------------------------------------------------


def test_round_trip_from_generator(synthetic_pastis) -> None:
    root = synthetic_pastis(n_patches=10, size=16, seed=3, t_range=(5, 9))
    meta = json.loads((root / "metadata.geojson").read_text())
    props = {f["properties"]["ID_PATCH"]: f["properties"] for f in meta["features"]}
    # statistics recomputed here the official way: per fold, mean of per-patch means and stds
    per_fold: dict[int, list] = {k: [] for k in range(1, 6)}
    for pid, p in props.items():
        raw = np.load(root / "DATA_S2" / f"S2_{pid}.npy").astype(np.float64)
        per_fold[p["Fold"]].append((raw.mean(axis=(0, 2, 3)), raw.std(axis=(0, 2, 3))))
    norm = json.loads((root / "NORM_S2_patch.json").read_text())
    for k in range(1, 6):
        np.testing.assert_allclose(norm[f"Fold_{k}"]["mean"], np.mean([m for m, _ in per_fold[k]], axis=0), rtol=1e-9)
        np.testing.assert_allclose(norm[f"Fold_{k}"]["std"], np.mean([s for _, s in per_fold[k]], axis=0), rtol=1e-9)

    ds = PastisDataset(root, folds=(1, 3))
    mean = (np.array(norm["Fold_1"]["mean"]) + norm["Fold_3"]["mean"]) / 2
    std = (np.array(norm["Fold_1"]["std"]) + norm["Fold_3"]["std"]) / 2
    assert sorted(ds.ids) == sorted(pid for pid, p in props.items() if p["Fold"] in (1, 3))
    assert len(ds) == 4
    for i in range(len(ds)):
        item = ds[i]
        p = props[item["patch_id"]]
        dates = [p["dates-S2"][str(j)] for j in range(len(p["dates-S2"]))]
        assert 5 <= len(dates) <= 9
        assert item["image"].shape == (len(dates), 10, 16, 16) and item["image"].dtype == torch.float32
        assert item["dates"].tolist() == offsets(dates)
        raw = np.load(root / "DATA_S2" / f"S2_{item['patch_id']}.npy")
        assert raw.dtype == np.int16
        expected = (raw - mean[None, :, None, None]) / std[None, :, None, None]
        np.testing.assert_allclose(item["image"].numpy(), expected, rtol=1e-5, atol=1e-5)
        tgt = np.load(root / "ANNOTATIONS" / f"TARGET_{item['patch_id']}.npy")
        assert tgt.dtype == np.uint8 and tgt.shape == (3, 16, 16)
        np.testing.assert_array_equal(item["mask"].numpy(), tgt[0].astype(np.int64))


# ---------------------------------------------------------------------------------------------
# pad_collate and folds
# ---------------------------------------------------------------------------------------------


def test_pad_collate(tiny: Path) -> None:
    ds = PastisDataset(tiny)
    items = [ds[i] for i in range(len(ds))]  # T = 3, 4, 2
    batch = pad_collate(items, pad_value=-7.5)
    assert set(batch) == {"image", "dates", "pad_mask", "mask", "patch_id"}
    assert batch["image"].shape == (3, 4, 10, H, W) and batch["image"].dtype == torch.float32
    assert batch["dates"].shape == (3, 4) and batch["dates"].dtype == torch.int64
    assert batch["pad_mask"].dtype == torch.bool
    assert batch["pad_mask"].tolist() == [[False] * 3 + [True], [False] * 4, [False] * 2 + [True] * 2]
    assert batch["patch_id"].tolist() == ds.ids and batch["patch_id"].dtype == torch.int64
    assert batch["mask"].shape == (3, H, W)
    for b, item in enumerate(items):
        t = item["image"].shape[0]
        torch.testing.assert_close(batch["image"][b, :t], item["image"])
        assert torch.all(batch["image"][b, t:] == -7.5)
        assert batch["dates"][b, :t].tolist() == item["dates"].tolist()
        assert torch.all(batch["dates"][b, t:] == 0)
        torch.testing.assert_close(batch["mask"][b], item["mask"])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_pad_collate_keeps_the_image_dtype(dtype: torch.dtype) -> None:
    items = [{"image": torch.arange(t * 10 * 2 * 2, dtype=torch.float32).reshape(t, 10, 2, 2).to(dtype),
              "dates": torch.arange(t) * 5, "mask": torch.zeros(2, 2, dtype=torch.int64), "patch_id": t}
             for t in (1, 3)]
    batch = pad_collate(items, pad_value=2.5)
    assert batch["image"].dtype == dtype and batch["image"].shape == (2, 3, 10, 2, 2)
    torch.testing.assert_close(batch["image"][1], items[1]["image"])
    torch.testing.assert_close(batch["image"][0, :1], items[0]["image"])
    assert torch.all(batch["image"][0, 1:] == 2.5)
    assert batch["dates"].tolist() == [[0, 0, 0], [0, 5, 10]]


def test_pad_collate_with_a_dataloader(tiny: Path) -> None:
    loader = torch.utils.data.DataLoader(PastisDataset(tiny), batch_size=2, collate_fn=pad_collate)
    shapes = [tuple(b["image"].shape) for b in loader]
    assert shapes == [(2, 4, 10, H, W), (1, 2, 10, H, W)]


def test_pad_collate_rejects_bad_batches() -> None:
    with pytest.raises(ValueError, match="empty"):
        pad_collate([])
    a = {"image": torch.zeros(2, 10, 4, 4), "dates": torch.arange(2), "mask": torch.zeros(4, 4), "patch_id": 1}
    b = {"image": torch.zeros(3, 10, 5, 5), "dates": torch.arange(3), "mask": torch.zeros(5, 5), "patch_id": 2}
    with pytest.raises(ValueError, match=r"item 1 'image' has shape \(3, 10, 5, 5\)"):
        pad_collate([a, b])
    c = dict(a, dates=torch.arange(5))
    with pytest.raises(ValueError, match="'dates'"):
        pad_collate([c])


def test_fold_rotations() -> None:
    assert len(FOLD_ROTATIONS) == 5
    for k, (train, val, test) in enumerate(FOLD_ROTATIONS):
        assert sorted(train + val + test) == [1, 2, 3, 4, 5]
        assert test == ((k + 4) % 5 + 1,)
    assert [r[2] for r in FOLD_ROTATIONS] == [(5,), (1,), (2,), (3,), (4,)]


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def _rewrite_image(root: Path, pid: int, arr: np.ndarray) -> None:
    np.save(root / "DATA_S2" / f"S2_{pid}.npy", arr)


def _rewrite_labels(root: Path, pid: int, value: int) -> None:
    tgt = np.load(root / "ANNOTATIONS" / f"TARGET_{pid}.npy")
    tgt[0, 1, 2] = value
    np.save(root / "ANNOTATIONS" / f"TARGET_{pid}.npy", tgt)


def _edit_features(root: Path, edit) -> None:
    path = root / "metadata.geojson"
    doc = json.loads(path.read_text())
    edit(doc["features"])
    path.write_text(json.dumps(doc))


def _damage(folder: str, name: str, how: str):
    """A mutation that replaces ``root/folder/name.npy`` with a broken file: ``empty`` (0 bytes), ``half``
    (the first half of its bytes, as an interrupted download leaves it), ``pickle`` (a pickled object),
    ``object`` (a .npy object array), ``npz`` (a .npz archive) or ``text``."""
    def mutate(root: Path) -> None:
        path = root / folder / f"{name}.npy"
        good = path.read_bytes()
        if how == "empty":
            path.write_bytes(b"")
        elif how == "half":
            path.write_bytes(good[: len(good) // 2])
        elif how == "pickle":
            path.write_bytes(pickle.dumps({"not": "an array"}))
        elif how == "object":
            np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        elif how == "npz":
            with open(path, "wb") as fh:
                np.savez(fh, x=np.zeros(3))
        else:
            path.write_text("B2,B3,B4\n1,2,3\n")
    return mutate


def _float_with(value: float):
    def mutate(root: Path) -> None:
        arr = tiny_raw(10007, 2).astype(np.float32)
        arr[1, 3, 0, 0] = value
        _rewrite_image(root, 10007, arr)
    return mutate


# Errors raised when the dataset is opened: (mutation, exception, pattern that the message matches).
OPEN_ERRORS = {
    "missing metadata": (lambda r: (r / "metadata.geojson").unlink(), FileNotFoundError, r"metadata\.geojson"),
    "missing norm": (lambda r: (r / "NORM_S2_patch.json").unlink(), FileNotFoundError, r"NORM_S2_patch\.json"),
    "missing image": (lambda r: (r / "DATA_S2" / "S2_10007.npy").unlink(), FileNotFoundError,
                      r"patch 10007 .*S2_10007\.npy is missing"),
    "missing target": (lambda r: (r / "ANNOTATIONS" / "TARGET_10000.npy").unlink(), FileNotFoundError,
                       r"patch 10000 .*TARGET_10000\.npy is missing"),
    "fold outside 1-5": (lambda r: set_metadata(r, 10007, Fold=6), PastisFormatError,
                         r"patch 10007: 'Fold' must be an integer from 1 to 5, got 6"),
    "bad dates string": (lambda r: set_metadata(r, 10000, **{"dates-S2": "{0: 2018"}), PastisFormatError,
                         r"patch 10000: 'dates-S2' is a string that is not valid JSON"),
    "bad date value": (lambda r: set_metadata(r, 10000, **{"dates-S2": {"0": 20181345}}), PastisFormatError,
                       r"patch 10000: 'dates-S2'\[0\]: expected a date"),
    "missing dates": (lambda r: set_metadata(r, 10000, **{"dates-S2": {}}), PastisFormatError,
                      r"patch 10000: 'dates-S2' is empty"),
    "metadata not json": (lambda r: (r / "metadata.geojson").write_text("{not json"), PastisFormatError,
                          r"metadata\.geojson: not valid JSON"),
    "norm with 9 bands": (lambda r: (r / "NORM_S2_patch.json").write_text(json.dumps(
        dict(NORM, Fold_2={"mean": [0.0] * 9, "std": [1.0] * 9}))), PastisFormatError,
        r"NORM_S2_patch\.json: 'Fold_2\.mean' must hold 10 values"),
    "norm with zero std": (lambda r: (r / "NORM_S2_patch.json").write_text(json.dumps(
        dict(NORM, Fold_1={"mean": [0.0] * 10, "std": [0.0] * 10}))), PastisFormatError,
        r"'Fold_1\.std' must be > 0"),
    "norm without a fold": (lambda r: (r / "NORM_S2_patch.json").write_text(json.dumps(
        {k: v for k, v in NORM.items() if k != "Fold_3"})), PastisFormatError,
        r"NORM_S2_patch\.json: missing 'Fold_3' with 'mean' and 'std' lists of 10 floats"),
    "norm not an object": (lambda r: (r / "NORM_S2_patch.json").write_text("[1, 2]"), PastisFormatError,
                           r"NORM_S2_patch\.json: expected an object \{\"Fold_1\""),
    "empty norm": (lambda r: (r / "NORM_S2_patch.json").write_bytes(b""), PastisFormatError,
                   r"NORM_S2_patch\.json: not valid JSON \(the file is empty\)"),
    "empty metadata": (lambda r: (r / "metadata.geojson").write_bytes(b""), PastisFormatError,
                       r"metadata\.geojson: not valid JSON \(the file is empty\)"),
    "truncated metadata": (lambda r: (r / "metadata.geojson").write_bytes((r / "metadata.geojson").read_bytes()[:100]),
                           PastisFormatError, r"metadata\.geojson: not valid JSON .*expected the PASTIS metadata"),
    "metadata not UTF-8": (lambda r: (r / "metadata.geojson").write_bytes(b'{"type": "\xff\xfe"}'),
                           PastisFormatError, r"metadata\.geojson: not UTF-8 text"),
    "metadata not a FeatureCollection": (lambda r: (r / "metadata.geojson").write_text("[]"), PastisFormatError,
                                         r"metadata\.geojson: expected a GeoJSON FeatureCollection with a 'features'"),
    "feature without properties": (lambda r: _edit_features(r, lambda fs: fs.append({"type": "Feature"})),
                                   PastisFormatError, r"metadata\.geojson: feature 3: expected a 'properties' object"),
    "ID_PATCH not an integer": (lambda r: set_metadata(r, 10007, ID_PATCH="10007a"), PastisFormatError,
                                r"feature 2: 'ID_PATCH' must be an integer, got '10007a'"),
    "duplicate ID_PATCH": (lambda r: set_metadata(r, 10007, ID_PATCH=10000), PastisFormatError,
                           r"patch 10000: 'ID_PATCH' 10000 is listed twice"),
}

# Errors raised when the item of patch 10007 (fold 2) is read.
ITEM_ERRORS = {
    "T differs from dates": (lambda r: _rewrite_image(r, 10007, tiny_raw(10007, 5)), PastisFormatError,
                             r"S2_10007\.npy: holds T=5 dates but metadata\.geojson lists 2"),
    "9 bands": (lambda r: _rewrite_image(r, 10007, tiny_raw(10007, 2)[:, :9]), PastisFormatError,
                r"S2_10007\.npy: expected shape \(T, 10, H, W\).*got \(2, 9, 4, 4\)"),
    "3-d image": (lambda r: _rewrite_image(r, 10007, tiny_raw(10007, 2)[0]), PastisFormatError,
                  r"S2_10007\.npy: expected shape \(T, 10, H, W\)"),
    "NaN": (_float_with(np.nan), PastisFormatError, r"S2_10007\.npy: holds NaN or inf"),
    "inf": (_float_with(np.inf), PastisFormatError, r"S2_10007\.npy: holds NaN or inf"),
    "label 20": (lambda r: _rewrite_labels(r, 10007, 20), PastisFormatError,
                 r"TARGET_10007\.npy: semantic labels .* from 0 to 19, found values in \[\d+, 20\]"),
    "label 255": (lambda r: _rewrite_labels(r, 10007, 255), PastisFormatError, r"TARGET_10007\.npy: .*255"),
    "fractional label": (lambda r: np.save(r / "ANNOTATIONS" / "TARGET_10007.npy",
                                           np.full((3, H, W), 2.5, np.float32)), PastisFormatError,
                         r"TARGET_10007\.npy: semantic labels .* integers from 0 to 19"),
    "NaN label": (lambda r: np.save(r / "ANNOTATIONS" / "TARGET_10007.npy", np.full((3, H, W), np.nan)),
                  PastisFormatError, r"TARGET_10007\.npy: semantic labels"),
    "target size": (lambda r: np.save(r / "ANNOTATIONS" / "TARGET_10007.npy", np.zeros((3, 5, 4), np.uint8)),
                    PastisFormatError, r"TARGET_10007\.npy: spatial shape \(5, 4\) differs"),
    "label -1": (lambda r: np.save(r / "ANNOTATIONS" / "TARGET_10007.npy",
                                   np.stack([tiny_labels(10007).astype(np.int16) - 1] * 3)), PastisFormatError,
                 r"TARGET_10007\.npy: semantic labels .* from 0 to 19, found values in \[-1, \d+\]"),
    "bool labels": (lambda r: np.save(r / "ANNOTATIONS" / "TARGET_10007.npy", np.ones((3, H, W), bool)),
                    PastisFormatError, r"TARGET_10007\.npy: expected integer class labels, got dtype bool"),
    "complex image": (lambda r: _rewrite_image(r, 10007, tiny_raw(10007, 2).astype(np.complex64)), PastisFormatError,
                      r"S2_10007\.npy: expected integer or float reflectance \(int16 in PASTIS\), got dtype complex64"),
    **{f"{what} {kind}": (_damage(folder, name, how), PastisFormatError,
                          rf"{folder}/{name}\.npy is (truncated or not a \.npy file|a \.npz archive).*"
                          rf": expected {expected}.*"
                          r"re-download it, or run utae\.pastis\.validate\.validate\(root\)")
       for kind, folder, name, expected in (
           ("image", "DATA_S2", "S2_10007", r"a \.npy array of shape \(T=2, 10, H, W\) holding integer or float"),
           ("target", "ANNOTATIONS", "TARGET_10007", r"a \.npy array of shape \(3, H, W\) with integer class labels"))
       for what, how in (("empty", "empty"), ("half of the", "half"), ("pickled", "pickle"), ("object-array", "object"),
                         ("npz as", "npz"), ("text as", "text"))},
}


@pytest.mark.parametrize("case", list(OPEN_ERRORS))
def test_bad_input_at_open_time(tiny: Path, case: str) -> None:
    mutate, exc, pattern = OPEN_ERRORS[case]
    mutate(tiny)
    with pytest.raises(exc, match=pattern):
        PastisDataset(tiny)


# Item errors that the headers show: caught when the dataset is opened (before training), with these messages.
_DAMAGED = r"DATA_S2/S2_10007\.npy (is empty|is truncated|is not a \.npy array|is a \.npz|declares dtype object)"
_RE_DOWNLOAD = r".*; re-download it, or run utae\.pastis\.validate\.validate\(root\)"
_IMAGE_EXPECTED = r"expected a \.npy array of shape \(T=2, 10, H, W\) holding integer or float"
_TARGET_EXPECTED = r"expected a \.npy array of shape \(3, H, W\) with integer class labels"
HEADER_ERRORS = {
    "T differs from dates": r"S2_10007\.npy: holds T=5 dates but metadata\.geojson lists 2 dates-S2 entries for patch "
                            r"10007; they must be equal$",
    "9 bands": r"S2_10007\.npy: expected shape \(T, 10, H, W\).*got \(2, 9, 4, 4\)$",
    "3-d image": r"S2_10007\.npy: expected shape \(T, 10, H, W\)",
    "target size": r"TARGET_10007\.npy: spatial shape \(5, 4\) differs from the image's \(4, 4\)",
    "bool labels": r"TARGET_10007\.npy: expected integer class labels, got dtype bool$",
    "complex image": r"S2_10007\.npy: expected integer or float reflectance \(int16 in PASTIS\), got dtype complex64$",
    "empty image": rf"DATA_S2/S2_10007\.npy is empty \(0 bytes\); {_IMAGE_EXPECTED}{_RE_DOWNLOAD}",
    "half of the image": rf"DATA_S2/S2_10007\.npy is truncated: its header declares 640 B \(shape \(2, 10, 4, 4\) "
                         rf"int16\) of data, the file holds \d+ B{_RE_DOWNLOAD}",
    "pickled image": rf"DATA_S2/S2_10007\.npy is not a \.npy array \(it starts with b'\\x80.*; {_IMAGE_EXPECTED}",
    "object-array image": rf"DATA_S2/S2_10007\.npy declares dtype object .*refused; {_IMAGE_EXPECTED}",
    "npz as image": rf"DATA_S2/S2_10007\.npy is a \.npz \(zip\) archive; {_IMAGE_EXPECTED}",
    "text as image": rf"DATA_S2/S2_10007\.npy is not a \.npy array .*; {_IMAGE_EXPECTED}",
    **{f"{what} target": rf"ANNOTATIONS/TARGET_10007\.npy (is|declares) .*{_TARGET_EXPECTED}{_RE_DOWNLOAD}"
       for what in ("empty", "pickled", "object-array", "npz as", "text as")},
    # 128 bytes of header + 48 of data: half of it cuts the header
    "half of the target": rf"ANNOTATIONS/TARGET_10007\.npy has an unreadable \.npy header .*; {_TARGET_EXPECTED}"
                          rf"{_RE_DOWNLOAD}",
}


@pytest.mark.parametrize("case", list(ITEM_ERRORS))
def test_bad_input_at_item_time(tiny: Path, case: str) -> None:
    mutate, exc, pattern = ITEM_ERRORS[case]
    if case in HEADER_ERRORS:
        ds = PastisDataset(tiny)  # a file that breaks after the dataset was opened is still caught when read
        mutate(tiny)
    else:
        mutate(tiny)
        ds = PastisDataset(tiny)  # opening stays cheap: values are checked on read
    ds[ds.ids.index(10000)]  # other patches are fine
    with pytest.raises(exc, match=pattern):
        ds[ds.ids.index(10007)]


@pytest.mark.parametrize("case", list(HEADER_ERRORS))
def test_bad_headers_are_refused_when_the_dataset_is_opened(tiny: Path, case: str) -> None:
    # Before: a patch whose file disagrees with its metadata failed only when first loaded, mid-training.
    mutate = ITEM_ERRORS[case][0]
    mutate(tiny)
    with pytest.raises(PastisFormatError, match=HEADER_ERRORS[case]) as info:
        PastisDataset(tiny)
    assert "\n" not in str(info.value)  # one line: one problem
    # only the selected patches are checked: fold 2 holds patch 10007, folds 1 and 5 the others
    ds = PastisDataset(tiny, folds=[1, 5])
    assert sorted(ds.ids) == [10000, 20412] and all(ds[i]["image"].shape[1] == 10 for i in range(len(ds)))


def test_a_patch_with_an_extra_date_is_refused_at_open_time_on_a_generated_set(tmp_path: Path, synthetic_pastis) -> None:
    root = synthetic_pastis(copy_to=tmp_path / "synth", n_patches=12, size=16, seed=3, t_range=(4, 6))
    victim = read_metadata(root)[7]
    image = np.load(layout.image_path(root, victim.patch_id))
    np.save(layout.image_path(root, victim.patch_id), np.concatenate([image, image[-1:]]))  # one more date
    with pytest.raises(PastisFormatError) as info:
        PastisDataset(root, folds=[victim.fold])
    assert str(info.value) == (
        f"{layout.image_path(root, victim.patch_id)}: holds T={len(victim.dates) + 1} dates but metadata.geojson lists "
        f"{len(victim.dates)} dates-S2 entries for patch {victim.patch_id}; they must be equal")
    others = [f for f in (1, 2, 3, 4, 5) if f != victim.fold]
    assert len(PastisDataset(root, folds=others)) == 12 - sum(r.fold == victim.fold for r in read_metadata(root))


def test_patches_must_be_square_and_of_one_size(tiny: Path) -> None:
    _rewrite_image(tiny, 10007, np.zeros((2, 10, 4, 6), np.int16))
    np.save(tiny / "ANNOTATIONS" / "TARGET_10007.npy", np.zeros((3, 4, 6), np.uint8))
    square = r"S2_10007\.npy: expected a square patch \(H = W, 128 x 128 in PASTIS\), got H x W = 4 x 6$"
    with pytest.raises(PastisFormatError, match=square):
        PastisDataset(tiny)
    assert len(validate(tiny)) == 1 and re.search(square, validate(tiny)[0])  # the same rule
    _rewrite_image(tiny, 10007, np.zeros((2, 10, 6, 6), np.int16))
    np.save(tiny / "ANNOTATIONS" / "TARGET_10007.npy", np.zeros((3, 6, 6), np.uint8))
    with pytest.raises(PastisFormatError, match=r"S2_10007\.npy: expected every patch of the size of S2_\d+\.npy, "
                                                r"4 x 4 \(batches stack them\), got 6 x 6$"):
        PastisDataset(tiny)
    assert len(PastisDataset(tiny, folds=[2])) == 1  # alone, a 6 x 6 patch is fine
    assert [re.sub(r"S2_\d+", "S2_X", p).split("/")[-1] for p in validate(tiny)] == [
        "S2_X.npy: expected every patch of the size of S2_X.npy, 4 x 4 (batches stack them), got 6 x 6"]


def test_every_bad_header_is_reported_at_once(tiny: Path) -> None:
    _rewrite_image(tiny, 10007, tiny_raw(10007, 3))
    _rewrite_image(tiny, 10000, tiny_raw(10000, 4)[:, :9])
    with pytest.raises(PastisFormatError, match=r"(?s)2 problems.*S2_10000\.npy: expected shape .*got \(4, 9, 4, 4\)"
                                                r".*S2_10007\.npy: holds T=3 dates"):
        PastisDataset(tiny)


def test_bad_arguments(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="PASTIS root not found: .*nowhere"):
        PastisDataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="folds must be ints from 1 to 5"):
        PastisDataset(tiny, folds=[0, 1])
    with pytest.raises(ValueError, match="folds must be ints from 1 to 5"):
        PastisDataset(tiny, folds=[6])
    with pytest.raises(ValueError, match=r"no patch in folds \[3, 4\].*selection is empty"):
        PastisDataset(tiny, folds=[3, 4])
    with pytest.raises(ValueError, match="target must be 'semantic'"):
        PastisDataset(tiny, target="instance")
    with pytest.raises(ValueError, match="norm_stats: mean and std must each hold 10 values"):
        PastisDataset(tiny, norm_stats=([0.0] * 9, [1.0] * 9))
    with pytest.raises(ValueError, match="norm_stats"):
        PastisDataset(tiny, norm_stats=([0.0] * 10, [0.0] * 10))
    with pytest.raises(ValueError, match="reference_date"):
        PastisDataset(tiny, reference_date="1st of September")


def test_metadata_errors_are_all_reported_at_once(tiny: Path) -> None:
    set_metadata(tiny, 10007, Fold=0)
    set_metadata(tiny, 10000, **{"dates-S2": "nope"})
    with pytest.raises(PastisFormatError, match=r"(?s)2 problems.*patch 10000.*patch 10007"):
        PastisDataset(tiny)


# ---------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------


def test_validate_clean_folder(tiny: Path) -> None:
    assert validate(tiny) == []


def test_validate_reports_every_problem(tiny: Path, tmp_path: Path) -> None:
    _rewrite_image(tiny, 10007, tiny_raw(10007, 3))  # T mismatch
    arr = tiny_raw(20412, 3).astype(np.float32)
    arr[0, 0, 0, 0] = np.inf
    _rewrite_image(tiny, 20412, arr[:, :8])  # 8 bands and an inf
    _rewrite_labels(tiny, 10000, 42)  # label out of range
    doc = json.loads((tiny / "metadata.geojson").read_text())
    doc["features"].append({"type": "Feature", "geometry": None,
                            "properties": {"ID_PATCH": 30001, "Fold": 9, "dates-S2": {"0": 20190101}}})
    doc["features"].append({"type": "Feature", "geometry": None,
                            "properties": {"ID_PATCH": 30002, "Fold": 3, "dates-S2": {"0": 20190101}}})
    (tiny / "metadata.geojson").write_text(json.dumps(doc))
    problems = validate(tiny)
    text = "\n".join(problems)
    expected = [
        r"S2_10007\.npy: holds T=3 dates but metadata\.geojson lists 2",
        r"S2_20412\.npy: expected 10 bands in axis 1, got 8",
        r"S2_20412\.npy: holds NaN or inf",
        r"TARGET_10000\.npy: semantic labels .*42",
        r"patch 30001: 'Fold' must be an integer from 1 to 5, got 9",
        r"patch 30002 .*S2_30002\.npy is missing",
        r"patch 30002 .*TARGET_30002\.npy is missing",
    ]
    for pattern in expected:
        assert any(re.search(pattern, p) for p in problems), f"{pattern!r} not in:\n{text}"
    assert len(problems) == len(expected)


def test_validate_reports_truncated_and_foreign_files(tiny: Path) -> None:
    _damage("DATA_S2", "S2_10007", "half")(tiny)
    _damage("ANNOTATIONS", "TARGET_20412", "empty")(tiny)
    _damage("ANNOTATIONS", "TARGET_10000", "pickle")(tiny)
    problems = validate(tiny)
    assert len(problems) == 3, problems
    for name, cause in (("S2_10007", "mmap length is greater than file size"), ("TARGET_20412", "EOFError"),
                        ("TARGET_10000", "pickled")):
        assert any(re.search(rf"{name}\.npy is truncated or not a \.npy file .*{cause}", p) for p in problems), name


def test_validate_missing_files(tmp_path: Path, tiny: Path) -> None:
    assert validate(tmp_path / "absent") == [f"PASTIS root not found: {tmp_path / 'absent'} is not a directory"]
    (tiny / "metadata.geojson").unlink()
    (tiny / "NORM_S2_patch.json").unlink()
    problems = validate(tiny)
    assert len(problems) == 2
    assert "metadata.geojson" in problems[0] and "NORM_S2_patch.json" in problems[1]
