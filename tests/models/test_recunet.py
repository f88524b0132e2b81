"""The recurrent U-Nets ``uconvlstm`` and ``buconvlstm``: official parity, padding, short series, checks."""

from __future__ import annotations

import pytest
import torch

from utae.models.recunet import BUConvLSTM, RecUNet, UConvLSTM

from helpers import BASELINE_ATOL, BATCH_ATOL, baseline_case, logits, max_diff, official_baseline, pad_right

#: (class, reference name, trainable parameters and state-dict entries of the reference README).
MODELS = {"uconvlstm": (UConvLSTM, 1_520_540, 128), "buconvlstm": (BUConvLSTM, 1_414_828, 130)}
TINY = dict(input_dim=3, num_classes=5, input_size=16, encoder_widths=(8, 8, 16), decoder_widths=(8, 8, 16),
            out_conv=(8, 5), hidden_dim=4)


@pytest.fixture(scope="module", params=sorted(MODELS))
def official(request, baselines_dir):
    """(reference name, the official model in eval mode)."""
    return request.param, official_baseline(MODELS[request.param][0], baselines_dir, request.param)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_official_configuration_parameters_and_entries(name):
    cls, count, entries = MODELS[name]
    model = cls()  # the counts do not depend on input_size
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count
    assert len(model.state_dict()) == entries
    assert cls.uses_dates is False


def test_official_get_model_build_of_buconvlstm():
    # get_model's "buconvlstm" is temporal="lstm" with hidden 30: uconvlstm's count less its ConvLSTM (442,624)
    # and out_convlstm (73,856), plus a hidden-30 ConvLSTM on 128 channels (170,760, ARCHITECTURES.md section 6)
    # and out_convlstm 30 -> 128 (128 * 30 * 9 + 128 = 34,688).
    model = BUConvLSTM(temporal="lstm")
    assert sum(p.numel() for p in model.parameters()) == 1_520_540 - 442_624 - 73_856 + 170_760 + 34_688


def test_parity_on_unpadded_series(official, baselines_dir):
    name, model = official
    medium = baseline_case(baselines_dir, name, "case_medium")
    out = logits(model, medium["x"])
    assert max_diff(out, medium["logits"]) < BASELINE_ATOL
    assert out.min() >= 0  # out_conv ends with a ReLU
    small = baseline_case(baselines_dir, name, "case_small")  # sample 0 is unpadded: its row is the same alone
    out = logits(model, small["x"][:1], small["pad_mask"][:1])  # with an explicit mask this time
    assert max_diff(out, small["logits"][:1]) < BASELINE_ATOL


@pytest.mark.parametrize("name", sorted(MODELS))
def test_official_padding_reproduces_the_padded_batch(baselines_dir, name):
    model = official_baseline(MODELS[name][0], baselines_dir, name, official_padding=True)
    ref = baseline_case(baselines_dir, name, "case_small")
    assert max_diff(logits(model, ref["x"]), ref["logits"]) < BASELINE_ATOL


def test_padded_sample_gets_its_alone_logits(official, baselines_dir):
    name, model = official
    ref = baseline_case(baselines_dir, name, "case_small")
    n_real = int((~ref["pad_mask"][1]).sum())
    batched = logits(model, ref["x"])[1:]
    assert max_diff(batched, logits(model, ref["x"][1:, :n_real])) < BATCH_ATOL
    # The official padded row moved with the 2 padded steps (0.018 and 0.014 in the reference README).
    assert max_diff(batched, ref["logits"][1:]) > 10 * BASELINE_ATOL


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_mode_padding_changes_nothing(baselines_dir, name):
    """In training mode the decoder's BatchNorm mixes the samples (as in U-TAE), so a sample alone differs from
    the same sample in a batch; but how much padding the batch has, and what the padded frames hold, do not matter."""
    model = official_baseline(MODELS[name][0], baselines_dir, name).train()  # a fresh model: its statistics move
    ref = baseline_case(baselines_dir, name, "case_small")
    series = [ref["x"][0], ref["x"][1, : int((~ref["pad_mask"][1]).sum())]]
    more = [torch.cat([series[0], series[0][:2]]), series[1]]
    x_long, mask_long = pad_right(more, fill=3.0)
    mask_long[0, 7:] = True  # the 2 frames added to sample 0 are padding too, with real-looking values
    assert max_diff(logits(model, ref["x"]), logits(model, x_long, mask_long)) < BATCH_ATOL


@pytest.mark.parametrize("option", [dict(classify="hidden"), dict(in_conv_padding_mode=None)])
def test_corrected_quirks_change_the_logits(official, baselines_dir, option):
    name, model = official
    ref = baseline_case(baselines_dir, name, "case_small")
    corrected = official_baseline(MODELS[name][0], baselines_dir, name, **option)
    assert max_diff(logits(corrected, ref["x"][:1]), logits(model, ref["x"][:1])) > 10 * BASELINE_ATOL


@pytest.mark.parametrize("temporal", ["lstm", "blstm"])
def test_logits_do_not_depend_on_the_batch(temporal):
    torch.manual_seed(0)
    model = RecUNet(**TINY, temporal=temporal).eval()
    series = [torch.randn(t, 3, 16, 16) for t in (3, 1, 2)]
    x, mask = pad_right(series, fill=7.0)  # padded frames hold garbage: only the mask says they are padding
    batched = logits(model, x, mask)
    for i, s in enumerate(series):
        assert max_diff(batched[i : i + 1], logits(model, s[None])) < BATCH_ATOL, i


@pytest.mark.parametrize("t", [1, 2, 3])
@pytest.mark.parametrize("temporal", ["lstm", "blstm"])
def test_short_series(t, temporal):
    torch.manual_seed(0)
    out = logits(RecUNet(**TINY, temporal=temporal).eval(), torch.randn(2, t, 3, 16, 16))
    assert out.shape == (2, 5, 16, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("temporal", ["lstm", "blstm"])
def test_padded_frames_get_no_gradient(temporal):
    torch.manual_seed(0)
    model = RecUNet(**TINY, temporal=temporal)
    x, mask = pad_right([torch.randn(3, 3, 16, 16), torch.randn(1, 3, 16, 16)], fill=1.0)
    x.requires_grad_(True)
    model(x, None, pad_mask=mask).sum().backward()
    assert x.grad[mask].abs().max() == 0 and x.grad[~mask].flatten(1).abs().amax(dim=1).min() > 0


def test_wrong_input_size_names_the_expected_size():
    with pytest.raises(ValueError, match=r"input_size=16 \(expected 16x16\)"):
        RecUNet(**TINY)(torch.randn(1, 2, 3, 32, 32), None)


def test_too_short_series_names_the_minimum():
    with pytest.raises(ValueError, match="at least 1 date"):
        UConvLSTM(**TINY)(torch.randn(1, 0, 3, 16, 16), None)


@pytest.mark.parametrize(
    "option, value",
    [("temporal", "gru"), ("encoder_norm", "layer"), ("padding_mode", "same"), ("in_conv_padding_mode", "x"),
     ("classify", "c"), ("official_padding", 0), ("hidden_dim", 0), ("encoder_widths", (8, 6, 16)),
     ("encoder_widths", (16,)), ("decoder_widths", (8, 16)), ("decoder_widths", (8, 8, 8)), ("out_conv", (8, 6)),
     ("str_conv_k", 0), ("str_conv_p", -1), ("input_size", 10), ("pad_value", None)],
)
def test_bad_options_name_the_option(option, value):
    with pytest.raises(ValueError, match=option):
        RecUNet(**{**TINY, option: value})
