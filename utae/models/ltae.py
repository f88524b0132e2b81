"""The Lightweight Temporal Attention Encoder (L-TAE, Garnot & Landrieu 2020) as U-TAE uses it: the sinusoidal
:class:`PositionalEncoder` of day offsets, the :class:`MultiHeadAttention` with one learned master query per
head, :class:`LTAE2d` on every pixel's sequence of a feature map, and :class:`TemporalAggregator`, which collapses
a skip connection's time axis with the attention.

:class:`LTAE2d`'s ``in_norm`` is a GroupNorm over (channels of a group x all T steps, padded ones included); the
positional encoding is added after ``inconv``; the scores of padded steps are set to :data:`PAD_SCORE` before a
float32 softmax. Under autocast the whole L-TAE runs in float32; a float64 model keeps float64 throughout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from utae.models.ops import at_least_float32, frames_channels_last, group_weighted_sum
from torch import Tensor, nn

__all__ = ["PAD_SCORE", "PositionalEncoder", "MultiHeadAttention", "LTAE2d", "TemporalAggregator"]


PAD_SCORE = -1000.0

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
        scores = at_least_float32(scores) / self.temperature
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
            return self._forward(at_least_float32(x), batch_positions, pad_mask)

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
    def _resize(attn: Tensor, size: tuple[int, int], channels_last: bool = False) -> Tensor:
        """``(B, T, G, h, w) -> (B, T, G, H, W)``: bilinear upsampling, or average pooling when not larger.

        With ``channels_last`` the maps are resized as ``(B*T, G, h, w)`` channels-last images, so the result is
        ordered ``(B, T, H, W, G)`` in memory, the order of a channels-last model's skips; PyTorch's CPU bilinear
        kernel is also several times faster on that layout than on ``(B, T*G, h, w)`` planes of 8x8 pixels.
        """
        b, t, g, h, w = attn.shape
        if channels_last:
            flat = attn.reshape(b * t, g, h, w).contiguous(memory_format=torch.channels_last)
        else:
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
        weights = self._resize(attn.permute(1, 2, 0, 3, 4), (hh, ww), frames_channels_last(x))  # (B, T, G, H, W)
        if self.mode == "att_mean":
            return (x * weights.mean(dim=2)[:, :, None]).sum(dim=1)
        return self.weighted_sum(x, weights)


