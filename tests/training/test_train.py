"""The training engine on a tiny synthetic PASTIS: a whole run, its files, evaluation and the pieces of a step."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import utae.training.engine as engine_mod
import utae.training.run as run_mod
import utae.train as train_mod
from utae.pastis.classes import VOID_LABEL
from utae.pastis.dataset import PastisDataset, pad_collate
from utae.pastis.metadata import FOLD_ROTATIONS, fold_norm_stats, read_norm
from utae.training.distributed import ShardSampler
from utae.pastis.metrics import SCORE_KEYS
from utae.perturb.noise import NoisyDataset
from utae.util.atomic import read_json
from utae.training.checkpoint import TrainState, checkpoint_dict, read_checkpoint, restore
from utae.config.run_config import RunConfig
from utae.training.engine import NonFiniteLossError, build_engine, compute_loss, evaluate, is_better, train_one_epoch
from utae.training.loaders import make_datasets, make_loader
from utae.perturb.noise import add_test_noise
from utae.training.precision import torch_settings
from utae.training.run import HISTORY_COLUMNS, run

from helpers import tiny_model

SIZE = 16
TINY = dict(**tiny_model(levels=3),
            d_k=4, batch_size=2, device="cpu", progress=False)


@pytest.fixture(scope="session")
def tiny_root(synthetic_pastis) -> str:
    """15 patches of 16x16 (3 per fold: 9 train, 3 val, 3 test), 3 to 5 dates each."""
    return str(synthetic_pastis(n_patches=15, size=SIZE, t_range=(3, 5), seed=3))


def tiny_config(root: str, out: Path, **kw) -> RunConfig:
    return RunConfig(dataset_root=root, out_dir=str(out), **{**TINY, **kw})


@pytest.fixture(scope="module")
def finished_run(tiny_root: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, dict, Path]:
    out = tmp_path_factory.mktemp("run") / "r"
    cfg = tiny_config(tiny_root, out, epochs=2, noise_std=1.0, noise_fraction=0.5, test_noise_stds=(0.0, 1.0, 3.0),
                      n_examples=2, progress=True)
    before = _hash_tree(Path(tiny_root))
    metrics = run(cfg)
    assert _hash_tree(Path(tiny_root)) == before, "the run modified the dataset files"
    return cfg, metrics, out


def _hash_tree(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _check_fraction(value) -> None:
    assert value is None or (isinstance(value, float) and 0.0 <= value <= 1.0), value


def _check_scores(block: dict, with_loss: bool = True) -> None:
    assert set(SCORE_KEYS) <= set(block)
    for key in SCORE_KEYS:
        if key == "iou":
            assert len(block["iou"]) == 20 and block["iou"][VOID_LABEL] is None
            for v in block["iou"]:
                _check_fraction(v)
        else:
            _check_fraction(block[key])
    if with_loss:
        assert isinstance(block["loss"], float) and block["loss"] > 0


def test_run_writes_every_file_with_valid_values(finished_run) -> None:
    cfg, metrics, out = finished_run
    for name in ("config.json", "platform.json", "history.csv", "metrics.json", "confusion.npy", "checkpoint.pt",
                 "predictions.npz"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*tmp"))
    assert RunConfig.from_dict(read_json(out / "config.json")) == cfg

    plat = read_json(out / "platform.json")
    assert plat["deterministic"] is True
    assert (plat["amp"], plat["channels_last"], plat["compile"], plat["world_size"]) == ("off", False, False, 1)

    hist = pd.read_csv(out / "history.csv")
    assert tuple(hist.columns) == HISTORY_COLUMNS
    assert hist["epoch"].tolist() == [1, 2]
    for col in ("train_oa", "train_miou", "val_oa", "val_miou"):
        assert hist[col].between(0, 1).all(), col
    for col in ("train_loss", "val_loss", "sec_epoch", "train_samples_per_s", "eval_samples_per_s", "peak_mem_mb"):
        assert (hist[col] > 0).all() and np.isfinite(hist[col]).all(), col

    assert metrics == read_json(out / "metrics.json")
    assert set(metrics) == {"run_id", "best_epoch", "epochs_completed", "n_train", "n_val", "n_test", "train",
                            "val", "test", "test_noise", "eval_mode", "test_corruptions", "timing", "model", "seeds",
                            "normalisation", "patch_size"}
    assert metrics["seeds"] == cfg.stream_seeds()  # every stream field None: each is the run seed (docs/seeds.md)
    # the normalisation the model trained with (fold rotation 1's training folds) and the patch side, for predict
    norm = fold_norm_stats(read_norm(cfg.dataset_root), FOLD_ROTATIONS[0][0])
    assert metrics["normalisation"] == {"mean": norm[0].tolist(), "std": norm[1].tolist(), "folds": [1, 2, 3]}
    assert metrics["patch_size"] == SIZE
    from utae.models.registry import count_parameters
    from utae.training.engine import build_model

    # the run records its model: the name and options it was built with, and its trainable parameters
    assert metrics["model"]["name"] == "utae" and metrics["model"]["options"]["encoder_widths"] == list(cfg.encoder_widths)
    assert metrics["model"]["parameters"] == count_parameters(build_model(cfg)) > 0
    assert metrics["eval_mode"] == "pad_free" and metrics["test_corruptions"] == []  # no test_corruptions asked
    assert metrics["run_id"] == "fold1-noise1-seed0"  # one run-id rule (utae.config.run_config.run_id_for)
    assert metrics["best_epoch"] in (1, 2) and metrics["epochs_completed"] == 2
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (9, 3, 3)
    best = hist.iloc[metrics["best_epoch"] - 1]
    assert metrics["val"]["miou"] == pytest.approx(best["val_miou"]) == hist["val_miou"].max()
    assert metrics["train"]["oa"] == pytest.approx(best["train_oa"])
    assert set(metrics["train"]) == {"oa", "miou", "loss"}
    _check_scores(metrics["val"])
    _check_scores(metrics["test"])
    assert [e["std"] for e in metrics["test_noise"]] == [0.0, 1.0, 3.0]
    for entry in metrics["test_noise"]:
        assert set(entry) == {"std", "oa", "miou", "iou"}
        _check_fraction(entry["oa"])
        _check_fraction(entry["miou"])
    assert metrics["test_noise"][0]["oa"] == metrics["test"]["oa"]
    assert metrics["test_noise"][2]["oa"] != metrics["test"]["oa"]  # std 3 noise changes predictions
    timing = metrics["timing"]
    assert set(timing) == {"sec_per_epoch", "train_samples_per_s", "eval_samples_per_s", "peak_mem_mb", "total_s"}
    assert all(isinstance(v, float) and v > 0 for v in timing.values())
    assert timing["total_s"] >= 2 * timing["sec_per_epoch"] * 0.99

    cm = np.load(out / "confusion.npy")
    assert cm.shape == (20, 20) and cm.dtype == np.int64
    # Every test pixel is counted once: 3 patches with a batch size of 2 (no drop_last).
    assert cm.sum() == 3 * SIZE * SIZE
    from utae.pastis.metrics import scores

    assert scores(cm)["oa"] == pytest.approx(metrics["test"]["oa"])

    pred = np.load(out / "predictions.npz")
    assert set(pred.files) == {"rgb", "target", "pred", "patch_id"}
    assert pred["rgb"].shape == (2, SIZE, SIZE, 3) and pred["rgb"].dtype == np.float32
    assert 0.0 <= pred["rgb"].min() and pred["rgb"].max() <= 1.0 and pred["rgb"].std() > 0
    assert pred["target"].shape == pred["pred"].shape == (2, SIZE, SIZE)
    assert pred["pred"].min() >= 0 and pred["pred"].max() < 20
    test_ids = PastisDataset(cfg.dataset_root, folds=(5,)).ids
    assert set(pred["patch_id"].tolist()) <= set(test_ids)

    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["best_epoch"] == metrics["best_epoch"]
    assert set(ckpt["rng_per_rank"][0]) >= {"python", "numpy", "torch"}
    assert len(ckpt["history"]) == 2 and ckpt["best_model"] is not None and ckpt["optimizer"]["state"]


def test_finished_run_returns_stored_metrics_without_training(finished_run, monkeypatch) -> None:
    cfg, metrics, out = finished_run

    def boom(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(engine_mod, "train_one_epoch", boom)
    monkeypatch.setattr(run_mod, "make_datasets", boom)
    assert run(cfg) == metrics
    assert run(cfg.replace(progress=False, num_workers=1)) == metrics  # harmless fields may differ


def test_a_different_config_in_an_existing_run_dir_is_an_error(finished_run) -> None:
    cfg, _, out = finished_run
    with pytest.raises(ValueError, match=r"config\.json.*noise_std"):
        run(cfg.replace(noise_std=2.0))
    with pytest.raises(ValueError, match="epochs"):
        run(cfg.replace(epochs=3))


def test_limits_are_seeded_subsets(tiny_root: str, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_root, tmp_path, train_limit=4, val_limit=2, test_limit=1, seed=1)
    a, b = make_datasets(cfg), make_datasets(cfg)
    assert (len(a.train), len(a.val), len(a.test)) == (4, 2, 1)
    assert a.train.indices == b.train.indices
    other = make_datasets(cfg.replace(seed=2))
    assert [a.train.indices, a.val.indices] != [other.train.indices, other.val.indices]
    with pytest.raises(ValueError, match="train_limit"):
        make_datasets(cfg.replace(train_limit=10))


def test_training_noise_wraps_the_training_set_only(tiny_root: str, tmp_path: Path) -> None:
    splits = make_datasets(tiny_config(tiny_root, tmp_path, noise_std=1.0, noise_fraction=1 / 3))
    assert isinstance(splits.train, NoisyDataset) and len(splits.train.noisy_indices) == 3
    assert not isinstance(splits.val, NoisyDataset) and not isinstance(splits.test, NoisyDataset)
    # val/test share the training folds' normalisation
    assert np.array_equal(splits.val.mean, splits.mean) and np.array_equal(splits.test.std, splits.std)
    clean = make_datasets(tiny_config(tiny_root, tmp_path, noise_std=0.0))
    assert isinstance(clean.train, PastisDataset)


def test_compute_loss_is_the_official_weighted_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 20, 5, 6, generator=g)
    target = torch.randint(0, 20, (2, 5, 6), generator=g)
    target[0, 0, :] = VOID_LABEL
    weight = torch.ones(20)
    weight[VOID_LABEL] = 0
    loss_sum, n = compute_loss(logits, target)
    assert int(n) == int((target != VOID_LABEL).sum())
    assert float(loss_sum / n) == pytest.approx(float(F.cross_entropy(logits, target, weight=weight)), rel=1e-6)
    all_void = torch.full((1, 2, 2), VOID_LABEL)
    s, n0 = compute_loss(torch.randn(1, 20, 2, 2), all_void)
    assert float(s) == 0.0 and int(n0) == 0
    assert compute_loss(logits.to(torch.bfloat16), target)[0].dtype == torch.float32


def test_best_epoch_tie_goes_to_the_later_epoch() -> None:
    assert is_better(0.5, 0.5)
    assert is_better(0.6, 0.5)
    assert not is_better(0.4, 0.5)
    assert not is_better(math.nan, 0.1)
    assert is_better(0.0, -math.inf)


def test_test_time_noise_is_seeded_and_keeps_padding(tiny_root: str) -> None:
    ds = PastisDataset(tiny_root, folds=(5,))
    batch = pad_collate([ds[i] for i in range(3)])
    assert batch["pad_mask"].any(), "the tiny set should have series of different lengths"
    a = add_test_noise(batch["image"], batch["pad_mask"], batch["patch_id"], 1.0, seed=4)
    b = add_test_noise(batch["image"], batch["pad_mask"], batch["patch_id"], 1.0, seed=4)
    c = add_test_noise(batch["image"], batch["pad_mask"], batch["patch_id"], 1.0, seed=5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    pad = batch["pad_mask"]
    assert torch.all(a[pad] == 0.0)  # padded frames stay exactly pad_value
    real = ~pad
    assert (a[real] - batch["image"][real]).std().item() == pytest.approx(1.0, rel=0.1)
    # The noise of a patch does not depend on the batch it is in.
    single = pad_collate([ds[1]])
    s = add_test_noise(single["image"], single["pad_mask"], single["patch_id"], 1.0, seed=4)
    t = int((~batch["pad_mask"][1]).sum())
    assert torch.equal(s[0, :t], a[1, :t])
    raw = add_test_noise(batch["image"], batch["pad_mask"], batch["patch_id"], 100.0, seed=4, space="raw",
                         channel_std=ds.std)
    assert torch.all(raw[pad] == 0.0)
    assert add_test_noise(batch["image"], batch["pad_mask"], batch["patch_id"], 0.0, seed=4) is batch["image"]


def test_evaluate_counts_every_sample_and_is_reproducible(tiny_root: str, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_root, tmp_path)
    torch.manual_seed(0)
    engine = build_engine(cfg, torch.device("cpu"), None)
    ds = PastisDataset(tiny_root, folds=(4, 5))  # 6 patches
    loader = make_loader(ds, batch_size=4, train=False, seed=0, device=torch.device("cpu"))
    cm, loss = evaluate(engine.raw, loader, torch.device("cpu"))
    assert cm.dtype == np.int64 and cm.sum() == 6 * SIZE * SIZE and loss > 0
    cm_noisy_1, _ = evaluate(engine.raw, loader, torch.device("cpu"), noise_std=2.0, seed=1)
    cm_noisy_2, _ = evaluate(engine.raw, loader, torch.device("cpu"), noise_std=2.0, seed=1)
    assert np.array_equal(cm_noisy_1, cm_noisy_2) and not np.array_equal(cm_noisy_1, cm)
    assert engine.raw.training  # evaluate restores the mode it found


def test_shard_sampler_covers_every_sample() -> None:
    for n in (0, 1, 5, 7, 8):
        for world in (1, 2, 3):
            shards = [list(ShardSampler(n, shuffle=False, rank=r, world_size=world)) for r in range(world)]
            assert sum(shards, []) == list(range(n))  # contiguous, no padding, no duplicate
            assert [len(ShardSampler(n, shuffle=False, rank=r, world_size=world)) for r in range(world)] == \
                [len(s) for s in shards]
            train = [ShardSampler(n, shuffle=True, seed=1, rank=r, world_size=world) for r in range(world)]
            lists = [list(s) for s in train]
            assert len({len(x) for x in lists}) <= 1 and all(len(x) == len(s) for x, s in zip(lists, train))
            assert set(sum(lists, [])) == set(range(n))
    s = ShardSampler(10, shuffle=True, seed=0)
    e1 = list(s)
    s.set_epoch(2)
    assert sorted(list(s)) == list(range(10)) and list(s) != e1
    s.set_epoch(0)
    assert list(s) == e1


def test_nonfinite_loss_names_epoch_and_batch_and_keeps_checkpoint(tiny_root: str, tmp_path: Path,
                                                                  monkeypatch) -> None:
    cfg = tiny_config(tiny_root, tmp_path / "nan", epochs=3, train_limit=4)
    real = engine_mod.compute_loss
    calls = {"n": 0}

    def poisoned(logits, target):
        loss_sum, n = real(logits, target)
        if torch.is_grad_enabled():  # training batches only; 2 per epoch
            calls["n"] += 1
            if calls["n"] == 4:  # epoch 2, batch 2
                loss_sum = loss_sum * float("nan")
        return loss_sum, n

    monkeypatch.setattr(engine_mod, "compute_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="epoch 2, batch 2"):
        run(cfg)
    ckpt = torch.load(tmp_path / "nan" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (tmp_path / "nan" / "metrics.json").exists()
    assert len(pd.read_csv(tmp_path / "nan" / "history.csv")) == 1


def test_bf16_autocast_trains_on_cpu(tiny_root: str, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_root, tmp_path, amp="bf16", train_limit=2)
    torch.manual_seed(0)
    engine = build_engine(cfg, torch.device("cpu"), torch.bfloat16)
    loader = make_loader(make_datasets(cfg).train, batch_size=2, train=True, seed=0, device=torch.device("cpu"))
    result = train_one_epoch(engine, loader, epoch=1)
    assert math.isfinite(result.loss) and result.cm.sum() == 2 * SIZE * SIZE


def test_fp16_grad_scaler_path_skips_overflowing_steps_and_checkpoints_its_scale(tiny_root: str,
                                                                                  tmp_path: Path) -> None:
    # fp16 is a CUDA mode for users; the CPU has float16 autocast too, which exercises the same scaler code.
    cpu = torch.device("cpu")
    cfg = tiny_config(tiny_root, tmp_path, train_limit=2)
    torch.manual_seed(0)
    engine = build_engine(cfg, cpu, torch.float16)
    assert isinstance(engine.scaler, torch.amp.GradScaler) and engine.scaler.is_enabled()
    loader = make_loader(make_datasets(cfg).train, batch_size=2, train=True, seed=0, device=cpu)
    before = {k: v.detach().clone() for k, v in engine.raw.named_parameters()}  # not the BatchNorm statistics

    # A scale of 2**60 overflows float16 gradients: the scaler must skip the step and halve the scale.
    engine.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)
    result = train_one_epoch(engine, loader, epoch=1)
    assert math.isfinite(result.loss)
    assert engine.scaler.get_scale() == 2.0**59
    assert all(torch.equal(before[k], v) for k, v in engine.raw.named_parameters()), "an overflowing step was applied"

    # With a workable scale the step is applied, and the scale travels with the checkpoint.
    engine.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    train_one_epoch(engine, loader, epoch=2)
    assert engine.scaler.get_scale() == 2.0**8
    assert any(not torch.equal(before[k], v) for k, v in engine.raw.named_parameters())
    state = TrainState(epoch=2, history=[])
    torch.save(checkpoint_dict(engine.raw, engine.optimizer, state, cfg.to_dict(), scaler=engine.scaler),
               tmp_path / "ckpt.pt")
    fresh = build_engine(cfg, cpu, torch.float16)
    assert fresh.scaler.get_scale() != 2.0**8
    restore(read_checkpoint(tmp_path / "ckpt.pt"), fresh.raw, fresh.optimizer, scaler=fresh.scaler)
    assert fresh.scaler.get_scale() == 2.0**8


def test_tf32_is_a_gpu_mode_and_off_means_ieee_float32(tiny_root: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="amp='tf32' needs an Ampere"):
        tiny_config(tiny_root, tmp_path, amp="tf32")
    out = tmp_path / "off"
    run(tiny_config(tiny_root, out, epochs=1, test_noise_stds=(0.0,), n_examples=0))
    platform = read_json(out / "platform.json")
    assert platform["amp"] == "off" and platform["float32_math"] == "ieee"


def test_torch_settings_are_restored() -> None:
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    with torch_settings(True):
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    with torch_settings(False):
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before


def test_cli_stops_after_the_epochs_asked_and_resumes(tiny_root: str, tmp_path: Path, capsys) -> None:
    import yaml

    out = tmp_path / "cli"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_root, out, epochs=2, train_limit=2, test_noise_stds=(0.0,),
                                               n_examples=0).to_dict()))
    with pytest.raises(SystemExit):
        train_mod.main(["--config", str(path), "--max-epochs-this-call", "0"])
    assert "--max-epochs-this-call must be at least 1, got 0" in capsys.readouterr().err
    assert train_mod.main(["--config", str(path), "--max-epochs-this-call", "1"]) == 0
    assert "stopped after 1 epoch(s)" in capsys.readouterr().out
    assert len(pd.read_csv(out / "history.csv")) == 1 and not (out / "metrics.json").exists()
    assert train_mod.main(["--config", str(path)]) == 0
    assert "best epoch" in capsys.readouterr().out
    assert len(pd.read_csv(out / "history.csv")) == 2


def test_cpu_optimizer_is_multi_tensor_adam_with_the_default_numbers() -> None:
    """The engine's CPU Adam runs its foreach implementation (fewer Python operations a step); on the CPU that
    loops over the same kernels with the same scalars as the default single-tensor one, so six steps of a model
    with a learning-rate schedule end at the same parameters and moments bit for bit."""
    from utae.models.utae import UTAE
    from utae.training.engine import make_optimizer, make_scheduler

    cpu = torch.device("cpu")
    assert make_optimizer([torch.zeros(1, requires_grad=True)], 1e-3, cpu).defaults["foreach"] is True
    ends = []
    for foreach in (True, False):
        torch.manual_seed(0)
        model = UTAE(**tiny_model())
        opt = make_optimizer(model.parameters(), 1e-2, cpu) if foreach else \
            torch.optim.Adam(model.parameters(), lr=1e-2, foreach=False)
        sched = make_scheduler(opt, "onecycle", total_steps=6, warmup=0.3)
        g = torch.Generator().manual_seed(1)
        x, pos = torch.randn(2, 4, 10, 16, 16, generator=g), torch.tensor([[1, 20, 50, 90]] * 2)
        target = torch.randint(0, 20, (2, 16, 16), generator=g)
        for _ in range(6):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x, pos), target).backward()
            opt.step()
            if sched is not None:
                sched.step()
        ends.append([p.detach().clone() for p in model.parameters()]
                    + [s.clone() for st in opt.state.values() for s in (st["exp_avg"], st["exp_avg_sq"])])
    assert all(torch.equal(a, b) for a, b in zip(*ends))
