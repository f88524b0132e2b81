"""Runs between machines: export to an archive with a manifest (:mod:`~utae.exchange.export`), checked
import that never overwrites (:mod:`~utae.exchange.import_runs`), and verify, a rerun here compared number by
number (:mod:`~utae.exchange.verify`).

Layer 9: may import every layer below.
"""
