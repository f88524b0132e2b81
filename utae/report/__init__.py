"""What people read: the figures (:mod:`~utae.report.plots`), notebooks rendered to HTML pages and the index
(:mod:`~utae.report.pages`), an imported run's page (:mod:`~utae.report.run_page`), the notebooks' one-call set-up
(:mod:`~utae.report.notebook`) and the corruption gallery (:mod:`~utae.report.gallery`).

May import :mod:`utae.util`, :mod:`utae.pastis`, :mod:`utae.perturb`, :mod:`utae.config`, :mod:`utae.rundir` and
:mod:`utae.study`; never :mod:`utae.training`.
The table of layers: docs/package.md (checked by tests/test_layers.py).
"""
