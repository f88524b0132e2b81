"""Runs with the corruptions of utae.perturb.corruptions: the training augmentation (CorruptedDataset), the test phase
(metrics.json's eval_mode and test_corruptions), the sweep's case keys and the corruption presets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from utae.util.atomic import read_json
from utae.config.run_config import RunConfig, run_id_for
from utae.perturb.wrappers import CorruptedDataset, select_corrupted
from utae.perturb.kinds import KINDS, SEVERITIES, all_test_corruptions, severity_table_rows
from utae.pastis.dataset import pad_collate
from utae.training.engine import EVAL_MODE
from utae.training.loaders import make_datasets
from utae.perturb.noise import NoisyDataset, select_noisy
from utae.study.runs import load_test_corruptions
from utae.training.run import run
from utae.config.sweepfile import SweepError, load_config_file, load_sweep

from helpers import tiny_model, tiny_sweep_fixed, write_sweep

REPO = Path(__file__).resolve().parents[2]
TINY = dict(**tiny_model(levels=3), d_k=4, batch_size=2, device="cpu", progress=False)
TRAIN_CLOUDS = {"kind": "clouds", "severity": [1, 5], "fraction": 0.5}


@pytest.fixture(scope="module")
def tiny_root(synthetic_pastis) -> str:
    """15 patches of 16x16 (9 train, 3 val, 3 test), 3 to 5 dates each."""
    return str(synthetic_pastis(n_patches=15, size=16, t_range=(3, 5), seed=3))


class _Series(torch.utils.data.Dataset):
    """``n`` small normalised series (T from 4 to 9, 10 bands, 8x8), each with its own values."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(1000 + index)
        t = 4 + index % 6
        return {"image": torch.randn((t, 10, 8, 8), generator=g), "dates": torch.arange(t) * 10 + index,
                "mask": torch.zeros((8, 8), dtype=torch.long), "patch_id": index}


NORM = (np.full(10, 1000.0), np.full(10, 500.0))


# --------------------------------------------------------------------------------------------------
# The training augmentation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "fraction"), [(200, 0.25), (9, 0.5), (7, 1.0)])
def test_the_training_corruption_hits_exactly_its_seeded_share(n: int, fraction: float) -> None:
    base = _Series(n)
    data = CorruptedDataset(base, {"kind": "clouds", "severity": [1, 5], "fraction": fraction}, seed=0, norm=NORM)
    chosen = data.corrupted_indices
    assert len(chosen) == int(round(fraction * n)) and chosen == sorted(set(chosen))
    changed = [i for i in range(n) if not torch.equal(data[i]["image"], base[i]["image"])]
    assert changed == chosen  # clouds always cover at least one frame of a chosen sample, and nothing else
    assert all(data[i] is not None and torch.equal(data[i]["dates"], base[i]["dates"]) for i in range(n))
    assert chosen == select_corrupted(n, fraction, 0, "clouds")


def test_a_training_corruption_that_would_corrupt_no_sample_is_refused(tiny_root: str) -> None:
    """fraction 0.01 of 24 samples: round(0.24) = 0, a run named for its augmentation that corrupts nothing."""
    spec = {"kind": "clouds", "severity": [1, 5], "fraction": 0.01}
    with pytest.raises(ValueError, match=r"^train_corruption.fraction=0.01 selects no sample of the 24 training "
                                         r"samples \(round\(0.01 x 24\) = 0\); the smallest fraction that selects "
                                         r"one is 0.0417 \(1/24\)$"):
        CorruptedDataset(_Series(24), spec, seed=0, norm=NORM)
    # the fraction the message gives selects one sample; round(0.5) = 0, so 0.5 / n is not enough
    assert len(CorruptedDataset(_Series(24), {**spec, "fraction": 0.0417}, seed=0, norm=NORM).corrupted_indices) == 1
    with pytest.raises(ValueError, match="selects no sample"):
        select_corrupted(24, 0.5 / 24, 0, "clouds")
    # through a run's datasets: the 9 training patches of the tiny dataset, limited to 4
    cfg = RunConfig(dataset_root=tiny_root, train_limit=4, train_corruption={**spec, "fraction": 0.1}, **TINY)
    with pytest.raises(ValueError, match=r"^train_corruption.fraction=0.1 selects no sample of the 4 training"):
        make_datasets(cfg)
    cfg = cfg.replace(train_corruption=None, noise_std=1.0, noise_fraction=0.1)
    with pytest.raises(ValueError, match=r"^noise_fraction=0.1 selects no sample of the 4 training samples .* "
                                         r"is 0.25 \(1/4\)$"):
        make_datasets(cfg)
    assert len(make_datasets(cfg.replace(noise_fraction=0.25)).train.noisy_indices) == 1


def test_the_mix_gives_each_sample_one_realistic_kind() -> None:
    from scipy.stats import chisquare

    from utae.perturb.wrappers import training_seed
    from utae.perturb.kinds import MIX_KINDS
    from utae.perturb.corruptions import corrupt

    base = _Series(300)
    data = CorruptedDataset(base, {"kind": "mix", "severity": [1, 5], "fraction": 1.0}, seed=4, norm=NORM)
    kinds = [data.kind_of(i) for i in range(300)]
    assert set(kinds) == set(MIX_KINDS) and "gaussian" not in MIX_KINDS and len(MIX_KINDS) == len(KINDS) - 1
    # uniform over the 6 kinds: 300 draws, about 50 each; a chi-square test at the 0.1% level (the draws are
    # seeded, so this checks the draw's definition, not luck)
    assert chisquare([kinds.count(k) for k in MIX_KINDS]).pvalue > 1e-3
    for i in (0, 7, 123):  # each sample is exactly that kind's corruption at its severity, seeded as a single kind's
        want, want_dates, _ = corrupt(base[i]["image"], base[i]["dates"], kinds[i], data.severity_of(i),
                                      seed=training_seed(4), patch_id=i, norm=NORM)
        assert torch.equal(data[i]["image"], want) and torch.equal(data[i]["dates"], want_dates)
    again = CorruptedDataset(base, {"kind": "mix", "severity": [1, 5], "fraction": 1.0}, seed=4, norm=NORM)
    assert [again.kind_of(i) for i in range(299, -1, -1)] == kinds[::-1]
    assert kinds != [CorruptedDataset(base, {"kind": "mix", "severity": 3, "fraction": 1.0}, seed=5,
                                      norm=NORM).kind_of(i) for i in range(300)]
    assert data.kind_of(0) is not None and CorruptedDataset(base, TRAIN_CLOUDS, seed=0, norm=NORM).kind_of(
        next(i for i in range(300) if i not in CorruptedDataset(base, TRAIN_CLOUDS, seed=0, norm=NORM)._chosen)) is None


def test_the_mix_is_a_training_augmentation_only(tiny_root: str) -> None:
    cfg = RunConfig(dataset_root=tiny_root, train_corruption={"kind": "mix", "severity": [1, 5], "fraction": 0.25})
    assert cfg.train_corruption == {"kind": "mix", "severity": [1, 5], "fraction": 0.25}
    with pytest.raises(ValueError, match=r"test_corruptions\.kind must be one of gaussian, .*; got 'mix' \('mix' is "
                                         r"a training augmentation only\)"):
        RunConfig(dataset_root=tiny_root, test_corruptions=["mix:3"])
    from utae.study.tables import training_augmentation
    assert training_augmentation(0.0, cfg.train_corruption) == "mix 1-5"


def test_the_training_corruption_is_deterministic_and_its_own_draw() -> None:
    base = _Series(200)
    spec = {"kind": "clouds", "severity": [1, 5], "fraction": 0.25}
    a, b = CorruptedDataset(base, spec, seed=0, norm=NORM), CorruptedDataset(base, spec, seed=0, norm=NORM)
    order = list(range(200))[::-1]
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in order)  # another order, another instance
    assert a.corrupted_indices != CorruptedDataset(base, spec, seed=1, norm=NORM).corrupted_indices
    # independent of the noise's choice of samples for the same seed and fraction
    assert a.corrupted_indices != select_noisy(200, 0.25, 0)
    severities = [a.severity_of(i) for i in a.corrupted_indices]
    assert set(severities) == set(SEVERITIES)  # 50 draws over 5 levels: each is missed with probability 0.8^50
    assert all(a.severity_of(i) == 0 for i in range(200) if i not in a.corrupted_indices)
    fixed = CorruptedDataset(base, {"kind": "haze", "severity": 3, "fraction": 0.25}, seed=0, norm=NORM)
    assert {fixed.severity_of(i) for i in fixed.corrupted_indices} == {3}


def test_the_training_corruption_does_not_depend_on_the_workers() -> None:
    data = CorruptedDataset(_Series(12), {"kind": "missing_dates", "severity": [3, 5], "fraction": 0.5}, seed=2,
                            norm=NORM)

    def batches(workers: int) -> list[dict]:
        return list(DataLoader(data, batch_size=3, num_workers=workers, collate_fn=pad_collate))

    one, two = batches(0), batches(2)
    for x, y in zip(one, two, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in ("image", "dates", "pad_mask"))
    lengths = [data[i]["image"].shape[0] for i in range(12)]
    for i in range(12):  # missing_dates shortens the chosen series only, frames and dates together
        assert (lengths[i] < _Series(12)[i]["image"].shape[0]) == (i in data.corrupted_indices)
        assert data[i]["dates"].shape == (lengths[i],)


def test_make_datasets_wraps_the_corruption_inside_the_noise(tiny_root: str, tmp_path: Path) -> None:
    plain = make_datasets(RunConfig(dataset_root=tiny_root, **TINY))
    assert not isinstance(plain.train, (CorruptedDataset, NoisyDataset))  # old configs: the training set of today
    both = make_datasets(RunConfig(dataset_root=tiny_root, noise_std=1.0, noise_fraction=0.5,
                                   train_corruption=TRAIN_CLOUDS, **TINY))
    assert isinstance(both.train, NoisyDataset) and isinstance(both.train.dataset, CorruptedDataset)
    inner = both.train.dataset
    assert np.array_equal(inner.norm[1], both.std) and inner.seed == 0
    assert len(inner.corrupted_indices) == round(0.5 * len(plain.train))


# --------------------------------------------------------------------------------------------------
# The test phase and metrics.json
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corrupted_run(tiny_root: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, dict, Path]:
    out = tmp_path_factory.mktemp("runs") / "cpu" / "r"  # <results>/runs/<platform>/<run_id>
    cfg = RunConfig(dataset_root=tiny_root, out_dir=str(out), epochs=1, train_corruption=TRAIN_CLOUDS,
                    test_corruptions=["clouds:1", "missing_dates:5", "gaussian:4"], test_noise_stds=(0.0, 1.0), **TINY)
    return cfg, run(cfg), out


def test_a_run_writes_eval_mode_and_its_test_corruptions(corrupted_run) -> None:
    cfg, metrics, out = corrupted_run
    stored = read_json(out / "metrics.json")
    assert stored == metrics and metrics["eval_mode"] == EVAL_MODE == "pad_free"
    entries = metrics["test_corruptions"]
    assert [(e["kind"], e["severity"]) for e in entries] == [("clouds", 1), ("missing_dates", 5), ("gaussian", 4)]
    for e in entries:
        assert set(e) == {"kind", "severity", "oa", "miou", "iou"}
        assert 0.0 <= e["oa"] <= 1.0 and 0.0 <= e["miou"] <= 1.0 and len(e["iou"]) == 20
        assert all(v is None or 0.0 <= v <= 1.0 for v in e["iou"]) and None in e["iou"]  # void (19) is null
        defined = [v for v in e["iou"] if v is not None]
        assert math.isclose(e["miou"], sum(defined) / len(defined), rel_tol=1e-9)
    assert [c["std"] for c in metrics["test_noise"]] == [0.0, 1.0]  # the noise levels as before
    noise1 = metrics["test_noise"][1]  # gaussian:4 is std 1.0, the same draws: the run reuses that evaluation
    assert {k: entries[2][k] for k in ("oa", "miou", "iou")} == {k: noise1[k] for k in ("oa", "miou", "iou")}
    assert metrics["timing"]["test_corruptions_s"] > 0
    config = read_json(out / "config.json")
    assert config["train_corruption"] == TRAIN_CLOUDS
    assert config["test_corruptions"] == ["clouds:1", "missing_dates:5", "gaussian:4"]
    frame = load_test_corruptions(out.parent.parent)
    assert sorted(frame["kind"]) == ["clouds", "gaussian", "missing_dates"] and set(frame["eval_mode"]) == {"pad_free"}


def test_the_corruption_scores_do_not_depend_on_the_batch_size(corrupted_run, tmp_path: Path) -> None:
    """The best weights (checkpoint.pt) evaluated again, one patch a batch: the very same scores."""
    cfg, metrics, out = corrupted_run
    again = run(cfg.replace(out_dir=str(tmp_path / "eval"), epochs=0, batch_size=1,
                            init_weights=str(out / "checkpoint.pt")))
    assert again["test_corruptions"] == metrics["test_corruptions"]
    assert again["test"]["miou"] == metrics["test"]["miou"]


# --------------------------------------------------------------------------------------------------
# Sweep files: case keys and the corruption presets
# --------------------------------------------------------------------------------------------------


def _case_sweep(tmp_path: Path, root: str, grid: dict, **fixed) -> Path:
    return write_sweep(tmp_path, {"dataset_root": root, "grid": grid, "fixed": tiny_sweep_fixed(**fixed)})


def test_case_keys_set_fields_together_with_readable_run_ids(tmp_path: Path, tiny_root: str) -> None:
    grid = {"aug": {"none": {}, "gaussian": {"noise_std": 1.0},
                    "clouds": {"train_corruption": TRAIN_CLOUDS}}, "seed": [0, 1]}
    path = _case_sweep(tmp_path, tiny_root, grid, noise_std=0.0)
    sweep = load_sweep(path)
    assert [p.run_id for p in sweep.points] == ["aug-none-seed0", "aug-none-seed1", "aug-gaussian-seed0",
                                                 "aug-gaussian-seed1", "aug-clouds-seed0", "aug-clouds-seed1"]
    by_id = {p.run_id: p for p in sweep.points}
    none = by_id["aug-none-seed1"].params
    assert none["noise_std"] == 0.0 and "train_corruption" not in none
    assert by_id["aug-gaussian-seed0"].params["noise_std"] == 1.0  # a case overrides fixed
    assert by_id["aug-clouds-seed1"].params["train_corruption"] == TRAIN_CLOUDS
    assert by_id["aug-clouds-seed1"].grid_values == {"aug": "clouds", "seed": 1}
    cfg = load_config_file(path, {"aug": "clouds", "seed": 1})
    assert cfg.train_corruption == TRAIN_CLOUDS and cfg.noise_std == 0.0 and cfg.seed == 1
    with pytest.raises(SweepError, match="aug=snow.*none, gaussian, clouds"):
        load_config_file(path, {"aug": "snow", "seed": 1})
    assert run_id_for({"noise_std": 0.5, "seed": 1}) == "noise0.5-seed1"  # field keys keep their rule


@pytest.mark.parametrize(("grid", "message"), [
    ({"aug": {"a": {"noise_stdd": 1.0}}}, "noise_stdd"),
    ({"aug": {"a": {"noise_std": 1.0}}, "noise_std": [0.0, 1.0]}, "noise_std.*grid key too"),
    ({"aug": {"a": {"seed": 1}}, "other": {"b": {"seed": 2}}}, "seed.*both grid.aug and grid.other"),
    ({"aug": {}}, "empty"),
    ({"aug": {"a": [1, 2]}}, "grid.aug.a must be a mapping"),
])
def test_bad_case_keys_name_the_key(tmp_path: Path, tiny_root: str, grid: dict, message: str) -> None:
    with pytest.raises(SweepError, match=message):
        load_sweep(_case_sweep(tmp_path, tiny_root, grid))


def test_the_corruption_study_preset_is_the_design_study_s_measured_design() -> None:
    """params/corruptions.yaml: the five augmentations on the design study's train180 design (params/design.yaml),
    the same configuration but the test-time noise levels, with seeds chosen by precision on every augmentation
    against the clean-trained model."""
    sweep = load_sweep(REPO / "params" / "corruptions.yaml")
    design = {p.run_id: p.params for p in load_sweep(REPO / "params" / "design.yaml").points}
    augs = ("none", "gaussian", "clouds", "missing_dates", "mix")
    assert sorted(p.run_id for p in sweep.points) == sorted(f"aug-{a}-seed{s}" for a in augs for s in range(7))
    for point in sweep.points:
        aug, seed = point.run_id.removeprefix("aug-").rsplit("-seed", 1)
        if aug in ("none", "mix") and int(seed) < 5:  # the design study ran 5 seeds
            measured = design[f"design-train180-aug-{aug}-seed{seed}"]
            differ = {k for k in set(point.params) | set(measured) if point.params.get(k) != measured.get(k)}
            assert differ == {"test_noise_stds"}, point.run_id
    rule = sweep.seed_rule
    assert (rule.min, rule.max, rule.step, rule.target_halfwidth) == (3, 7, 2, 3.0)
    assert {(c.case, c.against, c.metric) for c in rule.comparisons} == {(a, "none", "mpc") for a in augs[1:]}


def test_the_first_corruption_study_preset(tmp_path: Path) -> None:
    sweep = load_sweep(REPO / "params" / "corruptions-n150.yaml")
    default = load_sweep(REPO / "params" / "default.yaml")
    assert [p.run_id for p in sweep.points] == [f"aug-{a}-seed{s}" for a in ("none", "gaussian", "clouds",
                                                                           "missing_dates", "mix") for s in (0, 1, 2)]
    assert sweep.synthetic == default.synthetic and sweep.fixed["dataset_root"] == default.fixed["dataset_root"]
    root = tmp_path / "data"
    root.mkdir()
    configs = {p.run_id: RunConfig.from_dict({**p.params, "dataset_root": str(root)}) for p in sweep.points}
    reference = RunConfig.from_dict({**default.points[0].params, "dataset_root": str(root)})
    for run_id, cfg in configs.items():
        # the default study's data, model and schedule; every kind at every severity, evaluated in groups of 4
        # same-length patches (the default study: one patch per forward)
        same = {k: v for k, v in cfg.to_dict().items() if k not in ("noise_std", "seed", "train_corruption",
                                                                  "test_corruptions", "eval_batch_size")}
        assert same == {k: v for k, v in reference.to_dict().items() if k in same}, run_id
        assert cfg.test_corruptions == all_test_corruptions() and len(cfg.test_corruptions) == 35
        assert (cfg.eval_batch_size, reference.eval_batch_size) == (4, 1)
    assert configs["aug-none-seed0"].noise_std == 0.0 and configs["aug-none-seed0"].train_corruption is None
    gaussian = configs["aug-gaussian-seed1"]
    assert (gaussian.noise_std, gaussian.noise_fraction, gaussian.train_corruption) == (1.0, 0.25, None)
    for kind in ("clouds", "missing_dates", "mix"):
        cfg = configs[f"aug-{kind}-seed2"]
        assert cfg.noise_std == 0.0 and cfg.train_corruption == {"kind": kind, "severity": [1, 5], "fraction": 0.25}


@pytest.mark.parametrize("name", ["pretrained-corruptions", "corruptions-pastis"])
def test_the_real_data_corruption_presets(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "UTAE_PASTIS"
    for k in range(1, 6):
        (weights / f"Fold_{k}").mkdir(parents=True)
        (weights / f"Fold_{k}" / "model.pth.tar").write_bytes(b"")
    (tmp_path / "PASTIS").mkdir()
    monkeypatch.setenv("PASTIS_ROOT", str(tmp_path / "PASTIS"))
    monkeypatch.setenv("UTAE_WEIGHTS", str(weights))
    sweep = load_sweep(REPO / "params" / f"{name}.yaml")
    configs = [RunConfig.from_dict(p.params) for p in sweep.points]
    assert all(c.test_corruptions == all_test_corruptions() for c in configs)
    assert all(c.dataset_root == str(tmp_path / "PASTIS") for c in configs)
    if name == "pretrained-corruptions":
        assert sorted(c.fold for c in configs) == [1, 2, 3, 4, 5] and {c.epochs for c in configs} == {0}
        assert {c.norm_stats for c in configs} == {"own_folds"}
    else:
        augs = {(c.noise_std, None if c.train_corruption is None else c.train_corruption["kind"]) for c in configs}
        assert augs == {(0.0, None), (1.0, None), (0.0, "clouds"), (0.0, "missing_dates"), (0.0, "mix")}
        assert len(configs) == 15 and {c.seed for c in configs} == {0, 1, 2}
    assert {c.eval_batch_size for c in configs} == {4}


def test_the_documented_severity_table_is_the_modules() -> None:
    """docs/corruptions.md's severity table: one row a kind, the parameters of SEVERITY_TABLE at severities 1 to 5."""
    text = (REPO / "docs" / "corruptions.md").read_text()
    rows = severity_table_rows()
    assert len(rows) == len(KINDS) * len(SEVERITIES)
    for kind in KINDS:
        cells = [", ".join(f"{k} {v:g}" for k, v in r.items() if k not in ("kind", "severity"))
                 for r in rows if r["kind"] == kind]
        assert f"| `{kind}` | " + " | ".join(cells) + " |" in text, kind


def test_gaussian_corruption_is_the_test_noise_so_the_run_reuses_it(tiny_root: str) -> None:
    """The run scores gaussian:4 with its noise-1.0 evaluation: valid only because both draw the same noise."""
    from utae.training.engine import build_engine, evaluate_epoch
    from utae.training.loaders import make_loader
    from utae.perturb.kinds import SEVERITY_TABLE

    cfg = RunConfig(dataset_root=tiny_root, **TINY)
    splits = make_datasets(cfg)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = build_engine(cfg, cpu, None, steps_per_epoch=1).raw
    loader = make_loader(splits.test, batch_size=2, train=False, seed=0, device=cpu)
    for severity in SEVERITIES:
        std = SEVERITY_TABLE["gaussian"][severity]["std"]
        noisy = evaluate_epoch(model, loader, cpu, noise_std=std, seed=5)
        corrupted = evaluate_epoch(model, loader, cpu, corruption=("gaussian", severity), seed=5)
        assert np.array_equal(noisy.cm, corrupted.cm) and noisy.loss == corrupted.loss
