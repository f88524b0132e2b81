"""What the recurrent baselines share: input checks, the pad mask, per-frame blocks, the time scan, masked means.

The pad mask itself is :mod:`utae.models.padding`'s. The baselines of the official U-TAE repository (ConvLSTM,
ConvGRU, FPN-ConvLSTM, U-ConvLSTM, BU-ConvLSTM) all read a ``(B, T, C, H, W)`` series in which padded frames (right-padded by the collate function) hold
``pad_value``. Here a padded frame never changes a prediction:

* per-frame blocks (:func:`encode_frames`) run on the real frames only; the padded ones are filled with
  ``pad_value``, as the official per-frame blocks do;
* a recurrence (:func:`scan`) takes a ``keep`` mask: on a step where ``keep[b, t]`` is False, sample ``b``'s
  state does not move (a masked update, ``state = where(keep, new, old)``);
* temporal means (:func:`masked_time_mean`) average the real frames.

No operation mixes samples outside the decoders' BatchNorm (in training mode only), so in evaluation a
series gives the same logits alone and inside any padded batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from utae.models.padding import check_real_frames, resolve_pad_mask

__all__ = [
    "check_choice",
    "check_bool",
    "check_pad_value",
    "check_positive_int",
    "check_input_size",
    "check_widths",
    "check_series",
    "series_pad_mask",
    "encode_frames",
    "scan",
    "masked_time_mean",
]

#: Groups of every GroupNorm of the baselines (as officially).
GROUPS = 4


def check_choice(option: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise a one-line ValueError naming ``option`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{option} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")


def check_bool(option: str, value: Any) -> bool:
    """``value``, or a one-line ValueError naming ``option`` when it is not a bool (1 or "yes" are refused)."""
    if not isinstance(value, bool):
        raise ValueError(f"{option} must be True or False; got {value!r}")
    return value


def check_pad_value(value: Any) -> float:
    """The ``pad_value`` option as a float, or a one-line ValueError naming it when it is not a real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"pad_value must be a real number (padded frames hold it); got {value!r}")
    return float(value)


def check_positive_int(option: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int, or a one-line ValueError naming ``option`` when it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{option} must be an integer >= {minimum}; got {value!r}")
    return value


def check_input_size(value: Any) -> int:
    """The ``input_size`` option (H = W of every input, fixed at construction): a positive int; a pair
    ``(H, W)`` is accepted when both are equal."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    return check_positive_int("input_size", value)


def check_widths(option: str, widths: Any, minimum_length: int = 1, multiple_of: int = 1) -> list[int]:
    """``widths`` as a list of ints, or a one-line ValueError naming ``option`` (too short, not positive
    integers, or not multiples of ``multiple_of``, e.g. the 4 groups of a GroupNorm)."""
    try:
        widths = list(widths)
    except TypeError:
        raise ValueError(f"{option} must be a sequence of positive integers; got {widths!r}") from None
    if len(widths) < minimum_length or any(
        isinstance(w, bool) or not isinstance(w, int) or w < 1 or w % multiple_of for w in widths
    ):
        more = f", each a multiple of {multiple_of}" if multiple_of > 1 else ""
        raise ValueError(f"{option} must hold at least {minimum_length} positive integer(s){more}; got {widths!r}")
    return widths


def check_series(
    model: str,
    x: Tensor,
    batch_positions: Tensor | None,
    pad_mask: Tensor | None,
    input_dim: int,
    input_size: int | None,
) -> None:
    """One-line ValueErrors for a bad input of ``model``'s forward.

    Shapes: ``x (B, T, C, H, W)`` with ``T >= 1``, ``C = input_dim`` and ``H = W = input_size`` (when not None);
    ``batch_positions (B, T)`` or None (the recurrent baselines ignore dates); ``pad_mask (B, T)`` bool or None.
    """
    if x.dim() != 5:
        raise ValueError(f"{model}: x must be 5-D (B, T, C, H, W), got shape {tuple(x.shape)}")
    b, t, c, h, w = x.shape
    if t < 1:
        raise ValueError(f"{model}: x has no date (T = 0); at least 1 date is needed")
    if c != input_dim:
        raise ValueError(f"{model}: x has {c} channels (dim 2 of (B, T, C, H, W)), expected input_dim={input_dim}")
    if input_size is not None and (h, w) != (input_size, input_size):
        raise ValueError(
            f"{model}: x is {h}x{w} but the model was built for input_size={input_size} "
            f"(expected {input_size}x{input_size}); build it with input_size={h}" + ("" if h == w else " (H = W)")
        )
    if batch_positions is not None and tuple(batch_positions.shape) != (b, t):
        raise ValueError(f"{model}: batch_positions must be (B, T) = {(b, t)}, got {tuple(batch_positions.shape)}")
    if pad_mask is not None:
        if tuple(pad_mask.shape) != (b, t):
            raise ValueError(f"{model}: pad_mask must be (B, T) = {(b, t)}, got {tuple(pad_mask.shape)}")
        if pad_mask.dtype != torch.bool:
            raise ValueError(f"{model}: pad_mask must be a bool tensor (True for padded frames), got {pad_mask.dtype}")


def series_pad_mask(model: str, x: Tensor, batch_positions: Tensor | None, pad_mask: Tensor | None,
                    input_dim: int, input_size: int | None, pad_value: float) -> Tensor:
    """The checks every recurrent baseline's forward starts with, then its ``(B, T)`` pad mask:
    :func:`check_series`, :func:`resolve_pad_mask` and :func:`check_real_frames` (every sample has a real frame)."""
    check_series(model, x, batch_positions, pad_mask, input_dim, input_size)
    pad = resolve_pad_mask(x, pad_mask, pad_value)
    check_real_frames(pad, model)
    return pad


def _real_frames(pad_cpu: Tensor, model: str) -> Tensor | None:
    """Flat indices (b * T + t) of the real frames of a ``(B, T)`` CPU pad mask; None when none is padded."""
    check_real_frames(pad_cpu, model)
    if not bool(pad_cpu.any()):
        return None
    return (~pad_cpu.reshape(-1)).nonzero().flatten()


def encode_frames(
    encoder: Callable[[Tensor], list[Tensor]], x: Tensor, pad_mask: Tensor, pad_value: float, model: str
) -> list[Tensor]:
    """Apply a per-frame ``encoder`` to the real frames of ``x`` only; padded frames get ``pad_value`` maps.

    Shapes: ``x (B, T, C, H, W)``, ``pad_mask (B, T)`` bool; ``encoder`` maps ``(N, C, H, W)`` to a list of
    ``(N, C_i, H_i, W_i)`` maps -> a list of ``(B, T, C_i, H_i, W_i)`` maps. Normalisation layers of
    ``encoder`` therefore never see a padded frame (in training mode too).
    """
    b, t = x.shape[:2]
    flat = x.reshape(b * t, *x.shape[2:])
    real = _real_frames(pad_mask.cpu(), model)
    if real is None:
        return [m.view(b, t, *m.shape[1:]) for m in encoder(flat)]
    real = real.to(x.device)
    maps = encoder(flat.index_select(0, real))
    return [
        m.new_full((b * t, *m.shape[1:]), pad_value).index_put_((real,), m).view(b, t, *m.shape[1:]) for m in maps
    ]


def scan(
    step: Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]],
    x: Tensor,
    state: tuple[Tensor, ...],
    keep: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, ...]:
    """Run a recurrent cell over time: ``state = step(x[:, t], state)`` for t = 0 .. T-1 (T-1 .. 0 if ``reverse``).

    With ``keep`` (B, T) bool, sample ``b``'s state moves at step ``t`` only where ``keep[b, t]``: a padded
    step leaves it exactly as it was, and a step that no sample keeps is not computed. ``keep=None`` moves
    every state at every step (the official models' behaviour on padded frames).

    Shapes: ``x (B, T, C, H, W)``, each state tensor ``(B, ...)`` -> the final state, same shapes.
    """
    t = x.shape[1]
    order = range(t - 1, -1, -1) if reverse else range(t)
    keep_cpu = None if keep is None else keep.cpu()
    for i in order:
        if keep_cpu is not None and not bool(keep_cpu[:, i].any()):
            continue
        new = step(x[:, i], state)
        if keep_cpu is not None and not bool(keep_cpu[:, i].all()):
            k = keep[:, i].view(-1, *([1] * (new[0].dim() - 1)))
            new = tuple(torch.where(k, n, s) for n, s in zip(new, state))
        state = new
    return state


def masked_time_mean(x: Tensor, pad_mask: Tensor) -> Tensor:
    """The mean over time of the real frames: ``sum_t x[:, t] * real[:, t] / sum_t real[:, t]``, or the plain
    mean when no frame is padded (as officially).

    Shapes: ``x (B, T, C, H, W)``, ``pad_mask (B, T)`` -> ``(B, C, H, W)``."""
    if not bool(pad_mask.any()):
        return x.mean(dim=1)
    real = (~pad_mask).to(x.dtype)
    return (x * real[:, :, None, None, None]).sum(dim=1) / real.sum(dim=1)[:, None, None, None]
