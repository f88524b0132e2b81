"""U-Net3D: a 3D U-Net over (T, H, W), the ``unet3d`` baseline of the U-TAE paper (after Rustowicz et al. 2019).

The layers, their widths and the state-dict keys follow the official U-TAE repository's ``UNet3D``, so that its
weights load with ``strict=True`` (81 entries; 1,553,796 trainable parameters with ``feats=8``, 10 bands and 20
classes). Every Conv3d is 3x3x3, padding 1, with bias; "conv block" = Conv3d, BatchNorm3d, LeakyReLU(0.01),
Conv3d, BatchNorm3d, LeakyReLU(0.01). With ``f = feats`` and the input permuted to ``(B, C, T, H, W)``:

=============  ====================================================  ===================================
key prefix     layer                                                 output
=============  ====================================================  ===================================
``en3``        conv block C -> 4f -> 4f                              ``(B, 4f, T, H, W)``
--             MaxPool3d 2 (time and space halved, floor)            ``(B, 4f, T/2, H/2, W/2)``
``en4``        conv block 4f -> 8f -> 8f                             ``(B, 8f, T/2, H/2, W/2)``
--             MaxPool3d 2                                           ``(B, 8f, T/4, H/4, W/4)``
``center_in``  Conv3d 8f -> 16f, BatchNorm3d, LeakyReLU              ``(B, 16f, T/4, H/4, W/4)``
``center_out`` Conv3d 16f -> 16f, BatchNorm3d, LeakyReLU (``.0-.2``),
               ConvTranspose3d 16f -> 8f, k3 s2 p1 op1 (``.3``)      ``(B, 8f, 2(T/4), H/2, W/2)``
``dc4``        conv block on [center_out, en4[:2(T/4)]] -> 8f         ``(B, 8f, 2(T/4), H/2, W/2)``
``trans3``     ConvTranspose3d 8f -> 4f, BatchNorm3d, LeakyReLU      ``(B, 4f, 4(T/4), H, W)``
``dc3``        conv block on [trans3, en3[:4(T/4)]] -> 4f -> 2f       ``(B, 2f, 4(T/4), H, W)``
``final``      Conv3d 2f -> K, then a mean over the time steps        logits ``(B, K, H, W)``
=============  ====================================================  ===================================

(``T/2`` and ``T/4`` are floor divisions.) H and W must be multiples of 4. Dates are not used (``uses_dates``
False). On a batch without padded frames and of at least 4 frames, the computation is the official one.

Padded frames (``pad_handling="masked"``, the default; a departure from the official code). Officially the
padded frames of a batch enter every 3D convolution, pool and BatchNorm as zeros and mix into the last real
frames, so a patch's logits depend on how far its batch was padded (0.037 on the official fixture). Here each
series is processed as if it were alone in the batch:

* the real frames of every sample are moved to the front (a padded frame inside a series is dropped); sample
  ``b`` then has ``L_b`` real frames and the time axis is cut to the longest series;
* a series is treated as ending at its real length at every level: the frames past it are set to 0 before
  every convolution (equal to the convolution's own zero padding at the end of a short series), a pooled step
  is real when both its frames are (``floor(L / 2)``), an upsampled one when its source is (``2 floor(L / 4)``,
  ``4 floor(L / 4)``);
* BatchNorm in train mode takes its statistics (and updates its running ones) over the real frames only;
* the final mean runs over each sample's own output steps, ``min(4 floor(E / 4), L_b)`` of them.

Short series: the network needs 4 frames (two time poolings). A series of ``L < 4`` real frames (1 to 3, as
``missing_dates`` leaves at severity 5) is extended with ``4 - L`` frames of zeros that the network treats as
frames, ``E = max(L, 4)``, and its logits are the mean over its ``L`` real output steps. This is the official
model's output for that series right-padded to 4 frames (eval mode). A series without real frames is an error.

``pad_handling="official"`` reproduces the official computation on padded batches (padded frames mixed in,
statistics over them, every input value equal to ``pad_value`` set to 0, the final mean over the valid steps
among the first ``4 floor(T / 4)`` when any frame of the batch is padded); it needs ``T >= 4``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utae.models.padding import check_real_frames, resolve_pad_mask

__all__ = ["MaskedBatchNorm3d", "UNet3D", "MIN_FRAMES"]

#: Frames the network needs: two 2x poolings of the time axis.
MIN_FRAMES = 4
PAD_HANDLINGS = ("masked", "official")


def _mask(x: Tensor, valid: Tensor | None) -> Tensor:
    """``x`` ``(B, C, T, H, W)`` with the steps where ``valid`` ``(B, T)`` is False set to 0."""
    if valid is None:
        return x
    return x * valid[:, None, :, None, None].to(x.dtype)


def _steps(lengths: Tensor, t: int) -> Tensor:
    """``(B, t)`` bool: step ``j`` of sample ``b`` is real when ``j < lengths[b]``."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


class MaskedBatchNorm3d(nn.BatchNorm3d):
    """BatchNorm3d whose train-mode statistics come from the real time steps only.

    ``forward(x, valid)``: ``x`` ``(B, C, T, H, W)``, ``valid`` ``(B, T)`` bool or None (every step real). In
    train mode with padded steps, the mean and variance (and the running-statistics update) are those of the
    real steps, as BatchNorm3d would compute them on a batch holding only those; the padded steps of the
    output are 0. Eval mode, or no padded step, is plain BatchNorm3d.
    """

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if valid is None or not self.training or bool(valid.all()):
            return super().forward(x)
        frames = x.transpose(1, 2)  # (B, T, C, H, W)
        real = frames[valid]  # (N, C, H, W): the real steps, as a batch of 2D maps
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        out = F.batch_norm(real, self.running_mean, self.running_var, self.weight, self.bias, True, momentum, self.eps)
        full = frames.new_zeros(frames.shape)
        full[valid] = out
        return full.transpose(1, 2)


class _Stage(nn.Sequential):
    """A chain of Conv3d / ConvTranspose3d, MaskedBatchNorm3d and LeakyReLU whose steps past each series' real
    length are zeroed after every activation. ``forward(x, valid)``: ``x`` ``(B, C, T, H, W)``, ``valid``
    ``(B, T')`` bool for the steps of the norm's input (``T' = T`` except after a transposed convolution)."""

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, MaskedBatchNorm3d):
                x = layer(x, valid)
            else:
                x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                x = _mask(x, valid)
        return x


def _conv_block(c_in: int, c_mid: int, c_out: int) -> _Stage:
    """Conv3d, BatchNorm3d, LeakyReLU, Conv3d, BatchNorm3d, LeakyReLU (keys ``.0``, ``.1``, ``.3``, ``.4``)."""
    return _Stage(
        nn.Conv3d(c_in, c_mid, 3, padding=1),
        MaskedBatchNorm3d(c_mid),
        nn.LeakyReLU(),
        nn.Conv3d(c_mid, c_out, 3, padding=1),
        MaskedBatchNorm3d(c_out),
        nn.LeakyReLU(),
    )


def _up(c_in: int, c_out: int) -> nn.ConvTranspose3d:
    """ConvTranspose3d k3, stride 2, padding 1, output_padding 1: doubles T, H and W."""
    return nn.ConvTranspose3d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)


class UNet3D(nn.Module):
    """The official U-TAE repository's U-Net3D baseline, with batch-independent padding (see the module doc).

    Args:
        input_dim: spectral bands C of the input.
        num_classes: classes K (the logits' channels).
        feats: base width f (official default 8); the widths are 2f to 16f.
        pad_value: the value of padded frames, for the mask inferred when ``pad_mask`` is None.
        pad_handling: ``"masked"`` (each series processed as if alone) or ``"official"`` (see the module doc).
    """

    uses_dates: ClassVar[bool] = False

    def __init__(
        self,
        input_dim: int = 10,
        num_classes: int = 20,
        feats: int = 8,
        pad_value: float = 0.0,
        pad_handling: str = "masked",
    ) -> None:
        super().__init__()
        for name, value in (("input_dim", input_dim), ("num_classes", num_classes), ("feats", feats)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if pad_handling not in PAD_HANDLINGS:
            raise ValueError(f"pad_handling must be one of {PAD_HANDLINGS}, got {pad_handling!r}")
        self.input_dim, self.num_classes, self.feats = input_dim, num_classes, feats
        self.pad_value = float(pad_value)
        self.pad_handling = pad_handling
        f = feats
        self.en3 = _conv_block(input_dim, 4 * f, 4 * f)
        self.en4 = _conv_block(4 * f, 8 * f, 8 * f)
        self.center_in = _Stage(nn.Conv3d(8 * f, 16 * f, 3, padding=1), MaskedBatchNorm3d(16 * f), nn.LeakyReLU())
        self.center_out = _Stage(
            nn.Conv3d(16 * f, 16 * f, 3, padding=1), MaskedBatchNorm3d(16 * f), nn.LeakyReLU(), _up(16 * f, 8 * f)
        )
        self.dc4 = _conv_block(16 * f, 8 * f, 8 * f)
        self.trans3 = _Stage(_up(8 * f, 4 * f), MaskedBatchNorm3d(4 * f), nn.LeakyReLU())
        self.dc3 = _conv_block(8 * f, 4 * f, 2 * f)
        self.final = nn.Conv3d(2 * f, num_classes, 3, padding=1)
        self.pool = nn.MaxPool3d(2, stride=2)

    def _check_inputs(self, x: Tensor, batch_positions: Tensor | None, pad_mask: Tensor | None) -> None:
        if x.dim() != 5:
            raise ValueError(f"x must be 5-D (B, T, C, H, W), got shape {tuple(x.shape)}")
        b, t, c, h, w = x.shape
        if c != self.input_dim:
            raise ValueError(f"x has {c} channels (dim 2 of (B, T, C, H, W)), expected input_dim={self.input_dim}")
        if h % 4 or w % 4 or h == 0 or w == 0:
            raise ValueError(f"x has H x W = {h}x{w}; expected H and W positive multiples of 4 (two 2x poolings)")
        if batch_positions is not None and tuple(batch_positions.shape) != (b, t):
            raise ValueError(f"batch_positions must have shape (B, T) = {(b, t)}, got {tuple(batch_positions.shape)}")
        if pad_mask is not None:
            if tuple(pad_mask.shape) != (b, t) or pad_mask.dtype != torch.bool:
                raise ValueError(
                    f"pad_mask must be a bool tensor of shape (B, T) = {(b, t)}, "
                    f"got {pad_mask.dtype} {tuple(pad_mask.shape)}"
                )

    def _compact(self, x: Tensor, pad_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Move each sample's real frames to the front and cut or extend the time axis.

        Shapes: ``x (B, T, C, H, W)``, ``pad_mask (B, T)`` -> ``x (B, T0, C, H, W)`` with the frames past each
        series' real length set to 0, and the real lengths ``(B,)`` int64; ``T0 = max(max_b L_b, 4)``.
        """
        b, t = pad_mask.shape
        check_real_frames(pad_mask, "unet3d")
        lengths = (~pad_mask).sum(dim=1)
        if bool(pad_mask.any()):
            order = torch.sort(pad_mask.to(torch.uint8), dim=1, stable=True).indices  # real frames first, in order
            x = x.gather(1, order.view(b, t, 1, 1, 1).expand_as(x))
            x = x * _steps(lengths, t).view(b, t, 1, 1, 1).to(x.dtype)
        t0 = max(int(lengths.max()), MIN_FRAMES)
        if t0 < t:
            x = x[:, :t0]
        elif t0 > t:
            x = torch.cat([x, x.new_zeros((b, t0 - t, *x.shape[2:]))], dim=1)
        return x, lengths

    def forward(self, x: Tensor, batch_positions: Tensor | None = None, pad_mask: Tensor | None = None) -> Tensor:
        """Segment a batch of image time series.

        Args:
            x: ``(B, T, C, H, W)`` float images, H and W multiples of 4.
            batch_positions: ``(B, T)`` days; not used (only its shape is checked).
            pad_mask: ``(B, T)`` bool, True for padded frames; None: a frame is padding when all its values
                equal ``pad_value``.

        Returns:
            logits ``(B, num_classes, H, W)``.
        """
        self._check_inputs(x, batch_positions, pad_mask)
        pad_mask = resolve_pad_mask(x, pad_mask, self.pad_value)
        if self.pad_handling == "official":
            return self._forward_official(x, pad_mask)
        x, lengths = self._compact(x, pad_mask)
        t0 = x.shape[1]
        frames = lengths.clamp(min=MIN_FRAMES)  # E: the frames the network treats as real
        levels = [_steps(frames, t0), _steps(frames // 2, t0 // 2), _steps(frames // 4, t0 // 4)]
        decoded = [_steps(2 * (frames // 4), 2 * (t0 // 4)), _steps(4 * (frames // 4), 4 * (t0 // 4))]
        if bool(levels[0].all()):  # no series shorter than the batch: every step real, as officially
            levels, decoded = [None, None, None], [None, None]
        out = self._network(x.permute(0, 2, 1, 3, 4), levels, decoded)  # (B, K, 4 (T0/4), H, W)
        n_out = torch.minimum(4 * (frames // 4), lengths)  # each sample's own output steps
        steps = _steps(n_out, out.shape[2]).to(out.dtype)
        return (out * steps[:, None, :, None, None]).sum(dim=2) / n_out.to(out.dtype).view(-1, 1, 1, 1)

    def _network(self, x: Tensor, levels: list[Tensor | None], decoded: list[Tensor | None]) -> Tensor:
        """The layers, with the real steps of each level.

        Shapes: ``x (B, C, T, H, W)``; ``levels`` ``(B, T)``, ``(B, T/2)``, ``(B, T/4)`` bool (or None: all
        real) for the encoder levels, ``decoded`` ``(B, 2 (T/4))``, ``(B, 4 (T/4))`` for the decoder levels ->
        ``(B, K, 4 (T/4), H, W)`` per-step logits.
        """
        en3 = self.en3(x, levels[0])
        en4 = self.en4(_mask(self.pool(en3), levels[1]), levels[1])
        center = self.center_in(_mask(self.pool(en4), levels[2]), levels[2])
        center = self.center_out(center, levels[2])  # (B, 8f, 2 (T/4), H/2, W/2)
        t2 = center.shape[2]
        dc4 = self.dc4(_mask(torch.cat([center, en4[:, :, :t2]], dim=1), decoded[0]), decoded[0])
        up = self.trans3(dc4, decoded[1])
        t1 = up.shape[2]
        dc3 = self.dc3(_mask(torch.cat([up, en3[:, :, :t1]], dim=1), decoded[1]), decoded[1])
        return self.final(dc3)

    def _forward_official(self, x: Tensor, pad_mask: Tensor) -> Tensor:
        """The official computation: ``x (B, T, C, H, W)``, ``pad_mask (B, T)`` -> logits ``(B, K, H, W)``."""
        t = x.shape[1]
        if t < MIN_FRAMES:
            raise ValueError(f"x has T={t} frames; pad_handling='official' needs at least {MIN_FRAMES}")
        x = torch.where(x == self.pad_value, torch.zeros_like(x), x)  # officially every value equal to pad_value
        out = self._network(x.permute(0, 2, 1, 3, 4), [None, None, None], [None, None])
        t_out = out.shape[2]
        if not bool(pad_mask.any()):
            return out.mean(dim=2)
        valid = (~pad_mask[:, :t_out]).to(out.dtype)
        count = valid.sum(dim=1)
        if bool((count == 0).any()):
            empty = (count == 0).nonzero().flatten().tolist()
            raise ValueError(f"sample(s) {empty} have no real frame among the first {t_out} (the official mean's)")
        return (out * valid[:, None, :, None, None]).sum(dim=2) / count.view(-1, 1, 1, 1)
