"""Fast modes: bf16 autocast, channels_last, torch.compile, and the amp mode resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utae.model import UTAE
from utae.precision import autocast, float32_math, resolve_amp, tf32_enabled
from utae.weights import load_official_weights

CPU = torch.device("cpu")


def _reference(reference_dir, case="case_medium"):
    model = load_official_weights(UTAE(), reference_dir / "state_dict.npz").eval()
    ref = np.load(reference_dir / f"{case}.npz")
    return model, torch.from_numpy(ref["x"]), torch.from_numpy(ref["batch_positions"]), torch.from_numpy(ref["logits"])


@pytest.mark.parametrize("case", ["case_small", "case_medium"])
def test_bf16_autocast_on_cpu_stays_close_to_float32(reference_dir, case):
    model, x, pos, expected = _reference(reference_dir, case)
    dtype, scaler = resolve_amp("bf16", CPU)
    assert dtype is torch.bfloat16 and not scaler
    with torch.no_grad(), autocast(CPU, dtype):
        logits, att = model(x, pos, return_att=True)
    assert logits.dtype == torch.bfloat16
    # bfloat16 keeps 8 bits of mantissa: logits up to ~4.7 may move by a few hundredths.
    err = (logits.float() - expected).abs().max().item()
    assert err < 0.15, err
    assert (logits.float() - expected).abs().mean().item() < 0.02
    # The attention is a float32 softmax; padded steps still get exactly zero.
    assert att.dtype == torch.float32
    torch.testing.assert_close(att.sum(dim=2), torch.ones_like(att.sum(dim=2)), atol=1e-5, rtol=0)


def test_channels_last_gives_same_outputs(reference_dir):
    model, x, pos, expected = _reference(reference_dir, "case_small")
    with torch.no_grad():
        plain = model(x, pos)
        model = model.to(memory_format=torch.channels_last)
        fast = model(x, pos)
    assert (fast - plain).abs().max().item() < 1e-5
    assert (fast - expected).abs().max().item() < 1e-4


def test_channels_last_training_step_matches():
    torch.manual_seed(0)
    small = dict(encoder_widths=(8, 8, 8, 16), decoder_widths=(8, 8, 8, 16), out_conv=(8, 20), n_head=4, d_model=16)
    a = UTAE(**small)
    b = UTAE(**small).to(memory_format=torch.channels_last)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 10, 16, 16)
    pos = torch.tensor([[1, 50, 90], [3, 40, 0]])
    pad = torch.tensor([[False, False, False], [False, False, True]])
    target = torch.randint(0, 20, (2, 16, 16))
    for m in (a, b):
        torch.manual_seed(1)  # the same dropout masks in both
        torch.nn.functional.cross_entropy(m(x, pos, pad_mask=pad), target).backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert (pa.grad - pb.grad).abs().max().item() < 1e-4, name


def test_compile_matches_eager():
    torch.manual_seed(0)
    small = dict(encoder_widths=(8, 8, 8, 16), decoder_widths=(8, 8, 8, 16), out_conv=(8, 20), n_head=4, d_model=16)
    model = UTAE(**small).eval()
    x = torch.randn(1, 3, 10, 16, 16)
    pos = torch.tensor([[1, 50, 90]])
    with torch.no_grad():
        eager = model(x, pos)
    try:
        compiled = torch.compile(model)
        with torch.no_grad():
            out = compiled(x, pos)
    except Exception as err:  # the compiler toolchain is optional, never required
        pytest.skip(f"torch.compile is not available on this platform: {type(err).__name__}: {err}")
    assert (out - eager).abs().max().item() < 1e-4


@pytest.mark.parametrize(
    "amp, match",
    [("fp16", "needs a CUDA GPU"), ("half", "amp must be one of"), ("", "amp must be one of")],
)
def test_unsupported_amp_mode_is_a_clear_error(amp, match):
    with pytest.raises(ValueError, match=match):
        resolve_amp(amp, CPU)


@pytest.mark.parametrize("amp, match", [("fp16", "needs a CUDA GPU"), ("tf32", "needs an Ampere or newer CUDA GPU")])
def test_gpu_only_modes_name_the_mode_on_cpu(amp, match):
    with pytest.raises(ValueError, match=f"amp='{amp}' {match}"):
        resolve_amp(amp, CPU)


def _fake_gpu(monkeypatch, name: str, capability: tuple[int, int]) -> torch.device:
    """Make ``torch.cuda`` report one GPU ``name`` of ``capability`` (the mode choice reads only these)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    return torch.device("cuda", 0)


def test_mode_choice_on_a_t4_class_gpu(monkeypatch, caplog):
    gpu = _fake_gpu(monkeypatch, "Tesla T4", (7, 5))
    with caplog.at_level("INFO", logger="utae.precision"):
        assert resolve_amp("auto", gpu) == (torch.float16, True)
    assert "using fp16" in caplog.text  # the choice of auto is logged
    assert resolve_amp("fp16", gpu) == (torch.float16, True)
    assert resolve_amp("off", gpu) == (None, False)
    with pytest.raises(ValueError, match="Tesla T4 lacks bfloat16: use amp='fp16'"):
        resolve_amp("bf16", gpu)
    with pytest.raises(ValueError, match="Tesla T4 has no TensorFloat-32"):
        resolve_amp("tf32", gpu)


def test_mode_choice_on_an_ampere_or_hopper_gpu(monkeypatch):
    gpu = _fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3", (9, 0))
    assert resolve_amp("auto", gpu) == (torch.bfloat16, False)
    assert resolve_amp("bf16", gpu) == (torch.bfloat16, False)
    assert resolve_amp("fp16", gpu) == (torch.float16, True)
    assert resolve_amp("tf32", gpu) == (None, False)
    assert tf32_enabled("tf32") and not any(tf32_enabled(m) for m in ("off", "bf16", "fp16", "auto"))


@pytest.mark.parametrize("tf32", [False, True])
def test_float32_math_sets_both_tf32_flags_and_restores_them(tf32):
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    with float32_math(tf32):
        assert torch.backends.cudnn.allow_tf32 is tf32
        assert torch.backends.cuda.matmul.allow_tf32 is tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_auto_amp_falls_back_to_float32_on_cpu():
    assert resolve_amp("auto", CPU) == (None, False)
    assert resolve_amp("off", CPU) == (None, False)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A short float32 run on a learnable synthetic set (about 10 s on one thread)."""
    from utae.synthetic import make_synthetic_pastis
    from utae.train import RunConfig, run

    root = make_synthetic_pastis(tmp_path_factory.mktemp("amp") / "pastis", n_patches=100, size=32, t_range=(8, 12), seed=1)
    config = RunConfig(
        dataset_root=str(root), out_dir=str(tmp_path_factory.mktemp("amp_run") / "off"), epochs=10, batch_size=4,
        seed=0, device="cpu", encoder_widths=(16, 16, 16, 32), decoder_widths=(16, 16, 16, 32), out_conv=(16, 20),
        n_head=4, d_model=64, test_noise_stds=(0.0,), n_examples=0, progress=False,
    )
    return config, run(config)


def test_a_short_run_trained_in_bf16_scores_within_one_point_of_float32(short_run, tmp_path):
    # The same run (seed, data, epochs) trained and tested under bf16 autocast. Before the L-TAE ran in
    # float32 under autocast, this run lost 3 points of mIoU.
    import dataclasses

    from utae.results import read_json
    from utae.train import run

    config, fp32 = short_run
    bf16 = run(dataclasses.replace(config, amp="bf16", out_dir=str(tmp_path / "bf16")))
    assert read_json(tmp_path / "bf16" / "platform.json")["amp"] == "bf16"
    assert abs(bf16["test"]["miou"] - fp32["test"]["miou"]) < 0.01, (fp32["test"]["miou"], bf16["test"]["miou"])


def test_evaluating_in_bf16_changes_the_test_miou_of_a_trained_model_by_under_one_point(short_run):
    from utae.metrics import scores
    from utae.train import build_model, evaluate, make_datasets, make_loader

    config, metrics = short_run
    test = make_datasets(config).test
    model = build_model(config)
    model.load_state_dict(torch.load(f"{config.out_dir}/checkpoint.pt", map_location="cpu", weights_only=False)["best_model"])
    loader = make_loader(test, batch_size=4, train=False, seed=0, device=CPU)
    fp32 = scores(evaluate(model, loader, CPU, amp=None)[0])
    bf16 = scores(evaluate(model, loader, CPU, amp="bf16")[0])
    assert fp32["miou"] == pytest.approx(metrics["test"]["miou"], abs=1e-9)  # the run's own test figure
    # The model has learnt something, so the comparison means something: OA above the background share.
    targets = np.concatenate([test[i]["mask"].numpy().ravel() for i in range(len(test))])
    targets = targets[targets != 19]
    assert fp32["oa"] > (targets == 0).mean() + 0.1
    assert abs(bf16["miou"] - fp32["miou"]) < 0.01, (fp32["miou"], bf16["miou"])
    assert abs(bf16["oa"] - fp32["oa"]) < 0.01
