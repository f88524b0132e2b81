"""FPN-ConvLSTM: a per-frame feature pyramid followed by a ConvLSTM (``fpn_convlstm``).

The official ``FPNConvLSTM`` of the U-TAE repository (after Martinez et al. 2021). Every frame goes through
three per-frame blocks, all at full resolution (no striding, pooling or upsampling):

* ``inconv``: two 3x3 convolutions (reflect padding), each followed by GroupNorm(4) and ReLU
  ``(C, H, W) -> (inconv[-1], H, W)``;
* ``pyramid`` (:class:`Pyramid`): a 3x3 convolution (zero padding, no norm, no activation) gives u; the
  ``n_levels - 1`` levels are 3x3 convolutions of u with dilations 1, 2, 4, ... (reflect padding, applied
  in parallel); the last level is u's global max over H x W, broadcast to every pixel
  ``-> (n_levels * n_channels, H, W)``;
* ``mid_conv`` (when ``mid_conv=True``): a 3x3 convolution (reflect) to ``n_levels * n_channels / 2``
  channels, GroupNorm(4), ReLU;

then a ConvLSTM (:class:`utae.models.convlstm.ConvLSTMLayer`, hidden ``hidden_size``) over the frames, and a
1x1 convolution of its last state to the classes. The official PASTIS configuration has 1,151,028 parameters.

Official quirks, and what is done with them:

* The classifier reads the last **cell state** c_T (as in all the official ConvLSTM models);
  ``classify="hidden"`` reads h_T instead.
* The pyramid's pooled level is a global **max** (the official code names it an average pool);
  ``global_pool="mean"`` gives the average that the name describes.
* Padding. Officially the per-frame blocks skip padded frames (their maps are 0) but the ConvLSTM runs over
  every step, padded ones included, so a padded series' prediction depends on its batch. Here padded frames
  are skipped by the per-frame blocks (GroupNorm never sees them, in training mode too) and leave the
  ConvLSTM state unchanged (masked update): a series gives the same logits alone and in any padded batch.
  ``official_padding=True`` feeds the padded frames' zero maps to the ConvLSTM, as the official code does.

Short series: any T >= 1 works (the per-frame blocks need no time axis; one ConvLSTM step per date).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from utae.models.blocks import ConvBlock
from utae.models.ops import ReflectConv2d
from utae.models.convlstm import ConvLSTMLayer, check_kernel_size
from utae.models.rec_blocks import (
    GROUPS,
    check_bool,
    check_choice,
    check_input_size,
    check_pad_value,
    check_positive_int,
    check_widths,
    encode_frames,
    series_pad_mask,
)

__all__ = ["Pyramid", "FPNConvLSTM"]


class Pyramid(nn.Module):
    """The feature pyramid of one frame: ``inconv`` (3x3, zero padding) gives u; ``convs[i]`` is a 3x3
    convolution of u with dilation and reflect padding ``2 ** i`` (i < n_levels - 1); the last level is u's
    global max (or mean) over H x W. Levels are concatenated in that order.

    Shapes: ``(N, input_dim, H, W) -> (N, n_levels * n_channels, H, W)``; H, W > ``2 ** (n_levels - 2)``.
    """

    def __init__(self, input_dim: int, n_levels: int = 4, n_channels: int = 64, global_pool: str = "max") -> None:
        super().__init__()
        self.global_pool = global_pool
        self.inconv = nn.Conv2d(input_dim, n_channels, kernel_size=3, padding=1)
        self.convs = nn.ModuleList(
            ReflectConv2d(n_channels, n_channels, 3, padding=2**i, dilation=2**i, padding_mode="reflect")
            for i in range(n_levels - 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        u = self.inconv(x)
        pooled = u.amax(dim=(2, 3), keepdim=True) if self.global_pool == "max" else u.mean(dim=(2, 3), keepdim=True)
        return torch.cat([conv(u) for conv in self.convs] + [pooled.expand_as(u)], dim=1)


class FPNConvLSTM(nn.Module):
    """FPN-ConvLSTM semantic segmentation (official ``FPNConvLSTM``; registry name ``fpn_convlstm``).

    Args:
        input_dim: spectral bands C of the input.
        num_classes: classes of the logits.
        input_size: H = W of every input (the ConvLSTM state is built for it); larger than
            ``2 ** (n_levels - 2)`` (the largest dilation's reflect padding).
        inconv: widths of the two (or more) per-frame input convolutions, multiples of 4 (GroupNorm).
        n_levels: levels of the pyramid (``n_levels - 1`` dilated convolutions and the pooled level), >= 2.
        n_channels: width of each pyramid level.
        hidden_size: channels of the ConvLSTM state.
        kernel_size: kernel of the ConvLSTM's convolution (odd).
        mid_conv: reduce the pyramid to ``n_levels * n_channels / 2`` channels before the ConvLSTM.
        pad_value: value of padded frames (used when ``pad_mask`` is None, and for their per-frame maps).
        classify: ``"cell"`` (official: c_T) or ``"hidden"`` (h_T).
        global_pool: the pyramid's pooled level, ``"max"`` (official) or ``"mean"``.
        official_padding: feed padded frames to the ConvLSTM (the official, batch-dependent behaviour).

    Keys: ``inconv.conv.conv.{0,1,3,4}``, ``pyramid.inconv``, ``pyramid.convs.{i}``, ``mid_conv.conv.conv.{0,1}``,
    ``convlstm.cell_list.0.conv``, ``outconv``.
    """

    uses_dates = False

    def __init__(
        self,
        input_dim: int = 10,
        num_classes: int = 20,
        input_size: int = 128,
        inconv: Sequence[int] = (32, 64),
        n_levels: int = 4,
        n_channels: int = 64,
        hidden_size: int = 88,
        kernel_size: int | Sequence[int] = (3, 3),
        mid_conv: bool = True,
        pad_value: float = 0.0,
        classify: str = "cell",
        global_pool: str = "max",
        official_padding: bool = False,
    ) -> None:
        super().__init__()
        self.input_dim = check_positive_int("input_dim", input_dim)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.input_size = check_input_size(input_size)
        widths = check_widths("inconv", inconv, multiple_of=GROUPS)
        check_positive_int("n_levels", n_levels, minimum=2)
        check_positive_int("n_channels", n_channels)
        check_positive_int("hidden_size", hidden_size)
        kernel = check_kernel_size(kernel_size)
        for option, value, choices in (
            ("classify", classify, ("cell", "hidden")),
            ("global_pool", global_pool, ("max", "mean")),
        ):
            check_choice(option, value, choices)
        check_bool("mid_conv", mid_conv)
        check_bool("official_padding", official_padding)
        if self.input_size <= 2 ** (n_levels - 2):
            raise ValueError(
                f"input_size must exceed the largest pyramid dilation 2 ** (n_levels - 2) = {2 ** (n_levels - 2)} "
                f"(reflect padding); got input_size={self.input_size} with n_levels={n_levels}"
            )
        pyramid_width = n_levels * n_channels
        if mid_conv and (pyramid_width // 2) % GROUPS:
            raise ValueError(
                f"n_levels * n_channels / 2 (mid_conv's width, {pyramid_width // 2}) must be a multiple of {GROUPS} "
                f"(GroupNorm); got n_levels={n_levels}, n_channels={n_channels}"
            )
        self.pad_value = check_pad_value(pad_value)
        self.classify = classify
        self.official_padding = bool(official_padding)

        self.inconv = ConvBlock([input_dim, *widths], norm="group", padding_mode="reflect")
        self.pyramid = Pyramid(widths[-1], n_levels=n_levels, n_channels=n_channels, global_pool=global_pool)
        self.mid_conv: ConvBlock | None = None
        lstm_in = pyramid_width
        if mid_conv:
            lstm_in = pyramid_width // 2
            self.mid_conv = ConvBlock([pyramid_width, lstm_in], norm="group", padding_mode="reflect")
        size = (self.input_size, self.input_size)
        self.convlstm = ConvLSTMLayer(lstm_in, hidden_size, kernel, size)
        self.outconv = nn.Conv2d(hidden_size, num_classes, kernel_size=1)

    def encode(self, frames: Tensor) -> Tensor:
        """The per-frame blocks: ``(N, input_dim, H, W) -> (N, C_lstm, H, W)``."""
        out = self.pyramid(self.inconv(frames))
        return out if self.mid_conv is None else self.mid_conv(out)

    def forward(self, x: Tensor, batch_positions: Tensor | None = None, pad_mask: Tensor | None = None) -> Tensor:
        """Segment a batch of series.

        Args:
            x: ``(B, T, C, H, W)`` float, ``T >= 1``, ``H = W = input_size``.
            batch_positions: ``(B, T)`` day offsets; checked for shape, otherwise ignored.
            pad_mask: ``(B, T)`` bool, True for padded frames; None: frames whose values all equal ``pad_value``.

        Returns:
            logits ``(B, num_classes, H, W)``.
        """
        pad = series_pad_mask("fpn_convlstm", x, batch_positions, pad_mask, self.input_dim, self.input_size,
                              self.pad_value)
        (features,) = encode_frames(lambda f: [self.encode(f)], x, pad, self.pad_value, "fpn_convlstm")
        h, c = self.convlstm(features, None if self.official_padding else ~pad)
        return self.outconv(c if self.classify == "cell" else h)
