"""The seed streams of a training run (docs/seeds.md): the initial weights, the data, the augmentation.

A run's randomness comes from three independent streams, each with its own seed
(:meth:`utae.config.run_config.RunConfig.stream_seeds`; a stream field left None takes the run's ``seed``):

* **weights** (``weights_seed``): the initial weights, drawn from the global torch CPU generator while the model
  is built (:func:`initial_model`).
* **data** (``data_seed``): the training subset (``train_limit``), the order of the training batches and the
  DataLoader workers' seeds (:mod:`utae.training.loaders`, from ``(data_seed, epoch)``), and the dropout masks:
  the global torch generators (:func:`utae.training.checkpoint.seed_everything` of ``data_seed``; in a
  multi-process run each process reseeds with ``data_seed + 1000 * rank``).
* **augment** (``augment_seed``): the training noise (which samples, which values) and the training corruption
  (which samples, their kinds, severities and draws): :class:`utae.perturb.noise.NoisyDataset` and
  :class:`utae.perturb.wrappers.CorruptedDataset`.

The evaluation draws stay with ``seed``: the test-time noise and corruptions, the validation and test subsets.

Bit-identity. Before the streams were split, one global torch generator seeded with ``seed`` drew the initial
weights and then the dropout masks. :func:`initial_model` keeps that: the dropout stream is the data stream's
generator *advanced past one initialisation of the model*, so that with ``weights_seed == data_seed`` (every
field None, or both set to ``seed``) it builds the model once, exactly as before, and with two different seeds
it builds it twice (once from ``data_seed`` to advance that stream, once from ``weights_seed`` for the weights).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["initial_model"]


def initial_model(build: Callable[[], nn.Module], *, weights_seed: int, data_seed: int) -> nn.Module:
    """The model of ``build()`` with its initial weights drawn from ``weights_seed``.

    Expects the global torch CPU generator seeded with ``data_seed`` (and not yet drawn from), as the run leaves it
    (:func:`utae.training.checkpoint.seed_everything`), and leaves it where one initialisation of the model took it:
    the dropout masks of the training that follows are the same whatever ``weights_seed`` is. ``build`` must
    construct the model on the CPU (only the CPU generator is touched; the CUDA generators keep ``data_seed``'s
    state) and draw from the global generator alone.

    Raises:
        ValueError: a seed that is not an int >= 0.
    """
    for name, value in (("weights_seed", weights_seed), ("data_seed", data_seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if weights_seed == data_seed:
        return build()
    build()  # the data stream's draws of one initialisation, discarded: its dropout masks come after them
    after = torch.default_generator.get_state()
    torch.default_generator.manual_seed(weights_seed)
    model = build()
    torch.default_generator.set_state(after)
    return model
