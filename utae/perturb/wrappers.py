"""Training augmentation by a corruption of :mod:`utae.perturb.corruptions`: :class:`CorruptedDataset` wraps the training
set and corrupts a seeded fraction of its samples on the fly, as :class:`utae.perturb.noise.NoisyDataset` noises them.

Semantics (those of ``NoisyDataset`` with ``resample`` false, the study's setting):

* **Which samples.** Exactly ``round(fraction * len(dataset))`` samples (Python's ``round``), drawn by
  :func:`utae.perturb.noise.select_items` as :func:`utae.perturb.noise.select_noisy` draws the noisy ones, chosen by
  the run's augmentation seed (``RunConfig.augment_seed``, by default the run seed; docs/seeds.md) and the kind
  alone (:func:`select_corrupted`), in a stream of their own: the same seed's noisy and corrupted samples are
  drawn independently.
* **How.** Sample ``index`` gets the kind :meth:`utae.perturb.kinds.CorruptionSpec.kind_for` ``(seed, index)``
  (the spec's kind, or for ``"mix"`` one of the realistic kinds drawn per sample) and the severity
  :meth:`~utae.perturb.kinds.CorruptionSpec.severity_for` ``(seed, index)`` (the fixed severity, or one drawn
  uniformly in the range), then :func:`utae.perturb.corruptions.corrupt` of its normalised image and dates at that
  severity, seeded from ``(training seed, index, kind, severity)``: the
  training seed is derived from the run seed in a stream of its own, so that no training draw repeats a test-time
  draw of the same run.
* **When.** The same corruption every epoch: an item depends on ``(spec, seed, index)`` alone, never on the
  epoch, the batch, the order, the process or the number of DataLoader workers (nothing to send to workers).
* The wrapped dataset and its items are never modified; a corrupted item is a new dict with a new ``image`` and
  ``dates`` (``missing_dates`` shortens the series: :func:`utae.pastis.dataset.pad_collate` pads it back in the batch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from utae.util.checks import item_index
from utae.perturb.kinds import CorruptionSpec, kind_seed, parse_corruption_spec
from utae.perturb.corruptions import corrupt
from utae.perturb.noise import select_items

__all__ = ["CorruptedDataset", "select_corrupted", "training_seed"]

_SELECT_STREAM = 21  # which samples are corrupted (apart from the noise's streams 1, 2, 3, 7 and corruptions' 11)
_TRAIN_STREAM = 22   # the training seed of the corruption draws


def select_corrupted(n_items: int, fraction: float, seed: int, kind: str) -> list[int]:
    """The sorted indices of the ``round(fraction * n_items)`` corrupted samples among ``n_items``, chosen by
    ``(seed, kind)``."""
    return select_items(n_items, fraction, (int(seed), _SELECT_STREAM, kind_seed(kind)),
                        field="train_corruption.fraction")


def training_seed(seed: int) -> int:
    """The seed the training corruptions are drawn with, derived from the run seed (never equal to a run seed's
    own test-time draws)."""
    return int(np.random.SeedSequence([int(seed), _TRAIN_STREAM]).generate_state(1, dtype=np.uint32)[0])


class CorruptedDataset(torch.utils.data.Dataset):
    """Wrap a dataset and corrupt ``item["image"]`` and ``item["dates"]`` of a seeded fraction of its items.

    Items are dicts as :class:`utae.pastis.dataset.PastisDataset` gives them (``image`` ``(T, C, H, W)`` normalised,
    ``dates`` ``(T,)``, other keys passed through). Picklable (DataLoader workers).

    Args:
        dataset: map-style dataset of such dicts.
        spec: a training :class:`CorruptionSpec` (with a ``fraction``), or a config value of it
            (``RunConfig.train_corruption``).
        seed: the run's augmentation seed (>= 0; ``RunConfig.stream_seeds()["augment_seed"]``).
        norm: ``(mean, std)``, each ``(C,)``: the statistics ``dataset`` is normalised with (the corruptions
            defined on raw reflectance need them).
    """

    def __init__(self, dataset: Any, spec: CorruptionSpec | Mapping[str, Any], seed: int,
                 norm: tuple[Any, Any]) -> None:
        spec = parse_corruption_spec(spec, training=True, field="train_corruption")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        mean, std = (np.asarray(v, dtype=np.float64).reshape(-1).copy() for v in norm)
        self.dataset = dataset
        self.spec = spec
        self.seed = int(seed)
        self.norm = (mean, std)
        self._train_seed = training_seed(self.seed)
        assert spec.fraction is not None  # a training spec always has one
        self._chosen = frozenset(select_corrupted(len(dataset), spec.fraction, self.seed, spec.kind))

    @property
    def corrupted_indices(self) -> list[int]:
        """Sorted indices of the items that are corrupted."""
        return sorted(self._chosen)

    def kind_of(self, index: int) -> str | None:
        """The kind of item ``index`` (None for an item left clean)."""
        return self.spec.kind_for(self.seed, index) if index in self._chosen else None

    def severity_of(self, index: int) -> int:
        """The severity of item ``index`` (0 for an item left clean)."""
        return self.spec.severity_for(self.seed, index) if index in self._chosen else 0

    def set_epoch(self, epoch: int) -> None:
        """Passed on to the wrapped dataset (a :class:`utae.perturb.noise.NoisyDataset` that resamples); the corruptions
        themselves are the same every epoch."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = item_index(index, len(self))
        item = self.dataset[index]
        if index not in self._chosen:
            return item
        if not isinstance(item, Mapping) or "image" not in item or "dates" not in item:
            raise TypeError(f"items must be dicts with 'image' and 'dates', got {type(item).__name__}")
        image, dates, _ = corrupt(item["image"], item["dates"], self.kind_of(index), self.severity_of(index),
                                  seed=self._train_seed, patch_id=index, norm=self.norm)
        return {**item, "image": image, "dates": dates}
