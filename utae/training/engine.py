"""The training loop: the model and optimizer of a run, the loss, one epoch, evaluation and :func:`fit`.

Read top to bottom: :func:`build_engine` (model, Adam, learning-rate schedule, grad scaler, DDP, compile),
:func:`compute_loss` (the official cross-entropy, void weighted 0), :func:`train_one_epoch`, :func:`evaluate`
(pad-free by default, :data:`EVAL_MODE`; optionally with seeded test-time noise, :func:`utae.perturb.noise.add_test_noise`,
or a corruption of :mod:`utae.perturb.corruptions`) and :func:`fit` (epochs, the best
epoch by validation mIoU, a callback after each epoch where the run writes its checkpoint).

Confusion matrices and loss sums stay on the device during an epoch (:class:`_Tally`) and are read once at
its end, summed over processes in a multi-process run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from utae.training.checkpoint import TrainState
from utae.pastis.classes import N_CLASSES, VOID_LABEL
from utae.config.run_config import RunConfig
from utae.training.distributed import DistContext, all_reduce_min, all_reduce_sum, broadcast_buffers
from utae.training.loaders import set_loader_epoch
from utae.pastis.metrics import confusion_matrix, scores
from utae.models.registry import create_model, forward_logits
from utae.pastis.metadata import N_BANDS
from utae.perturb.corruptions import corrupt_batch
from utae.perturb.noise import add_test_noise
from utae.machine.allocator import keep_freed_memory
from utae.machine.record import peak_memory_mb, reset_peak_memory
from utae.training.precision import autocast, float32_math, resolve_amp, tf32_enabled
from utae.training.seeds import initial_model

__all__ = [
    "NonFiniteLossError",
    "Engine",
    "EpochResult",
    "build_model",
    "model_options",
    "build_engine",
    "make_scheduler",
    "compute_loss",
    "to_device",
    "train_one_epoch",
    "evaluate",
    "evaluate_epoch",
    "EVAL_MODE",
    "EVAL_MODES",
    "is_better",
    "fit",
]

log = logging.getLogger(__name__)
_NO_BAD_BATCH = 2**62


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the epoch and the batch."""


# --------------------------------------------------------------------------------------------------
# Model, optimizer, schedule
# --------------------------------------------------------------------------------------------------


def model_options(config: RunConfig) -> dict[str, Any]:
    """The options ``config.model`` is built with: U-TAE's width fields for ``"utae"``, then ``model_options``."""
    options = dict(config.model_options)
    if config.model == "utae":
        options.update(encoder_widths=config.encoder_widths, decoder_widths=config.decoder_widths,
                       out_conv=(config.out_conv[0], N_CLASSES), n_head=config.n_head, d_model=config.d_model,
                       d_k=config.d_k)
    return options


def build_model(config: RunConfig, input_size: int | None = None) -> nn.Module:
    """The model of ``config`` (:func:`utae.models.registry.create_model`: 10 input bands, 20 classes), with
    ``input_size`` (the patch side) for the models that need it at construction."""
    return create_model(config.model, input_dim=N_BANDS, num_classes=N_CLASSES, input_size=input_size,
                        **model_options(config))


@dataclass
class Engine:
    """What trains and evaluates: ``raw`` holds the parameters (and is checkpointed), ``model`` is what the
    training steps call (``raw`` itself, or wrapped in DistributedDataParallel and/or compiled), ``eval_model``
    what evaluation calls (never DDP-wrapped: processes may see different numbers of eval batches).
    ``scheduler`` steps once per training batch (None: a constant learning rate)."""

    raw: nn.Module
    model: nn.Module
    eval_model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: Any = None
    scheduler: Any = None
    ctx: DistContext = field(default_factory=DistContext)


def make_optimizer(params: Any, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam at ``lr``. On the CPU it takes its multi-tensor (``foreach``) implementation, which there loops over
    the same per-tensor kernels with the same scalars as the default single-tensor one, so the numbers are the
    same bit for bit (tested), with a few hundred fewer Python-level operations a step. Elsewhere PyTorch's
    default (``foreach`` on CUDA)."""
    return torch.optim.Adam(params, lr=lr, foreach=True if device.type == "cpu" else None)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, *, total_steps: int,
                   warmup: float) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-batch learning-rate schedule of ``RunConfig.lr_schedule`` over ``total_steps`` batches.

    * ``"constant"``: None (the optimizer's lr throughout);
    * ``"cosine"``: linear warm-up from lr/25 to lr over the first ``warmup`` fraction of the steps, then
      cosine decay to 0 at the last step;
    * ``"onecycle"``: ``torch.optim.lr_scheduler.OneCycleLR`` peaking at lr after ``warmup`` of the steps
      (0 picks its default, 0.3).
    """
    if schedule == "constant":
        return None
    total_steps = max(1, int(total_steps))
    if schedule == "onecycle":
        lr = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps,
                                                   pct_start=warmup if warmup > 0 else 0.3)
    if schedule == "cosine":
        warm = int(round(warmup * total_steps))
        start = 1.0 / 25.0

        def factor(step: int) -> float:
            if step < warm:
                return start + (1.0 - start) * step / warm
            span = max(1, total_steps - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, span) / span))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    raise ValueError(f"lr_schedule must be 'constant', 'cosine' or 'onecycle', got {schedule!r}")


def build_engine(config: RunConfig, device: torch.device, amp_dtype: torch.dtype | None,
                 ctx: DistContext | None = None, steps_per_epoch: int = 1, input_size: int | None = None) -> Engine:
    """Build the model on ``device`` (channels-last, DDP and compile as configured), Adam, the learning-rate
    schedule (over ``config.epochs * steps_per_epoch`` batches) and the grad scaler (fp16 only).

    The initial weights come from the config's weights stream (:func:`utae.training.seeds.initial_model`): the
    global torch generator must hold the data stream's seed (:func:`utae.training.checkpoint.seed_everything` of
    ``config.stream_seeds()["data_seed"]``), which it keeps for the dropout masks."""
    ctx = ctx or DistContext()
    seeds = config.stream_seeds()  # the initial weights from weights_seed; the global RNG keeps the data stream
    if device.type == "cpu":
        keep_freed_memory()  # no page faults for the tensors every step reallocates (utae.machine.allocator)
    raw = initial_model(lambda: build_model(config, input_size), weights_seed=seeds["weights_seed"],
                        data_seed=seeds["data_seed"]).to(device)
    if config.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    model: nn.Module = raw
    if ctx.enabled:
        model = nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
    eval_model: nn.Module = raw
    if config.compile:
        try:
            model = torch.compile(model)
            eval_model = model if not ctx.enabled else torch.compile(raw)
        except Exception as exc:  # noqa: BLE001 - any failure of torch.compile is reported the same way
            raise RuntimeError(f"compile=True: torch.compile failed ({type(exc).__name__}: {exc}); "
                               "set compile=False") from exc
    optimizer = make_optimizer(raw.parameters(), config.lr, device)
    scheduler = make_scheduler(optimizer, config.lr_schedule, total_steps=config.epochs * steps_per_epoch,
                               warmup=config.lr_warmup)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    return Engine(raw=raw, model=model, eval_model=eval_model, optimizer=optimizer, device=device,
                  amp_dtype=amp_dtype, scaler=scaler, scheduler=scheduler, ctx=ctx)


# --------------------------------------------------------------------------------------------------
# Loss, batches, tallies
# --------------------------------------------------------------------------------------------------


def compute_loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy summed over the non-void pixels, in float32, and the number of those pixels.

    ``logits`` ``(B, 20, H, W)``, ``target`` ``(B, H, W)`` int64 -> ``(loss_sum, n_valid)`` 0-d tensors.
    ``loss_sum / n_valid`` is the official loss (``CrossEntropyLoss`` with weight 0 on void, mean reduction).
    Written with ``log_softmax`` and ``gather`` so that it also has a deterministic CUDA backward.
    """
    logp = torch.log_softmax(logits.float(), dim=1)
    nll = -logp.gather(1, target.unsqueeze(1)).squeeze(1)
    valid = target != VOID_LABEL
    return torch.where(valid, nll, torch.zeros_like(nll)).sum(), valid.sum()


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device,
              image: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Move a pad_collate batch once: ``(x (B,T,C,H,W), dates (B,T), pad_mask (B,T), target (B,H,W))``.

    The pad mask stays on the host: U-TAE selects the real frames from it there, and moves its own copy to the
    device without a synchronisation."""
    nb = device.type == "cuda"
    x = (batch["image"] if image is None else image).to(device, non_blocking=nb)
    return (x, batch["dates"].to(device, non_blocking=nb), batch["pad_mask"],
            batch["mask"].to(device, non_blocking=nb))


def _sync_time(device: torch.device) -> float:
    """``time.perf_counter()`` after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=True, dynamic_ncols=True)


@dataclass
class EpochResult:
    """Sums of one training epoch or one evaluation, already summed over processes."""

    cm: np.ndarray            # (20, 20) int64
    loss: float               # mean cross-entropy over the non-void pixels
    n_samples: int
    seconds: float


class _Tally:
    """The confusion matrix and loss sums of an epoch, kept on the device until :meth:`reduce`."""

    def __init__(self, device: torch.device) -> None:
        self.cm = torch.zeros(N_CLASSES, N_CLASSES, dtype=torch.int64, device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.n_pix = torch.zeros((), dtype=torch.int64, device=device)
        self.n_samples = 0
        self.start = _sync_time(device)

    @torch.no_grad()
    def add(self, logits: torch.Tensor, target: torch.Tensor, ce_sum: torch.Tensor, n_valid: torch.Tensor) -> None:
        self.cm += confusion_matrix(logits.detach().argmax(1), target, N_CLASSES)
        self.loss_sum += ce_sum.detach().double()
        self.n_pix += n_valid
        self.n_samples += int(target.shape[0])

    def mean_loss(self) -> float:
        return float(self.loss_sum) / max(int(self.n_pix), 1)

    def reduce(self, ctx: DistContext) -> EpochResult:
        """Sum over processes (one read of the device)."""
        seconds = _sync_time(self.cm.device) - self.start
        count = torch.tensor(self.n_samples, dtype=torch.int64, device=self.cm.device)
        packed = [all_reduce_sum(t, ctx) for t in (self.cm, self.loss_sum, self.n_pix, count)]
        cm_h, loss_h, pix_h, count_h = (t.cpu() for t in packed)
        mean_loss = float(loss_h) / int(pix_h) if int(pix_h) > 0 else math.nan
        return EpochResult(cm=cm_h.numpy().astype(np.int64), loss=mean_loss, n_samples=int(count_h),
                           seconds=seconds)


# --------------------------------------------------------------------------------------------------
# One epoch, evaluation
# --------------------------------------------------------------------------------------------------


def _raise_if_nonfinite(first_bad: torch.Tensor, epoch: int, ctx: DistContext) -> None:
    flag = all_reduce_min(first_bad.clone(), ctx)
    if int(flag) != _NO_BAD_BATCH:
        where = f" of process {ctx.rank}" if ctx.enabled else ""
        raise NonFiniteLossError(f"non-finite training loss at epoch {epoch}, batch {int(flag)}{where}; the run "
                                 "stops here (the checkpoint of the last complete epoch is kept)")


def train_one_epoch(engine: Engine, loader: DataLoader, *, epoch: int, progress: bool = False,
                    check_every: int | None = None) -> EpochResult:
    """One pass over the training loader (one optimizer step and one schedule step per batch). The
    non-finite-loss flag is read every ``check_every`` batches (CPU: every batch, before the optimizer step;
    CUDA: every 25) and at the end.

    Raises:
        NonFiniteLossError: the loss of a batch was NaN or infinite (epoch and batch 1-based in the message).
    """
    device, ctx = engine.device, engine.ctx
    engine.model.train()
    check_every = check_every or (1 if device.type == "cpu" else 25)
    first_bad = torch.full((), _NO_BAD_BATCH, dtype=torch.int64, device=device)
    n_batches = len(loader)
    bar = _progress_bar(n_batches, f"epoch {epoch}", progress and ctx.is_main)
    tally = _Tally(device)
    try:
        for step, batch in enumerate(loader, start=1):
            x, dates, pad_mask, target = to_device(batch, device)
            with autocast(device, engine.amp_dtype):
                logits = forward_logits(engine.model, x, dates, pad_mask)
            ce_sum, n_valid = compute_loss(logits, target)
            loss = ce_sum / n_valid.clamp(min=1)
            bad_now = ~torch.isfinite(loss.detach()) & (first_bad == _NO_BAD_BATCH)
            first_bad = torch.where(bad_now, torch.full_like(first_bad, step), first_bad)
            if step % check_every == 0 or step == n_batches:
                _raise_if_nonfinite(first_bad, epoch, ctx)
            engine.optimizer.zero_grad(set_to_none=True)
            if engine.scaler is not None:
                engine.scaler.scale(loss).backward()
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
            else:
                loss.backward()
                engine.optimizer.step()
            if engine.scheduler is not None:
                engine.scheduler.step()
            tally.add(logits, target, ce_sum, n_valid)
            bar.update(1)
            if bar.disable is False and (step % check_every == 0 or step == n_batches):
                bar.set_postfix(loss=f"{tally.mean_loss():.4f}", miou=f"{scores(tally.cm.cpu())['miou']:.3f}")
    finally:
        bar.close()
    return tally.reduce(ctx)


#: How :func:`evaluate_epoch` feeds the model. ``"pad_free"``: each patch alone, on its own real frames (no padded
#: time step reaches the model, so a patch's logits do not depend on the batch it came in). ``"padded_batches"``:
#: the loader's padded batches as they are, as the official test script evaluates (the L-TAE's GroupNorm then
#: normalises over the padded steps too, so a patch's prediction depends on its batch's padding).
EVAL_MODES: tuple[str, ...] = ("pad_free", "padded_batches")
#: The evaluation mode of validation and test; the value a run records in ``metrics.json`` ("eval_mode").
EVAL_MODE = "pad_free"


def _check_eval_mode(eval_mode: str) -> str:
    if eval_mode not in EVAL_MODES:
        raise ValueError(f"eval_mode must be one of {', '.join(EVAL_MODES)}; got {eval_mode!r}")
    return eval_mode


def _pad_free_patches(batch: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The patches of a padded CPU batch (a :func:`utae.pastis.dataset.pad_collate` dict), each as a batch of one on its own
    real frames: ``image (1, T_i, C, H, W)``, ``dates (1, T_i)``, ``pad_mask (1, T_i)`` all False,
    ``mask (1, H, W)``, ``patch_id (1,)``."""
    keep = ~batch["pad_mask"]
    out = []
    for i in range(batch["image"].shape[0]):
        real = keep[i]
        out.append({"image": batch["image"][i, real][None], "dates": batch["dates"][i, real][None],
                    "pad_mask": torch.zeros((1, int(real.sum())), dtype=torch.bool), "mask": batch["mask"][i][None],
                    "patch_id": batch["patch_id"][i:i + 1]})
    return out


#: How many patches of one length may wait for their group before every group is run (times the group size):
#: it bounds the memory of :class:`_SameLengthGroups` (a real PASTIS patch of 61 dates is about 40 MB).
_PENDING_GROUPS = 4


class _SameLengthGroups:
    """Pad-free patches (batches of one, :func:`_pad_free_patches`) stacked into batches of up to ``size``
    patches of the same length, so that no padded time step reaches the model.

    A group leaves as soon as it is full; when ``size * _PENDING_GROUPS`` patches wait, every group leaves
    (shortest series first), and so do the rest at the end. The groups therefore depend on the order of the
    patches and on ``size`` only, never on the loader's batches: the same ``size`` gives the same arithmetic
    at any loader batch size. ``size`` 1 is one patch per forward.
    """

    def __init__(self, size: int) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"eval_batch_size must be an int >= 1, got {size!r}")
        self.size = size
        self.pending: dict[int, list[dict[str, torch.Tensor]]] = {}
        self.n_pending = 0

    @staticmethod
    def _stack(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def add(self, part: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Queue one patch ``image (1, T, C, H, W)``...; returns the groups ready to run (stacked dicts)."""
        length = int(part["image"].shape[1])
        group = self.pending.setdefault(length, [])
        group.append(part)
        self.n_pending += 1
        if len(group) == self.size:
            del self.pending[length]
            self.n_pending -= self.size
            return [self._stack(group)]
        if self.n_pending >= self.size * _PENDING_GROUPS:
            return self.flush()
        return []

    def flush(self) -> list[dict[str, torch.Tensor]]:
        """Every waiting group (shortest series first), stacked; nothing waits afterwards."""
        out = [self._stack(self.pending[t]) for t in sorted(self.pending)]
        self.pending, self.n_pending = {}, 0
        return out


@torch.no_grad()
def evaluate_epoch(model: nn.Module, loader: DataLoader, device: torch.device, *, noise_std: float = 0.0,
                   seed: int = 0, noise_space: str = "normalized", channel_std: Any = None,
                   amp_dtype: torch.dtype | None = None, ctx: DistContext | None = None, progress: bool = False,
                   desc: str = "eval", eval_mode: str = EVAL_MODE, corruption: tuple[str, int] | None = None,
                   norm: tuple[Any, Any] | None = None, eval_batch_size: int = 1) -> EpochResult:
    """Evaluate ``model`` on every sample of ``loader``, with seeded test-time noise of ``noise_std``
    (:func:`utae.perturb.noise.add_test_noise`) and/or a corruption ``(kind, severity)`` of :mod:`utae.perturb.corruptions`
    (``norm=(mean, std)``: the ``(C,)`` statistics the split is normalised with, needed by the kinds defined on
    raw reflectance); the :class:`EpochResult` is summed over processes.

    ``eval_mode`` (:data:`EVAL_MODES`): ``"pad_free"`` (the default, :data:`EVAL_MODE`) runs each patch on its
    real frames only, in groups of up to ``eval_batch_size`` patches of the same length (after the noise and the
    corruption; :class:`_SameLengthGroups`), so that no padded step reaches the model and the scores do not
    depend on the loader's batch size or padding. ``eval_batch_size`` 1 is one patch per forward; a larger group
    changes only the rounding of the float sums (a patch's logits by about 1e-7 in float32), and runs faster.
    ``"padded_batches"`` runs the loader's padded batches as they come (the official evaluation;
    ``eval_batch_size`` unused).
    """
    _check_eval_mode(eval_mode)
    groups = _SameLengthGroups(eval_batch_size)
    ctx = ctx or DistContext()
    was_training = model.training
    model.eval()
    bar = _progress_bar(len(loader), desc, progress and ctx.is_main)
    tally = _Tally(device)

    def run(part: Mapping[str, torch.Tensor]) -> None:
        x, dates_d, pad_d, target = to_device(part, device)
        with autocast(device, amp_dtype):
            logits = forward_logits(model, x, dates_d, pad_d)
        tally.add(logits, target, *compute_loss(logits, target))

    try:
        for batch in loader:
            # pad_free: each patch alone, trimmed to its real frames before the noise and the corruption are
            # drawn, so that nothing about it depends on the batch, then grouped with patches of its length;
            # padded_batches: the loader's batch as is.
            parts = [batch] if eval_mode == "padded_batches" else _pad_free_patches(batch)
            for part in parts:
                image = add_test_noise(part["image"], part["pad_mask"], part["patch_id"], noise_std, seed=seed,
                                       space=noise_space, channel_std=channel_std)
                dates, pad_mask = part["dates"], part["pad_mask"]
                if corruption is not None:
                    image, dates, pad_mask = corrupt_batch(image, dates, corruption[0], corruption[1], seed=seed,
                                                           patch_ids=part["patch_id"], norm=norm, pad_mask=pad_mask)
                ready = {"image": image, "dates": dates, "pad_mask": pad_mask, "mask": part["mask"]}
                for group in ([ready] if eval_mode == "padded_batches" else groups.add(ready)):
                    run(group)
            bar.update(1)
        for group in groups.flush():
            run(group)
    finally:
        bar.close()
        model.train(was_training)
    return tally.reduce(ctx)


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, *, noise_std: float = 0.0,
             seed: int = 0, noise_space: str = "normalized", channel_std: Any = None,
             amp: str | torch.dtype | None = None, ctx: DistContext | None = None,
             progress: bool = False, desc: str = "eval", eval_mode: str = EVAL_MODE,
             corruption: tuple[str, int] | None = None, norm: tuple[Any, Any] | None = None,
             eval_batch_size: int = 1) -> tuple[np.ndarray, float]:
    """Evaluate ``model`` on every sample of ``loader`` (see :func:`evaluate_epoch`, also for ``eval_mode``,
    ``eval_batch_size``, ``corruption`` and ``norm``).

    ``amp`` is a ``RunConfig.amp`` mode (which also sets the float32 math, see :func:`utae.training.precision.float32_math`)
    or an autocast dtype (None: float32, under the current TensorFloat-32 settings).

    Returns:
        ``(cm, mean_loss)``: the ``(20, 20)`` int64 confusion matrix (rows = true) and the mean cross-entropy
        over the non-void pixels.
    """
    amp_dtype = resolve_amp(amp, device)[0] if isinstance(amp, str) else amp
    math_mode = float32_math(tf32_enabled(amp)) if isinstance(amp, str) else contextlib.nullcontext()
    with math_mode:
        result = evaluate_epoch(model, loader, device, noise_std=noise_std, seed=seed, noise_space=noise_space,
                                channel_std=channel_std, amp_dtype=amp_dtype, ctx=ctx, progress=progress, desc=desc,
                                eval_mode=eval_mode, corruption=corruption, norm=norm,
                                eval_batch_size=eval_batch_size)
    return result.cm, result.loss


# --------------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------------


def _score(miou: float) -> float:
    return miou if math.isfinite(miou) else -math.inf


def is_better(val_miou: float, best_score: float) -> bool:
    """Whether an epoch with validation mIoU ``val_miou`` replaces the best one so far: a higher or equal
    score (a tie goes to the later epoch); an undefined (NaN) mIoU counts as the lowest score."""
    return _score(val_miou) >= best_score


def fit(engine: Engine, train_loader: DataLoader, val_loader: DataLoader, *, epochs: int, seed: int = 0,
        state: TrainState | None = None, progress: bool = False,
        on_epoch_end: Callable[[TrainState], None] | None = None,
        max_epochs_this_call: int | None = None, eval_mode: str = EVAL_MODE, eval_batch_size: int = 1
        ) -> TrainState:
    """Train from ``state.epoch + 1`` to ``epochs``, validating after each epoch.

    ``seed`` is the data stream's seed (``RunConfig.stream_seeds()["data_seed"]``): each epoch's batch order and
    worker seeds come from ``(seed, epoch)`` (:func:`utae.training.loaders.set_loader_epoch`); validation is clean
    and draws nothing. The best epoch is the one with the highest validation mIoU (NaN counts as the lowest; a
    tie goes to the later epoch); its weights are kept in ``state.best_model``. ``on_epoch_end(state)`` runs after each
    epoch (the run writes its checkpoint and history there). ``max_epochs_this_call`` stops after that many
    epochs of this call (a planned interruption). Validation runs in ``eval_mode``, in groups of up to
    ``eval_batch_size`` patches of one length (see :func:`evaluate_epoch`).
    Returns the state.
    """
    state = state or TrainState()
    device, ctx = engine.device, engine.ctx
    done_here = 0
    while state.epoch < epochs and (max_epochs_this_call is None or done_here < max_epochs_this_call):
        epoch = state.epoch + 1
        set_loader_epoch(train_loader, epoch, seed)
        reset_peak_memory(device)
        lr = engine.optimizer.param_groups[0]["lr"]
        tr = train_one_epoch(engine, train_loader, epoch=epoch, progress=progress)
        broadcast_buffers(engine.raw, ctx)
        va = evaluate_epoch(engine.eval_model, val_loader, device, seed=seed, amp_dtype=engine.amp_dtype, ctx=ctx,
                            desc="val", eval_mode=eval_mode, eval_batch_size=eval_batch_size)
        tr_s, va_s = scores(tr.cm), scores(va.cm)
        if is_better(va_s["miou"], state.best_score):
            state.best_epoch, state.best_score = epoch, _score(va_s["miou"])
            state.best_model = {k: v.detach().to("cpu", copy=True) for k, v in engine.raw.state_dict().items()}
            state.best_val = {**va_s, "loss": va.loss}
        state.history.append({
            "epoch": epoch, "train_loss": tr.loss, "train_oa": tr_s["oa"], "train_miou": tr_s["miou"],
            "val_loss": va.loss, "val_oa": va_s["oa"], "val_miou": va_s["miou"], "lr": float(lr),
            "sec_epoch": tr.seconds + va.seconds,
            "train_samples_per_s": tr.n_samples / tr.seconds if tr.seconds > 0 else math.nan,
            "eval_samples_per_s": va.n_samples / va.seconds if va.seconds > 0 else math.nan,
            "peak_mem_mb": float(peak_memory_mb(device)),
        })
        state.epoch = epoch
        done_here += 1
        if progress and ctx.is_main:
            row = state.history[-1]
            log.info("epoch %d/%d: train loss %.4f mIoU %.3f | val loss %.4f mIoU %.3f | %.1f s", epoch, epochs,
                     row["train_loss"], row["train_miou"], row["val_loss"], row["val_miou"], row["sec_epoch"])
        if on_epoch_end is not None:
            on_epoch_end(state)
    return state
