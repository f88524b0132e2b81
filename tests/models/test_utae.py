"""U-TAE: parity with the official model, pad handling, gradients and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utae.models.utae import UTAE
from utae.models.ops import ReflectConv2d, group_weighted_sum, group_weighted_sum_reference, reflect_pad, reflect_pad_reference
from utae.models.ltae import TemporalAggregator
from utae.training.weights import WeightsError, load_official_weights

from helpers import tiny_model

ATOL = 1e-4
TINY = tiny_model()


def _official(reference_dir):
    model = UTAE()
    load_official_weights(model, reference_dir / "state_dict.npz")
    return model.eval()


def _capture(model):
    """Hooks that capture the L-TAE output and the last up block's output (the decoder output)."""
    captured = {}
    hooks = [
        model.temporal_encoder.register_forward_hook(lambda m, i, o: captured.__setitem__("ltae_out", o[0])),
        model.up_blocks[-1].register_forward_hook(lambda m, i, o: captured.__setitem__("decoder_out", o)),
    ]
    return captured, hooks


@pytest.mark.parametrize("case", ["case_small", "case_medium"])
@pytest.mark.parametrize("explicit_mask", [False, True])
def test_parity_with_official_outputs(reference_dir, case, explicit_mask):
    model = _official(reference_dir)
    ref = np.load(reference_dir / f"{case}.npz")
    captured, hooks = _capture(model)
    pad_mask = torch.from_numpy(ref["pad_mask"]) if explicit_mask else None
    with torch.no_grad():
        logits, att = model(
            torch.from_numpy(ref["x"]), torch.from_numpy(ref["batch_positions"]), pad_mask=pad_mask, return_att=True
        )
    for h in hooks:
        h.remove()
    outputs = {"logits": logits, "attention": att, **captured}
    for name, value in outputs.items():
        expected = torch.from_numpy(ref[name])
        assert value.shape == expected.shape, name
        err = (value - expected).abs().max().item()
        assert err < ATOL, f"{case} {name}: max |diff| {err:.2e} >= {ATOL}"


def _n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_official_parameter_count_and_keys(reference_dir):
    model = UTAE()
    assert _n_parameters(model) == 1_087_260
    ref_keys = list(np.load(reference_dir / "state_dict.npz").files)
    assert list(model.state_dict().keys()) == ref_keys


def test_default_parameter_count():
    assert _n_parameters(UTAE()) == 1_087_260


def _batch(b=2, t=5, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, 10, h, w, generator=g)
    pos = torch.sort(torch.randint(0, 365, (b, t), generator=g), dim=1).values
    return x, pos


def test_padded_frames_content_and_positions_do_not_matter():
    torch.manual_seed(0)
    model = UTAE(**TINY).eval()
    x, pos = _batch(b=2, t=6)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    x2, pos2 = x.clone(), pos.clone()
    x2[1, 4:] = torch.randn(2, 10, 16, 16) * 5 + 3  # garbage in padded frames
    pos2[1, 4:] = torch.tensor([999, -50])
    with torch.no_grad():
        a, att_a = model(x, pos, pad_mask=pad, return_att=True)
        b, att_b = model(x2, pos2, pad_mask=pad, return_att=True)
    assert torch.equal(a, b)
    assert torch.equal(att_a, att_b)
    assert torch.all(att_a[:, 1, 4:] == 0)  # padded steps get exactly zero attention
    # Sanity: the same garbage in a real frame does change the output.
    x3 = x.clone()
    x3[1, 3] = x2[1, 4]
    with torch.no_grad():
        c = model(x3, pos, pad_mask=pad)
    assert not torch.allclose(a, c)


def test_implicit_mask_matches_explicit_mask():
    torch.manual_seed(1)
    model = UTAE(**TINY, pad_value=0.0).eval()
    x, pos = _batch(b=2, t=5)
    x[0, 3:] = 0.0
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[0, 3:] = True
    with torch.no_grad():
        torch.testing.assert_close(model(x, pos), model(x, pos, pad_mask=pad), rtol=0, atol=0)


def test_gradients_reach_every_parameter_and_loss_decreases():
    torch.manual_seed(0)
    model = UTAE(**TINY)
    x, pos = _batch(b=2, t=4, seed=3)
    pad = torch.zeros(2, 4, dtype=torch.bool)
    pad[1, 3] = True
    target = torch.randint(0, 20, (2, 16, 16), generator=torch.Generator().manual_seed(4))
    loss = torch.nn.functional.cross_entropy(model(x, pos, pad_mask=pad), target)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x, pos, pad_mask=pad), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9, losses


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda x, p, m: (x[0], p, None), r"5-D \(B, T, C, H, W\)"),
        (lambda x, p, m: (x[:, :, :7], p, None), r"expected input_dim=10"),
        (lambda x, p, m: (x[..., :12, :12], p, None), r"divisible by 8"),
        (lambda x, p, m: (x, p[:, :3], None), r"batch_positions must have shape \(B, T\)"),
        (lambda x, p, m: (x, p, m[:, :3]), r"pad_mask must have shape \(B, T\)"),
        (lambda x, p, m: (x, p, m.int()), r"pad_mask must be a bool"),
        (lambda x, p, m: (x, p, torch.ones_like(m)), r"only padded frames"),
    ],
)
def test_bad_input_raises_clear_error(make, match):
    model = UTAE(**TINY).eval()
    x, pos = _batch(b=2, t=5)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    args = make(x, pos, mask)
    with pytest.raises(ValueError, match=match):
        model(args[0], args[1], pad_mask=args[2])


def test_all_padding_sample_detected_without_mask():
    model = UTAE(**TINY).eval()
    x, pos = _batch(b=2, t=3)
    x[1] = 0.0
    with pytest.raises(ValueError, match=r"sample\(s\) \[1\]"):
        model(x, pos)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="divisible by n_head"):
        UTAE(encoder_widths=(6, 6, 6, 12), decoder_widths=(6, 6, 6, 12), n_head=4)
    with pytest.raises(ValueError, match="decoder_widths"):
        UTAE(decoder_widths=(32, 32, 64, 64))


# --- weights -------------------------------------------------------------------------------------------


def test_load_checkpoint_with_module_prefix(reference_dir, tmp_path):
    state = {k: torch.from_numpy(v) for k, v in np.load(reference_dir / "state_dict.npz").items()}
    path = tmp_path / "model.pth.tar"
    torch.save({"epoch": 100, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = load_official_weights(UTAE(), path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_weights_errors_name_the_key(tmp_path):
    model = UTAE(**TINY)
    state = model.state_dict()
    missing = {k: v for k, v in state.items() if k != "temporal_encoder.attention_heads.Q"}
    torch.save({"state_dict": missing}, tmp_path / "missing.pth.tar")
    with pytest.raises(WeightsError, match="missing key 'temporal_encoder.attention_heads.Q'"):
        load_official_weights(UTAE(**TINY), tmp_path / "missing.pth.tar")
    extra = dict(state, **{"extra.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(WeightsError, match="unexpected key 'extra.weight'"):
        load_official_weights(UTAE(**TINY), tmp_path / "extra.pt")
    wrong = dict(state)
    wrong["in_conv.conv.conv.0.weight"] = torch.zeros(8, 10, 5, 5)
    np.savez(tmp_path / "wrong.npz", **{k: v.numpy() for k, v in wrong.items()})
    with pytest.raises(WeightsError, match=r"'in_conv.conv.conv.0.weight' has shape \(8, 10, 5, 5\)"):
        load_official_weights(UTAE(**TINY), tmp_path / "wrong.npz")


def test_corrupt_and_missing_weights_files(tmp_path):
    bad = tmp_path / "model.pth.tar"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="model.pth.tar"):
        load_official_weights(UTAE(**TINY), bad)
    badnpz = tmp_path / "w.npz"
    badnpz.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="w.npz"):
        load_official_weights(UTAE(**TINY), badnpz)
    with pytest.raises(WeightsError, match="not found"):
        load_official_weights(UTAE(**TINY), tmp_path / "absent.npz")


# --- hand-written backward passes (utae.models.ops.reflect_pad, group_weighted_sum) ------------------------


def _int_valued(shape, seed, dtype=torch.float64):
    """Small integers stored as floats: sums and products of a few of them are exact in float64, so two
    summation orders must agree bit for bit."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-8, 9, shape, generator=g).to(dtype)


@pytest.mark.parametrize("pad, shape", [(1, (2, 3, 5, 6)), (2, (1, 2, 5, 4)), (3, (2, 1, 4, 7)), (1, (3, 2, 2))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_reflect_pad_matches_torch_values_and_gradients(pad, shape, channels_last):
    x = _int_valued(shape, 0)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    ours, ref = reflect_pad(x, pad), reflect_pad_reference(x, pad)
    assert torch.equal(ours, ref)
    assert torch.equal(ref, F.pad(x, (pad,) * 4, mode="reflect"))
    upstream = _int_valued(ref.shape, 1)
    (g_ours,) = torch.autograd.grad(ours, x, upstream)
    (g_ref,) = torch.autograd.grad(ref, x, upstream)
    # Every input element gets a sum of at most 4 upstream values, which is exact for small integers.
    assert torch.equal(g_ours, g_ref)
    # Non-integer values: the gradient against finite differences (float64, gradcheck's own tolerances).
    xr = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: reflect_pad(t, pad), (xr,))
    assert torch.autograd.gradgradcheck(lambda t: reflect_pad(t, pad), (xr,))


def test_evaluation_skips_the_autograd_functions_with_the_same_forward():
    """Without gradients, reflect_pad and group_weighted_sum skip their autograd Functions (the per-call cost of
    a Function is most of their time at evaluation); the values are bit for bit the Functions' (float32, random)."""
    from utae.models.ops import _GroupWeightedSum, _ReflectPad

    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, 9, 7, generator=g)
    with torch.no_grad():
        assert torch.equal(reflect_pad(x, 2), _ReflectPad.apply(x, 2))
    assert reflect_pad(x, 2).grad_fn is None  # x needs no gradient: the plain path
    assert reflect_pad(x.clone().requires_grad_(True), 2).grad_fn is not None
    xs, ws = torch.randn(2, 5, 8, 3, 4, generator=g), torch.rand(2, 5, 4, 3, 4, generator=g)
    with torch.no_grad():
        plain = group_weighted_sum(xs, ws)
    assert plain.grad_fn is None and torch.equal(plain, _GroupWeightedSum.apply(xs, ws))
    assert group_weighted_sum(xs, ws.clone().requires_grad_(True)).grad_fn is not None


def test_reflect_pad_rejects_pad_not_below_size():
    with pytest.raises(ValueError, match=r"reflect_pad: pad must be in \[0, min\(H, W\)\) = \[0, 4\), got 4"):
        reflect_pad(torch.zeros(1, 1, 4, 6), 4)
    x = torch.zeros(1, 1, 4, 6)
    assert reflect_pad(x, 0) is x


def test_reflect_conv_equals_nn_conv2d():
    torch.manual_seed(0)
    ours = ReflectConv2d(3, 5, kernel_size=4, stride=2, padding=1, padding_mode="reflect").double()
    ref = torch.nn.Conv2d(3, 5, kernel_size=4, stride=2, padding=1, padding_mode="reflect").double()
    ref.load_state_dict(ours.state_dict())
    x = _int_valued((2, 3, 8, 6), 3)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    # Other padding modes and unequal padding keep nn.Conv2d's path.
    assert ReflectConv2d(3, 5, 3, padding=1)._square_pad is None
    assert ReflectConv2d(3, 5, 3, padding=(1, 2), padding_mode="reflect")._square_pad is None


def test_group_weighted_sum_matches_reference_values_and_gradients():
    x = _int_valued((2, 3, 8, 4, 5), 0).requires_grad_(True)
    w = _int_valued((2, 3, 4, 4, 5), 1).requires_grad_(True)
    ours, ref = group_weighted_sum(x, w), group_weighted_sum_reference(x, w)
    assert ours.shape == (2, 8, 4, 5)
    assert torch.equal(ours, ref)  # sums of 3 products of small integers: exact in either order
    upstream = _int_valued(ref.shape, 2)
    assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad(ours, (x, w), upstream),
                                                   torch.autograd.grad(ref, (x, w), upstream)))
    g = torch.Generator().manual_seed(3)
    xr = torch.randn(2, 3, 4, 2, 3, dtype=torch.float64, generator=g, requires_grad=True)
    wr = torch.rand(2, 3, 2, 2, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(group_weighted_sum, (xr, wr))
    with pytest.raises(ValueError, match=r"weights must be \(B, T, G, H, W\) = \(2, 3, G, 2, 3\)"):
        group_weighted_sum(xr, wr[:, :, :, :1])


def _frames_channels_last(x):
    """``(B, T, C, H, W)`` with the memory of ``B*T`` channels-last frames, as a channels-last encoder leaves it."""
    b, t = x.shape[:2]
    return x.reshape(b * t, *x.shape[2:]).contiguous(memory_format=torch.channels_last).view(x.shape)


def test_group_weighted_sum_on_channels_last_frames():
    """Channels-last frames take their own path: the same values and gradients as the reference (exact on small
    integers), a channels-last output and gradient (no layout change for the convolutions around it), the same
    forward without gradients, and gradcheck on random float64."""
    from utae.models.ops import frames_channels_last

    x = _frames_channels_last(_int_valued((2, 3, 8, 4, 5), 0)).requires_grad_(True)
    w = _int_valued((2, 3, 4, 4, 5), 1).requires_grad_(True)
    assert frames_channels_last(x) and not frames_channels_last(x.detach().contiguous())
    ours, ref = group_weighted_sum(x, w), group_weighted_sum_reference(x, w)
    assert ours.grad_fn is not None and type(ours.grad_fn).__name__ == "_GroupWeightedSumCLBackward"
    assert torch.equal(ours, ref) and ours.is_contiguous(memory_format=torch.channels_last)
    upstream = _int_valued(ref.shape, 2).contiguous(memory_format=torch.channels_last)
    g_ours = torch.autograd.grad(ours, (x, w), upstream)
    g_ref = torch.autograd.grad(ref, (x, w), upstream)
    assert all(torch.equal(a, b) for a, b in zip(g_ours, g_ref))
    assert g_ours[0].permute(0, 1, 3, 4, 2).is_contiguous()  # the gradient of x is channels-last too
    with torch.no_grad():
        assert torch.equal(group_weighted_sum(x, w), ours)
    g = torch.Generator().manual_seed(3)
    xr = _frames_channels_last(torch.randn(2, 3, 4, 2, 3, dtype=torch.float64, generator=g)).requires_grad_(True)
    wr = torch.rand(2, 3, 2, 2, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(group_weighted_sum, (xr, wr))


def test_aggregator_on_channels_last_skips_equals_contiguous():
    """A channels-last skip resizes the attention as channels-last images; the maps are the same. Exact: the
    bilinear weights of an upsampling by 4 are multiples of 1/8, and the inputs small integers (float64)."""
    g = torch.Generator().manual_seed(0)
    n_head, b, t, c = 4, 2, 5, 8
    x = torch.randint(-8, 9, (b, t, c, 16, 16), generator=g).double()
    attn = torch.randint(0, 9, (n_head, b, t, 4, 4), generator=g).double()
    pad = torch.zeros(b, t, dtype=torch.bool)
    pad[1, 3:] = True
    for mode in ("att_group", "att_mean"):
        plain = TemporalAggregator(mode)(x, pad_mask=pad, attn=attn)
        fast = TemporalAggregator(mode)(_frames_channels_last(x), pad_mask=pad, attn=attn)
        assert torch.equal(fast, plain), mode


def test_padded_frames_keep_a_channels_last_encoder_channels_last():
    """With padded frames, the encoder's maps are refilled per frame; a channels-last model's stay channels-last
    (otherwise every skip and its gradient would change layout), and padded frames hold pad_value."""
    from utae.models.ops import frames_channels_last

    model = UTAE(**TINY).to(memory_format=torch.channels_last)
    x, _ = _batch(b=2, t=5, seed=5)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[0, 4] = True
    maps = model._encode(x, pad)
    assert all(frames_channels_last(m) for m in maps[:-1])
    assert all(bool((m[0, 4] == model.pad_value).all()) for m in maps)
    plain = UTAE(**TINY)._encode(x, pad)  # a contiguous model keeps contiguous maps
    assert all(m.is_contiguous() for m in plain)


@pytest.mark.parametrize("mode", ["att_group", "att_mean"])
def test_aggregator_equals_masking_after_upsampling(mode):
    """The aggregator masks padded steps and moves the heads at low resolution; masking after the upsampling
    (as the official model does) gives the same result."""
    g = torch.Generator().manual_seed(0)
    n_head, b, t, c = 4, 2, 5, 8
    x = torch.randn(b, t, c, 16, 16, dtype=torch.float64, generator=g)
    attn = torch.softmax(torch.randn(n_head, b, t, 4, 4, dtype=torch.float64, generator=g), dim=2)
    pad = torch.zeros(b, t, dtype=torch.bool)
    pad[1, 3:] = True
    up = F.interpolate(attn.reshape(n_head * b, t, 4, 4), size=(16, 16), mode="bilinear", align_corners=False)
    up = up.view(n_head, b, t, 16, 16) * (~pad).double()[None, :, :, None, None]
    if mode == "att_mean":
        expected = (x * up.mean(dim=0)[:, :, None]).sum(dim=1)
    else:
        expected = (x.view(b, t, n_head, c // n_head, 16, 16) * up.permute(1, 2, 0, 3, 4)[:, :, :, None]).sum(1)
        expected = expected.reshape(b, c, 16, 16)
    # float64: only the order of a few additions may differ (torch.testing's float64 tolerances).
    torch.testing.assert_close(TemporalAggregator(mode)(x, pad_mask=pad, attn=attn), expected)


def test_fast_ops_give_the_reference_model_outputs_and_gradients():
    """A whole training forward and backward (float64, padded batch) with the hand-written backward passes
    and with the plain-op references: same logits and parameter gradients up to summation order."""
    torch.manual_seed(0)
    fast = UTAE(**TINY).double()
    ref = UTAE(**TINY).double()
    ref.load_state_dict(fast.state_dict())
    for module in ref.modules():
        if isinstance(module, ReflectConv2d):
            module.pad_fn = reflect_pad_reference
        if isinstance(module, TemporalAggregator):
            module.weighted_sum = group_weighted_sum_reference
    x, pos = _batch(b=2, t=5, seed=5)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[0, 4] = True
    target = torch.randint(0, 20, (2, 16, 16), generator=torch.Generator().manual_seed(6))
    grads = []
    for model in (fast, ref):
        torch.manual_seed(1)  # the same dropout masks
        logits = model(x.double(), pos, pad_mask=pad)
        torch.nn.functional.cross_entropy(logits, target).backward()
        grads.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for name, g in grads[0][1].items():
        torch.testing.assert_close(g, grads[1][1][name], msg=lambda m, name=name: f"{name}: {m}")
