"""Small tools every layer uses: atomic file writes and JSON reads (:mod:`~utae.util.atomic`), ``.npy``/``.npz``
files read with bounded memory (:mod:`~utae.util.arrays`), type checks and the one rule for names that become paths
(:mod:`~utae.util.checks`), number formatting for reports (:mod:`~utae.util.format`) and the logging set-up of the
command lines (:mod:`~utae.util.console`).

The bottom layer: imports nothing of :mod:`utae`.
The table of layers: docs/package.md (checked by tests/test_layers.py).
"""
