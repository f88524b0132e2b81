"""The model seam: every model through the registry and the forward protocol, import paths, RunConfig's model fields."""

from __future__ import annotations

import sys

import pytest
import torch

from utae.config.run_config import RunConfig
from utae.models.registry import (BUILTIN, ModelError, check_model_name, check_model_options, count_parameters,
                                  create_model, forward_logits, list_models, needs_input_size, uses_dates)

#: Small options per model: every builder takes them, and the forward runs in well under a second.
SMALL: dict[str, dict] = {
    "utae": dict(encoder_widths=(8, 8, 8, 16), decoder_widths=(8, 8, 8, 16), out_conv=(8, 20), n_head=4, d_model=16),
    "unet3d": dict(feats=2),
    "convlstm": dict(hidden_dim=8),
    "convgru": dict(hidden_dim=8),
    "fpn_convlstm": dict(inconv=(8, 8), n_channels=8, hidden_size=8),
    "uconvlstm": dict(encoder_widths=(8, 8, 8, 16), decoder_widths=(8, 8, 8, 16), hidden_dim=8),
    "buconvlstm": dict(encoder_widths=(8, 8, 8, 16), decoder_widths=(8, 8, 8, 16), hidden_dim=8),
    "tsvit": dict(dim=16, temporal_depth=1, spatial_depth=1, heads=2, dim_head=8, patch_size=4),
}


def test_the_registry_lists_the_builtin_models_first() -> None:
    assert list_models()[: len(BUILTIN)] == list(BUILTIN) == list(SMALL)


@pytest.mark.parametrize("name", list(SMALL))
def test_every_model_follows_the_forward_protocol(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, input_dim=10, num_classes=20, input_size=32, **SMALL[name]).eval()
    x = torch.randn(2, 5, 10, 32, 32)
    positions = torch.tensor([[3, 40, 90, 200, 300], [10, 20, 30, 0, 0]])
    pad_mask = torch.tensor([[False] * 5, [False, False, False, True, True]])
    x[1, 3:] = 0.0
    with torch.no_grad():
        logits = forward_logits(model, x, positions, pad_mask)
    assert logits.shape == (2, 20, 32, 32) and torch.isfinite(logits).all()
    assert count_parameters(model) > 0
    assert uses_dates(model) == (name in ("utae", "tsvit"))
    assert needs_input_size(name) == (name not in ("utae", "unet3d"))


def test_unknown_names_suggest_the_closest() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'tsvitt'; did you mean 'tsvit'\?"):
        check_model_name("tsvitt")
    with pytest.raises(ModelError, match="model must be a model name"):
        check_model_name("")
    assert check_model_name("my_package.models:build") == "my_package.models:build"  # an import path: not imported yet


def test_an_unknown_option_is_one_line_naming_it_and_the_model_s_options() -> None:
    with pytest.raises(ModelError, match=r"unknown option\(s\) \['hiden_dim'\] of model 'convlstm'; its options: .*hidden_dim"):
        check_model_options("convlstm", {"hiden_dim": 8})
    with pytest.raises(ModelError, match=r"\['input_size'\] are set by the tool"):
        check_model_options("convlstm", {"input_size": 8})


def test_an_import_path_builds_a_users_model(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_models.py").write_text(
        "import torch\n"
        "class Tiny(torch.nn.Module):\n"
        "    uses_dates = False\n"
        "    def __init__(self, input_dim=10, num_classes=20, width=4):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(input_dim, num_classes, 1)\n"
        "    def forward(self, x, batch_positions=None, pad_mask=None):\n"
        "        return self.conv(x.mean(1))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("my_models:Tiny", width=8)
    assert type(model).__name__ == "Tiny" and not uses_dates(model)
    with pytest.raises(ModelError, match="unknown option"):
        create_model("my_models:Tiny", depth=3)
    with pytest.raises(ModelError, match="cannot import my_models:Nope"):
        create_model("my_models:Nope")
    sys.modules.pop("my_models", None)


def test_runconfig_model_fields(tmp_path) -> None:
    root = str(tmp_path)
    assert RunConfig(dataset_root=root).model == "utae" and RunConfig(dataset_root=root).model_options == {}
    config = RunConfig(dataset_root=root, model="convlstm", model_options={"hidden_dim": (8,)})
    assert config.model_options == {"hidden_dim": [8]}  # plain JSON values, as config.json stores them
    with pytest.raises(ValueError, match="did you mean 'convlstm'"):
        RunConfig(dataset_root=root, model="convlstn")
    with pytest.raises(ValueError, match=r"encoder_widths, decoder_widths, n_head: U-TAE's widths, but model is 'convlstm'"):
        RunConfig(dataset_root=root, model="convlstm", encoder_widths=(8, 8, 8, 16), decoder_widths=(8, 8, 8, 16),
                  n_head=4)
    with pytest.raises(ValueError, match=r"model_options: \['n_head'\] of U-TAE have their own RunConfig fields"):
        RunConfig(dataset_root=root, model_options={"n_head": 4})
    with pytest.raises(ValueError, match="model_options must be a mapping"):
        RunConfig(dataset_root=root, model_options=[1, 2])


def test_the_same_run_rule_counts_the_model() -> None:
    from utae.rundir.same_run import config_differences

    base = {"dataset_root": "/a", "seed": 0}
    assert config_differences(base, {**base, "model": "utae", "model_options": {}}) == []  # an old config: the defaults
    diffs = config_differences({**base, "model": "convlstm", "model_options": {"hidden_dim": 8}},
                               {**base, "model": "convlstm", "model_options": {"hidden_dim": 16}})
    assert len(diffs) == 1 and "model_options" in diffs[0]
