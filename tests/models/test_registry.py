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
