"""U-TAE: parity with the official model, pad handling, gradients and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utae.model import UTAE, count_parameters
from utae.weights import WeightsError, load_official_weights

ATOL = 1e-4
TINY = dict(encoder_widths=(8, 8, 8, 16), decoder_widths=(8, 8, 8, 16), out_conv=(8, 20), n_head=4, d_model=16)


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


def test_official_parameter_count_and_keys(reference_dir):
    model = UTAE()
    assert count_parameters(model) == 1_087_260
    ref_keys = list(np.load(reference_dir / "state_dict.npz").files)
    assert list(model.state_dict().keys()) == ref_keys


def test_default_parameter_count():
    assert count_parameters(UTAE()) == 1_087_260


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
