"""Evaluating and fine-tuning from official U-TAE weights (``RunConfig.init_weights``), on a stand-in of the released
weights folder (``conf.json`` beside ``Fold_1/`` .. ``Fold_5/model.pth.tar``) that holds the reference weights of
``shared/reference/utae_official``, and on a small synthetic PASTIS.

The reference weights are random (see that folder's README), so these tests check the path, not the accuracy: every
file of an evaluation-only run, scores equal to a by-hand evaluation of the same weights on the same loader, the
normalisation of each split, and a clear error for each kind of bad input.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from utae.training.checkpoint import read_checkpoint
from utae.config.run_config import RunConfig
from utae.config.sweepfile import REPO_ROOT, SweepError, load_sweep
from utae.pastis.metadata import FOLD_ROTATIONS, fold_norm_stats, read_norm
from utae.training.engine import build_model, evaluate
from utae.training.loaders import make_datasets, make_loader
from utae.pastis.metrics import scores
from utae.util.atomic import read_json
from utae.training.run import HISTORY_COLUMNS, run
from utae.training.weights import WeightsError, load_init_weights, load_official_weights, read_state_dict

pytestmark = pytest.mark.slow  # sweeps and runs of the official-size model
OFFICIAL_ARCH = dict(encoder_widths=(64, 64, 64, 128), decoder_widths=(32, 32, 64, 128), out_conv=(32, 20),
                     n_head=16, d_model=256, d_k=4)
SMALL_ARCH = dict(encoder_widths=(16, 16, 16, 32), decoder_widths=(16, 16, 16, 32), out_conv=(16, 20), n_head=4,
                  d_model=32, d_k=4)
#: conf.json as the official train_semantic.py writes it (its arguments, defaults for --model utae).
OFFICIAL_CONF = {
    "model": "utae", "encoder_widths": [64, 64, 64, 128], "decoder_widths": [32, 32, 64, 128], "out_conv": [32, 20],
    "str_conv_k": 4, "str_conv_s": 2, "str_conv_p": 1, "agg_mode": "att_group", "encoder_norm": "group",
    "n_head": 16, "d_model": 256, "d_k": 4, "dataset_folder": "/data/PASTIS", "res_dir": "./results",
    "num_workers": 8, "rdm_seed": 1, "device": "cuda", "display_step": 50, "cache": False, "epochs": 100,
    "batch_size": 4, "lr": 0.001, "mono_date": None, "ref_date": "2018-09-01", "fold": None, "num_classes": 20,
    "ignore_index": -1, "pad_value": 0, "padding_mode": "reflect", "val_every": 1, "val_after": 0,
}
TEST_NOISE = (0.0, 1.0, 3.0)
BASE = dict(epochs=0, norm_stats="own_folds", batch_size=2, device="cpu", progress=False, seed=0,
            test_noise_stds=TEST_NOISE, n_examples=2, **OFFICIAL_ARCH)


def _write_release(folder: Path, state: dict[str, torch.Tensor], conf: dict | None = OFFICIAL_CONF,
                   folds: tuple[int, ...] = (1, 2, 3, 4, 5)) -> Path:
    """A stand-in of the released folder: conf.json and Fold_k/model.pth.tar, each an official checkpoint (a dict
    with "epoch", "state_dict" with DataParallel's "module." prefix, and "optimizer")."""
    folder.mkdir(parents=True)
    if conf is not None:
        (folder / "conf.json").write_text(json.dumps(conf, indent=4))
    for k in folds:
        (folder / f"Fold_{k}").mkdir()
        torch.save({"epoch": 100, "state_dict": {f"module.{name}": t for name, t in state.items()},
                    "optimizer": {"state": {}, "param_groups": [{"lr": 0.001, "params": [0, 1]}]}},
                   folder / f"Fold_{k}" / "model.pth.tar")
    return folder


@pytest.fixture(scope="module")
def reference_state(reference_dir: Path) -> dict[str, torch.Tensor]:
    with np.load(reference_dir / "state_dict.npz", allow_pickle=False) as data:
        return {k: torch.from_numpy(np.array(data[k])) for k in data.files}


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory, reference_state: dict[str, torch.Tensor]) -> Path:
    return _write_release(tmp_path_factory.mktemp("weights") / "UTAE_PASTIS", reference_state)


@pytest.fixture(scope="module")
def pastis(synthetic_pastis) -> str:
    """10 patches of 32x32 (2 per fold: 6 train, 2 val, 2 test), 3 to 4 dates each."""
    return str(synthetic_pastis(n_patches=10, size=32, t_range=(3, 4), seed=5))


def _template(release: Path) -> str:
    return str(release / "Fold_{fold}" / "model.pth.tar")


def _by_hand(config: RunConfig, weights: Path | None = None, state: dict | None = None) -> dict[float, np.ndarray]:
    """Test confusion matrices of the weights, evaluated outside utae.training.run: at each test-noise level (0 included)."""
    model = build_model(config)
    if state is not None:
        model.load_state_dict(state)
    else:
        load_official_weights(model, weights)
    splits = make_datasets(config)
    device = torch.device("cpu")
    loader = make_loader(splits.test, batch_size=config.batch_size, train=False, seed=config.seed, device=device)
    return {std: evaluate(model, loader, device, noise_std=std, seed=config.seed, noise_space=config.noise_space,
                          channel_std=splits.test_std)[0]
            for std in sorted({0.0, *config.test_noise_stds})}


def _check_eval_only_run(out: Path, config: RunConfig, weights: Path) -> dict:
    """Every file of an evaluation-only run, and its scores against a by-hand evaluation."""
    for name in ("config.json", "platform.json", "metrics.json", "confusion.npy", "predictions.npz", "history.csv"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint.pt").exists(), "an evaluation-only run trains nothing, so it keeps no checkpoint"
    assert RunConfig.from_dict(read_json(out / "config.json")) == config  # config.json round-trips
    metrics = read_json(out / "metrics.json")
    assert (metrics["best_epoch"], metrics["epochs_completed"], metrics["train"]) == (0, 0, None)
    assert [e["std"] for e in metrics["test_noise"]] == list(config.test_noise_stds)
    assert metrics["init_weights"] == {"path": str(weights.resolve()), "source": "official",
                                       "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                                       "checked_against": str(weights.resolve().parent.parent / "conf.json")}
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == list(HISTORY_COLUMNS)
    assert history["epoch"].tolist() == [0] and history["train_loss"].isna().all()
    assert history["val_miou"].iloc[0] == pytest.approx(metrics["val"]["miou"], nan_ok=True)
    by_hand = _by_hand(config, weights)
    stored = np.load(out / "confusion.npy", allow_pickle=False)
    np.testing.assert_array_equal(stored, by_hand[0.0])
    assert stored.sum() > 0
    for entry in metrics["test_noise"]:
        s = scores(by_hand[entry["std"]])
        assert entry["oa"] == s["oa"]
        assert (entry["miou"] == s["miou"]) or (entry["miou"] is None and math.isnan(s["miou"]))
    # Noise changes the input, so the matrices of the levels cannot all be equal (the check above can fail).
    assert any(not np.array_equal(by_hand[0.0], by_hand[s]) for s in TEST_NOISE if s > 0)
    return metrics


# --------------------------------------------------------------------------------------------------
# The pretrained sweep, end to end
# --------------------------------------------------------------------------------------------------


def test_pretrained_sweep_evaluates_every_fold(release: Path, pastis: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """params/pretrained.yaml, made small (CPU, 2 patches a batch, 3 noise levels): fold 1 through the notebook
    (utae.sweep.point.run_point), the other folds through utae.training.run.run with the sweep's own points."""
    import utae.sweep.point as pt

    doc = yaml.safe_load((REPO_ROOT / "params" / "pretrained.yaml").read_text())
    assert doc["fixed"]["init_weights"] == "${UTAE_WEIGHTS}/Fold_{fold}/model.pth.tar"
    doc["fixed"].update(device="cpu", batch_size=2, num_workers=0, test_noise_stds=list(TEST_NOISE), n_examples=2,
                        progress=False)
    path = tmp_path / "pretrained.yaml"
    path.write_text(yaml.safe_dump(doc))
    sweep = load_sweep(path, env={"PASTIS_ROOT": pastis, "UTAE_WEIGHTS": str(release)})
    assert [p.run_id for p in sweep.points] == [f"fold{k}" for k in range(1, 6)]
    results = tmp_path / "results"
    assert pt.run_point(sweep, "fold1", results=results, platform="plat", threads=1) \
        == "executed"
    assert (results / "reports" / "plat" / "fold1.html").is_file()
    for point in sweep.points:
        out = results / "runs" / "plat" / point.run_id
        assert point.params["init_weights"] == f"{release}/Fold_{{fold}}/model.pth.tar"  # {fold} survives the loader
        if point.run_id == "fold1":  # run by the notebook, which recorded the out_dir that run_point gave it
            config = RunConfig.from_dict({**point.params, "run_id": "fold1",
                                          "out_dir": read_json(out / "config.json")["out_dir"]})
        else:
            config = RunConfig.from_dict({**point.params, "out_dir": str(out), "run_id": point.run_id})
            assert run(config) == read_json(out / "metrics.json")
        assert config.init_weights_path() == release / f"Fold_{config.fold}" / "model.pth.tar"
        _check_eval_only_run(out, config, release / f"Fold_{config.fold}" / "model.pth.tar")


def test_own_folds_normalise_each_split_with_its_folds(pastis: str, release: Path) -> None:
    stats = read_norm(pastis)
    for fold in (1, 4):
        train_f, val_f, test_f = FOLD_ROTATIONS[fold - 1]
        own = make_datasets(RunConfig(dataset_root=pastis, fold=fold, init_weights=_template(release), **BASE))
        shared = make_datasets(RunConfig(dataset_root=pastis, fold=fold, init_weights=_template(release),
                                         **{**BASE, "norm_stats": "train_folds"}))
        for splits in (own, shared):
            np.testing.assert_array_equal(splits.mean, fold_norm_stats(stats, train_f)[0])
            np.testing.assert_array_equal(splits.std, fold_norm_stats(stats, train_f)[1])
        np.testing.assert_array_equal(own.test_mean, fold_norm_stats(stats, test_f)[0])
        np.testing.assert_array_equal(own.test_std, fold_norm_stats(stats, test_f)[1])
        np.testing.assert_array_equal(own.val.mean, fold_norm_stats(stats, val_f)[0])
        np.testing.assert_array_equal(shared.test_std, shared.std)
        np.testing.assert_array_equal(shared.val.std, shared.std)
        # The synthetic folds have statistics of their own, so the two modes differ (the checks above can fail).
        assert not np.array_equal(own.test_std, own.std)
        # The same raw test values, normalised with the test fold's own statistics or with the training folds'.
        assert own.test.folds == tuple(test_f)
        item, shared_item = own.test[0]["image"].numpy(), shared.test[0]["image"].numpy()
        restored = item * own.test_std[None, :, None, None] + own.test_mean[None, :, None, None]
        restored_shared = shared_item * shared.std[None, :, None, None] + shared.mean[None, :, None, None]
        assert not np.allclose(item, shared_item)
        # float32 round trips of raw values up to ~1e4: a relative error of a few float32 epsilons (1.2e-7 each).
        np.testing.assert_allclose(restored, restored_shared, rtol=1e-6, atol=1e-3)


def test_raw_test_noise_uses_the_test_split_std(release: Path, pastis: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import utae.training.run as run_mod

    seen = []
    original = run_mod.evaluate_epoch

    def spy(*args, **kwargs):
        seen.append((kwargs.get("desc"), kwargs.get("channel_std")))
        return original(*args, **kwargs)

    monkeypatch.setattr(run_mod, "evaluate_epoch", spy)
    config = RunConfig(dataset_root=pastis, fold=2, init_weights=_template(release), out_dir=str(tmp_path / "r"),
                       **{**BASE, "noise_space": "raw", "test_noise_stds": (0.0, 400.0)})
    metrics = run(config)
    test_std = fold_norm_stats(read_norm(pastis), FOLD_ROTATIONS[1][2])[1]
    test_calls = [std for desc, std in seen if desc.startswith("test")]
    assert len(test_calls) == 2 and all(np.array_equal(std, test_std) for std in test_calls)
    by_hand = _by_hand(config, release / "Fold_2" / "model.pth.tar")
    assert metrics["test_noise"][1]["oa"] == scores(by_hand[400.0])["oa"]


# --------------------------------------------------------------------------------------------------
# The config: {fold}, environment variables, epochs 0
# --------------------------------------------------------------------------------------------------


def test_fold_placeholder_and_environment(release: Path, pastis: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UTAE_TEST_WEIGHTS", str(release))
    config = RunConfig(dataset_root=pastis, fold=3, init_weights="${UTAE_TEST_WEIGHTS}/Fold_{fold}/model.pth.tar",
                       **BASE)
    assert config.init_weights == f"{release}/Fold_{{fold}}/model.pth.tar"
    assert config.init_weights_path() == release / "Fold_3" / "model.pth.tar"
    assert config.replace(fold=5).init_weights_path() == release / "Fold_5" / "model.pth.tar"
    assert RunConfig.from_dict(config.to_dict()) == config
    monkeypatch.setenv("UTAE_TEST_WEIGHTS_SHORT", str(release))
    short = RunConfig(dataset_root=pastis, init_weights="$UTAE_TEST_WEIGHTS_SHORT/Fold_1/model.pth.tar", **BASE)
    assert short.init_weights_path() == release / "Fold_1" / "model.pth.tar"
    monkeypatch.delenv("UTAE_TEST_UNSET_WEIGHTS", raising=False)
    with pytest.raises(ValueError, match="init_weights.*UTAE_TEST_UNSET_WEIGHTS"):
        RunConfig(dataset_root=pastis, init_weights="${UTAE_TEST_UNSET_WEIGHTS}/Fold_{fold}/model.pth.tar", **BASE)


def test_the_sweep_file_names_an_unset_weights_variable(pastis: str) -> None:
    with pytest.raises(SweepError, match="UTAE_WEIGHTS is not set"):
        load_sweep(REPO_ROOT / "params" / "pretrained.yaml", env={"PASTIS_ROOT": pastis})


def test_epochs_zero_needs_init_weights(pastis: str) -> None:
    with pytest.raises(ValueError, match="epochs.*init_weights"):
        RunConfig(dataset_root=pastis, **{**BASE, "epochs": 0})


def test_init_weights_directory_is_an_error(release: Path, pastis: str) -> None:
    for folder in (release, release / "Fold_2"):
        with pytest.raises(ValueError, match=r"init_weights \(fold 2\) points at a directory.*give the file, e\.g\. "
                                             + str(release) + r"/Fold_\{fold\}/model\.pth\.tar"):
            RunConfig(dataset_root=pastis, fold=2, init_weights=str(folder), **BASE)


# --------------------------------------------------------------------------------------------------
# Bad weights: each error names the fold and the file
# --------------------------------------------------------------------------------------------------


def test_missing_fold_file(tmp_path: Path, reference_state: dict, pastis: str) -> None:
    folder = _write_release(tmp_path / "w", reference_state, folds=(1, 2))
    template = _template(folder)
    with pytest.raises(ValueError, match=r"init_weights \(fold 3\): no such file .*Fold_3/model\.pth\.tar"):
        RunConfig(dataset_root=pastis, fold=3, init_weights=template, **BASE)
    config = RunConfig(dataset_root=pastis, fold=2, init_weights=template, **BASE)
    (folder / "Fold_2" / "model.pth.tar").unlink()  # gone after the config was made
    with pytest.raises(WeightsError, match=r"init_weights \(fold 2\): no such file .*Fold_2/model\.pth\.tar"):
        load_init_weights(build_model(config), config)


def test_conf_json_that_disagrees_with_the_config(release: Path, pastis: str) -> None:
    config = RunConfig(dataset_root=pastis, fold=4, init_weights=_template(release), **{**BASE, **SMALL_ARCH})
    conf = release / "conf.json"
    with pytest.raises(WeightsError) as err:
        load_init_weights(build_model(config), config)
    text = str(err.value)
    assert "init_weights (fold 4)" in text and str(release / "Fold_4" / "model.pth.tar") in text
    assert f"encoder_widths: the config says (16, 16, 16, 32) but {conf} says [64, 64, 64, 128]" in text
    assert f"n_head: the config says 4 but {conf} says 16" in text


def test_conf_json_with_an_option_this_tool_does_not_build(tmp_path: Path, reference_state: dict,
                                                          pastis: str) -> None:
    folder = _write_release(tmp_path / "w", reference_state, conf={**OFFICIAL_CONF, "agg_mode": "att_mean"},
                            folds=(1,))
    config = RunConfig(dataset_root=pastis, fold=1, init_weights=_template(folder), **BASE)
    with pytest.raises(WeightsError, match=r"fold 1.*agg_mode: this tool builds 'att_group' .* says 'att_mean'"):
        load_init_weights(build_model(config), config)


def test_weights_of_another_architecture_name_the_key(tmp_path: Path, reference_state: dict, pastis: str) -> None:
    """conf.json and the config say 16-wide, but the file holds the official 64-wide weights."""
    small_conf = {**OFFICIAL_CONF, **{k: list(v) if isinstance(v, tuple) else v for k, v in SMALL_ARCH.items()}}
    for conf in (small_conf, None):  # with a conf.json that disagrees with the weights, and with none
        folder = _write_release(tmp_path / f"w{conf is None}", reference_state, conf=conf, folds=(5,))
        config = RunConfig(dataset_root=pastis, fold=5, init_weights=_template(folder), **{**BASE, **SMALL_ARCH})
        path = folder / "Fold_5" / "model.pth.tar"
        with pytest.raises(WeightsError, match=r"init_weights \(fold 5\): " + str(path)
                           + r": key 'in_conv\.conv\.conv\.0\.weight' has shape \(64, 10, 3, 3\), expected "
                             r"\(16, 10, 3, 3\)"):
            load_init_weights(build_model(config), config)


def test_missing_and_unexpected_keys_are_named(tmp_path: Path, reference_state: dict, pastis: str) -> None:
    cases = {"missing": {k: v for k, v in reference_state.items() if k != "out_conv.conv.conv.0.bias"},
             "unexpected": {**reference_state, "extra.weight": torch.zeros(1)}}
    for label, state in cases.items():
        folder = _write_release(tmp_path / label, state, folds=(1,))
        config = RunConfig(dataset_root=pastis, init_weights=_template(folder), **BASE)
        with pytest.raises(WeightsError, match=rf"fold 1\): .*Fold_1/model\.pth\.tar: {label} key"):
            load_init_weights(build_model(config), config)


@pytest.mark.parametrize("content", [[1, 2, 3], {"epoch": 3, "note": "no tensors"}, {"state_dict": [1.0, 2.0]},
                                     {"state_dict": {"a": 1}}, {}])
def test_a_file_that_is_not_a_state_dict(tmp_path: Path, pastis: str, content: object) -> None:
    (tmp_path / "Fold_1").mkdir()
    path = tmp_path / "Fold_1" / "model.pth.tar"
    torch.save(content, path)
    config = RunConfig(dataset_root=pastis, init_weights=str(path), **BASE)
    with pytest.raises(WeightsError, match=rf"init_weights \(fold 1\): {path} holds (no|an empty) state dict"):
        load_init_weights(build_model(config), config)
    with pytest.raises(WeightsError, match=str(path)):
        run(config.replace(out_dir=str(tmp_path / "out")))


def test_a_file_that_is_not_a_torch_file(tmp_path: Path, pastis: str) -> None:
    path = tmp_path / "model.pth.tar"
    path.write_bytes(b"not a checkpoint")
    config = RunConfig(dataset_root=pastis, init_weights=str(path), **BASE)
    with pytest.raises(WeightsError, match=rf"init_weights \(fold 1\): cannot read {path}"):
        load_init_weights(build_model(config), config)


# --------------------------------------------------------------------------------------------------
# Fine-tuning from the weights, and a run's own checkpoint as initial weights
# --------------------------------------------------------------------------------------------------


def test_fine_tuning_starts_from_the_weights_and_changes_them(release: Path, pastis: str, tmp_path: Path,
                                                               reference_state: dict) -> None:
    lr = 1e-4
    out = tmp_path / "ft"
    config = RunConfig(dataset_root=pastis, fold=1, init_weights=_template(release), out_dir=str(out),
                       **{**BASE, "epochs": 2, "lr": lr, "noise_std": 1.0, "noise_fraction": 0.5})
    assert run(config, max_epochs_this_call=1) is None
    ckpt = read_checkpoint(out / "checkpoint.pt")
    weights = release / "Fold_1" / "model.pth.tar"
    assert ckpt["init_weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    steps = math.ceil(len(make_datasets(config).train) / config.batch_size)
    # Adam moves a parameter by at most about lr per step (|m_hat| / sqrt(v_hat) <= 1.01 for the first 3 steps
    # with betas (0.9, 0.999), by Cauchy-Schwarz); 2 * lr per step is a safe bound. Random initial weights would
    # differ from the reference ones by ~0.1, far beyond it.
    bound = 2 * lr * steps
    model = build_model(config)
    changed = 0.0
    for name, _ in model.named_parameters():
        delta = (ckpt["model"][name] - reference_state[name]).abs().max().item()
        assert delta <= bound, (name, delta, bound)
        changed = max(changed, delta)
    assert changed > 0, "one epoch of fine-tuning left every weight as it was"
    metrics = run(config)  # resumes for epoch 2
    assert (metrics["epochs_completed"], len(pd.read_csv(out / "history.csv"))) == (2, 2)
    assert metrics["init_weights"] == ckpt["init_weights"]  # the record survives the resume
    assert metrics["train"] is not None and metrics["best_epoch"] in (1, 2)


def test_a_run_checkpoint_as_initial_weights(release: Path, pastis: str, tmp_path: Path) -> None:
    trained = RunConfig(dataset_root=pastis, fold=3, out_dir=str(tmp_path / "a"),
                        **{**BASE, **SMALL_ARCH, "epochs": 1})
    run(trained)
    ckpt_path = tmp_path / "a" / "checkpoint.pt"
    best = read_checkpoint(ckpt_path)["best_model"]
    config = trained.replace(epochs=0, init_weights=str(ckpt_path), out_dir=str(tmp_path / "b"))
    metrics = run(config)
    assert metrics["init_weights"]["source"] == "run_checkpoint"
    assert metrics["init_weights"]["checked_against"] == str(ckpt_path.resolve())
    stored = np.load(tmp_path / "b" / "confusion.npy", allow_pickle=False)
    np.testing.assert_array_equal(stored, _by_hand(config, state=best)[0.0])
    assert read_state_dict(ckpt_path).keys() == best.keys()
    wrong = config.replace(d_model=64, out_dir=str(tmp_path / "c"))
    with pytest.raises(WeightsError, match=r"fold 3.*d_model: the config says 64 but .*checkpoint\.pt \(its config\) "
                                           r"says 32"):
        run(wrong)
