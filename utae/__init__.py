"""U-TAE for crop-type semantic segmentation of satellite image time series (PASTIS), and robustness studies.

The public API, importable from the top (``from utae import RunConfig, run``); internal module paths may move,
these names stay. Each is imported when first used, so ``import utae`` stays light (no torch until needed).

=============================  ===================================================================
``RunConfig``                  one run's configuration, validated (:mod:`utae.config.run_config`)
``load_sweep``                 a sweep file ``params/*.yaml`` and its points (:mod:`utae.config.sweepfile`)
``run``                        train, test and write a run folder (:mod:`utae.training.run`)
``create_model``               a model by name, ``list_models()`` the names (:mod:`utae.models.registry`)
``PastisDataset``              PASTIS (real or synthetic) as a torch dataset; ``pad_collate``
``make_synthetic_pastis``      a synthetic PASTIS in the real on-disk format (:mod:`utae.pastis.synthetic`)
``validate_pastis``            every problem of a PASTIS folder (:func:`utae.pastis.validate.validate`)
``confusion_matrix``,          the metrics of the PASTIS protocol (:mod:`utae.pastis.metrics`)
``scores``
``add_noise``, ``corrupt``     Gaussian noise and the corruption suite (:mod:`utae.perturb`)
``load_runs``, ``load_study``  every run of a results folder; the whole study (:mod:`utae.study`)
``run_all``                    every point of a sweep (:mod:`utae.sweep.orchestrate`)
``export_runs``,               runs between machines (:mod:`utae.exchange`)
``import_runs``, ``verify``
``setup_notebook``             the notebooks' one-call set-up (:func:`utae.report.notebook.setup`)
=============================  ===================================================================
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> (module, attribute).
_API: dict[str, tuple[str, str]] = {
    "RunConfig": ("utae.config.run_config", "RunConfig"),
    "load_sweep": ("utae.config.sweepfile", "load_sweep"),
    "run": ("utae.training.run", "run"),
    "create_model": ("utae.models.registry", "create_model"),
    "list_models": ("utae.models.registry", "list_models"),
    "PastisDataset": ("utae.pastis.dataset", "PastisDataset"),
    "pad_collate": ("utae.pastis.dataset", "pad_collate"),
    "make_synthetic_pastis": ("utae.pastis.synthetic", "make_synthetic_pastis"),
    "validate_pastis": ("utae.pastis.validate", "validate"),
    "confusion_matrix": ("utae.pastis.metrics", "confusion_matrix"),
    "scores": ("utae.pastis.metrics", "scores"),
    "add_noise": ("utae.perturb.noise", "add_noise"),
    "corrupt": ("utae.perturb.corruptions", "corrupt"),
    "load_runs": ("utae.study.runs", "load_runs"),
    "load_study": ("utae.study.loading", "load_study"),
    "run_all": ("utae.sweep.orchestrate", "run_all"),
    "export_runs": ("utae.exchange.export", "export_runs"),
    "import_runs": ("utae.exchange.import_runs", "import_runs"),
    "verify": ("utae.exchange.verify", "verify"),
    "setup_notebook": ("utae.report.notebook", "setup"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attribute = _API[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # imported once
        return value
    raise AttributeError(f"module 'utae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
