"""U-TAE: a U-Net whose skip connections are aggregated over time by a Lightweight Temporal Attention Encoder.

Garnot & Landrieu, "Panoptic Segmentation of Satellite Image Time Series with Convolutional Temporal Attention
Networks", ICCV 2021. The module and parameter names follow the official implementation, so that its checkpoints
load with ``strict=True``; the computation follows its semantics exactly (see ``shared/reference/utae_official``):

* The shared encoder (``in_conv`` then ``down_blocks``) sees each frame independently. Padded frames are not
  convolved: only the real frames of the batch go through the encoder, and the padded ones are set to
  ``pad_value`` at every level. Unlike the official code, no shape-probing pass on a dummy input is run.
* ``temporal_encoder`` (L-TAE) runs at the lowest resolution on every pixel's sequence. Its ``in_norm`` is a
  GroupNorm over (channels of a group x all T steps, padded ones included); the positional encoding is added
  after ``inconv``; the scores of padded steps are set to -1000 before a float32 softmax. Under autocast the
  whole L-TAE runs in float32 (see :meth:`LTAE2d.forward`); a float64 model keeps float64 throughout.
* Each skip connection is aggregated over time with the L-TAE attention, one head per channel group
  (``att_group``): the attention is bilinearly upsampled (or average-pooled) to the skip's resolution.
* The decoder uses BatchNorm; the output head ends with BatchNorm and ReLU, as in the official model.

Its parts: the convolution blocks (:mod:`utae.models.blocks`), the L-TAE and the temporal aggregation
(:mod:`utae.models.ltae`), and two operations with hand-written backward passes (:mod:`utae.models.ops`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from utae.models.blocks import ConvBlock, DownConvBlock, UpConvBlock
from utae.models.ltae import LTAE2d, TemporalAggregator
from utae.models.padding import check_real_frames
from torch import Tensor, nn

__all__ = ["UTAE"]


class UTAE(nn.Module):
    """U-TAE for semantic segmentation of image time series.

    The defaults are the official PASTIS configuration (1,087,260 trainable parameters).

    Args:
        input_dim: spectral bands C of the input.
        encoder_widths: widths of ``in_conv`` and of each down block's output; ``len - 1`` down blocks.
        decoder_widths: widths of the decoder stages; ``decoder_widths[-1]`` must equal ``encoder_widths[-1]``.
        out_conv: widths of the output head; the last is the number of classes.
        str_conv_k, str_conv_s, str_conv_p: kernel, stride and padding of the strided (down and up) convolutions.
        agg_mode: skip aggregation, ``"att_group"``, ``"att_mean"`` or ``"mean"``.
        encoder_norm: ``"group"`` (4 groups), ``"batch"``, ``"instance"`` or None; the decoder uses BatchNorm.
        n_head, d_model, d_k: L-TAE heads, inner width and key width. Every encoder width must be divisible
            by ``n_head`` (``att_group`` splits the channels of each skip into ``n_head`` groups).
        pad_value: value of padded frames, in the input and at every encoder level.
        padding_mode: spatial padding of the 2D convolutions.
        num_classes: the number of classes (the registry's keyword); when given it replaces ``out_conv[-1]``.

    Forward: :meth:`forward` follows the protocol of :mod:`utae.models.registry` (it reads the dates).
    """

    uses_dates = True

    def __init__(
        self,
        input_dim: int = 10,
        encoder_widths: Sequence[int] = (64, 64, 64, 128),
        decoder_widths: Sequence[int] = (32, 32, 64, 128),
        out_conv: Sequence[int] = (32, 20),
        str_conv_k: int = 4,
        str_conv_s: int = 2,
        str_conv_p: int = 1,
        agg_mode: str = "att_group",
        encoder_norm: str | None = "group",
        n_head: int = 16,
        d_model: int = 256,
        d_k: int = 4,
        pad_value: float = 0.0,
        padding_mode: str = "reflect",
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        encoder_widths, decoder_widths, out_conv = list(encoder_widths), list(decoder_widths), list(out_conv)
        if num_classes is not None:  # the registry's keyword (utae.models.registry): the head's last width
            out_conv[-1] = int(num_classes)
        if len(encoder_widths) != len(decoder_widths):
            raise ValueError(
                f"encoder_widths and decoder_widths must have the same length, got {encoder_widths} and {decoder_widths}"
            )
        if encoder_widths[-1] != decoder_widths[-1]:
            raise ValueError(
                f"decoder_widths[-1] ({decoder_widths[-1]}) must equal encoder_widths[-1] ({encoder_widths[-1]})"
            )
        if agg_mode == "att_group" and any(w % n_head for w in encoder_widths):
            raise ValueError(f"every encoder width {encoder_widths} must be divisible by n_head ({n_head})")
        self.input_dim = input_dim
        self.n_stages = len(encoder_widths)
        self.encoder_widths = encoder_widths
        self.decoder_widths = decoder_widths
        self.n_classes = out_conv[-1]
        self.pad_value = float(pad_value)
        self.n_head = n_head

        self.in_conv = ConvBlock(
            [input_dim, encoder_widths[0], encoder_widths[0]], norm=encoder_norm, padding_mode=padding_mode
        )
        self.down_blocks = nn.ModuleList(
            DownConvBlock(
                encoder_widths[i],
                encoder_widths[i + 1],
                k=str_conv_k,
                s=str_conv_s,
                p=str_conv_p,
                norm=encoder_norm,
                padding_mode=padding_mode,
            )
            for i in range(self.n_stages - 1)
        )
        self.up_blocks = nn.ModuleList(
            UpConvBlock(
                decoder_widths[i],
                decoder_widths[i - 1],
                d_skip=encoder_widths[i - 1],
                k=str_conv_k,
                s=str_conv_s,
                p=str_conv_p,
                norm="batch",
                padding_mode=padding_mode,
            )
            for i in range(self.n_stages - 1, 0, -1)
        )
        self.temporal_encoder = LTAE2d(
            in_channels=encoder_widths[-1],
            d_model=d_model,
            n_head=n_head,
            mlp=[d_model, encoder_widths[-1]],
            return_att=True,
            d_k=d_k,
        )
        self.temporal_aggregator = TemporalAggregator(mode=agg_mode)
        self.out_conv = ConvBlock([decoder_widths[0], *out_conv], padding_mode=padding_mode)

    @property
    def downsampling(self) -> int:
        """The factor by which the lowest resolution is smaller than the input: ``2 ** (n_stages - 1)``."""
        return 2 ** (self.n_stages - 1)

    def _check_inputs(self, x: Tensor, batch_positions: Tensor, pad_mask: Tensor | None) -> None:
        if x.dim() != 5:
            raise ValueError(f"x must be 5-D (B, T, C, H, W), got a {x.dim()}-D tensor of shape {tuple(x.shape)}")
        b, t, c, h, w = x.shape
        if c != self.input_dim:
            raise ValueError(f"x has {c} channels (dim 2 of (B, T, C, H, W)), expected input_dim={self.input_dim}")
        if h % self.downsampling or w % self.downsampling:
            raise ValueError(
                f"H and W must be divisible by {self.downsampling} (2 ** {self.n_stages - 1} down blocks), got {h}x{w}"
            )
        if tuple(batch_positions.shape) != (b, t):
            raise ValueError(
                f"batch_positions must have shape (B, T) = {(b, t)}, got {tuple(batch_positions.shape)}"
            )
        if pad_mask is not None:
            if tuple(pad_mask.shape) != (b, t):
                raise ValueError(f"pad_mask must have shape (B, T) = {(b, t)}, got {tuple(pad_mask.shape)}")
            if pad_mask.dtype != torch.bool:
                raise ValueError(f"pad_mask must be a bool tensor (True for padded frames), got {pad_mask.dtype}")

    def _encode(self, x: Tensor, pad_cpu: Tensor) -> list[Tensor]:
        """Run the shared encoder on the real frames only.

        Shapes: ``x (B, T, C, H, W)``, ``pad_cpu (B, T)`` on the CPU -> one ``(B, T, C_i, H_i, W_i)`` map per
        level, with padded frames equal to ``pad_value``.
        """
        b, t = x.shape[:2]
        flat = x.reshape(b * t, *x.shape[2:])
        if self.in_conv.conv.conv[0].weight.is_contiguous(memory_format=torch.channels_last):
            flat = flat.contiguous(memory_format=torch.channels_last)
        check_real_frames(pad_cpu.view(b, t), "utae")
        pad_cpu = pad_cpu.reshape(-1)
        real_idx = None
        if bool(pad_cpu.any()):
            real_idx = (~pad_cpu).nonzero().flatten().to(x.device, non_blocking=True)
            flat = flat.index_select(0, real_idx)
        maps = []
        out = self.in_conv(flat)
        maps.append(out)
        for block in self.down_blocks:
            out = block(out)
            maps.append(out)
        if real_idx is None:
            return [m.view(b, t, *m.shape[1:]) for m in maps]
        filled = []
        for m in maps:
            layout = torch.channels_last if not m.is_contiguous() and m.is_contiguous(memory_format=torch.channels_last) \
                else torch.contiguous_format  # a channels-last model's maps stay channels-last
            full = torch.empty((b * t, *m.shape[1:]), dtype=m.dtype, device=m.device, memory_format=layout)
            filled.append(full.fill_(self.pad_value).index_put_((real_idx,), m).view(b, t, *m.shape[1:]))
        return filled

    def forward(
        self,
        x: Tensor,
        batch_positions: Tensor,
        pad_mask: Tensor | None = None,
        return_att: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Segment a batch of image time series.

        Args:
            x: ``(B, T, C, H, W)`` float images; H and W divisible by ``2 ** (len(encoder_widths) - 1)``.
            batch_positions: ``(B, T)`` day offsets of the frames.
            pad_mask: ``(B, T)`` bool, True for padded frames. When None, a frame is padding when all its
                values equal ``pad_value``, as in the official model. The frame selection reads the mask on
                the host: a CPU mask with a GPU ``x`` (as :func:`utae.pastis.dataset.pad_collate` makes it) saves a
                device-to-host synchronisation.
            return_att: also return the L-TAE attention.

        Returns:
            logits ``(B, n_classes, H, W)``, and the attention ``(n_head, B, T, H / 2**(n-1), W / 2**(n-1))``
            when ``return_att`` is set.
        """
        self._check_inputs(x, batch_positions, pad_mask)
        if pad_mask is None:
            pad_mask = (x == self.pad_value).flatten(2).all(dim=2)
        pad_cpu = pad_mask.cpu()  # no copy when the mask is already on the host
        pad_mask = pad_mask.to(x.device, non_blocking=True)
        maps = self._encode(x, pad_cpu)
        out, att = self.temporal_encoder(maps[-1], batch_positions=batch_positions, pad_mask=pad_mask)
        for i, up in enumerate(self.up_blocks):
            skip = self.temporal_aggregator(maps[-(i + 2)], pad_mask=pad_mask, attn=att)
            out = up(out, skip)
        out = self.out_conv(out)
        if return_att:
            return out, att
        return out
