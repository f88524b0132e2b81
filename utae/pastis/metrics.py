"""Segmentation metrics: confusion matrix, OA, mIoU, per-class IoU, precision / recall / F1.

Conventions
-----------
* The confusion matrix ``cm`` has shape ``(n_classes, n_classes)``; ``cm[i, j]`` counts the pixels
  whose true class is ``i`` and whose predicted class is ``j`` (rows = true, columns = predicted).
* The void class (PASTIS label 19) is ignored in every metric, as in the official evaluation: its
  row *and* its column are dropped from the matrix before anything is computed. Pixels labelled void
  therefore never count, and neither do predictions of void on the remaining pixels.
* IoU of class ``c`` is ``TP / (TP + FP + FN)``; it is NaN when ``TP + FP + FN == 0`` (the class is
  absent from both the target and the prediction). A class absent from the target but predicted
  somewhere gets IoU 0. mIoU is the NaN-mean of the defined IoUs (the official ``nanmean``).
* Per-class precision ``TP / (TP + FP)`` is undefined (NaN) for a class that is never predicted, per-class
  recall ``TP / (TP + FN)`` is undefined for a class absent from the target, per-class F1
  ``2 TP / (2 TP + FP + FN)`` is undefined where the IoU is. The ``macro_*`` scores are the NaN-mean of
  the per-class values over the classes where they are defined (no "zero-division" value is invented).
  Note that a class present in the target but never predicted has undefined precision, recall 0 and F1 0,
  so it pulls down the macro recall and F1 but not the macro precision.
* For single-label segmentation with the void row and column dropped, the ``micro_*`` precision, recall
  and F1 all equal the overall accuracy (``sum TP / total``): every wrong pixel is one FP and one FN.
  They are reported under their own names anyway, for tables that expect them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["confusion_matrix", "scores", "SCORE_KEYS"]

#: Keys of the dict returned by :func:`scores`.
SCORE_KEYS: tuple[str, ...] = (
    "oa",
    "miou",
    "iou",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "micro_precision",
    "micro_recall",
    "micro_f1",
)


# --------------------------------------------------------------------------------------------------
# Confusion matrix
# --------------------------------------------------------------------------------------------------


def _check_n_classes(n_classes: Any) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive int, got {n_classes!r}")
    return int(n_classes)


def _check_label_dtype(name: str, is_float: bool, is_complex: bool, dtype: Any) -> None:
    if is_float or is_complex:
        raise TypeError(
            f"{name} must hold integer class labels, got dtype {dtype} "
            "(for logits (B, n_classes, H, W) pass logits.argmax(1))"
        )


def _check_range_host(name: str, lo: int, hi: int, n_classes: int) -> None:
    if lo < 0 or hi >= n_classes:
        raise ValueError(
            f"{name} labels must lie in [0, {n_classes}) (n_classes={n_classes}), "
            f"got values in [{lo}, {hi}]"
        )


def _confusion_matrix_numpy(pred: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    """``pred``, ``target``: integer arrays of one shape (any, e.g. ``(B, H, W)``) -> ``(n, n)`` int64."""
    for name, arr in (("pred", pred), ("target", target)):
        _check_label_dtype(
            name,
            np.issubdtype(arr.dtype, np.floating),
            np.issubdtype(arr.dtype, np.complexfloating),
            arr.dtype,
        )
        if arr.dtype.kind not in "biu":
            raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
        if arr.size:
            _check_range_host(name, int(arr.min()), int(arr.max()), n)
    idx = target.reshape(-1).astype(np.int64) * n + pred.reshape(-1).astype(np.int64)
    return np.bincount(idx, minlength=n * n).reshape(n, n).astype(np.int64, copy=False)


def _confusion_matrix_torch(pred: torch.Tensor, target: torch.Tensor, n: int) -> torch.Tensor:
    """``pred``, ``target``: integer tensors of one shape on one device -> ``(n, n)`` int64 on that device.

    On CPU the labels are range-checked (a ValueError) and counted with ``torch.bincount``. On an
    accelerator nothing is copied to the host: ``torch.bincount`` would synchronise there (it reads the
    min and max on the host to size its output), so the pairs are counted with ``scatter_add_`` into a
    fixed ``(n * n,)`` buffer, and out-of-range labels trip an asynchronous device assertion
    (``torch._assert_async``), which surfaces at the next synchronisation, like an out-of-range
    target in ``F.cross_entropy``.
    """
    if pred.device != target.device:
        raise ValueError(f"pred and target must be on the same device, got {pred.device} and {target.device}")
    for name, t in (("pred", pred), ("target", target)):
        _check_label_dtype(name, t.is_floating_point(), t.is_complex(), t.dtype)
    p = pred.reshape(-1).to(torch.int64)
    t = target.reshape(-1).to(torch.int64)
    device = p.device
    if device.type == "cuda" and hasattr(torch, "_assert_async"):
        ok = ((p >= 0) & (p < n) & (t >= 0) & (t < n)).all()
        torch._assert_async(ok, f"confusion_matrix: pred/target labels must lie in [0, {n})")
    else:  # CPU, and accelerators without an async assertion (e.g. mps): check on the host
        for name, v in (("pred", p), ("target", t)):
            if v.numel():
                _check_range_host(name, int(v.min()), int(v.max()), n)
    if device.type == "cpu":
        return torch.bincount(t * n + p, minlength=n * n).reshape(n, n)
    idx = (t * n + p).clamp_(0, n * n - 1)  # clamping keeps the scatter in bounds if the assert is pending
    cm = torch.zeros(n * n, dtype=torch.int64, device=device)
    cm.scatter_add_(0, idx, torch.ones_like(idx))
    return cm.reshape(n, n)


def confusion_matrix(pred: Any, target: Any, n_classes: int = 20) -> Any:
    """Count (true, predicted) label pairs.

    Args:
        pred: predicted labels, integer tensor or array of any shape, e.g. ``(B, H, W)``.
        target: true labels, same type and shape as ``pred``; every value in ``[0, n_classes)``
            (void pixels keep their label, 19 for PASTIS; :func:`scores` drops them).
        n_classes: number of classes ``n``.

    Returns:
        ``(n, n)`` int64 matrix, rows = true class, columns = predicted class. A torch tensor on the
        inputs' device for tensor inputs (no host synchronisation on CUDA), a numpy array for arrays.

    Raises:
        TypeError: mixed tensor/array inputs, or non-integer (e.g. logits) inputs.
        ValueError: mismatched shapes, bad ``n_classes``, labels outside ``[0, n_classes)``
            (on CUDA the label check is an asynchronous device assertion instead).
    """
    n = _check_n_classes(n_classes)
    if isinstance(pred, torch.Tensor) != isinstance(target, torch.Tensor):
        raise TypeError(
            "pred and target must both be torch tensors or both be numpy arrays, "
            f"got {type(pred).__name__} and {type(target).__name__}"
        )
    if not isinstance(pred, torch.Tensor):
        pred, target = np.asarray(pred), np.asarray(target)
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if isinstance(pred, torch.Tensor):
        return _confusion_matrix_torch(pred, target, n)
    return _confusion_matrix_numpy(pred, target, n)


# --------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------


def _as_cm_array(cm: Any) -> np.ndarray:
    """Validate a confusion matrix (tensor or array) and return it as a float64 numpy ``(n, n)``."""
    if isinstance(cm, torch.Tensor):
        cm = cm.detach().cpu().numpy()
    arr = np.asarray(cm)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise ValueError(f"cm must be a non-empty square (n, n) matrix, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"cm must hold numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("cm must hold finite, non-negative counts")
    return arr


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN (without a warning) when there is none."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den`` with NaN where ``den == 0``."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def scores(cm: Any, ignore_index: int | None = 19) -> dict[str, Any]:
    """Compute the study's metrics from a confusion matrix.

    Args:
        cm: ``(n, n)`` counts, rows = true, columns = predicted (tensor or array, any device).
        ignore_index: class whose row and column are dropped before any metric (void, 19), or
            ``None`` to keep every class.

    Returns:
        dict with float fractions in ``[0, 1]`` (NaN when undefined, e.g. an empty matrix):
        ``"oa"``, ``"miou"``, ``"iou"`` (list of ``n`` floats; NaN for ``ignore_index`` and for classes
        absent from both target and prediction), ``"macro_precision"``, ``"macro_recall"``,
        ``"macro_f1"``, ``"micro_precision"``, ``"micro_recall"``, ``"micro_f1"``.
        See the module docstring for the exact definitions.
    """
    full = _as_cm_array(cm)
    n = full.shape[0]
    if ignore_index is not None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
        if not 0 <= ignore_index < n:
            raise ValueError(f"ignore_index must lie in [0, {n}) for a {n}x{n} cm, got {ignore_index}")
    keep = np.array([c != ignore_index for c in range(n)])
    sub = full[np.ix_(keep, keep)]

    tp = np.diag(sub)
    fp = sub.sum(axis=0) - tp
    fn = sub.sum(axis=1) - tp
    total = sub.sum()

    iou_kept = _safe_div(tp, tp + fp + fn)
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)

    iou = np.full(n, np.nan)
    iou[keep] = iou_kept
    oa = float(tp.sum() / total) if total > 0 else math.nan
    micro_p = float(_safe_div(tp.sum(), (tp + fp).sum()))
    micro_r = float(_safe_div(tp.sum(), (tp + fn).sum()))
    micro_f1 = float(_safe_div(2 * tp.sum(), (2 * tp + fp + fn).sum()))
    return {
        "oa": oa,
        "miou": _nanmean(iou_kept),
        "iou": [float(v) for v in iou],
        "macro_precision": _nanmean(precision),
        "macro_recall": _nanmean(recall),
        "macro_f1": _nanmean(f1),
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "micro_f1": micro_f1,
    }
