"""ConvGRU: the cell, and the ``convgru`` baseline (official parity, padding, short series, checks)."""

from __future__ import annotations

import pytest
import torch

from utae.models.convgru import ConvGRU, ConvGRUCell

from helpers import BASELINE_ATOL, BATCH_ATOL, baseline_case, logits, max_diff, official_baseline, pad_right

TINY = dict(input_dim=3, num_classes=5, input_size=8, hidden_dim=8)


@pytest.fixture(scope="module")
def official(baselines_dir):
    return official_baseline(ConvGRU, baselines_dir, "convgru")


def test_official_configuration_parameters_and_keys():
    model = ConvGRU()
    # The reference README's count for ConvGRU_Seg(hidden_dim=180, kernel_size=(3, 3)); it does not depend on input_size.
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 956_360
    assert list(model.state_dict()) == [
        "convgru_encoder.cell_list.0.in_conv.weight",
        "convgru_encoder.cell_list.0.in_conv.bias",
        "convgru_encoder.cell_list.0.out_conv.weight",
        "convgru_encoder.cell_list.0.out_conv.bias",
        "classification_layer.weight",
        "classification_layer.bias",
    ]
    assert ConvGRU.uses_dates is False


def test_parity_on_unpadded_series(official, baselines_dir):
    medium = baseline_case(baselines_dir, "convgru", "case_medium")
    assert max_diff(logits(official, medium["x"]), medium["logits"]) < BASELINE_ATOL
    small = baseline_case(baselines_dir, "convgru", "case_small")  # sample 0 is unpadded: its row is the same alone
    out = logits(official, small["x"][:1], small["pad_mask"][:1])  # with an explicit mask this time
    assert max_diff(out, small["logits"][:1]) < BASELINE_ATOL


def test_official_padding_reproduces_the_padded_batch(baselines_dir):
    model = official_baseline(ConvGRU, baselines_dir, "convgru", official_padding=True)
    ref = baseline_case(baselines_dir, "convgru", "case_small")
    assert max_diff(logits(model, ref["x"]), ref["logits"]) < BASELINE_ATOL


@pytest.mark.parametrize("train", [False, True])
def test_padded_sample_gets_its_alone_logits(official, baselines_dir, train):
    ref = baseline_case(baselines_dir, "convgru", "case_small")
    n_real = int((~ref["pad_mask"][1]).sum())
    official.train(train)  # no dropout, no normalisation: training mode computes the same
    try:
        batched = logits(official, ref["x"])[1:]
        alone = logits(official, ref["x"][1:, :n_real])
    finally:
        official.eval()
    assert max_diff(batched, alone) < BATCH_ATOL
    # The official padded row moved with the 2 padded steps (0.49 in the reference README): not what we give.
    assert max_diff(batched, ref["logits"][1:]) > 10 * BASELINE_ATOL


@pytest.mark.parametrize("train", [False, True])
def test_logits_do_not_depend_on_the_batch(train):
    torch.manual_seed(0)
    model = ConvGRU(**TINY).train(train)
    series = [torch.randn(t, 3, 8, 8) for t in (3, 1, 2)]
    x, mask = pad_right(series, fill=7.0)  # padded frames hold garbage: only the mask says they are padding
    batched = logits(model, x, mask)
    for i, s in enumerate(series):
        assert max_diff(batched[i : i + 1], logits(model, s[None])) < BATCH_ATOL, i


@pytest.mark.parametrize("t", [1, 2, 3])
def test_short_series(t):
    torch.manual_seed(0)
    out = logits(ConvGRU(**TINY).eval(), torch.randn(2, t, 3, 8, 8))
    assert out.shape == (2, 5, 8, 8) and torch.isfinite(out).all()


def test_update_gate_weights_the_candidate():
    """z (the first hidden_dim gate channels) weights the new candidate: z = 1 replaces h by n, z = 0 keeps h."""
    cell = ConvGRUCell(1, 2)
    with torch.no_grad():
        for conv in (cell.in_conv, cell.out_conv):
            conv.weight.zero_()
        cell.in_conv.bias.copy_(torch.tensor([50.0, -50.0, 50.0, 50.0]))  # z = (1, 0), r = (1, 1)
        cell.out_conv.bias.copy_(torch.tensor([0.5, 0.5]))
        (h,) = cell(torch.zeros(1, 1, 3, 3), (torch.full((1, 2, 3, 3), 0.25),))
    assert torch.allclose(h[0, 0], torch.full((3, 3), torch.tanh(torch.tensor(0.5)).item()))
    assert torch.allclose(h[0, 1], torch.full((3, 3), 0.25))


def test_wrong_input_size_names_the_expected_size():
    with pytest.raises(ValueError, match=r"input_size=8 \(expected 8x8\)"):
        ConvGRU(**TINY)(torch.randn(1, 2, 3, 16, 16), None)


def test_too_short_and_all_padded_inputs():
    with pytest.raises(ValueError, match="at least 1 date"):
        ConvGRU(**TINY)(torch.randn(1, 0, 3, 8, 8), None)
    with pytest.raises(ValueError, match=r"sample\(s\) \[1\] of the batch have only padded frames"):
        ConvGRU(**TINY)(torch.randn(2, 2, 3, 8, 8), None, pad_mask=torch.tensor([[False, True], [True, True]]))


@pytest.mark.parametrize(
    "option, value",
    [("input_size", -1), ("hidden_dim", 0), ("kernel_size", 4), ("official_padding", 1.0), ("num_classes", "20"),
     ("pad_value", "0")],
)
def test_bad_options_name_the_option(option, value):
    with pytest.raises(ValueError, match=option):
        ConvGRU(**{**TINY, option: value})
