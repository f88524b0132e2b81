"""What a person sees: the ``logging`` set-up of a process that runs the package from a command line.

Every module logs to its own logger (``logging.getLogger(__name__)``); nothing is configured on import. The
command line (:mod:`utae.cli`, :mod:`utae.train`) and every worker process that runs points (:mod:`utae.sweep.executor`)
call :func:`configure_logging` once: INFO messages of ``utae`` as plain lines on standard output (as ``print``
would show them), warnings and errors too. Libraries that narrate their work say only what went wrong:
papermill's "Input Notebook:" / "Executing notebook with kernel" lines (INFO) are not shown.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging", "QUIET_LOGGERS"]

#: Loggers of libraries whose INFO lines are noise on the console: only their warnings and errors are shown.
QUIET_LOGGERS = ("papermill", "traitlets", "nbclient")


class _StdoutHandler(logging.StreamHandler):
    """Plain lines on whatever ``sys.stdout`` is when a message is logged (a redirected or captured stdout too)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def configure_logging(level: int = logging.INFO) -> None:
    """Show the package's log messages of ``level`` and above as plain lines on standard output. A second call
    only sets the level."""
    logger = logging.getLogger("utae")
    logger.setLevel(level)
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
