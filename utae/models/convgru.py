"""ConvGRU: the convolutional GRU cell and layer, and the ConvGRU segmentation baseline (``convgru``).

The baseline (``ConvGRU_Seg`` of the official U-TAE repository): one ConvGRU layer (hidden 180) reads the raw
frames at full resolution; its last hidden state goes through a 3x3 convolution to the classes. No
normalisation, no encoder, no dates. The official PASTIS configuration has 956,360 parameters.

The cell (:class:`ConvGRUCell`): ``a = sig(in_conv(cat[x_t, h]))``, z = the first hidden_dim channels of a,
r = the last; ``n = tanh(out_conv(cat[x_t, r h]))``; ``h = (1 - z) h + z n``. Note the convention: z weights
the new candidate (``torch.nn.GRU``'s z keeps the old state instead). h starts at zeros of ``input_size``.

Padding. Officially every step moves the state, padded ones included, so a padded series' prediction depends
on how much padding its batch added. Here a padded step leaves the state unchanged (masked update): a series
gives the same logits alone and in any padded batch, in evaluation and in training (no normalisation, no
dropout). ``official_padding=True`` feeds the padded frames to the recurrence as the official code does.

Short series: any T >= 1 works (one step per date).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from utae.models.convlstm import check_kernel_size
from utae.models.rec_blocks import (
    check_bool,
    check_input_size,
    check_pad_value,
    check_positive_int,
    scan,
    series_pad_mask,
)

__all__ = ["ConvGRUCell", "ConvGRULayer", "ConvGRU"]


class ConvGRUCell(nn.Module):
    """One ConvGRU step. Parameters: ``in_conv`` (gates, 2 hidden_dim outputs) and ``out_conv`` (candidate,
    hidden_dim outputs), both on ``input_dim + hidden_dim`` channels (input first), zero padding k // 2.

    Shapes: ``x (B, input_dim, H, W)``, ``state = (h,)`` with h ``(B, hidden_dim, H, W)`` -> the new ``(h,)``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, kernel_size: tuple[int, int] = (3, 3)) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        kh, kw = check_kernel_size(kernel_size)
        padding = (kh // 2, kw // 2)
        self.in_conv = nn.Conv2d(input_dim + hidden_dim, 2 * hidden_dim, (kh, kw), padding=padding)
        self.out_conv = nn.Conv2d(input_dim + hidden_dim, hidden_dim, (kh, kw), padding=padding)

    def forward(self, x: Tensor, state: tuple[Tensor]) -> tuple[Tensor]:
        (h,) = state
        z, r = torch.split(torch.sigmoid(self.in_conv(torch.cat([x, h], dim=1))), self.hidden_dim, dim=1)
        n = torch.tanh(self.out_conv(torch.cat([x, r * h], dim=1)))
        return ((1 - z) * h + z * n,)


class ConvGRULayer(nn.Module):
    """A ConvGRU layer over a series: one :class:`ConvGRUCell` in ``cell_list`` (the official key layout).

    Shapes: ``x (B, T, input_dim, H, W)`` with ``(H, W) = input_size``, ``keep (B, T)`` bool or None (a step
    with ``keep`` False leaves the state unchanged; None moves it at every step) -> the last hidden state
    ``(B, hidden_dim, H, W)``.
    """

    def __init__(
        self, input_dim: int, hidden_dim: int, kernel_size: tuple[int, int], input_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.input_size = tuple(input_size)
        self.cell_list = nn.ModuleList([ConvGRUCell(input_dim, hidden_dim, kernel_size)])

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"ConvGRU: the frames are {tuple(x.shape[-2:])} but the layer was built for {self.input_size}"
            )
        h0 = x.new_zeros(x.shape[0], self.hidden_dim, *self.input_size)
        (h,) = scan(self.cell_list[0], x, (h0,), keep=keep)
        return h


class ConvGRU(nn.Module):
    """The ConvGRU segmentation baseline (official ``ConvGRU_Seg``; registry name ``convgru``).

    Args:
        input_dim: spectral bands C of the input.
        num_classes: classes of the logits.
        input_size: H = W of every input (the recurrent state is built for it).
        kernel_size: kernel of the cell's convolutions (odd; the classifier is always 3x3).
        hidden_dim: channels of the hidden state.
        pad_value: value of padded frames (used when ``pad_mask`` is None).
        official_padding: feed padded frames to the recurrence (the official, batch-dependent behaviour).

    Keys: ``convgru_encoder.cell_list.0.{in_conv,out_conv}.{weight,bias}``, ``classification_layer.{weight,bias}``.
    """

    uses_dates = False

    def __init__(
        self,
        input_dim: int = 10,
        num_classes: int = 20,
        input_size: int = 128,
        kernel_size: int | Sequence[int] = (3, 3),
        hidden_dim: int = 180,
        pad_value: float = 0.0,
        official_padding: bool = False,
    ) -> None:
        super().__init__()
        self.input_dim = check_positive_int("input_dim", input_dim)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.input_size = check_input_size(input_size)
        kernel = check_kernel_size(kernel_size)
        check_positive_int("hidden_dim", hidden_dim)
        check_bool("official_padding", official_padding)
        self.pad_value = check_pad_value(pad_value)
        self.official_padding = bool(official_padding)
        self.convgru_encoder = ConvGRULayer(input_dim, hidden_dim, kernel, (self.input_size, self.input_size))
        self.classification_layer = nn.Conv2d(hidden_dim, num_classes, kernel_size=3, padding=1)

    def forward(self, x: Tensor, batch_positions: Tensor | None = None, pad_mask: Tensor | None = None) -> Tensor:
        """Segment a batch of series.

        Args:
            x: ``(B, T, C, H, W)`` float, ``T >= 1``, ``H = W = input_size``.
            batch_positions: ``(B, T)`` day offsets; checked for shape, otherwise ignored.
            pad_mask: ``(B, T)`` bool, True for padded frames; None: frames whose values all equal ``pad_value``.

        Returns:
            logits ``(B, num_classes, H, W)``.
        """
        pad = series_pad_mask("convgru", x, batch_positions, pad_mask, self.input_dim, self.input_size, self.pad_value)
        h = self.convgru_encoder(x, None if self.official_padding else ~pad)
        return self.classification_layer(h)
