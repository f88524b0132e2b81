"""A whole sweep: its points checked, skipped or handed to an executor (:mod:`~utae.sweep.orchestrate`), the one
point runner that executes ``train_eval.ipynb`` with papermill (:mod:`~utae.sweep.point`), the executors
(:mod:`~utae.sweep.executor`: the core, :mod:`~utae.sweep.local`, :mod:`~utae.sweep.slurm`) and the notebook
kernel's manager (:mod:`~utae.sweep.kernel`).

May import every subpackage but :mod:`utae.training` and :mod:`utae.exchange` (a point trains in a notebook
kernel, not in this process).
The table of layers: docs/package.md (checked by tests/test_layers.py).
"""
