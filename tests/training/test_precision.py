"""Fast modes: bf16 autocast, channels_last, torch.compile, and the amp mode resolution.

The bounds on numerical differences are derived from what they measure (see the constants below); none is a
value observed on one machine. They hold on any CPU: with or without native bfloat16 (AVX-512-BF16, AMX, ARM
BF16; torch emulates it elsewhere), and for any number of threads.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from utae.pastis.classes import VOID_LABEL
from utae.models.ltae import LTAE2d
from utae.models.utae import UTAE
from utae.training.precision import autocast, float32_math, resolve_amp, tf32_enabled
from utae.training.weights import load_official_weights

from helpers import tiny_model

CPU = torch.device("cpu")

#: Unit roundoff of bfloat16: 8 significand bits (7 stored, 1 implicit), round to nearest, so one rounding
#: moves a value by at most 2^-8 of itself (``torch.finfo(torch.bfloat16).eps / 2``).
U_BF16 = 2.0**-8
#: Two float32 computations that differ only in the order of their sums (other kernels, memory layout, thread
#: count, a compiler's fusion) differ by about 2^-24 * sqrt(n) relative per sum of n terms, adding in
#: quadrature over the stages: with n <= 9 * 256 (the widest 3x3 convolution of the official model, sqrt < 48)
#: and at most 25 stages (sqrt = 5), about 2^-24 * 240 ~ 1.4e-5 relative RMS. 2^-14 (6.1e-5) allows 4x that,
#: and stays 16x below a single bfloat16 rounding (relative RMS about U_BF16 / sqrt(3) ~ 2^-9): a tensor
#: that went through bfloat16 anywhere fails it.
FLOAT32_REORDER = 2.0**-14

SMALL = tiny_model()


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative RMS difference ``||a - b|| / ||b||`` of two tensors of the same shape (``a`` cast to ``b``'s dtype)."""
    return ((a.to(b.dtype) - b).norm() / b.norm()).item()


def _bf16_stages(model: UTAE) -> int:
    """How many operations CPU autocast runs in bfloat16 in ``model``: its convolutions and linear layers
    outside the L-TAE (which runs in float32 under autocast). An upper bound on the length of any path."""
    kinds = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    return sum(isinstance(m, kinds) for name, m in model.named_modules() if not name.startswith("temporal_encoder"))


def _bf16_logit_bound(model: UTAE) -> float:
    """Bound on the relative RMS difference of bf16-autocast logits from float32 logits (same weights, input).

    Each of the L bf16 operations rounds its input and its weights to bfloat16 (relative error <= U_BF16 each),
    accumulates in float32 and rounds its output (<= U_BF16): about U_BF16 of relative RMS error per operation
    when the roundings behave as independent zero-mean errors (the probabilistic model of rounding errors,
    Higham and Mary, SIAM J. Sci. Comput. 2019) and an output is not much smaller than its terms. GroupNorm and
    BatchNorm keep the activations at unit scale, so the errors of the L operations add in quadrature:
    U_BF16 * sqrt(L). The factor 4 covers cancellation inside the sums and the gain of the network. Everything
    else runs in float32 (the L-TAE, its softmax, the norms, the loss). The official model and the small ones
    here measure 1.3 to 1.6 U_BF16 with L = 25, a tenth of this bound; an error of the bound's size would
    reach about one class change in every 4 pixels, where the float32 margins are spread as in these models.
    """
    return 4 * U_BF16 * math.sqrt(_bf16_stages(model))


class LTAEProbe:
    """Records what the model's L-TAE (``model.temporal_encoder``) receives and returns during one forward pass,
    and the gradients that reach its outputs during the backward pass; :meth:`replay` then runs a copy of the
    L-TAE alone, in float32 with autocast off, on the same input with the same dropout draws.

    Under autocast the L-TAE must compute in float32 (see :meth:`utae.models.ltae.LTAE2d.forward`): the replay then
    repeats the same float32 operations, and outputs and parameter gradients agree to FLOAT32_REORDER. An L-TAE
    computed in bfloat16 (whose date encoding loses day resolution: bf16 runs lost 3 to 5 mIoU points) differs
    by bf16 rounding, 2^-9 relative or more.
    """

    def __init__(self, model: UTAE) -> None:
        self.module = model.temporal_encoder
        # Copied before the forward pass: the same BatchNorm statistics as the L-TAE sees.
        self.twin = copy.deepcopy(self.module)
        self.outputs: tuple[torch.Tensor, ...] = ()
        self.output_grads: dict[int, torch.Tensor] = {}

    def __enter__(self) -> LTAEProbe:
        self.handles = [self.module.register_forward_pre_hook(self._before, with_kwargs=True),
                        self.module.register_forward_hook(self._after, with_kwargs=True)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def _before(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.input, self.args, self.kwargs = args[0].detach(), args[1:], dict(kwargs)
        self.rng = torch.get_rng_state()

    def _after(self, module: nn.Module, args: tuple, kwargs: dict, output: tuple[torch.Tensor, ...]) -> None:
        self.outputs = tuple(output)  # out (B, C, h, w), attention (n_head, B, T, h, w)
        for i, out in enumerate(self.outputs):
            if out.requires_grad:
                out.register_hook(lambda grad, i=i: self.output_grads.__setitem__(i, grad))

    def replay(self, backward: bool = False) -> tuple[torch.Tensor, ...]:
        """The L-TAE's outputs recomputed in float32 (and, with ``backward``, its parameter gradients, in
        ``self.twin``, from the recorded output gradients)."""
        saved = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        try:
            with torch.autocast(CPU.type, enabled=False), torch.set_grad_enabled(backward):
                outputs = tuple(self.twin(self.input.float(), *self.args, **self.kwargs))
        finally:
            torch.set_rng_state(saved)
        if backward:
            pairs = [(outputs[i], g.float()) for i, g in sorted(self.output_grads.items())]
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        return outputs


def _ltae_error(probe: LTAEProbe) -> float:
    """The largest relative RMS difference between the recorded L-TAE outputs and their float32 replay."""
    replayed = probe.replay()
    return max(_rel_rms(rec.detach().float(), rep) for rec, rep in zip(probe.outputs, replayed))


def _reference(reference_dir, case="case_medium"):
    model = load_official_weights(UTAE(), reference_dir / "state_dict.npz").eval()
    ref = np.load(reference_dir / f"{case}.npz")
    return model, torch.from_numpy(ref["x"]), torch.from_numpy(ref["batch_positions"]), torch.from_numpy(ref["logits"])


@pytest.mark.parametrize("case", ["case_small", pytest.param("case_medium", marks=pytest.mark.slow)])
def test_bf16_autocast_on_cpu_stays_close_to_float32(reference_dir, case):
    model, x, pos, expected = _reference(reference_dir, case)
    dtype, scaler = resolve_amp("bf16", CPU)
    assert dtype is torch.bfloat16 and not scaler
    with torch.no_grad(), LTAEProbe(model) as probe, autocast(CPU, dtype):
        logits, att = model(x, pos, return_att=True)
    assert logits.dtype == torch.bfloat16
    assert _rel_rms(logits.float(), expected) < _bf16_logit_bound(model)
    assert _ltae_error(probe) < FLOAT32_REORDER  # the L-TAE computed in float32
    # The attention is a float32 softmax: over T <= 12 steps its sums are 1 to within 12 * 2^-24 < 1e-6;
    # padded steps get exactly zero.
    assert att.dtype == torch.float32
    torch.testing.assert_close(att.sum(dim=2), torch.ones_like(att.sum(dim=2)), atol=1e-5, rtol=0)


def test_channels_last_gives_same_outputs(reference_dir):
    model, x, pos, expected = _reference(reference_dir, "case_small")
    with torch.no_grad():
        plain = model(x, pos)
        model = model.to(memory_format=torch.channels_last)
        fast = model(x, pos)
    # Another memory layout only reorders float32 sums; the official outputs came from another build of torch.
    assert _rel_rms(fast, plain) < FLOAT32_REORDER
    assert _rel_rms(fast, expected) < FLOAT32_REORDER


def test_channels_last_training_step_matches():
    torch.manual_seed(0)
    a = UTAE(**SMALL)
    b = UTAE(**SMALL).to(memory_format=torch.channels_last)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 10, 16, 16)
    pos = torch.tensor([[1, 50, 90], [3, 40, 0]])
    pad = torch.tensor([[False, False, False], [False, False, True]])
    target = torch.randint(0, 20, (2, 16, 16))
    for m in (a, b):
        torch.manual_seed(1)  # the same dropout masks in both
        torch.nn.functional.cross_entropy(m(x, pos, pad_mask=pad), target).backward()
    grad_a = torch.cat([p.grad.flatten() for p in a.parameters()])
    grad_b = torch.cat([p.grad.flatten() for p in b.parameters()])
    # A weight gradient sums terms of both signs over every pixel (2 x 16 x 16 x T here), so cancellation
    # raises the relative reordering error of the forward pass (FLOAT32_REORDER) by the ratio of the sum of
    # the terms' sizes to the size of their sum: 16x is allowed for it. Still 4x below one bf16 rounding.
    assert _rel_rms(grad_b, grad_a) < 16 * FLOAT32_REORDER


@pytest.mark.long
def test_compile_matches_eager():
    torch.manual_seed(0)
    model = UTAE(**SMALL).eval()
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
    # Fusion reorders float32 sums and may use other float32 kernels for exp and rsqrt (a few ulp).
    assert _rel_rms(out, eager) < FLOAT32_REORDER


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
    with caplog.at_level("INFO", logger="utae.training.precision"):
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


# --------------------------------------------------------------------------------------------------
# bf16 on a trained model: training and evaluation
# --------------------------------------------------------------------------------------------------

TRAINED = dict(encoder_widths=(16, 16, 16, 32), decoder_widths=(16, 16, 16, 32), out_conv=(16, 20), n_head=4,
               d_model=64)


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The training loss: float32 cross-entropy averaged over the non-void pixels."""
    return torch.nn.functional.cross_entropy(logits.float(), target, ignore_index=VOID_LABEL)


def _batches(dataset, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    from utae.pastis.dataset import pad_collate

    for start in range(0, len(dataset), batch_size):
        yield pad_collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


@pytest.fixture(scope="module")
def trained(synthetic_pastis):
    """A U-TAE trained in float32 for 10 epochs on a learnable synthetic set (60 patches of folds 1-3), and the
    test set (fold 5): 20 patches of 16 x 16 pixels. About 10 s on one thread."""
    from utae.pastis.dataset import PastisDataset

    root = synthetic_pastis(n_patches=100, size=16, t_range=(8, 12), seed=1)
    train = PastisDataset(root, folds=(1, 2, 3))
    test = PastisDataset(root, folds=(5,), norm_stats=(train.mean, train.std))
    torch.manual_seed(0)
    model = UTAE(**TRAINED)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(10):
        perm = torch.randperm(len(train), generator=order).tolist()
        for batch in _batches(torch.utils.data.Subset(train, perm), 4):
            loss = _cross_entropy(model(batch["image"], batch["dates"], pad_mask=batch["pad_mask"]), batch["mask"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), train, test


@pytest.mark.slow
def test_a_bf16_training_step_runs_the_ltae_in_float32_and_keeps_the_logits_within_bf16_rounding(trained):
    # Training in bf16 (before the L-TAE ran in float32 under autocast) cost 3 to 5 mIoU points: the sum of the
    # features and the date encoding kept too few bits to tell nearby days apart. Comparing the scores of two
    # short runs cannot show that reliably (an mIoU over a few test patches moves by more than a point from
    # rounding alone); the L-TAE's own float32 computation, checked on a training step, shows it exactly.
    model, train, _ = trained
    batch = next(_batches(train, 8))
    x, pos, pad, target = batch["image"], batch["dates"], batch["pad_mask"], batch["mask"]
    fp32, bf16 = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    torch.manual_seed(0)  # the same dropout draws in both passes
    logits32 = fp32(x, pos, pad_mask=pad)
    torch.manual_seed(0)
    with LTAEProbe(bf16) as probe, autocast(CPU, torch.bfloat16):
        logits16 = bf16(x, pos, pad_mask=pad)
    _cross_entropy(logits16, target).backward()
    assert logits16.dtype == torch.bfloat16
    assert _rel_rms(logits16.float(), logits32.detach()) < _bf16_logit_bound(bf16)

    # The L-TAE's forward and backward passes in float32: its outputs and its parameter gradients equal a
    # float32 replay of the L-TAE alone on the same input, from the same output gradients.
    replayed = probe.replay(backward=True)
    assert [out.dtype for out in probe.outputs] == [torch.float32] * len(probe.outputs)
    for recorded, again in zip(probe.outputs, replayed):
        assert _rel_rms(recorded.detach(), again.detach()) < FLOAT32_REORDER
    assert sorted(probe.output_grads) == [0, 1]  # both the output and the attention feed the loss
    grads = torch.cat([p.grad.flatten() for p in bf16.temporal_encoder.parameters()])
    replay_grads = torch.cat([p.grad.flatten() for p in probe.twin.parameters()])
    assert _rel_rms(grads, replay_grads) < FLOAT32_REORDER
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in bf16.parameters())


@pytest.mark.slow
def test_evaluating_a_trained_model_in_bf16_changes_few_predictions(trained):
    model, _, test = trained
    logits32, logits16, targets, ltae_errors = [], [], [], []
    with torch.no_grad():
        for batch in _batches(test, 4):
            args = (batch["image"], batch["dates"])
            logits32.append(model(*args, pad_mask=batch["pad_mask"]))
            with LTAEProbe(model) as probe, autocast(CPU, torch.bfloat16):
                logits16.append(model(*args, pad_mask=batch["pad_mask"]).float())
            ltae_errors.append(_ltae_error(probe))
            targets.append(batch["mask"])
    l32, l16, target = torch.cat(logits32), torch.cat(logits16), torch.cat(targets)
    assert max(ltae_errors) < FLOAT32_REORDER  # the L-TAE computed in float32
    error = _rel_rms(l16, l32)
    assert error < _bf16_logit_bound(model), (error, _bf16_logit_bound(model))

    # Per-pixel predictions on the ~4,700 non-void test pixels. A pixel changes class only if the error of its
    # top-two logit difference exceeds its float32 margin m. With logit errors of RMS s = error * RMS(logits),
    # that difference has RMS at most 2 s (whatever the correlation of the two errors), so by Chebyshev's
    # inequality a pixel changes class with probability at most min(1, (2 s / m)^2). The sum of these over the
    # pixels bounds the expected number of changes; 3 sqrt(sum) more covers the spread of the count. Errors
    # concentrated at the decision boundaries (a systematic shift of one class's logit, say) break it.
    valid = target != VOID_LABEL
    top2 = l32.topk(2, dim=1).values
    margin = (top2[:, 0] - top2[:, 1])[valid]
    s = error * l32.pow(2).mean().sqrt()
    expected = torch.clamp((2 * s / margin) ** 2, max=1.0).sum().item()
    changed = int((l16.argmax(1) != l32.argmax(1))[valid].sum())
    assert changed <= expected + 3 * math.sqrt(expected), (changed, expected, int(valid.sum()))
    # The model has learnt something, so its margins mean something: it beats predicting the background
    # everywhere (34 % of the pixels; it reaches about 47 %).
    accuracy = (l32.argmax(1) == target)[valid].float().mean().item()
    assert accuracy > (target[valid] == 0).float().mean().item()


def test_the_float32_ltae_check_detects_an_ltae_computed_in_bf16(monkeypatch):
    # The bug the checks above guard against: the L-TAE run under autocast instead of in float32.
    monkeypatch.setattr(LTAE2d, "forward", lambda self, x, batch_positions=None, pad_mask=None:
                        self._forward(x, batch_positions, pad_mask))
    torch.manual_seed(0)
    model = UTAE(**SMALL).eval()
    x, pos = torch.randn(2, 4, 10, 16, 16), torch.tensor([[3, 120, 250, 400], [10, 90, 300, 420]])
    with torch.no_grad(), LTAEProbe(model) as probe, autocast(CPU, torch.bfloat16):
        model(x, pos)
    # Its output is at least rounded to bfloat16 once: a relative RMS error near U_BF16 / sqrt(3), far above
    # U_BF16 / 8, itself 16x above the float32 tolerance.
    assert _ltae_error(probe) > U_BF16 / 8 > FLOAT32_REORDER
