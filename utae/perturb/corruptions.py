"""Named corruptions of a Sentinel-2 image time series, each at severities 1 to 5.

Real Sentinel-2 series do not fail by Gaussian noise: they fail through clouds and their shadows, haze,
acquisitions that never arrive, bands lost on some dates, misregistered frames and a calendar that shifts from
one year to the next. This module draws those failures on the fly, in torch, for one patch or a padded batch.

Units. Every corruption except ``gaussian`` is defined on Sentinel-2 surface reflectance in PASTIS's raw units
(reflectance x 10,000: 0 is black, 10,000 a perfect reflector; real PASTIS S2 values lie roughly in 0..10,000+,
the synthetic set's in the same range). The functions take the **normalised** series ``(raw - mean[c]) / std[c]``
(what :class:`utae.pastis.dataset.PastisDataset` returns) together with the per-band ``norm=(mean, std)`` it was
normalised with, apply the corruption to the raw reflectance and return the **normalised** corrupted series.
Each raw-space operation is affine per pixel (``raw' = a * raw + b``), so it is applied to the normalised values
as ``x' = a * x + (b + (a - 1) * mean) / std``: pixels a corruption leaves alone come back bit for bit.
``gaussian`` is today's test-time noise (:func:`utae.perturb.noise.add_test_noise`, ``space="normalized"``): N(0, std) on
the normalised input, the very same draws for the same ``(seed, patch id, std)``.

Severity table (:data:`utae.perturb.kinds.SEVERITY_TABLE`; severity 0 or ``"none"`` is the identity):

=================  ==================================  =====  =====  =====  =====  =====
kind               parameter                           1      2      3      4      5
=================  ==================================  =====  =====  =====  =====  =====
gaussian           std (normalised units)              0.1    0.25   0.5    1.0    2.0
clouds             date_share (share of dates)         0.1    0.2    0.3    0.45   0.6
clouds             cover (share of a cloudy frame)     0.3    0.4    0.5    0.6    0.7
haze               date_share                          0.2    0.3    0.45   0.6    0.8
haze               opacity (mean layer opacity)        0.1    0.2    0.3    0.45   0.6
missing_dates      drop_share (share of dates removed) 0.1    0.25   0.4    0.6    0.8
band_dropout       date_share                          0.1    0.2    0.3    0.45   0.6
band_dropout       n_bands (bands lost on such a date) 1      2      3      4      5
misregistration    max_shift (pixels, per axis)        1      1      2      3      4
misregistration    date_share (frames shifted)         0.25   0.5    0.5    0.75   1.0
date_shift         days (whole series, sign drawn)     5      10     20     30     45
=================  ==================================  =====  =====  =====  =====  =====

Fixed physical constants (:data:`CONSTANTS`): clouds are opaque at ``CLOUD_LEVEL`` = 7,000 times a nearly flat
spectrum (:data:`CLOUD_SPECTRUM`, darker in the SWIR bands B11, B12), their shadows fall 2 to 6 pixels away in a
direction drawn per date and multiply the reflectance by 0.5 (wherever no cloud covers them); haze is a layer of
reflectance ``HAZE_LEVEL`` = 3,000 times :data:`HAZE_SPECTRUM` (strongest in blue, weak in the SWIR) mixed in as
``raw' = (1 - a) raw + a L`` with the opacity ``a`` smooth over the patch (from 0.5 to 1.5 times its mean); a lost
band reads 0 reflectance (no signal) on the dates it is lost.

How each is drawn
-----------------
* ``clouds``: ``max(1, round(date_share * T))`` dates; on each, a smooth random field (N(0, 1) on a grid of one
  node per 8 pixels, upsampled bilinearly) is thresholded so that exactly ``round(cover * H * W)`` pixels are
  cloud; the shadow is the cloud mask shifted by the date's offset (no wrap-around) minus the cloud.
* ``haze``: ``max(1, round(date_share * T))`` dates; opacity ``a(y, x) = opacity * (0.5 + sigmoid(f))`` with
  ``f`` a smooth field (one node per 16 pixels).
* ``missing_dates``: ``min(round(drop_share * T), T - 1)`` acquisitions removed, frames and dates together; the
  series gets shorter and always keeps at least one date.
* ``band_dropout``: ``max(1, round(date_share * T))`` dates, each losing ``n_bands`` distinct bands.
* ``misregistration``: ``round(date_share * T)`` frames, each shifted by integer ``(dy, dx)`` drawn uniformly in
  ``[-max_shift, max_shift]^2`` minus ``(0, 0)``; pixels shifted in from outside the patch repeat its border.
* ``date_shift``: every acquisition day plus or minus ``days`` (the sign drawn per patch).

Determinism. The draws of a patch come from a CPU ``torch.Generator`` seeded from ``(seed, patch id, kind,
severity)`` alone, through ``numpy.random.SeedSequence`` and a CRC-32 of the kind's name (never Python's
``hash()``), and only from the patch's real (non-padded) frames: they do not depend on the batch, its padding, the
order, the process, the worker count or the device. Inputs are never modified; padded frames come back untouched.

Public names: :data:`CONSTANTS`, :data:`CLOUD_SPECTRUM`, :data:`HAZE_SPECTRUM`, :func:`corrupt` (one patch
``(T, C, H, W)``), :func:`corrupt_batch` (a padded batch ``(B, T, C, H, W)``), :func:`check_series_length`,
:func:`corruption_generator`. The kinds, the severity table and its checks and the config values
(:data:`~utae.perturb.kinds.KINDS`, :data:`~utae.perturb.kinds.SEVERITIES`,
:data:`~utae.perturb.kinds.SEVERITY_TABLE`, :func:`~utae.perturb.kinds.corruption_params`,
:func:`~utae.perturb.kinds.severity_table_rows`, :func:`~utae.perturb.kinds.check_kind`,
:func:`~utae.perturb.kinds.check_severity`, :class:`~utae.perturb.kinds.CorruptionSpec`,
:func:`~utae.perturb.kinds.parse_corruption_spec`: a config field's value ``"clouds:3"``, ``"clouds:1-5"`` or
``{"kind": "clouds", "severity": [1, 5], "fraction": 0.25}``) live in the torch-free :mod:`utae.perturb.kinds`
(so that :class:`utae.config.run_config.RunConfig` validates its fields without torch); import them from there.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from utae.perturb.kinds import SEVERITY_TABLE, check_kind, check_severity, kind_seed
from utae.perturb.noise import add_test_noise, seeded_generator

__all__ = [
    "CONSTANTS",
    "CLOUD_SPECTRUM",
    "HAZE_SPECTRUM",
    "corrupt",
    "corrupt_batch",
    "check_series_length",
    "corruption_generator",
]

#: Relative cloud reflectance per band (B2 B3 B4 B5 B6 B7 B8 B8A B11 B12): bright and flat, darker in the SWIR.
CLOUD_SPECTRUM: tuple[float, ...] = (1.0, 0.99, 0.98, 0.98, 0.97, 0.96, 0.95, 0.95, 0.72, 0.52)
#: Relative haze reflectance per band: scattering is strongest in blue and weak in the SWIR.
HAZE_SPECTRUM: tuple[float, ...] = (1.0, 0.9, 0.8, 0.75, 0.7, 0.65, 0.6, 0.6, 0.4, 0.3)
#: The fixed physical constants of the corruptions (raw units: reflectance x 10,000; lengths in pixels).
CONSTANTS: dict[str, float | int] = {
    "cloud_level": 7000.0,          # an opaque cloud's reflectance (times CLOUD_SPECTRUM)
    "cloud_cell_px": 8,             # one node of the cloud field's noise grid per 8 pixels
    "shadow_offset_min_px": 2,      # a shadow lies 2..6 px from its cloud, in a direction drawn per date
    "shadow_offset_max_px": 6,
    "shadow_factor": 0.5,           # reflectance in a shadow is multiplied by this
    "haze_level": 3000.0,           # the haze layer's reflectance (times HAZE_SPECTRUM)
    "haze_cell_px": 16,             # one node of the haze opacity field per 16 pixels
    "dropout_value": 0.0,           # a lost band reads 0 reflectance
}

_STREAM = 11  # keeps corruption draws apart from the noise module's streams (1, 2, 3, 7)
_NONE = ("none", 0)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def check_series_length(kind: str, severity: int, n_dates: int) -> None:
    """Raise a one-line ValueError, naming ``kind`` and ``severity``, when the series has no real date to corrupt
    (``n_dates < 1``: every frame padded): every kind needs at least one real date."""
    if n_dates < 1:
        raise ValueError(f"{kind}:{severity} needs a series with at least 1 real date to corrupt; got "
                         f"n_dates={n_dates} (every frame is padding: pad_mask is True on all of them)")


# --------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------


def corruption_generator(seed: int, patch_id: int, kind: str, severity: int) -> torch.Generator:
    """The CPU generator of ``kind`` at ``severity`` on patch ``patch_id`` under run seed ``seed``: seeded from
    those four alone (the kind through the CRC-32 of its name, stable across processes and versions)."""
    key = [int(seed), _STREAM, int(patch_id), kind_seed(kind), int(severity)]
    if any(k < 0 for k in key):
        raise ValueError(f"seed and patch_id must be >= 0; got seed={seed}, patch_id={patch_id}")
    return seeded_generator(*key)


# --------------------------------------------------------------------------------------------------
# Helpers (all on CPU draws, then moved to the image's device)
# --------------------------------------------------------------------------------------------------


def _norm_tensors(norm: Any, n_bands: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm=(mean, std)`` -> two float32 ``(C, 1, 1)`` tensors on ``device``."""
    try:
        mean, std = norm
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float32).reshape(-1))
        std = torch.as_tensor(np.asarray(std, dtype=np.float32).reshape(-1))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"norm must be a pair (mean, std) of {n_bands} numbers each; got {type(norm).__name__}") \
            from exc
    if mean.shape != (n_bands,) or std.shape != (n_bands,):
        raise ValueError(f"norm: mean and std must each hold {n_bands} values (one per band); got "
                         f"{tuple(mean.shape)} and {tuple(std.shape)}")
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all()) or bool((std <= 0).any()):
        raise ValueError("norm: mean must be finite and std finite and > 0 for every band")
    return mean.reshape(-1, 1, 1).to(device), std.reshape(-1, 1, 1).to(device)


def _n_of(share: float, n: int, at_least_one: bool = True) -> int:
    k = int(math.floor(share * n + 0.5))
    return min(n, max(1, k) if at_least_one else k)


def _pick(n_pick: int, n: int, g: torch.Generator) -> torch.Tensor:
    """``n_pick`` distinct sorted indices among ``n``."""
    return torch.randperm(n, generator=g)[:n_pick].sort().values


def _smooth_field(n: int, h: int, w: int, cell: int, g: torch.Generator) -> torch.Tensor:
    """``(n, h, w)`` smooth N(0, 1)-ish fields: a noise grid of one node per ``cell`` px upsampled bilinearly."""
    gh, gw = h // cell + 2, w // cell + 2
    low = torch.randn((n, 1, gh, gw), generator=g)
    return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=True)[:, 0]


def _top_share(field: torch.Tensor, n_pixels: int) -> torch.Tensor:
    """Boolean ``(n, h, w)``: the ``n_pixels`` highest values of each field."""
    n, h, w = field.shape
    order = field.reshape(n, -1).argsort(dim=1, descending=True, stable=True)
    mask = torch.zeros(n, h * w, dtype=torch.bool)
    mask.scatter_(1, order[:, :n_pixels], True)
    return mask.reshape(n, h, w)


def _shift_index(n: int, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For shifts ``(k,)``: source indices ``(k, n)`` (clamped to the border) and whether they fell inside."""
    src = torch.arange(n)[None, :] - shift[:, None]
    return src.clamp(0, n - 1), (src >= 0) & (src < n)


def _shift_frames(frames: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, fill_border: bool) -> torch.Tensor:
    """Shift ``frames`` ``(k, ..., H, W)`` by integer ``(dy, dx)`` ``(k,)`` each (content moves by +dy, +dx).
    Pixels shifted in from outside repeat the border (``fill_border``) or are zero."""
    k, h, w = frames.shape[0], frames.shape[-2], frames.shape[-1]
    iy, vy = _shift_index(h, dy)
    ix, vx = _shift_index(w, dx)
    dev = frames.device
    lead = frames.shape[1:-2]
    flat = frames.reshape(k, -1, h, w)
    frame_i = torch.arange(k, device=dev)[:, None, None, None]
    band_i = torch.arange(flat.shape[1], device=dev)[None, :, None, None]
    out = flat[frame_i, band_i, iy.to(dev)[:, None, :, None], ix.to(dev)[:, None, None, :]]
    if not fill_border:
        valid = (vy[:, :, None] & vx[:, None, :]).to(dev)[:, None]
        out = out * valid.to(out.dtype)
    return out.reshape(k, *lead, h, w)


def _affine(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalised ``x`` after the raw-space map ``raw' = a * raw + b`` (all broadcast over ``(..., C, H, W)``)."""
    return a * x + (b + (a - 1.0) * mean) / std


# --------------------------------------------------------------------------------------------------
# The corruptions of a patch's real frames: (T, C, H, W) normalised, T >= 1
# --------------------------------------------------------------------------------------------------


def _clouds(x: torch.Tensor, dates: torch.Tensor, p: Mapping[str, Any], g: torch.Generator,
            mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t, c, h, w = x.shape
    which = _pick(_n_of(p["date_share"], t), t, g)
    k = len(which)
    cloud = _top_share(_smooth_field(k, h, w, int(CONSTANTS["cloud_cell_px"]), g), _n_of(p["cover"], h * w, False))
    lo, hi = int(CONSTANTS["shadow_offset_min_px"]), int(CONSTANTS["shadow_offset_max_px"])
    dist = lo + (hi - lo) * torch.rand(k, generator=g)
    angle = 2.0 * math.pi * torch.rand(k, generator=g)
    dy, dx = torch.round(dist * torch.sin(angle)).long(), torch.round(dist * torch.cos(angle)).long()
    shadow = _shift_frames(cloud.float(), dy, dx, fill_border=False) > 0.5
    shadow &= ~cloud
    dev = x.device
    cloud, shadow = cloud.to(dev)[:, None], shadow.to(dev)[:, None]
    spectrum = torch.tensor(CLOUD_SPECTRUM, dtype=torch.float32, device=dev).reshape(-1, 1, 1)
    frames = x[which.to(dev)]
    zero, one = torch.zeros((), device=dev), torch.ones((), device=dev)
    cloudy = _affine(frames, zero, float(CONSTANTS["cloud_level"]) * spectrum, mean, std)
    shaded = _affine(frames, one * float(CONSTANTS["shadow_factor"]), zero, mean, std)
    frames = torch.where(cloud, cloudy, torch.where(shadow, shaded, frames))
    out = x.clone()
    out[which.to(dev)] = frames.to(x.dtype)
    return out, dates


def _haze(x: torch.Tensor, dates: torch.Tensor, p: Mapping[str, Any], g: torch.Generator,
          mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t, c, h, w = x.shape
    which = _pick(_n_of(p["date_share"], t), t, g)
    field = _smooth_field(len(which), h, w, int(CONSTANTS["haze_cell_px"]), g)
    opacity = (float(p["opacity"]) * (0.5 + torch.sigmoid(field))).clamp(0.0, 1.0)
    dev = x.device
    a = (1.0 - opacity).to(dev)[:, None]
    level = float(CONSTANTS["haze_level"]) * torch.tensor(HAZE_SPECTRUM, dtype=torch.float32).reshape(-1, 1, 1)
    b = opacity[:, None] * level[None]
    out = x.clone()
    out[which.to(dev)] = _affine(x[which.to(dev)], a, b.to(dev), mean, std).to(x.dtype)
    return out, dates


def _missing_dates(x: torch.Tensor, dates: torch.Tensor, p: Mapping[str, Any], g: torch.Generator,
                   mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = x.shape[0]
    n_drop = min(_n_of(p["drop_share"], t, at_least_one=False), t - 1)
    keep = _pick(t - n_drop, t, g)
    return x[keep.to(x.device)].clone(), dates[keep.to(dates.device)].clone()


def _band_dropout(x: torch.Tensor, dates: torch.Tensor, p: Mapping[str, Any], g: torch.Generator,
                  mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t, c = x.shape[:2]
    which = _pick(_n_of(p["date_share"], t), t, g)
    n_bands = min(int(p["n_bands"]), c)
    lost = torch.zeros(t, c, dtype=torch.bool)
    bands = torch.rand((len(which), c), generator=g).argsort(dim=1)[:, :n_bands]
    lost[which[:, None], bands] = True
    dead = ((float(CONSTANTS["dropout_value"]) - mean) / std).to(x.dtype)  # (C, 1, 1)
    return torch.where(lost.to(x.device)[:, :, None, None], dead, x), dates


def _misregistration(x: torch.Tensor, dates: torch.Tensor, p: Mapping[str, Any], g: torch.Generator,
                     mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = x.shape[0]
    k = int(p["max_shift"])
    which = _pick(_n_of(p["date_share"], t), t, g)
    side = 2 * k + 1
    code = torch.randint(0, side * side - 1, (len(which),), generator=g)
    code = code + (code >= (side * side) // 2).long()  # skip (0, 0): every picked frame moves
    dy, dx = code // side - k, code % side - k
    out = x.clone()
    out[which.to(x.device)] = _shift_frames(x[which.to(x.device)], dy, dx, fill_border=True)
    return out, dates


def _date_shift(x: torch.Tensor, dates: torch.Tensor, p: Mapping[str, Any], g: torch.Generator,
                mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sign = 1 if float(torch.rand((), generator=g)) < 0.5 else -1
    return x.clone(), dates + sign * int(p["days"])


_APPLY = {"clouds": _clouds, "haze": _haze, "missing_dates": _missing_dates, "band_dropout": _band_dropout,
          "misregistration": _misregistration, "date_shift": _date_shift}


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


def _check_patch(image: Any, dates: Any, pad_mask: Any) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or not image.is_floating_point():
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a float tensor (T, C, H, W); got {got}")
    t = image.shape[0]
    if not isinstance(dates, torch.Tensor) or tuple(dates.shape) != (t,):
        got = tuple(dates.shape) if isinstance(dates, torch.Tensor) else type(dates).__name__
        raise ValueError(f"dates must be a tensor ({t},) matching image (T, C, H, W); got {got}")
    if pad_mask is None:
        return torch.zeros(t, dtype=torch.bool)
    if not isinstance(pad_mask, torch.Tensor) or tuple(pad_mask.shape) != (t,) or pad_mask.dtype != torch.bool:
        got = (tuple(pad_mask.shape), pad_mask.dtype) if isinstance(pad_mask, torch.Tensor) else type(pad_mask).__name__
        raise ValueError(f"pad_mask must be a bool tensor ({t},), True on padded frames; got {got}")
    return pad_mask.cpu()


def corrupt(image: torch.Tensor, dates: torch.Tensor, kind: str, severity: int | str | None, *, seed: int,
            patch_id: int, norm: tuple[Any, Any] | None = None, pad_mask: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One patch's series with corruption ``kind`` at ``severity``.

    Args:
        image: ``(T, C, H, W)`` float, **normalised** (``(raw - mean) / std`` per band); never modified.
        dates: ``(T,)`` int days since the reference date; never modified.
        kind: one of :data:`utae.perturb.kinds.KINDS`.
        severity: 1..5; 0, None or ``"none"`` return copies of the inputs.
        seed: the run's seed; patch_id: the patch's id (both >= 0). The draws depend on
            ``(seed, patch_id, kind, severity)`` and the number of real frames alone.
        norm: ``(mean, std)``, each ``(C,)``: the statistics ``image`` was normalised with (needed by every kind
            but ``gaussian``, ``missing_dates``, ``misregistration`` and ``date_shift``, accepted by all).
        pad_mask: ``(T,)`` bool, True on padded frames; None when no frame is padded.

    Returns:
        ``(image, dates, pad_mask)``: new tensors on the input's device. Padded frames (and their dates) are
        unchanged. With ``missing_dates`` the series is shorter: ``(T - n_removed, C, H, W)``, the kept real
        frames in their order followed by the padded ones; otherwise the shapes are the input's.

    Raises:
        ValueError: an unknown kind, a severity outside 0..5, a missing or malformed ``norm``, bad shapes, a
            series with no real date.
    """
    check_kind(kind)
    sev = check_severity(severity)
    pad = _check_patch(image, dates, pad_mask)
    if sev == 0:
        return image.clone(), dates.clone(), pad.to(image.device if pad_mask is None else pad_mask.device).clone()
    real = torch.nonzero(~pad).flatten()
    check_series_length(kind, sev, len(real))
    params = SEVERITY_TABLE[kind][sev]
    out_pad_device = image.device if pad_mask is None else pad_mask.device
    needs_norm = kind in ("clouds", "haze", "band_dropout")
    if norm is None and needs_norm:
        raise ValueError(f"{kind} is defined on raw reflectance: pass norm=(mean, std), the (C,) statistics the "
                         "image was normalised with")
    mean, std = (_norm_tensors(norm, image.shape[1], image.device) if norm is not None
                 else (torch.zeros(()), torch.ones(())))
    if kind == "gaussian":
        g = None  # the draws are add_test_noise's, from (seed, patch_id, std)
    else:
        g = corruption_generator(seed, patch_id, kind, sev)
    real_d = real.to(image.device)
    if kind == "gaussian":
        frames = image[real_d]
        x = add_test_noise(frames[None], torch.zeros((1, len(real)), dtype=torch.bool),
                           torch.tensor([int(patch_id)]), float(params["std"]), seed=int(seed))[0]
        d = dates[real.to(dates.device)].clone()
    else:
        x, d = _APPLY[kind](image[real_d], dates[real.to(dates.device)], params, g, mean, std)
    if kind == "missing_dates" or len(real) < image.shape[0]:
        padded = torch.nonzero(pad).flatten()
        if kind == "missing_dates":
            out_img = torch.cat([x, image[padded.to(image.device)]])
            out_dates = torch.cat([d, dates[padded.to(dates.device)]])
            out_pad = torch.cat([torch.zeros(len(x), dtype=torch.bool), torch.ones(len(padded), dtype=torch.bool)])
            return out_img, out_dates, out_pad.to(out_pad_device)
        out_img, out_dates = image.clone(), dates.clone()
        out_img[real_d] = x
        out_dates[real.to(dates.device)] = d
        return out_img, out_dates, pad.to(out_pad_device).clone()
    return x, d, pad.to(out_pad_device).clone()


def corrupt_batch(image: torch.Tensor, dates: torch.Tensor, kind: str, severity: int | str | None, *, seed: int,
                  patch_ids: Sequence[int] | torch.Tensor, norm: tuple[Any, Any] | None = None,
                  pad_mask: torch.Tensor | None = None, pad_value: float = 0.0
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`corrupt` on each patch of a padded batch.

    Shapes: ``image (B, T, C, H, W)`` normalised, ``dates (B, T)``, ``patch_ids (B,)``, ``pad_mask (B, T)`` bool
    (True on padding; None: nothing padded) -> ``(image (B, T', C, H, W), dates (B, T'), pad_mask (B, T'))``.
    ``T' = T`` except for ``missing_dates``, where ``T'`` is the longest corrupted series and the shorter ones are
    padded with ``pad_value`` (dates 0), as :func:`utae.pastis.dataset.pad_collate` pads. Each patch's corruption is the one
    :func:`corrupt` gives it alone.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 5:
        raise ValueError(f"image must be a tensor (B, T, C, H, W); got "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    ids = [int(i) for i in (patch_ids.tolist() if isinstance(patch_ids, torch.Tensor) else patch_ids)]
    if len(ids) != image.shape[0]:
        raise ValueError(f"patch_ids must hold one id per patch ({image.shape[0]}); got {len(ids)}")
    parts = [corrupt(image[i], dates[i], kind, severity, seed=seed, patch_id=pid, norm=norm,
                     pad_mask=None if pad_mask is None else pad_mask[i]) for i, pid in enumerate(ids)]
    t_new = max(p[0].shape[0] for p in parts)
    if all(p[0].shape[0] == t_new for p in parts):
        return (torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts]),
                torch.stack([p[2] for p in parts]))
    b = len(parts)
    out = torch.full((b, t_new, *image.shape[2:]), float(pad_value), dtype=image.dtype, device=image.device)
    out_dates = torch.zeros((b, t_new), dtype=dates.dtype, device=dates.device)
    out_pad = torch.ones((b, t_new), dtype=torch.bool, device=parts[0][2].device)
    for i, (x, d, m) in enumerate(parts):
        n = int((~m).sum())
        out[i, :n], out_dates[i, :n], out_pad[i, :n] = x[:n], d[:n], False
    return out, out_dates, out_pad
