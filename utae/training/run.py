"""A run: from a :class:`utae.config.run_config.RunConfig` to a finished run directory, with resume.

:func:`run` trains U-TAE on one fold rotation of a PASTIS-format dataset (:mod:`utae.training.engine`), keeps the epoch
with the best validation mIoU (a tie goes to the later epoch), tests that model on the clean test set, at
every test-time noise level and at every corruption of ``test_corruptions`` (pad-free, :data:`utae.training.engine.EVAL_MODE`),
and writes its run directory:

* ``config.json``: the :class:`RunConfig`; ``platform.json``: software and hardware (:mod:`utae.machine.record`);
* ``history.csv``: one row per epoch (:data:`HISTORY_COLUMNS`), rewritten after every epoch; the same rows as
  TensorBoard event files in ``tensorboard/`` (:mod:`utae.training.tensorboard_log`, live curves; not a result file);
* ``checkpoint.pt``: after every epoch (:mod:`utae.training.checkpoint`), so that a killed run resumes from its last
  complete epoch, under the arithmetic settings recorded there (:mod:`utae.training.arithmetic`: threads, amp, device...)
  or not at all;
* ``confusion.npy``: the clean test confusion matrix, ``(20, 20)`` int64, rows = true class;
* ``predictions.npz``: a few test patches for maps: ``rgb`` ``(N, H, W, 3)`` in [0, 1], ``target`` and
  ``pred`` ``(N, H, W)``, ``patch_id`` ``(N,)``;
* ``metrics.json``: written last, it marks a finished run; starting a finished run again returns it at once.
  ``eval_mode`` names how the test was evaluated ("pad_free"; a file without it was evaluated in padded batches)
  and ``test_corruptions`` holds ``{"kind", "severity", "oa", "miou", "iou"}`` per corruption of the config;
  ``seeds`` the effective seed of each stream (:meth:`RunConfig.stream_seeds`, docs/seeds.md; older runs lack it).
  ``normalisation`` the statistics the model was trained with, ``{"mean": [10], "std": [10], "folds": [...]}`` (the
  training folds' mean and std vectors, whatever ``norm_stats``), and ``patch_size`` the training patches' side in
  px (what ``python -m utae predict`` needs; older runs lack both).

Initial weights. With ``init_weights`` (:func:`utae.training.weights.load_init_weights`: official weights or a run
checkpoint, checked against the config's architecture) the run starts from those weights: ``epochs`` >= 1
fine-tunes them (with the run's training noise, as any run), ``epochs`` 0 only evaluates them. An evaluation-only
run writes the same files but no checkpoint: history.csv holds one row, epoch 0, with the loaded weights' clean
validation scores (the train columns empty); metrics.json has ``best_epoch`` 0, ``epochs_completed`` 0,
``train`` null and ``val`` those validation scores. metrics.json records the file in ``init_weights``
(``path`` resolved, ``sha256``, ``source`` "official" or "run_checkpoint", ``checked_against``: the conf.json or
checkpoint whose architecture was compared); a fine-tuning run keeps that record in its checkpoint, so a resumed
run reports the file it started from.

Paths. One rule places every run (:func:`utae.rundir.paths.run_path`): ``<results>/runs/<platform>/<run_id>``; a
config without ``out_dir`` runs into ``results/runs/<this machine's platform>/<config.default_run_id()>``.

Safety. Every file is written atomically (:mod:`utae.study.runs`). A run directory is locked while a process
works in it (a second process fails at once, naming the holder). A directory that holds another run's
config, or a checkpoint of another run, is refused; a directory whose run never finished an epoch takes the
new config. Global torch settings (deterministic algorithms, the float32 math) hold for the duration of
:func:`run` and are restored after (:func:`utae.training.precision.torch_settings`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from utae.training.arithmetic import arithmetic_differences, arithmetic_settings
from utae.training.checkpoint import TrainState, checkpoint_dict, read_checkpoint, restore, rng_state, seed_everything
from utae.util.atomic import (
    atomic_save_npy,
    atomic_savez,
    atomic_torch_save,
    atomic_write_csv,
    atomic_write_json,
    read_json,
    remove_stale_temp,
    to_jsonable,
)
from utae.config.run_config import RunConfig
from utae.perturb.kinds import SEVERITY_TABLE
from utae.pastis.dataset import pad_collate
from utae.training.distributed import DistContext, barrier, dist_context, gather_objects, init_process_group
from utae.training.engine import (
    EVAL_MODE,
    Engine,
    EpochResult,
    NonFiniteLossError,
    build_engine,
    model_options,
    evaluate_epoch,
    fit,
    to_device,
)
from utae.models.registry import count_parameters, forward_logits, needs_input_size
from utae.training.loaders import ReplayLoader, Splits, make_datasets, make_loader
from utae.pastis.metrics import scores
from utae.machine.record import check_same_machine, peak_memory_mb, platform_id, platform_info, reset_peak_memory
from utae.machine.record import resolve_device
from utae.training.precision import amp_name, autocast, float32_math, resolve_amp, tf32_enabled, torch_settings
from utae.training.tensorboard_log import EpochScalars, tensorboard_dir
from utae.rundir.paths import RunDirError, is_finished, is_started, lock_run_dir, run_path
from utae.rundir.same_run import config_differences
from utae.rundir.readers import read_record
from utae.training.weights import load_init_weights

__all__ = [
    "HISTORY_COLUMNS",
    "RunDirError",
    "run_dir",
    "run_device",
    "lock_run_dir",
    "predict_examples",
    "run",
]

log = logging.getLogger(__name__)

#: Columns of history.csv, one row per epoch (``lr``: the learning rate at the start of the epoch).
HISTORY_COLUMNS: tuple[str, ...] = (
    "epoch", "train_loss", "train_oa", "train_miou", "val_loss", "val_oa", "val_miou", "lr",
    "sec_epoch", "train_samples_per_s", "eval_samples_per_s", "peak_mem_mb",
)


# --------------------------------------------------------------------------------------------------
# Paths and devices
# --------------------------------------------------------------------------------------------------


def run_device(name: str, ctx: DistContext | None = None) -> torch.device:
    """The torch device of ``RunConfig.device`` (see :func:`utae.machine.record.resolve_device`), with an explicit
    CUDA index; in a multi-process CUDA run, ``cuda:LOCAL_RANK``."""
    ctx = ctx or DistContext()
    device = resolve_device(name)
    if device.type != "cuda":
        return device
    index = ctx.local_rank if ctx.enabled else (device.index if device.index is not None else torch.cuda.current_device())
    if index >= torch.cuda.device_count():
        raise ValueError(f"device={name!r}: there is no CUDA device {index} ({torch.cuda.device_count()} visible)")
    return torch.device("cuda", index)


def run_dir(config: RunConfig, device: torch.device | None = None) -> Path:
    """The run directory of ``config``: ``config.out_dir``, or :func:`run_path` under ``results`` for this
    machine's platform (of ``device``, by default the device that ``config.device`` resolves to)."""
    if config.out_dir is not None:
        return Path(config.out_dir)
    device = run_device(config.device) if device is None else device
    return run_path("results", platform_id(device), config.default_run_id())


# --------------------------------------------------------------------------------------------------
# The run directory: config checks (the lock and the same-run rule are utae.rundir's)
# --------------------------------------------------------------------------------------------------


def _check_run_dir(out: Path, config: RunConfig) -> None:
    """A run directory that holds another run's config.json (the same-run rule,
    :func:`utae.rundir.same_run.config_differences`) is an error (runs are never mixed), unless that run never finished
    an epoch (no checkpoint, no metrics): then the new config replaces it."""
    path = out / "config.json"
    if not path.exists():
        return
    diffs = config_differences(read_record(out, "config.json"), config)
    if not diffs:
        return
    if not is_started(out):
        log.info("%s: the run there never finished an epoch; its config is replaced (%s)", out, "; ".join(diffs))
        return
    raise RunDirError(f"{path} belongs to a different run; differing fields: {'; '.join(diffs)}. "
                      "Use another out_dir (or delete that run directory) to start this config.")


def _check_checkpoint_config(path: Path, ckpt: Mapping[str, Any], config: RunConfig) -> None:
    """A checkpoint written by another run (another ``lr``, say; the same-run rule) is never resumed."""
    diffs = config_differences(ckpt["config"], config)
    if diffs:
        raise RunDirError(f"{path} is the checkpoint of a different run; differing fields: {'; '.join(diffs)}. "
                          "Delete it to start this run from scratch.")


def _check_arithmetic(path: Path, ckpt: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """A checkpoint resumes only under the arithmetic settings it was trained with (:mod:`utae.training.arithmetic`), so
    that every epoch of the run computes alike. A checkpoint without the record (written before it existed)
    resumes as it always did, unchecked."""
    diffs = arithmetic_differences(ckpt.get("arithmetic"), current)
    if diffs:
        raise RunDirError(f"{path} was trained with {'; '.join(diffs)}")


@contextlib.contextmanager
def _explained_errors(config: RunConfig, device: torch.device) -> Iterator[None]:
    """Turn the cryptic failures of deterministic mode and torch.compile into errors that name the setting."""
    try:
        yield
    except NonFiniteLossError:
        raise
    except Exception as exc:
        text = str(exc)
        module = type(exc).__module__
        if config.compile and (module.startswith("torch._dynamo") or module.startswith("torch._inductor")):
            raise RuntimeError(f"compile=True: torch.compile failed on {device} ({type(exc).__name__}: "
                               f"{text.splitlines()[0] if text else ''}); set compile=False") from exc
        if config.deterministic and "does not have a deterministic implementation" in text:
            raise RuntimeError(f"deterministic=True: an operation of this run has no deterministic implementation "
                               f"on {device} ({text.splitlines()[0]}); set deterministic=False on this device") from exc
        raise


# --------------------------------------------------------------------------------------------------
# Predictions for maps
# --------------------------------------------------------------------------------------------------


def rgb_composite(image: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The B4, B3, B2 (red, green, blue) composite of the middle frame of a normalised ``(T, 10, H, W)`` image,
    de-normalised and contrast-stretched (2nd to 98th percentile) -> ``(H, W, 3)`` float32 in [0, 1]."""
    rgb_bands = [2, 1, 0]  # PASTIS band order: B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12
    frame = image[image.shape[0] // 2].detach().cpu().numpy()[rgb_bands].astype(np.float64)
    raw = frame * np.asarray(std, dtype=np.float64)[rgb_bands, None, None] + \
        np.asarray(mean, dtype=np.float64)[rgb_bands, None, None]
    lo, hi = np.percentile(raw, [2, 98])
    out = np.clip((raw - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return out.transpose(1, 2, 0).astype(np.float32)


@torch.no_grad()
def predict_examples(model: nn.Module, dataset: Dataset, device: torch.device, *, n: int, mean: np.ndarray,
                     std: np.ndarray, amp_dtype: torch.dtype | None = None) -> dict[str, np.ndarray]:
    """Predictions on the first ``n`` items of ``dataset``: ``rgb`` ``(N, H, W, 3)``, ``target`` and ``pred``
    ``(N, H, W)`` int64, ``patch_id`` ``(N,)`` int64. Each item is predicted alone on its own dates (pad-free, as
    the test scores it), so its map does not depend on the other examples' lengths."""
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    if not items:
        return {"rgb": np.zeros((0, 0, 0, 3), np.float32), "target": np.zeros((0, 0, 0), np.int64),
                "pred": np.zeros((0, 0, 0), np.int64), "patch_id": np.zeros((0,), np.int64)}
    was_training = model.training
    model.eval()
    alone = [pad_collate([item]) for item in items]  # batches of one: nothing padded
    preds = []
    with torch.no_grad():
        for one in alone:
            x, dates, pad_mask, _ = to_device(one, device)
            with autocast(device, amp_dtype):
                preds.append(forward_logits(model, x, dates, pad_mask).argmax(1).cpu())
    model.train(was_training)
    return {"rgb": np.stack([rgb_composite(it["image"], mean, std) for it in items]),
            "target": torch.cat([one["mask"] for one in alone]).numpy().astype(np.int64),
            "pred": torch.cat(preds).numpy().astype(np.int64),
            "patch_id": torch.cat([one["patch_id"] for one in alone]).numpy().astype(np.int64)}


# --------------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------------


def run(config: RunConfig | Mapping[str, Any], *, max_epochs_this_call: int | None = None) -> dict[str, Any] | None:
    """Train, select, test and write the run directory of ``config`` (see the module docstring).

    A finished run (its metrics.json exists) returns its stored metrics at once; an interrupted one resumes
    from checkpoint.pt. ``max_epochs_this_call`` stops after that many epochs of this call and returns None
    (the run is then unfinished; call again to resume). In a torchrun multi-process run, every process calls
    this; only rank 0 writes files (and holds the lock).

    With ``config.init_weights``, training starts from those weights; with ``epochs`` 0 the run only evaluates
    them (validation, clean test and every test-time noise level).

    Returns:
        The metrics.json dict, or None when stopped early by ``max_epochs_this_call``.

    Raises:
        RunDirError: the run directory is in use, or holds another run's config or checkpoint, or a checkpoint
            trained under other arithmetic settings (:mod:`utae.training.arithmetic`; one line naming each and its value).
        utae.training.weights.WeightsError: ``init_weights`` cannot be used (the message names the fold and the file).
        utae.machine.record.OtherMachineError: the run there was started on another kind of machine (it is neither
            returned nor resumed).
    """
    if isinstance(config, Mapping):
        config = RunConfig.from_dict(config)
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig or a mapping of its fields, got {type(config).__name__}")
    ctx = dist_context()
    device = run_device(config.device, ctx)
    amp_dtype = resolve_amp(config.amp, device)[0]
    out = run_dir(config, device)
    with lock_run_dir(out) if ctx.is_main else contextlib.nullcontext():
        if ctx.is_main:
            remove_stale_temp(out)  # a killed write's leftovers; the files themselves are whole
        _check_run_dir(out, config)
        if is_started(out) and (out / "platform.json").exists():
            check_same_machine(read_json(out / "platform.json"), device, out)
        if is_finished(out):
            return read_json(out / "metrics.json")
        created_group = init_process_group(ctx, device)
        try:
            with torch_settings(config.deterministic, device), float32_math(tf32_enabled(config.amp)), \
                    _explained_errors(config, device):
                return _run(config, ctx, device, amp_dtype, out, max_epochs_this_call)
        finally:
            if created_group:
                torch.distributed.destroy_process_group()


def _platform_record(config: RunConfig, device: torch.device, amp_dtype: torch.dtype | None,
                     ctx: DistContext) -> dict[str, Any]:
    tf32 = tf32_enabled(config.amp)
    extra = {"amp": amp_name(amp_dtype, tf32), "amp_requested": config.amp,
             "float32_math": "tf32" if tf32 else "ieee", "channels_last": config.channels_last,
             "compile": config.compile, "world_size": ctx.world_size, "num_workers": config.num_workers,
             # On CUDA a few kernels have no deterministic version (see torch_settings).
             "deterministic_warn_only": config.deterministic and device.type == "cuda"}
    return platform_info(device, config.deterministic, extra=extra)


def _run(config: RunConfig, ctx: DistContext, device: torch.device, amp_dtype: torch.dtype | None, out: Path,
         max_epochs_this_call: int | None) -> dict[str, Any] | None:
    barrier(ctx)  # every process has checked the run directory before rank 0 writes to it
    ckpt_path = out / "checkpoint.pt"
    ckpt = read_checkpoint(ckpt_path) if ckpt_path.exists() else None
    arithmetic = arithmetic_settings(config, device, amp_dtype, ctx.world_size)
    if ckpt is not None:  # both checks come before platform.json is rewritten: a refused resume leaves it as it was
        _check_checkpoint_config(ckpt_path, ckpt, config)
        _check_arithmetic(ckpt_path, ckpt, arithmetic)
    if ctx.is_main:
        atomic_write_json(out / "config.json", config.to_dict())
        atomic_write_json(out / "platform.json", _platform_record(config, device, amp_dtype, ctx))
    # The seed streams (docs/seeds.md): the global RNGs draw the data stream's dropout masks (the initial weights
    # are drawn from weights_seed in build_engine); the training loader's order and workers come from data_seed;
    # the evaluation loaders and the test-time draws keep the run seed.
    seeds = config.stream_seeds()
    seed_everything(seeds["data_seed"])
    splits = make_datasets(config)
    loader_kw = dict(batch_size=config.batch_size, seed=config.seed, device=device,
                     num_workers=config.num_workers, ctx=ctx)
    # Fresh training noise each epoch must reach the workers, so they are rebuilt each epoch then.
    persistent_train = not (config.noise_resample and config.noise_std > 0)
    train_loader = make_loader(splits.train, train=True, persistent=persistent_train,
                               **{**loader_kw, "seed": seeds["data_seed"]})
    # evaluation passes (validation each epoch, the test at every noise level and corruption) read a small
    # split's files once
    val_loader = ReplayLoader(make_loader(splits.val, train=False, **loader_kw))
    test_loader = ReplayLoader(make_loader(splits.test, train=False, **loader_kw))
    input_size = splits.patch_size if needs_input_size(config.model) else None
    engine = build_engine(config, device, amp_dtype, ctx, steps_per_epoch=len(train_loader), input_size=input_size)
    if ctx.enabled:
        torch.manual_seed(seeds["data_seed"] + 1000 * ctx.rank)  # different dropout masks in each process
    state = TrainState()
    init: dict[str, Any] | None = None  # the record of the initial weights (metrics.json "init_weights")
    if ckpt is not None:
        state = restore(ckpt, engine.raw, engine.optimizer, scaler=engine.scaler, scheduler=engine.scheduler,
                        rank=ctx.rank, world_size=ctx.world_size)
        init = ckpt.get("init_weights")
        if ctx.is_main:
            log.info("%s: resuming after epoch %d of %d", out, state.epoch, config.epochs)
    elif config.init_weights is not None:
        init = load_init_weights(engine.raw, config).record()
        if ctx.is_main:
            log.info("%s: initial weights %s (sha256 %s)", out, init["path"], init["sha256"])
    del ckpt
    # Live curves (rank 0): the restored rows first, then one row an epoch, right after history.csv.
    scalars = EpochScalars(tensorboard_dir(out), history=state.history) if ctx.is_main else None
    try:
        return _train(config, ctx, engine, splits, train_loader, val_loader, test_loader, out, state, init,
                      arithmetic, scalars, max_epochs_this_call)
    finally:
        if scalars is not None:
            scalars.close()


def _train(config: RunConfig, ctx: DistContext, engine: Engine, splits: Splits, train_loader: DataLoader,
           val_loader: DataLoader, test_loader: DataLoader, out: Path, state: TrainState,
           init: dict[str, Any] | None, arithmetic: Mapping[str, Any], scalars: EpochScalars | None,
           max_epochs_this_call: int | None) -> dict[str, Any] | None:
    """The epochs of :func:`_run` from ``state`` on (a checkpoint and a history row each), then the test."""
    ckpt_path = out / "checkpoint.pt"
    if config.epochs == 0:
        return _evaluate_only(config, engine, splits, val_loader, test_loader, out, init, scalars)

    def save(st: TrainState) -> None:
        rng_states = gather_objects(rng_state(), ctx)  # every process takes part
        if ctx.is_main:
            ckpt_out = checkpoint_dict(engine.raw, engine.optimizer, st, config.to_dict(), scaler=engine.scaler,
                                       scheduler=engine.scheduler, rng_states=rng_states, arithmetic=arithmetic)
            if init is not None:
                ckpt_out["init_weights"] = init
            atomic_torch_save(ckpt_path, ckpt_out)
            _write_history(out, st.history)
            if scalars is not None:
                scalars.add(st.history[-1])
        barrier(ctx)

    if ctx.is_main and state.history:
        _write_history(out, state.history)
    state = fit(engine, train_loader, val_loader, epochs=config.epochs, seed=config.stream_seeds()["data_seed"],
                state=state,
                progress=config.progress, on_epoch_end=save, max_epochs_this_call=max_epochs_this_call,
                eval_batch_size=config.eval_batch_size)
    if state.epoch < config.epochs:
        return None
    return _finish(config, engine, state, splits, test_loader, out, init)


def _evaluate_only(config: RunConfig, engine: Engine, splits: Splits, val_loader: DataLoader,
                   test_loader: DataLoader, out: Path, init: Mapping[str, Any] | None,
                   scalars: EpochScalars | None = None) -> dict[str, Any]:
    """``epochs`` 0: the loaded weights are "epoch 0": validate them (clean), write the one-row history, then
    test them as :func:`_finish` tests a best epoch. No checkpoint is written."""
    device = engine.device
    reset_peak_memory(device)
    va = evaluate_epoch(engine.eval_model, val_loader, device, seed=config.seed, amp_dtype=engine.amp_dtype,
                        ctx=engine.ctx, progress=config.progress, desc="val", eval_batch_size=config.eval_batch_size)
    va_s = scores(va.cm)
    nan = float("nan")
    row = {"epoch": 0, "train_loss": nan, "train_oa": nan, "train_miou": nan,
           "val_loss": va.loss, "val_oa": va_s["oa"], "val_miou": va_s["miou"], "lr": nan,
           "sec_epoch": va.seconds, "train_samples_per_s": nan,
           "eval_samples_per_s": va.n_samples / va.seconds if va.seconds > 0 else nan,
           "peak_mem_mb": float(peak_memory_mb(device))}
    state = TrainState(epoch=0, best_epoch=0, best_score=va_s["miou"], best_model=engine.raw.state_dict(),
                       best_val={**va_s, "loss": va.loss}, history=[row])
    if engine.ctx.is_main:
        _write_history(out, state.history)
        if scalars is not None:
            scalars.add(row)
    return _finish(config, engine, state, splits, test_loader, out, init)


def _write_history(out: Path, history: Sequence[Mapping[str, Any]]) -> None:
    atomic_write_csv(out / "history.csv", pd.DataFrame(list(history)).reindex(columns=list(HISTORY_COLUMNS)))


def _timing(history: Sequence[Mapping[str, Any]], test_seconds: float, peak_test: float) -> dict[str, float]:
    """metrics.json "timing": means over the epochs (validation for the eval speed), the peak memory of the
    whole run, and the total of the epochs and of the test evaluations (also over resumed sessions). The epoch-0
    row of an evaluation-only run counts for the eval speed and the total, not for the per-epoch means (None)."""
    hist = pd.DataFrame(history)
    trained = hist[hist["epoch"] >= 1]
    return {
        "sec_per_epoch": float(trained["sec_epoch"].mean()),
        "train_samples_per_s": float(trained["train_samples_per_s"].mean()),
        "eval_samples_per_s": float(hist["eval_samples_per_s"].mean()),
        "peak_mem_mb": float(max(hist["peak_mem_mb"].max(), peak_test)),
        "total_s": float(hist["sec_epoch"].sum() + test_seconds),
    }


def _test_all(engine: Engine, loader: DataLoader, config: RunConfig, splits: Splits) -> dict[str, Any]:
    """The test phase of the best model: clean, then every test-time noise level, then every ``(kind, severity)``
    of ``config.test_corruptions`` (on the clean images, seeded from the run seed and the patch id; the
    corruptions defined on raw reflectance use the statistics the test split is normalised with).

    ``gaussian`` is the test-time noise itself (the same draws of ``(seed, patch id, std)``, in normalised units):
    a ``gaussian`` severity whose std is one of the noise levels just evaluated in ``"normalized"`` units reuses
    that evaluation instead of repeating it.

    Returns ``{"clean": EpochResult, "test_noise": [...], "test_corruptions": [...], "seconds": total,
    "corruption_seconds": of the corruptions}``: the ``metrics.json`` entries ``{"std" | "kind", "severity",
    "oa", "miou", "iou"}`` in the config's order.
    """
    common = dict(seed=config.seed, amp_dtype=engine.amp_dtype, ctx=engine.ctx, progress=config.progress,
                  eval_mode=EVAL_MODE, eval_batch_size=config.eval_batch_size)
    results: dict[float, EpochResult] = {}
    for std in sorted({0.0, *config.test_noise_stds}):
        results[std] = evaluate_epoch(engine.eval_model, loader, engine.device, noise_std=std,
                                      noise_space=config.noise_space, channel_std=splits.test_std,
                                      desc=f"test (noise {std:g})", **common)
    curve = []
    for std in config.test_noise_stds:
        s = scores(results[std].cm)
        curve.append({"std": std, "oa": s["oa"], "miou": s["miou"], "iou": s["iou"]})
    corrupted = []
    corruption_seconds = 0.0
    for name in config.test_corruptions:
        kind, severity = name.split(":")
        same_noise = float(SEVERITY_TABLE[kind][int(severity)]["std"]) if kind == "gaussian" else None
        if same_noise in results and config.noise_space == "normalized":
            res = results[same_noise]
        else:
            res = evaluate_epoch(engine.eval_model, loader, engine.device, corruption=(kind, int(severity)),
                                 norm=(splits.test_mean, splits.test_std), desc=f"test ({name})", **common)
            corruption_seconds += res.seconds
        s = scores(res.cm)
        corrupted.append({"kind": kind, "severity": int(severity), "oa": s["oa"], "miou": s["miou"],
                          "iou": s["iou"]})
    return {"clean": results[0.0], "test_noise": curve, "test_corruptions": corrupted,
            "seconds": sum(r.seconds for r in results.values()) + corruption_seconds,
            "corruption_seconds": corruption_seconds}


def _finish(config: RunConfig, engine: Engine, state: TrainState, splits: Splits, test_loader: DataLoader,
            out: Path, init: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Test the best model (:func:`_test_all`) and write confusion.npy, predictions.npz and (last) metrics.json.
    Best epoch 0 (an evaluation-only run) has no train scores (``train`` null). Test-time noise in raw units uses
    the std the test split is normalised with (``splits.test_std``). metrics.json records the evaluation mode
    (``eval_mode``: :data:`utae.training.engine.EVAL_MODE`, "pad_free") and the scores at each of ``test_corruptions``
    (``[]`` without any); with any, its ``timing`` adds ``test_corruptions_s`` (their evaluations' seconds)."""
    engine.raw.load_state_dict(state.best_model)
    reset_peak_memory(engine.device)
    tested = _test_all(engine, test_loader, config, splits)
    test, test_seconds = tested["clean"], tested["seconds"]
    best = state.history[state.best_epoch - 1] if state.best_epoch >= 1 else None
    metrics = {
        "run_id": config.default_run_id(),
        "eval_mode": EVAL_MODE,  # validation and test patch by patch, unpadded (utae.training.engine.evaluate_epoch)
        "model": {"name": config.model, "options": to_jsonable(model_options(config)),
                  "parameters": count_parameters(engine.raw)},
        "best_epoch": state.best_epoch,
        "epochs_completed": state.epoch,
        "seeds": config.stream_seeds(),  # the effective seed of each stream (docs/seeds.md)
        # what the model was trained on, for prediction (utae.predict.model_source)
        "normalisation": {"mean": np.asarray(splits.mean, np.float32).tolist(),
                          "std": np.asarray(splits.std, np.float32).tolist(), "folds": list(splits.train_folds)},
        "patch_size": splits.patch_size,
        "n_train": len(splits.train), "n_val": len(splits.val), "n_test": len(splits.test),
        "train": None if best is None else {"oa": best["train_oa"], "miou": best["train_miou"],
                                            "loss": best["train_loss"]},
        "val": state.best_val,
        "test": {**scores(test.cm), "loss": test.loss},
        "test_noise": tested["test_noise"],
        "test_corruptions": tested["test_corruptions"],
        "timing": _timing(state.history, test_seconds, float(peak_memory_mb(engine.device))),
    }
    if config.test_corruptions:
        metrics["timing"]["test_corruptions_s"] = tested["corruption_seconds"]
    if init is not None:
        metrics["init_weights"] = dict(init)
    if engine.ctx.is_main:
        atomic_save_npy(out / "confusion.npy", test.cm.astype(np.int64))
        examples = predict_examples(engine.eval_model, splits.test, engine.device, n=config.n_examples,
                                    mean=splits.test_mean, std=splits.test_std, amp_dtype=engine.amp_dtype)
        atomic_savez(out / "predictions.npz", examples)
        atomic_write_json(out / "metrics.json", metrics)
    barrier(engine.ctx)
    return read_json(out / "metrics.json")
