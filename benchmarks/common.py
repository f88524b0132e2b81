"""What the benchmarks share: timing with device synchronisation, and the U-TAE training step they time."""

from __future__ import annotations

import time
from collections.abc import Callable

import pandas as pd
import torch

from utae.training.precision import autocast
from utae.training.engine import compute_loss

#: The small widths of the synthetic default sweep (params/default.yaml).
SMALL_WIDTHS: dict = dict(
    encoder_widths=(16, 16, 16, 32), decoder_widths=(16, 16, 16, 32), out_conv=(16, 20), n_head=4, d_model=64
)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], object],
    device: torch.device,
    repeats: int,
    warmup: int = 2,
    reduce: Callable[[list[float]], float] = min,
) -> float:
    """Seconds of ``fn`` over ``repeats`` timed runs after ``warmup`` untimed ones, reduced by ``reduce``
    (``min`` by default: the least disturbed run; ``statistics.median`` for a typical one)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return reduce(times)


def print_table(df: pd.DataFrame) -> None:
    """Print a benchmark table in full, 4 significant digits."""
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print(df.to_string(index=False))


def train_step_fn(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, ...],
    device: torch.device,
    forward: Callable[..., torch.Tensor] | None = None,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> Callable[[], None]:
    """One training step as :func:`utae.training.engine.train_one_epoch` takes it (forward, the float32 cross-entropy of
    :func:`utae.training.engine.compute_loss` with void ignored, backward, optimizer step).

    ``batch`` is ``(x (B, T, C, H, W), positions (B, T), pad_mask (B, T), target (B, H, W))`` on ``device``,
    except the pad mask, which stays on the host as in training;
    ``forward`` defaults to ``model`` (pass a compiled model to time it).
    """
    x, positions, pad_mask, target = batch
    forward = model if forward is None else forward

    def step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp_dtype):
            logits = forward(x, positions, pad_mask=pad_mask)
        ce_sum, n_valid = compute_loss(logits, target)  # the training engine's loss
        loss = ce_sum / n_valid.clamp(min=1)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    return step
