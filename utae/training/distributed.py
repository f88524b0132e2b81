"""Multi-process training on the GPUs (or CPU processes) of one machine, started by ``torchrun``.

``torchrun --nproc_per_node=N -m utae.train --config ...`` starts N processes and tells each one its
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` through environment variables. :func:`dist_context` reads them,
:func:`init_process_group` joins the group (NCCL on CUDA, gloo on CPU), and the rest of the engine uses

* :class:`ShardSampler`: each process's share of a dataset. Training shuffles every epoch from
  ``(seed, epoch)`` and pads the shares to one length by wrapping around (every process must take the same
  number of optimizer steps); evaluation gives each process one contiguous shard, with no padding and no
  duplicate, so that the shards together hold every sample exactly once.
* :func:`all_reduce_sum`: sums the confusion matrices and loss sums of the processes, so the metrics of a
  multi-process evaluation equal those of a single-process one over the same samples.

With one process (no torchrun), every function here is a no-op and the sampler is a plain (shuffled or
sequential) sampler.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["DistContext", "dist_context", "init_process_group", "all_reduce_sum", "all_reduce_min", "barrier",
           "broadcast_buffers", "gather_objects", "ShardSampler"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a multi-process run (``world_size == 1``: a plain single-process run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True for the process that writes the run directory and shows progress (rank 0)."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from exc


def dist_context() -> DistContext:
    """This process's rank, from an initialised process group or else torchrun's environment variables."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", dist.get_rank()))
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext()
    rank = _env_int("RANK", 0)
    return DistContext(rank=rank, world_size=world, local_rank=_env_int("LOCAL_RANK", rank))


def init_process_group(ctx: DistContext, device: torch.device) -> bool:
    """Join the process group of a multi-process run; returns True when this call created it.

    NCCL is used on CUDA, gloo otherwise. A group that already exists (e.g. made by a test) is reused.
    """
    if not ctx.enabled or dist.is_initialized():
        return False
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={ctx.world_size} asks for a multi-process run, but torch.distributed is unavailable")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world_size)
    return True


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over the processes, in place (a no-op with one process); returns it."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Minimum of ``tensor`` over the processes, in place (a no-op with one process); returns it."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def gather_objects(obj: object, ctx: DistContext) -> list[object]:
    """Every process's ``obj`` (picklable), in rank order, on every process (``[obj]`` with one process)."""
    if not ctx.enabled:
        return [obj]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process (a no-op with one process).

    DDP broadcasts them before each training forward, but the last training step leaves each process with
    statistics updated by its own batch; evaluating (and keeping best weights) needs one shared model.
    """
    if ctx.enabled:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def barrier(ctx: DistContext) -> None:
    """Wait for every process (a no-op with one process)."""
    if ctx.enabled:
        dist.barrier()


class ShardSampler(Sampler[int]):
    """The indices of one process's share of a dataset of ``n`` items.

    Args:
        n: number of items.
        shuffle: True for training: a fresh permutation each epoch, drawn from ``(seed, epoch)`` only,
            dealt round-robin to the processes and padded by wrapping around so that every process gets
            ``ceil(n / world_size)`` indices. False for evaluation: process ``r`` gets the contiguous shard
            ``[r * n // world_size, (r + 1) * n // world_size)``; no padding, no duplicate.
        seed: seed of the permutations.
        rank, world_size: this process's rank and the number of processes.

    Call :meth:`set_epoch` before each epoch (the permutation depends on it).
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must lie in [0, world_size={world_size})")
        self.n, self.shuffle, self.seed = int(n), bool(shuffle), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation :meth:`__iter__` yields."""
        self.epoch = int(epoch)

    def _indices(self) -> list[int]:
        if not self.shuffle:
            lo = self.rank * self.n // self.world_size
            hi = (self.rank + 1) * self.n // self.world_size
            return list(range(lo, hi))
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, 0x5A3D]))
        order = rng.permutation(self.n).tolist()
        per_rank = -(-self.n // self.world_size) if self.n else 0
        total = per_rank * self.world_size
        while len(order) < total:  # wrap around so every process gets the same number of items
            order += order[: total - len(order)]
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        if not self.shuffle:
            return (self.rank + 1) * self.n // self.world_size - self.rank * self.n // self.world_size
        return -(-self.n // self.world_size) if self.n else 0
