"""Two operations of U-TAE with hand-written backward passes, the same gradients as autograd through the plain
PyTorch ops with fewer memory passes (they dominate the CPU time of small models outside the convolutions):
:func:`reflect_pad` (the reflect padding of every 3x3 and strided convolution; :class:`ReflectConv2d`) and
:func:`group_weighted_sum` (the ``att_group`` skip aggregation). :func:`reflect_pad_reference` and
:func:`group_weighted_sum_reference` are the plain-op versions; ``ReflectConv2d.pad_fn`` and
``TemporalAggregator.weighted_sum`` select which one a model instance uses (the tests and
``benchmarks/bench_epoch.py`` compare them). Without gradients, the plain forward runs (no autograd Function).
The skip aggregation has a second path for the frames of a channels-last model (:func:`frames_channels_last`),
which keeps their layout instead of copying them to the contiguous one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "reflect_pad", "reflect_pad_reference", "ReflectConv2d", "frames_channels_last", "group_weighted_sum",
    "group_weighted_sum_reference",
]


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 if it is in a narrower float type (float16, bfloat16); float32 and float64 unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _flip(x: Tensor, dim: int) -> Tensor:
    """``x.flip(dim)``, without the copy when that dim has size 1 (pad 1, the common case)."""
    return x if x.shape[dim] == 1 else x.flip(dim)


class _ReflectPad(torch.autograd.Function):
    """Reflect padding of the last two dims by ``pad`` on every side; see :func:`reflect_pad`."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, pad: int) -> Tensor:
        ctx.pad = pad
        return F.pad(x, (pad, pad, pad, pad), mode="reflect")

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        p = ctx.pad
        h, w = grad.shape[-2] - 2 * p, grad.shape[-1] - 2 * p
        # Padded row p - i (i = 1..p) is a copy of input row i, padded row p + h - 1 + i of row h - 1 - i;
        # the same for columns. Fold the padded border back onto the rows and columns it copies: first the
        # top and bottom strips (without the corners), then the left and right strips, each folded over its
        # own rows first (which takes the corners).
        out = grad[..., p : p + h, p : p + w].clone()
        out[..., 1 : p + 1, :] += _flip(grad[..., :p, p : p + w], -2)
        out[..., h - 1 - p : h - 1, :] += _flip(grad[..., p + h :, p : p + w], -2)
        for cols, dst in ((slice(0, p), slice(1, p + 1)), (slice(p + w, None), slice(w - 1 - p, w - 1))):
            strip = grad[..., cols]  # (..., h + 2p, p)
            folded = strip[..., p : p + h, :].clone()
            folded[..., 1 : p + 1, :] += _flip(strip[..., :p, :], -2)
            folded[..., h - 1 - p : h - 1, :] += _flip(strip[..., p + h :, :], -2)
            out[..., dst] += _flip(folded, -1)
        return out, None


def reflect_pad(x: Tensor, pad: int) -> Tensor:
    """``F.pad(x, (pad,) * 4, mode="reflect")``, with a cheaper backward.

    The forward is PyTorch's. The backward folds the gradient of the padded border back with slices (one copy
    of the interior and a few border-sized additions) instead of ``reflection_pad2d_backward``, which is about
    twice as slow on the CPU and, on CUDA, accumulates with atomics (not deterministic). The sums differ from
    PyTorch's only in float rounding order.

    Shapes: ``(..., H, W) -> (..., H + 2 pad, W + 2 pad)``; ``0 <= pad < min(H, W)``, as for PyTorch's reflect.
    """
    if pad == 0:
        return x
    h, w = x.shape[-2:]
    if not 0 < pad < min(h, w):
        raise ValueError(f"reflect_pad: pad must be in [0, min(H, W)) = [0, {min(h, w)}), got {pad}")
    if not (torch.is_grad_enabled() and x.requires_grad):  # evaluation: the same forward, without the Function
        return F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return _ReflectPad.apply(x, pad)


def reflect_pad_reference(x: Tensor, pad: int) -> Tensor:
    """PyTorch's reflect padding, ``F.pad(x, (pad,) * 4, mode="reflect")``: the reference of :func:`reflect_pad`."""
    return F.pad(x, (pad, pad, pad, pad), mode="reflect")


class ReflectConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose ``"reflect"`` padding goes through ``self.pad_fn`` (:func:`reflect_pad` by default).

    Same parameters, state-dict keys and outputs as ``nn.Conv2d``; other padding modes, and reflect padding
    that is not the same on all four sides, use ``nn.Conv2d``'s own path. ``pad_fn(x, pad)`` may be replaced
    on an instance (e.g. by :func:`reflect_pad_reference`) to compare implementations.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pad_fn: Callable[[Tensor, int], Tensor] = reflect_pad
        pads = set(self._reversed_padding_repeated_twice)
        self._square_pad = pads.pop() if self.padding_mode == "reflect" and len(pads) == 1 else None

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self._square_pad is None:
            return super()._conv_forward(input, weight, bias)
        return F.conv2d(
            self.pad_fn(input, self._square_pad), weight, bias, self.stride, 0, self.dilation, self.groups
        )


class _GroupWeightedSum(torch.autograd.Function):
    """See :func:`group_weighted_sum`."""

    @staticmethod
    def views(x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` as ``(B, T, G, C/G, H*W)`` and ``weights`` as ``(B, T, G, 1, H*W)``."""
        b, t, c, h, w = x.shape
        g = weights.shape[2]
        return x.contiguous().view(b, t, g, c // g, h * w), weights.contiguous().view(b, t, g, 1, h * w)

    @staticmethod
    def forward(ctx: Any, x: Tensor, weights: Tensor) -> Tensor:
        b, t, c, h, w = x.shape
        xv, wv = _GroupWeightedSum.views(x, weights)
        ctx.save_for_backward(xv, wv)
        ctx.x_shape = (b, t, c, h, w)
        return (xv * wv).sum(dim=1).view(b, c, h, w)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        xv, wv = ctx.saved_tensors
        b, t, c, h, w = ctx.x_shape
        g = wv.shape[2]
        gv = grad.reshape(b, 1, g, c // g, h * w)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            # Written into a contiguous (B, T, C, H, W) buffer: broadcasting alone may pick another layout.
            grad_x = torch.mul(gv, wv, out=torch.empty_like(xv)).view(b, t, c, h, w)
        if ctx.needs_input_grad[1]:
            grad_w = (xv * gv).sum(dim=3).view(b, t, g, h, w)
        return grad_x, grad_w


def frames_channels_last(x: Tensor) -> bool:
    """Whether ``x (B, T, C, H, W)`` holds channels-last frames: memory ordered ``(B, T, H, W, C)``, as the encoder
    of a ``channels_last`` model leaves its maps (a contiguous ``x`` counts as not)."""
    return x.dim() == 5 and not x.is_contiguous() and x.permute(0, 1, 3, 4, 2).is_contiguous()


class _GroupWeightedSumCL(torch.autograd.Function):
    """:func:`group_weighted_sum` on channels-last frames, computed in their own layout.

    In the ``(B, T, H, W, C)`` memory order the channels of a group are adjacent, so a weight shared by the
    group would broadcast over an innermost dim of size C/G, which no elementwise kernel vectorises. Instead,
    one frame at a time, the frame's weights are expanded to one per channel (``index_select``, an exact
    copy of ``(H*W, C)`` that stays in the cache) and every product runs over contiguous rows of C; the
    per-group sum of the weights' gradient is a matrix-vector product with ones. The output and
    the gradient of ``x`` keep the channels-last layout, so the convolutions around it see no layout change
    (a mixed layout sends PyTorch's elementwise kernels down their slow strided path).
    """

    @staticmethod
    def _operands(x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` as ``(B, T, H*W, C)`` (a view), ``weights`` as ``(B, T, H*W, G)`` and the channel -> group index."""
        b, t, c, h, w = x.shape
        g = weights.shape[2]
        xv = x.permute(0, 1, 3, 4, 2).reshape(b, t, h * w, c)
        wv = weights.permute(0, 1, 3, 4, 2).contiguous().view(b, t, h * w, g)  # no copy after TemporalAggregator
        return xv, wv, torch.arange(c, device=x.device) // (c // g)

    @staticmethod
    def compute(x: Tensor, weights: Tensor) -> Tensor:
        """The forward: ``x (B, T, C, H, W)`` channels-last frames -> ``(B, C, H, W)`` channels-last."""
        b, t, c, h, w = x.shape
        xv, wv, index = _GroupWeightedSumCL._operands(x, weights)
        out = xv.new_empty(b, h * w, c)
        for i in range(b):
            torch.mul(xv[i, 0], wv[i, 0].index_select(1, index), out=out[i])
            for j in range(1, t):
                out[i].addcmul_(xv[i, j], wv[i, j].index_select(1, index))
        return out.view(b, h, w, c).permute(0, 3, 1, 2)

    @staticmethod
    def forward(ctx: Any, x: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(x, weights)
        return _GroupWeightedSumCL.compute(x, weights)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, weights = ctx.saved_tensors
        b, t, c, h, w = x.shape
        g = weights.shape[2]
        xv, wv, index = _GroupWeightedSumCL._operands(x, weights)
        gv = grad.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view when grad is channels-last
        need_x, need_w = ctx.needs_input_grad[:2]
        grad_x = xv.new_empty(b, t, h * w, c) if need_x else None
        grad_w = wv.new_empty(b, t, h * w, g) if need_w else None
        ones = torch.ones(c // g, dtype=x.dtype, device=x.device)
        for i in range(b):
            for j in range(t):
                if need_x:
                    torch.mul(gv[i], wv[i, j].index_select(1, index), out=grad_x[i, j])
                if need_w:  # each group's products summed: (H*W*G, C/G) @ ones
                    torch.mv((xv[i, j] * gv[i]).view(-1, c // g), ones, out=grad_w[i, j].view(-1))
        return (
            None if grad_x is None else grad_x.view(b, t, h, w, c).permute(0, 1, 4, 2, 3),
            None if grad_w is None else grad_w.view(b, t, h, w, g).permute(0, 1, 4, 2, 3),
        )


def group_weighted_sum(x: Tensor, weights: Tensor) -> Tensor:
    """Sum over time of each channel group weighted by its own weights:
    ``out[b, gi * C/G + j] = sum_t x[b, t, gi * C/G + j] * weights[b, t, gi]`` (per pixel).

    Same values and gradients as :func:`group_weighted_sum_reference` up to float rounding order, with a
    hand-written backward that makes fewer passes over the ``(B, T, C, H, W)`` input than autograd through
    the broadcast product does.

    Shapes: ``x (B, T, C, H, W)``, ``weights (B, T, G, H, W)`` with G dividing C -> ``(B, C, H, W)``.
    """
    b, t, c, h, w = x.shape
    if weights.dim() != 5 or weights.shape[:2] != (b, t) or weights.shape[3:] != (h, w) or c % weights.shape[2]:
        raise ValueError(
            f"group_weighted_sum: weights must be (B, T, G, H, W) = ({b}, {t}, G, {h}, {w}) with G dividing "
            f"C={c}, got {tuple(weights.shape)}"
        )
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weights.requires_grad)
    if frames_channels_last(x):
        if not needs_grad:
            return _GroupWeightedSumCL.compute(x, weights)  # evaluation: without the Function
        return _GroupWeightedSumCL.apply(x, weights)
    if not needs_grad:
        xv, wv = _GroupWeightedSum.views(x, weights)  # evaluation: the same forward, without the Function
        return (xv * wv).sum(dim=1).view(b, c, h, w)
    return _GroupWeightedSum.apply(x, weights)


def group_weighted_sum_reference(x: Tensor, weights: Tensor) -> Tensor:
    """The plain broadcast-and-sum version of :func:`group_weighted_sum`, its reference."""
    b, t, c, h, w = x.shape
    g = weights.shape[2]
    return (x.reshape(b, t, g, c // g, h, w) * weights[:, :, :, None]).sum(dim=1).reshape(b, c, h, w)
