"""What a run is asked to do: :class:`~utae.config.run_config.RunConfig`, one validated dataclass with one
field per notebook parameter (torch-free), and the one reader of the sweep files ``params/*.yaml`` and of
``--set`` values (:mod:`~utae.config.sweepfile`).

May import :mod:`utae.util`, :mod:`utae.pastis`, :mod:`utae.perturb.kinds` and
:mod:`utae.models.registry` (torch-free modules).
The table of layers: docs/package.md (checked by tests/test_layers.py).
"""
