"""The PASTIS benchmark: its classes and colours (:mod:`~utae.pastis.classes`), its on-disk names
(:mod:`~utae.pastis.layout`), its metadata and normalisation files (:mod:`~utae.pastis.metadata`), the dataset and
its collate function (:mod:`~utae.pastis.dataset`), the format checks (:mod:`~utae.pastis.validate`), the
synthetic PASTIS in exactly that format (:mod:`~utae.pastis.synthetic`) and the segmentation metrics of its
protocol, void ignored (:mod:`~utae.pastis.metrics`).

May import :mod:`utae.util` only.
The table of layers: docs/package.md (checked by tests/test_layers.py).
"""
