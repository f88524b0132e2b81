"""A user's own model, outside the package: what a sweep names by import path (``model: "external_model:build"``)
or an installed package registers under the entry-point group ``utae.models``. The tests put this folder on the
path (the sweep's kernel through ``PYTHONPATH``).

It follows the model protocol of :mod:`utae.models.registry`: ``forward(x (B, T, C, H, W), batch_positions (B, T),
pad_mask (B, T) | None) -> logits (B, num_classes, H, W)``, the keywords ``input_dim`` and ``num_classes``, then
its own option ``width``, and ``uses_dates``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FrameMean", "build"]


class FrameMean(nn.Module):
    """A 3x3 convolution of every frame, ReLU, the mean over the real frames, a 1x1 convolution to the classes."""

    uses_dates = False

    def __init__(self, input_dim: int = 10, num_classes: int = 20, width: int = 8, pad_value: float = 0.0) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        self.pad_value = float(pad_value)
        self.frame = nn.Conv2d(input_dim, width, 3, padding=1)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: Tensor, batch_positions: Tensor | None = None, pad_mask: Tensor | None = None) -> Tensor:
        b, t, c, h, w = x.shape
        if pad_mask is None:
            pad_mask = (x == self.pad_value).flatten(2).all(dim=2)
        real = (~pad_mask.to(x.device)).to(x.dtype)  # (B, T)
        maps = torch.relu(self.frame(x.reshape(b * t, c, h, w))).reshape(b, t, -1, h, w)
        mean = (maps * real[:, :, None, None, None]).sum(1) / real.sum(1).clamp(min=1)[:, None, None, None]
        return self.head(mean)


def build(input_dim: int = 10, num_classes: int = 20, width: int = 8) -> FrameMean:
    """The builder a sweep names: ``model: "external_model:build"``, ``model_options: {width: 4}``."""
    return FrameMean(input_dim=input_dim, num_classes=num_classes, width=width)
