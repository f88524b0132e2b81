"""The pad mask every model reads: which frames of a right-padded ``(B, T, C, H, W)`` batch are padding, and the
one-line error for a sample with no real frame. Padded frames hold ``pad_value`` (the collate function's fill)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["resolve_pad_mask", "check_real_frames"]


def resolve_pad_mask(x: Tensor, pad_mask: Tensor | None, pad_value: float) -> Tensor:
    """The ``(B, T)`` bool pad mask: ``pad_mask`` itself, or (None) True where every value of the frame
    ``x[b, t]`` equals ``pad_value``, as the official models infer it."""
    if pad_mask is not None:
        return pad_mask.to(x.device)
    return (x == pad_value).flatten(2).all(dim=2)


def check_real_frames(pad_mask: Tensor, model: str) -> None:
    """A one-line ValueError when a sample of the ``(B, T)`` pad mask has no real frame (nothing to predict from)."""
    empty = pad_mask.all(dim=1)
    if bool(empty.any()):
        raise ValueError(
            f"{model}: sample(s) {empty.nonzero().flatten().tolist()} of the batch have only padded frames; "
            "each needs at least one real frame"
        )
