"""ConvLSTM: the cell and layers, and the ``convlstm`` baseline (official parity, padding, short series, checks)."""

from __future__ import annotations

import pytest
import torch

from utae.models.convlstm import BConvLSTMLayer, ConvLSTM, ConvLSTMCell, ConvLSTMLayer

from helpers import BASELINE_ATOL, BATCH_ATOL, baseline_case, logits, max_diff, official_baseline, pad_right

TINY = dict(input_dim=3, num_classes=5, input_size=8, hidden_dim=8)


@pytest.fixture(scope="module")
def official(baselines_dir):
    return official_baseline(ConvLSTM, baselines_dir, "convlstm")


def test_official_configuration_parameters_and_keys():
    model = ConvLSTM()
    # The reference README's count for ConvLSTM_Seg(hidden_dim=160, kernel_size=(3, 3)); it does not depend on input_size.
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1_008_660
    assert list(model.state_dict()) == [
        "convlstm_encoder.cell_list.0.conv.weight",
        "convlstm_encoder.cell_list.0.conv.bias",
        "classification_layer.weight",
        "classification_layer.bias",
    ]
    assert ConvLSTM.uses_dates is False


def test_parity_on_unpadded_series(official, baselines_dir):
    medium = baseline_case(baselines_dir, "convlstm", "case_medium")
    assert max_diff(logits(official, medium["x"]), medium["logits"]) < BASELINE_ATOL
    small = baseline_case(baselines_dir, "convlstm", "case_small")  # sample 0 is unpadded: its row is the same alone
    out = logits(official, small["x"][:1], small["pad_mask"][:1])  # with an explicit mask this time
    assert max_diff(out, small["logits"][:1]) < BASELINE_ATOL


def test_official_padding_reproduces_the_padded_batch(baselines_dir):
    model = official_baseline(ConvLSTM, baselines_dir, "convlstm", official_padding=True)
    ref = baseline_case(baselines_dir, "convlstm", "case_small")
    assert max_diff(logits(model, ref["x"]), ref["logits"]) < BASELINE_ATOL


@pytest.mark.parametrize("train", [False, True])
def test_padded_sample_gets_its_alone_logits(official, baselines_dir, train):
    ref = baseline_case(baselines_dir, "convlstm", "case_small")
    n_real = int((~ref["pad_mask"][1]).sum())
    official.train(train)  # no dropout, no normalisation: training mode computes the same
    try:
        batched = logits(official, ref["x"])[1:]
        alone = logits(official, ref["x"][1:, :n_real])
    finally:
        official.eval()
    assert max_diff(batched, alone) < BATCH_ATOL
    # The official padded row moved with the 2 padded steps (0.50 in the reference README): not what we give.
    assert max_diff(batched, ref["logits"][1:]) > 10 * BASELINE_ATOL


def test_classify_hidden_changes_the_logits(official, baselines_dir):
    ref = baseline_case(baselines_dir, "convlstm", "case_small")
    hidden = official_baseline(ConvLSTM, baselines_dir, "convlstm", classify="hidden")
    assert max_diff(logits(hidden, ref["x"][:1]), logits(official, ref["x"][:1])) > 10 * BASELINE_ATOL


@pytest.mark.parametrize("train", [False, True])
def test_logits_do_not_depend_on_the_batch(train):
    torch.manual_seed(0)
    model = ConvLSTM(**TINY).train(train)
    series = [torch.randn(t, 3, 8, 8) for t in (3, 1, 2)]
    x, mask = pad_right(series, fill=7.0)  # padded frames hold garbage: only the mask says they are padding
    batched = logits(model, x, mask)
    for i, s in enumerate(series):
        assert max_diff(batched[i : i + 1], logits(model, s[None])) < BATCH_ATOL, i


@pytest.mark.parametrize("t", [1, 2, 3])
def test_short_series(t):
    torch.manual_seed(0)
    out = logits(ConvLSTM(**TINY).eval(), torch.randn(2, t, 3, 8, 8))
    assert out.shape == (2, 5, 8, 8) and torch.isfinite(out).all()


def test_one_date_is_one_cell_step_from_zero():
    torch.manual_seed(0)
    model = ConvLSTM(**TINY).eval()
    x = torch.randn(1, 1, 3, 8, 8)
    zeros = torch.zeros(1, 8, 8, 8)
    with torch.no_grad():
        _, c = model.convlstm_encoder.cell_list[0](x[:, 0], (zeros, zeros))
        expected = model.classification_layer(c)
    assert max_diff(logits(model, x), expected) == 0.0


def test_padded_frames_get_no_gradient():
    torch.manual_seed(0)
    model = ConvLSTM(**TINY)
    x, mask = pad_right([torch.randn(3, 3, 8, 8), torch.randn(1, 3, 8, 8)])
    x.requires_grad_(True)
    model(x, None, pad_mask=mask).square().sum().backward()
    assert x.grad[mask].abs().max() == 0 and x.grad[~mask].flatten(1).abs().amax(dim=1).min() > 0


def test_masked_layer_skips_a_padded_step_anywhere():
    torch.manual_seed(0)
    layer = ConvLSTMLayer(3, 4, (3, 3), (6, 6))
    x = torch.randn(2, 4, 3, 6, 6)
    keep = torch.tensor([[True, False, True, True], [True, True, True, True]])
    with torch.no_grad():
        h, c = layer(x, keep)
        h0, c0 = layer(x[:1, [0, 2, 3]])
        h1, c1 = layer(x[1:])
    assert max_diff(h[:1], h0) < BATCH_ATOL and max_diff(c[:1], c0) < BATCH_ATOL
    assert max_diff(h[1:], h1) < BATCH_ATOL and max_diff(c[1:], c1) < BATCH_ATOL


def test_bidirectional_layer_reads_backward_from_the_last_real_frame():
    torch.manual_seed(0)
    layer = BConvLSTMLayer(3, 4, (3, 3), (6, 6))
    x = torch.randn(1, 3, 3, 6, 6)
    padded, mask = pad_right([x[0], x[0, :1]])
    with torch.no_grad():
        h, c = layer(padded, ~mask)
        c_forward = layer.convlstm_forward(x)[1]
        c_backward = layer.convlstm_backward(x.flip(1))[1]
        c_short = layer(x[:, :1])[1]
    assert h.shape == c.shape == (2, 8, 6, 6)
    assert max_diff(c[:1, :4], c_forward) < BATCH_ATOL and max_diff(c[:1, 4:], c_backward) < BATCH_ATOL
    assert max_diff(c[1:], c_short) < BATCH_ATOL


def test_cell_gate_order():
    """Gates i, f, o, g, each a block of hidden_dim channels: set through the bias alone (zero weights)."""
    cell = ConvLSTMCell(1, 2)
    with torch.no_grad():
        cell.conv.weight.zero_()
        cell.conv.bias.copy_(torch.tensor([50.0, 50.0, 50.0, -50.0, 50.0, 50.0, 0.5, -0.25]))
        h, c = cell(torch.zeros(1, 1, 3, 3), (torch.zeros(1, 2, 3, 3), torch.ones(1, 2, 3, 3)))
    # i = o = 1 on both channels; f = 1 on channel 0 (c keeps its 1), 0 on channel 1 (c forgets it); g = tanh(bias).
    assert torch.allclose(c[0, 0], torch.full((3, 3), 1 + torch.tanh(torch.tensor(0.5)).item()))
    assert torch.allclose(c[0, 1], torch.full((3, 3), torch.tanh(torch.tensor(-0.25)).item()))
    assert torch.allclose(h, torch.tanh(c))


def test_wrong_input_size_names_the_expected_size():
    model = ConvLSTM(**TINY)
    for shape in ((1, 2, 3, 16, 16), (1, 2, 3, 8, 16)):
        with pytest.raises(ValueError, match=r"input_size=8 \(expected 8x8\)"):
            model(torch.randn(shape), None)


@pytest.mark.parametrize(
    "x, mask, message",
    [
        (torch.randn(1, 0, 3, 8, 8), None, "at least 1 date"),
        (torch.randn(1, 2, 4, 8, 8), None, "input_dim=3"),
        (torch.randn(2, 3, 8, 8), None, "5-D"),
        (torch.randn(1, 2, 3, 8, 8), torch.zeros(1, 2), "bool"),
        (torch.randn(1, 2, 3, 8, 8), torch.zeros(1, 3, dtype=torch.bool), "pad_mask"),
        (torch.zeros(2, 2, 3, 8, 8), None, "only padded frames"),
    ],
)
def test_bad_inputs(x, mask, message):
    with pytest.raises(ValueError, match=message):
        ConvLSTM(**TINY)(x, None, pad_mask=mask)


@pytest.mark.parametrize(
    "option, value",
    [("input_size", 0), ("input_size", (8, 16)), ("hidden_dim", 0), ("kernel_size", 2), ("kernel_size", (3,)),
     ("classify", "last"), ("official_padding", "yes"), ("num_classes", 0), ("input_dim", 2.5)],
)
def test_bad_options_name_the_option(option, value):
    with pytest.raises(ValueError, match=option):
        ConvLSTM(**{**TINY, option: value})
