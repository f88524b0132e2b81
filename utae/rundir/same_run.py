"""The same-run rule.

Reading. :func:`read_record` is the one validating reader of ``config.json``, ``metrics.json`` and
``platform.json`` (a non-empty JSON object; metrics sections checked); :func:`read_confusion` and
:func:`read_predictions` read the arrays with bounded memory (:mod:`utae.util.arrays`: headers, shapes and sizes
checked before any data); :func:`validate_run` checks every file of a finished run (import uses it): only
:data:`RUN_FILES`, each within its :data:`FILE_LIMITS`, every score finite, the test scores equal to those of the
confusion matrix and of the std-0 test noise (:func:`check_consistency`; verify uses it through
:func:`read_checked_metrics`); :func:`read_run` loads them all; :func:`readable_runs` walks a runs tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from utae.util.atomic import read_json, sha256_file
from utae.config.run_config import plain_value, HARMLESS_FIELDS, STREAM_SEED_FIELDS, RunConfig, run_config_fields, stream_seeds
from utae.rundir.paths import CONFIG, HISTORY, METRICS, IDENTITY_FILES, TIMING_COLUMNS, ABSENT

__all__ = ["normal_config", "config_differences", "result_differences"]


# --------------------------------------------------------------------------------------------------
# The same-run rule
# --------------------------------------------------------------------------------------------------


def normal_config(config: Mapping[str, Any] | RunConfig) -> dict[str, Any]:
    """A config (a config.json dict or a RunConfig) as the same-run rule compares it: RunConfig's defaults for
    absent fields, lists for tuples, ``init_weights`` reduced to whether it is set, a stream seed
    (:data:`utae.config.run_config.STREAM_SEED_FIELDS`) that equals ``seed`` as None (None is derived from
    ``seed`` as that value: a config with ``weights_seed`` None and ``seed`` 3 is the run with ``weights_seed`` 3,
    and another ``seed`` differs by ``seed`` alone), and without the
    :data:`utae.config.run_config.HARMLESS_FIELDS`. Nothing is checked against this machine."""
    values = config.to_dict() if isinstance(config, RunConfig) else dict(config)
    full = {**run_config_fields(), **values}
    out = {k: plain_value(v) for k, v in full.items() if k not in HARMLESS_FIELDS}
    out["init_weights"] = None if full.get("init_weights") is None else "set"
    effective = stream_seeds(full)
    out.update({name: None if effective[name] == effective["seed"] else effective[name]
                for name in STREAM_SEED_FIELDS})
    return out


def config_differences(stored: Mapping[str, Any] | RunConfig, new: Mapping[str, Any] | RunConfig) -> list[str]:
    """The same-run rule (see the module docstring): the fields that make ``stored`` and ``new`` two runs, one
    ``"<field>: stored <value> != new <value>"`` each; empty for the same run."""
    a, b = normal_config(stored), normal_config(new)
    return [f"{k}: stored {a.get(k, ABSENT)!r} != new {b.get(k, ABSENT)!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, ABSENT) != b.get(k, ABSENT)]


#: metrics.json keys that describe the run rather than its results (absent from older runs).
_DERIVED = ("timing", "model", "seeds", "normalisation", "patch_size")


def _result_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """metrics.json without what measures speed (``timing``), names a path (``init_weights.path``) or describes
    what config.json and the dataset name (``model``: its name, options and parameter count; ``seeds``: the
    effective stream seeds, :func:`utae.config.run_config.stream_seeds`; ``normalisation`` and ``patch_size``: the
    training folds' statistics and the patch side; older runs lack them)."""
    out = {k: v for k, v in metrics.items() if k not in _DERIVED}
    if isinstance(out.get("init_weights"), Mapping):
        out["init_weights"] = {k: v for k, v in out["init_weights"].items() if k != "path"}
    return out


def _same_history(a: Path, b: Path) -> bool:
    frames = [pd.read_csv(p) for p in (a, b)]
    frames = [f.drop(columns=[c for c in TIMING_COLUMNS if c in f.columns]) for f in frames]
    return frames[0].columns.tolist() == frames[1].columns.tolist() and frames[0].equals(frames[1])


def result_differences(a: Path, b: Path) -> list[str]:
    """The :data:`IDENTITY_FILES` in which two finished run directories differ, under the same-run rule:
    config.json by :func:`config_differences`, metrics.json and history.csv apart from timings, confusion.npy
    byte for byte. A missing or unreadable file differs. Empty: the same run with the same results."""
    differ = []
    for name in IDENTITY_FILES:
        fa, fb = a / name, b / name
        try:
            if name == CONFIG:
                same = not config_differences(read_json(fa), read_json(fb))
            elif name == METRICS:
                same = _result_metrics(read_json(fa)) == _result_metrics(read_json(fb))
            elif name == HISTORY:
                same = _same_history(fa, fb)
            else:
                same = sha256_file(fa) == sha256_file(fb)
        except (OSError, ValueError, AttributeError, TypeError, pd.errors.ParserError, pd.errors.EmptyDataError):
            same = False
        if not same:
            differ.append(name)
    return differ

