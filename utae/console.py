"""What a person sees: the ``logging`` set-up of a process that runs the package from a command line.

Every module logs to its own logger (``logging.getLogger(__name__)``); nothing is configured on import. The
command line (:mod:`utae.cli`, :mod:`utae.train`) and every worker process that runs points (:mod:`utae.executor`)
call :func:`configure_logging` once: INFO messages of ``utae`` as plain lines on standard output (as ``print``
would show them), warnings and errors too.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging"]


def configure_logging(level: int = logging.INFO) -> None:
    """Show the package's log messages of ``level`` and above as plain lines on standard output. Does nothing
    when the ``utae`` logger already has a handler (a second call, or an application that set up its own)."""
    logger = logging.getLogger("utae")
    logger.setLevel(level)
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
