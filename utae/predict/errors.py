"""The one error class of :mod:`utae.predict`: bad input the user can fix, as one line naming the file or option."""

from __future__ import annotations

__all__ = ["PredictError"]


class PredictError(ValueError):
    """An input, a model or an option that :func:`utae.predict.predict` cannot use: one line that names the file
    or the option and what was expected (``python -m utae predict`` prints it as ``error: ...``, exit status 2)."""
