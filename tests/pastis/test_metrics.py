"""Tests of utae.pastis.metrics against hand-computed confusion matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from utae.pastis.metrics import SCORE_KEYS, confusion_matrix, scores

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# 6 classes: 0..3 real classes, 4 absent everywhere, 5 = void.
# Pairs (true, pred): (0,0)x3 (0,1) (1,1)x2 (1,3) (2,2) (2,0) (5,0) (5,1) and (0,5): a pixel predicted void.
TARGET = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 5, 5, 0])
PRED = np.array([0, 0, 0, 1, 1, 1, 3, 2, 0, 0, 1, 5])
EXPECTED_CM = np.array(
    [
        [3, 1, 0, 0, 0, 1],
        [0, 2, 0, 1, 0, 0],
        [1, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
    ]
)


def test_confusion_matrix_numpy_hand_computed() -> None:
    cm = confusion_matrix(PRED, TARGET, n_classes=6)
    assert isinstance(cm, np.ndarray)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, EXPECTED_CM)


@pytest.mark.parametrize("device", DEVICES)
def test_confusion_matrix_torch_matches_numpy_and_stays_on_device(device: str) -> None:
    cm = confusion_matrix(torch.from_numpy(PRED).to(device), torch.from_numpy(TARGET).to(device), n_classes=6)
    assert isinstance(cm, torch.Tensor)
    assert cm.device.type == device
    assert cm.dtype == torch.int64
    np.testing.assert_array_equal(cm.cpu().numpy(), EXPECTED_CM)


@pytest.mark.parametrize("device", DEVICES)
def test_numpy_and_torch_agree_on_random_batches(device: str) -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 20, size=(3, 16, 16))
    pred = np.where(rng.random((3, 16, 16)) < 0.6, target, rng.integers(0, 20, size=(3, 16, 16)))
    cm_np = confusion_matrix(pred, target)
    cm_t = confusion_matrix(torch.from_numpy(pred).to(device), torch.from_numpy(target).to(device))
    assert cm_np.shape == (20, 20)
    assert cm_np.sum() == target.size
    np.testing.assert_array_equal(cm_np, cm_t.cpu().numpy())
    s_np, s_t = scores(cm_np), scores(cm_t)
    for key in SCORE_KEYS:
        np.testing.assert_allclose(s_np[key], s_t[key], equal_nan=True)


def test_confusion_matrix_accepts_uint8_and_int32() -> None:
    cm = confusion_matrix(PRED.astype(np.uint8), TARGET.astype(np.int32), n_classes=6)
    np.testing.assert_array_equal(cm, EXPECTED_CM)
    cm_t = confusion_matrix(torch.from_numpy(PRED).to(torch.uint8), torch.from_numpy(TARGET).int(), n_classes=6)
    np.testing.assert_array_equal(cm_t.numpy(), EXPECTED_CM)


def test_empty_input_gives_zero_matrix() -> None:
    cm = confusion_matrix(np.zeros((0, 4), dtype=np.int64), np.zeros((0, 4), dtype=np.int64), n_classes=3)
    np.testing.assert_array_equal(cm, np.zeros((3, 3)))
    cm_t = confusion_matrix(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), n_classes=3)
    assert cm_t.shape == (3, 3) and int(cm_t.sum()) == 0


def test_scores_hand_computed_with_void_absent_classes_and_void_predictions() -> None:
    s = scores(EXPECTED_CM, ignore_index=5)
    assert set(s) == set(SCORE_KEYS)
    # Void row and column dropped: 9 pixels left, 6 correct. The (0 -> void) pixel does not count.
    assert s["oa"] == pytest.approx(6 / 9)
    iou = s["iou"]
    assert len(iou) == 6
    assert iou[0] == pytest.approx(3 / 5)
    assert iou[1] == pytest.approx(2 / 4)
    assert iou[2] == pytest.approx(1 / 2)
    assert iou[3] == 0.0  # absent from the target but predicted once
    assert math.isnan(iou[4])  # absent from target and prediction
    assert math.isnan(iou[5])  # the ignored class
    assert s["miou"] == pytest.approx((0.6 + 0.5 + 0.5 + 0.0) / 4)
    # precision: 3/4, 2/3, 1/1, 0/1 (class 4 undefined)
    assert s["macro_precision"] == pytest.approx((3 / 4 + 2 / 3 + 1 + 0) / 4)
    # recall: 3/4, 2/3, 1/2; class 3 and 4 undefined (absent from the target)
    assert s["macro_recall"] == pytest.approx((3 / 4 + 2 / 3 + 1 / 2) / 3)
    # F1 = 2TP / (2TP + FP + FN): 6/8, 4/6, 2/3, 0/1
    assert s["macro_f1"] == pytest.approx((6 / 8 + 4 / 6 + 2 / 3 + 0) / 4)
    for key in ("micro_precision", "micro_recall", "micro_f1"):
        assert s[key] == pytest.approx(s["oa"])


def test_void_pixels_never_change_scores() -> None:
    base = scores(EXPECTED_CM, ignore_index=5)
    more_void = EXPECTED_CM.copy()
    more_void[5, :] += 7  # more void pixels predicted as anything
    more_void[:, 5] += 3  # more pixels predicted as void
    other = scores(more_void, ignore_index=5)
    for key in SCORE_KEYS:
        np.testing.assert_allclose(base[key], other[key], equal_nan=True)


def test_scores_default_ignores_class_19() -> None:
    cm = np.zeros((20, 20), dtype=np.int64)
    cm[0, 0] = 5
    cm[1, 1] = 5
    cm[19, 0] = 100  # void pixels predicted as class 0 would otherwise ruin class 0
    s = scores(cm)
    assert s["oa"] == 1.0
    assert s["miou"] == 1.0
    assert math.isnan(s["iou"][19])
    assert sum(not math.isnan(v) for v in s["iou"]) == 2


def test_scores_ignore_index_none_keeps_every_class() -> None:
    cm = np.array([[3, 1], [2, 4]])
    s = scores(cm, ignore_index=None)
    assert s["oa"] == pytest.approx(7 / 10)
    assert s["iou"] == pytest.approx([3 / 6, 4 / 7])
    assert s["macro_precision"] == pytest.approx((3 / 5 + 4 / 5) / 2)
    assert s["macro_recall"] == pytest.approx((3 / 4 + 4 / 6) / 2)


def test_perfect_prediction_scores_one_and_all_fractions_in_unit_interval() -> None:
    rng = np.random.default_rng(1)
    target = rng.integers(0, 20, size=(2, 8, 8))
    s = scores(confusion_matrix(target, target))
    for key in SCORE_KEYS:
        if key != "iou":
            assert s[key] == pytest.approx(1.0)
    wrong = scores(confusion_matrix((target + 1) % 20, target))
    for key in SCORE_KEYS:
        values = wrong[key] if key == "iou" else [wrong[key]]
        assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in values)
    assert wrong["oa"] == 0.0


def test_empty_matrix_scores_are_nan_not_errors() -> None:
    s = scores(np.zeros((20, 20), dtype=np.int64))
    assert math.isnan(s["oa"]) and math.isnan(s["miou"])
    assert all(math.isnan(v) for v in s["iou"])


def test_scores_accepts_a_tensor() -> None:
    s_t = scores(torch.from_numpy(EXPECTED_CM), ignore_index=5)
    assert s_t["miou"] == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("pred", "target", "error", "match"),
    [
        (np.zeros((2, 3), int), np.zeros((3, 2), int), ValueError, "same shape"),
        (np.zeros(4, int), np.array([0, 1, 2, 20]), ValueError, "target labels must lie in"),
        (np.array([0, -1, 2, 3]), np.zeros(4, int), ValueError, "pred labels must lie in"),
        (np.zeros(4, np.float32), np.zeros(4, int), TypeError, "pred must hold integer"),
        (torch.zeros(4, dtype=torch.long), np.zeros(4, int), TypeError, "both be torch tensors"),
        (torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 2, 25]), ValueError, "target labels"),
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), TypeError, "logits"),
    ],
)
def test_confusion_matrix_bad_input(pred, target, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        confusion_matrix(pred, target)


def test_confusion_matrix_bad_n_classes() -> None:
    with pytest.raises(ValueError, match="n_classes"):
        confusion_matrix(np.zeros(3, int), np.zeros(3, int), n_classes=0)


@pytest.mark.parametrize(
    ("cm", "kwargs", "match"),
    [
        (np.zeros((3, 4)), {}, "square"),
        (np.zeros(5), {}, "square"),
        (-np.ones((3, 3)), {"ignore_index": None}, "non-negative"),
        (np.ones((3, 3)), {"ignore_index": 3}, "ignore_index"),
        (np.ones((20, 20)), {"ignore_index": -1}, "ignore_index"),
    ],
)
def test_scores_bad_input(cm, kwargs, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        scores(cm, **kwargs)
