"""The Gaussian-noise augmentation of the robustness study.

* :func:`add_noise` is the functional core: N(0, std) added to every non-padded frame of an image
  time series, padded frames returned bit-for-bit unchanged, the input never modified.
* :func:`add_test_noise` is the test-time noise of a padded batch ``(B, T, C, H, W)``: the noise of a
  patch depends only on ``(seed, patch_id, std)``, whatever the batch, the processes or the device.
* :class:`NoiseSpec` describes the training augmentation: how strong (``std``), on which fraction of
  the training samples, in which space (the normalised model input, or raw reflectance x 10,000),
  fixed per sample or redrawn each epoch, and the seed.
* :class:`NoisyDataset` applies a :class:`NoiseSpec` on the fly to the items of a dataset.

Noise spaces. ``"normalized"``: ``std`` is the standard deviation of the noise added to the
model's input (the image after per-channel normalisation). ``"raw"``: ``std`` is in the units of the
raw Sentinel-2 data (reflectance x 10,000), added before normalisation; since normalisation divides
channel ``c`` by ``channel_std[c]``, this is the same as adding noise of standard deviation
``std / channel_std[c]`` to channel ``c`` of the normalised image, which is what is done here.

Determinism. Which samples are noisy depends only on ``(seed, len(dataset), fraction)``. The noise of
sample ``i`` is drawn from a generator seeded by ``(seed, i)`` (the same noise every epoch, as if the
dataset had been noised once in pre-processing) or, with ``resample=True``, by ``(seed, i, epoch)``.
Nothing depends on the global RNG, the DataLoader worker count, or the order in which items are read.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from utae.util.checks import item_index

__all__ = [
    "NOISE_SPACES",
    "add_noise",
    "add_test_noise",
    "normalized_std",
    "seeded_generator",
    "select_items",
    "select_noisy",
    "NoiseSpec",
    "NoisyDataset",
]

NOISE_SPACES: tuple[str, ...] = ("normalized", "raw")

# Stream tags that keep the sample selection and the noise draws independent of each other.
_SELECT_STREAM = 1
_FIXED_STREAM = 2
_RESAMPLE_STREAM = 3
_TEST_STREAM = 7  # keeps test-time noise independent of the training noise streams

StdLike = float | Sequence[float] | np.ndarray | torch.Tensor
ImageLike = torch.Tensor | np.ndarray


# --------------------------------------------------------------------------------------------------
# Functional core
# --------------------------------------------------------------------------------------------------


def _std_array(std: Any) -> np.ndarray:
    """Validate ``std`` (a scalar, or one value per channel) and return it as float64 numpy, ndim 0 or 1."""
    if isinstance(std, torch.Tensor):
        std = std.detach().cpu().numpy()
    try:
        arr = np.asarray(std, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"std must be a non-negative number or one per channel, got {std!r}") from exc
    if arr.ndim > 1:
        raise ValueError(f"std must be a scalar or a (C,) sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"std must be finite and >= 0, got {std!r}")
    return arr


def _check_image(image: Any) -> None:
    if not isinstance(image, (torch.Tensor, np.ndarray)):
        raise TypeError(f"image must be a torch tensor or a numpy array, got {type(image).__name__}")
    if image.ndim not in (4, 5):
        raise ValueError(f"image must be (T, C, H, W) or (B, T, C, H, W), got shape {tuple(image.shape)}")
    is_float = image.is_floating_point() if isinstance(image, torch.Tensor) else image.dtype.kind == "f"
    if not is_float:
        raise TypeError(f"image must be floating point, got dtype {image.dtype}")


def _frame_mask(pad_mask: Any, image: ImageLike) -> np.ndarray | torch.Tensor | None:
    """``pad_mask`` (T,) or (B, T), True = padded -> boolean "frame is noised" mask of ``image.shape[:-3]``."""
    if pad_mask is None:
        return None
    frames = tuple(image.shape[:-3])
    if tuple(pad_mask.shape) != frames:
        raise ValueError(
            f"pad_mask must have shape {frames} (the leading (T,) or (B, T) dims of image), "
            f"got {tuple(pad_mask.shape)}"
        )
    if isinstance(image, torch.Tensor):
        mask = torch.as_tensor(pad_mask, device=image.device)
        if mask.dtype != torch.bool:
            raise TypeError(f"pad_mask must be boolean (True = padded frame), got dtype {mask.dtype}")
        return ~mask
    mask = pad_mask.detach().cpu().numpy() if isinstance(pad_mask, torch.Tensor) else np.asarray(pad_mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"pad_mask must be boolean (True = padded frame), got dtype {mask.dtype}")
    return ~mask


def _std_for(std: np.ndarray, n_channels: int) -> np.ndarray:
    """Shape ``std`` to broadcast over ``(..., C, H, W)``: ``()`` or ``(C, 1, 1)``."""
    if std.ndim == 0:
        return std
    if std.shape[0] != n_channels:
        raise ValueError(f"std has {std.shape[0]} values but image has {n_channels} channels")
    return std.reshape(n_channels, 1, 1)


def _add_noise_torch(image: torch.Tensor, std: np.ndarray, keep: torch.Tensor | None,
                     generator: torch.Generator | None) -> torch.Tensor:
    draw_device = generator.device if generator is not None else image.device
    noise = torch.randn(image.shape, generator=generator, dtype=torch.float32, device=draw_device)
    noise = noise.to(image.device) * torch.as_tensor(std, dtype=torch.float32, device=image.device)
    noisy = (image.to(torch.float32) + noise).to(image.dtype)
    if keep is None:
        return noisy
    return torch.where(keep[..., None, None, None], noisy, image)


def _add_noise_numpy(image: np.ndarray, std: np.ndarray, keep: np.ndarray | None, generator: Any) -> np.ndarray:
    if generator is None:
        generator = np.random.default_rng()
    if isinstance(generator, torch.Generator):
        if generator.device.type != "cpu":
            raise ValueError(f"a numpy image needs a CPU generator, got one on {generator.device}")
        noise = torch.randn(image.shape, generator=generator, dtype=torch.float32).numpy()
    elif isinstance(generator, np.random.Generator):
        noise = generator.standard_normal(image.shape, dtype=np.float32)
    else:
        raise TypeError(f"generator must be a torch.Generator or numpy Generator, got {type(generator).__name__}")
    noisy = (image.astype(np.float32, copy=False) + noise * std.astype(np.float32)).astype(image.dtype)
    if keep is None:
        return noisy
    return np.where(keep[..., None, None, None], noisy, image)


def add_noise(image: ImageLike, std: StdLike, pad_mask: Any = None, generator: Any = None) -> ImageLike:
    """Return a copy of ``image`` with N(0, std) added to every non-padded frame.

    Args:
        image: float tensor or array, ``(T, C, H, W)`` or ``(B, T, C, H, W)``. Never modified.
        std: standard deviation of the noise, >= 0: a number, or ``(C,)`` values, one per channel.
        pad_mask: ``(T,)`` or ``(B, T)`` bool, True for padded frames (those come back bit-for-bit
            unchanged); ``None`` when no frame is padded.
        generator: where the noise comes from. For a tensor: a ``torch.Generator`` (the noise is
            drawn on the generator's device, then moved to the image's), or ``None`` for the global
            torch RNG on the image's device. For an array: a ``torch.Generator`` on CPU (then the same
            seed gives the same noise as for a tensor), a ``numpy.random.Generator``, or ``None``.

    Returns:
        A new tensor/array of the same type, shape, dtype and device. With ``std == 0`` its values equal
        the input's.

    Raises:
        ValueError: ``std`` negative, NaN or infinite (or the wrong number of channels), bad shapes.
        TypeError: a non-float image, a non-boolean ``pad_mask``, an unusable generator.
    """
    std_arr = _std_array(std)
    _check_image(image)
    keep = _frame_mask(pad_mask, image)
    if not np.any(std_arr > 0):
        return image.clone() if isinstance(image, torch.Tensor) else image.copy()
    std_b = _std_for(std_arr, image.shape[-3])
    if isinstance(image, torch.Tensor):
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"a tensor image needs a torch.Generator, got {type(generator).__name__}")
        return _add_noise_torch(image, std_b, keep, generator)
    return _add_noise_numpy(image, std_b, keep, generator)


def normalized_std(std: float, space: str = "normalized", channel_std: Any = None) -> float | np.ndarray:
    """The standard deviation to add to the *normalised* image for noise ``std`` given in ``space``.

    Args:
        std: noise level, >= 0.
        space: ``"normalized"`` (returned as is) or ``"raw"`` (reflectance x 10,000 units).
        channel_std: ``(C,)`` per-channel std of the normalisation (``PastisDataset.std``), needed for "raw".

    Returns:
        ``std`` as a float for "normalized"; ``std / channel_std`` as a ``(C,)`` float64 array for "raw".
    """
    std_arr = _std_array(std)
    if std_arr.ndim != 0:
        raise ValueError(f"std must be a single number here, got shape {std_arr.shape}")
    if space not in NOISE_SPACES:
        raise ValueError(f"space must be one of {NOISE_SPACES}, got {space!r}")
    if space == "normalized":
        return float(std_arr)
    if channel_std is None:
        raise ValueError('channel_std (the (C,) normalisation std) is required when space="raw"')
    cs = np.asarray(channel_std, dtype=np.float64)
    if cs.ndim != 1 or not np.all(np.isfinite(cs)) or np.any(cs <= 0):
        raise ValueError(f"channel_std must be a (C,) array of positive finite values, got {channel_std!r}")
    return float(std_arr) / cs


# --------------------------------------------------------------------------------------------------
# Training augmentation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseSpec:
    """How the training samples are noised.

    Attributes:
        std: noise standard deviation (>= 0), in the units of ``space``. 0 disables the noise.
        fraction: fraction of the training samples that are noisy, in [0, 1]; exactly
            ``round(fraction * len(dataset))`` samples, chosen by ``seed``.
        space: ``"normalized"`` (std on the model's input) or ``"raw"`` (std in reflectance x 10,000).
        resample: False: a sample gets the same noise every epoch; True: fresh noise each epoch.
        seed: non-negative int seeding the choice of samples and the noise.
    """

    std: float = 0.0
    fraction: float = 1.0
    space: str = "normalized"
    resample: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.std, bool) or not isinstance(self.std, (int, float, np.floating, np.integer)):
            raise ValueError(f"NoiseSpec.std must be a number >= 0, got {self.std!r}")
        if not math.isfinite(self.std) or self.std < 0:
            raise ValueError(f"NoiseSpec.std must be finite and >= 0, got {self.std!r}")
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float, np.floating, np.integer)):
            raise ValueError(f"NoiseSpec.fraction must be a number in [0, 1], got {self.fraction!r}")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"NoiseSpec.fraction must lie in [0, 1], got {self.fraction!r}")
        if self.space not in NOISE_SPACES:
            raise ValueError(f"NoiseSpec.space must be one of {NOISE_SPACES}, got {self.space!r}")
        if not isinstance(self.resample, (bool, np.bool_)):
            raise ValueError(f"NoiseSpec.resample must be a bool, got {self.resample!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"NoiseSpec.seed must be an int >= 0, got {self.seed!r}")
        object.__setattr__(self, "std", float(self.std))
        object.__setattr__(self, "fraction", float(self.fraction))
        object.__setattr__(self, "resample", bool(self.resample))
        object.__setattr__(self, "seed", int(self.seed))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields."""
        return asdict(self)


def select_items(n_items: int, fraction: float, key: Sequence[int], field: str = "fraction") -> list[int]:
    """The sorted indices of ``round(fraction * n_items)`` distinct samples among ``n_items`` (Python's ``round``),
    drawn without replacement by a generator seeded from the integer tuple ``key`` (through SeedSequence).

    Raises:
        ValueError: a ``fraction > 0`` that selects no sample of ``n_items > 0`` (``round(fraction * n_items)`` is
            0, a run that would silently train without it), naming ``field``, ``n_items`` and the smallest
            fraction that selects one sample (``1 / n_items``, to 3 significant digits).
    """
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    k = int(round(fraction * n_items))
    if k == 0 and fraction > 0 and n_items > 0:
        raise ValueError(f"{field}={fraction:g} selects no sample of the {n_items} training samples "
                         f"(round({fraction:g} x {n_items}) = 0); the smallest fraction that selects one is "
                         f"{1 / n_items:.3g} (1/{n_items})")
    rng = np.random.default_rng(np.random.SeedSequence(list(key)))
    return sorted(int(i) for i in rng.choice(n_items, size=k, replace=False))


def select_noisy(n_items: int, fraction: float, seed: int) -> list[int]:
    """The sorted indices of the ``round(fraction * n_items)`` noisy samples among ``n_items``, chosen by ``seed``."""
    return select_items(n_items, fraction, (seed, _SELECT_STREAM), field="noise_fraction")


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from the integer tuple ``key`` (well mixed by SeedSequence)."""
    state = np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _test_generator(seed: int, patch_id: int, std: float) -> torch.Generator:
    return seeded_generator(int(seed), _TEST_STREAM, int(patch_id), int(round(std * 1_000_000)))


def add_test_noise(image: torch.Tensor, pad_mask: torch.Tensor, patch_ids: torch.Tensor, std: float, *,
                   seed: int, space: str = "normalized", channel_std: Any = None) -> torch.Tensor:
    """Test-time noise on a padded CPU batch ``image`` ``(B, T, C, H, W)`` (``pad_mask`` ``(B, T)``,
    ``patch_ids`` ``(B,)``): a new batch with N(0, std) on every real frame; padded frames are untouched.

    The noise of a patch depends only on ``(seed, patch_id, std)``: the same for the same run seed whatever
    the batch size, the number of processes or the device. ``space="raw"`` takes ``std`` in reflectance x
    10,000 units (needs ``channel_std``, the ``(C,)`` normalisation std).
    """
    if std == 0:
        return image
    std_n = normalized_std(std, space, channel_std)
    ids = patch_ids.tolist()
    return torch.stack([add_noise(image[i], std_n, pad_mask[i], generator=_test_generator(seed, pid, std))
                        for i, pid in enumerate(ids)])


class NoisyDataset(torch.utils.data.Dataset):
    """Wrap a dataset and add Gaussian noise on the fly to ``item["image"]`` of a seeded fraction of items.

    Items are dicts as produced by ``PastisDataset`` (``"image"``: ``(T, C, H, W)`` float tensor, other
    keys passed through). The wrapped dataset and its items are never modified: a noisy item is a new
    dict with a new image. Picklable (DataLoader workers); its output depends only on the spec, the index
    and the epoch, so it is the same for any number of workers.

    Args:
        dataset: map-style dataset with ``__len__`` and ``__getitem__`` returning such dicts.
        spec: the :class:`NoiseSpec`.
        channel_std: ``(C,)`` normalisation std used for ``space="raw"``; defaults to ``dataset.std``.

    With several DataLoader workers that are not persistent, call :meth:`set_epoch` before creating the
    epoch's iterator (workers receive a copy of the dataset when the iterator is created).
    """

    def __init__(self, dataset: Any, spec: NoiseSpec, channel_std: Any = None) -> None:
        if not isinstance(spec, NoiseSpec):
            raise TypeError(f"spec must be a NoiseSpec, got {type(spec).__name__}")
        self.dataset = dataset
        self.spec = spec
        if spec.space == "raw" and channel_std is None:
            channel_std = getattr(dataset, "std", None)
            if channel_std is None:
                raise ValueError('channel_std is required for space="raw" (the dataset has no .std attribute)')
        self.channel_std = None if channel_std is None else np.asarray(channel_std, dtype=np.float64).copy()
        self.std_normalized = normalized_std(spec.std, spec.space, self.channel_std)
        self.epoch = 0
        self._noisy = frozenset(select_noisy(len(dataset), spec.fraction, spec.seed) if spec.std > 0 else ())

    @property
    def noisy_indices(self) -> list[int]:
        """Sorted indices of the items that receive noise (empty when ``spec.std == 0``)."""
        return sorted(self._noisy)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (matters only with ``spec.resample``)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def generator_for(self, index: int) -> torch.Generator:
        """The CPU generator of the noise of item ``index`` at the current epoch."""
        if self.spec.resample:
            return seeded_generator(self.spec.seed, _RESAMPLE_STREAM, index, self.epoch)
        return seeded_generator(self.spec.seed, _FIXED_STREAM, index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = item_index(index, len(self))
        item = self.dataset[index]
        if index not in self._noisy:
            return item
        if not isinstance(item, Mapping) or "image" not in item:
            raise TypeError(f"items must be dicts with an 'image' key, got {type(item).__name__}")
        out = dict(item)
        out["image"] = add_noise(item["image"], self.std_normalized, generator=self.generator_for(index))
        return out
