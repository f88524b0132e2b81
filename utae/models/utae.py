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

Two operations have hand-written backward passes that compute the same gradients as autograd through the
plain PyTorch ops, with fewer memory passes (they dominate the CPU time of small models outside the convolutions):
:func:`reflect_pad` (the reflect padding of every 3x3 and strided convolution) and :func:`group_weighted_sum`
(the ``att_group`` skip aggregation). :func:`reflect_pad_reference` and :func:`group_weighted_sum_reference`
are the plain-op versions; ``ReflectConv2d.pad_fn`` and ``TemporalAggregator.weighted_sum`` select which one a
model instance uses (the tests and ``benchmarks/bench_epoch.py`` compare them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "reflect_pad",
    "reflect_pad_reference",
    "group_weighted_sum",
    "group_weighted_sum_reference",
    "ReflectConv2d",
    "ConvLayer",
    "ConvBlock",
    "DownConvBlock",
    "UpConvBlock",
    "PositionalEncoder",
    "MultiHeadAttention",
    "LTAE2d",
    "TemporalAggregator",
    "UTAE",
]

#: Score given to padded time steps before the softmax (as in the official model): exp(-1000) is exactly 0.
PAD_SCORE = -1000.0


def _at_least_float32(x: Tensor) -> Tensor:
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
    if not (torch.is_grad_enabled() and (x.requires_grad or weights.requires_grad)):
        xv, wv = _GroupWeightedSum.views(x, weights)  # evaluation: the same forward, without the Function
        return (xv * wv).sum(dim=1).view(b, c, h, w)
    return _GroupWeightedSum.apply(x, weights)


def group_weighted_sum_reference(x: Tensor, weights: Tensor) -> Tensor:
    """The plain broadcast-and-sum version of :func:`group_weighted_sum`, its reference."""
    b, t, c, h, w = x.shape
    g = weights.shape[2]
    return (x.reshape(b, t, g, c // g, h, w) * weights[:, :, :, None]).sum(dim=1).reshape(b, c, h, w)


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


class PositionalEncoder(nn.Module):
    """Sinusoidal encoding of day offsets, ``d`` channels repeated ``repeat`` times.

    Channel ``i`` of a block is ``sin(t / T^(2*(i//2)/d))`` for even ``i`` and ``cos(...)`` for odd ``i``.
    Shapes: ``positions (B, T)`` -> ``(B, T, d * repeat)`` float32. It has no parameters and no buffers.
    """

    def __init__(self, d: int, T: int = 1000, repeat: int | None = None) -> None:
        super().__init__()
        self.d = d
        self.T = T
        self.repeat = repeat

    def forward(self, positions: Tensor) -> Tensor:
        exponent = 2 * torch.div(torch.arange(self.d, device=positions.device), 2, rounding_mode="floor") / self.d
        denom = torch.pow(float(self.T), exponent.float())
        table = positions.float()[:, :, None] / denom[None, None, :]
        table = torch.stack([table[:, :, 0::2].sin(), table[:, :, 1::2].cos()], dim=-1).flatten(-2)
        if self.repeat is not None:
            table = table.repeat(1, 1, self.repeat)
        return table


class MultiHeadAttention(nn.Module):
    """The L-TAE's attention: one learnt master query per head, keys from a linear layer, values = the
    input split into ``n_head`` channel groups.

    Args:
        n_head: number of heads.
        d_k: key and query width.
        d_in: input width; must be divisible by ``n_head``.
        attn_dropout: dropout on the attention weights.

    Shapes: ``v (N, T, d_in)``, ``pad_mask (N, T)`` or broadcastable to it (True for padded steps) ->
    ``out (N, n_head, d_in / n_head)``, ``attn (N, n_head, T)``.
    """

    def __init__(self, n_head: int, d_k: int, d_in: int, attn_dropout: float = 0.1) -> None:
        super().__init__()
        if d_in % n_head:
            raise ValueError(f"d_in ({d_in}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.d_k = d_k
        self.d_in = d_in
        self.Q = nn.Parameter(torch.zeros(n_head, d_k))
        nn.init.normal_(self.Q, mean=0.0, std=math.sqrt(2.0 / d_k))
        self.fc1_k = nn.Linear(d_in, n_head * d_k)
        nn.init.normal_(self.fc1_k.weight, mean=0.0, std=math.sqrt(2.0 / d_k))
        self.temperature = d_k**0.5
        self.dropout = nn.Dropout(attn_dropout)

    def forward(self, v: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        n, t, _ = v.shape
        keys = self.fc1_k(v).view(n, t, self.n_head, self.d_k)
        scores = torch.einsum("ntgk,gk->ngt", keys, self.Q.to(keys.dtype))
        # Softmax in float32, also under autocast: fp16 cannot hold the -1000 of padded steps exactly.
        scores = _at_least_float32(scores) / self.temperature
        if pad_mask is not None:
            scores = scores.masked_fill(pad_mask, PAD_SCORE)
        attn = self.dropout(torch.softmax(scores, dim=-1))
        values = v.view(n, t, self.n_head, self.d_in // self.n_head)
        out = torch.einsum("ngt,ntgc->ngc", attn.to(values.dtype), values)
        return out, attn


class LTAE2d(nn.Module):
    """Lightweight Temporal Attention Encoder, applied to every pixel of a ``(B, T, C, h, w)`` feature map.

    Args:
        in_channels: input width C.
        n_head, d_k: attention heads and key width.
        mlp: widths of the MLP applied to the concatenated head outputs; ``mlp[0]`` must equal ``d_model``.
        dropout: dropout after the MLP.
        d_model: width the input is projected to by ``inconv`` (a 1x1 Conv1d).
        T: period of the positional encoding.
        return_att: also return the attention.
        positional_encoding: add the sinusoidal encoding of the day offsets.

    Shapes: ``x (B, T, C, h, w)``, ``batch_positions (B, T)``, ``pad_mask (B, T)`` ->
    ``out (B, mlp[-1], h, w)`` and ``attn (n_head, B, T, h, w)``.
    """

    def __init__(
        self,
        in_channels: int = 128,
        n_head: int = 16,
        d_k: int = 4,
        mlp: Sequence[int] = (256, 128),
        dropout: float = 0.2,
        d_model: int | None = 256,
        T: int = 1000,
        return_att: bool = False,
        positional_encoding: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.mlp_widths = list(mlp)
        self.return_att = return_att
        self.n_head = n_head
        if d_model is not None:
            self.d_model = d_model
            self.inconv = nn.Conv1d(in_channels, d_model, 1)
        else:
            self.d_model = in_channels
            self.inconv = None
        if self.mlp_widths[0] != self.d_model:
            raise ValueError(f"mlp[0] ({self.mlp_widths[0]}) must equal d_model ({self.d_model})")
        if positional_encoding:
            self.positional_encoder = PositionalEncoder(self.d_model // n_head, T=T, repeat=n_head)
        else:
            self.positional_encoder = None
        self.attention_heads = MultiHeadAttention(n_head=n_head, d_k=d_k, d_in=self.d_model)
        self.in_norm = nn.GroupNorm(num_groups=n_head, num_channels=in_channels)
        self.out_norm = nn.GroupNorm(num_groups=n_head, num_channels=self.mlp_widths[-1])
        layers: list[nn.Module] = []
        for i in range(len(self.mlp_widths) - 1):
            layers += [
                nn.Linear(self.mlp_widths[i], self.mlp_widths[i + 1]),
                nn.BatchNorm1d(self.mlp_widths[i + 1]),
                nn.ReLU(),
            ]
        self.mlp = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, batch_positions: Tensor | None = None, pad_mask: Tensor | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        # The L-TAE runs in float32 even under autocast: in bfloat16 the sum of the features and the date
        # encoding keeps too few bits to tell nearby days apart (short bf16 runs lost about 5 mIoU points),
        # and at 1/8 of the resolution it is a small share of the model's FLOPs.
        with torch.autocast(x.device.type, enabled=False):
            return self._forward(_at_least_float32(x), batch_positions, pad_mask)

    def _forward(
        self, x: Tensor, batch_positions: Tensor | None, pad_mask: Tensor | None
    ) -> Tensor | tuple[Tensor, Tensor]:
        b, t, c, h, w = x.shape
        # One sequence per pixel: (B*h*w, T, C), pixels in (b, h, w) order as in the official model.
        out = x.permute(0, 3, 4, 1, 2).reshape(b * h * w, t, c)
        # GroupNorm over (channels of a group) x (all T steps): it normalises a (N, C, T) view.
        out = self.in_norm(out.transpose(1, 2)).transpose(1, 2)
        if self.inconv is not None:
            out = F.linear(out, self.inconv.weight.squeeze(-1), self.inconv.bias)
        if self.positional_encoder is not None:
            if batch_positions is None:
                raise ValueError("batch_positions (B, T) is required when positional_encoding is on")
            pe = self.positional_encoder(batch_positions).to(out.dtype)  # (B, T, d_model)
            out = (out.view(b, h * w, t, self.d_model) + pe[:, None]).view(b * h * w, t, self.d_model)
        mask = None
        if pad_mask is not None:
            mask = pad_mask[:, None, None, :].expand(b, h * w, 1, t).reshape(b * h * w, 1, t)
        out, attn = self.attention_heads(out, pad_mask=mask)  # (N, n_head, d/n_head), (N, n_head, T)
        out = self.dropout(self.mlp(out.reshape(b * h * w, self.d_model)))
        out = self.out_norm(out)
        out = out.view(b, h, w, -1).permute(0, 3, 1, 2)
        attn = attn.view(b, h, w, self.n_head, t).permute(3, 0, 4, 1, 2)
        if self.return_att:
            return out, attn
        return out


class TemporalAggregator(nn.Module):
    """Collapses the time axis of a skip connection with the L-TAE attention.

    ``mode="att_group"``: the attention ``(n_head, B, T, h, w)`` is resized to the skip's resolution (bilinear
    upsampling, align_corners False, or average pooling when the skip is not larger), zeroed on padded frames,
    and each of the ``n_head`` channel groups of the skip is summed over T with its head's weights.
    ``"att_mean"`` uses the mean attention over heads for all channels; ``"mean"`` averages the real frames.

    Shapes: ``x (B, T, C, H, W)``, ``pad_mask (B, T)``, ``attn (n_head, B, T, h, w)`` -> ``(B, C, H, W)``.
    """

    def __init__(self, mode: str = "att_group") -> None:
        super().__init__()
        if mode not in ("att_group", "att_mean", "mean"):
            raise ValueError(f"agg_mode must be 'att_group', 'att_mean' or 'mean', got {mode!r}")
        self.mode = mode
        #: The ``att_group`` weighted sum, ``(x (B, T, C, H, W), weights (B, T, G, H, W)) -> (B, C, H, W)``.
        self.weighted_sum: Callable[[Tensor, Tensor], Tensor] = group_weighted_sum

    @staticmethod
    def _resize(attn: Tensor, size: tuple[int, int]) -> Tensor:
        """``(B, T, G, h, w) -> (B, T, G, H, W)``: bilinear upsampling, or average pooling when not larger."""
        b, t, g, h, w = attn.shape
        flat = attn.reshape(b, t * g, h, w)
        if size[0] > h:
            flat = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
        else:
            flat = F.avg_pool2d(flat, kernel_size=w // size[1])
        return flat.view(b, t, g, *flat.shape[-2:])

    def forward(self, x: Tensor, pad_mask: Tensor | None = None, attn: Tensor | None = None) -> Tensor:
        b, t, c, hh, ww = x.shape
        keep = None if pad_mask is None else (~pad_mask).to(x.dtype)  # (B, T)
        if self.mode == "mean":
            if keep is None:
                return x.mean(dim=1)
            return (x * keep[:, :, None, None, None]).sum(dim=1) / keep.sum(dim=1)[:, None, None, None]
        if attn is None:
            raise ValueError(f"agg_mode {self.mode!r} needs the L-TAE attention")
        # Zeroing the padded steps and moving the heads next to T are done at the attention's low resolution:
        # the resize treats every (b, t, head) map alone and is linear, so both commute with it exactly.
        attn = attn.to(x.dtype)
        if keep is not None:
            attn = attn * keep[None, :, :, None, None]
        weights = self._resize(attn.permute(1, 2, 0, 3, 4), (hh, ww))  # (B, T, G, H, W)
        if self.mode == "att_mean":
            return (x * weights.mean(dim=2)[:, :, None]).sum(dim=1)
        return self.weighted_sum(x, weights)


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
    """

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
    ) -> None:
        super().__init__()
        encoder_widths, decoder_widths, out_conv = list(encoder_widths), list(decoder_widths), list(out_conv)
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
        pad_cpu = pad_cpu.reshape(-1)
        all_padded = pad_cpu.view(b, t).all(dim=1)
        if bool(all_padded.any()):
            empty = all_padded.nonzero().flatten().tolist()
            raise ValueError(f"sample(s) {empty} of the batch have only padded frames; each needs at least one real frame")
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
            full = m.new_full((b * t, *m.shape[1:]), self.pad_value)
            filled.append(full.index_put_((real_idx,), m).view(b, t, *m.shape[1:]))
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
