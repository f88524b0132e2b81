"""FPN-ConvLSTM (``fpn_convlstm``): official parity, the pyramid, padding, short series, checks."""

from __future__ import annotations

import pytest
import torch

from utae.models.fpn_convlstm import FPNConvLSTM, Pyramid

from helpers import BASELINE_ATOL, BATCH_ATOL, baseline_case, logits, max_diff, official_baseline, pad_right

TINY = dict(input_dim=3, num_classes=5, input_size=8, inconv=(8, 8), n_levels=3, n_channels=8, hidden_size=8)


@pytest.fixture(scope="module")
def official(baselines_dir):
    return official_baseline(FPNConvLSTM, baselines_dir, "fpn")


def test_official_configuration_parameters_and_keys():
    model = FPNConvLSTM()
    # The reference README's count for FPNConvLSTM(inconv=[32, 64], n_levels=4, n_channels=64, hidden_size=88,
    # mid_conv=True); it does not depend on input_size. 24 entries, GroupNorm only (no buffers).
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1_151_028
    keys = list(model.state_dict())
    assert len(keys) == 24 and keys[0] == "inconv.conv.conv.0.weight" and keys[-1] == "outconv.bias"
    assert "pyramid.convs.2.weight" in keys and "convlstm.cell_list.0.conv.weight" in keys
    assert FPNConvLSTM.uses_dates is False


def test_parity_on_unpadded_series(official, baselines_dir):
    medium = baseline_case(baselines_dir, "fpn", "case_medium")
    assert max_diff(logits(official, medium["x"]), medium["logits"]) < BASELINE_ATOL
    small = baseline_case(baselines_dir, "fpn", "case_small")  # sample 0 is unpadded: its row is the same alone
    out = logits(official, small["x"][:1], small["pad_mask"][:1])  # with an explicit mask this time
    assert max_diff(out, small["logits"][:1]) < BASELINE_ATOL


def test_official_padding_reproduces_the_padded_batch(baselines_dir):
    model = official_baseline(FPNConvLSTM, baselines_dir, "fpn", official_padding=True)
    ref = baseline_case(baselines_dir, "fpn", "case_small")
    assert max_diff(logits(model, ref["x"]), ref["logits"]) < BASELINE_ATOL


@pytest.mark.parametrize("train", [False, True])
def test_padded_sample_gets_its_alone_logits(official, baselines_dir, train):
    ref = baseline_case(baselines_dir, "fpn", "case_small")
    n_real = int((~ref["pad_mask"][1]).sum())
    official.train(train)  # GroupNorm only (per frame), no dropout: training mode computes the same
    try:
        batched = logits(official, ref["x"])[1:]
        alone = logits(official, ref["x"][1:, :n_real])
    finally:
        official.eval()
    assert max_diff(batched, alone) < BATCH_ATOL
    # The official padded row moved with the 2 padded steps (1.24 in the reference README): not what we give.
    assert max_diff(batched, ref["logits"][1:]) > 10 * BASELINE_ATOL


@pytest.mark.parametrize("option", [dict(classify="hidden"), dict(global_pool="mean")])
def test_corrected_quirks_change_the_logits(official, baselines_dir, option):
    ref = baseline_case(baselines_dir, "fpn", "case_small")
    corrected = official_baseline(FPNConvLSTM, baselines_dir, "fpn", **option)
    assert max_diff(logits(corrected, ref["x"][:1]), logits(official, ref["x"][:1])) > 10 * BASELINE_ATOL


def test_pyramid_levels():
    torch.manual_seed(0)
    pyramid = Pyramid(4, n_levels=3, n_channels=2)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        out = pyramid(x)
        u = pyramid.inconv(x)
        dilated = torch.nn.functional.conv2d(
            torch.nn.functional.pad(u, (2, 2, 2, 2), mode="reflect"), pyramid.convs[1].weight, pyramid.convs[1].bias,
            dilation=2,
        )
    assert out.shape == (2, 6, 6, 6)
    assert max_diff(out[:, 2:4], dilated) < 1e-6  # the same float32 convolution, computed twice
    assert torch.equal(out[:, 4:], u.amax(dim=(2, 3), keepdim=True).expand(-1, -1, 6, 6))


@pytest.mark.parametrize("train", [False, True])
def test_logits_do_not_depend_on_the_batch(train):
    torch.manual_seed(0)
    model = FPNConvLSTM(**TINY).train(train)
    series = [torch.randn(t, 3, 8, 8) for t in (3, 1, 2)]
    x, mask = pad_right(series, fill=7.0)  # padded frames hold garbage: only the mask says they are padding
    batched = logits(model, x, mask)
    for i, s in enumerate(series):
        assert max_diff(batched[i : i + 1], logits(model, s[None])) < BATCH_ATOL, i


@pytest.mark.parametrize("t", [1, 2, 3])
@pytest.mark.parametrize("mid_conv", [True, False])
def test_short_series(t, mid_conv):
    torch.manual_seed(0)
    model = FPNConvLSTM(**TINY, mid_conv=mid_conv).eval()
    out = logits(model, torch.randn(2, t, 3, 8, 8))
    assert out.shape == (2, 5, 8, 8) and torch.isfinite(out).all()
    assert any(k.startswith("mid_conv.") for k in model.state_dict()) is mid_conv


def test_padded_frames_get_no_gradient():
    torch.manual_seed(0)
    model = FPNConvLSTM(**TINY)
    x, mask = pad_right([torch.randn(3, 3, 8, 8), torch.randn(1, 3, 8, 8)], fill=1.0)
    x.requires_grad_(True)
    model(x, None, pad_mask=mask).square().sum().backward()
    assert x.grad[mask].abs().max() == 0 and x.grad[~mask].flatten(1).abs().amax(dim=1).min() > 0


def test_wrong_input_size_names_the_expected_size():
    with pytest.raises(ValueError, match=r"input_size=8 \(expected 8x8\)"):
        FPNConvLSTM(**TINY)(torch.randn(1, 2, 3, 12, 12), None)


def test_too_short_series_names_the_minimum():
    with pytest.raises(ValueError, match="at least 1 date"):
        FPNConvLSTM(**TINY)(torch.randn(1, 0, 3, 8, 8), None)


@pytest.mark.parametrize(
    "option, value",
    [("inconv", (8, 10)), ("inconv", ()), ("n_levels", 1), ("n_channels", 0), ("hidden_size", 0),
     ("mid_conv", "no"), ("classify", "h"), ("global_pool", "avg"), ("official_padding", None), ("kernel_size", 0),
     ("input_size", 2)],
)
def test_bad_options_name_the_option(option, value):
    with pytest.raises(ValueError, match=option):
        FPNConvLSTM(**{**TINY, option: value})


def test_mid_conv_width_must_suit_group_norm():
    with pytest.raises(ValueError, match="n_levels"):
        FPNConvLSTM(**{**TINY, "n_channels": 6})  # mid_conv width 3 * 6 / 2 = 9
