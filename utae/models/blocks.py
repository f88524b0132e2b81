"""The convolution blocks of U-TAE's U-Net, with the official module names: :class:`ConvLayer` (conv, norm, ReLU
layers), :class:`ConvBlock`, :class:`DownConvBlock` (a strided convolution then two convolutions with a residual)
and :class:`UpConvBlock` (a transposed convolution, a 1x1 skip convolution, concatenation and two convolutions).
Shapes: ``(N, C, H, W)`` in and out; the U-Net runs them on the frames of a series flattened into N."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from utae.models.ops import ReflectConv2d
from torch import Tensor, nn

__all__ = ["ConvLayer", "ConvBlock", "DownConvBlock", "UpConvBlock"]


def _norm_layer(norm: str | None, channels: int, n_groups: int = 4) -> nn.Module | None:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(num_channels=channels, num_groups=n_groups)
    if norm == "instance":
        return nn.InstanceNorm2d(channels)
    if norm is None or norm == "none":
        return None
    raise ValueError(f"norm must be 'batch', 'group', 'instance' or None, got {norm!r}")


class ConvLayer(nn.Module):
    """A stack of ``Conv2d -> norm -> ReLU`` layers, held in ``self.conv`` (an ``nn.Sequential``).

    Args:
        nkernels: channel widths ``[c_in, c_1, ..., c_out]``; one convolution per consecutive pair.
        norm: ``"batch"``, ``"group"`` (4 groups), ``"instance"`` or None.
        k, s, p: kernel size, stride and padding of every convolution.
        padding_mode: spatial padding of the convolutions (the official model uses ``"reflect"``).
        last_relu: whether the last convolution is followed by a ReLU.

    Shapes: ``(N, c_in, H, W) -> (N, c_out, H', W')``.
    """

    def __init__(
        self,
        nkernels: Sequence[int],
        norm: str | None = "batch",
        k: int = 3,
        s: int = 1,
        p: int = 1,
        n_groups: int = 4,
        last_relu: bool = True,
        padding_mode: str = "reflect",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(len(nkernels) - 1):
            layers.append(
                ReflectConv2d(
                    nkernels[i], nkernels[i + 1], kernel_size=k, padding=p, stride=s, padding_mode=padding_mode
                )
            )
            norm_layer = _norm_layer(norm, nkernels[i + 1], n_groups)
            if norm_layer is not None:
                layers.append(norm_layer)
            if last_relu or i < len(nkernels) - 2:
                layers.append(nn.ReLU(inplace=True))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class ConvBlock(nn.Module):
    """A :class:`ConvLayer` of 3x3 convolutions, held in ``self.conv``. ``(N, c_in, H, W) -> (N, c_out, H, W)``."""

    def __init__(
        self,
        nkernels: Sequence[int],
        norm: str | None = "batch",
        last_relu: bool = True,
        padding_mode: str = "reflect",
    ) -> None:
        super().__init__()
        self.conv = ConvLayer(nkernels, norm=norm, last_relu=last_relu, padding_mode=padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class DownConvBlock(nn.Module):
    """Encoder stage: a strided convolution halves H and W, then a residual pair of 3x3 convolutions.

    ``out = conv1(down(x)); out = out + conv2(out)``. Shapes: ``(N, d_in, H, W) -> (N, d_out, H/2, W/2)``.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        k: int,
        s: int,
        p: int,
        norm: str | None = "batch",
        padding_mode: str = "reflect",
    ) -> None:
        super().__init__()
        self.down = ConvLayer([d_in, d_in], norm=norm, k=k, s=s, p=p, padding_mode=padding_mode)
        self.conv1 = ConvLayer([d_in, d_out], norm=norm, padding_mode=padding_mode)
        self.conv2 = ConvLayer([d_out, d_out], norm=norm, padding_mode=padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.down(x))
        return out + self.conv2(out)


class UpConvBlock(nn.Module):
    """Decoder stage: a transposed convolution doubles H and W; the skip goes through a 1x1 convolution;
    both are concatenated and go through a residual pair of 3x3 convolutions (BatchNorm throughout).

    Shapes: ``x (B, d_in, h, w)``, ``skip (B, d_skip, 2h, 2w)`` -> ``(B, d_out, 2h, 2w)``.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        k: int,
        s: int,
        p: int,
        norm: str | None = "batch",
        d_skip: int | None = None,
        padding_mode: str = "reflect",
    ) -> None:
        super().__init__()
        d = d_out if d_skip is None else d_skip
        self.skip_conv = nn.Sequential(nn.Conv2d(d, d, kernel_size=1), nn.BatchNorm2d(d), nn.ReLU(inplace=True))
        self.up = nn.Sequential(
            nn.ConvTranspose2d(d_in, d_out, kernel_size=k, stride=s, padding=p),
            nn.BatchNorm2d(d_out),
            nn.ReLU(inplace=True),
        )
        self.conv1 = ConvLayer([d_out + d, d_out], norm=norm, padding_mode=padding_mode)
        self.conv2 = ConvLayer([d_out, d_out], norm=norm, padding_mode=padding_mode)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        out = torch.cat([self.up(x), self.skip_conv(skip)], dim=1)
        out = self.conv1(out)
        return out + self.conv2(out)

