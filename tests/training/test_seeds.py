"""The seed streams of a run (docs/seeds.md): weights_seed, data_seed and augment_seed, their checks, the same-run
rule's reading of None, each stream acting on its own draws only, and the bit-identity of a run whose fields are
None with the run whose fields are set to the seeds the derivation gives."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from utae.config.run_config import STREAM_SEED_FIELDS, RunConfig, stream_seeds
from utae.rundir.paths import TIMING_COLUMNS
from utae.rundir.same_run import config_differences, result_differences
from utae.training.checkpoint import seed_everything
from utae.training.engine import build_engine
from utae.training.loaders import make_datasets
from utae.training.run import run
from utae.training.seeds import initial_model
from utae.util.atomic import read_json

from helpers import make_run, tiny_model

SIZE = 16
TINY = dict(**tiny_model(levels=3), d_k=4, batch_size=2, device="cpu", progress=False)
CORRUPTION = {"kind": "mix", "severity": [1, 5], "fraction": 0.5}


@pytest.fixture(scope="module")
def tiny_root(synthetic_pastis) -> str:
    """15 patches of 16x16 (9 train, 3 val, 3 test), 3 to 5 dates each."""
    return str(synthetic_pastis(n_patches=15, size=SIZE, t_range=(3, 5), seed=3))


def _config(root: str, **kw) -> RunConfig:
    return RunConfig(dataset_root=root, **{**TINY, **kw})


# --------------------------------------------------------------------------------------------------
# The fields
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STREAM_SEED_FIELDS)
@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_a_stream_seed_must_be_none_or_an_int_of_at_least_0(tiny_root: str, name: str, bad) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be None \(derived from seed\) or an int >= 0, got"):
        _config(tiny_root, **{name: bad})


def test_the_derivation_is_the_run_seed_for_a_field_left_none(tiny_root: str) -> None:
    cfg = _config(tiny_root, seed=7, data_seed=np.int64(2))
    assert cfg.data_seed == 2 and type(cfg.data_seed) is int  # numpy ints are stored as ints (config.json)
    assert cfg.stream_seeds() == {"seed": 7, "weights_seed": 7, "data_seed": 2, "augment_seed": 7}
    # a config.json written before the fields existed: every stream is its seed
    assert stream_seeds({"seed": 4}) == {"seed": 4, "weights_seed": 4, "data_seed": 4, "augment_seed": 4}


def test_the_same_run_rule_reads_none_as_the_derived_seed(tiny_root: str) -> None:
    old = {k: v for k, v in _config(tiny_root, seed=3).to_dict().items() if k not in STREAM_SEED_FIELDS}
    explicit = _config(tiny_root, seed=3, weights_seed=3, data_seed=3, augment_seed=3)
    assert config_differences(old, explicit) == []
    assert config_differences(_config(tiny_root, seed=3), explicit) == []
    other = _config(tiny_root, seed=3, augment_seed=4)
    assert config_differences(old, other) == ["augment_seed: stored None != new 4"]  # None: the run seed's
    # the run seed alone (the test-time draws) still makes another run when every stream is pinned
    pinned = dict(weights_seed=0, data_seed=0, augment_seed=0)
    assert config_differences(_config(tiny_root, seed=1, **pinned), _config(tiny_root, seed=2, **pinned)) == \
        ["seed: stored 1 != new 2"]


def test_result_differences_ignore_the_seeds_record(tmp_path: Path) -> None:
    """metrics.json "seeds" restates config.json: a rerun that records it is the same run as an old run without."""
    a = make_run(tmp_path / "a", "cpu-test-a", "r", seed=1, report=False)
    b = Path(shutil.copytree(a, tmp_path / "b"))
    metrics = read_json(b / "metrics.json")
    (b / "metrics.json").write_text(json.dumps({**metrics, "seeds": stream_seeds({"seed": 1})}))
    assert result_differences(a, b) == []
    (b / "metrics.json").write_text(json.dumps({**metrics, "n_train": 9}))
    assert result_differences(a, b) == ["metrics.json"]


# --------------------------------------------------------------------------------------------------
# Each stream acts on its own draws
# --------------------------------------------------------------------------------------------------


def _weights(cfg: RunConfig) -> dict[str, torch.Tensor]:
    seed_everything(cfg.stream_seeds()["data_seed"])  # as the run seeds the global RNGs
    engine = build_engine(cfg, torch.device("cpu"), None)
    return {k: v.clone() for k, v in engine.raw.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_initial_weights_follow_weights_seed_alone(tiny_root: str) -> None:
    base = _weights(_config(tiny_root, seed=0))
    assert _same(base, _weights(_config(tiny_root, seed=5, weights_seed=0)))
    assert _same(base, _weights(_config(tiny_root, seed=0, data_seed=5, augment_seed=6)))
    assert not _same(base, _weights(_config(tiny_root, seed=0, weights_seed=1)))


def test_initial_model_leaves_the_dropout_stream_where_one_initialisation_took_it() -> None:
    """With two seeds, the weights are those of a model built from weights_seed and the global generator is where
    a model built from data_seed leaves it (the dropout masks do not depend on the weights' seed)."""
    def build() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Dropout(0.5), torch.nn.Linear(7, 3))

    torch.manual_seed(4)
    alone = build()
    after_data = torch.get_rng_state()
    torch.manual_seed(9)
    from_weights = build()
    torch.manual_seed(4)
    model = initial_model(build, weights_seed=9, data_seed=4)
    assert _same(model.state_dict(), from_weights.state_dict())
    assert not _same(model.state_dict(), alone.state_dict())
    assert torch.equal(torch.get_rng_state(), after_data)
    torch.manual_seed(4)
    same = initial_model(build, weights_seed=4, data_seed=4)
    assert _same(same.state_dict(), alone.state_dict()) and torch.equal(torch.get_rng_state(), after_data)
    with pytest.raises(ValueError, match="^weights_seed must be an int >= 0, got -1$"):
        initial_model(build, weights_seed=-1, data_seed=0)


def test_the_augmentation_draws_follow_augment_seed_alone(tiny_root: str) -> None:
    def draws(**kw) -> tuple[list[int], list[int], torch.Tensor]:
        splits = make_datasets(_config(tiny_root, noise_std=1.0, noise_fraction=0.5, train_corruption=CORRUPTION, **kw))
        noisy = splits.train
        corrupted = noisy.dataset
        images = torch.cat([noisy[i]["image"].flatten() for i in range(len(noisy))])
        return noisy.noisy_indices, [corrupted.severity_of(i) for i in range(len(corrupted))], images

    base = draws(seed=0)
    for same in (draws(seed=3, augment_seed=0), draws(seed=0, weights_seed=3, data_seed=4)):
        assert same[0] == base[0] and same[1] == base[1] and torch.equal(same[2], base[2])
    other = draws(seed=0, augment_seed=1)
    assert not torch.equal(other[2], base[2])
    assert other[0] != base[0] or other[1] != base[1]


def test_the_training_subset_follows_data_seed_and_the_evaluation_subsets_the_run_seed(tiny_root: str) -> None:
    def subsets(**kw) -> tuple[list[int], ...]:
        s = make_datasets(_config(tiny_root, train_limit=5, val_limit=2, test_limit=2, **kw))
        return tuple(list(split.indices) for split in (s.train, s.val, s.test))

    base = subsets(seed=0)
    assert subsets(seed=0, weights_seed=2, augment_seed=2) == base
    moved = [subsets(seed=0, data_seed=k) for k in range(1, 6)]
    assert all(m[1:] == base[1:] for m in moved)  # validation and test: the run seed's
    assert any(m[0] != base[0] for m in moved)  # 5 draws of 5 of 9 patches: all equal has chance (1/126)^5
    assert subsets(seed=3, data_seed=0)[0] == base[0]


# --------------------------------------------------------------------------------------------------
# Bit-identity: fields None = fields set to the derivation
# --------------------------------------------------------------------------------------------------


def _files(out: Path) -> tuple[dict, bytes, list]:
    """metrics.json, confusion.npy and history.csv of a run, apart from what measures speed."""
    metrics = {k: v for k, v in read_json(out / "metrics.json").items() if k != "timing"}
    history = pd.read_csv(out / "history.csv").drop(columns=list(TIMING_COLUMNS))
    return metrics, (out / "confusion.npy").read_bytes(), history.to_numpy().tolist()


def test_a_run_with_the_fields_none_is_the_run_with_them_set_to_the_derived_seeds(tiny_root: str,
                                                                                  tmp_path: Path) -> None:
    """Training noise and a training corruption (the augment stream), dropout (the data stream) and the initial
    weights: the same metrics, confusion matrix and history, to the bit; a changed stream gives another run."""
    kw = dict(seed=2, epochs=2, noise_std=1.0, noise_fraction=0.5, train_corruption=CORRUPTION,
              test_noise_stds=(0.0, 1.0))
    derived = run(_config(tiny_root, out_dir=str(tmp_path / "none"), **kw))
    assert derived["seeds"] == {"seed": 2, "weights_seed": 2, "data_seed": 2, "augment_seed": 2}
    run(_config(tiny_root, out_dir=str(tmp_path / "set"), weights_seed=2, data_seed=2, augment_seed=2, **kw))
    assert _files(tmp_path / "none") == _files(tmp_path / "set")
    assert result_differences(tmp_path / "none", tmp_path / "set") == []
    for name in STREAM_SEED_FIELDS:
        out = tmp_path / name
        run(_config(tiny_root, out_dir=str(out), **{**kw, name: 5}))
        assert read_json(out / "metrics.json")["seeds"][name] == 5
        # another stream: another training (the history's losses differ)
        assert _files(out)[2] != _files(tmp_path / "none")[2], name
