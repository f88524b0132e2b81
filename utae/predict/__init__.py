"""Predict a crop map from your own Sentinel-2 series: GeoTIFFs in, a georeferenced PASTIS class map out.

The concept: a trained model of the registry (a run folder of this tool, or the official U-TAE weights) applied to a user's raster of
any size, window by window in bounded memory, with the windows' logits blended so that no seam shows, and a
stress map that says how far to trust each pixel under a corruption of the suite. ``python -m utae predict``
and ``docs/predict.md`` are the user's side; :func:`predict` is the one entry point.

Modules: :mod:`~utae.predict.dates` (which files, which dates), :mod:`~utae.predict.geotiff` (every GeoTIFF read
or written: the only importer of rasterio), :mod:`~utae.predict.model_source` (the model and its normalisation),
:mod:`~utae.predict.tiling` (windows and blending), :mod:`~utae.predict.prepare` (a window's series as the model
sees it), :mod:`~utae.predict.stress` (corrupted draws and their tallies), :mod:`~utae.predict.quicklook`
(pictures), :mod:`~utae.predict.run` (:func:`predict`), :mod:`~utae.predict.command` (the command's arguments).

What it may import: numpy, pandas, scipy, torch, tqdm, matplotlib, rasterio (in ``geotiff`` only) and, of this
package, the data layer (``utae.pastis.dataset``, ``utae.pastis.classes``), the model and its loading (``utae.training.engine.build_model``
in ``model_source.build`` only, ``utae.models.registry``, ``utae.config``, ``utae.rundir.paths``,
``utae.training.checkpoint``, ``utae.training.weights``), the corruption suite
(``utae.perturb.corruptions``, ``utae.perturb.kinds``) and the utilities (``utae.util.atomic``, ``utae.util.arrays``). Nothing in
the package imports :mod:`utae.predict` but the command line, which imports it only to run the command.
"""

from __future__ import annotations

from typing import Any

__all__ = ["predict", "PredictResult", "PredictError"]


def __getattr__(name: str) -> Any:
    """``predict``, ``PredictResult`` and ``PredictError``, imported on first use (torch and rasterio load then)."""
    if name in ("predict", "PredictResult"):
        from utae.predict import run

        return getattr(run, name)
    if name == "PredictError":
        from utae.predict.errors import PredictError

        return PredictError
    raise AttributeError(f"module 'utae.predict' has no attribute {name!r}")
