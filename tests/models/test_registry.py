"""The model registry: names, the keywords a builder takes (through ``**options`` too), import paths of a user's
model and entry points of an installed package."""

from __future__ import annotations

import pytest
import torch

from utae.models import registry
from utae.models.registry import (
    ModelError,
    check_model_options,
    create_model,
    forward_logits,
    list_models,
    needs_input_size,
)


def test_a_builder_that_passes_options_on_takes_its_base_keywords():
    """BUConvLSTM(temporal=..., hidden_dim=..., **options) hands every other keyword to RecUNet: the registry
    sees RecUNet's, so the run passes the patch side (input_size) and a misspelt option is refused by name."""
    assert needs_input_size("buconvlstm") and needs_input_size("uconvlstm")
    with pytest.raises(ModelError, match=r"unknown option\(s\) \['hiden_dim'\] of model 'buconvlstm'.*hidden_dim"):
        check_model_options("buconvlstm", {"hiden_dim": 4})
    model = create_model("buconvlstm", input_size=16, encoder_widths=(8, 8, 16), decoder_widths=(8, 8, 16),
                         out_conv=(8, 20), hidden_dim=4)
    assert model.input_size == 16
    x = torch.randn(1, 3, 10, 16, 16)
    assert forward_logits(model.eval(), x, torch.arange(3)[None], None).shape == (1, 20, 16, 16)


@pytest.mark.parametrize("name", list(registry.BUILTIN))
def test_needs_input_size_says_whether_the_builder_takes_it(name):
    """A model built without input_size is built for its default size, or not at all: the registry passes the
    patch side to exactly the builders that take it."""
    import inspect

    builder = registry.resolve_builder(name)
    takes = any("input_size" in inspect.signature(c.__init__).parameters for c in inspect.getmro(builder)
                if "__init__" in vars(c))
    assert needs_input_size(name) == takes


# --------------------------------------------------------------------------------------------------
# A user's own model: an import path, an entry point (tests/models/external_model.py)
# --------------------------------------------------------------------------------------------------


def _frame_mean_parameters(width: int, input_dim: int = 10, num_classes: int = 20) -> int:
    """FrameMean's trainable parameters by hand: a 3x3 convolution input_dim -> width and a 1x1 width -> classes,
    with biases."""
    return (9 * input_dim + 1) * width + (width + 1) * num_classes


def test_an_import_path_builds_a_user_s_model():
    from utae.config.run_config import RunConfig
    from utae.models.registry import check_model_name, count_parameters

    name = "external_model:build"
    assert check_model_name(name) == name and name not in list_models()
    model = create_model(name, width=4)
    assert type(model).__name__ == "FrameMean" and not needs_input_size(name)
    assert count_parameters(model) == _frame_mean_parameters(4)
    x = torch.randn(2, 3, 10, 8, 8)
    assert forward_logits(model, x, torch.zeros(2, 3, dtype=torch.int64), None).shape == (2, 20, 8, 8)
    with pytest.raises(ModelError, match=r"unknown option\(s\) \['depth'\] of model 'external_model:build'"):
        create_model(name, depth=2)
    with pytest.raises(ModelError, match="cannot import external_model:missing"):
        create_model("external_model:missing")
    assert RunConfig(dataset_root=".", model=name, model_options={"width": 4}).model == name


def test_an_entry_point_registers_a_model_by_name(monkeypatch):
    """An installed package's entry point (group utae.models), without installing anything: the registry's
    entry_points answers with one entry point of this folder's module."""
    from importlib.metadata import EntryPoint

    from utae.config.run_config import RunConfig
    from utae.models.registry import ENTRY_POINT_GROUP, count_parameters

    point = EntryPoint(name="frame_mean", value="external_model:FrameMean", group=ENTRY_POINT_GROUP)
    asked: list = []

    def entry_points(group=None):
        asked.append(group)
        return [point] if group == ENTRY_POINT_GROUP else []

    monkeypatch.setattr(registry, "entry_points", entry_points)
    assert list_models() == [*registry.BUILTIN, "frame_mean"] and set(asked) == {ENTRY_POINT_GROUP}
    model = create_model("frame_mean", width=3)
    assert type(model).__name__ == "FrameMean" and count_parameters(model) == _frame_mean_parameters(3)
    assert RunConfig(dataset_root=".", model="frame_mean").model == "frame_mean"
    with pytest.raises(ModelError, match="unknown model 'frame_men'; did you mean 'frame_mean'"):
        RunConfig(dataset_root=".", model="frame_men")
    monkeypatch.setattr(registry, "entry_points", lambda group=None: [])
    with pytest.raises(ModelError, match="unknown model 'frame_mean'"):
        create_model("frame_mean")
