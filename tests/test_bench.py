"""The benchmark's table logic (not its timings): modes per device, accuracy column, speed-ups, known peaks."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from benchmarks.bench import (
    KNOWN_PEAKS_TFLOPS,
    Mode,
    Shape,
    add_speedups,
    bench_mode,
    known_peak_tflops,
    modes_for,
    supported_amps,
)
from utae.models.utae import UTAE

from helpers import tiny_model

CPU = torch.device("cpu")
TINY_SHAPE = Shape("tiny", 1, 3, 16)
TINY_WIDTHS = tiny_model(levels=3)


def test_cpu_modes_are_float32_and_bf16_only():
    assert supported_amps(CPU) == ["off", "bf16"]
    modes = modes_for(CPU, quick=False, try_compile=True)
    assert {m.amp for m in modes} == {"off", "bf16"}
    assert len(modes) == 2 * 2 * 2  # amp x channels_last x compile
    assert all(not m.compile for m in modes_for(CPU, quick=True, try_compile=True))


def test_rows_report_the_accuracy_and_flops_of_each_mode():
    reference: dict = {}
    peaks = {"off": 1.0, "bf16": 1.0}
    off = bench_mode(TINY_SHAPE, TINY_WIDTHS, Mode(), CPU, 1, reference, peaks)
    fast = bench_mode(TINY_SHAPE, TINY_WIDTHS, Mode("bf16", channels_last=True), CPU, 1, reference, peaks)
    logits = reference[TINY_SHAPE.name]  # the float32 eager logits every row is compared with
    rms = logits.pow(2).mean().sqrt().item()
    # The float32 eager row repeats the reference's computation: equal up to float32 reordering (2^-14
    # relative, see FLOAT32_REORDER in test_precision.py).
    assert off["max_abs_dlogits"] <= 2.0**-14 * rms
    # bf16 moves the logits by bf16 rounding: a relative RMS of at most 4 * 2^-8 * sqrt(L) over the L bf16
    # convolutions (derived in test_precision.py, _bf16_logit_bound); the largest of the 20 x 16 x 16 errors
    # lies within 6 RMS of zero for any error distribution with Gaussian-like tails (sqrt(2 ln 5120) = 4.1).
    stages = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))
                 for name, m in UTAE(**TINY_WIDTHS).named_modules() if not name.startswith("temporal_encoder"))
    assert 0 < fast["max_abs_dlogits"] < 6 * 4 * 2.0**-8 * math.sqrt(stages) * rms
    assert off["train_gflop"] > 0 and off["train_gflop"] == pytest.approx(fast["train_gflop"], rel=1e-6)
    assert off["peak_tflops"] is None and off["frac_of_peak"] is None  # no spec-sheet peak for a CPU
    assert off["frac_of_matmul"] == pytest.approx(off["train_tflops"])


def test_speedups_are_against_the_float32_contiguous_eager_row_of_the_same_shape():
    rows = pd.DataFrame([
        {"shape": "a", "amp": "off", "channels_last": False, "compile": False, "train_samples_per_s": 2.0,
         "eval_samples_per_s": 10.0},
        {"shape": "a", "amp": "bf16", "channels_last": True, "compile": False, "train_samples_per_s": 7.0,
         "eval_samples_per_s": 15.0},
        {"shape": "b", "amp": "off", "channels_last": False, "compile": False, "train_samples_per_s": 1.0,
         "eval_samples_per_s": 4.0},
        {"shape": "b", "amp": "off", "channels_last": True, "compile": True, "train_samples_per_s": 3.0,
         "eval_samples_per_s": 2.0},
        {"shape": "c", "amp": "bf16", "channels_last": False, "compile": False, "train_samples_per_s": 3.0,
         "eval_samples_per_s": 2.0},
    ])
    out = add_speedups(rows)
    assert out["train_speedup"].tolist()[:4] == [1.0, 3.5, 1.0, 3.0]
    assert out["eval_speedup"].tolist()[:4] == [1.0, 1.5, 1.0, 0.5]
    assert math.isnan(out["train_speedup"].iloc[4])  # shape c has no float32 baseline


def test_known_gpu_peaks_follow_the_mode(monkeypatch):
    assert known_peak_tflops(CPU, "off") is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    gpu = torch.device("cuda", 0)
    fp32, tf32, half = KNOWN_PEAKS_TFLOPS["h100"]
    assert [known_peak_tflops(gpu, amp) for amp in ("off", "tf32", "bf16", "fp16")] == [fp32, tf32, half, half]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert known_peak_tflops(gpu, "off") == KNOWN_PEAKS_TFLOPS["h100 pcie"][0] < fp32  # the PCIe card, not the SXM
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert known_peak_tflops(gpu, "bf16") is None


def test_mode_runs_compare_each_mode_with_the_float32_run(tmp_path, synthetic_pastis):
    from benchmarks.bench_runs import mode_runs

    root = synthetic_pastis(n_patches=15, size=16, t_range=(3, 4), seed=2)
    tiny = dict(epochs=1, **TINY_WIDTHS, d_k=4)
    table = mode_runs(root, tmp_path / "runs", "cpu", ["off", "bf16"], settings=tiny)
    assert table["amp"].tolist() == ["off", "bf16"]  # as platform.json recorded them
    assert table["float32_math"].tolist() == ["ieee", "ieee"]
    assert table.loc[0, "d_miou_points"] == 0 and table.loc[0, "train_speedup"] == 1
    assert table.loc[1, "d_miou_points"] == pytest.approx(100 * (table.loc[1, "test_miou"] - table.loc[0, "test_miou"]))
    assert ((table["test_miou"] >= 0) & (table["test_miou"] <= 1)).all()


def test_same_within_seeds_asks_for_the_interval_inside_one_seed_sd():
    import pandas as pd

    from benchmarks.bench_runs import same_within_seeds

    base = [0.40, 0.44, 0.36, 0.42, 0.38]  # seed sd 3.16 points
    rows = [{"seed": s, "amp": "off", "test_miou": m, "train_samples_per_s": 10.0} for s, m in enumerate(base)]
    close = [m + d for m, d in zip(base, [0.002, -0.001, 0.001, 0.0, -0.002])]
    rows += [{"seed": s, "amp": "bf16", "test_miou": m, "train_samples_per_s": 15.0} for s, m in enumerate(close)]
    far = [m + 0.05 + d for m, d in zip(base, [0.01, -0.01, 0.0, 0.005, -0.005])]
    rows += [{"seed": s, "amp": "fp16", "test_miou": m, "train_samples_per_s": 20.0} for s, m in enumerate(far)]
    table = same_within_seeds(pd.DataFrame(rows)).set_index("amp")
    assert table.loc["bf16", "seed_sd_points"] == pytest.approx(100 * pd.Series(base).std())
    assert table.loc["bf16", "same"] and table.loc["bf16", "train_speedup"] == pytest.approx(1.5)
    assert table.loc["bf16", "ci_low"] < table.loc["bf16", "d_miou_points"] < table.loc["bf16", "ci_high"]
    assert not table.loc["fp16", "same"] and table.loc["fp16", "d_miou_points"] == pytest.approx(5.0)


# --------------------------------------------------------------------------------------------------
# Every model side by side (benchmarks.bench_models), and the study's estimate over several models
# --------------------------------------------------------------------------------------------------


def _stated_counts(path) -> dict[str, int]:
    """The parameter counts that a sweep file's header states, one ``#   <model>  <count>`` line each."""
    import re

    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^#\s+([a-z_0-9]+)\s+(\d{1,3}(?:,\d{3})+)\s", line)
        if match:
            found[match.group(1)] = int(match.group(2).replace(",", ""))
    return found


def test_the_architecture_study_s_models_have_about_u_tae_s_parameters():
    """params/architectures.yaml: every model within 15% of the default study's U-TAE (unet3d's only width,
    feats, moves its count by 2x a step: feats 2 is 13% over), and its header states each count as built."""
    from benchmarks.bench_models import STUDY_SIZE_EXTRA, STUDY_SWEEP, UTAE_WIDTH_FIELDS, study_options
    from benchmarks.common import SMALL_WIDTHS
    from utae.config.sweepfile import read_yaml
    from utae.models.registry import count_parameters, create_model

    default = read_yaml((STUDY_SWEEP.parent / "default.yaml").read_text())["fixed"]
    reference = count_parameters(create_model("utae", **{f: default[f] for f in UTAE_WIDTH_FIELDS}))
    assert reference == count_parameters(create_model("utae", **SMALL_WIDTHS, d_k=4))
    options = study_options()
    assert {"utae", "unet3d", "convlstm", "fpn_convlstm", "uconvlstm", "tsvit"} <= set(options)
    counts = {name: count_parameters(create_model(name, input_size=32, **opts)) for name, opts in options.items()}
    assert counts["utae"] == reference
    assert _stated_counts(STUDY_SWEEP) == counts
    for name, opts in {**options, **STUDY_SIZE_EXTRA}.items():
        count = count_parameters(create_model(name, input_size=32, **opts))
        assert abs(count / reference - 1) <= 0.15, (name, count)


def test_model_rows_give_every_model_in_calibration_blocks():
    from benchmarks.bench_models import model_rows

    calls = []
    table = model_rows(["utae", "convlstm"], {"utae": TINY_WIDTHS}, (1, 3, 16), CPU, lambda: calls.append(1), 1)
    assert table["model"].tolist() == ["utae", "convlstm"]
    assert table["widths"].tolist() == ["study", "official"] and table["uses_dates"].tolist() == [True, False]
    assert table.loc[1, "parameters"] == 1_008_660  # ConvLSTM at its official widths (hidden 160)
    # seconds over the calibration block's seconds, with one block per round (an untimed one first)
    assert (table["train_blocks"] * table["block_ms"]).tolist() == pytest.approx(table["train_ms"].tolist())
    assert len(calls) == 2 and (table["train_gflop"] > 0).all()


def test_a_run_s_cost_counts_its_steps_and_evaluated_patches():
    from benchmarks.bench_study import point_options, run_cost

    metrics = {"epochs_completed": 2, "n_train": 9, "n_val": 3, "n_test": 4}
    config = {"batch_size": 4, "test_noise_stds": [0.0, 1.0], "test_corruptions": ["clouds:1", "haze:2", "haze:3"]}
    steps = {"train": 0.5, "eval": 0.2, "batch": 4}
    # 2 epochs x ceil(9 / 4) = 6 training steps; 2 x 3 validation patches and (2 + 3) x 4 test patches
    assert run_cost(steps, metrics, config) == pytest.approx(6 * 0.5 + (6 + 20) * 0.2 / 4)
    assert point_options({"model": "utae", "n_head": 4, "model_options": {"agg_mode": "mean"}, "seed": 1}) == \
        ("utae", {"agg_mode": "mean", "n_head": 4})
    assert point_options({"model": "convlstm", "model_options": {"hidden_dim": 8}, "n_head": 16}) == \
        ("convlstm", {"hidden_dim": 8})


def test_bench_step_records_every_convolution_of_a_step_once_each_way():
    """benchmarks.bench_step replays a step's convolutions alone: one forward and one backward call per
    convolution module of the model (the tiny U-TAE, channels-last), and a replayed call computes what the
    step computed."""
    from benchmarks.bench import build, make_batch
    from benchmarks.bench_step import _RecordConvolutions
    from benchmarks.common import train_step_fn
    from utae.training.engine import make_optimizer

    model = build(TINY_WIDTHS, Mode(channels_last=True), CPU)
    step = train_step_fn(model, make_optimizer(model.parameters(), 1e-3, CPU), make_batch(TINY_SHAPE, CPU), CPU)
    recorder = _RecordConvolutions()
    with recorder:
        step()
    n_convs = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in model.modules())
    funcs = [func for func, _ in recorder.calls]
    assert funcs.count(torch.ops.aten.convolution.default) == n_convs
    assert funcs.count(torch.ops.aten.convolution_backward.default) == n_convs
    func, args = recorder.calls[0]
    assert torch.equal(func(*args), func(*args))  # the recorded arguments are copies, replayable


def test_bench_step_rejects_zero_threads(capsys):
    from benchmarks.bench_step import main

    with pytest.raises(SystemExit):
        main(["--threads", "0"])
    assert "--threads and --repeats must be at least 1, got 0 and 7" in capsys.readouterr().err
