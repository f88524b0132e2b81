"""Tests of the report figures (utae.report.plots), the one-run tables (utae.report.notebook) and the report index
(utae.report.pages), on small frames."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from utae.report import notebook

from utae.report import plots
from utae.report import study_figures

from utae.report import pages as report
from utae.pastis.classes import CLASS_COLORS, CLASS_NAMES
from utae.rundir.readers import read_run



def png_size(fig: Figure) -> tuple[int, int, int]:
    """(width px, height px, bytes) of the figure saved as PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return width, height, len(data)


def heat_axes(fig: Figure) -> list:
    """Axes holding an image (heatmaps and maps), colour bars excluded."""
    return [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------


@pytest.fixture()
def history() -> pd.DataFrame:
    e = np.arange(1, 5)
    return pd.DataFrame({"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e, "train_oa": 0.5 + 0.1 * e,
                         "val_oa": 0.45 + 0.1 * e, "train_miou": 0.1 * e, "val_miou": 0.09 * e})


def test_training_curves(history):
    fig = plots.training_curves(history, best_epoch=3)
    assert len(fig.axes) == 3
    for ax in fig.axes:
        labels = [line.get_label() for line in ax.get_lines()]
        assert labels[:2] == ["train", "val"] and "best epoch (3)" in labels
    np.testing.assert_allclose(fig.axes[2].get_lines()[1].get_ydata(), history["val_miou"])
    width, height, nbytes = png_size(fig)
    # A line plot on a white background compresses far better than 8:1 over its raw RGBA pixels (about 20:1
    # with matplotlib's bundled DejaVu fonts); the bound is relative to the figure's size, not to a font.
    assert width == round(9.0 * plots.DEFAULT_DPI) and nbytes < width * height * 4 / 8
    with pytest.raises(ValueError, match="val_miou"):
        plots.training_curves(history.drop(columns="val_miou"))
    with pytest.raises(ValueError, match="empty"):
        plots.training_curves(history.iloc[:0])


def test_per_class_iou_bars_colours_and_missing_classes():
    iou = np.linspace(0.1, 0.9, 20)
    iou[[5, 19]] = np.nan
    fig = plots.per_class_iou(iou)
    ax = fig.axes[0]
    bars = ax.patches
    assert len(bars) == 19  # void left out
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASS_NAMES[:19]
    np.testing.assert_allclose(bars[1].get_facecolor()[:3], plots.class_colors_rgb([CLASS_COLORS[1]])[0])
    assert bars[5].get_height() == 0 and "n/a" in [t.get_text() for t in ax.texts]
    assert any(f"{np.nanmean(iou[:19]):.3f}" in line.get_label() for line in ax.get_lines())
    with pytest.raises(ValueError, match="20 values"):
        plots.per_class_iou(iou[:10])
    plots.per_class_iou([None] * 20)  # a run where nothing is defined still draws


def test_class_colours_accept_hex_and_tuples():
    rgb = plots.class_colors_rgb(["#ff0000", (0, 255, 0), (0.0, 0.0, 1.0)])
    np.testing.assert_allclose(rgb, np.eye(3))


def test_confusion_heatmap_is_row_normalised():
    cm = np.zeros((20, 20), dtype=np.int64)
    cm[1, 1], cm[1, 2], cm[2, 2], cm[19, 19] = 30, 10, 5, 100
    fig = plots.confusion_heatmap(cm)
    ax = heat_axes(fig)[0]
    data = ax.images[0].get_array()
    assert data.shape == (19, 19)
    assert data[1, 1] == pytest.approx(0.75) and data[1, 2] == pytest.approx(0.25) and data[2, 2] == 1.0
    assert np.ma.is_masked(data[3, 3])  # class absent from the targets: blank row
    with pytest.raises(ValueError, match=r"\(20, 20\)"):
        plots.confusion_heatmap(cm[:5, :5])


def test_patch_grid_uses_class_colours_and_legend():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, (3, 16, 16))
    pred = target.copy()
    pred[:, :4] = 19
    fig = plots.patch_grid(rng.random((3, 16, 16, 3)), target, pred, patch_ids=[10, 11, 12], max_patches=2)
    maps = heat_axes(fig)
    assert len(maps) == 6  # 2 patches x (RGB, truth, prediction)
    assert maps[0].get_title() == "patch 10: RGB"
    truth = maps[1].images[0]
    np.testing.assert_allclose(truth.cmap(truth.norm(1))[:3], plots.class_colors_rgb([CLASS_COLORS[1]])[0])
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["0 Background", "1 Meadow", "2 Soft winter wheat", "19 Void label"]
    rgb_uint8 = (rng.random((1, 8, 8, 3)) * 255).astype(np.uint8)
    plots.patch_grid(rgb_uint8, target[:1, :8, :8], pred[:1, :8, :8])
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        plots.patch_grid(rng.random((2, 16, 16)), target, pred)
    with pytest.raises(ValueError, match="target"):
        plots.patch_grid(rng.random((3, 16, 16, 3)), target[:, :8], pred)


def test_test_noise_curve():
    entries = [{"std": 1.0, "oa": 0.6, "miou": 0.3}, {"std": 0.0, "oa": 0.8, "miou": 0.5}]
    fig = plots.test_noise_curve(entries, train_noise_std=0.5)
    lines = fig.axes[0].get_lines()
    np.testing.assert_allclose(lines[0].get_xdata(), [0.0, 1.0])  # sorted by std
    np.testing.assert_allclose(lines[0].get_ydata(), [0.5, 0.3])
    with pytest.raises(ValueError, match="miou"):
        plots.test_noise_curve([{"std": 0.0, "oa": 0.5}])


# --------------------------------------------------------------------------------------------------
# The study (the figures drawn from load_runs-like frames are tested in test_study.py)
# --------------------------------------------------------------------------------------------------


def test_noise_matrix_and_per_class_heatmap_one_panel_per_platform():
    test_noise = pd.DataFrame([{"platform": p, "run_id": f"r{s}", "cfg_noise_std": tr, "cfg_seed": s,
                                "test_noise_std": te, "oa": 0.9, "miou": 0.5 + 0.1 * s - 0.1 * te + 0.05 * tr}
                               for p in ("a", "b") for tr in (0.0, 1.0) for te in (0.0, 0.5, 2.0) for s in (0, 1)])
    fig = study_figures.noise_matrix(test_noise)
    panels = heat_axes(fig)
    assert len(panels) == 2
    values = panels[0].images[0].get_array()
    assert values.shape == (2, 3)
    assert values[1, 0] == pytest.approx(0.5 + 0.05 + 0.05)  # mean over the two seeds
    per_class = pd.DataFrame([{"platform": p, "run_id": "r", "cfg_noise_std": tr, "cfg_seed": 0, "class_id": c,
                               "class_name": CLASS_NAMES[c], "iou": np.nan if c in (7, 19) else 0.5}
                              for p in ("a", "b") for tr in (0.0, 1.0) for c in range(20)])
    fig = study_figures.per_class_heatmap(per_class)
    panels = heat_axes(fig)
    assert len(panels) == 2
    data = panels[0].images[0].get_array()
    assert data.shape == (19, 2) and np.ma.is_masked(data[7, 0]) and data[0, 0] == 0.5


# --------------------------------------------------------------------------------------------------
# One run's tables, and the index page
# --------------------------------------------------------------------------------------------------


def test_run_tables():
    table = notebook.config_table({"noise_std": 0.5, "encoder_widths": [16, 32], "run_id": None})
    assert table.loc["noise_std", "value"] == "0.5" and table.loc["encoder_widths", "value"] == "(16, 32)"
    metrics = {"train": {"oa": 0.9, "miou": 0.5, "loss": 0.3}, "val": {"oa": 0.8, "miou": 0.4, "loss": 0.4},
               "test": {"oa": 0.7, "miou": 0.35, "loss": 0.5, "macro_f1": 0.45},
               "timing": {"sec_per_epoch": 1.5, "peak_mem_mb": 300.0}, "best_epoch": 2}
    head = notebook.headline_table(metrics)
    assert head.loc["test", "mIoU"] == 0.35 and head.loc["train", "OA"] == 0.9
    plat = notebook.platform_table({"device_name": "CPU X", "torch_threads": 1}, metrics)
    assert plat.loc["device name", "value"] == "CPU X" and plat.loc["seconds per epoch", "value"] == "1.5"
    with pytest.raises(TypeError):
        notebook.config_table(3)
    record = {"name": "convlstm", "options": {"hidden_dim": 43, "kernel_size": [3, 3]}, "parameters": 89976}
    assert notebook.model_summary({**metrics, "model": record}) == \
        "model convlstm (hidden_dim=43, kernel_size=(3, 3)): 89,976 trainable parameters"
    assert notebook.model_summary({"model": {"name": "x:build", "options": {}, "parameters": 12}}) == \
        "model x:build (its defaults): 12 trainable parameters"
    assert notebook.model_summary(metrics) is None  # a run older than the model record


def test_read_run_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        read_run(tmp_path)


def test_index_links_every_report(tmp_path):
    results = tmp_path / "results"
    reports = results / "reports"
    for plat, rid in (("cpu-a", "noise0-seed0"), ("cpu-a", "noise1-seed0"), ("cuda-b", "noise0-seed0")):
        (reports / plat).mkdir(parents=True, exist_ok=True)
        (reports / plat / f"{rid}.html").write_text("<html></html>")
    run = results / "runs" / "cpu-a" / "noise1-seed0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"test": {"miou": 0.4321, "oa": 0.8}, "timing": {"sec_per_epoch": 2}}))
    (run / "config.json").write_text(json.dumps({"noise_std": 1.0, "seed": 0}))
    (reports / "compare.html").write_text("<html></html>")
    (results / "summary.csv").write_text("a\n")
    page = report.write_index(results).read_text()
    hrefs = re.findall(r'href="([^"]+)"', page)
    assert sorted(hrefs) == sorted(["compare.html", "../summary.csv", "cpu-a/noise0-seed0.html",
                                    "cpu-a/noise1-seed0.html", "cuda-b/noise0-seed0.html"])
    for href in hrefs:
        assert (reports / href).resolve().is_file()
    assert "0.432" in page
