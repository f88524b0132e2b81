"""The datasets and loaders of a run: the fold rotation's three splits, seeded subsets, the training noise and
training corruption, and loaders that shard over processes and shuffle from ``(seed, epoch)`` alone.

:func:`make_datasets` builds :class:`Splits` from a :class:`utae.config.run_config.RunConfig`; :func:`make_loader` wraps a
split in a DataLoader whose batches are :func:`utae.pastis.dataset.pad_collate` dicts (``image`` ``(B, T, C, H, W)``,
``dates`` ``(B, T)``, ``pad_mask`` ``(B, T)``, ``mask`` ``(B, H, W)``, ``patch_id`` ``(B,)``);
:func:`set_loader_epoch` makes an epoch's order, worker seeds and resampled noise depend only on
``(seed, epoch)``, so that a resumed run sees the batches an uninterrupted one would. :class:`ReplayLoader`
keeps a small evaluation split's batches in memory, so that validation every epoch and the test at every noise
level and corruption read its files once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from utae.config.run_config import RunConfig
from utae.perturb.wrappers import CorruptedDataset
from utae.pastis.layout import image_path
from utae.pastis.metadata import FOLD_ROTATIONS
from utae.util.arrays import npy_header
from utae.pastis.dataset import PastisDataset, pad_collate
from utae.training.distributed import DistContext, ShardSampler
from utae.perturb.noise import NoiseSpec, NoisyDataset

__all__ = ["Splits", "make_datasets", "make_loader", "set_loader_epoch", "ReplayLoader", "REPLAY_MAX_BYTES"]


@dataclass
class Splits:
    """The three datasets of a run and their normalisation statistics, each ``(10,)`` float32.

    ``mean`` and ``std`` are the training folds' statistics (the training noise in raw units uses ``std``).
    ``test_mean`` and ``test_std`` are those the test split is normalised with: the same arrays with
    ``norm_stats="train_folds"``, the test fold's own with ``"own_folds"`` (test-time noise in raw units and the
    de-normalised example images use them); None means ``mean`` and ``std``. ``train_folds``: the folds ``mean``
    and ``std`` come from; ``patch_size``: the side of the patches (px), read from the first training image's header.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    mean: np.ndarray
    std: np.ndarray
    test_mean: np.ndarray | None = None
    test_std: np.ndarray | None = None
    train_folds: tuple[int, ...] = ()
    patch_size: int | None = None

    def __post_init__(self) -> None:
        if self.test_mean is None:
            self.test_mean = self.mean
        if self.test_std is None:
            self.test_std = self.std


def _limit(dataset: Dataset, limit: int | None, seed: int, name: str, stream: int) -> Dataset:
    """A seeded random subset of ``limit`` items (in dataset order), or the dataset itself."""
    n = len(dataset)
    if limit is None or limit == n:
        return dataset
    if limit > n:
        raise ValueError(f"{name}={limit} but the split has only {n} patches")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC0DE, stream]))
    return Subset(dataset, sorted(rng.choice(n, size=limit, replace=False).tolist()))


def make_datasets(config: RunConfig) -> Splits:
    """Train, val and test datasets of ``config.fold``'s rotation, limited to seeded subsets, with the training
    corruption (``config.train_corruption``, :class:`utae.perturb.wrappers.CorruptedDataset`) and then the
    training noise (:class:`utae.perturb.noise.NoisyDataset`) wrapped around the training set: a sample may be corrupted
    (clouds over the scene) and then noisy, as a sensor would see it. Without a training corruption the training
    set is the one of runs written before the field existed.

    Seeds (docs/seeds.md, ``config.stream_seeds()``): the training subset from ``data_seed``, the training
    corruption and noise from ``augment_seed``, the validation and test subsets from ``seed`` (they are part of
    the evaluation, as the test-time draws are).

    Normalisation (``config.norm_stats``): ``"train_folds"`` normalises all three splits with the training
    folds' statistics (the mean over those folds of the NORM_S2_patch.json mean and std vectors);
    ``"own_folds"`` normalises each split with its own folds' statistics, as the official
    ``PASTIS_Dataset(folds=...)`` does (validation and test each with their own fold's).
    """
    train_folds, val_folds, test_folds = FOLD_ROTATIONS[config.fold - 1]
    train = PastisDataset(config.dataset_root, folds=train_folds)
    stats = None if config.norm_stats == "own_folds" else (train.mean, train.std)
    val = PastisDataset(config.dataset_root, folds=val_folds, norm_stats=stats)
    test = PastisDataset(config.dataset_root, folds=test_folds, norm_stats=stats)
    seeds = config.stream_seeds()  # docs/seeds.md: the training subset is data, the noise and corruption augment
    train_sub = _limit(train, config.train_limit, seeds["data_seed"], "train_limit", 0)
    if config.train_corruption is not None:
        train_sub = CorruptedDataset(train_sub, config.train_corruption, seeds["augment_seed"],
                                     norm=(train.mean, train.std))
    if config.noise_std > 0 and config.noise_fraction > 0:
        spec = NoiseSpec(std=config.noise_std, fraction=config.noise_fraction, space=config.noise_space,
                         resample=config.noise_resample, seed=seeds["augment_seed"])
        train_sub = NoisyDataset(train_sub, spec, channel_std=train.std)
    return Splits(train=train_sub,
                  val=_limit(val, config.val_limit, config.seed, "val_limit", 1),
                  test=_limit(test, config.test_limit, config.seed, "test_limit", 2),
                  mean=np.asarray(train.mean), std=np.asarray(train.std),
                  test_mean=np.asarray(test.mean), test_std=np.asarray(test.std), train_folds=tuple(train_folds),
                  patch_size=int(npy_header(image_path(train.root, train.ids[0])).shape[-1]))


def _seed_worker(worker_id: int) -> None:
    """Seed python and numpy in a DataLoader worker from its torch seed (set per worker by the loader)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, *, batch_size: int, train: bool, seed: int, device: torch.device,
                num_workers: int = 0, ctx: DistContext | None = None, persistent: bool = True) -> DataLoader:
    """A DataLoader over this process's share of ``dataset`` (see :class:`utae.training.distributed.ShardSampler`).

    Training shuffles each epoch from ``(seed, epoch)``; evaluation keeps every sample (no ``drop_last``).
    Batches are :func:`utae.pastis.dataset.pad_collate` dicts. ``pin_memory`` on CUDA; workers are persistent when
    there are any and ``persistent`` is True.
    """
    ctx = ctx or DistContext()
    sampler = ShardSampler(len(dataset), shuffle=train, seed=seed, rank=ctx.rank, world_size=ctx.world_size)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=pad_collate, drop_last=False,
        num_workers=num_workers, pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0 and persistent, worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )


def set_loader_epoch(loader: DataLoader, epoch: int, seed: int) -> None:
    """Make the epoch's order, worker seeds and (resampled) training noise depend only on ``(seed, epoch)``."""
    if isinstance(loader.sampler, ShardSampler):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(seed * 100_003 + epoch)



#: The most bytes of batches a :class:`ReplayLoader` keeps (the synthetic default's test split takes about 2 MB;
#: a real PASTIS test fold, about 15 GB, is read again on every pass).
REPLAY_MAX_BYTES = 512 * 2**20


class ReplayLoader:
    """An evaluation loader that reads its files once when its batches are small.

    The first complete pass over ``loader`` keeps its batches while they total at most ``max_bytes``; the
    passes after it yield those same batch dicts again, in the same order, without reading a file. A larger
    split is read again on every pass, as the plain loader would. The batches are shared between passes, so
    nothing may change them in place (evaluation never does: noise and corruptions return new tensors).
    ``len()`` and ``dataset`` are the wrapped loader's.
    """

    def __init__(self, loader: DataLoader, max_bytes: int = REPLAY_MAX_BYTES) -> None:
        self.loader = loader
        self.max_bytes = int(max_bytes)
        self._kept: list[dict] | None = None
        self._too_big = False

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def dataset(self) -> Dataset:
        return self.loader.dataset

    def __iter__(self):
        if self._kept is not None:
            yield from self._kept
            return
        kept: list[dict] = []
        size = 0
        for batch in self.loader:
            if not self._too_big:
                size += sum(t.numel() * t.element_size() for t in batch.values() if torch.is_tensor(t))
                if size <= self.max_bytes:
                    kept.append(batch)
                else:
                    self._too_big, kept = True, []
            yield batch
        if not self._too_big:  # only a pass that ran to its end is kept
            self._kept = kept
