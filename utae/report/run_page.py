"""A run's HTML report rendered from its files: :func:`render_run_page`, for runs made on another machine.

A run made here gets its report from its executed notebook (``train_eval.ipynb``, :mod:`utae.sweep.point`). A run
imported from another machine comes without a notebook, and the report its archive may carry is never taken as
given (it could hold a script): the importer (:mod:`utae.exchange.import_runs`) renders it here from the run's data, read by the
run folder's validating readers (:func:`utae.rundir.readers.read_run`). The page shows what the notebook shows, in
the same order: the configuration, the headline scores, the training curves, the per-class IoU, the confusion
matrix, the example maps of ``predictions.npz``, the test-noise curve, and the platform and timing.

The page is static: every text read from the run is HTML-escaped (the tables by pandas, the rest by
:func:`html.escape`), the figures are inlined PNGs (:func:`utae.report.pages.figure_png`), and a Content-Security-Policy
forbids scripts and any outside resource (:func:`utae.report.pages.static_page`).
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

import pandas as pd

from utae.report import plots
from utae.util.atomic import atomic_write_text
from utae.report.notebook import config_table, headline_table, model_summary, platform_table
from utae.report.pages import figure_png, static_page
from utae.rundir.readers import read_run

__all__ = ["render_run_page", "run_page_html"]


def _figure(fig: Any, alt: str) -> str:
    """A matplotlib figure (:mod:`utae.report.plots` makes them without pyplot: nothing to close) as an inlined PNG."""
    data = base64.b64encode(figure_png(fig)).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


#: The columns of history.csv that the training curves plot (utae.report.plots.training_curves).
_CURVE_COLUMNS = ("epoch", "train_loss", "val_loss", "train_oa", "val_oa", "train_miou", "val_miou")


def _curves(history: pd.DataFrame, best_epoch: Any) -> str:
    missing = [c for c in _CURVE_COLUMNS if c not in history.columns]
    if missing:
        return f"<p>history.csv lacks {html.escape(', '.join(missing))}: no training curves.</p>"
    return _figure(plots.training_curves(history, best_epoch=best_epoch), "training curves")


def _table(frame: pd.DataFrame, digits: int | None = None) -> str:
    shown = frame.round(digits).astype(object).fillna("-") if digits is not None else frame
    return shown.to_html(escape=True, border=0)


def _model_line(config: dict, metrics: dict) -> str:
    """The model line of :func:`utae.report.notebook.model_summary`; for a run older than the record, the model
    its config names (U-TAE when it names none)."""
    return model_summary(metrics) or (f"model {config.get('model') or 'utae'} (its trainable parameters were not "
                                      "recorded by this older run)")


def run_page_html(run_dir: str | os.PathLike[str], title: str | None = None, index_href: str | None = None) -> str:
    """The HTML page of the finished run in ``run_dir`` (see the module docstring).

    Raises:
        FileNotFoundError, utae.rundir.paths.RunFolderError: a run file that is missing or not a run's.
    """
    files = read_run(run_dir)
    run_dir = Path(run_dir)
    config, metrics = files.config, files.metrics
    name = f"{run_dir.parent.name}/{run_dir.name}"
    title = title or f"U-TAE run {name}"
    test = metrics.get("test") or {}
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>Rendered from the run's files (<code>{html.escape(name)}</code>): config.json, metrics.json, "
             "history.csv, confusion.npy, predictions.npz, platform.json. Test mIoU "
             f"<b>{float(test['miou']):.4f}</b>, OA <b>{float(test['oa']):.4f}</b> (clean test split; the void "
             "label is not scored).</p>",
             "<h2>Configuration</h2>", f"<p>{html.escape(_model_line(config, metrics))}.</p>",
             _table(config_table(config)),
             "<h2>Scores</h2>",
             "<p>Train at the best epoch as seen during training (with its noise), validation at the best epoch, "
             "test of the best epoch's weights on the clean test split.</p>",
             _table(headline_table(metrics), 4),
             "<h2>Training curves</h2>",
             _curves(files.history, metrics.get("best_epoch")),
             "<h2>Per-class IoU</h2>",
             _figure(plots.per_class_iou(test.get("iou") or []), "per-class IoU"),
             "<h2>Confusion matrix</h2>",
             "<p>Rows are the true classes, columns the predicted ones, each row normalised to sum to 1.</p>",
             _figure(plots.confusion_heatmap(files.confusion), "confusion matrix"),
             "<h2>Predicted maps</h2>"]
    p = files.predictions
    if p is None or len(p["pred"]) == 0:
        parts.append("<p>This run saved no example patches.</p>")
    else:
        parts.append(_figure(plots.patch_grid(p["rgb"], p["target"], p["pred"], p.get("patch_id")), "predicted maps"))
    parts.append("<h2>Test-time noise</h2>")
    curve = metrics.get("test_noise") or []
    if curve:
        noise = pd.DataFrame([{"std": e.get("std"), "OA": e.get("oa"), "mIoU": e.get("miou")} for e in curve])
        parts.append(_table(noise.set_index("std"), 4))
        parts.append(_figure(plots.test_noise_curve(curve, train_noise_std=float(config.get("noise_std") or 0.0)),
                             "test-noise curve"))
    else:
        parts.append("<p>This run was tested on clean images only.</p>")
    parts += ["<h2>Platform and timing</h2>", _table(platform_table(files.platform, metrics))]
    return static_page(title, "\n".join(parts), index_href=index_href)


def render_run_page(run_dir: str | os.PathLike[str], html_path: str | os.PathLike[str], title: str | None = None,
                    index_href: str | None = "../index.html") -> Path:
    """Write the page of :func:`run_page_html` to ``html_path`` atomically; returns its path."""
    return atomic_write_text(html_path, run_page_html(run_dir, title, index_href))
