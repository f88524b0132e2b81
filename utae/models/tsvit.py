"""TSViT: the Temporo-Spatial Vision Transformer for dense segmentation (Tarasiou et al., CVPR 2023).

The layers and the state-dict keys follow the official ``TSViT`` class (``TSViTdense.py``), so that its weights
load with ``strict=True``. With ``P = patch_size``, ``N = (input_size / P)**2`` patches, ``K = num_classes``:

1. patchify (``to_patch_embedding.0``, no parameters): ``(B, T, C, H, W) -> (B N, T, P P C)``, patches in
   row-major order, feature index ``(p1 P + p2) C + c``; ``to_patch_embedding.1``: Linear ``P P C -> dim``;
2. add the date embedding ``to_temporal_embedding_input`` (Linear 366 -> dim on the one-hot day of year, i.e.
   its weight column ``day`` plus its bias), the same for every patch of a frame;
3. prepend the K class tokens ``temporal_token`` (1, K, dim); ``temporal_transformer`` over the ``K + T``
   tokens of each patch; keep the K class tokens: ``(B K, N, dim)``;
4. add ``space_pos_embedding`` (1, N, dim) (this fixes H = W = ``input_size``); ``space_transformer`` over the
   N patches of each class; ``mlp_head`` (LayerNorm, Linear ``dim -> P P``): ``(B, K, N, P P)``;
5. lay the ``N P P`` values of each class out as the ``H W`` pixels (see "quirk" below) -> ``(B, K, H, W)``.

A transformer layer is pre-norm: ``x + Attn(LN(x))`` then ``x + FF(LN(x))`` (FF: Linear ``dim -> scale_dim
dim``, GELU, Linear back; dropout after the GELU, after each FF linear's output and after the attention's
output projection), and a final LayerNorm. Attention: ``to_qkv`` (no bias) split into q, k, v, each into
``heads`` heads of ``dim_head`` (channel ``head dim_head + d``), softmax of ``q k^T / sqrt(dim_head)``;
``to_out`` (Linear and Dropout) unless ``heads == 1`` and ``dim_head == dim``.

Dates (``uses_dates`` True). The official model reads the day of year (0 to 365) from an extra time channel of
the input. Here it comes from ``batch_positions``, the days since ``reference_date`` (2018-09-01 for PASTIS):
the embedding takes the day of year, counted from 0 on January 1, of the date ``reference_date + days``
(Gregorian calendar, any integer number of days, negative ones included). ``reference_date=None`` reads
``batch_positions`` as days of year directly; then a real frame's value outside 0..365 is an error. (How an
official training pipeline numbers the days of year belongs to its data loader, not to the model.)

Departures from the official code:

* Padded frames (``pad_mask``, or all values equal to ``pad_value``) are masked as keys of the temporal
  attention (and their values set to 0), so no prediction depends on how far its batch was padded; the
  official model has no mask and attends to padded dates. A series without real frames is an error.
* ``max_seq_len`` is not read by the official model (the dates enter only through the day of year, any T
  works). Here ``max_seq_len=None`` (the default) keeps that; an int makes a longer series an error.

Quirk (kept by default): the official output layout is not the inverse of the patchify. Step 5 writes the
``(patch n, unit q)`` values in that order as row-major pixels, so output pixel ``i = W r + s`` holds patch
``n = i // P**2``, unit ``q = i % P**2``: patch 0's four values land on pixels (0, 0) to (0, 3) of the first
row, whereas geometrically its unit ``q = p1 P + p2`` covers pixel ``(p1, p2)``. It is a fixed pixel
permutation that a trained model learns through, but it makes a pixel's logits come from another patch's
tokens. ``unpatchify="geometric"`` puts each patch's values back on the pixels the patch covers.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utae.models.padding import check_real_frames, resolve_pad_mask

__all__ = ["TSViT", "day_of_year", "days_to_epoch"]

N_DAYS = 366
UNPATCHIFY = ("official", "geometric")
POOLS = ("cls", "mean")
_EPOCH = datetime.date(1970, 1, 1)


def days_to_epoch(reference_date: str) -> int:
    """Days from 1970-01-01 to ``reference_date`` (ISO ``YYYY-MM-DD``)."""
    try:
        return (datetime.date.fromisoformat(reference_date) - _EPOCH).days
    except (TypeError, ValueError) as exc:
        raise ValueError(f"reference_date must be an ISO date YYYY-MM-DD or None, got {reference_date!r}") from exc


def day_of_year(epoch_days: Tensor) -> Tensor:
    """Day of year, 0 on January 1 (0..365), of dates given as integer days since 1970-01-01; any shape.

    The Gregorian calendar in integer arithmetic (years counted from March 1, so the leap day comes last).
    """
    z = epoch_days.long() + 719_468  # days since 0000-03-01
    era = torch.div(z, 146_097, rounding_mode="floor")
    doe = z - era * 146_097  # day of the 400-year era, 0..146096
    yoe = torch.div(doe - doe // 1460 + doe // 36_524 - doe // 146_096, 365, rounding_mode="floor")
    year = yoe + era * 400  # the year in which this March-based year starts
    doy_march = doe - (365 * yoe + yoe // 4 - yoe // 100)  # 0 on March 1
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    return torch.where(doy_march >= 306, doy_march - 306, doy_march + 59 + leap.long())


class Patchify(nn.Module):
    """``(B, T, C, H, W) -> (B N, T, P P C)``: patches in row-major order, feature ``(p1 P + p2) C + c``."""

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x: Tensor) -> Tensor:
        b, t, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, t, c, h // p, p, w // p, p).permute(0, 3, 5, 1, 4, 6, 2)
        return x.reshape(b * (h // p) * (w // p), t, p * p * c)


class PreNorm(nn.Module):
    """``fn(LayerNorm(x), **kwargs)``; keys ``norm``, ``fn``."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: Tensor, **kwargs: Any) -> Tensor:
        return self.fn(self.norm(x), **kwargs)


class Attention(nn.Module):
    """Multi-head self-attention: ``(B', S, dim) -> (B', S, dim)``; ``key_padding`` ``(B', S)`` bool, True for
    keys no query may attend to (each row must keep at least one key)."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        project_out = not (heads == 1 and dim_head == dim)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout)) if project_out else nn.Identity()

    def forward(self, x: Tensor, key_padding: Tensor | None = None) -> Tensor:
        b, s, _ = x.shape
        q, k, v = (t.reshape(b, s, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        mask = None if key_padding is None else ~key_padding[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # scale dim_head ** -0.5, as officially
        return self.to_out(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    """Linear ``dim -> hidden``, GELU, Dropout, Linear ``hidden -> dim``, Dropout (keys ``net.0``, ``net.3``)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Transformer(nn.Module):
    """Pre-norm transformer encoder: ``(B', S, dim) -> (B', S, dim)``; keys ``layers.l.{0,1}``, ``norm``."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PreNorm(dim, Attention(dim, heads, dim_head, dropout)),
                    PreNorm(dim, FeedForward(dim, mlp_dim, dropout)),
                ]
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, key_padding: Tensor | None = None) -> Tensor:
        for attn, ff in self.layers:
            x = attn(x, key_padding=key_padding) + x
            x = ff(x) + x
        return self.norm(x)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class TSViT(nn.Module):
    """TSViT for dense segmentation; the defaults are the official PASTIS24 configuration (1,657,476 trainable
    parameters with 19 classes, as that configuration has; 20 by default here, the protocol's).

    Args:
        input_dim: spectral bands C (the official ``num_channels`` is C + 1, the time channel).
        num_classes: classes K (as many class tokens).
        input_size: H = W of the input (the official ``img_res``); fixed by the spatial position embedding.
        patch_size: P, which must divide ``input_size``.
        dim, temporal_depth, spatial_depth, heads, dim_head, scale_dim: the transformers' width, depths, heads,
            head width and feed-forward expansion.
        dropout, emb_dropout: dropout in the transformers, after the spatial position embedding.
        pool: ``"cls"`` or ``"mean"``, checked and not used (as officially).
        max_seq_len: None (no limit, as officially) or the most frames a series may have.
        reference_date: ISO date that ``batch_positions`` count days from, or None for days of year.
        unpatchify: ``"official"`` (the official pixel layout) or ``"geometric"`` (see the module doc).
        pad_value: the value of padded frames, for the mask inferred when ``pad_mask`` is None.
    """

    uses_dates: ClassVar[bool] = True

    def __init__(
        self,
        input_dim: int = 10,
        num_classes: int = 20,
        input_size: int = 24,
        patch_size: int = 2,
        dim: int = 128,
        temporal_depth: int = 4,
        spatial_depth: int = 4,
        heads: int = 4,
        dim_head: int = 32,
        scale_dim: int = 4,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        pool: str = "cls",
        max_seq_len: int | None = None,
        reference_date: str | None = "2018-09-01",
        unpatchify: str = "official",
        pad_value: float = 0.0,
    ) -> None:
        super().__init__()
        for name in ("input_dim", "num_classes", "input_size", "patch_size", "dim", "temporal_depth",
                     "spatial_depth", "heads", "dim_head", "scale_dim"):
            _positive_int(name, locals()[name])
        if input_size % patch_size:
            raise ValueError(f"patch_size ({patch_size}) must divide input_size ({input_size})")
        for name, p in (("dropout", dropout), ("emb_dropout", emb_dropout)):
            if not 0.0 <= float(p) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {p!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if max_seq_len is not None:
            _positive_int("max_seq_len", max_seq_len)
        if unpatchify not in UNPATCHIFY:
            raise ValueError(f"unpatchify must be one of {UNPATCHIFY}, got {unpatchify!r}")
        self.input_dim, self.num_classes = input_dim, num_classes
        self.input_size, self.patch_size = input_size, patch_size
        self.max_seq_len, self.unpatchify, self.pad_value = max_seq_len, unpatchify, float(pad_value)
        self.reference_date = reference_date
        self.reference_epoch_days = None if reference_date is None else days_to_epoch(reference_date)
        self.num_patches = (input_size // patch_size) ** 2
        mlp_dim = dim * scale_dim

        self.to_patch_embedding = nn.Sequential(Patchify(patch_size), nn.Linear(patch_size**2 * input_dim, dim))
        self.to_temporal_embedding_input = nn.Linear(N_DAYS, dim)
        self.temporal_token = nn.Parameter(torch.randn(1, num_classes, dim))
        self.temporal_transformer = Transformer(dim, temporal_depth, heads, dim_head, mlp_dim, dropout)
        self.space_pos_embedding = nn.Parameter(torch.randn(1, self.num_patches, dim))
        self.space_transformer = Transformer(dim, spatial_depth, heads, dim_head, mlp_dim, dropout)
        self.dropout = nn.Dropout(emb_dropout)
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, patch_size**2))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **options: Any) -> TSViT:
        """The model of an official ``model_config`` dict (``img_res``, ``num_channels`` = bands + 1, ...);
        the keys the official model does not read (``num_features``, ``ignore_background``, ``max_seq_len``)
        are ignored, so the model accepts any T as the official one does; ``options`` add or replace options."""
        keys = ("patch_size", "dim", "temporal_depth", "spatial_depth", "heads", "dim_head", "scale_dim",
                "dropout", "emb_dropout", "pool", "num_classes")
        kwargs = {k: config[k] for k in keys if k in config}
        if "img_res" in config:
            kwargs["input_size"] = config["img_res"]
        if "num_channels" in config:
            kwargs["input_dim"] = config["num_channels"] - 1
        return cls(**{**kwargs, **options})

    def days_of_year(self, batch_positions: Tensor, pad_mask: Tensor) -> Tensor:
        """``(B, T)`` integer days -> ``(B, T)`` int64 days of year in 0..365 (0 on padded frames)."""
        if batch_positions.dtype.is_floating_point or batch_positions.dtype == torch.bool:
            raise ValueError(f"batch_positions must be an integer tensor of days, got {batch_positions.dtype}")
        days = batch_positions.long().masked_fill(pad_mask, 0)
        if self.reference_epoch_days is not None:
            return day_of_year(days + self.reference_epoch_days).masked_fill(pad_mask, 0)
        bad = (days < 0) | (days >= N_DAYS)
        if bool(bad.any()):
            value = int(days[bad][0])
            raise ValueError(f"batch_positions holds day {value}; with reference_date=None each must lie in 0..365")
        return days

    def _check_inputs(self, x: Tensor, batch_positions: Tensor, pad_mask: Tensor | None) -> None:
        if x.dim() != 5:
            raise ValueError(f"x must be 5-D (B, T, C, H, W), got shape {tuple(x.shape)}")
        b, t, c, h, w = x.shape
        if c != self.input_dim:
            raise ValueError(f"x has {c} channels (dim 2 of (B, T, C, H, W)), expected input_dim={self.input_dim}")
        if (h, w) != (self.input_size, self.input_size):
            s = self.input_size
            raise ValueError(f"x has H x W = {h}x{w}, expected input_size={s} ({s}x{s})")
        if self.max_seq_len is not None and t > self.max_seq_len:
            raise ValueError(f"x has T={t} frames, more than max_seq_len={self.max_seq_len}")
        if tuple(batch_positions.shape) != (b, t):
            raise ValueError(f"batch_positions must have shape (B, T) = {(b, t)}, got {tuple(batch_positions.shape)}")
        if pad_mask is not None and (tuple(pad_mask.shape) != (b, t) or pad_mask.dtype != torch.bool):
            raise ValueError(
                f"pad_mask must be a bool tensor of shape (B, T) = {(b, t)}, "
                f"got {pad_mask.dtype} {tuple(pad_mask.shape)}"
            )

    def forward(self, x: Tensor, batch_positions: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """Segment a batch of image time series.

        Args:
            x: ``(B, T, C, H, W)`` float images, H = W = ``input_size``.
            batch_positions: ``(B, T)`` integer days since ``reference_date`` (days of year if it is None).
            pad_mask: ``(B, T)`` bool, True for padded frames; None: a frame is padding when all its values
                equal ``pad_value``.

        Returns:
            logits ``(B, num_classes, H, W)``.
        """
        self._check_inputs(x, batch_positions, pad_mask)
        pad_mask = resolve_pad_mask(x, pad_mask, self.pad_value)
        check_real_frames(pad_mask, "tsvit")
        b, t = pad_mask.shape
        k, n = self.num_classes, self.num_patches
        doy = self.days_of_year(batch_positions.to(x.device), pad_mask)
        date_embedding = self.to_temporal_embedding_input.weight.t()[doy] + self.to_temporal_embedding_input.bias
        x = x.masked_fill(pad_mask[:, :, None, None, None], 0.0)
        tokens = self.to_patch_embedding(x)  # (B N, T, dim)
        dim = tokens.shape[-1]
        tokens = (tokens.view(b, n, t, dim) + date_embedding[:, None]).view(b * n, t, dim)
        tokens = torch.cat([self.temporal_token.expand(b * n, k, dim), tokens], dim=1)  # (B N, K + T, dim)
        key_padding = None
        if bool(pad_mask.any()):
            padding = torch.cat([pad_mask.new_zeros(b, k), pad_mask], dim=1)  # class tokens are never padding
            key_padding = padding[:, None].expand(b, n, k + t).reshape(b * n, k + t)
        tokens = self.temporal_transformer(tokens, key_padding=key_padding)[:, :k]  # (B N, K, dim)
        tokens = tokens.reshape(b, n, k, dim).permute(0, 2, 1, 3).reshape(b * k, n, dim)
        tokens = self.dropout(tokens + self.space_pos_embedding)
        tokens = self.space_transformer(tokens)
        values = self.mlp_head(tokens).view(b, k, n, -1)  # (B, K, N, P P)
        return self._layout(values)

    def _layout(self, values: Tensor) -> Tensor:
        """``(B, K, N, P P)`` head outputs -> ``(B, K, H, W)`` logits, in the ``unpatchify`` layout."""
        b, k = values.shape[:2]
        s, p = self.input_size, self.patch_size
        if self.unpatchify == "official":
            return values.permute(0, 2, 3, 1).reshape(b, s, s, k).permute(0, 3, 1, 2)
        g = s // p
        return values.view(b, k, g, g, p, p).permute(0, 1, 2, 4, 3, 5).reshape(b, k, s, s)
