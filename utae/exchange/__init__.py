"""Runs between machines: export to an archive with a manifest (:mod:`~utae.exchange.export`), checked
import that never overwrites (:mod:`~utae.exchange.import_runs`), and verify, a rerun here compared number by
number (:mod:`~utae.exchange.verify`).

May import every subpackage but :mod:`utae.training`.
The table of layers: docs/package.md (checked by tests/test_layers.py).
"""
