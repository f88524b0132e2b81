"""RunConfig validation, conversion, and the params/*.yaml presets."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from utae.config.run_config import HARMLESS_FIELDS, RunConfig

from utae.config.sweepfile import load_config_file
from utae.training.precision import resolve_amp
from utae.rundir.same_run import config_differences

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def root(tmp_path: Path) -> str:
    (tmp_path / "data").mkdir()
    return str(tmp_path / "data")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("noise_std", -0.1),
        ("noise_fraction", -0.01),
        ("noise_fraction", 1.5),
        ("device", "tpu"),
        ("device", "cuda:x"),
        ("epochs", 0),
        ("epochs", -3),
        ("fold", 0),
        ("fold", 6),
        ("batch_size", 0),
        ("eval_batch_size", 0),
        ("eval_batch_size", True),
        ("lr", 0.0),
        ("seed", -1),
        ("amp", "fp8"),
        ("noise_space", "log"),
        ("test_noise_stds", (0.0, -1.0)),
        ("test_noise_stds", ()),
        ("train_limit", 0),
        ("val_limit", 2.5),
        ("num_workers", -1),
        ("deterministic", "yes"),
        ("encoder_widths", (16, 16, 16, 30)),  # 30 is not divisible by n_head=4
        ("out_conv", (16, 19)),
        ("decoder_widths", (16, 16, 32)),
    ],
)
def test_every_rejection_names_the_field(root: str, field: str, value: object) -> None:
    base = dict(dataset_root=root, n_head=4, encoder_widths=(16, 16, 16, 32), decoder_widths=(16, 16, 16, 32),
                out_conv=(16, 20), d_model=32)
    with pytest.raises(ValueError, match=field):
        RunConfig(**{**base, field: value})


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_dataset_root_is_rejected(value: object) -> None:
    with pytest.raises(ValueError, match="dataset_root"):
        RunConfig(dataset_root=value)


def test_nonexistent_dataset_root_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dataset_root.*missing"):
        RunConfig(dataset_root=str(tmp_path / "nope"))


def test_unset_environment_variable_in_dataset_root(monkeypatch: pytest.MonkeyPatch, root: str) -> None:
    monkeypatch.delenv("UTAE_TEST_UNSET_ROOT", raising=False)
    with pytest.raises(ValueError, match="UTAE_TEST_UNSET_ROOT"):
        RunConfig(dataset_root="${UTAE_TEST_UNSET_ROOT}")
    monkeypatch.setenv("UTAE_TEST_ROOT", root)
    assert RunConfig(dataset_root="${UTAE_TEST_ROOT}").dataset_root == root


def test_fp16_on_cpu_is_rejected(root: str) -> None:
    with pytest.raises(ValueError, match="amp"):
        RunConfig(dataset_root=root, device="cpu", amp="fp16")
    import torch

    with pytest.raises(ValueError, match="fp16"):
        resolve_amp("fp16", torch.device("cpu"))
    assert resolve_amp("auto", torch.device("cpu"))[0] is None
    assert resolve_amp("bf16", torch.device("cpu"))[0] == torch.bfloat16
    assert resolve_amp("off", torch.device("cpu"))[0] is None


def test_roundtrip_and_coercion(root: str) -> None:
    cfg = RunConfig(dataset_root=root, noise_std=1, test_noise_stds=[0, 1, 2], encoder_widths=[64, 64, 64, 128])
    assert cfg.noise_std == 1.0 and isinstance(cfg.noise_std, float)
    assert cfg.test_noise_stds == (0.0, 1.0, 2.0)
    assert cfg.encoder_widths == (64, 64, 64, 128)
    d = cfg.to_dict()
    assert d["test_noise_stds"] == [0.0, 1.0, 2.0]
    assert RunConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown RunConfig field.*'nois_std'"):
        RunConfig.from_dict({**d, "nois_std": 1.0})
    assert cfg.replace(seed=3).seed == 3


def test_config_differences_ignore_harmless_fields(root: str) -> None:
    cfg = RunConfig(dataset_root=root)
    assert HARMLESS_FIELDS == {"dataset_root", "out_dir", "init_weights", "num_workers", "progress"}
    changed = cfg.replace(progress=False, num_workers=2, out_dir="/elsewhere")
    assert config_differences(cfg.to_dict(), changed) == []
    diffs = config_differences(cfg.to_dict(), cfg.replace(noise_std=1.0))
    assert len(diffs) == 1 and diffs[0].startswith("noise_std")


def _sweep_points(path: Path) -> tuple[dict, list[dict]]:
    doc = yaml.safe_load(path.read_text())
    assert set(doc) - {"synthetic"} == {"name", "dataset_root", "grid", "fixed"}, path
    keys = list(doc["grid"])
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(doc["grid"][k] for k in keys))]
    return doc, points


@pytest.mark.parametrize("name", ["default", "paper", "official"])
def test_every_sweep_point_is_a_valid_run_config(name: str, root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASTIS_ROOT", root)
    doc, points = _sweep_points(REPO / "params" / f"{name}.yaml")
    assert doc["name"] == name
    configs = []
    for point in points:
        values = {**doc["fixed"], **point, "dataset_root": doc["dataset_root"]}
        if name == "default":
            values["dataset_root"] = root  # the synthetic data need not exist for this check
        configs.append(RunConfig.from_dict(values))
    assert len({(c.noise_std, c.seed, c.fold) for c in configs}) == len(points)


def test_paper_preset_is_the_study_protocol(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASTIS_ROOT", root)
    doc, points = _sweep_points(REPO / "params" / "paper.yaml")
    assert doc["dataset_root"] == "${PASTIS_ROOT}"
    cfg = RunConfig.from_dict({**doc["fixed"], **points[0], "dataset_root": doc["dataset_root"]})
    assert (cfg.train_limit, cfg.val_limit, cfg.test_limit) == (100, 100, 100)
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.noise_fraction) == (15, 2, 1e-3, 0.25)
    assert 1.0 in doc["grid"]["noise_std"] and 0.0 in doc["grid"]["noise_std"]
    assert len(doc["grid"]["seed"]) > 1
    assert cfg.encoder_widths == (64, 64, 64, 128) and cfg.decoder_widths == (32, 32, 64, 128)


def test_official_preset_is_the_five_fold_protocol(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASTIS_ROOT", root)
    doc, points = _sweep_points(REPO / "params" / "official.yaml")
    assert sorted(doc["grid"]["fold"]) == [1, 2, 3, 4, 5]
    cfg = RunConfig.from_dict({**doc["fixed"], **points[0], "dataset_root": doc["dataset_root"]})
    assert (cfg.epochs, cfg.batch_size, cfg.train_limit, cfg.test_limit) == (100, 4, None, None)


def test_load_config_file_flat_and_sweep(tmp_path: Path, root: str) -> None:
    flat = tmp_path / "run.yaml"
    flat.write_text(f"dataset_root: {root}\nepochs: 3\nseed: 2\n")
    cfg = load_config_file(flat, {"seed": 5})
    assert (cfg.epochs, cfg.seed) == (3, 5)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"name: s\ndataset_root: {root}\ngrid:\n  noise_std: [0.0, 1.0]\nfixed:\n  epochs: 2\n")
    with pytest.raises(ValueError, match="noise_std"):
        load_config_file(sweep)
    assert load_config_file(sweep, {"noise_std": 1.0}).noise_std == 1.0
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"dataset_root: {root}\nepoch: 3\n")
    with pytest.raises(ValueError, match="epoch"):
        load_config_file(bad)


def test_norm_stats_and_init_weights_defaults_keep_old_configs_valid(root: str) -> None:
    cfg = RunConfig(dataset_root=root)
    assert (cfg.norm_stats, cfg.init_weights) == ("train_folds", None)
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("norm_stats", "init_weights")}  # a config.json of before
    assert config_differences(old, cfg) == []
    assert config_differences(old, cfg.replace(norm_stats="own_folds")) == [
        "norm_stats: stored 'train_folds' != new 'own_folds'"]
    with pytest.raises(ValueError, match="norm_stats must be one of"):
        RunConfig(dataset_root=root, norm_stats="test_folds")


def test_epochs_zero_needs_init_weights(root: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0: .* needs init_weights"):
        RunConfig(dataset_root=root, epochs=0)
    weights = tmp_path / "model.pth.tar"
    weights.write_bytes(b"")  # the config checks that the file exists; reading it is the run's job
    assert RunConfig(dataset_root=root, epochs=0, init_weights=str(weights)).epochs == 0
    with pytest.raises(ValueError, match="epochs"):
        RunConfig(dataset_root=root, epochs=-1, init_weights=str(weights))


@pytest.mark.parametrize("name", ["pretrained", "finetune"])
def test_pretrained_presets_use_each_folds_weights(name: str, root: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "UTAE_PASTIS"
    for k in range(1, 6):
        (weights / f"Fold_{k}").mkdir(parents=True)
        (weights / f"Fold_{k}" / "model.pth.tar").write_bytes(b"")
    monkeypatch.setenv("PASTIS_ROOT", root)
    monkeypatch.setenv("UTAE_WEIGHTS", str(weights))
    doc, points = _sweep_points(REPO / "params" / f"{name}.yaml")
    assert doc["name"] == name and doc["dataset_root"] == "${PASTIS_ROOT}"
    assert sorted(doc["grid"]["fold"]) == [1, 2, 3, 4, 5]
    configs = [RunConfig.from_dict({**doc["fixed"], **point, "dataset_root": doc["dataset_root"]}) for point in points]
    for cfg in configs:
        assert cfg.init_weights_path() == weights / f"Fold_{cfg.fold}" / "model.pth.tar"
        assert cfg.norm_stats == "own_folds"
        assert (cfg.encoder_widths, cfg.decoder_widths, cfg.out_conv) == ((64, 64, 64, 128), (32, 32, 64, 128), (32, 20))
        assert (cfg.n_head, cfg.d_model, cfg.d_k) == (16, 256, 4)
        assert cfg.test_noise_stds[0] == 0.0 and max(cfg.test_noise_stds) == 3.0
    if name == "pretrained":
        assert {cfg.epochs for cfg in configs} == {0}
    else:
        assert {cfg.epochs for cfg in configs} == {5} and {cfg.lr for cfg in configs} == {1e-4}
        assert sorted({cfg.noise_std for cfg in configs}) == [0.5, 1.0, 2.0]
    assert len({(c.fold, c.noise_std) for c in configs}) == len(points)


def test_official_preset_normalises_like_the_official_code(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASTIS_ROOT", root)
    doc, points = _sweep_points(REPO / "params" / "official.yaml")
    assert RunConfig.from_dict({**doc["fixed"], **points[0], "dataset_root": doc["dataset_root"]}).norm_stats == "own_folds"


def test_the_config_check_needs_no_torch() -> None:
    """Reading a sweep and validating its points' configs (the sweep process) imports no torch; the choices
    RunConfig checks are the ones the torch modules use."""
    code = ("import sys; from utae.config.run_config import AMP_MODES, NOISE_SPACES, RunConfig; "
            "RunConfig(dataset_root='.', device='cpu', amp='bf16'); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
    from utae.config.run_config import AMP_MODES, NOISE_SPACES
    from utae.perturb.noise import NOISE_SPACES as noise_spaces
    from utae.training.precision import AMP_MODES as amp_modes

    assert (amp_modes, noise_spaces) == (AMP_MODES, NOISE_SPACES)


# --------------------------------------------------------------------------------------------------
# train_corruption and test_corruptions
# --------------------------------------------------------------------------------------------------


def test_an_old_config_without_the_corruption_fields_reads_as_none(root: str) -> None:
    old = RunConfig(dataset_root=root).to_dict()
    del old["train_corruption"], old["test_corruptions"]  # a config.json written before the fields existed
    cfg = RunConfig.from_dict(old)
    assert cfg.train_corruption is None and cfg.test_corruptions == ()
    assert config_differences(old, cfg) == []  # the same run under the same-run rule


def test_an_old_config_without_eval_batch_size_means_one_patch_per_forward(root: str) -> None:
    old = RunConfig(dataset_root=root).to_dict()
    del old["eval_batch_size"]  # a config.json written before the field existed: evaluated patch by patch
    cfg = RunConfig.from_dict(old)
    assert cfg.eval_batch_size == 1 and config_differences(old, cfg) == []
    grouped = cfg.replace(eval_batch_size=4)  # another grouping is another run: it changes the float rounding
    assert config_differences(old, grouped) == ["eval_batch_size: stored 1 != new 4"]


def test_the_corruption_fields_are_normalised_and_round_trip(root: str) -> None:
    cfg = RunConfig(dataset_root=root, train_corruption={"kind": "clouds", "severity": [1, 5], "fraction": 1},
                    test_corruptions=["clouds:1", {"kind": "missing_dates", "severity": 5}])
    assert cfg.train_corruption == {"kind": "clouds", "severity": [1, 5], "fraction": 1.0}
    assert cfg.test_corruptions == ("clouds:1", "missing_dates:5")
    d = cfg.to_dict()
    assert d["test_corruptions"] == ["clouds:1", "missing_dates:5"] and RunConfig.from_dict(d) == cfg
    d["train_corruption"]["fraction"] = 0.5  # to_dict shares nothing with the config
    assert cfg.train_corruption["fraction"] == 1.0
    everything = RunConfig(dataset_root=root, test_corruptions="all").test_corruptions
    assert len(everything) == 35 and everything[0] == "gaussian:1" and everything[-1] == "date_shift:5"
    assert RunConfig(dataset_root=root, train_corruption="none").train_corruption is None


@pytest.mark.parametrize(("field", "value", "message"), [
    ("train_corruption", {"kind": "snow", "severity": 1, "fraction": 0.5}, r"train_corruption\.kind must be one of "
                                                                             r"gaussian, clouds, .*; got 'snow'"),
    ("train_corruption", {"kind": "clouds", "severity": 7, "fraction": 0.5}, r"train_corruption\.severity .*1, 2, 3, "
                                                                               r"4, 5; got 7"),
    ("train_corruption", {"kind": "clouds", "severity": [1, 5]}, r"train_corruption\.fraction is required"),
    ("train_corruption", {"kind": "clouds", "severity": 2, "fraction": 0}, r"train_corruption\.fraction .*\(0, 1\]"),
    ("test_corruptions", ["clouds:7"], r"test_corruptions\.severity .*1, 2, 3, 4, 5; got 7"),
    ("test_corruptions", ["fog:1"], r"test_corruptions\.kind must be one of gaussian"),
    ("test_corruptions", ["clouds:1", "clouds:1"], r"test_corruptions lists clouds:1 more than once"),
    ("test_corruptions", [{"kind": "clouds", "severity": 1, "fraction": 0.5}], r"test_corruptions\.fraction"),
    ("test_corruptions", 3, r"test_corruptions must be a list"),
])
def test_bad_corruption_values_name_the_field_in_one_line(root: str, field: str, value: object,
                                                          message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        RunConfig(dataset_root=root, **{field: value})
    assert "\n" not in str(info.value)


def test_the_corruption_fields_are_checked_without_torch() -> None:
    code = ("import sys; from utae.config.run_config import RunConfig; "
            "c = RunConfig(dataset_root='.', train_corruption={'kind': 'clouds', 'severity': [1, 5], 'fraction': 0.5}, "
            "test_corruptions='all'); assert len(c.test_corruptions) == 35; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_architecture_presets_compare_the_models_on_one_protocol(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """params/architectures.yaml: six models (TSViT twice, official and corrected output layout) x {none, mix} x 5
    seeds on the corruption study's protocol (all but
    the dates and epochs, which its header explains), each tested on the 35 corruptions; the -pastis preset: the same
    models at their official widths on the official five-fold protocol."""
    from utae.config.sweepfile import load_sweep
    from utae.perturb.kinds import all_test_corruptions

    monkeypatch.setenv("PASTIS_ROOT", root)
    models = {"utae", "unet3d", "convlstm", "fpn_convlstm", "uconvlstm", "tsvit"}
    synthetic = load_sweep(REPO / "params" / "architectures.yaml")
    corruptions = load_sweep(REPO / "params" / "corruptions-n150.yaml")  # the protocol the study was sized on
    assert {p.params["model"] for p in synthetic.points} == models and len(synthetic.points) == 7 * 2 * 5
    assert {p.params["model_options"].get("unpatchify") for p in synthetic.points if p.params["model"] == "tsvit"} \
        == {None, "geometric"}
    assert {p.run_id.split("-aug-")[1] for p in synthetic.points} == {f"{a}-seed{s}" for a in ("none", "mix")
                                                                       for s in range(5)}
    different = {"synthetic", "dataset_root", "epochs", "test_noise_stds", "encoder_widths", "decoder_widths",
                 "out_conv", "n_head", "d_model", "d_k"}
    for key, value in corruptions.fixed.items():
        if key not in different:
            assert synthetic.fixed[key] == value, key
    assert {k: v for k, v in synthetic.synthetic.items() if k != "t_range"} == \
        {k: v for k, v in corruptions.synthetic.items() if k != "t_range"}
    assert synthetic.cases["aug"]["mix"] == corruptions.cases["aug"]["mix"]
    for point in synthetic.points:
        cfg = RunConfig.from_dict({**point.params, "dataset_root": root})
        assert cfg.test_corruptions == all_test_corruptions() and len(cfg.test_corruptions) == 35
    pastis = load_sweep(REPO / "params" / "architectures-pastis.yaml")
    official = load_sweep(REPO / "params" / "official.yaml")
    assert {p.params["model"] for p in pastis.points} == models and len(pastis.points) == 6 * 2 * 5
    for point in pastis.points:
        cfg = RunConfig.from_dict(point.params)
        assert cfg.model_options == {} and cfg.encoder_widths == (64, 64, 64, 128)  # every model's defaults
        assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.norm_stats) == (100, 4, 1e-3, "own_folds")
        assert len(cfg.test_corruptions) == 35
    assert {p.params["fold"] for p in pastis.points} == set(official.grid["fold"]) == {1, 2, 3, 4, 5}
