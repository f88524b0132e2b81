"""The notebooks' set-up and the tables of one run.

:func:`setup` is the set-up cell of ``notebooks/train_eval.ipynb`` and ``notebooks/compare.ipynb`` in one call:
it makes paths relative to the repository root (a notebook opened from ``notebooks/`` in JupyterLab), turns on
inline figures as small palette PNGs (so the HTML reports stay light), silences tqdm's missing-widget warning,
and generates the embedded synthetic PASTIS when the notebook's ``dataset_root`` is the default one and is
missing (by hand or in Colab).

Colab. A notebook opened in Colab has no ``utae`` to import yet, so its set-up cell first runs
``pip install -q git+<repo_url>`` (the ``repo_url`` parameter, or the ``UTAE_REPO_URL`` environment variable;
the project names no URL of its own). Without ``--upgrade``, pip keeps every package that already satisfies
the package's ranges (``pyproject.toml``): Colab's own torch, numpy and pandas stay as they are, and only
what is missing is installed.

The tables of one run (``notebooks/train_eval.ipynb``): :func:`config_table`, :func:`headline_table` and
:func:`platform_table`; :func:`model_summary` is the line that names the run's model, its options and its size.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from utae.report.pages import use_compact_figures
from utae.util.format import format_value

__all__ = ["SYNTHETIC_ROOT", "setup", "config_table", "headline_table", "model_summary", "platform_table"]

#: The embedded default dataset of the notebooks and the default sweep, relative to the repository root.
SYNTHETIC_ROOT = "data/synthetic_pastis"


def _in_ipython() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def setup(namespace: Mapping[str, Any] | None = None) -> Path:
    """Prepare a notebook (see the module docstring); returns the working directory.

    Args:
        namespace: the notebook's ``globals()``; its ``dataset_root`` (when present) is generated if it is the
            default synthetic dataset and missing.
    """
    if not Path("utae").is_dir() and Path("../utae").is_dir():
        os.chdir("..")  # opened from notebooks/ in JupyterLab: paths are relative to the repository root
    shell = _in_ipython()
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")
        use_compact_figures(shell)
    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
    root = (namespace or {}).get("dataset_root")
    if root == SYNTHETIC_ROOT and not Path(root).is_dir():
        subprocess.run([sys.executable, "-m", "utae.pastis.synthetic", root], check=True)
    return Path.cwd()


def config_table(config: Any) -> pd.DataFrame:
    """The parameters of a run as a two-column table (``parameter``, ``value``), in field order.

    Args:
        config: a dataclass (``RunConfig``), an object with ``to_dict()``, or a mapping.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        items = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    elif hasattr(config, "to_dict"):
        items = dict(config.to_dict())
    elif isinstance(config, Mapping):
        items = dict(config)
    else:
        raise TypeError(f"config_table: expected a dataclass or a mapping, got {type(config).__name__}")
    return pd.DataFrame({"parameter": list(items), "value": [format_value(v) for v in items.values()]}).set_index("parameter")


def headline_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """The headline scores of ``metrics.json``: rows train / val / test, columns OA, mIoU, macro F1, loss.

    Train scores are those of the best epoch on the training set as seen during training (with
    its noise); val at the best epoch; test of the best-epoch weights on the clean test set.
    """
    rows = {}
    for split in ("train", "val", "test"):
        part = metrics.get(split) or {}
        rows[split] = {"OA": part.get("oa"), "mIoU": part.get("miou"), "macro F1": part.get("macro_f1"),
                       "loss": part.get("loss")}
    table = pd.DataFrame.from_dict(rows, orient="index").astype(float)
    return table.dropna(axis=1, how="all")


def model_summary(metrics: Mapping[str, Any]) -> str | None:
    """One line on the run's model from ``metrics.json``'s ``model`` record: its name, the options it was built
    with and its trainable parameters, e.g. ``model convlstm (hidden_dim=43): 89,976 trainable parameters``;
    None for a run older than the record."""
    record = metrics.get("model")
    if not isinstance(record, Mapping) or "name" not in record:
        return None
    options = record.get("options") or {}
    shown = ", ".join(f"{k}={format_value(v)}" for k, v in options.items()) or "its defaults"
    count = record.get("parameters")
    size = f"{int(count):,} trainable parameters" if isinstance(count, int) else "parameters not recorded"
    return f"model {record['name']} ({shown}): {size}"


def platform_table(platform: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The platform (``platform.json``) and the timing of ``metrics.json`` as one two-column table."""
    rows: dict[str, Any] = {}
    for key, value in platform.items():
        rows[key.replace("_", " ")] = "" if value is None else format_value(value)
    timing = (metrics or {}).get("timing") or {}
    labels = {"sec_per_epoch": "seconds per epoch", "train_samples_per_s": "train samples/s",
              "eval_samples_per_s": "eval samples/s", "peak_mem_mb": "peak memory (MiB)", "total_s": "total seconds"}
    for key, value in timing.items():
        rows[labels.get(key, key.replace("_", " "))] = "" if value is None else f"{float(value):.4g}"
    for key in ("epochs_completed", "best_epoch", "n_train", "n_val", "n_test"):
        if metrics and key in metrics:
            rows[key.replace("_", " ")] = format_value(metrics[key])
    return pd.DataFrame({"item": list(rows), "value": list(rows.values())}).set_index("item")


