"""Recurrent U-Nets: U-ConvLSTM (``uconvlstm``) and the bidirectional BU-ConvLSTM (``buconvlstm``).

The official ``RecUNet`` of the U-TAE repository: U-TAE's U-Net with a ConvLSTM in place of the L-TAE.

* Encoder, per frame: ``in_conv`` (two 3x3 convolutions, GroupNorm, ReLU), then ``len(encoder_widths) - 1``
  down blocks (a strided 4x4 convolution, then a residual pair of 3x3 convolutions), as in U-TAE
  (:class:`utae.models.blocks.ConvBlock`, :class:`utae.models.blocks.DownConvBlock`).
* Bottleneck: a ConvLSTM (``temporal="lstm"``, :class:`utae.models.convlstm.ConvLSTMLayer`) or a bidirectional
  one (``"blstm"``, :class:`utae.models.convlstm.BConvLSTMLayer`, forward state first) over the deepest maps;
  its last state goes through ``out_convlstm`` (a 3x3 convolution, no norm, no activation).
* Decoder: the skip connections are the temporal **mean** of each encoder level over the real frames; the up
  blocks are U-TAE's (:class:`utae.models.blocks.UpConvBlock`) with ``encoder_norm`` in their convolution pairs;
  ``out_conv`` ends with BatchNorm and ReLU, so the logits are >= 0 (as in the official model and U-TAE).

The official PASTIS configurations: U-ConvLSTM (hidden 64) 1,520,540 parameters; BU-ConvLSTM (``"blstm"``,
hidden 30 per direction) 1,414,828.

Official quirks, and what is done with them:

* The official ``get_model`` builds "buconvlstm" with ``temporal="lstm"``: the official BU-ConvLSTM is a
  *unidirectional* U-ConvLSTM with hidden 30. :class:`BUConvLSTM` is the bidirectional model that its name and
  the U-TAE paper describe (``temporal="blstm"``); ``BUConvLSTM(temporal="lstm")`` is the official build.
* ``in_conv`` ignores ``padding_mode``: it pads by reflection although the model is built with zero padding.
  Kept by default; ``in_conv_padding_mode=None`` makes it follow ``padding_mode``.
* The ConvLSTM is classified by its last **cell state** c_T; ``classify="hidden"`` reads h_T instead.
* Padding. Officially the per-frame encoder skips padded frames and the skip means ignore them, but the
  ConvLSTM runs over every step, padded ones included (and the backward direction of ``"blstm"`` starts with
  the trailing padded steps), so a padded series' prediction depends on its batch. Here padded steps leave the
  recurrent state unchanged (masked update; the backward direction starts at the last real frame): in
  evaluation a series gives the same logits alone and in any padded batch. In training mode the decoder's
  BatchNorm mixes the samples of a batch (as in U-TAE), but no padded frame reaches any normalisation.
  ``official_padding=True`` feeds the padded frames' zero maps to the ConvLSTM, as the official code does.

Short series: any T >= 1 works (the encoder is per frame, the means need one real frame, the ConvLSTM one step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from utae.models.blocks import ConvBlock, DownConvBlock, UpConvBlock
from utae.models.convlstm import BConvLSTMLayer, ConvLSTMLayer
from utae.models.rec_blocks import (
    GROUPS,
    check_bool,
    check_choice,
    check_input_size,
    check_pad_value,
    check_positive_int,
    check_widths,
    encode_frames,
    masked_time_mean,
    series_pad_mask,
)

__all__ = ["level_sizes", "RecUNet", "UConvLSTM", "BUConvLSTM"]

_NORMS = ("group", "batch", "instance", None)
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def level_sizes(input_size: int, n_levels: int, k: int, s: int, p: int) -> list[int]:
    """H = W of each encoder level for strided convolutions (k, s, p), or a one-line ValueError when a level
    vanishes or when a transposed convolution (k, s, p) would not give the skip's size back."""
    sizes = [input_size]
    for _ in range(n_levels - 1):
        sizes.append((sizes[-1] + 2 * p - k) // s + 1)
    if min(sizes) < 1 or any((small - 1) * s - 2 * p + k != big for big, small in zip(sizes, sizes[1:])):
        raise ValueError(
            f"input_size={input_size} with str_conv_k={k}, str_conv_s={s}, str_conv_p={p} gives encoder sizes "
            f"{sizes} that the decoder cannot restore; for k4 s2 p1, input_size must be a multiple of "
            f"{2 ** (n_levels - 1)}"
        )
    return sizes


class RecUNet(nn.Module):
    """U-Net with a recurrent temporal encoder (official ``RecUNet``).

    Args:
        input_dim: spectral bands C of the input.
        num_classes: classes of the logits (the last entry of ``out_conv``).
        input_size: H = W of every input (the ConvLSTM state is built for the deepest level's size).
        encoder_widths: widths of ``in_conv`` and of each down block's output; ``len - 1`` down blocks.
        decoder_widths: widths of the decoder stages; ``decoder_widths[-1]`` must equal ``encoder_widths[-1]``.
        out_conv: widths of the output head; None is ``(32, num_classes)``; the last must equal num_classes.
        str_conv_k, str_conv_s, str_conv_p: kernel, stride and padding of the down and up convolutions.
        temporal: ``"lstm"`` (ConvLSTM) or ``"blstm"`` (bidirectional ConvLSTM).
        encoder_norm: ``"group"`` (4 groups), ``"batch"``, ``"instance"`` or None, for the encoder and the
            decoder's convolution pairs (the up and skip paths and ``out_conv`` use BatchNorm).
        hidden_dim: channels of the ConvLSTM state (per direction).
        padding_mode: spatial padding of the 3x3 and strided convolutions.
        pad_value: value of padded frames (used when ``pad_mask`` is None, and for their encoder maps).
        in_conv_padding_mode: padding of ``in_conv``: ``"reflect"`` (official) or None (``padding_mode``).
        classify: ``"cell"`` (official: ``out_convlstm`` reads c_T) or ``"hidden"`` (h_T).
        official_padding: feed padded frames to the ConvLSTM (the official, batch-dependent behaviour).
    """

    uses_dates = False

    def __init__(
        self,
        input_dim: int = 10,
        num_classes: int = 20,
        input_size: int = 128,
        encoder_widths: Sequence[int] = (64, 64, 64, 128),
        decoder_widths: Sequence[int] = (32, 32, 64, 128),
        out_conv: Sequence[int] | None = None,
        str_conv_k: int = 4,
        str_conv_s: int = 2,
        str_conv_p: int = 1,
        temporal: str = "lstm",
        encoder_norm: str | None = "group",
        hidden_dim: int = 64,
        padding_mode: str = "zeros",
        pad_value: float = 0.0,
        in_conv_padding_mode: str | None = "reflect",
        classify: str = "cell",
        official_padding: bool = False,
    ) -> None:
        super().__init__()
        self.input_dim = check_positive_int("input_dim", input_dim)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.input_size = check_input_size(input_size)
        for option, value, choices in (
            ("temporal", temporal, ("lstm", "blstm")),
            ("encoder_norm", encoder_norm, _NORMS),
            ("padding_mode", padding_mode, _PADDING_MODES),
            ("in_conv_padding_mode", in_conv_padding_mode, _PADDING_MODES + (None,)),
            ("classify", classify, ("cell", "hidden")),
        ):
            check_choice(option, value, choices)
        check_bool("official_padding", official_padding)
        groups = GROUPS if encoder_norm == "group" else 1
        enc = check_widths("encoder_widths", encoder_widths, minimum_length=2, multiple_of=groups)
        dec = check_widths("decoder_widths", decoder_widths, minimum_length=2, multiple_of=groups)
        head = check_widths("out_conv", (32, num_classes) if out_conv is None else out_conv)
        if len(enc) != len(dec) or enc[-1] != dec[-1]:
            raise ValueError(
                f"decoder_widths must have the length of encoder_widths and the same last width; got {dec} and {enc}"
            )
        if head[-1] != num_classes:
            raise ValueError(f"out_conv's last width must equal num_classes={num_classes}; got out_conv={head}")
        k = check_positive_int("str_conv_k", str_conv_k)
        s = check_positive_int("str_conv_s", str_conv_s)
        p = check_positive_int("str_conv_p", str_conv_p, minimum=0)
        sizes = level_sizes(self.input_size, len(enc), k, s, p)
        check_positive_int("hidden_dim", hidden_dim)
        self.pad_value = check_pad_value(pad_value)
        self.temporal = temporal
        self.classify = classify
        self.official_padding = bool(official_padding)

        in_mode = padding_mode if in_conv_padding_mode is None else in_conv_padding_mode
        self.in_conv = ConvBlock([input_dim, enc[0], enc[0]], norm=encoder_norm, padding_mode=in_mode)
        self.down_blocks = nn.ModuleList(
            DownConvBlock(enc[i], enc[i + 1], k=k, s=s, p=p, norm=encoder_norm, padding_mode=padding_mode)
            for i in range(len(enc) - 1)
        )
        self.up_blocks = nn.ModuleList(
            UpConvBlock(
                dec[i], dec[i - 1], d_skip=enc[i - 1], k=k, s=s, p=p, norm=encoder_norm, padding_mode=padding_mode
            )
            for i in range(len(enc) - 1, 0, -1)
        )
        layer = ConvLSTMLayer if temporal == "lstm" else BConvLSTMLayer
        self.temporal_encoder = layer(enc[-1], hidden_dim, (3, 3), (sizes[-1], sizes[-1]))
        state_width = hidden_dim * (1 if temporal == "lstm" else 2)
        self.out_convlstm = nn.Conv2d(state_width, enc[-1], kernel_size=3, padding=1)
        self.out_conv = ConvBlock([dec[0], *head], norm="batch", padding_mode=padding_mode)

    def encode(self, frames: Tensor) -> list[Tensor]:
        """The per-frame encoder: ``(N, input_dim, H, W)`` -> one ``(N, encoder_widths[i], H_i, W_i)`` map per level."""
        maps = [self.in_conv(frames)]
        for block in self.down_blocks:
            maps.append(block(maps[-1]))
        return maps

    def forward(self, x: Tensor, batch_positions: Tensor | None = None, pad_mask: Tensor | None = None) -> Tensor:
        """Segment a batch of series.

        Args:
            x: ``(B, T, C, H, W)`` float, ``T >= 1``, ``H = W = input_size``.
            batch_positions: ``(B, T)`` day offsets; checked for shape, otherwise ignored.
            pad_mask: ``(B, T)`` bool, True for padded frames; None: frames whose values all equal ``pad_value``.

        Returns:
            logits ``(B, num_classes, H, W)``, all >= 0 (``out_conv`` ends with a ReLU).
        """
        name = type(self).__name__
        pad = series_pad_mask(name, x, batch_positions, pad_mask, self.input_dim, self.input_size, self.pad_value)
        maps = encode_frames(self.encode, x, pad, self.pad_value, name)
        h, c = self.temporal_encoder(maps[-1], None if self.official_padding else ~pad)
        out = self.out_convlstm(c if self.classify == "cell" else h)
        for i, up in enumerate(self.up_blocks):
            out = up(out, masked_time_mean(maps[-(i + 2)], pad))
        return self.out_conv(out)


class UConvLSTM(RecUNet):
    """U-ConvLSTM (registry name ``uconvlstm``): :class:`RecUNet` with its defaults, ``temporal="lstm"`` and
    hidden 64, the official configuration (1,520,540 parameters)."""


class BUConvLSTM(RecUNet):
    """BU-ConvLSTM (registry name ``buconvlstm``): :class:`RecUNet` with ``temporal="blstm"`` and hidden 30 per
    direction (1,414,828 parameters); every other option as :class:`RecUNet`. The official ``get_model``
    builds this name with ``temporal="lstm"`` (a U-ConvLSTM of hidden 30, 1,209,508 parameters): pass
    ``temporal="lstm"`` for that build."""

    def __init__(self, *, temporal: str = "blstm", hidden_dim: int = 30, **options: Any) -> None:
        super().__init__(temporal=temporal, hidden_dim=hidden_dim, **options)
