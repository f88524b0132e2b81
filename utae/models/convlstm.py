"""ConvLSTM: the convolutional LSTM cell and layer, and the ConvLSTM segmentation baseline (``convlstm``).

The baseline (``ConvLSTM_Seg`` of the official U-TAE repository, Shi et al. 2015's cell): one ConvLSTM layer
(hidden 160) reads the raw frames at full resolution; its final state goes through a 3x3 convolution to the
classes. No normalisation, no encoder, no dates. The official PASTIS configuration has 1,008,660 parameters.

The cell (:class:`ConvLSTMCell`, shared by :mod:`utae.models.fpn_convlstm` and :mod:`utae.models.recunet`):
``z = conv(cat[x_t, h])`` split into the gates i, f, o, g (in that order); ``c = sig(f) c + sig(i) tanh(g)``,
``h = sig(o) tanh(c)``; h and c start at zeros of the size given at construction (``input_size``).

Official quirks, and what is done with them:

* The classifier reads the last **cell state** c_T, not the hidden state h_T, as in the official code (and in
  FPN-ConvLSTM and the recurrent U-Nets). ``classify="hidden"`` reads h_T instead, the usual LSTM output.
* Padding. Officially every step moves the state, padded ones included (the mask reaches only an unused
  indexing), so a padded series' prediction depends on how much padding its batch added. Here a padded step
  leaves the state unchanged (masked update): a series gives the same logits alone and in any padded batch,
  in evaluation and in training (the model has no normalisation and no dropout).
  ``official_padding=True`` feeds the padded frames to the recurrence as the official code does.

Short series: any T >= 1 works (one step per date; T = 1 is a single cell update from the zero state).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from utae.models.rec_blocks import (
    check_bool,
    check_choice,
    check_input_size,
    check_pad_value,
    check_positive_int,
    scan,
    series_pad_mask,
)

__all__ = ["ConvLSTMCell", "ConvLSTMLayer", "BConvLSTMLayer", "ConvLSTM", "check_kernel_size"]


def check_kernel_size(value: int | Sequence[int], option: str = "kernel_size") -> tuple[int, int]:
    """``value`` (an int or a pair) as a pair of odd positive ints, or a one-line ValueError naming ``option``
    (the recurrent convolutions pad by k // 2 to keep the size, which needs odd kernels)."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        pair = tuple(pair)
    except TypeError:
        pair = ()
    if len(pair) != 2 or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0 for k in pair):
        raise ValueError(f"{option} must be an odd positive int or a pair of them, e.g. (3, 3); got {value!r}")
    return pair  # type: ignore[return-value]


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step. Parameters: ``conv`` (4 hidden_dim, input_dim + hidden_dim, kh, kw), zero padding k // 2.

    Shapes: ``x (B, input_dim, H, W)``, ``state = (h, c)`` each ``(B, hidden_dim, H, W)`` -> the new ``(h, c)``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, kernel_size: tuple[int, int] = (3, 3)) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        kh, kw = check_kernel_size(kernel_size)
        self.conv = nn.Conv2d(input_dim + hidden_dim, 4 * hidden_dim, (kh, kw), padding=(kh // 2, kw // 2))

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        i, f, o, g = torch.split(self.conv(torch.cat([x, h], dim=1)), self.hidden_dim, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class ConvLSTMLayer(nn.Module):
    """A ConvLSTM layer over a series: one :class:`ConvLSTMCell` in ``cell_list`` (the official key layout).

    Args:
        input_dim, hidden_dim: channels of the frames and of the state.
        kernel_size: the cell's convolution kernel (odd).
        input_size: ``(H, W)`` of the frames; the state starts at zeros of this size (fixed at construction).

    Shapes: ``x (B, T, input_dim, H, W)``, ``keep (B, T)`` bool or None (see :func:`utae.models.rec_blocks.scan`:
    a step with ``keep`` False leaves the state unchanged; None moves it at every step) -> the final
    ``(h, c)``, each ``(B, hidden_dim, H, W)``.
    """

    def __init__(
        self, input_dim: int, hidden_dim: int, kernel_size: tuple[int, int], input_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.input_size = tuple(input_size)
        self.cell_list = nn.ModuleList([ConvLSTMCell(input_dim, hidden_dim, kernel_size)])

    def zero_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(h, c)`` zeros of shape ``(B, hidden_dim, H, W)`` for the series ``x (B, T, C, H, W)``."""
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"ConvLSTM: the frames are {tuple(x.shape[-2:])} but the layer was built for {self.input_size}"
            )
        zeros = x.new_zeros(x.shape[0], self.hidden_dim, *self.input_size)
        return zeros, zeros

    def forward(self, x: Tensor, keep: Tensor | None = None, reverse: bool = False) -> tuple[Tensor, Tensor]:
        h, c = scan(self.cell_list[0], x, self.zero_state(x), keep=keep, reverse=reverse)
        return h, c


class BConvLSTMLayer(nn.Module):
    """A bidirectional ConvLSTM layer: ``convlstm_forward`` reads the series in time order, ``convlstm_backward``
    (separate weights) in reverse order; their final states are concatenated, forward first.

    Shapes: ``x (B, T, input_dim, H, W)``, ``keep (B, T)`` bool or None -> ``(h, c)``, each
    ``(B, 2 hidden_dim, H, W)``. With ``keep``, the backward direction starts from the last real frame.
    """

    def __init__(
        self, input_dim: int, hidden_dim: int, kernel_size: tuple[int, int], input_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.convlstm_forward = ConvLSTMLayer(input_dim, hidden_dim, kernel_size, input_size)
        self.convlstm_backward = ConvLSTMLayer(input_dim, hidden_dim, kernel_size, input_size)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h_f, c_f = self.convlstm_forward(x, keep)
        h_b, c_b = self.convlstm_backward(x, keep, reverse=True)
        return torch.cat([h_f, h_b], dim=1), torch.cat([c_f, c_b], dim=1)


class ConvLSTM(nn.Module):
    """The ConvLSTM segmentation baseline (official ``ConvLSTM_Seg``; registry name ``convlstm``).

    Args:
        input_dim: spectral bands C of the input.
        num_classes: classes of the logits.
        input_size: H = W of every input (the recurrent state is built for it).
        kernel_size: kernel of the cell's convolution (odd; the classifier is always 3x3).
        hidden_dim: channels of the recurrent state.
        pad_value: value of padded frames (used when ``pad_mask`` is None).
        classify: ``"cell"`` (official: the classifier reads the last cell state c_T) or ``"hidden"`` (h_T).
        official_padding: feed padded frames to the recurrence (the official, batch-dependent behaviour)
            instead of leaving the state unchanged on them.

    Keys: ``convlstm_encoder.cell_list.0.conv.{weight,bias}``, ``classification_layer.{weight,bias}``.
    """

    uses_dates = False

    def __init__(
        self,
        input_dim: int = 10,
        num_classes: int = 20,
        input_size: int = 128,
        kernel_size: int | Sequence[int] = (3, 3),
        hidden_dim: int = 160,
        pad_value: float = 0.0,
        classify: str = "cell",
        official_padding: bool = False,
    ) -> None:
        super().__init__()
        self.input_dim = check_positive_int("input_dim", input_dim)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.input_size = check_input_size(input_size)
        kernel = check_kernel_size(kernel_size)
        check_positive_int("hidden_dim", hidden_dim)
        check_choice("classify", classify, ("cell", "hidden"))
        check_bool("official_padding", official_padding)
        self.pad_value = check_pad_value(pad_value)
        self.classify = classify
        self.official_padding = bool(official_padding)
        size = (self.input_size, self.input_size)
        self.convlstm_encoder = ConvLSTMLayer(input_dim, hidden_dim, kernel, size)
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
        pad = series_pad_mask("convlstm", x, batch_positions, pad_mask, self.input_dim, self.input_size, self.pad_value)
        h, c = self.convlstm_encoder(x, None if self.official_padding else ~pad)
        return self.classification_layer(c if self.classify == "cell" else h)
